"""The views of the running gateway, built from parts that were never started: no line
polls, no uplink connects, no GPIO chip; a real buffer file. What `alarmgw status`,
`devices`, `events`, `read` and the platform's commands see is checked here directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import EventBuffer
from agent.config import load_config
from agent.field import comm_event, field_devices
from agent.pipeline import Pipeline
from agent.rules import LocalRules
from agent.texts import Texts
from agent.views import (
    Actions,
    DownlinkView,
    LocalView,
    Parts,
    device_rows,
    downlink_points,
    health,
    make_test_alarm,
    read_values,
    recent_page,
    status,
)
from core.events import Category, Event, Kind, Severity
from drivers.line import CommChange, ReadOutcome
from drivers.plan import plan_polls
from drivers.types import Block, PollClass

ROOT = Path(__file__).resolve().parent.parent


class Buzzer:
    def __init__(self) -> None:
        self.on_now = False

    def on(self) -> None:
        self.on_now = True

    def off(self) -> None:
        self.on_now = False

    def blink(self, on_s: float, off_s: float) -> None:
        self.on_now = True


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    cfg = load_config(ROOT / "config" / "example.toml")
    buffer = EventBuffer(tmp_path / "buffer.db", cfg.identity, 1000).start()
    pipeline = Pipeline(buffer, cfg.identity)
    devices = field_devices(cfg.devices, cfg.profiles, {})
    try:
        yield Parts(cfg, buffer, pipeline, devices, clock_synced=lambda: False)
    finally:
        buffer.close()


def test_status_of_a_gateway_whose_lines_never_started(parts: Parts) -> None:
    cfg = parts.cfg
    lost = CommChange("gas-1", lost=True, reason="timeout", failures=3, ts_ms=1)
    comm_event(parts.devices["gas-1"], lost, True, Texts())
    shown = status(parts)
    assert (shown["site"], shown["gateway"], shown["clock_synced"]) == (
        cfg.identity.site,
        cfg.identity.gateway,
        False,
    )
    assert shown["uplink"] == {"since_ms": None}  # no uplink among the parts
    assert shown["gpio"] is False
    assert [line["id"] for line in shown["lines"]] == [line.id for line in cfg.lines]
    line = shown["lines"][0]
    assert (line["cycle_s"], line["down"], line["lost"]) == (None, None, ["gas-1"])
    by_id = {d["id"]: d for d in shown["devices"]}
    assert by_id["gas-1"]["comm"] == "lost" and by_id["gas-1"]["last_failure"] == "timeout"
    others = [d for d in cfg.devices if d.id != "gas-1"]
    assert all(by_id[d.id]["comm"] == "unknown" for d in others)  # never polled
    contacts = [by_id[i.id] for i in cfg.inputs]
    assert all(c["line"] == "gpio" and c["comm"] == "lost" for c in contacts)  # no chip
    assert shown["active_alarms"] == [] and shown["silenced"] is False
    assert health(parts.devices.values()) == {
        "total": len(cfg.devices),
        "online": len(cfg.devices) - 1,
        "comm_fault": ["gas-1"],
    }
    assert device_rows(parts.devices.values(), cfg.inputs, None) == shown["devices"]


def test_recent_events_page_forward(parts: Parts) -> None:
    events = [
        Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", f"门 {i}", "door").with_seq(i)
        for i in range(1, 8)
    ]
    ident = parts.cfg.identity
    assert [e["seq"] for e in recent_page(events, ident, 2, 3)] == [3, 4, 5]
    assert [e["seq"] for e in recent_page(events, ident, None, 2)] == [6, 7]
    assert recent_page(events, ident, None, 0) == []


def test_a_live_read_answer_point_by_point(parts: Parts) -> None:
    dev = parts.devices["gas-1"]
    polls = plan_polls(dev.profile, dev.cfg.unit_id, 8, 125)
    requests = polls[PollClass.FAST] + polls[PollClass.SLOW]
    blocks = [Block(r, (0,) * r.count) for r in requests]
    specs = list(dev.profile.points.values())
    read = read_values("gas-1", specs, ReadOutcome(blocks=blocks))
    assert set(read["points"]) == {s.id for s in specs}
    assert all("value" in p and "error" not in p for p in read["points"].values())
    failed = read_values("gas-1", specs, ReadOutcome())
    assert all("error" in p for p in failed["points"].values())
    shaped = downlink_points(failed)
    assert {p["quality"] for p in shaped["points"]} == {"bad"}
    assert all(p["value"] is None for p in shaped["points"])


def test_a_test_alarm_is_a_test_flagged_fire_stored_through_emit(parts: Parts) -> None:
    event = make_test_alarm(parts.cfg.identity, "cli:root", "月度测试", synced=True)
    assert (event.kind, event.category, event.test, event.device) == (
        Kind.TEST,
        Category.FIRE,
        True,
        "gateway",
    )
    # a simulated fire transmission for the centre too: GB UITD operation, test bit (6)
    gb = {"tf": 24, "flags": 64, "operator": 0}
    assert event.detail == {"requested_by": "cli:root", "note": "月度测试", "gb": gb}
    english = make_test_alarm(parts.cfg.identity, "cmd:x", None, synced=True, texts=Texts("en"))
    assert english.text.endswith("test fire alarm (cmd:x)")
    stored = Actions(parts, parts.pipeline.emit).test_alarm("cli:root")
    assert stored.seq is not None and stored.clock_synced is False


def test_silence_answers_each_asker_in_its_own_shape(parts: Parts) -> None:
    buzzer = Buzzer()
    parts.rules = LocalRules([("buzzer", "alarm", buzzer)])
    fire = Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", "fap", "p1")
    parts.rules.on_event(fire)
    assert buzzer.on_now
    actions = Actions(parts, parts.pipeline.emit)
    assert DownlinkView(parts, actions).silence() == {"silenced": ["buzzer"]}
    assert not buzzer.on_now
    assert LocalView(parts, actions).silence() == {"silenced": True, "was_sounding": False}
    assert status(parts)["silenced"] is True
