"""Shared rig and statistics for the benchmarks: the real product, wired as in the field.

A `Rig` brings up a private mosquitto (simulator/broker.py), a subscriber that
stamps every event with its monotonic receipt time, the simulator (a real
process: `alarmgw-sim run`, or `python bench/common.py sim` when the bench
also needs the simulator's own log of every request it served) and the agent
(`alarmgw run`) as real processes. Scenario and agent config are written from
small dicts so each bench states its set-up in a few lines.

Figures are printed as one line per figure group, `FIGURE <name> k=v k=v ...`,
so bench/run_all.py and tests/test_bench_smoke.py can read them. A bench
prints figures and says whether a goal was met; it must never exit non-zero
because a figure is slow, only because the rig itself broke (lost events count
as broken: the product's promise is that nothing is lost).

CLOCK_MONOTONIC is system-wide on Linux, so the simulator's stimulus `mono`
and the subscriber's receipt `time.monotonic()` are on one clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from simulator.broker import Mosquitto, free_port  # noqa: E402
from simulator.procs import stop_process  # noqa: E402

BIN = Path(sys.executable).parent
BENCH_PROFILES = ROOT / "bench" / "profiles"
DOCS = ROOT / "docs" / "benchmarks.md"
SITE, GATEWAY = "bench-site", "gw1"


# --- statistics ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of a list of durations in seconds."""
    if not seconds:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def figure(name: str, **values: Any) -> str:
    """Print one figure line (`FIGURE name k=v ...`) and return it."""
    parts = [f"{k}={_fmt(v)}" for k, v in values.items()]
    line = f"FIGURE {name} " + " ".join(parts)
    print(line, flush=True)
    return line


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace(" ", "_")


def parse_figures(text: str) -> dict[str, dict[str, str]]:
    """The FIGURE lines of a bench's output: name -> {key: value}."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("FIGURE "):
            _, name, *pairs = line.split()
            out[name] = dict(p.split("=", 1) for p in pairs if "=" in p)
    return out


# --- machine details -------------------------------------------------------------------


def machine() -> str:
    """One line: CPU model, cores, RAM, kernel, Python, load average now."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    mem_mb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, {mem_mb} MB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, load {load}"
    )


# --- /proc of the agent ------------------------------------------------------------------


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- TOML writing (flat, enough for scenario and agent config) ---------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def toml_table(header: str, values: dict[str, Any]) -> str:
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
    return f"{header}\n{body}\n"


# --- set-up description --------------------------------------------------------------------


@dataclass
class SimLine:
    """An RS-485 line in the simulator and the agent: devices are (id, unit, profile)."""

    id: str
    devices: list[tuple[str, int, str]]
    baudrate: int = 9600
    wire_time: bool = False
    fast_poll_s: float = 1.0
    slow_poll_s: float = 5.0
    timeout_s: float = 0.5


@dataclass
class SimTcp:
    id: str
    profile: str
    fast_poll_s: float = 1.0
    slow_poll_s: float = 5.0


@dataclass
class SimInput:
    id: str
    pin: int
    debounce_ms: int
    kind: str = "alarm"
    category: str = "manual"
    severity: str = "critical"


@dataclass
class Setup:
    lines: list[SimLine] = field(default_factory=list)
    tcp: list[SimTcp] = field(default_factory=list)
    inputs: list[SimInput] = field(default_factory=list)
    max_events: int = 200_000
    extra_config: str = ""  # appended to the agent's config (a [gb26875] section, say)

    def scenario(self, d: Path, tcp_ports: dict[str, int]) -> str:
        text = toml_table(
            "[simulator]",
            {
                "name": "bench",
                "log": str(d / "stimuli.jsonl"),
                "control": str(d / "control.sock"),
                "gpio_socket": str(d / "gpio.sock"),
                "profile_dirs": [str(BENCH_PROFILES)],
            },
        )
        for line in self.lines:
            text += toml_table(
                "[[lines]]",
                {
                    "id": line.id,
                    "path": str(d / line.id),
                    "baudrate": line.baudrate,
                    "wire_time": line.wire_time,
                },
            )
            for dev_id, unit, profile in line.devices:
                text += toml_table(
                    "  [[lines.devices]]", {"id": dev_id, "unit_id": unit, "profile": profile}
                )
        for t in self.tcp:
            text += toml_table(
                "[[tcp_devices]]",
                {"id": t.id, "unit_id": 1, "profile": t.profile, "port": tcp_ports[t.id]},
            )
        for i in self.inputs:
            text += toml_table("[[inputs]]", {"id": i.id, "pin": i.pin, "active": "low"})
        return text

    def agent(self, d: Path, tcp_ports: dict[str, int], broker_port: int) -> str:
        text = toml_table("[identity]", {"site": SITE, "gateway": GATEWAY})
        text += toml_table(
            "[uplink]",
            {"host": "127.0.0.1", "port": broker_port, "heartbeat_s": 30, "inflight_window": 50},
        )
        text += toml_table(
            "[buffer]", {"path": str(d / "buffer.db"), "max_events": self.max_events}
        )
        text += toml_table("[clock]", {"source": "assume-synced"})
        text += toml_table("[profiles]", {"dirs": [str(BENCH_PROFILES)]})
        text += toml_table("[control]", {"socket": str(d / "agent.sock")})
        text += self.extra_config
        for line in self.lines:
            text += self._agent_line(d, line)
        for t in self.tcp:
            text += toml_table(
                "[[lines]]",
                {"id": f"tcp-{t.id}", "type": "tcp", "host": "127.0.0.1", "port": tcp_ports[t.id]},
            )
            text += toml_table(
                "[[devices]]",
                {
                    "id": t.id,
                    "line": f"tcp-{t.id}",
                    "unit_id": 1,
                    "profile": t.profile,
                    "fast_poll_s": t.fast_poll_s,
                    "slow_poll_s": t.slow_poll_s,
                },
            )
        for i in self.inputs:
            text += toml_table(
                "[[inputs]]",
                {
                    "id": i.id,
                    "pin": i.pin,
                    "pull": "up",
                    "active": "low",
                    "debounce_ms": i.debounce_ms,
                    "category": i.category,
                    "severity": i.severity,
                    "kind": i.kind,
                },
            )
        return text

    @staticmethod
    def _agent_line(d: Path, line: SimLine) -> str:
        text = toml_table(
            "[[lines]]",
            {
                "id": line.id,
                "type": "rtu",
                "port": str(d / line.id),
                "baudrate": line.baudrate,
                "timeout_s": line.timeout_s,
            },
        )
        for dev_id, unit, profile in line.devices:
            text += toml_table(
                "[[devices]]",
                {
                    "id": dev_id,
                    "line": line.id,
                    "unit_id": unit,
                    "profile": profile,
                    "fast_poll_s": line.fast_poll_s,
                    "slow_poll_s": max(line.slow_poll_s, line.fast_poll_s),
                },
            )
        return text


# --- the subscriber --------------------------------------------------------------------------


@dataclass
class Received:
    mono: float
    event: dict[str, Any]


class Feed:
    """Every event on the gateway's event topic, stamped on receipt; wait on a condition."""

    def __init__(self, host: str, port: int, client_id: str = "bench-feed") -> None:
        self.events: list[Received] = []
        self.changed = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe(f"alarmgw/v1/{SITE}/{GATEWAY}/event", qos=1)
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError("subscriber: no SUBACK within 10 s")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        event = json.loads(msg.payload)
        with self.changed:
            self.events.append(Received(now, event))
            self.changed.notify_all()

    def count(self) -> int:
        with self.changed:
            return len(self.events)

    def wait_count(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.events) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def wait_point(self, point: str, nth: int, timeout: float) -> Received | None:
        """The nth (1-based) event of `point`, waiting for it up to `timeout`."""
        return self._wait("point", point, nth, timeout)

    def wait_device(self, device: str, nth: int, timeout: float) -> Received | None:
        """The nth (1-based) event of `device` (a GPIO input is a device of its own)."""
        return self._wait("device", device, nth, timeout)

    def _wait(self, key: str, value: str, nth: int, timeout: float) -> Received | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [r for r in self.events if r.event.get(key) == value]
                if len(found) >= nth:
                    return found[nth - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def snapshot(self) -> list[Received]:
        with self.changed:
            return list(self.events)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def unique_by_seq(events: list[Received]) -> tuple[list[Received], int, list[int]]:
    """De-duplicate by seq; returns (unique in seq order, duplicates, missing seqs in range)."""
    by_seq: dict[int, Received] = {}
    for r in events:
        by_seq.setdefault(int(r.event["seq"]), r)
    dups = len(events) - len(by_seq)
    if not by_seq:
        return [], dups, []
    lo, hi = min(by_seq), max(by_seq)
    missing = [s for s in range(lo, hi + 1) if s not in by_seq]
    return [by_seq[s] for s in sorted(by_seq)], dups, missing


# --- baseline: bare paho on the same broker ----------------------------------------------------


def paho_latency(host: str, port: int, count: int, size: int = 300) -> list[float]:
    """Bare paho QoS 1 publish -> receive, one message at a time; seconds each."""
    got = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-base-sub")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-base-pub")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda *_: got.set()
    sub.connect(host, port)
    sub.loop_start()
    pub.connect(host, port)
    pub.loop_start()
    out: list[float] = []
    try:
        sub.subscribe("bench/baseline", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("baseline subscriber: no SUBACK")
        payload = b"x" * size
        for _ in range(count):
            got.clear()
            t0 = time.monotonic()
            pub.publish("bench/baseline", payload, qos=1)
            if not got.wait(5):
                raise RuntimeError("baseline: a QoS 1 message did not arrive within 5 s")
            out.append(time.monotonic() - t0)
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
    return out


# --- the simulator's control socket ----------------------------------------------------------


class Control:
    """One persistent connection to the simulator's control socket (JSON lines)."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._reader = self._sock.makefile("r", encoding="utf-8")

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._sock.sendall((json.dumps(request) + "\n").encode())
        reply: dict[str, Any] = json.loads(self._reader.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"simulator refused {request}: {reply.get('error')}")
        return reply

    def many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pipelined: send all, then read every reply (the server answers in order)."""
        data = "".join(json.dumps(r) + "\n" for r in requests).encode()
        sender = threading.Thread(target=self._sock.sendall, args=(data,))
        sender.start()  # a big batch would fill both socket buffers if we did not read meanwhile
        replies = [json.loads(self._reader.readline()) for _ in requests]
        sender.join()
        bad = [r for r in replies if not r.get("ok")]
        if bad:
            raise RuntimeError(f"simulator refused {len(bad)} requests: {bad[0].get('error')}")
        return replies

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


# --- the rig -----------------------------------------------------------------------------------


@dataclass
class Rig:
    """What a running rig offers a bench."""

    dir: Path
    broker: Mosquitto
    feed: Feed
    control: Control
    agent: subprocess.Popen[bytes]
    setup: Setup
    request_log: Path  # the simulator's requests (with `poll_log`), JSON lines

    def stimuli(self) -> list[dict[str, Any]]:
        lines = (self.dir / "stimuli.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(x) for x in lines if x.strip()]

    def agent_log(self) -> str:
        return (self.dir / "agent.log").read_text(errors="replace")


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == b"ready":
            return
    raise RuntimeError("simulator did not start:\n" + log.read_text(errors="replace")[-3000:])


@contextlib.contextmanager
def rig(d: Path, setup: Setup, *, poll_log: bool = False) -> Iterator[Rig]:
    """Broker, subscriber, simulator and agent, all real; everything stopped on exit."""
    d.mkdir(parents=True, exist_ok=True)
    tcp_ports = {t.id: free_port() for t in setup.tcp}
    scenario, agent_cfg = d / "scenario.toml", d / "agent.toml"
    scenario.write_text(setup.scenario(d, tcp_ports), encoding="utf-8")
    request_log = d / "requests.jsonl"
    env = dict(
        os.environ,
        GPIOZERO_PIN_FACTORY="alarmgw-sim",
        ALARMGW_SIM_GPIO=str(d / "gpio.sock"),
        PYTHONPATH=str(ROOT),
    )
    if poll_log:
        sim_cmd = [sys.executable, str(ROOT / "bench" / "common.py"), "sim"]
        sim_cmd += [str(scenario), str(request_log)]
    else:
        sim_cmd = [str(BIN / "alarmgw-sim"), "run", str(scenario)]
    with Mosquitto(d / "broker") as broker:
        agent_cfg.write_text(setup.agent(d, tcp_ports, broker.port), encoding="utf-8")
        feed = Feed(broker.host, broker.port)
        sim: subprocess.Popen[bytes] | None = None
        agent: subprocess.Popen[bytes] | None = None
        control: Control | None = None
        try:
            with (d / "sim.log").open("wb") as sim_log:
                sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, stderr=sim_log, env=env)
            _wait_ready(sim, d / "sim.log")
            control = Control(d / "control.sock")
            with (d / "agent.log").open("wb") as agent_log:
                agent = subprocess.Popen(
                    [str(BIN / "alarmgw"), "run", str(agent_cfg)],
                    stdout=agent_log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            yield Rig(d, broker, feed, control, agent, setup, request_log)
        finally:
            stop_process(agent)
            if control is not None:
                control.close()
            stop_process(sim)
            if sim is not None and sim.stdout is not None:
                sim.stdout.close()
            feed.close()


def wait_for(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate` until true or `timeout`; for state owned by another process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)  # the state lives in another process: there is no event to await
    return bool(predicate())


# --- `python bench/common.py sim SCENARIO REQUEST_LOG`: a simulator that logs every request ----


def _sim_main(scenario_path: str, request_log: str) -> int:
    """`alarmgw-sim run`, plus a JSON line per RTU request served: mono, line, unit, address."""
    from simulator.control import ControlServer
    from simulator.scenario import load_scenario
    from simulator.world import Simulator

    scenario = load_scenario(scenario_path)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rows: list[tuple[float, str, int, int]] = []  # appended by the line threads; list is atomic

    def hook(line_id: str) -> Any:
        def on_request(unit: int, frame: bytes) -> None:
            address = int.from_bytes(frame[2:4], "big") if len(frame) >= 4 else -1
            rows.append((time.monotonic(), line_id, unit, address))

        return on_request

    with Simulator(scenario) as sim:
        for line_id, server in sim.lines.items():
            server.on_request = hook(line_id)
        control = ControlServer(sim, scenario.control).start()
        try:
            print("ready", flush=True)
            stop.wait()
        finally:
            control.close()
    with Path(request_log).open("w", encoding="utf-8") as f:
        for mono, line_id, unit, address in rows:
            f.write(json.dumps({"mono": mono, "line": line_id, "unit": unit, "addr": address}))
            f.write("\n")
    return 0


def read_requests(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sim":
        sys.exit(_sim_main(sys.argv[2], sys.argv[3]))
    print("usage: python bench/common.py sim SCENARIO REQUEST_LOG", file=sys.stderr)
    sys.exit(2)
