"""Durable ingest: events per second committed by EventBuffer (submit -> durable future),
against bare SQLite inserts of the same rows in batches (WAL, synchronous=FULL, one
transaction per batch) in the same run. Goal: at least 50 % of the baseline.

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

from agent.buffer import EventBuffer
from agent.events import dumps
from tests.uplink_helpers import IDENT, info_event

BATCH = 1000


def baseline(db: Path, count: int) -> float:
    """The same rows (serialised payload + columns), batches of BATCH, one commit each."""
    rows = [(i + 1, dumps(info_event(i).with_seq(i + 1).to_payload(IDENT))) for i in range(count)]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE records (lane TEXT, seq INTEGER, drop_class INTEGER, rank INTEGER,"
        " ts_ms INTEGER, payload BLOB, PRIMARY KEY (lane, seq)) WITHOUT ROWID"
    )
    t0 = time.perf_counter()
    for start in range(0, count, BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO records VALUES ('event', ?, 1, 4, 0, ?)", rows[start : start + BATCH]
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
