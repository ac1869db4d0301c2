"""The duty check (查岗) of a user information transmission device, and the thread that
keeps the duties' timers (GB 26875.1).

A duty check asks whether someone is on duty. It comes from the city's monitoring
centre (GB/T 26875.3 typeflag 91: the GB uplink calls `request(source="centre", ...)`)
or from the platform (the MQTT command `duty-check`). The gateway then prompts on the
outputs with rule "duty-prompt" (an intermittent chirp and flash, agent/rules.py) until:

- someone answers: the answer button (an `[[inputs]]` with role "duty_answer") or
  `alarmgw ack` — an event `state: answered` with the response time, and, for the
  centre, detail["gb"] = UITD operation (typeflag 24) with bit 5, duty-check answer;
- a new duty check arrives: the old one ends unanswered (`detail.ended: superseded`)
  and the prompt starts again for the new one;
- its timeout passes (the centre's, or `[duties] duty_check_timeout_s`, default 600 s):
  an event `state: unanswered`. It carries no detail["gb"]: GB/T 26875.3 has no record
  for "nobody answered"; the centre learns it from the answer that does not come.

`DutyCheck` owns that state (one lock) and is driven by a monotonic clock that tests can
replace: the response time never depends on the wall clock, which on a Pi without an
RTC may jump when NTP sets it. `Duties` is the running part: one thread that calls
`tick()` on the duty check and on the transmission light about twice a second.

It must never raise into its callers (the GPIO thread, the control socket, the command
worker, the GB uplink): what cannot be done is a result or a fault event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent.buffer import ReadCursor, Reader, StoredRow
from agent.config import GATEWAY_DEVICE_ID
from agent.texts import CHINESE, Msg, Texts
from agent.transmission import payload_lights_up
from core.events import Category, Event, Kind, Lane, Record, Severity, now_ms

log = logging.getLogger("alarmgw")

POINT: Final = "duty_check"
DEFAULT_TIMEOUT_S: Final = 600.0  # GB 26875.1: the prompt is held for 10 minutes
MIN_TIMEOUT_S: Final = 10.0
MAX_TIMEOUT_S: Final = 3600.0
TICK_S: Final = 0.5
RESUME_ROWS: Final = 200  # per reader, at start: more unconfirmed alarms than a site has
# detail["gb"] of an answer (the GB contract): UITD operation, bit 5 duty-check answer
GB_DUTY_ANSWER: Final = {"tf": 24, "flags": 1 << 5, "operator": 0}
SOURCES: Final = ("centre", "platform")


class Emit(Protocol):
    def __call__(self, record: Record) -> object: ...


class Prompt(Protocol):
    """What shows the prompt (agent.rules.DutyPromptRule fits)."""

    def show(self, showing: bool) -> None: ...


@dataclass
class _Pending:
    source: str
    requested_by: str
    requested_ms: int
    started: float  # monotonic
    timeout_s: float


class DutyCheck:
    """One duty check at a time; see the module's docstring. Thread-safe."""

    def __init__(
        self,
        emit: Emit,
        prompt: Callable[[], Prompt],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        texts: Texts = CHINESE,
        clock_synced: Callable[[], bool] = lambda: True,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = now_ms,
    ) -> None:
        """`prompt()` gives the prompt's rule as it is now (the runtime builds the
        rules once GPIO is open, after this)."""
        self._emit = emit
        self._prompt = prompt
        self.timeout_s = timeout_s
        self._texts = texts
        self._clock_synced = clock_synced
        self._now = monotonic
        self._wall_ms = wall_ms
        self._lock = threading.Lock()
        self._pending: _Pending | None = None
        # the prompt is driven outside _lock (an output may be slow), one at a time, from the
        # state as it is when driven: the last drive after any change shows that change
        self._show_lock = threading.Lock()

    # --- asked ------------------------------------------------------------------------

    def request(
        self, source: str, timeout_s: float | None = None, requested_by: str | None = None
    ) -> dict[str, Any]:
        """Start a duty check (a new one ends the one waiting, unanswered). `timeout_s`
        None: the configured one; otherwise clamped to 10..3600 s. Returns what started."""
        wait_s = self.timeout_s if timeout_s is None else _clamp(timeout_s)
        new = _Pending(
            source=source,
            requested_by=requested_by or source,
            requested_ms=self._wall_ms(),
            started=self._now(),
            timeout_s=wait_s,
        )
        with self._lock:
            old, self._pending = self._pending, new
        if old is not None:
            self._send(self._unanswered(old, "superseded"))
        self._show()
        log.warning("duty check from %s (%s): waiting %.0f s", source, new.requested_by, wait_s)
        return {"started": True, "timeout_s": wait_s, "restarted": old is not None}

    def answer(self, how: str) -> dict[str, Any]:
        """Someone on duty answered (`how`: "input:<id>", "cli:<user>"). Returns
        {"answered": bool, "response_s": ...}; answered false when none was waiting."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            log.info("duty answer (%s) with no duty check waiting", how)
            return {"answered": False, "response_s": None}
        self._show()
        response_s = round(max(0.0, self._now() - pending.started), 1)
        source = self._source_word(pending.source)
        event = self._event(
            pending,
            "answered",
            Severity.INFO,
            self._texts(Msg.DUTY_ANSWERED, source=source, response_s=response_s, how=how),
            {"response_s": response_s, "answered_by": how, **_centre_answer(pending.source)},
            value=response_s,
        )
        self._send(event)
        return {"answered": True, "response_s": response_s, "source": pending.source}

    def tick(self) -> None:
        """The timeout: called about twice a second by Duties (and by tests)."""
        with self._lock:
            pending = self._pending
            if pending is None or self._now() - pending.started < pending.timeout_s:
                return
            self._pending = None
        self._show()
        self._send(self._unanswered(pending, "timeout"))

    def stop(self) -> None:
        """The agent stops: a check still waiting is recorded unanswered."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._show()
            self._send(self._unanswered(pending, "stopped"))

    @property
    def waiting(self) -> dict[str, Any] | None:
        """The check waiting for its answer, for status; None when none is."""
        with self._lock:
            pending = self._pending
        if pending is None:
            return None
        waited = self._now() - pending.started
        return {
            "source": pending.source,
            "requested_by": pending.requested_by,
            "requested_ms": pending.requested_ms,
            "waited_s": round(waited, 1),
            "left_s": round(max(0.0, pending.timeout_s - waited), 1),
        }

    # --- events ---------------------------------------------------------------------------

    def _unanswered(self, pending: _Pending, ended: str) -> Event:
        waited_s = round(max(0.0, self._now() - pending.started), 1)
        source = self._source_word(pending.source)
        return self._event(
            pending,
            "unanswered",
            Severity.WARNING,
            self._texts(Msg.DUTY_UNANSWERED, source=source, waited_s=waited_s),
            {"ended": ended, "waited_s": waited_s},
        )

    def _event(
        self,
        pending: _Pending,
        state: str,
        severity: Severity,
        text: str,
        extra: dict[str, Any],
        value: float | None = None,
    ) -> Event:
        detail = {
            "source": pending.source,
            "requested_by": pending.requested_by,
            "requested_ms": pending.requested_ms,
            "timeout_s": pending.timeout_s,
            **extra,
        }
        return Event(
            kind=Kind.STATE,
            category=Category.SYSTEM,
            severity=severity,
            state=state,
            text=text,
            device=GATEWAY_DEVICE_ID,
            point=POINT,
            value=value,
            unit="s" if value is not None else None,
            ts_ms=self._wall_ms(),
            clock_synced=self._clock_synced(),
            detail=detail,
        )

    def _source_word(self, source: str) -> str:
        if source == "centre":
            return self._texts(Msg.WORD_SOURCE_CENTRE)
        if source == "platform":
            return self._texts(Msg.WORD_SOURCE_PLATFORM)
        return source

    def _send(self, event: Event) -> None:
        try:
            self._emit(event)
        except Exception:  # the pipeline reports its own failures; this must not raise
            log.exception("duty check: the %s event could not be emitted", event.state)

    def _show(self) -> None:
        """Drive the prompt to the state now: showing while a check waits. Racing changes
        (an answer, a timeout, a new request) each drive it after theirs, one at a time,
        so it never ends showing with nothing waiting, nor dark while one waits."""
        with self._show_lock:
            with self._lock:
                showing = self._pending is not None
            self._drive(showing)

    def _drive(self, showing: bool) -> None:
        try:
            self._prompt().show(showing)
        except Exception:  # outputs are WatchedOutputs: their failure is already a fault
            log.exception("duty check: the prompt could not be driven")


def _centre_answer(source: str) -> dict[str, Any]:
    """The answer's GB/T 26875.3 shape (a UITD operation, duty answer) only when the centre
    asked: a platform's duty check is answered to the platform alone."""
    return {"gb": dict(GB_DUTY_ANSWER)} if source == "centre" else {}


def _clamp(timeout_s: float) -> float:
    return min(MAX_TIMEOUT_S, max(MIN_TIMEOUT_S, float(timeout_s)))


class DutySettings(Protocol):
    @property
    def duty_check_timeout_s(self) -> float: ...


class Unconfirmed(Protocol):
    def __call__(self, seq: int) -> bool: ...


class LightRule(Protocol):
    """agent.transmission.TransmissionRule, as the duties drive it."""

    def stored(self, event: Event) -> None: ...
    def tick(self, unconfirmed: Unconfirmed) -> None: ...
    def resume(self, seqs: list[int]) -> None: ...


class DutyRules(Protocol):
    """What the duties need of the local rules (agent.rules.LocalRules fits)."""

    @property
    def duty_prompt(self) -> Prompt: ...
    @property
    def transmission(self) -> LightRule: ...


class PendingRows(Protocol):
    """The buffer, asked whether every reader is done with a record, and (at start) what
    each reader still has to send (EventBuffer fits)."""

    @property
    def readers(self) -> tuple[Reader, ...]: ...

    def delivered(self, lane: Lane, seq: int) -> bool: ...

    def next_rows(self, cursor: ReadCursor, limit: int) -> list[StoredRow]: ...


class Guard(Protocol):
    """agent.faults.Faults: a callback that raises becomes a fault event of `cause`."""

    def guard(self, cause: str, fn: Callable[[], None]) -> Callable[[], None]: ...


class UitdDuties:
    """The duties wired to the running gateway (agent/runtime.py builds one): the duty
    check, the timers' thread, the transmission light's questions to the buffer, and the
    hook the GB uplink calls on a centre's duty check."""

    def __init__(
        self,
        emit: Emit,
        buffer: PendingRows,
        rules: Callable[[], DutyRules],
        faults: Guard,
        settings: DutySettings,
        *,
        texts: Texts = CHINESE,
        clock_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        """`rules()` gives the local rules as they are now (built once GPIO is open)."""
        self._buffer = buffer
        self._rules = rules
        self.check = DutyCheck(
            emit,
            lambda: rules().duty_prompt,
            timeout_s=settings.duty_check_timeout_s,
            texts=texts,
            clock_synced=clock_synced,
        )
        self.timers = Duties(
            [
                faults.guard("duty_timer", self.check.tick),
                faults.guard("transmission_timer", self._light_tick),
            ]
        )

    def stored(self, event: Event) -> None:
        """The pipeline's stored listener: an alarm the light shows is being sent."""
        self._rules().transmission.stored(event)

    def hand_to(self, uplinks: list[Any]) -> None:
        """Give the duty check to every uplink that takes one (the GB uplink's
        `on_duty_check`, GB contract) and was not given one when it was built. Without a
        GB uplink the platform's `duty-check` command is the only way in."""
        for uplink in uplinks:
            if getattr(uplink, "on_duty_check", False) is None:
                uplink.on_duty_check = self.check.request

    def unconfirmed(self, seq: int) -> bool:
        """Is this event still waiting for any uplink (not every one confirmed it yet)?"""
        return not self._buffer.delivered(Lane.EVENT, seq)

    def resume(self) -> int:
        """At start, once the rules are built: the fire and manual alarms (and simulated
        fires) a previous run stored that some uplink has still to confirm drive the light
        and its failure timer again. Returns how many."""
        seqs: set[int] = set()
        for reader in self._buffer.readers:
            # life-safety rows come first in every reader's order
            for row in self._buffer.next_rows(ReadCursor(reader=reader.name), RESUME_ROWS):
                if row.lane is Lane.EVENT and _lights_up(row.payload):
                    seqs.add(row.seq)
        if seqs:
            self._rules().transmission.resume(sorted(seqs))
            log.warning("transmission light: %d alarm(s) from before the restart unconfirmed",
                        len(seqs))  # fmt: skip
        return len(seqs)

    def _light_tick(self) -> None:
        self._rules().transmission.tick(self.unconfirmed)


def _lights_up(payload: bytes) -> bool:
    try:
        data = json.loads(bytes(payload))
    except ValueError:
        return False  # not the light's business: the uplink sets such a row aside
    return isinstance(data, dict) and payload_lights_up(data)


class Duties:
    """The duties' own thread: ticks every part about twice a second, or at once when
    woken (the buffer settled records). A part (agent/runtime.py `Running`)."""

    def __init__(self, parts: list[Callable[[], None]], tick_s: float = TICK_S) -> None:
        self._parts = parts
        self._tick_s = tick_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._alive = time.monotonic()

    @property
    def alive(self) -> float:
        return self._alive

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="duties", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def tick_once(self) -> None:
        for part in self._parts:
            try:
                part()
            except Exception:  # one part's bug must not stop the others' timers
                log.exception("duties: a tick failed")

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._alive = time.monotonic()
            self.tick_once()
            self._wake.wait(self._tick_s)
            self._wake.clear()
