"""The whole product on the bench: scenario -> simulator -> agent -> mosquitto -> subscriber.

Each scripted alarm, fault and restore must arrive as the right event (device,
point, kind, category, severity) and nothing else may arrive on the event
topic. The agent and the simulator run as real processes; GPIO crosses
processes through the simulator's gpiozero pin factory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from simulator.broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "config" / "scenarios" / "care-home.toml"
AGENT_CONFIG = ROOT / "config" / "scenarios" / "care-home-agent.toml"
BIN = Path(sys.executable).parent

# A compressed version of the care-home timeline (seconds after the simulator starts).
TIMELINE = """
[timeline]
loop = false
period = 60

  [[timeline.steps]]
  at = 3
  do = "state"
  device = "fap"
  point = "point3"
  state = "fire"

  [[timeline.steps]]
  at = 6
  do = "state"
  device = "fap"
  point = "point3"
  state = "normal"

  [[timeline.steps]]
  at = 3
  do = "state"
  device = "gas-1"
  point = "low_alarm"
  state = "low_alarm"

  [[timeline.steps]]
  at = 6
  do = "state"
  device = "gas-1"
  point = "low_alarm"
  state = "normal"

  [[timeline.steps]]
  at = 3
  do = "value"
  device = "efd-1"
  point = "ch1_leak"
  value = 420

  [[timeline.steps]]
  at = 7
  do = "value"
  device = "efd-1"
  point = "ch1_leak"
  value = 50

  [[timeline.steps]]
  at = 4
  do = "press"
  input = "exit-door-1"

  [[timeline.steps]]
  at = 5
  do = "release"
  input = "exit-door-1"

  [[timeline.steps]]
  at = 5
  do = "press"
  input = "manual-alarm"

  [[timeline.steps]]
  at = 6
  do = "release"
  input = "manual-alarm"

  [[timeline.steps]]
  at = 3
  do = "silence"
  device = "efd-2"

  [[timeline.steps]]
  at = 8
  do = "revive"
  device = "efd-2"
"""

# (device, point, kind, category, severity) of every event the timeline must cause.
EXPECTED = {
    ("fap", "point3", "alarm", "fire", "critical"),
    ("fap", "point3", "restore", "fire", "info"),
    ("gas-1", "low_alarm", "alarm", "gas", "major"),
    ("gas-1", "low_alarm", "restore", "gas", "info"),
    ("efd-1", "ch1_leak", "alarm", "electrical", "major"),
    ("efd-1", "ch1_leak", "restore", "electrical", "info"),
    ("gpio", "exit-door-1", "state", "door", "warning"),
    ("gpio", "exit-door-1", "state", "door", "info"),
    ("gpio", "manual-alarm", "alarm", "manual", "critical"),
    ("gpio", "manual-alarm", "restore", "manual", "info"),
    ("efd-2", None, "comm_loss", "comm", "minor"),
    ("efd-2", None, "comm_restore", "comm", "info"),
}


@dataclass
class Feed:
    events: list[dict[str, object]] = field(default_factory=list)
    statuses: list[dict[str, object]] = field(default_factory=list)
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


def _rewrite(text: str, tmp: Path) -> str:
    return text.replace("/tmp/alarmgw-sim", str(tmp / "sim")).replace(
        "/tmp/alarmgw-demo", str(tmp / "agent")
    )


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Feed, Path]]:
    (tmp_path / "sim").mkdir()
    (tmp_path / "agent").mkdir()
    scenario_text = SCENARIO.read_text(encoding="utf-8")
    scenario_text = scenario_text[: scenario_text.index("[timeline]")] + TIMELINE
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(_rewrite(scenario_text, tmp_path), encoding="utf-8")
    agent_cfg = tmp_path / "agent.toml"
    agent_cfg.write_text(_rewrite(AGENT_CONFIG.read_text(encoding="utf-8"), tmp_path))

    feed = Feed()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-feed")
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload.decode("utf-8"))
        with feed.changed:
            if msg.topic.endswith("/event"):
                feed.events.append(payload)
            elif msg.topic.endswith("/status"):
                feed.statuses.append(payload)
            feed.changed.notify_all()

    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe("alarmgw/v1/#", qos=1)
    assert subscribed.wait(5)

    env = dict(
        os.environ,
        GPIOZERO_PIN_FACTORY="alarmgw-sim",
        ALARMGW_SIM_GPIO=str(tmp_path / "sim" / "gpio.sock"),
    )
    with (tmp_path / "sim.log").open("wb") as sim_log:
        sim = subprocess.Popen(
            [str(BIN / "alarmgw-sim"), "run", str(scenario)],
            stdout=subprocess.PIPE,
            stderr=sim_log,
            env=env,
        )
    agent = None
    try:
        assert sim.stdout is not None
        for line in sim.stdout:  # the simulator prints what it built, then "ready"
            if line.strip() == b"ready":
                break
        else:
            pytest.fail("simulator did not start:\n" + (tmp_path / "sim.log").read_text())
        with (tmp_path / "agent.log").open("wb") as agent_log:
            agent = subprocess.Popen(
                [
                    str(BIN / "alarmgw"),
                    "run",
                    str(agent_cfg),
                    "--broker",
                    f"127.0.0.1:{broker.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=agent_log,
                env=env,
            )
        yield feed, tmp_path
    finally:
        for proc in (agent, sim):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (agent, sim):
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if sim.stdout is not None:
            sim.stdout.close()
        sub.disconnect()
        sub.loop_stop()


def test_scenario_alarms_faults_and_restores_arrive_and_nothing_else(
    rig: tuple[Feed, Path],
) -> None:
    feed, tmp = rig
    arrived = feed.wait_for(EXPECTED, timeout=60)
    log = (tmp / "agent.log").read_text(errors="replace")
    assert arrived, f"missing: {EXPECTED - feed.keys()}\nagent log:\n{log[-3000:]}"
    with feed.changed:
        events = list(feed.events)
    unexpected = [
        e
        for e in events
        if (e["device"], e["point"], e["kind"], e["category"], e["severity"]) not in EXPECTED
    ]
    assert unexpected == []
    # one event per expected key: no duplicates, no chatter
    assert len(events) == len(EXPECTED)
    seqs = [int(e["seq"]) for e in events]  # type: ignore[call-overload]
    assert seqs == sorted(seqs)
    assert all(e["clock_synced"] is True for e in events)
    manual = next(e for e in events if e["point"] == "manual-alarm" and e["kind"] == "alarm")
    assert "手动报警" in str(manual["text"])  # Chinese names intact end to end
    assert any(s.get("state") == "online" for s in feed.statuses)
