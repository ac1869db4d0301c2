"""Rows the broker keeps refusing: probed alone, then set aside and announced.

A row the broker refuses (too big, malformed: it answers with a failure or drops the
connection) would otherwise go first again on every reconnect and hold the lane
forever. After the first refusal that row is sent alone (the probe), so a later
refusal is surely its own; after SET_ASIDE_AFTER refusals it is set aside: deleted
from the buffer and announced by a small SYSTEM fault event naming its lane and seq
(loss is never silent), and the lane moves on. A network loss never counts against
a row. Only the uplink's connection thread calls this (no lock).

It must never set aside a row for a refusal that would hit every row alike (the
uplink counts only ROW_REFUSALS and connection drops blamed on a row here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Final

from agent.buffer import EventBuffer
from agent.texts import CHINESE, Msg, Texts
from core.events import Kind, Lane, Severity, system_event

log = logging.getLogger("agent.uplink")

SET_ASIDE_AFTER: Final = 3  # refusals of one row before it is set aside
MAX_STRIKES: Final = 64  # rows with refusals remembered (bounded: the Pi has 1 GB)
# PUBACK reason codes that speak about the message itself, not the topic or the client
# (0x87 not authorized would refuse every row alike: setting them aside would drain the
# buffer, so such a refusal only reconnects, with a growing backoff)
ROW_REFUSALS: Final = frozenset({0x95, 0x99})  # packet too large, payload format invalid

RowKey = tuple[Lane, int]


class Refusals:
    """Refusals per row, and the row being probed (sent alone until it is acked)."""

    def __init__(
        self,
        buffer: EventBuffer,
        clock_synced: Callable[[], bool] = lambda: True,
        texts: Texts = CHINESE,
        on_set_aside: Callable[[], None] = lambda: None,
    ) -> None:
        self._buffer = buffer
        self._on_set_aside = on_set_aside  # counts it (the uplink's counters)
        self._clock_synced = clock_synced
        self._texts = texts
        self._strikes: dict[RowKey, int] = {}
        self.probe: RowKey | None = None  # the suspect row: it goes alone

    def forgive(self, row: RowKey) -> None:
        """It went through: its refusals are forgiven."""
        if self._strikes:
            self._strikes.pop(row, None)
        if self.probe == row:
            self.probe = None

    def blame_loss(self, inflight: Mapping[int, RowKey]) -> None:
        """The broker dropped us over a protocol fault: blame the oldest row in flight,
        but only once unless it was alone in flight (then it is surely the one)."""
        if not inflight:
            return
        row = next(iter(inflight.values()))
        if row in self._strikes and len(inflight) > 1:
            return
        self.strike(row, "the broker dropped the connection on it")

    def strike(self, row: RowKey, why: str) -> bool:
        """Count one refusal of a row; set it aside at SET_ASIDE_AFTER. True if set aside."""
        count = self._strikes.pop(row, 0) + 1
        if count >= SET_ASIDE_AFTER:
            self.set_aside(row, f"{why} ({count} times)")
            return True
        self._strikes[row] = count  # re-inserted last: the oldest entry goes first below
        while len(self._strikes) > MAX_STRIKES:
            del self._strikes[next(iter(self._strikes))]
        self.probe = row
        log.warning("uplink: %s seq %d: %s; sending it alone next", row[0].value, row[1], why)
        return False

    def check_probe(self) -> None:
        """Forget the probe if its row is no longer pending (acked, dropped). Not "no longer
        the head of its lane": a life-safety alarm is sent before older rows, and a refused
        one must still be probed and set aside, or it would hold every reconnect."""
        if self.probe is None:
            return
        lane, seq = self.probe
        still = self._buffer.pending(lane, seq - 1, 1)
        if not still or still[0].seq != seq:
            self._strikes.pop(self.probe, None)
            self.probe = None

    def set_aside(self, row: RowKey, why: str) -> None:
        """Delete a row the broker will never take, and say so with a small fault event."""
        lane, seq = row
        self._strikes.pop(row, None)
        if self.probe == row:
            self.probe = None
        self._on_set_aside()
        log.error("uplink: %s seq %d set aside unsent: %s", lane.value, seq, why)
        self._buffer.ack_many(lane, [seq])
        fault = system_event(
            Kind.FAULT,
            Severity.MAJOR,
            "set_aside",
            self._texts(Msg.SET_ASIDE, lane=lane.value, seq=seq, why=why),
            point="uplink",
            clock_synced=self._clock_synced(),
            detail={"uplink": "set_aside", "lane": lane.value, "seq": seq, "why": why},
        )
        self._buffer.submit(fault).add_done_callback(_log_refusal)


def _log_refusal(future: Future[Any]) -> None:
    """The set-aside fault could not be stored: the log is the last place to say so."""
    exc = future.exception()
    if exc is not None:
        log.error("uplink: set-aside fault event not stored: %s", exc)
