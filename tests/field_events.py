"""A care home's field as the agent sees it: a fire panel, a gas detector and an
electrical-fire detector (the built-in profiles), driven by a seeded random walk through
the agent's real point rules (agent.points), plus comm loss and restore per device as the
runtime reports them. Events come out as the agent would make them: alarms, faults,
supervisory states, restores naming the condition they end, telemetry.
"""

from __future__ import annotations

import random
from pathlib import Path

from agent.points import PointTracker
from core.events import Category, Event, Kind, Record, Severity
from drivers.codec import Value
from drivers.profile import PointSpec, load_profile

PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
_DEVICES = {  # device id: (profile file, points driven)
    "fap": ("fire-panel-gst.toml", ("point1", "point2", "point3")),
    "gas-1": ("gas-detector.toml", ("low_alarm", "high_alarm", "sensor_fault")),
    "efd-1": ("electrical-fire-4ch.toml", ("ch1_leak", "ch1_fault", "ch1_device_alarm")),
}
_FIRE_PANEL_CODES = (0, 0, 1, 1, 2, 3, 4, 7)  # normal, fire, fault, feedback, cleared, isolated
_LEAK_MA = (0, 120, 280, 350, 520)  # across the 300 mA alarm (270 mA to clear)
STEP_S = 3.0  # field time per step: longer than any confirm_s, so a threshold can trip


class Field:
    """step() moves one device and returns what the agent would emit for it."""

    def __init__(self, seed: int, *, comm_loss_p: float = 0.04) -> None:
        self.rng = random.Random(seed)
        self.comm_loss_p = comm_loss_p
        self.ts_ms = 1_796_040_000_000
        self.mono = 0.0
        self.trackers: dict[str, list[PointTracker]] = {}
        for device, (profile_file, points) in _DEVICES.items():
            profile = load_profile(PROFILES / profile_file)
            self.trackers[device] = [
                PointTracker(device, f"{device} 设备", "一楼", profile.points[p]) for p in points
            ]
        self.lost: set[str] = set()

    def step(self) -> list[Record]:
        self.ts_ms += int(STEP_S * 1000)
        self.mono += STEP_S
        device = self.rng.choice(sorted(self.trackers))
        if device in self.lost:
            if self.rng.random() < 0.5:
                self.lost.discard(device)
                return [self._comm(device, lost=False)]
            return []
        if self.rng.random() < self.comm_loss_p:
            self.lost.add(device)
            for tracker in self.trackers[device]:
                tracker.mark_stale()
            return [self._comm(device, lost=True)]
        tracker = self.rng.choice(self.trackers[device])
        return tracker.update(self._value(tracker.spec), self.ts_ms, True, self.mono)

    def _value(self, spec: PointSpec) -> Value:
        if spec.states is not None:
            return self.rng.choice(_FIRE_PANEL_CODES)
        if spec.flag is not None:
            return self.rng.random() < 0.5
        return self.rng.choice(_LEAK_MA)

    def _comm(self, device: str, *, lost: bool) -> Event:
        """As agent.runtime reports a device that stops or starts answering."""
        return Event(
            kind=Kind.COMM_LOSS if lost else Kind.COMM_RESTORE,
            category=Category.COMM,
            severity=Severity.MINOR if lost else Severity.INFO,
            state="lost" if lost else "online",
            text=f"{device} 通信{'故障' if lost else '恢复'}",
            device=device,
            ts_ms=self.ts_ms,
            detail={"reason": "timeout", "failures": 3} if lost else None,
        )

    def records(self, count: int) -> list[Record]:
        """At least `count` events (telemetry comes on top), step by step."""
        out: list[Record] = []
        while sum(1 for r in out if isinstance(r, Event)) < count:
            out += self.step()
        return out
