"""The event path of the running gateway: everything that happens goes through `emit()`.

A record is handed at once to the local rules (the buzzer must not wait for the
disk), then to the buffer, durably; once the buffer has stored it, each event goes
to the listeners of stored events: the points thread's memory of what the platform
was told (agent/field.py), the recent events `alarmgw events` shows, the technician
following the stream (agent/fanout.py), the journal. A part added later (a duty of
the user information transmission device) listens with `listen_stored`.

A listener that raises, or a record the buffer refuses, is a fault event
(agent/faults.py), never only a line in the log; the other listeners still run.

This module decides nothing about alarms and speaks to no hardware; it must never
let one record's trouble stop the next, and never block the buffer's writer (the
stored listeners run on it: they hand off or append, nothing more).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Final, Protocol

from agent.buffer import EventBuffer, GroupRefused, StoredRecords
from agent.fanout import EventFanout
from agent.faults import Faults
from agent.texts import CHINESE, Msg, Texts
from agent.undertest import LEASE_S, PointsUnderTest
from core.events import Event, Identity, Kind, Record, Severity, system_event

log = logging.getLogger("alarmgw")

RECENT_EVENTS: Final = 500  # kept in memory for `alarmgw events` (the buffer holds what is unsent)
RULES: Final = "rules"  # the fault causes of this module (the events' point)
STORE: Final = "event_store"

StoredListener = Callable[[Event], None]


class EventRules(Protocol):
    """What acts on an event at once, before it is stored (agent.rules.LocalRules)."""

    def on_event(self, event: Event) -> None: ...


class Pipeline:
    """emit() -> local rules at once -> buffer -> stored listeners. Thread-safe."""

    def __init__(
        self,
        buffer: EventBuffer,
        identity: Identity,
        *,
        clock_synced: Callable[[], bool] = lambda: True,
        texts: Texts = CHINESE,
    ) -> None:
        self.buffer = buffer
        self.identity = identity
        self.clock_synced = clock_synced  # for the parts that make events through here
        self.texts = texts
        self.faults = Faults(self.emit, clock_synced, texts)
        self.followers = EventFanout()
        self._recent: deque[Event] = deque(maxlen=RECENT_EVENTS)  # serialised on demand
        self._recent_lock = threading.Lock()
        self._listeners: list[tuple[str, StoredListener]] = []
        self._rules: EventRules | None = None  # None: still being built (see set_rules)
        self._rules_lock = threading.Lock()
        self._early_events: list[Event] = []
        # the self-check's point under test: its events are tests (agent/undertest.py)
        self.under_test = PointsUnderTest(announce=self._under_test_changed)

    # --- wiring ---------------------------------------------------------------------

    def listen_stored(self, cause: str, listener: StoredListener) -> None:
        """Call `listener(event)` for every event once it is stored (on the buffer's
        writer thread: it must be quick). A failure is a fault of `cause`."""
        self._listeners.append((cause, listener))

    def set_rules(self, rules: EventRules) -> None:
        """The local rules are built: events that came before (GPIO reports its levels
        while the outputs are opened) are replayed, so an alarm held at boot sounds."""
        with self._rules_lock:
            self._rules = rules
            early, self._early_events = self._early_events, []
        for event in early:
            self._to_rules(event)

    def _under_test_changed(self, key: tuple[str, str], testing: bool, why: str) -> None:
        """A point under test starts or ends: said on the feed, so that a platform knows
        why that point's events are tests (and when they are real again)."""
        device, point = key
        if testing:
            state, msg = "point_under_test", Msg.POINT_UNDER_TEST
        else:
            state, msg = "point_test_ended", Msg.POINT_TEST_ENDED
        text = self.texts(msg, device=device, point=point, why=why)
        self.emit(system_event(
            Kind.SYSTEM, Severity.INFO, state, text, point="under_test",
            clock_synced=self.clock_synced(),
            detail={"device": device, "point": point, "why": why} if why else
            {"device": device, "point": point, "lease_s": LEASE_S},
        ))  # fmt: skip

    # --- the path -------------------------------------------------------------------

    def emit(self, record: Record) -> Future[Record]:
        """Hand a record to local rules (at once) and to the buffer (durably)."""
        record = self.under_test.apply(record)
        if isinstance(record, Event):
            self._to_rules(record)
        future = self.buffer.submit(record)
        future.add_done_callback(functools.partial(self._stored, record))
        return future

    def emit_many(self, records: list[Record]) -> None:
        """One poll's records: to local rules at once, to the buffer as one group (one
        durable commit, consecutive seqs). Called from the points thread."""
        if not records:
            return
        if self.under_test.active:  # a storm's 10,000 events are not copied otherwise
            records = [self.under_test.apply(r) for r in records]
        for record in records:
            if isinstance(record, Event):
                self._to_rules(record)
        self.buffer.submit_many(records).add_done_callback(
            lambda future: self._group_stored(records, future)
        )

    def recent(self) -> list[Event]:
        """The last RECENT_EVENTS stored events, oldest first."""
        with self._recent_lock:
            return list(self._recent)

    def _to_rules(self, event: Event) -> None:
        with self._rules_lock:
            rules = self._rules
            if rules is None:
                self._early_events.append(event)
                return
            try:
                rules.on_event(event)
            except Exception as exc:  # noqa: BLE001 - a broken rule must not stop the event
                failed: BaseException | None = exc
            else:
                failed = None
        # reported outside the lock: the fault event comes through here again
        if failed is not None:
            self.faults.failed(RULES, failed)
        else:
            self.faults.worked(RULES)

    def _group_stored(self, records: list[Record], future: Future[StoredRecords]) -> None:
        exc = future.exception()
        if isinstance(exc, GroupRefused):
            # one unstorable record must not cost the others of its poll
            for i, record in enumerate(records):
                if i in exc.bad:
                    self._refused(record, exc)
                else:
                    self.buffer.submit(record).add_done_callback(
                        functools.partial(self._stored, record)
                    )
            return
        if exc is not None:
            self.faults.failed(STORE, exc)  # the writer failed on the batch
            return
        stored = future.result()
        for i, record in enumerate(records):
            if isinstance(record, Event):
                self._after_store(stored[i])
        if not self.faults.quiet:
            self.faults.worked(STORE)
            for record in records:
                self.faults.worked(_store_cause(record))

    def _stored(self, record: Record, future: Future[Record]) -> None:
        exc = future.exception()
        if exc is not None:
            self._refused(record, exc)
            return
        self._after_store(future.result())
        if not self.faults.quiet:
            self.faults.worked(STORE)
            self.faults.worked(_store_cause(record))

    def _refused(self, record: Record, exc: BaseException) -> None:
        """A record the buffer would not take: a fault per device point (a record that
        cannot be serialised comes again with every poll: one fault, not one a poll)."""
        self.faults.failed(_store_cause(record), exc, what=f"{record.device}/{record.point}")

    def _after_store(self, record: Record) -> None:
        """A record is queued: tell the listeners, keep it for `events`, show it to a
        technician following, log it."""
        if not isinstance(record, Event):
            return
        for cause, listener in self._listeners:
            try:
                listener(record)
            except Exception as exc:  # noqa: BLE001 - the other listeners still run
                self.faults.failed(cause, exc)
            else:
                self.faults.worked(cause)
        with self._recent_lock:
            self._recent.append(record)
        if self.followers.subscriber_count():  # serialised only for a technician following
            try:
                self.followers.publish(record.to_payload(self.identity))
            except Exception as exc:  # noqa: BLE001 - a follower's trouble is not the event's
                self.faults.failed("event_followers", exc)
        log.info(
            "event seq=%s %s %s/%s %s",
            record.seq,
            record.kind.value,
            record.device,
            record.point,
            record.text,
            extra={"device": record.device, "seq": record.seq},
        )


def _store_cause(record: Record) -> str:
    return f"{STORE}-{record.device}-{record.point or ''}"
