"""The points a technician is testing now (the monthly self-check, `alarmgw selfcheck`).

Triggering a detector to check it raises a real-looking alarm. While the self-check has
declared that one point under test (the control socket's `selfcheck_testing`, bounded in
time), each event of that point is marked a test as it enters the pipeline: `test: true`
on the feed ("consumers must not dispatch", event.schema.json), bit 0 of its GB/T 26875.3
status word clear (the standard's "test" state), and the local alarm rule leaves the
evacuation buzzer silent (agent/rules.py ignores test events). An alarm of any other
point stays real, and so does this point's once its window has passed.

This module must never do I/O or block: `apply` runs for every record on the event path;
with nothing under test it costs one attribute read.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from core.events import Event, Record

MAX_WINDOW_S: Final = 3600.0  # as the self-check's point_timeout_s at most
NORMAL_BIT: Final = 1  # GB/T 26875.3 status word bit 0: 1 normal operation, 0 test

Key = tuple[str, str]  # device, point (a GPIO input's point is "contact")


class PointsUnderTest:
    """Thread-safe: marked from the control socket's thread, applied on the event path."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._lock = threading.Lock()
        self._until: dict[Key, float] = {}

    def mark(self, device: str, point: str, seconds: float) -> dict[str, Any]:
        """This point is under test for `seconds` (bounded 0..MAX_WINDOW_S; 0 ends it).
        Marking another point ends the previous one: one point at a time."""
        window = min(max(0.0, float(seconds)), MAX_WINDOW_S)
        with self._lock:
            self._until.clear()
            if window > 0:
                self._until[(device, point)] = self._now() + window
        return {"device": device, "point": point, "seconds": window}

    @property
    def active(self) -> bool:
        """Is any point marked (its window maybe just passed)? A cheap look, no lock."""
        return bool(self._until)

    def now(self) -> list[Key]:
        """The points under test now (for status and tests)."""
        with self._lock:
            self._expire_locked()
            return list(self._until)

    def apply(self, record: Record) -> Record:
        """The record as it goes out: a test if it is an event of the point under test."""
        if not self._until or not isinstance(record, Event) or record.test:
            return record
        with self._lock:
            self._expire_locked()
            if (record.device, record.point or "") not in self._until:
                return record
        return as_test(record)

    def _expire_locked(self) -> None:
        now = self._now()
        for key in [k for k, until in self._until.items() if now >= until]:
            del self._until[key]


def as_test(event: Event) -> Event:
    """The event marked a test: its GB status word (typeflags 1, 2) with bit 0 clear; a
    GB record with no test form (the UITD's manual alarm operation, typeflag 24) is not
    for the centre at all (detail["gb"] removed: the GB reader does not carry it)."""
    detail = event.detail
    gb = (detail or {}).get("gb")
    if isinstance(gb, dict) and gb.get("tf") in (1, 2) and isinstance(gb.get("status"), int):
        detail = {**(detail or {}), "gb": {**gb, "status": gb["status"] & ~NORMAL_BIT}}
    elif gb is not None:
        detail = {k: v for k, v in (detail or {}).items() if k != "gb"}
    return dataclasses.replace(event, test=True, detail=detail)
