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

    python bench/bench_bus.py [--smoke] [--bauds 9600,19200] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from agent.config import load_config
from bench.common import Setup, SimLine, figure, read_requests, rig, summary_ms
from drivers.plan import plan_line
from drivers.types import PollClass

GOAL_RATIO = 1.15
DEVICES = [
    ("fap", 1, "fire-panel-gst"),
    ("efd-1", 2, "electrical-fire-4ch"),
    ("efd-2", 3, "electrical-fire-4ch"),
    ("efd-3", 4, "electrical-fire-4ch"),
]


def one_baud(baud: int, seconds: float, tmp: Path) -> tuple[list[float], float, int]:
    line = SimLine("rs485-1", DEVICES, baudrate=baud, wire_time=True, fast_poll_s=0.01)
    with rig(tmp, Setup(lines=[line]), poll_log=True) as r:
        r.control.call({"do": "state", "device": "fap", "point": "point1", "state": "fire"})
        if r.feed.wait_point("point1", 1, timeout=30) is None:
            raise RuntimeError("agent never came up\n" + r.agent_log()[-3000:])
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
    return [b - a for a, b in itertools.pairwise(times)], theory, requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="9600 baud, 3 s")
    p.add_argument("--bauds", default="9600,19200")
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    bauds = [9600] if args.smoke else [int(b) for b in args.bauds.split(",")]
    seconds = 3.0 if args.smoke else args.seconds
    for baud in bauds:
        with tempfile.TemporaryDirectory() as tmp:
            measured, theory, requests = one_baud(baud, seconds, Path(tmp))
        mean = sum(measured) / len(measured) if measured else float("nan")
        figure(f"bus_theory_{baud}", requests_per_cycle=requests, cycle_ms=round(theory * 1000, 2))
        figure(f"bus_measured_{baud}", mean_ms=round(mean * 1000, 2), **summary_ms(measured))
        figure(
            f"bus_goal_{baud}",
            ratio=round(mean / theory, 3),
            goal_ratio=GOAL_RATIO,
            met=mean / theory <= GOAL_RATIO,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
