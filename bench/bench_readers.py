"""The buffer with two readers (MQTT + GB/T 26875.3): the cost of counting per reader, and
of dropping at the bound while one reader is down.

1. stats()["readers"] (the MQTT heartbeat, `alarmgw status`, the self-test) at N rows
   pending for both readers: the first call after a commit (a scan of the table, on its
   own connection) and a repeat with no commit between (the cached count). Baseline, same
   run: the same SQL scan on a bare connection.
2. next_rows(200) for the GB reader while another thread keeps counting (a commit before
   each count, so each one scans): p50/p99/max. Baseline, same run: next_rows with nobody
   counting. Before review item 9 the count held the readers' lock: a read waited for it.
3. Storing at the bound with GB down: max_events rows MQTT has delivered and GB has not,
   then records stored in groups of 10; each store drops one row only GB still needs
   (review item 6). Records/s against the same buffer with one reader (baseline).

    python bench/bench_readers.py [--smoke] [--rows N]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.buffer import EventBuffer, ReadCursor, Reader
from bench.common import figure
from core.events import Event, Identity, Kind, Lane, Record, Severity, system_event

IDENT = Identity("bench", "gw-readers")


def _event(n: int, gb: bool = True) -> Event:
    detail = {"gb": {"tf": 2, "status": 5}} if gb else {"n": n}
    return system_event(
        Kind.FAULT, Severity.MAJOR, "fault", f"{n}", point="p", clock_synced=True, detail=detail
    )


def _for_gb(record: Record) -> bool:
    return isinstance(record, Event) and "gb" in (record.detail or {})


def _fill(buf: EventBuffer, rows: int) -> list[int]:
    seqs: list[int] = []
    for start in range(0, rows, 5000):
        group = [_event(n) for n in range(start, min(rows, start + 5000))]
        seqs += buf.submit_many(group).result(120).seqs
    return seqs


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def counting(d: Path, rows: int) -> None:
    readers = ("mqtt", Reader("gb", _for_gb))
    with EventBuffer(d / "count.db", IDENT, rows * 2, readers=readers) as buf:
        _fill(buf, rows)
        with sqlite3.connect(d / "count.db") as bare:
            t0 = time.perf_counter()
            bare.execute("SELECT TOTAL((done & 1) = 0), TOTAL((done & 2) = 0) FROM records")
            scan = time.perf_counter() - t0
        first, repeat = [], []
        for n in range(5):
            buf.submit(_event(rows + n)).result(10)  # a commit: the next count scans
            t0 = time.perf_counter()
            buf.stats()
            first.append(time.perf_counter() - t0)
            for _ in range(4):
                t0 = time.perf_counter()
                buf.stats()
                repeat.append(time.perf_counter() - t0)
        figure("readers_count_baseline_bare_scan", rows=rows, ms=_ms(scan))
        figure(
            "readers_stats_after_a_commit",
            rows=rows,
            median_ms=_ms(statistics.median(first)),
            ratio_vs_bare_scan=round(statistics.median(first) / scan, 2),
        )
        figure(
            "readers_stats_no_commit_between",
            rows=rows,
            median_ms=_ms(statistics.median(repeat)),
            ratio_vs_bare_scan=round(statistics.median(repeat) / scan, 4),
        )
        reads(buf, rows)


def reads(buf: EventBuffer, rows: int) -> None:
    def read_times(samples: int) -> list[float]:
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            buf.next_rows(ReadCursor(reader="gb"), 200)
            out.append(time.perf_counter() - t0)
        return out

    alone = read_times(200)
    stop = threading.Event()
    counts = 0

    def keep_counting() -> None:
        nonlocal counts
        n = 0
        while not stop.is_set():
            buf.submit(_event(10 * rows + n)).result(10)
            n += 1
            buf.stats()
            counts += 1

    thread = threading.Thread(target=keep_counting, daemon=True)
    thread.start()
    while counts < 2:
        time.sleep(0.01)
    busy = read_times(200)
    stop.set()
    thread.join(30)
    for name, values in (("readers_next_rows_alone", alone), ("readers_next_rows_counting", busy)):
        ordered = sorted(values)
        figure(
            name,
            rows=rows,
            p50_ms=_ms(ordered[len(ordered) // 2]),
            p99_ms=_ms(ordered[int(len(ordered) * 0.99)]),
            max_ms=_ms(ordered[-1]),
            counts_meanwhile=counts if values is busy else 0,
        )


def storing_at_the_bound(d: Path, bound: int, extra: int) -> None:
    rates = {}
    for name, readers in (("one_reader", ("mqtt",)), ("gb_down", ("mqtt", Reader("gb", _for_gb)))):
        with EventBuffer(d / f"bound-{name}.db", IDENT, bound, readers=readers) as buf:
            seqs = _fill(buf, bound)
            if len(readers) == 2:
                buf.ack_many(Lane.EVENT, seqs, "mqtt")  # MQTT delivered; the centre is down
                buf.stats()
            t0 = time.perf_counter()
            for start in range(0, extra, 10):
                group = [_event(bound + start + n, gb=False) for n in range(10)]
                buf.submit_many(group).result(30)
            elapsed = time.perf_counter() - t0
            rates[name] = extra / elapsed
            drops = buf.stats()["drops"]["event"]
        figure(f"readers_store_at_bound_{name}", bound=bound, records=extra,
               per_s=round(rates[name]), drops=drops)  # fmt: skip
    figure(
        "readers_store_at_bound_ratio",
        gb_down_vs_one_reader=round(rates["gb_down"] / rates["one_reader"], 2),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--rows", type=int, default=100_000)
    args = p.parse_args(argv)
    rows = 5_000 if args.smoke else args.rows
    with tempfile.TemporaryDirectory() as tmp:
        counting(Path(tmp), rows)
        bound, extra = (2_000, 500) if args.smoke else (10_000, 2_000)
        storing_at_the_bound(Path(tmp), bound, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
