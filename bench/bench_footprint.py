"""Footprint: 32 devices on 4 simulated RS-485 lines polled every second, for 60 s.

The agent (a real `alarmgw run` process) polls 8 devices per line (fire panel,
electrical-fire detectors, gas detector, 4-20 mA module; 9600 baud with
wire-time emulation) through the simulator. Measured from /proc/<pid>: VmRSS
and VmHWM at the end, and CPU share of one core = (utime+stime) over the
window / wall time of the window, the window starting once the agent is up.
Baseline: an idle Python interpreter that imported the same libraries
(pymodbus, paho-mqtt, gpiozero, sqlite3), same run. Goal: < 50 MB, < 5 %.

    python bench/bench_footprint.py [--smoke] [--seconds S]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Setup, SimLine, figure, proc_cpu_s, proc_memory_kb, rig, wait_for

GOAL_RSS_MB = 50.0
GOAL_CPU_PCT = 5.0
KINDS = [
    "fire-panel-gst",
    "electrical-fire-4ch",
    "electrical-fire-4ch",
    "electrical-fire-4ch",
    "gas-detector",
    "gas-detector",
    "analog-4-20ma",
    "electrical-fire-4ch",
]
BASELINE_CODE = (
    "import sqlite3, pymodbus.client, paho.mqtt.client, gpiozero, sys;"
    "print('ready', flush=True); sys.stdin.read()"
)


def setup() -> Setup:
    lines = []
    for n in range(1, 5):
        devices = [(f"l{n}d{u}", u, profile) for u, profile in enumerate(KINDS, start=1)]
        lines.append(SimLine(f"rs485-{n}", devices, wire_time=True, fast_poll_s=1.0))
    return Setup(lines=lines)


def baseline_rss_kb() -> int:
    """VmRSS of an idle interpreter holding the agent's libraries."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return proc_memory_kb(proc.pid)["VmRSS"]
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="10 s")
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    seconds = 10.0 if args.smoke else args.seconds
    base_kb = baseline_rss_kb()
    with tempfile.TemporaryDirectory() as tmp, rig(Path(tmp), setup()) as r:
        # up = the first device of the last line answered and an alarm went through
        r.control.call({"do": "state", "device": "l4d1", "point": "point1", "state": "fire"})
        if r.feed.wait_point("point1", 1, timeout=60) is None:
            raise RuntimeError("agent never came up\n" + r.agent_log()[-3000:])
        pid = r.agent.pid
        cpu0, t0 = proc_cpu_s(pid), time.monotonic()
        wait_for(lambda: r.agent.poll() is not None, seconds, step=0.5)  # runs the window
        if r.agent.poll() is not None:
            raise RuntimeError("agent died\n" + r.agent_log()[-3000:])
        cpu1, t1 = proc_cpu_s(pid), time.monotonic()
        mem = proc_memory_kb(pid)
        polls = r.control.call({"do": "get-state"})["state"]["lines"]
    requests = sum(int(line["requests"]) for line in polls.values())
    cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    rss_mb, hwm_mb = mem["VmRSS"] / 1024, mem["VmHWM"] / 1024
    figure("footprint_baseline_interpreter", rss_mb=round(base_kb / 1024, 1))
    figure(
        "footprint_agent",
        devices=32,
        lines=4,
        window_s=round(t1 - t0, 1),
        requests_served=requests,
        rss_mb=round(rss_mb, 1),
        hwm_mb=round(hwm_mb, 1),
        cpu_pct=round(cpu_pct, 2),
    )
    figure(
        "footprint_goal",
        rss_over_baseline_mb=round(rss_mb - base_kb / 1024, 1),
        rss_met=hwm_mb < GOAL_RSS_MB,
        cpu_met=cpu_pct < GOAL_CPU_PCT,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
