"""Field-side faults, with default settings: stimulus -> event at an independent subscriber.

Each scenario builds its own world in this process (RS-485 lines on pseudo-terminals,
Modbus TCP devices and gateways on loopback ports, all from simulator/), runs the real
agent (`alarmgw run`, a config with nothing but the required keys: every timing is the
default a technician gets) against a private mosquitto, and times, on one monotonic
clock, the stimulus and the arrival of the event at a subscriber of its own:

  panel_back          the fire panel silent for 70-75 s, then back with a fire: the alarm
  rs485_lost          the RS-485 adapter unplugged (pty pair removed): every device's
                      comm_loss; plugged back: every device's comm_restore
  rs485_cut           the RS-485 cable cut (the adapter stays, every device falls silent):
                      every device's comm_loss; reconnected: every comm_restore
  tcp_gone            a Modbus TCP endpoint closed: comm_loss; back: comm_restore
  tcp_blackhole       a Modbus TCP gateway with 10 devices behind it starts black-holing
                      connects (a listener that never accepts): all 10 comm_loss; and back
  parallel_reads      six control-socket clients read a silent detector in a loop: a fire
                      on the panel of the same line
  read_flood          `read` commands at 1,000/s over MQTT for that silent detector: a fire
                      on the panel during the flood, and right after it

Goal: every event within 10 s (GB 26875.1's fire alarm to the centre). Each figure is
p50/p99/max over the trials (a line-wide loss counts its slowest device), `met` is
max <= goal. A missing event counts as the wait's timeout and `met=NO`.

Run through bench/bench_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
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

from agent.cli.client import AgentNotRunning, ControlClient, ControlError
from bench.common import BIN, GATEWAY, SITE, Feed, figure, summary_ms, toml_table
from drivers.profile import load_profile
from simulator.blackhole import BlackHole
from simulator.broker import Mosquitto, free_port
from simulator.devices import SimDevice
from simulator.procs import stop_process
from simulator.pty import PtyPair
from simulator.scenario import BUILTIN_PROFILES, DeviceSpec
from simulator.tcp import TcpDeviceServer
from simulator.wire import RtuLineServer, SerialSettings
from simulator.world import build_device

GOAL_S = 10.0
WAIT_S = 60.0  # how long a bench waits for an event before it counts it missing
TOPIC = f"alarmgw/v1/{SITE}/{GATEWAY}"
# the care home of config/example.toml: (id, unit, profile, initial values)
CARE_HOME: list[tuple[str, int, str, dict[str, float]]] = [
    ("fap", 1, "fire-panel-gst", {}),
    ("efd-1", 2, "electrical-fire-4ch", {"ch1_leak": 50, "ch2_leak": 30, "ch3_temp": 26.5}),
    ("efd-2", 3, "electrical-fire-4ch", {"ch1_leak": 80, "ch2_leak": 20, "ch3_temp": 24.0}),
    ("gas-1", 4, "gas-detector", {"concentration": 0.5}),
    ("ai-1", 5, "analog-4-20ma", {"ch1_pressure": 0.6, "ch2_level": 3.5}),
]


def sim_device(device_id: str, unit: int, profile: str, values: dict[str, float]) -> SimDevice:
    spec = DeviceSpec(device_id, unit, load_profile(BUILTIN_PROFILES / f"{profile}.toml"))
    spec.values.update(values)
    return build_device(spec)


# --- the world of one scenario -----------------------------------------------------------


class RtuBus:
    """An RS-485 line the bench can unplug and plug back: a pty pair at a fixed path, and
    the simulator's RTU slaves on its far end (at 9600 baud wire timing, as on site)."""

    def __init__(self, path: Path, devices: list[SimDevice]) -> None:
        self.path = path
        self.devices = {d.id: d for d in devices}
        self._pair: PtyPair | None = None
        self._server: RtuLineServer | None = None

    def plug(self) -> None:
        self._pair = PtyPair(link_a=self.path)
        units = {d.unit_id: d for d in self.devices.values()}
        settings = SerialSettings(9600)
        self._server = RtuLineServer("rs485-1", self._pair.b, units, settings, True).start()

    def unplug(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._pair is not None:
            self._pair.close()  # the agent's end hangs up; the path disappears
            self._pair = None


@dataclass
class Line:
    """One [[lines]] entry of the agent's config and its [[devices]]."""

    id: str
    keys: dict[str, Any]
    devices: list[tuple[str, int, str]]  # (id, unit, profile)


@dataclass
class World:
    """Broker, subscriber and agent around devices the scenario built; stop() ends all."""

    dir: Path
    broker: Mosquitto
    feed: Feed
    agent: subprocess.Popen[bytes]
    control: ControlClient
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def mark(self) -> int:
        return self.feed.count()

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], after: int, timeout: float = WAIT_S
    ) -> float | None:
        """Receipt time (monotonic) of the first matching event after index `after`."""
        deadline = time.monotonic() + timeout
        with self.feed.changed:
            while True:
                for got in self.feed.events[after:]:
                    if match(got.event):
                        return got.mono
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.feed.changed.wait(left)

    def wait_all(self, kind: str, devices: list[str], after: int) -> list[float | None]:
        """Receipt time of `kind` for each device (None where it never came)."""
        return [self.wait_event(_is(device, kind), after) for device in devices]

    def timed(self, stimulus: Callable[[], None], kind: str, devices: list[str]) -> float | None:
        """Apply `stimulus`; seconds until every device's `kind` event arrived (the slowest;
        None if one never did)."""
        mark = self.mark()
        start = time.monotonic()
        stimulus()
        times = self.wait_all(kind, devices, mark)
        return None if any(t is None for t in times) else max(t for t in times if t) - start

    def wait_devices_ok(self, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.agent.poll() is None:
            with contextlib.suppress(AgentNotRunning, ControlError):
                devices = self.control.call("devices")["devices"]
                if devices and all(d["comm"] == "ok" for d in devices):
                    return
            time.sleep(0.1)  # the agent's state, across a socket: nothing to await
        raise RuntimeError("devices not all ok\n" + self.agent_log()[-3000:])

    def agent_log(self) -> str:
        return (self.dir / "agent.log").read_text(errors="replace")


def _is(device: str, kind: str, point: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        wanted = (event["device"], event["kind"]) == (device, kind)
        return wanted and (point is None or event["point"] == point)

    return match


def _agent_config(d: Path, broker_port: int, lines: list[Line]) -> str:
    """Only the keys a config must have: every timing is the product's default."""
    text = toml_table("[identity]", {"site": SITE, "gateway": GATEWAY})
    text += toml_table("[uplink]", {"host": "127.0.0.1", "port": broker_port})
    text += toml_table("[buffer]", {"path": str(d / "buffer.db")})
    text += toml_table("[clock]", {"source": "assume-synced"})  # a rig: no NTP to wait for
    text += toml_table("[control]", {"socket": str(d / "agent.sock")})
    for line in lines:
        text += toml_table("[[lines]]", {"id": line.id, **line.keys})
        for dev_id, unit, profile in line.devices:
            text += toml_table(
                "[[devices]]", {"id": dev_id, "line": line.id, "unit_id": unit, "profile": profile}
            )
    return text


@contextlib.contextmanager
def world(d: Path, lines: list[Line]) -> Iterator[World]:
    """The agent on `lines` (their devices already served), a broker and a subscriber."""
    d.mkdir(parents=True, exist_ok=True)
    with Mosquitto(d / "broker") as broker:
        config = d / "agent.toml"
        config.write_text(_agent_config(d, broker.port, lines), encoding="utf-8")
        feed = Feed(broker.host, broker.port, client_id=f"faults-feed-{uuid.uuid4().hex[:6]}")
        with (d / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [str(BIN / "alarmgw"), "run", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        w = World(d, broker, feed, agent, ControlClient(d / "agent.sock", timeout_s=20))
        try:
            w.wait_devices_ok()
            yield w
        finally:
            stop_process(agent)
            feed.close()


def report(name: str, samples: list[float | None], **extra: Any) -> None:
    """p50/p99/max of the trials in ms; a missing event counts as WAIT_S."""
    missed = sum(1 for s in samples if s is None)
    seconds = [WAIT_S if s is None else s for s in samples]
    stats = summary_ms(seconds)
    met = bool(seconds) and max(seconds) <= GOAL_S
    figure(name, **stats, missed=missed, goal_ms=round(GOAL_S * 1000), met=met, **extra)


def _care_home_bus(d: Path) -> tuple[RtuBus, Line]:
    bus = RtuBus(d / "ttyUSB0", [sim_device(*spec) for spec in CARE_HOME])
    line = Line(
        "rs485-1",
        {"type": "rtu", "port": str(bus.path), "baudrate": 9600},
        [(dev_id, unit, profile) for dev_id, unit, profile, _ in CARE_HOME],
    )
    return bus, line


def _fire_trial(
    w: World, panel: SimDevice, before: Callable[[], None] | None = None
) -> float | None:
    """Fire on the panel (after `before`, the stimulus's last step); seconds to the alarm.
    The panel is back to normal, and its restore seen, before it returns."""
    mark = w.mark()
    panel.set_state("point3", "fire")
    start = time.monotonic()
    if before is not None:
        before()
    got = w.wait_event(_is("fap", "alarm", "point3"), mark)
    mark = w.mark()
    panel.set_state("point3", "normal")
    w.wait_event(_is("fap", "restore", "point3"), mark)
    return None if got is None else got - start


# --- scenarios ---------------------------------------------------------------------------


def panel_back(d: Path, smoke: bool, trials: int | None = None) -> None:
    """The panel silent for 70 s (its probe backoff at its cap), then back with a fire."""
    silent_s = 5.0 if smoke else 70.0
    phase = random.Random(7)  # where in the probe period the panel answers again (seeded)
    bus, line = _care_home_bus(d)
    bus.plug()
    try:
        with world(d, [line]) as w:
            panel = bus.devices["fap"]
            samples = []
            for _ in range(trials or (1 if smoke else 3)):
                mark = w.mark()
                silenced = time.monotonic()
                panel.silence()
                w.wait_event(_is("fap", "comm_loss"), mark)
                back_at = silenced + silent_s + phase.uniform(0.0, 5.0)
                time.sleep(max(0.0, back_at - time.monotonic()))  # the silence itself
                samples.append(_fire_trial(w, panel, before=panel.revive))
                w.wait_devices_ok()
    finally:
        bus.unplug()
    report("faults_panel_back", samples, silent_s=silent_s)


def _down_and_up(
    w: World, down: Callable[[], None], up: Callable[[], None], ids: list[str], trials: int
) -> tuple[list[float | None], list[float | None]]:
    """Take the link down and back `trials` times: every device's loss, then restore."""
    lost, back = [], []
    for _ in range(trials):
        lost.append(w.timed(down, "comm_loss", ids))
        back.append(w.timed(up, "comm_restore", ids))
        w.wait_devices_ok()
    return lost, back


def rs485_lost(d: Path, smoke: bool, trials: int | None = None) -> None:
    """The USB adapter unplugged (pty pair removed) and plugged back, five devices on it."""
    bus, line = _care_home_bus(d)
    ids = list(bus.devices)
    bus.plug()
    try:
        with world(d, [line]) as w:
            lost, back = _down_and_up(w, bus.unplug, bus.plug, ids, trials or (1 if smoke else 5))
    finally:
        bus.unplug()
    report("faults_rs485_lost", lost, devices=len(ids))
    report("faults_rs485_restored", back, devices=len(ids))


def _cut_and_mend(
    d: Path, bus: RtuBus, line: Line, trials: int
) -> tuple[list[float | None], list[float | None], str]:
    """Every device of the bus silent at once (the cable cut behind the adapter), then all
    answering again, `trials` times: (loss times, restore times, the comm_loss reasons)."""
    ids = list(bus.devices)

    def cut() -> None:
        for device in bus.devices.values():
            device.silence()

    def mend() -> None:
        for device in bus.devices.values():
            device.revive()

    bus.plug()
    try:
        with world(d, [line]) as w:
            lost, back = _down_and_up(w, cut, mend, ids, trials)
            said = _reasons(w, "comm_loss", ids)
    finally:
        bus.unplug()
    return lost, back, said


def rs485_cut(d: Path, smoke: bool, trials: int | None = None) -> None:
    """The cable cut behind the adapter: every device on the line silent at once."""
    bus, line = _care_home_bus(d)
    ids = list(bus.devices)
    lost, back, _ = _cut_and_mend(d, bus, line, trials or (1 if smoke else 3))
    report("faults_rs485_cut", lost, devices=len(ids))
    report("faults_rs485_mended", back, devices=len(ids))


def rs485_cut_many(d: Path, smoke: bool, trials: int | None = None) -> None:
    """The cable cut on a line of 24 detectors: does finding the silent bus take longer
    with more devices on it?"""
    devices = [
        sim_device(f"efd-{u}", u, "electrical-fire-4ch", {"ch1_leak": 50}) for u in range(1, 25)
    ]
    bus = RtuBus(d / "ttyUSB0", devices)
    line = Line(
        "rs485-1",
        {"type": "rtu", "port": str(bus.path), "baudrate": 9600},
        [(dev.id, dev.unit_id, _profile_id(dev)) for dev in devices],
    )
    ids = list(bus.devices)
    lost, back, said = _cut_and_mend(d, bus, line, trials or (1 if smoke else 3))
    report("faults_rs485_cut_many", lost, devices=len(ids), reasons=said)
    report("faults_rs485_cut_many_mended", back, devices=len(ids))


def _reasons(w: World, kind: str, ids: list[str]) -> str:
    """The distinct detail.reason of the `kind` events of these devices, as a figure."""
    seen = {
        str((r.event.get("detail") or {}).get("reason"))
        for r in w.feed.snapshot()
        if r.event.get("kind") == kind and r.event.get("device") in ids
    }
    return "+".join(sorted(seen))


class TcpEndpoint:
    """A Modbus TCP device or gateway that goes away (closing its connections) and comes
    back on the same port; gone, its port refuses connects, or black-holes them."""

    def __init__(self, units: dict[int, SimDevice], *, black_hole: bool) -> None:
        self.port = free_port()
        self.units = units
        self.black_hole = black_hole
        self._server: TcpDeviceServer | None = None
        self._hole: BlackHole | None = None

    def up(self) -> None:
        if self._hole is not None:
            self._hole.close()
            self._hole = None
        first, *behind = sorted(self.units)
        serve = {u: self.units[u] for u in behind}
        self._server = TcpDeviceServer("tcp", self.units[first], first, self.port, behind=serve)
        self._server.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.black_hole:
            self._hole = BlackHole(self.port).start()

    def close(self) -> None:
        self.black_hole = False
        self.down()


def _profile_id(device: SimDevice) -> str:
    assert device.profile is not None  # built from a profile by sim_device()
    return device.profile.id


def _tcp_flap(d: Path, name: str, units: dict[int, SimDevice], trials: int, *, hole: bool) -> None:
    endpoint = TcpEndpoint(units, black_hole=hole)
    ids = [dev.id for dev in units.values()]
    keys = {"type": "tcp", "host": "127.0.0.1", "port": endpoint.port}
    line = Line("tcp-1", keys, [(dev.id, u, _profile_id(dev)) for u, dev in units.items()])
    endpoint.up()
    try:
        with world(d, [line]) as w:
            lost, back = _down_and_up(w, endpoint.down, endpoint.up, ids, trials)
    finally:
        endpoint.close()
    report(f"faults_{name}", lost, devices=len(ids))
    report(f"faults_{name}_back", back, devices=len(ids))


def tcp_gone(d: Path, smoke: bool, trials: int | None = None) -> None:
    """A Modbus TCP device's endpoint closes (connection reset, port refused), then returns."""
    module = sim_device("ai-tcp", 1, "analog-4-20ma", {"ch1_pressure": 0.6, "ch2_level": 3.5})
    _tcp_flap(d, "tcp_gone", {1: module}, trials or (1 if smoke else 5), hole=False)


def tcp_blackhole(d: Path, smoke: bool, trials: int | None = None) -> None:
    """A TCP gateway with 10 devices stops: its connection drops and its port black-holes."""
    units = {
        u: sim_device(f"efd-{u}", u, "electrical-fire-4ch", {"ch1_leak": 50}) for u in range(1, 11)
    }
    _tcp_flap(d, "tcp_blackhole", units, trials or (1 if smoke else 3), hole=True)


def tcp_serial_silent(d: Path, smoke: bool, trials: int | None = None) -> None:
    """A Modbus TCP gateway with 10 devices behind it whose RS-485 side falls silent: TCP
    still connects, every request times out. How soon, and as what, is it reported?"""
    units = {
        u: sim_device(f"efd-{u}", u, "electrical-fire-4ch", {"ch1_leak": 50}) for u in range(1, 11)
    }
    endpoint = TcpEndpoint(units, black_hole=False)
    ids = [dev.id for dev in units.values()]
    keys = {"type": "tcp", "host": "127.0.0.1", "port": endpoint.port}
    line = Line("tcp-1", keys, [(dev.id, u, _profile_id(dev)) for u, dev in units.items()])

    def silent() -> None:
        for device in units.values():
            device.silence()

    def back() -> None:
        for device in units.values():
            device.revive()

    endpoint.up()
    try:
        with world(d, [line]) as w:
            lost, mended = _down_and_up(w, silent, back, ids, trials or (1 if smoke else 3))
            said = _reasons(w, "comm_loss", ids)
    finally:
        endpoint.close()
    report("faults_tcp_serial_silent", lost, devices=len(ids), reasons=said)
    report("faults_tcp_serial_silent_back", mended, devices=len(ids))


def _silence_detector(w: World, bus: RtuBus) -> None:
    mark = w.mark()
    bus.devices["efd-2"].silence()
    if w.wait_event(_is("efd-2", "comm_loss"), mark) is None:
        raise RuntimeError("the silenced detector was never reported lost")


def parallel_reads(d: Path, smoke: bool, trials: int | None = None) -> None:
    """Six `alarmgw read` clients on a silent detector; fires on the panel meanwhile."""
    bus, line = _care_home_bus(d)
    bus.plug()
    answers: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def reader(client: ControlClient) -> None:
        while not stop.is_set():
            try:
                client.call("read", device="efd-2")
                code = "ok"
            except ControlError as exc:
                code = exc.code
            with lock:
                answers[code] = answers.get(code, 0) + 1
            if code == "busy":
                stop.wait(0.1)  # a technician running `alarmgw read` again

    samples: list[float | None] = []
    try:
        with world(d, [line]) as w:
            _silence_detector(w, bus)
            threads = [
                threading.Thread(target=reader, args=(ControlClient(d / "agent.sock", 20),))
                for _ in range(6)
            ]
            for t in threads:
                t.start()
            try:
                stop.wait(1.0 if smoke else 3.0)  # the readers fill the line's queue first
                n = trials or (1 if smoke else 5)
                samples = [_fire_trial(w, bus.devices["fap"]) for _ in range(n)]
            finally:
                stop.set()
                for t in threads:
                    t.join()
    finally:
        bus.unplug()
    report(
        "faults_parallel_reads",
        samples,
        readers=6,
        **{f"answers_{k}": v for k, v in answers.items()},
    )


class Flooder:
    """The platform gone wrong: `read` commands at a fixed rate, QoS 1, until stopped."""

    def __init__(self, broker: Mosquitto, device: str, rate_per_s: float) -> None:
        self.device = device
        self.rate = rate_per_s
        self.sent = 0
        self.results: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="faults-flooder")
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_result
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._client.subscribe(f"{TOPIC}/cmd-result", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("flooder: no SUBACK")
        self._thread = threading.Thread(target=self._flood, name="flooder")

    def _on_result(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        code = "ok" if payload.get("ok") else str(payload.get("error", {}).get("code"))
        with self._lock:
            self.results[code] = self.results.get(code, 0) + 1

    def _flood(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            body = {"id": f"flood-{self.sent}", "args": {"device": self.device}}
            self._client.publish(f"{TOPIC}/cmd/read", json.dumps(body), qos=1)
            self.sent += 1
            ahead = start + self.sent / self.rate - time.monotonic()
            if ahead > 0:
                self._stop.wait(ahead)  # the flood's pace

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def read_flood(d: Path, smoke: bool, trials: int | None = None) -> None:
    """`read` at 1,000/s over MQTT for the silent detector; fires during and right after."""
    bus, line = _care_home_bus(d)
    bus.plug()
    during: list[float | None] = []
    after: list[float | None] = []
    try:
        with world(d, [line]) as w:
            _silence_detector(w, bus)
            flooder = Flooder(w.broker, "efd-2", 1000.0)
            try:
                flooder.start()
                try:
                    time.sleep(1.0 if smoke else 2.0)  # the flood is on before the first fire
                    n = trials or (1 if smoke else 5)
                    during = [_fire_trial(w, bus.devices["fap"]) for _ in range(n)]
                finally:
                    flooder.stop()
                # the line is not left starved after it
                after = [_fire_trial(w, bus.devices["fap"]) for _ in range(1 if smoke else 3)]
            finally:
                flooder.close()
    finally:
        bus.unplug()
    results = {f"results_{k}": v for k, v in flooder.results.items()}
    report("faults_read_flood", during, rate_per_s=1000, sent=flooder.sent, **results)
    report("faults_read_flood_after", after)


SCENARIOS: dict[str, Callable[..., None]] = {
    "panel_back": panel_back,
    "rs485_lost": rs485_lost,
    "rs485_cut": rs485_cut,
    "rs485_cut_many": rs485_cut_many,
    "tcp_gone": tcp_gone,
    "tcp_blackhole": tcp_blackhole,
    "tcp_serial_silent": tcp_serial_silent,
    "parallel_reads": parallel_reads,
    "read_flood": read_flood,
}
