"""A platform consumer of one gateway's feed, written from docs/feed.md and nothing else:
the de-duplication and gap rules of section 8 and the point-state rule of section 3
("per condition, the event with the highest seq wins"). The tests feed it the gateway's
real delivery order and compare its end state with the same events applied in seq order.

Not implemented (the tests here do not need them): announced losses (`overflow`,
`buffer_recovered` ranges) and the grace period before a gap counts as lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PointKey = tuple[str, str | None]  # (device, point); point None: the device's `comm`
RAISING = frozenset({"alarm", "fault", "supervisory"})


@dataclass
class Lane:
    """Section 8: the seqs stored, the highest seen and the open gaps of one lane."""

    stored: set[int] = field(default_factory=set)
    highest: int = 0
    gaps: list[list[int]] = field(default_factory=list)  # [first, last], inclusive

    def receive(self, seq: int) -> bool:
        """False for a duplicate (rule 1); otherwise rules 2-4 and True."""
        if seq in self.stored:
            return False
        self.stored.add(seq)
        if seq > self.highest + 1:  # rule 3: a gap opens
            self.gaps.append([self.highest + 1, seq - 1])
        if seq > self.highest:  # rules 2 and 3
            self.highest = seq
            return True
        self._fill(seq)  # rule 4: a late record, inside an open gap
        return True

    def _fill(self, seq: int) -> None:
        for i, (first, last) in enumerate(self.gaps):
            if first <= seq <= last:
                pieces = [[first, seq - 1], [seq + 1, last]]
                self.gaps[i : i + 1] = [p for p in pieces if p[0] <= p[1]]
                return


@dataclass
class PointState:
    """Section 3: per condition, the seq of the last event that raised or ended it."""

    touched: dict[str, tuple[int, bool]] = field(default_factory=dict)  # -> (seq, raised)
    cleared: int = 0  # the highest restore without detail.restores: it ends them all
    last: tuple[int, str] = (0, "")  # (seq, state) of the point's highest-seq event

    def touch(self, condition: str, seq: int, raised: bool) -> None:
        if seq > self.touched.get(condition, (0, False))[0]:
            self.touched[condition] = (seq, raised)

    def active(self) -> frozenset[str]:
        return frozenset(
            c for c, (seq, raised) in self.touched.items() if raised and seq > self.cleared
        )


class FeedConsumer:
    """One gateway's event and telemetry lanes; feed it with receive()."""

    def __init__(self) -> None:
        self.lanes = {"event": Lane(), "telemetry": Lane()}
        self.points: dict[PointKey, PointState] = {}
        self.history: dict[int, dict[str, Any]] = {}  # every event stored, by seq

    def receive(self, leaf: str, payload: dict[str, Any]) -> bool:
        """Store one message; False if it was a duplicate (dropped)."""
        if not self.lanes[leaf].receive(int(payload["seq"])):
            return False
        if leaf == "event":
            self.history[int(payload["seq"])] = payload
            self.apply(payload)
        return True

    def apply(self, event: dict[str, Any]) -> None:
        key = (str(event["device"]), event["point"])
        point = self.points.setdefault(key, PointState())
        seq, kind, state = int(event["seq"]), str(event["kind"]), str(event["state"])
        if kind in RAISING:
            point.touch(state, seq, raised=True)
        elif kind == "restore":
            restores = (event.get("detail") or {}).get("restores")
            if isinstance(restores, str):
                point.touch(restores, seq, raised=False)
            else:
                point.cleared = max(point.cleared, seq)
        elif kind in ("comm_loss", "comm_restore"):
            point.touch("comm", seq, raised=kind == "comm_loss")
        if seq > point.last[0]:
            point.last = (seq, state)

    def state(self) -> dict[PointKey, tuple[frozenset[str], str]]:
        """What the platform shows: per point, its active conditions and its last state."""
        return {key: (p.active(), p.last[1]) for key, p in self.points.items()}


class ArrivalOrderConsumer(FeedConsumer):
    """The consumer feed.md warns against: it trusts the order of arrival (the event that
    arrived last for a condition wins). Used to show that a test has teeth."""

    def __init__(self) -> None:
        super().__init__()
        self._arrivals = 0

    def apply(self, event: dict[str, Any]) -> None:
        self._arrivals += 1
        super().apply({**event, "seq": self._arrivals})
