"""The whole product on the bench: scenario -> simulator -> agent -> mosquitto -> subscriber.

Each scripted alarm, fault and restore must arrive as the right event (device,
point, kind, category, severity) and nothing else may arrive on the event
topic. The agent and the simulator run as real processes; GPIO crosses
processes through the simulator's gpiozero pin factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import Mosquitto
from tests.rig import Feed, running_rig

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
    ("exit-door-1", "contact", "state", "door", "warning"),
    ("exit-door-1", "contact", "state", "door", "info"),
    ("manual-alarm", "contact", "alarm", "manual", "critical"),
    ("manual-alarm", "contact", "restore", "manual", "info"),
    ("efd-2", None, "comm_loss", "comm", "minor"),
    ("efd-2", None, "comm_restore", "comm", "info"),
}


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Feed, Path]]:
    with running_rig(tmp_path, broker, timeline=TIMELINE, client_id="e2e-feed") as running:
        yield running.feed, tmp_path


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
    manual = next(e for e in events if e["device"] == "manual-alarm" and e["kind"] == "alarm")
    assert "手动报警" in str(manual["text"])  # Chinese names intact end to end
    assert any(s.get("state") == "online" for s in feed.statuses)
