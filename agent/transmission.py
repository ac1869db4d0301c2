"""The transmission light and the transmission-failed signal (GB 26875.1), as local rules.

- The light (outputs with rule "transmission-light") **blinks** while a fire or manual
  alarm (or a simulated fire transmission, kind test) is stored but not yet confirmed,
  is **steady** once every one of them is confirmed, stays steady while such an alarm
  is still active (not restored) and for `hold_s` (default 300 s, the standard's 5
  minutes) after the later of the last confirmation and the last reset (restore),
  then goes **off**.
- The failure signal (outputs with rule "transmission-failed") beeps rapidly while a
  transmission has failed: an alarm of the light's kind still unconfirmed after
  `fail_after_s` (default 40 s: the GB resend timeout of 10 s, three resends), the
  uplinks down for `link_fault_after_s` (default 100 s, the standard's bound for
  signalling a link fault), or an uplink's own link-fault event (below) not yet
  restored. `alarmgw silence` quiets it until a new failure.

"Confirmed" means the record has left the buffer: every configured uplink confirmed it
or set it aside (agent/buffer.py). The owner of the duties asks that through the
`unconfirmed(seq)` callable given to `tick()`; the buffer's settled notification only
wakes it up, so the light does not depend on what that notification means today.

A link-fault event is a `kind: fault` event of the gateway whose detail says so:
`detail.link_fault` true, or `detail.gb` a UITD state (typeflag 21) with bit 5
(centre-link fault) set. Its restore (same device and point) ends it.

Like every rule here it never does I/O beyond driving outputs, never reads the wall
clock (an injectable monotonic clock, so tests can pass 5 minutes in no time) and is
safe from several threads (one lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from core.events import Category, Event, Kind

LIT_CATEGORIES: Final = frozenset({Category.FIRE, Category.MANUAL})
LIGHT_BLINK: Final = (0.5, 0.5)  # sending
FAILED_BLINK: Final = (0.15, 0.15)  # rapid beeps: unlike the alarm's steady tone
# A tick asks the buffer about the oldest sending records until this many are still
# unconfirmed: the light blinks and the failure timer runs on the oldest anyway, and a
# storm of fire alarms costs a bounded number of reads twice a second (bench_duties.py).
CHECKS_PER_TICK: Final = 16
GB_UITD_STATE: Final = 21
GB_LINK_FAULT_BIT: Final = 1 << 5
GATEWAY: Final = "gateway"


class Switchable(Protocol):
    def on(self) -> None: ...
    def off(self) -> None: ...
    def blink(self, on_s: float, off_s: float) -> None: ...


@dataclass(frozen=True)
class TransmissionSettings:
    """The [duties] keys this rule reads (agent.config.DutiesConfig fits)."""

    transmission_hold_s: float = 300.0
    transmission_fail_after_s: float = 40.0
    link_fault_after_s: float = 100.0


class Settings(Protocol):
    @property
    def transmission_hold_s(self) -> float: ...
    @property
    def transmission_fail_after_s(self) -> float: ...
    @property
    def link_fault_after_s(self) -> float: ...


def lights_up(event: Event) -> bool:
    """A record whose transmission the light shows: a fire or manual alarm, or a
    simulated fire transmission (the monthly test shows the light as the real one)."""
    if event.category not in LIT_CATEGORIES:
        return False
    return event.kind is Kind.ALARM or (event.kind is Kind.TEST and event.category is Category.FIRE)


def payload_lights_up(payload: Mapping[str, Any]) -> bool:
    """lights_up of a stored record's payload (the feed's JSON: docs/feed.md)."""
    category, kind = payload.get("category"), payload.get("kind")
    if category not in {c.value for c in LIT_CATEGORIES}:
        return False
    return kind == Kind.ALARM.value or (kind == Kind.TEST.value and category == "fire")


def is_link_fault(event: Event) -> bool:
    """An uplink's own link-fault event (see the module's docstring)."""
    if event.device != GATEWAY or event.kind is not Kind.FAULT or not event.detail:
        return False
    if event.detail.get("link_fault") is True:
        return True
    gb: Any = event.detail.get("gb")
    return (
        isinstance(gb, dict)
        and gb.get("tf") == GB_UITD_STATE
        and isinstance(gb.get("status"), int)
        and bool(gb["status"] & GB_LINK_FAULT_BIT)
    )


class TransmissionRule:
    """The transmission light and the failure signal; see the module's docstring."""

    def __init__(
        self,
        lights: Sequence[Switchable],
        failure_outputs: Sequence[Switchable],
        settings: Settings,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lights = list(lights)
        self._failure = list(failure_outputs)
        self._hold_s = settings.transmission_hold_s
        self._fail_after_s = settings.transmission_fail_after_s
        self._link_after_s = settings.link_fault_after_s
        self._now = monotonic
        self._lock = threading.Lock()
        self._sending: dict[int, float] = {}  # seq -> when it was stored (monotonic)
        self._active: set[tuple[str, str | None]] = set()  # alarms not yet restored
        self._confirmed_once = False  # since the light was last off
        self._hold_until: float | None = None
        self._down_since: float | None = monotonic()  # no uplink connected yet
        self._link_faults: set[tuple[str, str | None]] = set()
        self._silenced: set[str] = set()
        self._light = ""  # "": not driven yet, so the first look drives every output
        self._sounding = False
        self._sounding_mode = ""
        self._apply_locked()

    # --- what it is told ---------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Every event, at once (LocalRules.on_event): alarms, restores, link faults."""
        key = (event.device, event.point)
        with self._lock:
            if is_link_fault(event):
                self._link_faults.add(key)
            elif event.kind is Kind.RESTORE:
                self._link_faults.discard(key)
                if key in self._active:
                    self._active.discard(key)
                    self._hold_until = self._now() + self._hold_s  # the panel reset
            elif lights_up(event) and event.kind is Kind.ALARM and not event.test:
                self._active.add(key)
            else:
                return
            self._apply_locked()

    def stored(self, event: Event) -> None:
        """An event has its seq (the pipeline's stored listener): one of the light's
        kind is now being sent."""
        if event.seq is None or not lights_up(event):
            return
        with self._lock:
            self._sending[event.seq] = self._now()
            self._apply_locked()

    def resume(self, seqs: Iterable[int]) -> None:
        """At start: records of the light's kind a previous run stored and no uplink has
        confirmed yet (still in the buffer): being sent again, from now. Without this a
        fire unconfirmed across a restart (kill -9, power cut) drove neither the light
        nor the failure signal."""
        with self._lock:
            now = self._now()
            for seq in seqs:
                self._sending.setdefault(seq, now)
            self._apply_locked()

    def uplink_changed(self, connected: bool) -> None:
        with self._lock:
            if connected:
                self._down_since = None
            elif self._down_since is None:
                self._down_since = self._now()
            self._apply_locked()

    def tick(self, unconfirmed: Callable[[int], bool]) -> None:
        """Look again (the duties' thread, about twice a second, and on every settled
        notification): which sending records are confirmed now, hold and failure timers."""
        with self._lock:
            sending = sorted(self._sending)
        done: list[int] = []
        waiting = 0
        for seq in sending:  # outside the lock: each is a read of the buffer
            if not unconfirmed(seq):
                done.append(seq)
                continue
            waiting += 1
            if waiting >= CHECKS_PER_TICK:
                break  # the newer ones are looked at once these are confirmed
        with self._lock:
            if done:
                for seq in done:
                    self._sending.pop(seq, None)
                self._confirmed_once = True
                self._hold_until = max(self._hold_until or 0.0, self._now() + self._hold_s)
            self._apply_locked()

    def silence(self) -> bool:
        """Quiet the failure signal until a new failure; True if it was sounding."""
        with self._lock:
            causes = self._causes_locked()
            was = bool(causes - self._silenced)
            self._silenced = causes
            self._apply_locked()
            return was

    def reapply(self) -> None:
        with self._lock:
            self._light = self._sounding_mode = ""  # drive again whatever they were told
            self._apply_locked()

    # --- what it shows -------------------------------------------------------------------

    @property
    def light(self) -> str:
        """What the light shows: blink, on or off."""
        with self._lock:
            return self._light

    @property
    def failed(self) -> list[str]:
        """Why the failure signal sounds (or would, if not silenced), for status."""
        with self._lock:
            return sorted(self._causes_locked())

    @property
    def sounding(self) -> bool:
        with self._lock:
            return self._sounding

    def _causes_locked(self) -> set[str]:
        now = self._now()
        causes = {
            f"unconfirmed:{seq}"
            for seq, since in self._sending.items()
            if now - since >= self._fail_after_s
        }
        if self._down_since is not None and now - self._down_since >= self._link_after_s:
            causes.add("uplink_down")
        causes.update(f"link_fault:{device}/{point}" for device, point in self._link_faults)
        return causes

    def _light_locked(self) -> str:
        if self._sending:
            return "blink"
        if self._confirmed_once and self._active:
            return "on"  # sent, and the alarm is still there
        if self._hold_until is not None and self._now() < self._hold_until:
            return "on"
        self._confirmed_once = False
        self._hold_until = None
        return "off"

    def _apply_locked(self) -> None:
        light = self._light_locked()
        if light != self._light:
            self._light = light
            for output in self._lights:
                if light == "blink":
                    output.blink(*LIGHT_BLINK)
                elif light == "on":
                    output.on()
                else:
                    output.off()
        causes = self._causes_locked()
        self._silenced &= causes  # a cause that ended and comes again sounds again
        sounding = bool(causes - self._silenced)
        if sounding != self._sounding or self._sounding_mode == "":
            self._sounding = sounding
            self._sounding_mode = "set"
            for output in self._failure:
                if sounding:
                    output.blink(*FAILED_BLINK)
                else:
                    output.off()
