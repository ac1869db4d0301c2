"""Alarm latency, GPIO: a contact edge in the simulator -> the event at an MQTT subscriber.

The manual-alarm contact is pressed and released through the simulator's
control socket; each edge's time is the stimulus log's `mono`, each event's
the subscriber's receipt time (one system-wide monotonic clock). The k-th
press is matched with the k-th alarm event, the k-th release with the k-th
restore. The agent's debounce_ms adds directly and is reported.
Baseline: bare paho QoS 1 publish -> receive on the same broker, same run.
Goal: p99 within 20 ms on loopback.

    python bench/bench_latency_gpio.py [--smoke] [--count N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Rig, Setup, SimInput, figure, paho_latency, rig, summary_ms

DEBOUNCE_MS = 2
GOAL_P99_MS = 20.0
INPUT = "manual-alarm"


def drive(r: Rig, count: int) -> tuple[list[float], list[float]]:
    """Press/release `count` times, each edge after the previous event arrived."""
    press_s: list[float] = []
    release_s: list[float] = []
    for k in range(1, 2 * count + 1):
        do = "press" if k % 2 else "release"
        stimulus = r.control.call({"do": do, "input": INPUT})["logged"]
        got = r.feed.wait_device(INPUT, k, timeout=10)
        if got is None:
            raise RuntimeError(f"edge {k} ({do}) never arrived\n{r.agent_log()[-2000:]}")
        expected = "alarm" if do == "press" else "restore"
        if got.event["kind"] != expected:
            raise RuntimeError(f"edge {k}: expected {expected}, got {got.event['kind']}")
        (press_s if do == "press" else release_s).append(got.mono - float(stimulus["mono"]))
    return press_s, release_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="50 alarms")
    p.add_argument("--count", type=int, default=500, help="alarms (press + release each)")
    args = p.parse_args(argv)
    count = 50 if args.smoke else args.count
    setup = Setup(inputs=[SimInput(INPUT, 22, DEBOUNCE_MS)])
    with tempfile.TemporaryDirectory() as tmp, rig(Path(tmp), setup) as r:
        # one warm-up pair, not counted: it also waits until the agent is up and connected
        # (a press before the agent reads its pins is reported as active at boot)
        r.control.call({"do": "press", "input": INPUT})
        if r.feed.wait_device(INPUT, 1, timeout=30) is None:
            raise RuntimeError("agent never delivered the warm-up alarm\n" + r.agent_log()[-3000:])
        r.control.call({"do": "release", "input": INPUT})
        if r.feed.wait_device(INPUT, 2, timeout=10) is None:
            raise RuntimeError("agent never delivered the warm-up restore")
        with r.feed.changed:
            r.feed.events.clear()
        base = paho_latency(r.broker.host, r.broker.port, max(count, 200))
        press_s, release_s = drive(r, count)
    ours = summary_ms(press_s)
    both = summary_ms(press_s + release_s)
    b = summary_ms(base)
    figure("gpio_baseline_paho", **b)
    figure("gpio_alarm_latency", debounce_ms=DEBOUNCE_MS, **ours)
    figure("gpio_all_edges_latency", **both)
    figure(
        "gpio_latency_goal",
        p99_ms=ours["p99_ms"],
        goal_ms=GOAL_P99_MS,
        met=ours["p99_ms"] <= GOAL_P99_MS,
        p99_over_baseline_ms=round(ours["p99_ms"] - b["p99_ms"], 2),
        p50_minus_debounce_ms=round(ours["p50_ms"] - DEBOUNCE_MS, 2),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
