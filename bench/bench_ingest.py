"""Durable ingest: events per second committed, against bare SQLite inserts of the same
rows in batches in the same run. Goal: at least 50 % of the baseline.

- grouped (the headline): N Event objects made before the clock starts, handed to
  EventBuffer.submit_many() in groups of GROUP; timed from the first call until the last
  group's future has resolved (each resolves only after the transaction holding the
  whole group committed with synchronous=FULL): serialising, seq stamping, group
  commit and future resolution are all inside the time. This is how events reach the
  buffer in the agent: one poll of a device yields one list of events (DevicePoints.
  update), and a storm is many such lists. 50 is a realistic list: one poll of a fire
  panel's status block (16 registers x 16 points) when a fire spreads over a detector
  loop and 50 points go into alarm in the same poll; the 10,000-point storm bench
  yields lists of 16 to several hundred. It is also the fair match for the baseline,
  which hands SQLite prepared rows in batches, not one call per row.
- per event: the same N events through EventBuffer.submit(), one call and one future
  each (a GPIO contact, a single state change), printed on a second line against the
  same baseline.
- baseline: the same N rows (same columns, same payload bytes) prepared before the clock
  starts, inserted into a table of the buffer's own schema with executemany, BATCH rows
  per transaction, WAL and synchronous=FULL: SQLite's own cost with no Python per event.

Each round runs all three, one after the other, each on a fresh file; the figures are
the medians over the rounds (the development machine is shared and noisy: interleaving
puts the baseline under the same load as what it is compared with).

    python bench/bench_ingest.py [--quick] [--count N] [--group G] [--rounds R] [--record]

The first printed line is the headline (bench/run_all.py parses it):
`... EventBuffer <grouped>/s ... <baseline>/s, ratio <pct>%`.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.buffer import _SCHEMA, EventBuffer
from agent.runtime import tune_interpreter
from core.events import Event, Lane, dumps
from tests.uplink_helpers import IDENT, info_event

BATCH = 1000
GROUP = 50


def baseline(db: Path, records: list[Event]) -> float:
    """The same rows into the same table: the buffer's own schema (its primary key and
    drop-order index), row tuples with every column the buffer writes (lane, seq, ts_ms,
    the final payload bytes, drop class, rank), built before the clock starts; WAL,
    synchronous=FULL, executemany of BATCH rows per transaction."""
    count = len(records)
    rows = [
        (
            Lane.EVENT.value,
            i + 1,
            record.ts_ms,
            dumps(record.with_seq(i + 1).to_payload(IDENT)),
            1,
            record.severity.rank,
        )
        for i, record in enumerate(records)
    ]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    t0 = time.perf_counter()
    for start in range(0, count, BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO records (lane, seq, ts_ms, payload, drop_class, rank)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows[start : start + BATCH],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return count / elapsed


def _timed(
    db: Path, records: list[Event], submit_all: Callable[[EventBuffer], list[Future[Any]]]
) -> tuple[float, int]:
    """Events/s from the first submit to the last durable commit, and the transactions used."""
    buffer = EventBuffer(db, IDENT, len(records) + 10).start()
    try:
        t0 = time.perf_counter()
        for f in submit_all(buffer):
            f.result(600)
        elapsed = time.perf_counter() - t0
        _check_stored(buffer, len(records))
        return len(records) / elapsed, buffer.commits
    finally:
        buffer.close()


def per_event(db: Path, records: list[Event]) -> tuple[float, int]:
    """submit() per event; returns events/s and the transactions used."""
    return _timed(db, records, lambda buffer: [buffer.submit(r) for r in records])


def grouped(db: Path, records: list[Event], group: int) -> tuple[float, int]:
    """submit_many() per group of `group` events; returns events/s and transactions."""
    groups = [records[i : i + group] for i in range(0, len(records), group)]
    return _timed(db, records, lambda buffer: [buffer.submit_many(g) for g in groups])


def _check_stored(buffer: EventBuffer, count: int) -> None:
    """Not a timing: make sure the figure is for rows that are really there."""
    stats = buffer.stats()
    if stats["event_depth"] != count or stats["drops"]["event"]:
        raise SystemExit(f"ingest bench: expected {count} rows stored, got {stats}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5,000 events, 1 round: a smoke")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--group", type=int, default=GROUP, help="events per submit_many()")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    # as `alarmgw run` sets up CPython (agent/runtime.py): the whole process, baseline included
    tune_interpreter()
    count, rounds = (5000, 1) if args.quick else (args.count, args.rounds)
    records = [info_event(i) for i in range(count)]
    base, many, single = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            base.append(baseline(Path(tmp) / f"base{n}.db", records))
            rate, commits_many = grouped(Path(tmp) / f"many{n}.db", records, args.group)
            many.append(rate)
            rate, commits_single = per_event(Path(tmp) / f"single{n}.db", records)
            single.append(rate)
            print(
                f"  round {n + 1}: baseline {base[-1]:,.0f}/s, submit_many {many[-1]:,.0f}/s "
                f"({commits_many} transactions), submit {single[-1]:,.0f}/s "
                f"({commits_single} transactions)"
            )
    b, m, s = (statistics.median(x) for x in (base, many, single))
    date = time.strftime("%Y-%m-%d")
    lines = [
        f"{date} ingest {count} events: EventBuffer {m:,.0f}/s durable "
        f"(submit_many, groups of {args.group}), bare SQLite batches of {BATCH} {b:,.0f}/s, "
        f"ratio {m / b:.0%} (goal >= 50%; median of {rounds})",
        f"{date} ingest {count} events: per-event submit() {s:,.0f}/s durable, "
        f"same baseline {b:,.0f}/s, ratio {s / b:.0%}",
    ]
    print("\n".join(lines))
    if args.record:
        out = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        with out.open("a", encoding="utf-8") as f:
            f.write("".join(f"- {line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
