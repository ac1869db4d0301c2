"""What the transmission light costs while fire alarms wait for their confirmation.

The duties' thread ticks twice a second; each tick asks the buffer (a real SQLite file
holding a backlog of ordinary events, as during an outage) whether each fire alarm still
being sent has been confirmed. A storm of fire alarms must not turn that into thousands
of reads a second on the Pi's SD card and CPU, so a tick stops after CHECKS_PER_TICK
still-unconfirmed ones (agent/transmission.py).

Two readers, as with [gb26875]: MQTT, then the GB uplink. "Confirmed" is every reader's
(EventBuffer.delivered). Two runs: the alarms confirmed by the broker but not the centre
(`acked_by_mqtt`), and by the centre while the broker is down (`acked_by_gb`).

Figures, per number of fire alarms waiting (each unconfirmed by one reader):
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
    for acked_by in ("mqtt", "gb"):  # the broker confirmed them / the centre did (broker down)
        with tempfile.TemporaryDirectory() as tmp:
            buffer = EventBuffer(
                Path(tmp) / "buffer.db", IDENT, 1_000_000, readers=("mqtt", "gb")
            ).start()
            try:
                ticks(buffer, backlog, counts, repeats, acked_by)
            finally:
                buffer.close()
    stored_listener(2_000 if args.smoke else 200_000)
    return 0


def ticks(
    buffer: EventBuffer, backlog: int, counts: tuple[int, ...], repeats: int, acked_by: str
) -> None:
    """One tick's cost per number of waiting alarms, each confirmed by `acked_by` only."""
    for start in range(0, backlog, 1000):
        buffer.submit_many([door(i) for i in range(start, min(backlog, start + 1000))])
    fires = [buffer.submit(fire(i)).result(30) for i in range(max(counts))]
    buffer.ack_many(Lane.EVENT, [f.seq for f in fires if f.seq is not None], acked_by)
    time.sleep(2.0)  # the writer marks the acks in the file: the steady state

    def unconfirmed(seq: int) -> bool:  # as agent.duty.UitdDuties.unconfirmed
        return not buffer.delivered(Lane.EVENT, seq)

    baseline = median_us(lambda: buffer.pending(Lane.EVENT, 0, 1), repeats)
    tag = f"acked_by_{acked_by}"
    figure(f"duties_baseline_{tag}", pending_read_us=round(baseline, 1), backlog=backlog)
    for count in counts:
        rule = TransmissionRule([], [], TransmissionSettings())
        for event in fires[:count]:
            assert isinstance(event, Event)
            rule.stored(event)
        tick = median_us(lambda rule=rule: rule.tick(unconfirmed), repeats)
        figure(
            f"duties_tick_{count}_{tag}",
            waiting=count,
            tick_us=round(tick, 1),
            ratio=round(tick / baseline, 1),
            looked_at=min(count, CHECKS_PER_TICK),
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
        f"duties_tick_{most}_unbounded_{tag}",
        waiting=most,
        tick_us=round(tick, 1),
        ratio=round(tick / baseline, 1),
        looked_at=most,
        cpu_pct_at_2hz=round(2 * tick / 1e6 * 100, 3),
    )


def stored_listener(n: int) -> None:
    """The stored listener's cost (on the buffer's writer, for every stored event)."""
    rule = TransmissionRule([], [], TransmissionSettings())
    plain, alarm = door(0).with_seq(1), fire(0).with_seq(2)
    for name, event in (("ordinary", plain), ("fire", alarm)):
        start = time.perf_counter()
        for _ in range(n):
            rule.stored(event)
        figure(f"duties_stored_{name}", stored_ns=round((time.perf_counter() - start) / n * 1e9))


if __name__ == "__main__":
    raise SystemExit(main())
