"""Gateway faults for failures that used to be only a line in the log.

A local output that cannot be driven (the buzzer's GPIO line refuses), a listener that
raises (the local rules, a follower of the event stream, the buffer's or the uplink's
callbacks, a GPIO contact's), a field result the points thread cannot process: each is
a `kind: fault` event about the gateway (`device: gateway`, `point`: the cause), raised
once when the failure starts and restored (`kind: restore`) the first time the same
thing works again. While it persists nothing more is sent: at most one fault per cause,
never a flood. The log keeps the traceback of the first failure of each run of them.

`Faults.guard(cause, fn)` wraps a callback: it never raises, it reports. `WatchedOutput`
wraps an output a rule drives: one output failing must not stop the others.

It must never raise into its caller (it runs inside the buffer's writer, the GPIO
thread, the points thread), and never call `emit` while holding its own lock. An
output is driven from inside the rules' lock, and emit() feeds the rules: an
output's fault and restore are emitted from a short-lived thread of their own (one
per change of state, so a handful at most), never from the call that drove it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, ParamSpec, Protocol

from agent.texts import CHINESE, Msg, Texts
from core.events import Event, Kind, Record, Severity, system_event

log = logging.getLogger("alarmgw")

INTERNAL_ERROR: Final = "internal_error"  # the state (and condition) of a failing callback
OUTPUT_FAILED: Final = "output_failed"  # the state of an output that cannot be driven
LINK_FAULT: Final = "link_fault"  # the state of an uplink's link that stopped working (GB)
MAX_POINT: Final = 64  # a point id is at most 64 characters (docs/schemas)
MAX_REASON: Final = 200

P = ParamSpec("P")


class Emit(Protocol):
    def __call__(self, record: Record) -> object: ...


class FaultReport(Protocol):
    """What a part needs to report its own failures (Faults fits)."""

    def failed(self, cause: str, exc: BaseException, *, what: str = "") -> None: ...
    def worked(self, cause: str) -> None: ...


class Switchable(Protocol):
    """An output a rule drives (agent.rules.Switchable)."""

    def on(self) -> None: ...
    def off(self) -> None: ...
    def blink(self, on_s: float, off_s: float) -> None: ...


@dataclass
class Faults:
    """One fault per cause while it lasts, one restore when it works again. Thread-safe.

    `cause` is the event's point: an id naming what failed (`rules`, `output-buzzer`).
    """

    _emit: Emit
    _clock_synced: Callable[[], bool] = lambda: True
    _texts: Texts = CHINESE
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _failing: dict[str, str] = field(default_factory=dict, init=False)  # cause -> its state
    # the restore's text of a condition raised with its own texts (check_failed)
    _restore_text: dict[str, str] = field(default_factory=dict, init=False)

    @property
    def quiet(self) -> bool:
        """Nothing is failing (a cheap test for hot paths)."""
        return not self._failing

    @property
    def failing(self) -> dict[str, str]:
        """The causes that are failing now, with their state."""
        with self._lock:
            return dict(self._failing)

    def failed(self, cause: str, exc: BaseException, *, what: str = "") -> None:
        """`cause` failed with `exc`: a fault event, unless one is out for it already."""
        self._raise(cause, INTERNAL_ERROR, exc, Msg.INTERNAL_ERROR, what=what or cause)

    def output_failed(self, output: str, exc: BaseException) -> None:
        self._raise(
            _output_cause(output), OUTPUT_FAILED, exc, Msg.OUTPUT_FAILED, later=True, output=output
        )

    def check_failed(
        self, cause: str, state: str, text: str, *, restore_text: str, reason: str
    ) -> None:
        """A check of the gateway's own (a self-test item) failed: a fault event with
        its own texts, once while it lasts; `worked(cause)` restores it."""
        cause = cause[:MAX_POINT]
        with self._lock:
            if cause in self._failing:
                return
            self._failing[cause] = state
            self._restore_text[cause] = restore_text
        log.error("%s failed: %s", cause, reason)
        self._send(
            system_event(
                Kind.FAULT,
                Severity.MINOR,
                state,
                text,
                point=cause,
                clock_synced=self._clock_synced(),
                detail={"reason": reason[:MAX_REASON]},
            )
        )

    def link_failed(self, cause: str, reason: str) -> None:
        """The link of an uplink to its far end stopped working (the GB centre stopped
        confirming): one fault event until `worked(cause)`."""
        # detail.link_fault: the local failure signal sounds on it (agent/transmission.py)
        self._raise(cause, LINK_FAULT, ConnectionError(reason), Msg.GB_LINK_FAULT, link_fault=True)

    def worked(self, cause: str) -> None:
        """`cause` just worked: the restore of its fault, if one is out. Cheap when none
        is (it runs on hot paths: once per event for the rules)."""
        if not self._failing:
            return
        with self._lock:
            state = self._failing.pop(cause, None)
            own_text = self._restore_text.pop(cause, None)
        if state is None:
            return
        output = state == OUTPUT_FAILED
        if own_text is not None:
            text = own_text
        elif output:
            text = self._texts(Msg.OUTPUT_RESTORED, output=cause.removeprefix(_OUTPUT))
        elif state == LINK_FAULT:
            text = self._texts(Msg.GB_LINK_RESTORED)
        else:
            text = self._texts(Msg.INTERNAL_RESTORED, what=cause)
        log.warning("%s works again", cause)
        self._send(
            system_event(
                Kind.RESTORE,
                Severity.INFO,
                "normal",
                text,
                point=cause,
                clock_synced=self._clock_synced(),
                detail={"restores": state},
            ),
            later=output,
        )

    def output_worked(self, output: str) -> None:
        self.worked(_output_cause(output))

    def guard(self, cause: str, fn: Callable[P, object]) -> Callable[P, None]:
        """`fn` that never raises: a failure is a fault of `cause`, a success after one
        its restore."""

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported as a fault event, not lost
                self.failed(cause, exc)
            else:
                self.worked(cause)

        return guarded

    def _raise(
        self,
        cause: str,
        state: str,
        exc: BaseException,
        msg: Msg,
        *,
        later: bool = False,
        link_fault: bool = False,
        **fields: str,
    ) -> None:
        cause = cause[:MAX_POINT]
        with self._lock:
            if cause in self._failing:
                return  # said once: quiet until it works again
            self._failing[cause] = state
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
        log.error("%s failed: %s", cause, reason, exc_info=exc)
        self._send(
            system_event(
                Kind.FAULT,
                Severity.MAJOR,
                state,
                self._texts(msg, reason=reason, **fields),
                point=cause,
                clock_synced=self._clock_synced(),
                detail={"reason": reason, "link_fault": True} if link_fault else {"reason": reason},
            ),
            later=later,
        )

    def _send(self, event: Event, *, later: bool = False) -> None:
        if later:  # see the module's docstring: not from inside the rules' lock
            threading.Thread(
                target=self._send, args=(event,), name="fault-report", daemon=True
            ).start()
            return
        try:
            self._emit(event)
        except Exception:  # the last place to say it is the log
            log.exception("fault event %s/%s could not be emitted", event.point, event.state)


_OUTPUT: Final = "output-"


def _output_cause(output: str) -> str:
    return (_OUTPUT + output)[:MAX_POINT]


class WatchedOutput:
    """An output whose failures are faults, restored once the command that failed is
    taken. (Only that one: an output repeats no command it is already in, so a later
    `off` after a failed `on` may do nothing at all and proves nothing.)"""

    def __init__(self, output_id: str, output: Switchable, faults: Faults) -> None:
        self.id = output_id
        self._output = output
        self._faults = faults
        self._failed: str | None = None  # the command that failed, until it is taken

    def on(self) -> None:
        self._drive("on", self._output.on)

    def off(self) -> None:
        self._drive("off", self._output.off)

    def blink(self, on_s: float, off_s: float) -> None:
        self._drive("blink", lambda: self._output.blink(on_s, off_s))

    def _drive(self, name: str, command: Callable[[], None]) -> None:
        try:
            command()
        except Exception as exc:  # noqa: BLE001 - the other outputs must still be driven
            self._failed = name
            self._faults.output_failed(self.id, exc)
        else:
            if self._failed in (None, name):
                self._failed = None
                self._faults.output_worked(self.id)
