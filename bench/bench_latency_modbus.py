"""Alarm latency, Modbus: a register change in the simulator -> the event at a subscriber.

A fire panel (fire-panel-gst, unit 1 on a simulated RS-485 line) is polled
every P seconds. Eight of its points are cycled fire -> normal -> fire...
through the simulator's control socket, each change issued at a random phase
of the poll period (a uniform delay after the previous event of that point
arrived), so the figures include the wait for the next poll as in the field.
Latency = the subscriber's receipt time - the stimulus log's `mono`.
The line runs at software speed (no wire-time emulation): the figure is the
agent's, and the doc gives the wire time a real 9600-baud line adds.
Baseline: bare paho QoS 1 publish -> receive on the same broker, same run.
Goal: p99 within P + 20 ms.

    python bench/bench_latency_modbus.py [--smoke] [--periods 0.2,1.0]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Rig, Setup, SimLine, figure, paho_latency, rig, summary_ms

POINTS = [f"point{n}" for n in range(1, 9)]
GOAL_MARGIN_MS = 20.0


class Cycler:
    """Drives each point fire/normal in turn and matches each change with its event."""

    def __init__(self, r: Rig, period: float, rng: random.Random) -> None:
        self.r, self.period, self.rng = r, period, rng
        self.seen = dict.fromkeys(POINTS, 0)  # events received per point
        self.sent = dict.fromkeys(POINTS, 0)  # changes made per point
        self.stimulus_mono: dict[str, float] = {}
        self.next_at = {p: time.monotonic() + rng.uniform(0, period) for p in POINTS}
        self.latencies: list[float] = []
        self._cursor = 0

    def _stimulate(self, point: str) -> None:
        state = "fire" if self.sent[point] % 2 == 0 else "normal"
        req = {"do": "state", "device": "fap", "point": point, "state": state}
        logged = self.r.control.call(req)["logged"]
        self.sent[point] += 1
        self.stimulus_mono[point] = float(logged["mono"])

    def _collect(self) -> None:
        events = self.r.feed.snapshot()
        for rec in events[self._cursor :]:
            point = str(rec.event.get("point"))
            if point not in self.seen:
                continue
            self.seen[point] += 1
            if self.seen[point] != self.sent[point]:
                raise RuntimeError(
                    f"{point}: event {self.seen[point]} for {self.sent[point]} changes"
                )
            self.latencies.append(rec.mono - self.stimulus_mono[point])
            self.next_at[point] = time.monotonic() + self.rng.uniform(0, self.period)
        self._cursor = len(events)

    def run(self, samples: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while len(self.latencies) < samples:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"only {len(self.latencies)} of {samples} changes arrived")
            for point in POINTS:
                idle = self.seen[point] == self.sent[point]
                if idle and self.next_at[point] <= now:
                    self._stimulate(point)
            wake = min(
                (t for p, t in self.next_at.items() if self.seen[p] == self.sent[p]),
                default=now + self.period,
            )
            with self.r.feed.changed:
                if self.r.feed.count() == self._cursor:
                    self.r.feed.changed.wait(max(0.0, min(wake - time.monotonic(), 0.5)))
            self._collect()
        return self.latencies[:samples]  # a last batch may bring a few more


def one_period(period: float, samples: int, tmp: Path) -> tuple[dict[str, float], dict[str, float]]:
    setup = Setup(lines=[SimLine("rs485-1", [("fap", 1, "fire-panel-gst")], fast_poll_s=period)])
    with rig(tmp, setup) as r:
        # the first change proves the agent is up, polling and connected; not counted
        r.control.call({"do": "state", "device": "fap", "point": "point16", "state": "fire"})
        if r.feed.wait_point("point16", 1, timeout=30) is None:
            raise RuntimeError("agent never delivered the warm-up alarm\n" + r.agent_log()[-3000:])
        base = paho_latency(r.broker.host, r.broker.port, 200)
        lat = Cycler(r, period, random.Random(7)).run(samples, timeout=samples * period * 3 + 30)
    return summary_ms(lat), summary_ms(base)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="40 changes per period")
    p.add_argument("--periods", default="0.2,1.0", help="fast-poll periods P in seconds")
    p.add_argument("--samples", type=int, default=0, help="changes per period (default 500/300)")
    args = p.parse_args(argv)
    for period in (float(x) for x in args.periods.split(",")):
        samples = args.samples or (40 if args.smoke else (500 if period <= 0.5 else 300))
        with tempfile.TemporaryDirectory() as tmp:
            ours, base = one_period(period, samples, Path(tmp))
        tag = f"P{int(period * 1000)}ms"
        goal = period * 1000 + GOAL_MARGIN_MS
        figure(f"modbus_baseline_paho_{tag}", **base)
        figure(f"modbus_latency_{tag}", period_ms=period * 1000, **ours)
        figure(
            f"modbus_latency_goal_{tag}",
            p99_ms=ours["p99_ms"],
            goal_ms=goal,
            met=ours["p99_ms"] <= goal,
            p99_minus_period_ms=round(ours["p99_ms"] - period * 1000, 2),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
