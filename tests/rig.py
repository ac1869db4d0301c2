"""The whole product on the bench, as a reusable rig: broker + simulator + agent.

`running_rig()` starts, as real processes, `alarmgw-sim run` on the care-home
scenario (config/scenarios/care-home.toml) and `alarmgw run` on its agent
config (care-home-agent.toml), both rewritten to live under a temporary
directory, plus a subscriber that records the feed. GPIO crosses processes
through the simulator's gpiozero pin factory. The caller brings the broker
(a private `Mosquitto`), so a module can share one rig across its tests.

The rig must never leave a process, socket or thread behind: everything it
starts is stopped (SIGTERM, then SIGKILL) and joined when the context ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from simulator.broker import Mosquitto
from simulator.control import call as sim_call
from simulator.procs import stop_process

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "config" / "scenarios" / "care-home.toml"
AGENT_CONFIG = ROOT / "config" / "scenarios" / "care-home-agent.toml"
BIN = Path(sys.executable).parent


class RigError(RuntimeError):
    """The rig could not be brought up (the message carries the relevant log)."""


@dataclass
class Feed:
    """What a subscriber to `alarmgw/v1/#` received, with a condition to wait on."""

    events: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # cmd-result
    changed: threading.Condition = field(default_factory=threading.Condition)

    def keys(self) -> set[tuple[object, ...]]:
        with self.changed:
            return {
                (e["device"], e["point"], e["kind"], e["category"], e["severity"])
                for e in self.events
            }

    def wait_for(self, expected: set[tuple[object, ...]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not expected <= self.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def wait_event(self, match: Any, timeout: float) -> dict[str, Any] | None:
        """The first received event for which `match(event)` is true, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((e for e in self.events if match(e)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self.changed.wait(left)


@dataclass
class Rig:
    """A running rig: paths to talk to each part, and the feed seen on the broker."""

    tmp: Path
    broker: Mosquitto
    feed: Feed
    env: dict[str, str]
    scenario: Path
    agent_config: Path
    control_socket: Path  # the agent's control socket
    sim_control: Path  # the simulator's control socket
    line_path: Path  # the simulator's RS-485 pty (the agent's lines[0].port)
    sim: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes] | None = None

    def sim_do(self, **request: Any) -> dict[str, Any]:
        """Drive the simulator (trigger, set, press, silence...) as `alarmgw-sim` does."""
        reply = sim_call(self.sim_control, request)
        if not reply.get("ok"):
            raise RigError(f"simulator refused {request}: {reply.get('error')}")
        return reply

    def start_agent(self) -> None:
        """`alarmgw run` on the rig's config and broker (its stderr appends to agent.log)."""
        with (self.tmp / "agent.log").open("ab") as agent_log:
            self.agent = subprocess.Popen(
                [
                    str(BIN / "alarmgw"),
                    "run",
                    str(self.agent_config),
                    "--broker",
                    f"127.0.0.1:{self.broker.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=agent_log,
                env=self.env,
            )

    def stop_agent(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit status."""
        stop_process(self.agent)
        assert self.agent is not None
        return self.agent.returncode

    def agent_log(self) -> str:
        path = self.tmp / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_agent_ready(self, timeout: float = 20.0) -> None:
        """Until the agent answers on its control socket and has polled every device."""
        from agent.cli.client import AgentNotRunning, ControlClient, ControlError

        client = ControlClient(self.control_socket, timeout_s=5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise RigError(f"agent exited ({self.agent.returncode}):\n{self.agent_log()}")
            try:
                devices = client.call("devices")["devices"]
            except (AgentNotRunning, ControlError):
                devices = []
            if devices and all(d["comm"] == "ok" for d in devices):
                return
            time.sleep(0.1)  # polling a socket that appears when the agent is up
        raise RigError(f"agent not ready within {timeout} s:\n{self.agent_log()[-3000:]}")


def _rewrite(text: str, tmp: Path) -> str:
    return text.replace("/tmp/alarmgw-sim", str(tmp / "sim")).replace(
        "/tmp/alarmgw-demo", str(tmp / "agent")
    )


def write_scenario(tmp: Path, timeline: str | None) -> Path:
    """The care-home scenario under `tmp`, with `timeline` in place of its own (if given)."""
    text = SCENARIO.read_text(encoding="utf-8")
    if timeline is not None:
        text = text[: text.index("[timeline]")] + timeline
    path = tmp / "scenario.toml"
    path.write_text(_rewrite(text, tmp), encoding="utf-8")
    return path


def write_agent_config(tmp: Path) -> Path:
    path = tmp / "agent.toml"
    path.write_text(_rewrite(AGENT_CONFIG.read_text(encoding="utf-8"), tmp), encoding="utf-8")
    return path


@contextmanager
def feed_subscriber(broker: Mosquitto, client_id: str) -> Iterator[Feed]:
    """A subscriber recording every event and status on `alarmgw/v1/#`."""
    feed = Feed()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload.decode("utf-8"))
        with feed.changed:
            if msg.topic.endswith("/event"):
                feed.events.append(payload)
            elif msg.topic.endswith("/status"):
                feed.statuses.append(payload)
            elif msg.topic.endswith("/cmd-result"):
                feed.results.append(payload)
            feed.changed.notify_all()

    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        sub.subscribe("alarmgw/v1/#", qos=1)
        if not subscribed.wait(5):
            raise RigError("feed subscriber: no SUBACK within 5 s")
        yield feed
    finally:
        sub.disconnect()
        sub.loop_stop()


def start_simulator(
    tmp: Path,
    scenario: Path,
    env: dict[str, str],
    *,
    timeline: bool = True,
    broker: Mosquitto | None = None,
) -> subprocess.Popen[bytes]:
    """`alarmgw-sim run SCENARIO`, returned once it printed "ready" (its log: tmp/sim.log);
    its platform stand-in (duty checks) publishes to `broker`."""
    args = [str(BIN / "alarmgw-sim"), "run", str(scenario)]
    if broker is not None:
        args += ["--broker", f"{broker.host}:{broker.port}"]
    if not timeline:
        args.append("--no-timeline")
    with (tmp / "sim.log").open("wb") as sim_log:
        sim = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=sim_log, env=env)
    assert sim.stdout is not None
    for line in sim.stdout:  # the simulator prints what it built, then "ready"
        if line.strip() == b"ready":
            return sim
    stop_process(sim)
    raise RigError("simulator did not start:\n" + (tmp / "sim.log").read_text())


def rig_env(tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        GPIOZERO_PIN_FACTORY="alarmgw-sim",
        ALARMGW_SIM_GPIO=str(tmp / "sim" / "gpio.sock"),
    )


@contextmanager
def running_rig(
    tmp: Path,
    broker: Mosquitto,
    *,
    timeline: str | None = None,
    play_timeline: bool = True,
    agent: bool = True,
    client_id: str = "rig-feed",
    extra_env: dict[str, str] | None = None,
) -> Iterator[Rig]:
    """Bring the rig up under `tmp`; stop every part when the block ends.

    `timeline` replaces the scenario's own; `play_timeline=False` starts the
    simulator with --no-timeline (tests then drive it by hand with `sim_do`);
    `agent=False` leaves the line free (for `alarmgw scan`).
    """
    (tmp / "sim").mkdir(exist_ok=True)
    (tmp / "agent").mkdir(exist_ok=True)
    scenario = write_scenario(tmp, timeline)
    agent_cfg = write_agent_config(tmp)
    env = rig_env(tmp) | (extra_env or {})
    with ExitStack() as stack:
        feed = stack.enter_context(feed_subscriber(broker, client_id))
        sim = start_simulator(tmp, scenario, env, timeline=play_timeline, broker=broker)
        stack.callback(stop_process, sim)
        rig = Rig(
            tmp=tmp,
            broker=broker,
            feed=feed,
            env=env,
            scenario=scenario,
            agent_config=agent_cfg,
            control_socket=tmp / "agent" / "control.sock",
            sim_control=tmp / "sim" / "control.sock",
            line_path=tmp / "sim" / "rs485-1",
            sim=sim,
        )
        if agent:
            rig.start_agent()
            # the agent stops before the simulator (callbacks run last-in first-out)
            stack.callback(lambda: stop_process(rig.agent))
        yield rig
