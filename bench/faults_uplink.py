"""Uplink faults with the product's default settings: the fire alarm's way to the platform.

The whole product runs as in the field: `alarmgw-sim run` (a GST-style fire panel on a
simulated RS-485 line, polled at the default 1 s), `alarmgw run` with only the broker's
address in [uplink] (every reconnect and delivery setting at its default), a real
mosquitto that keeps sessions across a restart, and an independent subscriber with a
persistent session (it reconnects every 50 ms, so it misses nothing and adds little).
A fire is a panel point set to fire in the simulator; its time is the simulator's log.

Scenarios (each a function in SCENARIOS; `--only NAME` runs one):

- broker_outage: the broker stops; a fire breaks out during the outage (20 s); the
  broker starts again. Figure: broker back -> the fire at the subscriber.
- broker_stops_acking: the broker keeps the connection and answers pings but stops
  acknowledging (and delivering) what the gateway publishes (simulator.mqtt_proxy
  swallows its PUBLISH packets) for 20 s; a fire breaks out at the start. Figures: the
  fire -> `alarmgw status` naming the cause (the control socket, polled every 0.1 s);
  the broker acknowledging again -> the fire at the subscriber.
- command_flood: the platform sends test-alarm commands at 1,000/s for 20 s; fires break
  out meanwhile. Figures: fire -> subscriber while flooded, against the same without a
  flood in the same run; how many test events the flood made.

Goal for each latency: p99 within 10 s (GB 26875.1). Several trials each; figures
p50/p99/max. A missed goal is a figure (met=NO), never an exit status.

Run through bench/bench_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import (
    BIN,
    GATEWAY,
    ROOT,
    SITE,
    Control,
    Setup,
    SimLine,
    figure,
    percentile,
)
from simulator.broker import Mosquitto
from simulator.mqtt_proxy import MqttProxy
from simulator.procs import stop_process

GOAL_S = 10.0
FEED_ROOT = f"alarmgw/v1/{SITE}/{GATEWAY}"


class KeepingMosquitto(Mosquitto):
    """Keeps sessions and queued messages across a restart (SIGTERM saves them), as a
    production broker does: the subscriber's session survives the outage."""

    def _write_conf(self) -> None:
        super()._write_conf()
        conf = self.conf_path.read_text().replace("persistence false\n", "")
        conf += f"persistence true\npersistence_location {self.workdir}/\nuser root\n"
        self.conf_path.write_text(conf)


@dataclass
class Got:
    mono: float
    payload: dict[str, Any]


@dataclass
class Observer:
    """The platform's subscriber: events (stamped on receipt) and command results."""

    broker: Mosquitto
    events: list[Got] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"faults-platform-{uuid.uuid4().hex[:6]}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.05, 0.05)  # type: ignore[arg-type]
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(f"{FEED_ROOT}/event", 1), (f"{FEED_ROOT}/cmd-result", 1)]
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("subscriber: no SUBACK")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        payload = json.loads(msg.payload)
        with self.changed:
            if msg.topic.endswith("/event"):
                self.events.append(Got(now, payload))
            else:
                self.results.append(payload)
            self.changed.notify_all()

    def last_seq(self) -> int:
        with self.changed:
            return max((int(g.payload["seq"]) for g in self.events), default=0)

    def wait_event(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> Got:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((g for g in self.events if match(g.payload)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("an expected event never arrived")
                self.changed.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class FaultRig:
    dir: Path
    broker: Mosquitto
    observer: Observer
    sim: Control
    agent: subprocess.Popen[bytes]
    proxy: MqttProxy | None
    fires: int = 0  # fire/normal cycles played so far

    def agent_status(self) -> dict[str, Any]:
        from agent.cli.client import ControlClient

        result: dict[str, Any] = ControlClient(self.dir / "agent.sock", timeout_s=5).call("status")
        return result

    def fire(self) -> Fire:
        """A fire on the next panel point."""
        self.fires += 1
        point = f"point{(self.fires - 1) % 15 + 1}"
        return Fire(point, *self._set(point, "fire"))

    def _set(self, point: str, state: str) -> tuple[float, int]:
        """Set a panel point's state; (stimulus mono, the last event seq seen before it)."""
        seen = self.observer.last_seq()
        req = {"do": "state", "device": "fap", "point": point, "state": state}
        return float(self.sim.call(req)["logged"]["mono"]), seen

    def wait_alarm(self, fire: Fire, timeout: float = 120) -> Got:
        return self._wait(fire.point, "alarm", fire.seen, timeout)

    def calm(self, fire: Fire) -> None:
        """Put the point back to normal and wait for its restore: the next trial starts clean."""
        _, seen = self._set(fire.point, "normal")
        self._wait(fire.point, "restore", seen, 120)

    def _wait(self, point: str, kind: str, seen: int, timeout: float) -> Got:
        return self.observer.wait_event(
            lambda e: e.get("point") == point and e.get("kind") == kind and e["seq"] > seen,
            timeout,
        )


@dataclass(frozen=True)
class Fire:
    point: str
    mono: float  # the simulator's time of the change
    seen: int  # the highest event seq the subscriber had then: the alarm comes after it


@contextlib.contextmanager
def fault_rig(d: Path, *, proxy: bool = False) -> Iterator[FaultRig]:
    """Broker (keeping sessions), subscriber, simulator and agent, all real."""
    d.mkdir(parents=True, exist_ok=True)
    setup = Setup(lines=[SimLine("rs485-1", [("fap", 1, "fire-panel-gst")])])
    (d / "scenario.toml").write_text(setup.scenario(d, {}), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with KeepingMosquitto(d / "broker") as broker, contextlib.ExitStack() as stack:
        front = stack.enter_context(MqttProxy(broker.host, broker.port)) if proxy else None
        port = front.port if front is not None else broker.port
        (d / "agent.toml").write_text(setup.agent(d, {}, port), encoding="utf-8")
        observer = Observer(broker)
        stack.callback(observer.close)
        with (d / "sim.log").open("wb") as log:
            sim = subprocess.Popen(
                [str(BIN / "alarmgw-sim"), "run", str(d / "scenario.toml")],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        stack.callback(stop_process, sim)
        assert sim.stdout is not None
        if not any(line.strip() == b"ready" for line in sim.stdout):
            raise RuntimeError("simulator did not start:\n" + (d / "sim.log").read_text())
        control = Control(d / "control.sock")
        stack.callback(control.close)
        with (d / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [str(BIN / "alarmgw"), "run", str(d / "agent.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        stack.callback(stop_process, agent)
        rig = FaultRig(d, broker, observer, control, agent, front)
        # a first fire proves the agent polls, is connected and delivers; not counted
        fire = rig.fire()
        try:
            rig.wait_alarm(fire, timeout=60)
        except RuntimeError:
            raise RuntimeError("warm-up fire never arrived:\n" + _tail(d / "agent.log")) from None
        rig.calm(fire)
        yield rig


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 2),
        "p99_s": round(percentile(values, 99), 2),
        "max_s": round(max(values), 2),
    }


def _goal_figure(name: str, values: list[float], **extra: Any) -> None:
    s = _summary(values)
    figure(name, **s, **extra, goal_s=GOAL_S, met=s["p99_s"] <= GOAL_S)


# --- the scenarios ---------------------------------------------------------------------------


def broker_outage(*, smoke: bool = False, trials: int = 5) -> None:
    """Broker back after an outage with a fire during it: back -> fire at the subscriber."""
    outage_s = 3.0 if smoke else 20.0
    latencies = []
    with tempfile.TemporaryDirectory() as tmp, fault_rig(Path(tmp)) as rig:
        for _ in range(1 if smoke else trials):
            t_down = time.monotonic()
            rig.broker.stop()
            time.sleep(1.0)  # the fire breaks out a moment into the outage
            fire = rig.fire()
            time.sleep(max(0.0, t_down + outage_s - time.monotonic()))  # the outage itself
            t_back = time.monotonic()  # before mosquitto listens: never flatters
            rig.broker.start()
            latencies.append(rig.wait_alarm(fire).mono - t_back)
            rig.calm(fire)
    _goal_figure("uplink_broker_outage", latencies, outage_s=outage_s, measured="back_to_fire")


def broker_stops_acking(*, smoke: bool = False, trials: int = 5) -> None:
    """A broker that stops acknowledging for a while, a fire at the start of it."""
    from agent.cli.render import problems

    mute_s = 8.0 if smoke else 20.0
    noticed, after = [], []
    said_exit_1 = 0
    with tempfile.TemporaryDirectory() as tmp, fault_rig(Path(tmp), proxy=True) as rig:
        assert rig.proxy is not None
        for _ in range(1 if smoke else trials):
            t_mute = time.monotonic()
            rig.proxy.mute()
            fire = rig.fire()
            while True:
                status = rig.agent_status()
                if "no PUBACK" in (status["uplink"].get("last_error") or ""):
                    noticed.append(time.monotonic() - fire.mono)
                    said_exit_1 += bool(problems(status))
                    break
                if time.monotonic() - fire.mono > 120:
                    raise RuntimeError("the agent never noticed:\n" + _tail(rig.dir / "agent.log"))
                time.sleep(0.1)  # polling the agent's state: there is no event to await
            time.sleep(max(0.0, t_mute + mute_s - time.monotonic()))
            t_unmute = time.monotonic()
            rig.proxy.unmute()
            after.append(rig.wait_alarm(fire).mono - t_unmute)
            rig.calm(fire)
    _goal_figure("uplink_no_puback_noticed", noticed, measured="fire_to_status_says_why")
    figure("uplink_no_puback_status", trials=len(noticed), exit_1=said_exit_1)
    _goal_figure("uplink_no_puback_recovered", after, mute_s=mute_s, measured="acks_back_to_fire")


class Flood:
    """Test-alarm commands at `rate`/s from a platform client, on its own thread."""

    def __init__(self, broker: Mosquitto, rate: int) -> None:
        self.rate = rate
        self.sent = 0
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="faults-flooder")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="flood")

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.disconnect()
        self.client.loop_stop()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                body = json.dumps({"id": f"flood-{self.sent}", "args": {"note": "flood"}})
                self.client.publish(f"{FEED_ROOT}/cmd/test-alarm", body, qos=1)
                self.sent += 1
            self._stop.wait(0.01)  # pacing the flood in 10 ms slices


def _fires(rig: FaultRig, count: int, rng: random.Random) -> list[float]:
    """`count` fires, each at a random phase of the 1 s poll (as bench_latency_modbus)."""
    out = []
    for _ in range(count):
        time.sleep(rng.uniform(0.0, 1.0))  # the phase is the stimulus, not a wait for it
        fire = rig.fire()
        out.append(rig.wait_alarm(fire).mono - fire.mono)
        rig.calm(fire)
    return out


def command_flood(*, smoke: bool = False, trials: int = 10) -> None:
    """Fire latency while the platform floods the gateway with test-alarm commands."""
    seconds, rate = (4.0, 1000) if smoke else (20.0, 1000)
    fires = 3 if smoke else trials
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, fault_rig(Path(tmp)) as rig:
        quiet = _fires(rig, fires, rng)
        with rig.observer.changed:
            results_before = len(rig.observer.results)
            tests_before = sum(e.payload.get("kind") == "test" for e in rig.observer.events)
        flooded: list[float] = []
        started = time.monotonic()
        with Flood(rig.broker, rate) as flood:
            while time.monotonic() - started < seconds or len(flooded) < fires:
                flooded += _fires(rig, 1, rng)
        time.sleep(2.0)  # late results of the flood (they have no end marker to await)
        with rig.observer.changed:
            results = rig.observer.results[results_before:]
            tests = sum(e.payload.get("kind") == "test" for e in rig.observer.events) - tests_before
    codes: dict[str, int] = {}
    for r in results:
        code = "ok" if r["ok"] else r["error"]["code"]
        codes[code] = codes.get(code, 0) + 1
    figure("uplink_flood_quiet_fire", **_summary(quiet))
    _goal_figure("uplink_flood_fire", flooded, flood_per_s=rate, flood_s=seconds)
    figure(
        "uplink_flood_commands",
        sent=flood.sent,
        results=len(results),
        test_events=tests,
        **{f"result_{k}": v for k, v in sorted(codes.items())},
    )


SCENARIOS: dict[str, Callable[..., None]] = {
    "broker_outage": broker_outage,
    "broker_stops_acking": broker_stops_acking,
    "command_flood": command_flood,
}
