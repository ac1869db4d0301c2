"""A fire behind a 10,000-record backlog: how soon does it reach the platform?

The gateway side runs in its own process with the product's DEFAULT settings (a real
config file loaded by agent.config: in-flight window 50, reconnect backoff 1..60 s,
buffer 100,000): a real EventBuffer (SQLite file) and Uplink. It reaches a private
mosquitto (persistent, as a production broker) either directly ("loopback") or through
simulator/link.py's slow link ("4g": 30 ms each way, 1 MB/s, a good 4G uplink); an
independent subscriber in this process, directly on the broker, stamps every event on
receipt. CLOCK_MONOTONIC is system-wide, so the gateway's stamps and the subscriber's
compare without clock sync.

Scenarios, each trial on a fresh buffer and a fresh gateway process:

- broker_back: the broker is down; 10,000 events are queued, then a fire is detected;
  the broker comes back. Figures: broker back -> the uplink connected (the reconnect
  backoff: issue 11 point 1), connected -> fire at the subscriber (the order: goal 1 s),
  broker back -> fire, and as the in-order baseline of the same trial, connected -> the
  last backlog record at the subscriber (where the fire would have been in seq order).
- during_drain: the same backlog is draining when a fire is detected (after 10 % of it
  arrived). Figures: detection -> fire at the subscriber (goal 1 s), and detection ->
  the last backlog record (the in-order baseline).

Nothing may be lost: every trial waits for all 10,001 records, or the bench is broken.

    python bench/bench_backlog.py [--smoke] [--trials N] [--backlog N] [--links 4g,loopback]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import SITE, figure, summary_ms, toml_table
from simulator.link import SlowLink
from tests.uplink_helpers import PersistentMosquitto

GOAL_S = 1.0
TOPIC = f"alarmgw/v1/{SITE}/+/event"  # each trial is a gateway of its own (seqs restart)
LINKS: dict[str, dict[str, float] | None] = {
    "loopback": None,
    "4g": {"delay_s": 0.03, "rate_bytes_s": 1_000_000},
}
FIRE_TEXT = "3楼东走廊 感烟探测器 火警"


# --- the gateway process: `python bench/bench_backlog.py gateway CONFIG` -----------------------


def _gateway_main(config_path: str) -> int:
    """Reads commands on stdin (fill N, fire, quit); answers on stdout with monotonic stamps."""
    from agent.buffer import EventBuffer
    from agent.config import load_config
    from agent.uplink import Uplink
    from core.events import Category, Event, Kind, Severity
    from tests.uplink_helpers import info_event

    cfg = load_config(config_path)
    lock = threading.Lock()

    def say(*words: object) -> None:
        with lock:
            print(*words, flush=True)

    def on_state(up: bool) -> None:
        if up:
            say("connected", time.monotonic())

    buffer = EventBuffer(cfg.buffer.path, cfg.identity, cfg.buffer.max_events).start()
    uplink = Uplink(cfg.uplink, cfg.identity, buffer, version="bench", config_digest="backlog")
    uplink.on_state = on_state
    buffer.on_stored = uplink.wake  # as agent/runtime.py wires them
    uplink.start()
    try:
        say("ready")
        for line in sys.stdin:
            cmd, *args = line.split()
            if cmd == "fill":
                n = int(args[0])
                for start in range(0, n, 1000):
                    chunk = [info_event(i) for i in range(start, min(n, start + 1000))]
                    buffer.submit_many(chunk).result(60)
                say("filled")
            elif cmd == "fire":
                fire = Event(
                    Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", FIRE_TEXT, "fap", "pt3"
                )
                detected = time.monotonic()
                stored = buffer.submit(fire).result(10)
                say("fire", stored.seq, detected)
            elif cmd == "quit":
                break
    finally:
        uplink.stop()
        buffer.close()
    say("bye")
    return 0


@dataclass
class Gateway:
    """The gateway child process, driven line by line."""

    proc: subprocess.Popen[str]
    connected: list[float] = field(default_factory=list)
    _replies: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, name="gateway-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                if line.startswith("connected "):
                    self.connected.append(float(line.split()[1]))
                else:
                    self._replies.append(line.strip())
                self._cond.notify_all()

    def ask(self, command: str, expect: str, timeout: float = 120) -> list[str]:
        if command:
            assert self.proc.stdin is not None
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, reply in enumerate(self._replies):
                    if reply.split()[0] == expect:
                        del self._replies[i]
                        return reply.split()
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"gateway: no '{expect}' after '{command}'")
                self._cond.wait(left)

    def connected_after(self, t: float, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(c >= t for c in self.connected):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("gateway never reconnected")
                self._cond.wait(left)
            return min(c for c in self.connected if c >= t)


@contextmanager
def gateway(d: Path, gateway_id: str, port: int, log: IO[str]) -> Iterator[Gateway]:
    cfg = d / "gateway.toml"
    text = toml_table("[identity]", {"site": SITE, "gateway": gateway_id})
    text += toml_table("[uplink]", {"host": "127.0.0.1", "port": port})  # every other default
    text += toml_table("[buffer]", {"path": str(d / "buffer.db")})
    text += toml_table(
        "[[inputs]]", {"id": "manual", "pin": 17, "category": "manual", "severity": "critical"}
    )  # a config must watch something; the gateway process never opens GPIO
    cfg.write_text(text, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, __file__, "gateway", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    gw = Gateway(proc)
    try:
        gw.ask("", "ready", timeout=30)
        yield gw
        gw.ask("quit", "bye", timeout=30)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the subscriber: the platform's stand-in ----------------------------------------------


class Subscriber:
    """A persistent QoS 1 session on the event topic; every message stamped on receipt."""

    def __init__(self, host: str, port: int) -> None:
        self.gateway = ""  # the trial's gateway: anything else is a late copy of an earlier one
        self.arrivals: list[tuple[float, int]] = []  # (mono, seq) in arrival order
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-backlog-sub", clean_session=False
        )
        self._client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self._client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber: no SUBACK")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        mono = time.monotonic()
        payload = json.loads(msg.payload)
        with self._cond:
            if payload["gateway"] == self.gateway:
                self.arrivals.append((mono, int(payload["seq"])))
                self._cond.notify_all()

    def reset(self, gateway_id: str) -> None:
        with self._cond:
            self.gateway = gateway_id
            self.arrivals = []

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.arrivals):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def first_arrival(self, seq: int) -> float:
        with self._cond:
            return next(m for m, s in self.arrivals if s == seq)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- one trial ------------------------------------------------------------------------------


@dataclass
class Trial:
    reconnect_s: float = 0.0  # broker back -> connected
    fire_s: float = 0.0  # connected (broker_back) or detection (during_drain) -> fire arrived
    back_to_fire_s: float = 0.0
    in_order_s: float = 0.0  # the same start -> the last backlog record arrived
    fire_position: int = 0  # how many records arrived before the fire (first arrivals)


def _all_seqs(total: int) -> Any:
    return lambda arrivals: len({s for _, s in arrivals}) >= total


def trial(
    d: Path, broker: PersistentMosquitto, sub: Subscriber, link: str, backlog: int, drain: bool
) -> Trial:
    d.mkdir(parents=True)
    sub.reset(d.name)
    broker.stop()
    with (
        _link(broker, link) as port,
        (d / "gateway.log").open("w") as log,
        gateway(d, d.name, port, log) as gw,
    ):
        gw.ask(f"fill {backlog}", "filled")
        fire_seq, detected = 0, 0.0
        if not drain:
            _, seq, mono = gw.ask("fire", "fire")
            fire_seq, detected = int(seq), float(mono)
        back = time.monotonic()  # mosquitto's start-up (a few ms) counts as "back"
        broker.start()
        connected = gw.connected_after(back)
        if drain:
            if not sub.wait(lambda a: len(a) >= backlog // 10, timeout=120):
                raise RuntimeError("the backlog did not start draining")
            _, seq, mono = gw.ask("fire", "fire")
            fire_seq, detected = int(seq), float(mono)
        if not sub.wait(_all_seqs(backlog + 1), timeout=300):
            raise RuntimeError(f"records lost: {len(sub.arrivals)} of {backlog + 1} arrived")
    fire_at = sub.first_arrival(fire_seq)
    last_backlog = max(m for m, s in sub.arrivals if s != fire_seq)
    order = list(dict.fromkeys(s for _, s in sub.arrivals))
    start = detected if drain else connected
    return Trial(
        reconnect_s=connected - back,
        fire_s=fire_at - start,
        back_to_fire_s=fire_at - back,
        in_order_s=last_backlog - start,
        fire_position=order.index(fire_seq),
    )


@contextmanager
def _link(broker: PersistentMosquitto, name: str) -> Iterator[int]:
    shape = LINKS[name]
    if shape is None:
        yield broker.port
        return
    with SlowLink(broker.host, broker.port, **shape) as slow:
        yield slow.port


# --- main -------------------------------------------------------------------------------------


def run(links: list[str], trials: int, backlog: int) -> bool:
    met = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = PersistentMosquitto(root / "broker", max_queued=backlog * 4)
        broker.start()
        sub = Subscriber(broker.host, broker.port)
        try:
            for link in links:
                for drain in (False, True):
                    scenario = "during_drain" if drain else "broker_back"
                    runs = [
                        trial(root / f"{link}-{scenario}-t{i}", broker, sub, link, backlog, drain)
                        for i in range(trials)
                    ]
                    met &= _report(link, scenario, backlog, runs)
        finally:
            sub.close()
            broker.close()
    return met


def _report(link: str, scenario: str, backlog: int, runs: list[Trial]) -> bool:
    tag = f"backlog_{scenario}_{link}"
    fire = summary_ms([r.fire_s for r in runs])
    in_order = summary_ms([r.in_order_s for r in runs])
    since = "connected" if scenario == "broker_back" else "detected"
    figure(f"{tag}_fire", backlog=backlog, since=since, **fire)
    figure(f"{tag}_in_order_baseline", backlog=backlog, since=since, **in_order)
    if scenario == "broker_back":
        figure(f"{tag}_reconnect", since="broker_back", **summary_ms([r.reconnect_s for r in runs]))
        figure(f"{tag}_total", since="broker_back", **summary_ms([r.back_to_fire_s for r in runs]))
    met = fire["max_ms"] <= GOAL_S * 1000
    figure(
        f"{tag}_goal",
        goal_ms=GOAL_S * 1000,
        max_position=max(r.fire_position for r in runs),
        ratio_to_in_order=round(fire["p50_ms"] / max(in_order["p50_ms"], 1e-9), 4),
        met=met,
    )
    return met


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="1 trial, 1,000 records")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--backlog", type=int, default=10_000)
    p.add_argument("--links", default="4g,loopback", help=f"of {','.join(LINKS)}")
    args = p.parse_args(argv)
    trials, backlog = (1, 1000) if args.smoke else (args.trials, args.backlog)
    links = [name for name in args.links.split(",") if name]
    unknown = set(links) - set(LINKS)
    if unknown:
        p.error(f"unknown link {sorted(unknown)}")
    run(links, trials, backlog)
    return 0  # a goal missed is a figure, not a failure; a lost record raised above


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "gateway":
        sys.exit(_gateway_main(sys.argv[2]))
    sys.exit(main())
