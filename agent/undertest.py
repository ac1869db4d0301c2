"""The points a technician is testing now (the monthly self-check, `alarmgw selfcheck`).

Triggering a detector to check it raises a real-looking alarm. While the self-check has
declared that one point under test (the control socket's `selfcheck_testing`, a lease
of LEASE_S that the running self-check renews), each event of that point is marked a test
as it enters the pipeline: `test: true` on the feed ("consumers must not dispatch",
event.schema.json), bit 0 of its GB/T 26875.3 status word clear (the standard's "test"
state), and the local alarm rule leaves the evacuation buzzer silent (agent/rules.py
ignores test events). An alarm of any other point stays real, and so does this point's
once its lease has run out. The start and the end of a point under test are events on the
feed (state point_under_test / point_test_ended).

This module must never do I/O or block: `apply` runs for every record on the event path;
with nothing under test it costs one attribute read.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from core.events import Event, Record

# A mark lasts this long at most: the self-check renews it while it runs (every LEASE_S / 3,
# agent/cli/selfcheck.py), so a self-check that dies mid-point leaves the point real again
# within LEASE_S, not after its whole watch window.
LEASE_S: Final = 15.0
NORMAL_BIT: Final = 1  # GB/T 26875.3 status word bit 0: 1 normal operation, 0 test

Key = tuple[str, str]  # device, point (a GPIO input's point is "contact")
# a point under test starts (True) or ends (False, and why: "done", "lease expired", "next
# point"): the pipeline announces it on the feed
Announce = Callable[[Key, bool, str], None]


class PointsUnderTest:
    """Thread-safe: marked from the control socket's thread, applied on the event path,
    ticked by the agent's loop (an expired lease is announced there)."""

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, announce: Announce | None = None
    ) -> None:
        self._now = monotonic
        self._announce = announce
        self._lock = threading.Lock()
        self._until: dict[Key, float] = {}
        self._expired: list[Key] = []  # ended by their lease, not announced yet

    def mark(self, device: str, point: str, seconds: float) -> dict[str, Any]:
        """This point is under test for `seconds`, at most LEASE_S (0 ends it); marking it
        again renews it. Marking another point ends the previous one: one at a time."""
        window = min(max(0.0, float(seconds)), LEASE_S)
        key = (device, point)
        with self._lock:
            self._expire_locked()
            ended = [(k, "next point") for k in self._until if k != key]
            if window == 0 and key in self._until:
                ended.append((key, "done"))
            started = window > 0 and key not in self._until
            self._until.clear()
            if window > 0:
                self._until[key] = self._now() + window
        self.tick()
        for k, why in ended:
            self._tell(k, False, why)
        if started:
            self._tell(key, True, "")
        return {"device": device, "point": point, "seconds": window}

    def tick(self) -> None:
        """Announce the points whose lease ran out (the agent's loop calls this often)."""
        with self._lock:
            self._expire_locked()
            expired, self._expired = self._expired, []
        for key in expired:
            self._tell(key, False, "lease expired")

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
            self._expired.append(key)

    def _tell(self, key: Key, testing: bool, why: str) -> None:
        if self._announce is None:
            return
        try:
            self._announce(key, testing, why)
        except Exception:  # an announcement never stops a mark or the loop
            logging.getLogger("alarmgw.undertest").exception("could not announce %s", key)


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
