"""What the gateway does with the monitoring centre's requests (the GB uplink's other half).

The link (agent/gb26875/link.py) has checked each request and hands it over with the serial
to answer; this module answers it on the link and does what it asks:
- 89 initialise: confirm; send the running state (21) and version (25) again; record it.
  Serials continue and the buffer is never wiped (docs/gb26875.md, "The centre's commands");
- 90 clock sync: confirm; record it (centre time, our offset, what was done); set the system
  clock only when `set_clock` is configured, the kernel's clock is not kept by NTP and the
  setter works. Buffered records keep their seqs and times;
- 91 duty check: confirm; `on_duty_check(source="centre", timeout_s=...)` (the duties);
- reads 61-68 / 81-88: `answer_read(adu)`; no hook or no answer = deny, except 81 (the
  UITD's running state), answered here;
- anything else the link let through (user-defined typeflags): deny.

A hook that raises is a fault event (agent/faults.py) and a deny, never a dead uplink.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent.config import GbConfig
from agent.faults import Faults
from agent.gb26875.adu import Adu, DutyCheck, InitialiseUitd, ReadUitdState, SyncClock, UitdVersion
from agent.gb26875.link import Link, Packet, Request
from agent.texts import Msg, Texts
from core.events import Kind, Severity

log = logging.getLogger("alarmgw.gb26875")

DutyHook = Callable[..., object]  # on_duty_check(source="centre", timeout_s=float)
ReadHook = Callable[[Adu], "Adu | None"]  # answer_read(adu) -> the answer or None (deny)
ClockSetter = Callable[[float], None]  # set the system clock to this Unix time

# what a clock sync did (detail.action on the feed), and its sentence
CLOCK_ACTIONS: Final = {
    "set": Msg.GB_CLOCK_SET,
    "not_configured": Msg.GB_CLOCK_NOT_CONFIGURED,
    "kept_by_ntp": Msg.GB_CLOCK_KEPT_BY_NTP,
    "refused": Msg.GB_CLOCK_REFUSED,
    "invalid": Msg.GB_CLOCK_INVALID,
}


class Announce(Protocol):
    def __call__(
        self, kind: Kind, severity: Severity, state: str, text: str, detail: dict[str, Any]
    ) -> None: ...


@dataclass(frozen=True)
class Hooks:
    """What the rest of the gateway lends the uplink (each may be None)."""

    on_duty_check: DutyHook | None = None
    answer_read: ReadHook | None = None
    set_clock: ClockSetter | None = None
    clock_synced: Callable[[], bool] = lambda: True


class CentreRequests:
    """Answers the centre's requests on `link` (the uplink's thread calls handle())."""

    def __init__(
        self,
        link: Link,
        cfg: GbConfig,
        hooks: Hooks,
        *,
        running_state: Callable[[], Adu],
        resend_state: Callable[[], None],
        announce: Announce,
        faults: Faults | None,
        texts: Texts,
    ) -> None:
        self.link = link
        self.cfg = cfg
        self.hooks = hooks
        self._running_state = running_state
        self._resend_state = resend_state
        self._announce = announce
        self._faults = faults
        self._texts = texts
        self.counts: dict[str, int] = {}  # per typeflag, for status

    def handle(self, request: Request) -> None:
        typeflag = request.typeflag
        self.counts[str(typeflag)] = self.counts.get(str(typeflag), 0) + 1
        adu = request.adu
        try:
            if typeflag == InitialiseUitd.TYPEFLAG:
                self.link.confirm(request)
                self._initialise()
            elif typeflag == SyncClock.TYPEFLAG and isinstance(adu, Adu):
                self.link.confirm(request)
                self._clock_sync(adu)
            elif typeflag == DutyCheck.TYPEFLAG and isinstance(adu, Adu):
                self.link.confirm(request)
                self._duty_check(adu)
            elif isinstance(adu, Adu):
                self._answer(request, adu)
            else:
                self.link.deny(request)
        except Exception as exc:  # a hook's bug: deny, report, keep the link
            if self._faults is not None:
                self._faults.failed(f"gb26875-request-{typeflag}", exc)
            else:
                log.exception("gb26875: request %s failed", typeflag)
            self.link.deny(request)

    def _answer(self, request: Request, adu: Adu) -> None:
        read = self.hooks.answer_read
        answer = read(adu) if read is not None else None
        if answer is None and adu.typeflag == ReadUitdState.TYPEFLAG:
            answer = self._running_state()
        if answer is None:
            self.link.deny(request)
        else:
            self.link.respond(request, answer)

    def _initialise(self) -> None:
        """89: the centre wants the device's state from scratch: the running state and the
        version again. Serials continue; the buffer is never wiped."""
        self._resend_state()
        version = Adu.of(UitdVersion(1, self.cfg.minor_version & 0xFF))
        self.link.submit(Packet(version.encode(), tag="version"))
        detail = {"uplink": "gb26875", "request": 89}
        text = self._texts(Msg.GB_INITIALISE)
        self._announce(Kind.STATE, Severity.INFO, "gb_initialise", text, detail)

    def _clock_sync(self, adu: Adu) -> None:
        obj = adu.objects[0]
        assert isinstance(obj, SyncClock)
        centre: int | None = None
        with contextlib.suppress(ValueError):  # no time (one codec's form) or not a date
            if obj.time is not None:
                centre = obj.time.to_epoch(self.link.settings.utc_offset_s)
        offset = None if centre is None else round(self.link.clock.time() - centre, 3)
        action, why = self._apply_clock(centre)
        said = self._texts(CLOCK_ACTIONS[action], why=why)
        text = self._texts(Msg.GB_CLOCK_SYNC, centre=str(obj.time), offset_s=offset, action=said)
        detail = {
            "uplink": "gb26875",
            "request": 90,
            "centre_time": str(obj.time),
            "offset_s": offset,
            "action": action,
        }
        if why:
            detail["why"] = why
        self._announce(Kind.STATE, Severity.INFO, "gb_clock_sync", text, detail)

    def _apply_clock(self, centre: float | None) -> tuple[str, str]:
        hooks = self.hooks
        if centre is None:
            return "invalid", ""
        if not self.cfg.set_clock or hooks.set_clock is None:
            return "not_configured", ""
        if hooks.clock_synced():
            return "kept_by_ntp", ""
        try:
            hooks.set_clock(centre)
        except (OSError, OverflowError) as exc:  # no CAP_SYS_TIME; beyond a 32-bit time_t
            return "refused", str(getattr(exc, "strerror", None) or exc)
        return "set", ""

    def _duty_check(self, adu: Adu) -> None:
        obj = adu.objects[0]
        assert isinstance(obj, DutyCheck)
        timeout_s = float(obj.timeout_min * 60)  # the centre's minutes; 10 when it sends 0
        if self.hooks.on_duty_check is not None:
            self.hooks.on_duty_check(source="centre", timeout_s=timeout_s)
