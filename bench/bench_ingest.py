"""Durable ingest: events per second committed, against bare SQLite inserts of the same
rows in batches in the same run. Goal: at least 50 % of the baseline.

- ours: N Event objects made before the clock starts; timed from the first
  EventBuffer.submit() until the last future has resolved (each resolves only after the
  transaction holding its row committed with synchronous=FULL): serialising, seq
  stamping, group commit and future resolution are all inside the time.
- baseline: the same N rows (same columns, same payload bytes) prepared before the clock
  starts, inserted into a table of the buffer's own schema with executemany, BATCH rows
  per transaction, WAL and synchronous=FULL: SQLite's own cost with no Python per event.

    python bench/bench_ingest.py [--quick] [--count N] [--record]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.buffer import _SCHEMA, EventBuffer
from agent.events import Lane, dumps
from tests.uplink_helpers import IDENT, info_event

BATCH = 1000


def baseline(db: Path, count: int) -> float:
    """The same rows into the same table: the buffer's own schema (its primary key and
    drop-order index), row tuples with every column the buffer writes (lane, seq, ts_ms,
    the final payload bytes, drop class, rank), built before the clock starts; WAL,
    synchronous=FULL, executemany of BATCH rows per transaction."""
    rows = [
        (
            Lane.EVENT.value,
            i + 1,
            record.ts_ms,
            dumps(record.with_seq(i + 1).to_payload(IDENT)),
            1,
            record.severity.rank,
        )
        for i, record in enumerate(info_event(n) for n in range(count))
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


def ours(db: Path, count: int) -> float:
    records = [info_event(i) for i in range(count)]
    buffer = EventBuffer(db, IDENT, count + 10).start()
    try:
        t0 = time.perf_counter()
        futures = [buffer.submit(r) for r in records]
        for f in futures:
            f.result(600)
        elapsed = time.perf_counter() - t0
        print(f"  EventBuffer used {buffer.commits} transactions for {count} events")
    finally:
        buffer.close()
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5,000 events: a smoke run")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    count = 5000 if args.quick else args.count
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline(Path(tmp) / "base.db", count)
        mine = ours(Path(tmp) / "buffer.db", count)
    ratio = mine / base
    line = (
        f"{time.strftime('%Y-%m-%d')} ingest {count} events: EventBuffer {mine:,.0f}/s "
        f"durable, bare SQLite batches of {BATCH} {base:,.0f}/s, ratio {ratio:.0%} "
        "(goal >= 50%)"
    )
    print(line)
    if args.record:
        out = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        with out.open("a", encoding="utf-8") as f:
            f.write(f"- {line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
