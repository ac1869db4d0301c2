"""What the daily self-test costs: its duration, what it does to the line's polling, and
what it writes to the SD card.

One RS-485 line at 9600 baud with wire-time emulation (fire panel, two electrical-fire
detectors, a gas detector, a 4-20 mA module) and two GPIO inputs, as on a small site.
`alarmgw selftest` (the control socket's `selftest`) is timed N times; the baseline, in
the same run, is the part of it that talks to the field: a live `read` of each device in
turn through the same path. Ratio = self-test / reads (the rest is GPIO, storage, link
and the records file). Also the fast-poll cycle of the panel from the simulator's
request log while self-tests run vs idle (the live reads wait between due polls), and
write_bytes of the agent (/proc/<pid>/io) per self-test, minus the idle rate.

    python bench/bench_selftest.py [--smoke] [--runs N]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli.client import AgentNotRunning, ControlClient, ControlError
from bench.bench_wear import write_bytes
from bench.common import (
    Rig,
    Setup,
    SimInput,
    SimLine,
    figure,
    read_requests,
    rig,
    summary_ms,
    wait_for,
)

DEVICES = [
    ("fap", 1, "fire-panel-gst"),
    ("efd-1", 2, "electrical-fire-4ch"),
    ("efd-2", 3, "electrical-fire-4ch"),
    ("gas-1", 4, "gas-detector"),
    ("ai-1", 5, "analog-4-20ma"),
]


def setup() -> Setup:
    return Setup(
        lines=[SimLine("rs485-1", DEVICES, wire_time=True)],
        inputs=[SimInput("manual-alarm", 22, 20), SimInput("tamper", 23, 50, category="tamper")],
    )


def ready(client: ControlClient) -> bool:
    try:
        devices = client.call("devices")["devices"]
    except (AgentNotRunning, ControlError):
        return False
    return bool(devices) and all(d["comm"] == "ok" for d in devices)


def panel_cycles(r: Rig, t0: float, t1: float) -> list[float]:
    """Gaps between successive requests for the panel's first block, from the sim's log."""
    panel = [q for q in read_requests(r.request_log) if q.get("unit") == 1]
    first = min((q["addr"] for q in panel), default=0)  # its first block: a fast poll
    stamps = [q["mono"] for q in panel if q["addr"] == first and t0 <= q["mono"] <= t1]
    return [b - a for a, b in itertools.pairwise(stamps)]


def measure(tmp: Path, runs: int) -> dict[str, float | int]:
    """Reads then self-tests, on one rig; cycles are read once the simulator wrote its log."""
    with rig(tmp, setup(), poll_log=True) as r:
        client = ControlClient(tmp / "agent.sock", timeout_s=120)
        if not wait_for(lambda: ready(client), timeout=30):
            raise RuntimeError("agent not ready:\n" + r.agent_log()[-3000:])
        time.sleep(2)  # settle: the first slow polls and the day's run at start are done
        marks: dict[str, float | int] = {"t0": time.monotonic(), "w0": write_bytes(r.agent.pid)}
        reads, tests, failed = [], [], 0
        for _ in range(runs):
            t = time.monotonic()
            for dev_id, _, _ in DEVICES:
                client.call("read", device=dev_id)
            reads.append(time.monotonic() - t)
        marks |= {"t1": time.monotonic(), "w1": write_bytes(r.agent.pid)}
        for _ in range(runs):
            t = time.monotonic()
            failed += not client.call("selftest")["ok"]
            tests.append(time.monotonic() - t)
        marks |= {"t2": time.monotonic(), "w2": write_bytes(r.agent.pid), "failed": failed}
    base = panel_cycles(r, marks["t0"], marks["t1"])
    during = panel_cycles(r, marks["t1"], marks["t2"])
    idle_rate = (marks["w1"] - marks["w0"]) / (marks["t1"] - marks["t0"])
    per_test = ((marks["w2"] - marks["w1"]) - idle_rate * (marks["t2"] - marks["t1"])) / runs
    t, b = summary_ms(tests), summary_ms(reads)
    return {
        "runs": runs, "failed": failed,
        "test_p50_ms": t["p50_ms"], "test_max_ms": t["max_ms"],
        "reads_p50_ms": b["p50_ms"], "reads_max_ms": b["max_ms"],
        "cycle_reads_ms": 1000 * sum(base) / max(1, len(base)),
        "cycle_selftest_ms": 1000 * sum(during) / max(1, len(during)),
        "bytes_per_selftest": round(per_test),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="2 runs")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-selftest-") as tmp:
        m = measure(Path(tmp), 2 if args.smoke else args.runs)
    figure("selftest_duration", runs=m["runs"], failed=m["failed"],
           selftest_p50_ms=m["test_p50_ms"], selftest_max_ms=m["test_max_ms"],
           reads_p50_ms=m["reads_p50_ms"], reads_max_ms=m["reads_max_ms"],
           ratio=round(m["test_p50_ms"] / m["reads_p50_ms"], 2))  # fmt: skip
    figure("selftest_panel_cycle", during_reads_ms=round(m["cycle_reads_ms"], 1),
           during_selftest_ms=round(m["cycle_selftest_ms"], 1),
           ratio=round(m["cycle_selftest_ms"] / max(m["cycle_reads_ms"], 1e-9), 2))  # fmt: skip
    per_day = int(m["bytes_per_selftest"])
    figure("selftest_writes", bytes_per_selftest=per_day, kb_per_day=round(per_day / 1024, 1),
           met=per_day < 1024 * 1024)  # fmt: skip
    return 1 if m["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
