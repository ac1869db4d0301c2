"""Test helpers for the buffer/uplink tests: settings, a persistent broker, a collecting
subscriber, and a small agent-like process (`python -m tests.uplink_helpers agent ...`)
that the kill -9 test starts and kills.

The collector is the central server's stand-in: it subscribes with a persistent
session so nothing published while it reconnects is lost at the broker.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from core.events import Category, Event, Identity, Kind, Reading, Severity
from simulator.broker import Mosquitto
from tests.waiting import wait_until

IDENT = Identity("site-t", "gw-t", "测试养老院", "测试网关")


@dataclass(frozen=True)
class Settings:
    """Satisfies agent.uplink.UplinkSettings with test-friendly (fast) defaults."""

    host: str
    port: int
    topic_prefix: str = "alarmgw"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    credentials_file: Path | None = None
    mqtt_version: str = "3.1.1"
    keepalive_s: int = 5
    heartbeat_s: float = 30.0
    inflight_window: int = 50
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 0.5
    client_id: str | None = None


class PersistentMosquitto(Mosquitto):
    """A private broker that keeps sessions and queued messages across a graceful restart
    (SIGTERM saves them), as a production broker does."""

    def _write_conf(self) -> None:
        super()._write_conf()
        conf = self.conf_path.read_text().replace("persistence false\n", "")
        conf += f"persistence true\npersistence_location {self.workdir}/\nuser root\n"
        self.conf_path.write_text(conf)


def alarm(text: str = "1号楼 火警", category: Category = Category.FIRE) -> Event:
    return Event(Kind.ALARM, category, Severity.CRITICAL, "fire", text, "fap", "zone1")


def info_event(n: int) -> Event:
    return Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", f"门 {n}", "door", "d1", n)


def reading(n: int) -> Reading:
    return Reading("ai-1", "pressure", n / 100, "MPa")


class Collector:
    """A subscriber collecting every message on `<root>/#`; the central server's role."""

    def __init__(self, host: str, port: int, topic_filter: str, persistent: bool = True) -> None:
        self.topic_filter = topic_filter
        self.messages: list[tuple[str, bytes]] = []
        self._parsed: dict[str, list[dict[str, Any]]] = {}  # leaf -> payloads, parsed once
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client_id = f"collector-{uuid.uuid4().hex[:8]}"
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        self._client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=5)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError("collector could not subscribe")

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = {"unparsable": payload.hex()}
        leaf = msg.topic.rsplit("/", 1)[1]
        with self._cond:
            self.messages.append((msg.topic, payload))
            self._parsed.setdefault(leaf, []).append(parsed)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Wait until predicate() holds (evaluated under the lock after each message)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def payloads(self, leaf: str) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._parsed.get(leaf, []))

    def seqs(self, leaf: str) -> list[int]:
        with self._cond:
            return [p["seq"] for p in self._parsed.get(leaf, [])]

    def count(self, leaf: str) -> int:
        with self._cond:
            return len(self._parsed.get(leaf, []))

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def running(buffer: Any, uplink: Any) -> Iterator[None]:
    """Start a buffer and an uplink (the buffer wakes it, as agent/runtime.py wires them,
    unless the test wired something else); stop both (uplink first) whatever happens."""
    if buffer.on_stored is None:
        buffer.on_stored = uplink.wake
    buffer.start()
    try:
        uplink.start()
        try:
            yield
        finally:
            uplink.stop()
    finally:
        buffer.close()


# --- the agent-like child process of the kill -9 test ---------------------------------


def _agent_main(args: argparse.Namespace) -> int:
    from agent.buffer import EventBuffer
    from agent.uplink import Uplink

    buffer = EventBuffer(Path(args.db), IDENT, max_events=1_000_000)
    settings = Settings(args.host, args.port, topic_prefix=args.prefix, client_id=args.client_id)
    commands = None
    if args.commands:
        from agent.commands import CommandHandler
        from tests.test_commands import FakeGateway

        commands = CommandHandler(FakeGateway(buffer), IDENT).handle
    uplink = Uplink(
        settings, IDENT, buffer, version="test", config_digest="kill", commands=commands
    )
    with running(buffer, uplink):
        print("ready", flush=True)
        if args.commands:
            sys.stdin.read()  # answers commands until its parent closes stdin
            return 0
        if args.drain:
            ok = wait_until(lambda: buffer.stats()["depth"] == 0, timeout=60)
            print("drained" if ok else "not-drained", flush=True)
            return 0 if ok else 1
        _burst(buffer, args.rate)
    return 0


def _burst(buffer: Any, rate: int) -> None:
    """Submit events forever (until killed); print each seq once it is durable."""
    n = 0
    while True:
        futures = [buffer.submit(info_event(n + i)) for i in range(rate // 100)]
        n += len(futures)
        for f in futures:
            print("stored", f.result(10).seq, flush=False)
        sys.stdout.flush()
        time.sleep(0.01)  # pacing the producer, not synchronising


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uplink_helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    agent = sub.add_parser("agent")
    agent.add_argument("--db", required=True)
    agent.add_argument("--host", default="127.0.0.1")
    agent.add_argument("--port", type=int, required=True)
    agent.add_argument("--prefix", required=True)
    agent.add_argument("--client-id", default="kill-agent")
    agent.add_argument("--rate", type=int, default=2000, help="events per second, roughly")
    agent.add_argument("--drain", action="store_true", help="no burst: deliver and exit")
    agent.add_argument(
        "--commands", action="store_true", help="no burst: answer commands until stdin closes"
    )
    args = parser.parse_args(argv)
    return _agent_main(args)


if __name__ == "__main__":
    sys.exit(main())
