"""Event storm: 10,000 field events within one second, all stored and delivered, while
another line keeps its poll cycle.

A Modbus TCP panel with 10,000 fire points (bench/profiles/storm-panel-10k.toml:
16 bit points in each of 625 registers, five block reads, polled every second)
goes into fire all at once: 625 register writes pipelined through the
simulator's control socket, well inside one second, each point one event:
10,000 events. (`--waves N` flips them N times, alarm then restore..., each
wave issued once the agent has polled the previous one.) The subscriber counts
them, de-duplicated by seq, and checks there is no gap and every (point,
change) arrived in order.
Meanwhile an RS-485 line (rs485-2, 9600 baud with wire-time emulation, four
devices polled back to back) is watched from the simulator side: its cycle is
the time between successive requests for the same first block of unit 1.
Figure: the line's mean (and worst) cycle during the storm / its idle cycle.
Goal: within 1.2x. The simulator logs requests (python bench/common.py sim).

    python bench/bench_storm.py [--smoke] [--waves N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from bench.common import (
    Received,
    Rig,
    Setup,
    SimLine,
    SimTcp,
    figure,
    read_requests,
    rig,
    summary_ms,
    unique_by_seq,
    wait_for,
)

WORDS, BITS = 625, 16
POINTS = WORDS * BITS
REQUESTS_PER_POLL = 5  # 625 registers in blocks of 125
STORM_POLL_S = 1.0  # a panel's fast poll in the field
IDLE_WINDOW_S = 3.0
GOAL_RATIO = 1.2
OTHER_LINE = SimLine(
    "rs485-2",
    [
        ("fap", 1, "fire-panel-gst"),
        ("efd-1", 2, "electrical-fire-4ch"),
        ("efd-2", 3, "electrical-fire-4ch"),
        ("efd-3", 4, "electrical-fire-4ch"),
    ],
    baudrate=9600,
    wire_time=True,
    fast_poll_s=0.01,  # back to back: the cycle is the line's busy time
    timeout_s=1.0,
)


def _tcp_requests(r: Rig) -> int:
    return int(r.control.call({"do": "get-state"})["state"]["tcp"]["storm"]["requests"])


def storm(r: Rig, waves: int) -> tuple[float, float]:
    """Issue the waves; returns (first stimulus mono, last stimulus mono)."""
    first = last = 0.0
    for w in range(waves):
        value = 0xFFFF if w % 2 == 0 else 0  # all 16 points of the word: fire, or normal
        reqs = [
            {"do": "value", "device": "storm", "point": f"w{n}", "value": value}
            for n in range(1, WORDS + 1)
        ]
        replies = r.control.many(reqs)
        if w == 0:
            first = float(replies[0]["logged"]["mono"])
        last = float(replies[-1]["logged"]["mono"])
        if w == waves - 1:
            break
        # the next wave only after a whole poll began after this one: no change is skipped
        seen = _tcp_requests(r)
        if not wait_for(lambda s=seen: _tcp_requests(r) >= s + 2 * REQUESTS_PER_POLL, 60, 0.005):
            raise RuntimeError("the agent stopped polling the storm panel")
    return first, last


def check_delivery(events: list[Received], waves: int) -> dict[str, Any]:
    storm_events = [e for e in events if e.event.get("device") == "storm"]
    unique, dups, missing = unique_by_seq(storm_events)
    per_point: dict[str, list[str]] = {}
    for rec in unique:
        per_point.setdefault(str(rec.event["point"]), []).append(str(rec.event["kind"]))
    expected = ["alarm" if w % 2 == 0 else "restore" for w in range(waves)]
    wrong = sum(
        1
        for n in range(1, WORDS + 1)
        for b in range(BITS)
        if per_point.get(f"w{n}b{b}") != expected
    )
    return {"unique": len(unique), "duplicates": dups, "gaps": len(missing), "bad_points": wrong}


def cycles(rows: list[dict[str, Any]], start: float, end: float) -> list[float]:
    """Intervals between successive requests for unit 1's first block on the other line."""
    mine = [x for x in rows if x["line"] == OTHER_LINE.id and x["unit"] == 1]
    first_addr = min(x["addr"] for x in mine)
    times = [x["mono"] for x in mine if x["addr"] == first_addr]
    return [b - a for a, b in itertools.pairwise(times) if start <= a and b <= end]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the same storm (it is already small)")
    p.add_argument("--waves", type=int, default=1, help="flips per point (10,000 events each)")
    args = p.parse_args(argv)
    idle_s = IDLE_WINDOW_S
    expected = POINTS * args.waves
    setup = Setup(lines=[OTHER_LINE], tcp=[SimTcp("storm", "storm-panel-10k", STORM_POLL_S)])
    with tempfile.TemporaryDirectory() as tmp:
        with rig(Path(tmp), setup, poll_log=True) as r:
            r.control.call({"do": "state", "device": "fap", "point": "point16", "state": "fire"})
            if r.feed.wait_point("point16", 1, timeout=30) is None:
                raise RuntimeError("agent never came up\n" + r.agent_log()[-3000:])
            idle_start = time.monotonic()
            time.sleep(idle_s)  # the idle window being measured, not a synchronisation
            first, last = storm(r, args.waves)
            delivered = r.feed.wait_count(expected + 1, timeout=180)
            done = time.monotonic()
            events = r.feed.snapshot()
            log_tail = r.agent_log()[-2000:]
        rows = read_requests(r.request_log)
    result = check_delivery(events, args.waves)
    storm_events = [e for e in events if e.event.get("device") == "storm"]
    last_rx = max((e.mono for e in storm_events), default=done)
    idle = cycles(rows, idle_start, first)
    busy = cycles(rows, first, last_rx)
    idle_mean = sum(idle) / len(idle) if idle else float("nan")
    busy_mean = sum(busy) / len(busy) if busy else float("nan")
    figure(
        "storm_delivery",
        expected=expected,
        delivered=result["unique"],
        duplicates=result["duplicates"],
        gaps=result["gaps"],
        out_of_order_points=result["bad_points"],
        complete=delivered and result["unique"] == expected and result["gaps"] == 0,
    )
    figure(
        "storm_timing",
        stimuli_s=round(last - first, 3),
        stimuli_per_s=round(expected / max(last - first, 1e-9)),
        last_delivered_after_s=round(last_rx - first, 3),
        delivered_per_s=round(expected / max(last_rx - first, 1e-9)),
    )
    figure("storm_other_line_idle_cycle", **summary_ms(idle))
    figure("storm_other_line_storm_cycle", **summary_ms(busy))
    ratio = busy_mean / idle_mean
    worst = max(busy, default=float("nan")) / idle_mean
    figure(
        "storm_other_line_goal",
        mean_ratio=round(ratio, 3),
        worst_ratio=round(worst, 3),
        goal_ratio=GOAL_RATIO,
        met=ratio <= GOAL_RATIO,
    )
    if not (delivered and result["unique"] == expected and result["gaps"] == 0):
        print(f"storm: events lost or missing\n{log_tail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
