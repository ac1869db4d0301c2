"""Faults with default settings: stimulus to event at an independent subscriber.

Every fault of issue 11 is timed from its stimulus to the event at an independent
subscriber (goal 10 s each, GB 26875.1).

The scenarios live beside this runner: bench/faults_field.py (a device or line lost and
back, live reads and a read flood against the line's polls) and bench/faults_uplink.py
(a broker outage, a broker that stops acknowledging, a command flood). Each prints its
figures (p50/p99/max, goal, met); a missed goal is a figure (met=NO), never an exit status.
The fire behind a backlog is bench/bench_backlog.py.

    python bench/bench_faults.py [--smoke] [--only NAME,NAME] [--trials N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import faults_field, faults_uplink
from bench.common import machine

Scenario = Callable[[bool, int | None], None]  # (smoke, trials or None for the default)


def _field(name: str) -> Scenario:
    def run(smoke: bool, trials: int | None) -> None:
        with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as tmp:
            faults_field.SCENARIOS[name](Path(tmp), smoke, trials)

    return run


def _uplink(name: str) -> Scenario:
    def run(smoke: bool, trials: int | None) -> None:
        extra = {} if trials is None else {"trials": trials}
        faults_uplink.SCENARIOS[name](smoke=smoke, **extra)

    return run


SCENARIOS: dict[str, Scenario] = {
    **{name: _field(name) for name in faults_field.SCENARIOS},
    **{name: _uplink(name) for name in faults_uplink.SCENARIOS},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one short trial of each")
    p.add_argument("--only", default="", help="comma-separated scenario names")
    p.add_argument("--trials", type=int, default=None, help="trials per scenario")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    print(f"# {machine()}", flush=True)
    for name in names:
        print(f"-- {name}", flush=True)
        SCENARIOS[name](args.smoke, args.trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
