"""Drain after an outage: N buffered events published and acknowledged, against bare paho
QoS 1 publishing of the same payloads to the same private broker in the same run.
Goal: at least 70 % of the baseline rate.

- ours: an EventBuffer (SQLite file, WAL, synchronous=FULL) already holding N events, then
  an Uplink started on it; timed from uplink.start() (connect included) until N PUBACKs
  have come back. Each PUBACK deletes its row (batched, in the writer's transactions).
- baseline: one paho client, the same N payload bytes, QoS 1, the same in-flight window
  of 50, pumped by one thread; timed from the first publish to the last PUBACK.

    python bench/bench_drain.py [--quick] [--count N] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt

from agent.buffer import EventBuffer
from agent.uplink import Uplink
from core.events import Lane
from simulator.broker import Mosquitto
from tests.uplink_helpers import IDENT, Settings, info_event, wait_until

WINDOW = 50
TOPIC = "bench/v1/site-t/gw-t/event"  # the uplink's own topic under prefix "bench"


def fill(buffer: EventBuffer, count: int) -> None:
    for start in range(0, count, 5000):
        futures = [buffer.submit(info_event(i)) for i in range(start, min(count, start + 5000))]
        for f in futures:
            f.result(60)


def baseline(broker: Mosquitto, payloads: list[bytes]) -> float:
    """Bare paho, QoS 1, the same payloads and the same in-flight window, driven the way the
    uplink drives its client (one thread, paho's loop() calls, no paho thread): the next
    payload is published from the PUBACK callback, so paho never queues beyond the window
    (handing paho all N at once makes it keep N messages in memory, which no store-and-
    forward client does). Timed from the first publish to the last PUBACK."""
    state = {"sent": 0, "acked": 0}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline")
    client.max_inflight_messages_set(WINDOW)

    def publish_next() -> None:
        client.publish(TOPIC, payloads[state["sent"]], qos=1)
        state["sent"] += 1

    def on_publish(*_a: object) -> None:
        state["acked"] += 1
        if state["sent"] < len(payloads):
            publish_next()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    while not client.is_connected():
        client.loop(0.1)
    t0 = time.perf_counter()
    for _ in range(min(WINDOW, len(payloads))):
        publish_next()
    deadline = time.monotonic() + 600
    while state["acked"] < len(payloads):
        if time.monotonic() > deadline:
            raise SystemExit(f"baseline stalled at {state['acked']} of {len(payloads)} PUBACKs")
        client.loop(0.1)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    return len(payloads) / elapsed


def ours(broker: Mosquitto, db: Path, count: int) -> float:
    buffer = EventBuffer(db, IDENT, count + 10).start()
    try:
        fill(buffer, count)
        uplink = Uplink(
            Settings(broker.host, broker.port, topic_prefix="bench", inflight_window=WINDOW),
            IDENT,
            buffer,
            version="bench",
            config_digest="bench",
        )
        buffer.on_stored = uplink.wake  # as agent/runtime.py wires them
        t0 = time.perf_counter()
        uplink.start()
        try:
            wait_until(lambda: uplink.counters.acked >= count, timeout=600, step=0.005)
            elapsed = time.perf_counter() - t0
        finally:
            uplink.stop()
        return count / elapsed
    finally:
        buffer.close()


def payloads_of(db: Path, count: int) -> list[bytes]:
    buffer = EventBuffer(db, IDENT, count + 10).start()
    try:
        fill(buffer, count)
        return [r.payload for r in buffer.pending(Lane.EVENT, 0, count)]
    finally:
        buffer.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5,000 events: a smoke run")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    count = 5000 if args.quick else args.count
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with Mosquitto(d / "broker", max_queued=count * 2) as broker:
            payloads = payloads_of(d / "payloads.db", count)
            base = baseline(broker, payloads)
            mine = ours(broker, d / "buffer.db", count)
    ratio = mine / base
    line = (
        f"{time.strftime('%Y-%m-%d')} drain {count} events: uplink {mine:,.0f}/s, "
        f"bare paho QoS1 {base:,.0f}/s, ratio {ratio:.0%} (goal >= 70%)"
    )
    print(line)
    if args.record:
        out = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        with out.open("a", encoding="utf-8") as f:
            f.write(f"- {line}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
