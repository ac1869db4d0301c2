"""Bus efficiency: a line's measured poll cycle against the wire time of its request plan.

One RS-485 line with wire-time emulation on (the simulator answers as late as
the request and answer bytes would take at the line's baud rate) carries a
fire panel and three electrical-fire detectors, polled back to back. The
measured cycle is the time between successive requests for unit 1's first
block, as the simulator sees them (python bench/common.py sim logs every
request). The baseline is the theoretical wire time of the same plan:
drivers/plan.py plan_line(...).cycle_s(FAST), i.e. every request and answer
frame at the baud rate plus two 3.5-character gaps per exchange.
Goal: measured / theoretical within 1.15x.

What dead devices cost the live ones: the same line with N more detectors that
never answer (default timeout, retries, comm_fault_after and probe backoff), once
they are all reported lost; the live devices' measured cycle against the healthy
cycle measured in the same run. Probes of lost devices may take at most
PROBE_SHARE of a busy line (drivers/line.py). Goal: ratio within 1 / (1 - PROBE_SHARE).

    python bench/bench_bus.py [--smoke] [--bauds 9600,19200] [--seconds S] [--dead 3,8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from agent.cli.client import AgentNotRunning, ControlClient, ControlError
from agent.config import load_config
from bench.common import Rig, Setup, SimLine, figure, read_requests, rig, summary_ms, wait_for
from drivers.line import PROBE_SHARE
from drivers.plan import plan_line
from drivers.types import PollClass

GOAL_RATIO = 1.15
DEVICES = [
    ("fap", 1, "fire-panel-gst"),
    ("efd-1", 2, "electrical-fire-4ch"),
    ("efd-2", 3, "electrical-fire-4ch"),
    ("efd-3", 4, "electrical-fire-4ch"),
]


def one_baud(
    baud: int, seconds: float, tmp: Path, dead: int = 0
) -> tuple[list[float], float, int, list[float]]:
    dead_ids = [f"dead-{i}" for i in range(dead)]
    extra = [(dev_id, 10 + i, "electrical-fire-4ch") for i, dev_id in enumerate(dead_ids)]
    line = SimLine("rs485-1", DEVICES + extra, baudrate=baud, wire_time=True, fast_poll_s=0.01)
    with rig(tmp, Setup(lines=[line]), poll_log=True) as r:
        # devices that worked, then fell silent (the agent knows how fast they answered)
        agent = ControlClient(tmp / "agent.sock", timeout_s=10)
        if not wait_for(lambda: _all_answered(agent), timeout=30):
            raise RuntimeError("devices never all answered\n" + r.agent_log()[-3000:])
        for dev_id in dead_ids:
            r.control.call({"do": "silence", "device": dev_id})
        r.control.call({"do": "state", "device": "fap", "point": "point1", "state": "fire"})
        if r.feed.wait_point("point1", 1, timeout=30) is None:
            raise RuntimeError("agent never came up\n" + r.agent_log()[-3000:])
        if not wait_for(lambda: _lost(r) >= set(dead_ids), timeout=60):
            raise RuntimeError("dead devices never reported lost\n" + r.agent_log()[-3000:])
        start = time.monotonic()
        time.sleep(seconds)  # the measuring window itself, not a synchronisation
        end = time.monotonic()
    cfg = load_config(tmp / "agent.toml")
    plan = plan_line(cfg, cfg.lines[0])
    theory = plan.cycle_s(PollClass.FAST)
    requests = sum(len(d.fast) for d in plan.devices)
    rows = [x for x in read_requests(r.request_log) if x["unit"] == 1]
    first = min(x["addr"] for x in rows)
    times = [x["mono"] for x in rows if x["addr"] == first and start <= x["mono"] <= end]
    return [b - a for a, b in itertools.pairwise(times)], theory, requests, _probe_gaps(r, dead)


def _probe_gaps(r: Rig, dead: int) -> list[float]:
    """Seconds between successive probes of each dead device (its requests as the
    simulator saw them): how soon one that answers again would be seen."""
    rows = read_requests(r.request_log)
    gaps: list[float] = []
    for unit in range(10, 10 + dead):
        times = sorted(x["mono"] for x in rows if x["unit"] == unit)
        gaps += [b - a for a, b in itertools.pairwise(times) if b - a > 0.05]  # not one probe's
    return gaps


def _all_answered(agent: ControlClient) -> bool:
    try:
        devices = agent.call("devices")["devices"]
    except (AgentNotRunning, ControlError):
        return False
    return bool(devices) and all(d["comm"] == "ok" for d in devices)


def _lost(r: Rig) -> set[str]:
    return {str(x.event["device"]) for x in r.feed.snapshot() if x.event.get("kind") == "comm_loss"}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="9600 baud, 3 s; 3 dead devices")
    p.add_argument("--bauds", default="9600,19200")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--dead", default="3,8", help="dead-device counts measured at 9600 baud")
    args = p.parse_args(argv)
    bauds = [9600] if args.smoke else [int(b) for b in args.bauds.split(",")]
    seconds = 3.0 if args.smoke else args.seconds
    healthy: dict[int, float] = {}
    for baud in bauds:
        with tempfile.TemporaryDirectory() as tmp:
            measured, theory, requests, _ = one_baud(baud, seconds, Path(tmp))
        mean = _mean(measured)
        healthy[baud] = mean
        figure(f"bus_theory_{baud}", requests_per_cycle=requests, cycle_ms=round(theory * 1000, 2))
        figure(f"bus_measured_{baud}", mean_ms=round(mean * 1000, 2), **summary_ms(measured))
        figure(
            f"bus_goal_{baud}",
            ratio=round(mean / theory, 3),
            goal_ratio=GOAL_RATIO,
            met=mean / theory <= GOAL_RATIO,
        )
    goal_dead = round(1 / (1 - PROBE_SHARE), 3)
    for dead in [3] if args.smoke else [int(n) for n in args.dead.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            measured, _, _, gaps = one_baud(9600, seconds, Path(tmp), dead=dead)
        ratio = _mean(measured) / healthy.get(9600, float("nan"))
        figure(
            f"bus_dead_{dead}_9600",
            mean_ms=round(_mean(measured) * 1000, 2),
            **summary_ms(measured),
            ratio_to_healthy=round(ratio, 3),
            goal_ratio=goal_dead,
            met=ratio <= goal_dead,
        )
        # how often each dead device is probed on this busy line (the backoff cap promises
        # at least every backoff_max_s, 5 s by default): a figure, not a goal of this bench
        figure(f"bus_dead_{dead}_probe_gap", **summary_ms(gaps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
