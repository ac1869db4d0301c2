"""What the transmission light costs while fire alarms wait for their confirmation.

The duties' thread ticks twice a second; each tick asks the buffer (a real SQLite file
holding a backlog of ordinary events, as during an outage) whether each fire alarm still
being sent has been confirmed. A storm of fire alarms must not turn that into thousands
of reads a second on the Pi's SD card and CPU, so a tick stops after CHECKS_PER_TICK
still-unconfirmed ones (agent/transmission.py).

Figures, per number of fire alarms waiting (all unconfirmed: the broker is down):
- tick_us: median time of one tick (the light's and failure signal's whole look);
- ratio: against the same-run baseline, one `buffer.pending` read of one row (the
  cheapest question the buffer answers);
- cpu_pct_at_2hz: the share of one core the ticks take at two a second;
and the largest storm once more without the bound, for comparison.
And the stored listener (runs on the buffer's writer for every stored event):
- stored_ns: median per call for an ordinary event (the common case) and a fire alarm.

    python bench/bench_duties.py [--smoke] [--backlog N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import transmission
from agent.buffer import EventBuffer
from agent.transmission import CHECKS_PER_TICK, TransmissionRule, TransmissionSettings
from bench.common import figure, machine
from core.events import Category, Event, Identity, Kind, Lane, Severity

IDENT = Identity("bench-site", "gw1")


def door(i: int) -> Event:
    return Event(Kind.STATE, Category.DOOR, Severity.WARNING, "open", f"门 {i}", "door", "contact")


def fire(i: int) -> Event:
    return Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", f"火警 {i}", "fap", f"p{i}")


def median_us(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny: proves the bench works")
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    backlog = 200 if args.smoke else args.backlog
    counts = (1, 16, 100) if args.smoke else (1, 16, 100, 1000)
    repeats = 20 if args.smoke else 200
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        buffer = EventBuffer(Path(tmp) / "buffer.db", IDENT, 1_000_000).start()
        try:
            for start in range(0, backlog, 1000):
                buffer.submit_many([door(i) for i in range(start, min(backlog, start + 1000))])
            fires = [buffer.submit(fire(i)).result(30) for i in range(max(counts))]

            def unconfirmed(seq: int) -> bool:  # as agent.duty.UitdDuties.unconfirmed
                rows = buffer.pending(Lane.EVENT, seq - 1, 1)
                return bool(rows) and rows[0].seq == seq

            baseline = median_us(lambda: buffer.pending(Lane.EVENT, 0, 1), repeats)
            figure("duties_baseline", pending_read_us=round(baseline, 1), backlog=backlog)
            for count in counts:
                rule = TransmissionRule([], [], TransmissionSettings())
                for event in fires[:count]:
                    assert isinstance(event, Event)
                    rule.stored(event)
                tick = median_us(lambda rule=rule: rule.tick(unconfirmed), repeats)
                figure(
                    f"duties_tick_{count}",
                    waiting=count,
                    tick_us=round(tick, 1),
                    ratio=round(tick / baseline, 1),
                    reads=min(count, CHECKS_PER_TICK),
                    cpu_pct_at_2hz=round(2 * tick / 1e6 * 100, 3),
                )
            # the same storm looked at without the bound (every waiting alarm read each tick)
            most = max(counts)
            rule = TransmissionRule([], [], TransmissionSettings())
            for event in fires[:most]:
                assert isinstance(event, Event)
                rule.stored(event)
            bound, transmission.CHECKS_PER_TICK = transmission.CHECKS_PER_TICK, 10**9
            try:
                tick = median_us(lambda: rule.tick(unconfirmed), max(5, repeats // 10))
            finally:
                transmission.CHECKS_PER_TICK = bound
            figure(
                f"duties_tick_{most}_unbounded",
                waiting=most,
                tick_us=round(tick, 1),
                ratio=round(tick / baseline, 1),
                reads=most,
                cpu_pct_at_2hz=round(2 * tick / 1e6 * 100, 3),
            )
            rule = TransmissionRule([], [], TransmissionSettings())
            plain, alarm = door(0).with_seq(1), fire(0).with_seq(2)
            n = 2_000 if args.smoke else 200_000
            for name, event in (("ordinary", plain), ("fire", alarm)):
                start = time.perf_counter()
                for _ in range(n):
                    rule.stored(event)
                figure(
                    f"duties_stored_{name}",
                    stored_ns=round((time.perf_counter() - start) / n * 1e9),
                )
        finally:
            buffer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
