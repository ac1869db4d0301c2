"""A fleet after a broker restart: 1,000 gateways, the real reconnect code, a real mosquitto.

Each gateway is the product's own Uplink (agent/uplink.py: backoff, connect, resend;
agent/mqtt.py: paho) over its own EventBuffer (SQLite on tmpfs), a few hundred per
worker process. One mosquitto is stopped and started again (SIGTERM: clients see the
connection close, as on a broker upgrade). While it is down every gateway stores one
alarm. For each configuration, the reconnect settings of today's defaults and of the
old ones (1 s / 60 s, before issue 11), and for each outage length it reports:

- back: from the broker listening again to each gateway connected (p50/p99/max; max is
  "the time until every gateway is back");
- first_record: from the broker back to that gateway's alarm at an independent
  subscriber (a persistent session on the same broker, reconnecting every 50 ms);
- peak_per_s: the most gateways that connected within any one second (the stampede).

Broker limits for 1,000 clients: the bench raises its own RLIMIT_NOFILE soft limit to
the hard limit (mosquitto inherits it; it needs one descriptor per client) and sets
`max_connections -1` (no cap) explicitly; mosquitto 2.0 listens with a backlog of
100 (`ss -ltn` shows it), under the kernel's somaxconn, which is printed.

    python bench/bench_fleet.py [--smoke] [--gateways N] [--per-worker N] [--outages 0,20]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import UPLINK, UplinkConfig
from bench.common import figure, machine, percentile
from core.events import Category, Event, Identity, Kind, Severity
from simulator.broker import Mosquitto

PREFIX = "fleet"
OLD_DEFAULTS = (1.0, 60.0)  # reconnect_min_s, reconnect_max_s before issue 11
GOAL_S = 10.0
WAIT_BACK_S = 150.0  # how long a trial waits for every gateway and every alarm


class FleetBroker(Mosquitto):
    """The fleet's broker: sessions and queued messages survive its restart (so the
    subscriber misses nothing), no connection cap."""

    def _write_conf(self) -> None:
        super()._write_conf()
        conf = self.conf_path.read_text().replace("persistence false\n", "")
        conf += (
            f"persistence true\npersistence_location {self.workdir}/\nuser root\n"
            "max_connections -1\n"
        )
        self.conf_path.write_text(conf)


# --- a worker process: many gateways -------------------------------------------------------


def _worker(port: int, first: int, count: int, min_s: float, max_s: float, d: Path) -> int:
    """Run gateways first..first+count-1 until stdin says quit. Prints one line per fact:
    `up I MONO`, `down I MONO`, `stored I`, `ready`."""
    from agent.buffer import EventBuffer
    from agent.uplink import Uplink

    logging.basicConfig(level=logging.ERROR)  # a refused attempt per gateway is no news here
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def on_state(i: int) -> Any:
        return lambda up: say(f"{'up' if up else 'down'} {i} {time.monotonic():.6f}")

    fleet: list[tuple[EventBuffer, Uplink]] = []
    for i in range(first, first + count):
        ident = Identity("fleet", f"gw{i:04d}")
        settings = UplinkConfig(
            host="127.0.0.1",
            port=port,
            ca_file=None,
            cert_file=None,
            key_file=None,
            credentials_file=None,
            topic_prefix=PREFIX,
            mqtt_version=UPLINK["mqtt_version"].default,
            keepalive_s=UPLINK["keepalive_s"].default,
            heartbeat_s=float(UPLINK["heartbeat_s"].default),
            inflight_window=UPLINK["inflight_window"].default,
            reconnect_min_s=min_s,
            reconnect_max_s=max_s,
            client_id=f"fleet-gw{i:04d}",
        )
        buffer = EventBuffer(d / f"gw{i:04d}.db", ident, 1000).start()
        uplink = Uplink(settings, ident, buffer, version="fleet", config_digest="fleet")
        uplink.on_state = on_state(i)
        buffer.on_stored = uplink.wake  # as agent/runtime.py wires them
        fleet.append((buffer, uplink.start()))
        time.sleep(0.02)  # pacing the first connects: the set-up is not what is measured
    say("ready")
    for line in sys.stdin:
        if line.strip() == "raise":
            for n, (buffer, _) in enumerate(fleet):
                event = Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", "fap")
                seq = buffer.submit(event).result(30).seq
                say(f"stored {first + n} {seq}")
        elif line.strip() == "quit":
            break
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda pair: pair[1].stop(), fleet))
        list(pool.map(lambda pair: pair[0].close(), fleet))
    return 0


# --- the bench: broker, subscriber, workers ----------------------------------------------------


@dataclass
class Facts:
    """What the workers and the subscriber reported, with a condition to wait on."""

    up: dict[int, list[float]] = field(default_factory=dict)
    down: dict[int, list[float]] = field(default_factory=dict)
    stored: dict[int, int] = field(default_factory=dict)  # gateway -> seq of this trial's alarm
    ready: int = 0
    arrived: dict[tuple[int, int], float] = field(default_factory=dict)  # first receipt
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True


class Observer:
    """The independent subscriber: every alarm of the fleet, stamped on receipt."""

    def __init__(self, broker: Mosquitto, facts: Facts) -> None:
        self.facts = facts
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fleet-observer", clean_session=False
        )
        self.client.reconnect_delay_set(0.05, 0.05)  # type: ignore[arg-type]
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/v1/fleet/+/event", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("observer: no SUBACK")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        key = (int(msg.topic.split("/")[3][2:]), int(json.loads(msg.payload)["seq"]))
        with self.facts.changed:
            self.facts.arrived.setdefault(key, now)
            self.facts.changed.notify_all()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _read_worker(proc: subprocess.Popen[str], facts: Facts) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        word, *rest = line.split()
        with facts.changed:
            if word == "ready":
                facts.ready += 1
            elif word == "stored":
                facts.stored[int(rest[0])] = int(rest[1])
            elif word in ("up", "down"):
                getattr(facts, word).setdefault(int(rest[0]), []).append(float(rest[1]))
            facts.changed.notify_all()


@contextlib.contextmanager
def fleet(
    broker: Mosquitto, gateways: int, per_worker: int, reconnect: tuple[float, float], d: Path
) -> Iterator[tuple[list[subprocess.Popen[str]], Facts]]:
    """Start the workers; yield them and their facts once every gateway is connected."""
    facts = Facts()
    procs: list[subprocess.Popen[str]] = []
    readers = []
    try:
        for first in range(0, gateways, per_worker):
            count = min(per_worker, gateways - first)
            args = [str(broker.port), str(first), str(count), *map(str, reconnect), str(d)]
            proc = subprocess.Popen(
                [sys.executable, __file__, "worker", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            reader = threading.Thread(target=_read_worker, args=(proc, facts), daemon=True)
            reader.start()
            readers.append(reader)
        if not facts.wait(lambda: facts.ready == len(procs) and len(facts.up) == gateways, 300):
            raise RuntimeError(f"only {len(facts.up)} of {gateways} gateways connected")
        yield procs, facts
    finally:
        for proc in procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in readers:
            reader.join(5)


def _tell(procs: list[subprocess.Popen[str]], line: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def peak_per_s(times: list[float]) -> int:
    """The most times within any one-second window."""
    ordered = sorted(times)
    windows = (bisect.bisect_right(ordered, t + 1.0) - i for i, t in enumerate(ordered))
    return max(windows, default=0)


def trial(
    broker: Mosquitto, procs: list[subprocess.Popen[str]], facts: Facts, n: int, outage_s: float
) -> dict[str, Any]:
    """Stop the broker, store an alarm per gateway, start it after `outage_s`; measure."""
    with facts.changed:
        ups = {i: len(facts.up.get(i, [])) for i in range(n)}
        downs = {i: len(facts.down.get(i, [])) for i in range(n)}
        facts.stored.clear()
    t_down = time.monotonic()
    broker.stop()
    if not facts.wait(lambda: all(len(facts.down.get(i, [])) > downs[i] for i in range(n)), 60):
        raise RuntimeError("not every gateway saw the broker go")
    _tell(procs, "raise")
    if not facts.wait(lambda: len(facts.stored) == n, 120):
        raise RuntimeError("not every gateway stored its alarm")
    time.sleep(max(0.0, t_down + outage_s - time.monotonic()))  # the outage itself
    t_back = time.monotonic()  # before mosquitto starts listening: never flatters
    broker.start()
    alarms = set(facts.stored.items())
    done = facts.wait(
        lambda: (
            alarms <= facts.arrived.keys()
            and all(len(facts.up.get(i, [])) > ups[i] for i in range(n))
        ),
        WAIT_BACK_S,
    )
    with facts.changed:
        back = [facts.up[i][ups[i]] - t_back for i in range(n) if len(facts.up[i]) > ups[i]]
        first_record = [facts.arrived[a] - t_back for a in alarms if a in facts.arrived]
    return {
        "outage_s": round(t_back - t_down, 1),
        "complete": done,
        "back": back,
        "first_record": first_record,
        "peak_per_s": peak_per_s(back),
    }


def _summary_s(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 2),
        "p99_s": round(percentile(values, 99), 2),
        "max_s": round(max(values), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="30 gateways, short outages")
    p.add_argument("--gateways", type=int, default=1000)
    p.add_argument("--per-worker", type=int, default=100)
    p.add_argument("--outages", default="0,20", help="outage lengths in seconds")
    args = p.parse_args(argv)
    n = 30 if args.smoke else args.gateways
    per_worker = 15 if args.smoke else args.per_worker
    outages = [0.0, 1.0] if args.smoke else [float(x) for x in args.outages.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    print(f"machine: {machine()}", flush=True)
    print(f"broker: RLIMIT_NOFILE {soft} -> {hard}, max_connections -1, somaxconn {somaxconn}")
    configs = {
        "now": (UPLINK["reconnect_min_s"].default, UPLINK["reconnect_max_s"].default),
        "old": OLD_DEFAULTS,
    }
    results: dict[tuple[str, float], dict[str, Any]] = {}
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp, FleetBroker(Path(tmp) / "broker") as broker:
        for name, reconnect in configs.items():
            d = Path(tmp) / name
            d.mkdir()
            with fleet(broker, n, per_worker, reconnect, d) as (procs, facts):
                observer = Observer(broker, facts)
                try:
                    for outage in outages:
                        r = trial(broker, procs, facts, n, outage)
                        results[(name, outage)] = r
                        _report(f"fleet_{name}_{_tag(outage)}", reconnect, n, r)
                finally:
                    observer.close()
    _goal(results)
    return 0 if all(r["complete"] for r in results.values()) else 1


def _tag(outage_s: float) -> str:
    """A quick restart (stop, then start at once) or the outage asked for."""
    return "restart" if outage_s == 0 else f"{outage_s:g}s"


def _report(name: str, reconnect: tuple[float, float], n: int, r: dict[str, Any]) -> None:
    back, first = _summary_s(r["back"]), _summary_s(r["first_record"])
    figure(
        name,
        gateways=n,
        reconnect_min_s=reconnect[0],
        reconnect_max_s=reconnect[1],
        outage_s=r["outage_s"],
        back_p50_s=back.get("p50_s"),
        back_p99_s=back.get("p99_s"),
        all_back_s=back.get("max_s"),
        first_record_p50_s=first.get("p50_s"),
        first_record_p99_s=first.get("p99_s"),
        first_record_max_s=first.get("max_s"),
        delivered=first["n"],
        peak_per_s=r["peak_per_s"],
        complete=r["complete"],
    )


def _goal(results: dict[tuple[str, float], dict[str, Any]]) -> None:
    """p99 of the first record against 10 s; the worst stampede now against the old one's."""
    now = [r for (name, _), r in results.items() if name == "now"]
    old = [r for (name, _), r in results.items() if name == "old"]
    first = [s for r in now for s in r["first_record"]]
    p99 = percentile(first, 99) if first else float("nan")
    peak_now = max(r["peak_per_s"] for r in now)
    peak_old = max(r["peak_per_s"] for r in old)
    figure(
        "fleet_goal",
        first_record_p99_s=round(p99, 2),
        goal_s=GOAL_S,
        met=p99 <= GOAL_S,
        all_back_now_s=round(max(max(r["back"], default=0) for r in now), 2),
        all_back_old_s=round(max(max(r["back"], default=0) for r in old), 2),
        peak_now_per_s=peak_now,
        peak_old_per_s=peak_old,
        peak_ratio=round(peak_now / peak_old, 2) if peak_old else float("nan"),
        peak_no_higher=peak_now <= peak_old,
    )


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "worker":
        port, first, count = (int(x) for x in sys.argv[2:5])
        min_s, max_s = float(sys.argv[5]), float(sys.argv[6])
        sys.exit(_worker(port, first, count, min_s, max_s, Path(sys.argv[7])))
    sys.exit(main())
