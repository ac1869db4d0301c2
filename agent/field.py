"""The points thread: field results become events, stored events become the alarm memory.

One thread owns every device's point trackers (agent/points.py) and the point-state
store (agent/pointstate.py). The lines' owner tasks hand it their results through one
queue and go back to polling at once, so a storm of point changes is turned into
events here while every line keeps its rhythm. Stored events come back through the
same queue once they are safe (on disk, or delivered), and are recorded in the alarm
memory in queue order, together, in one transaction.

A device that stops or starts answering becomes a comm event here. A result that
cannot be processed, or a memory that cannot be written, is a fault event (the memory
has its own, `pointstate`; agent/faults.py for the rest), never a stopped thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent.buffer import MAX_HELD, Key
from agent.config import DeviceConfig
from agent.gb26875.points import GbDevice, GbPoints
from agent.pipeline import Pipeline
from agent.points import DevicePoints
from agent.pointstate import COMM, ActiveCondition, PointKey, PointStateStore
from agent.texts import CHINESE, Msg, Texts
from core.events import Category, Event, Kind, Lane, Record, Severity, system_event
from drivers.line import CommChange, Line, PollResult
from drivers.profile import Profile, apply_overrides

log = logging.getLogger("alarmgw")

IDLE_S: Final = 1.0  # the points thread wakes at least this often (watchdog liveness)
STORE: Final = "pointstate_store"  # the fault cause of a bug in the alarm memory's store

Queued = PollResult | CommChange | Event | None  # None: stop


@dataclass
class DeviceRuntime:
    """One field device as the gateway runs it."""

    cfg: DeviceConfig
    profile: Profile
    points: DevicePoints
    line: Line | None = None
    lost: bool = False
    last_good_ms: int | None = None
    last_failure: str = ""
    # reported lost before a restart and not restored yet: the first good poll restores it
    remembered_lost: bool = False
    gb: GbDevice | None = None  # its points in GB/T 26875.3 coordinates


def field_devices(
    devices: list[DeviceConfig],
    profiles: Mapping[str, Profile],
    remembered: Mapping[PointKey, Mapping[str, ActiveCondition]],
    texts: Texts = CHINESE,
    gb: GbPoints | None = None,
) -> dict[str, DeviceRuntime]:
    """Every configured device with its profile (overrides applied) and point trackers,
    seeded with what the platform was told before a restart; with `gb`, its events carry
    their GB/T 26875.3 coordinates (detail["gb"])."""
    out: dict[str, DeviceRuntime] = {}
    for dev in devices:
        profile = apply_overrides(profiles[dev.profile], dev.points)
        mapped = None if gb is None else gb.device(dev.id)
        points = DevicePoints(
            dev.id, dev.name, dev.location, profile, remembered, texts=texts, gb=mapped
        )
        runtime = DeviceRuntime(dev, profile, points, gb=mapped)
        runtime.remembered_lost = COMM in remembered.get((dev.id, None), {})
        out[dev.id] = runtime
    return out


def comm_event(dev: DeviceRuntime, change: CommChange, synced: bool, texts: Texts) -> Event:
    """A device stopped answering (after its comm_fault_after failures) or answers again."""
    dev.lost = change.lost
    dev.last_failure = change.reason
    name = dev.cfg.name
    if change.lost:
        dev.points.mark_stale()
        kind, severity, state = Kind.COMM_LOSS, Severity.MINOR, "lost"
        text = texts(Msg.COMM_LOST, device=name, reason=change.reason, failures=change.failures)
    else:
        kind, severity, state = Kind.COMM_RESTORE, Severity.INFO, "online"
        text = texts(Msg.COMM_RESTORED, device=name)
    event = Event(
        kind=kind,
        category=Category.COMM,
        severity=severity,
        state=state,
        text=text,
        device=dev.cfg.id,
        ts_ms=change.ts_ms,
        clock_synced=synced,
        device_name=name,
        location=dev.cfg.location,
        detail={"reason": change.reason, "failures": change.failures},
    )
    return event if dev.gb is None else dev.gb.comm(event, dev.points)


def _answering(result: PollResult) -> CommChange:
    return CommChange(result.device_id, lost=False, reason="", failures=0, ts_ms=result.ts_ms)


class FieldWorker:
    """The points thread. `line_output` and `stored` are its inputs (any thread);
    `start()`, then `stop()` after the lines are closed."""

    def __init__(
        self, devices: dict[str, DeviceRuntime], pointstate: PointStateStore, pipeline: Pipeline
    ) -> None:
        self.devices = devices
        self.pointstate = pointstate
        self._buffer = pipeline.buffer  # asked which stored events are held in RAM only
        self._emit = pipeline.emit
        self._emit_many = pipeline.emit_many
        self._faults = pipeline.faults
        self._clock_synced = pipeline.clock_synced
        self._texts = pipeline.texts
        self._queue: queue.SimpleQueue[Queued] = queue.SimpleQueue()
        self._pointstate_problem: str | None = None  # as last announced
        # events held in RAM by a degraded buffer, recorded in the point state once safe
        self._unsettled: OrderedDict[Key, Event] = OrderedDict()
        self._unsettled_lock = threading.Lock()
        self.alive = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="points", daemon=True)

    # --- inputs ---------------------------------------------------------------------

    def line_output(self, out: PollResult | CommChange) -> None:
        """Called by a line's owner task: hand off at once."""
        self._queue.put(out)

    def stored(self, event: Event) -> None:
        """An event is stored: record its condition in the point state once it is on disk
        or delivered. One held in RAM by a degraded buffer would die with a restart, and
        its condition must then be raised again; once it reaches the disk or the broker,
        it counts."""
        key: Key = (Lane.EVENT, event.seq or 0)
        with self._unsettled_lock:
            self._unsettled[key] = event
            while len(self._unsettled) > MAX_HELD:  # dropped from RAM: never settles
                self._unsettled.popitem(last=False)
        if not self._buffer.is_held(*key):  # registered first: a settle cannot slip between
            self.settled([key])

    def settled(self, keys: list[Key]) -> None:
        """The buffer says these events are safe now (called from its writer, too)."""
        with self._unsettled_lock:
            safe = [e for e in (self._unsettled.pop(key, None) for key in keys) if e]
        for event in safe:
            self._queue.put(event)

    # --- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """After the lines: their last results are processed first."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)

    def drain(self) -> None:
        """At shutdown: events stored after the thread stopped are still recorded."""
        with contextlib.suppress(queue.Empty):
            self.process_queued(self._queue.get_nowait())

    def announce_start_memory(self) -> None:
        """The alarm memory could not be read at start: say what that means."""
        if not self.pointstate.remembered_at_start:
            self._emit(
                system_event(
                    Kind.SYSTEM,
                    Severity.MAJOR,
                    "pointstate_unread",
                    self._texts(Msg.POINTSTATE_UNREAD),
                    point="pointstate_unread",
                    clock_synced=self._clock_synced(),
                    detail={"reason": self.pointstate.problem or "damaged, moved aside"},
                )
            )
        self._announce_pointstate()

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self.alive = time.monotonic()
            try:
                item = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                continue
            if not self.process_queued(item):
                return

    def process_queued(self, first: Queued) -> bool:
        """Handle `first` and everything queued behind it, strictly in queue order; stored
        events that come together are recorded in one transaction. False: told to stop."""
        reported: list[Event] = []
        item = first
        while True:
            self.alive = time.monotonic()
            if isinstance(item, Event):
                reported.append(item)
            else:
                self._record_reported(reported)
                reported = []
                if item is None:
                    return False
                self._field_result_guarded(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                self._record_reported(reported)
                self._keep_pointstate()
                return True

    def _field_result_guarded(self, item: PollResult | CommChange) -> None:
        cause = f"points-{item.device_id}"
        try:
            self._field_result(item)
        except Exception as exc:  # noqa: BLE001 - one bad result must not stop every later one
            self._faults.failed(cause, exc)
        else:
            self._faults.worked(cause)

    def _record_reported(self, events: list[Event]) -> None:
        if not events:
            return
        try:  # the store reports its own trouble (problem); this is for its bugs
            self.pointstate.record(events)
        except Exception as exc:  # noqa: BLE001 - it must never stop the points
            self._faults.failed(STORE, exc)
        else:
            self._faults.worked(STORE)
        self._announce_pointstate()

    def _keep_pointstate(self) -> None:
        """A point state that lags its file tries the file again (at most every few
        seconds, in the store; a no-op when it is up to date)."""
        try:
            self.pointstate.maintain()
        except Exception as exc:  # noqa: BLE001 - it must never stop the points
            self._faults.failed(STORE, exc)
        self._announce_pointstate()

    def _announce_pointstate(self) -> None:
        """A fault while the alarm memory cannot be written, its restore once it can."""
        problem = self.pointstate.problem
        if problem == self._pointstate_problem:
            return
        was, self._pointstate_problem = self._pointstate_problem, problem
        synced = self._clock_synced()
        if problem is not None and was is None:
            event = system_event(
                Kind.FAULT,
                Severity.MAJOR,
                "pointstate",
                self._texts(Msg.POINTSTATE_FAULT, problem=problem),
                point="pointstate",
                clock_synced=synced,
                detail={"reason": problem},
            )
        elif problem is None:
            event = system_event(
                Kind.RESTORE,
                Severity.INFO,
                "pointstate",
                self._texts(Msg.POINTSTATE_RESTORED),
                point="pointstate",
                clock_synced=synced,
            )
        else:
            return
        self._emit(event)

    def _field_result(self, out: PollResult | CommChange) -> None:
        dev = self.devices.get(out.device_id)
        if dev is None:
            return
        synced = self._clock_synced()
        records: list[Record] = []
        if isinstance(out, PollResult):
            dev.last_good_ms = out.ts_ms
            if dev.remembered_lost:  # lost before a restart, answering now
                dev.remembered_lost = False
                records.append(comm_event(dev, _answering(out), synced, self._texts))
            records += dev.points.update(
                out.poll_class, out.blocks, out.ts_ms, synced, failed=out.failed
            )
        elif out.lost and dev.remembered_lost:
            dev.remembered_lost = False  # still lost: the platform knows already
            dev.lost = True
            dev.last_failure = out.reason
            dev.points.mark_stale()
        else:
            records.append(comm_event(dev, out, synced, self._texts))
        self._emit_many(records)
