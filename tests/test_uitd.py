"""The UITD duties of the gateway itself, without a running agent: the self-test's items
pass and fail (tests/test_uitd_rig.py runs them on the simulator), the daily schedule
with an injectable clock (once a day, not twice after a restart, not before the clock is
synchronised), the simulated fire count and its reminder, the self-check reports durable
across a restart. Real records files (SQLite), a working fake of the gateway's probes."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent import selftest, uitd_records
from agent.buffer import EventBuffer
from agent.cli import main, render
from agent.cli.output import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from agent.cli.textwidth import width
from agent.config import SelfTestConfig, load_config
from agent.faults import OUTPUT_FAILED, Faults
from agent.pipeline import Pipeline
from agent.selfcheck import BadReport, check_points, parse_report
from agent.texts import Texts
from agent.uitd_duty import UitdDuty
from agent.uitd_records import UitdRecords
from agent.views import make_test_alarm
from core.errors import FieldTimeout
from core.events import Category, Event, Identity, Kind, Record, Severity
from simulator.devices import SimulatorError
from simulator.world import alarm_stimulus
from tests.mounts import fill, needs_root, tmpfs
from tests.test_schemas import assert_invalid, assert_valid

ROOT = Path(__file__).resolve().parent.parent
BEIJING = timezone(timedelta(hours=8))


@dataclass
class Gateway:
    """A working fake of what the self-test reads: every part healthy until told not."""

    records: UitdRecords
    storage: Path
    lost: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)  # live reads time out
    gpio: bool = True
    pins: dict[str, tuple[str, bool]] = field(
        default_factory=lambda: {"buzzer": ("off", False), "led": ("blink", True)}
    )
    faults_out: dict[str, str] = field(default_factory=dict)
    degraded: str | None = None
    pointstate: str | None = None
    connected: bool = True

    def input_ids(self) -> list[str]:
        return ["manual-alarm", "tamper"]

    def gpio_inputs(self) -> dict[str, Callable[[], bool]]:
        return {i: (lambda: False) for i in self.input_ids()} if self.gpio else {}

    def devices(self) -> dict[str, bool]:
        return {d: d in self.lost for d in ("fap", "gas-1")}

    def live_read(self, device: str) -> None:
        if device in self.dead:
            raise FieldTimeout(f"device {device!r}: no answer within 10 s")

    def outputs(self) -> dict[str, tuple[str, bool] | None]:
        return {k: (v if self.gpio else None) for k, v in self.pins.items()}

    def failing(self) -> dict[str, str]:
        return self.faults_out

    def buffer_degraded(self) -> str | None:
        return self.degraded

    def pointstate_problem(self) -> str | None:
        return self.pointstate

    def storage_dir(self) -> Path:
        return self.storage

    def records_probe(self, token: str) -> str:
        self.records.put(selftest.PROBE_KEY, token)
        return str(self.records.get(selftest.PROBE_KEY))

    def uplinks(self) -> dict[str, bool]:
        return {"uplink": self.connected}


@dataclass
class Clock:
    now: datetime = datetime(2026, 12, 5, 2, 0, tzinfo=BEIJING)
    synced: bool = True

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    tmp: Path
    gateway: Gateway
    clock: Clock
    emitted: list[Event] = field(default_factory=list)
    confirmed: set[int] = field(default_factory=set)
    duties: list[UitdDuty] = field(default_factory=list)
    cfg: SelfTestConfig = field(default_factory=SelfTestConfig)
    grace_s: float = 0.0  # the agent waits 120 s after a start; these tests need not

    def emit(self, record: Record) -> None:
        assert isinstance(record, Event)
        self.emitted.append(record)

    def duty(self) -> UitdDuty:
        """A duty as a (re)started agent builds it: a fresh one over the same file."""
        records = UitdRecords(self.tmp / "uitd.db")
        self.gateway.records = records
        faults = Faults(self.emit, lambda: self.clock.synced, Texts("en"))
        duty = UitdDuty(
            self.cfg, records, self.gateway, self.emit, faults,
            is_confirmed=lambda seq: seq in self.confirmed,
            synced=lambda: self.clock.synced, texts=Texts("en"), now=self.clock,
            startup_grace_s=self.grace_s,
        )  # fmt: skip
        self.duties.append(duty)
        return duty

    def points(self, point: str) -> list[Event]:
        return [e for e in self.emitted if e.point == point]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    gateway = Gateway(UitdRecords(tmp_path / "uitd.db"), tmp_path)
    made = Rig(tmp_path, gateway, Clock())
    yield made
    for duty in made.duties:
        duty.records.close()
    gateway.records.close()


# --- the items ----------------------------------------------------------------------


def test_every_item_passes_on_a_healthy_gateway(rig: Rig) -> None:
    result = selftest.run(rig.gateway, "cli:root")
    assert result.ok, result.failed
    assert {(i.part, i.id) for i in result.items} == {
        ("input", "manual-alarm"), ("input", "tamper"), ("input", "fap"), ("input", "gas-1"),
        ("output", "buzzer"), ("output", "led"),
        ("storage", "buffer"), ("storage", "pointstate"), ("storage", "space"),
        ("storage", "write"), ("link", "uplink"),
    }  # fmt: skip
    assert "not actuated" in next(i.detail for i in result.items if i.id == "buzzer")


@pytest.mark.parametrize(
    ("breakage", "failed"),
    [
        (lambda g: g.lost.add("fap"), ("input", "fap")),
        (lambda g: g.dead.add("gas-1"), ("input", "gas-1")),
        (lambda g: setattr(g, "connected", False), ("link", "uplink")),
        (lambda g: setattr(g, "degraded", "disk I/O error"), ("storage", "buffer")),
        (lambda g: setattr(g, "pointstate", "cannot be written"), ("storage", "pointstate")),
        (lambda g: g.pins.update(buzzer=("on", False)), ("output", "buzzer")),
        (lambda g: g.faults_out.update({"output-led": OUTPUT_FAILED}), ("output", "led")),
        (lambda g: g.records.close() or setattr(g, "storage", g.storage / "gone"),
         ("storage", "space")),
    ],
    ids=["comm-loss", "dead-device", "uplink-down", "buffer-degraded", "pointstate",
         "pin-does-not-follow", "output-failed", "storage-missing"],
)  # fmt: skip
def test_a_broken_part_fails_its_item_and_only_it(
    rig: Rig, breakage: Callable[[Gateway], object], failed: tuple[str, str]
) -> None:
    breakage(rig.gateway)
    result = selftest.run(rig.gateway, "daily")
    assert not result.ok
    assert [(i.part, i.id) for i in result.failed] == [failed]


def test_without_gpio_every_input_and_output_fails(rig: Rig) -> None:
    rig.gateway.gpio = False
    failed = {(i.part, i.id) for i in selftest.run(rig.gateway, "daily").failed}
    assert failed == {("input", "manual-alarm"), ("input", "tamper"), ("output", "buzzer"),
                      ("output", "led")}  # fmt: skip


def test_a_check_that_blows_up_is_a_failed_item_not_a_crash(rig: Rig) -> None:
    def boom() -> dict[str, bool]:
        raise RuntimeError("bug")

    rig.gateway.uplinks = boom  # type: ignore[method-assign]
    result = selftest.run(rig.gateway, "daily")
    assert [(i.part, i.ok) for i in result.items if i.part == "link"] == [("link", False)]
    assert "bug" in result.failed[0].detail


def test_the_result_event_carries_each_item_and_the_gb_self_test_operation(rig: Rig) -> None:
    rig.gateway.lost.add("fap")
    event = selftest.result_event(selftest.run(rig.gateway, "daily"), Texts("en"), synced=True)
    assert (event.device, event.point, event.kind.value, event.state) == (
        "gateway", "selftest", "system", "selftest_failed")  # fmt: skip
    assert event.detail is not None
    assert event.detail["gb"] == {"tf": 24, "flags": 16, "operator": 0}
    items = event.detail["selftest"]["items"]
    assert {"part": "input", "id": "fap", "ok": False, "detail": "in comm loss: not answering"} in (
        items
    )
    assert "input fap" in event.text


# --- the duty: faults, the daily schedule --------------------------------------------------


def test_an_items_fault_point_is_an_id_whatever_the_uplinks_name() -> None:
    item = selftest.Item("link", "uplink 1", ok=False, detail="not connected")
    assert item.cause == "selftest-link-uplink_1"


def test_a_failed_item_is_a_fault_once_and_restored_when_it_passes(rig: Rig) -> None:
    duty = rig.duty()
    rig.gateway.dead.add("gas-1")
    duty.run_selftest("cli:root")
    duty.run_selftest("cli:root")
    faults = [e for e in rig.points("selftest-input-gas-1") if e.kind.value == "fault"]
    assert len(faults) == 1
    assert faults[0].state == "selftest_failed"
    assert "gas-1" in faults[0].text
    rig.gateway.dead.clear()
    duty.run_selftest("cli:root")
    restores = [e for e in rig.points("selftest-input-gas-1") if e.kind.value == "restore"]
    assert [e.text for e in restores] == ["self-test passes again: input gas-1"]
    assert len(rig.points("selftest")) == 3


def test_daily_once_at_its_time_and_not_again_after_a_restart(rig: Rig) -> None:
    duty = rig.duty()
    duty.tick()  # 02:00: not yet
    assert rig.points("selftest") == []
    rig.clock.now = rig.clock.now.replace(hour=3, minute=0)
    duty.tick()
    duty.tick()
    assert [e.detail["selftest"]["trigger"] for e in rig.points("selftest")] == ["daily"]  # type: ignore[index]
    rig.clock.now = rig.clock.now.replace(hour=23, minute=59)
    rig.duty().tick()  # the agent restarted the same day
    assert len(rig.points("selftest")) == 1
    rig.clock.now += timedelta(hours=3)  # 02:59 the next day
    rig.duty().tick()
    assert len(rig.points("selftest")) == 1
    rig.clock.now += timedelta(minutes=1)
    later = rig.duty()
    later.tick()
    assert len(rig.points("selftest")) == 2
    assert later.summary()["last_selftest"]["trigger"] == "daily"


def test_no_daily_self_test_before_the_clock_is_synchronised(rig: Rig) -> None:
    rig.clock.synced = False
    rig.clock.now = rig.clock.now.replace(hour=9)
    duty = rig.duty()
    duty.tick()
    assert rig.points("selftest") == []
    rig.clock.synced = True
    duty.tick()  # started after its time: runs at once, once
    duty.tick()
    assert len(rig.points("selftest")) == 1


def test_not_right_after_a_start_the_uplink_and_lines_come_up_first(rig: Rig) -> None:
    rig.grace_s = 3600.0
    rig.clock.now = rig.clock.now.replace(hour=9)
    duty = rig.duty()
    duty.tick()
    assert rig.points("selftest") == []
    duty.run_selftest("cli:root")  # on demand: at once
    assert len(rig.points("selftest")) == 1


def test_the_time_of_day_is_configurable(rig: Rig) -> None:
    rig.cfg = SelfTestConfig(selftest_time="14:30")
    rig.clock.now = rig.clock.now.replace(hour=14, minute=29)
    duty = rig.duty()
    duty.tick()
    assert rig.points("selftest") == []
    rig.clock.now = rig.clock.now.replace(minute=30)
    duty.tick()
    assert len(rig.points("selftest")) == 1


def test_an_on_demand_self_test_leaves_the_daily_one_due(rig: Rig) -> None:
    rig.clock.now = rig.clock.now.replace(hour=1)
    duty = rig.duty()
    duty.run_selftest("cli:root")
    rig.clock.now = rig.clock.now.replace(hour=3)
    duty.tick()
    assert [e.detail["selftest"]["trigger"] for e in rig.points("selftest")] == [  # type: ignore[index]
        "cli:root", "daily"]  # fmt: skip


def test_a_full_or_missing_card_fails_the_storage_items_and_the_duty_goes_on(rig: Rig) -> None:
    duty = rig.duty()
    duty.records.close()
    duty.records.path = rig.tmp / "no-such-dir" / "uitd.db"  # cannot be opened: as a dead card
    rig.gateway.storage = rig.tmp / "no-such-dir"
    rig.clock.now = rig.clock.now.replace(hour=3)
    duty.tick()
    result = rig.points("selftest")[-1].detail["selftest"]  # type: ignore[index]
    failed = {i["id"] for i in result["items"] if not i["ok"]}
    assert failed == {"space", "write"}
    assert any(e.point == "uitd_records" and e.kind.value == "fault" for e in rig.emitted)


# --- simulated fire transmissions ---------------------------------------------------------


def _stored(event: Event, seq: int) -> Event:
    return dataclasses.replace(event, seq=seq)


def test_confirmed_test_alarms_count_in_their_month_across_restarts(rig: Rig) -> None:
    duty = rig.duty()
    duty.stored(_stored(make_test_alarm(Identity("s", "g"), "cli", None, synced=True), 7))
    duty.tick()
    assert duty.simulated_fires()["count"] == 0  # stored, not yet confirmed by the broker
    rig.confirmed.add(7)
    duty.tick()
    assert duty.simulated_fires() == {"month": "2026-12", "count": 1, "required": 2,
                                      "reminder_day": 25, "due": False}  # fmt: skip
    restarted = rig.duty()
    restarted.stored(_stored(make_test_alarm(Identity("s", "g"), "cli", None, synced=True), 9))
    restarted.tick()  # its thread, woken by `stored`, writes it down
    again = rig.duty()  # restarted before the broker confirmed the second one
    rig.confirmed.add(9)
    again.tick()
    assert again.simulated_fires()["count"] == 2
    rig.clock.now = datetime(2027, 1, 1, 0, 0, tzinfo=BEIJING)
    assert again.simulated_fires()["count"] == 0  # a new month


def test_a_test_alarm_never_holds_the_buffers_writer_on_the_records_file(
    tmp_path: Path,
) -> None:
    """The stored listener runs on the buffer's writer: with the records file locked (a
    slow card, the CLI), a real fire right behind a test alarm is stored without waiting
    for that file, and nothing fails; the duty's own thread writes it down once it can
    (review item 3)."""
    buf = EventBuffer(tmp_path / "b.db", Identity("s", "g"), 1000).start()
    pipe = Pipeline(buf, Identity("s", "g"), clock_synced=lambda: True)
    records = UitdRecords(tmp_path / "uitd.db")
    records.put("x", 1)  # the file exists
    duty = UitdDuty(
        SelfTestConfig(), records, None, pipe.emit, pipe.faults,  # type: ignore[arg-type]
        is_confirmed=lambda seq: False, synced=lambda: True, texts=Texts("en"),
    )  # fmt: skip
    pipe.listen_stored("uitd_listener", duty.stored)
    other = sqlite3.connect(tmp_path / "uitd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the records file is locked for writing
        test = pipe.emit(make_test_alarm(Identity("s", "g"), "cli", None, synced=True))
        fire = Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", "fap", "p1")
        assert isinstance(pipe.emit(fire).result(timeout=30), Event)
        assert isinstance(test.result(timeout=30), Event)
        assert pipe.faults.failing == {}  # the writer never touched the locked file
        other.execute("ROLLBACK")
        duty.tick()
        assert [s.seq for s in records.unconfirmed()] == [test.result().seq]
    finally:
        other.close()
        records.close()
        buf.close()


def test_a_test_alarm_whose_note_failed_is_still_counted_once_confirmed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing the note fails (the file locked): a fault, and the alarm stays watched; once
    the file is back and the uplinks confirmed it, it counts (never an UPDATE of nothing
    reported as done)."""
    monkeypatch.setattr(uitd_records, "BUSY_TIMEOUT_S", 0.05)
    duty = rig.duty()
    duty.tick()
    other = sqlite3.connect(rig.tmp / "uitd.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        duty.stored(_stored(make_test_alarm(Identity("s", "g"), "cli", None, synced=True), 5))
        rig.confirmed.add(5)
        duty.tick()
        assert "uitd_records" in duty._faults.failing
        other.execute("ROLLBACK")
    finally:
        other.close()
    duty.tick()
    assert duty.simulated_fires()["count"] == 1
    assert "uitd_records" not in duty._faults.failing


def test_other_events_are_not_simulated_fires(rig: Rig) -> None:
    duty = rig.duty()
    other = selftest.result_event(selftest.run(rig.gateway, "x"), Texts("en"), synced=True)
    duty.stored(_stored(other, 3))
    rig.confirmed.add(3)
    duty.tick()
    assert duty.simulated_fires()["count"] == 0


def test_a_transmission_confirmed_while_unsynced_counts_once_the_clock_is(rig: Rig) -> None:
    rig.clock.synced = False
    duty = rig.duty()
    duty.stored(_stored(make_test_alarm(Identity("s", "g"), "cli", None, synced=False), 4))
    rig.confirmed.add(4)
    duty.tick()
    assert duty.simulated_fires()["month"] is None
    rig.clock.synced = True
    duty.tick()
    assert duty.simulated_fires()["count"] == 1


def test_one_reminder_a_month_when_fewer_than_required_by_the_day(rig: Rig) -> None:
    rig.clock.now = datetime(2026, 12, 24, 3, 30, tzinfo=BEIJING)
    duty = rig.duty()
    duty.tick()
    assert rig.points("simulated_fires") == []
    rig.clock.now = datetime(2026, 12, 25, 9, 0, tzinfo=BEIJING)
    duty.tick()
    duty.tick()
    rig.duty().tick()  # a restart the same month: not again
    reminders = rig.points("simulated_fires")
    assert len(reminders) == 1
    assert reminders[0].state == "simulated_fires_due"
    assert reminders[0].detail == {"simulated_fires": {"month": "2026-12", "count": 0,
                                   "required": 2, "reminder_day": 25}}  # fmt: skip
    assert duty.summary()["simulated_fires"]["due"] is True
    rig.clock.now = datetime(2027, 1, 25, 9, 0, tzinfo=BEIJING)
    duty.tick()
    assert len(rig.points("simulated_fires")) == 2


def test_no_reminder_when_enough_were_confirmed(rig: Rig) -> None:
    rig.cfg = SelfTestConfig(min_simulated_fires=1, reminder_day=10)
    rig.clock.now = datetime(2026, 12, 10, 9, 0, tzinfo=BEIJING)
    duty = rig.duty()
    duty.stored(_stored(make_test_alarm(Identity("s", "g"), "cli", None, synced=True), 2))
    rig.confirmed.add(2)
    duty.tick()
    assert rig.points("simulated_fires") == []
    assert duty.summary()["simulated_fires"]["due"] is False


# --- self-check reports ---------------------------------------------------------------------

REPORT: dict[str, Any] = {
    "operator": "张三",
    "started_ms": 1,
    "points": [
        {"id": "fap/point3", "name": "1号 点3", "result": "passed", "alarm_seq": 5,
         "restore_seq": 6},
        {"id": "manual-alarm", "result": "failed", "note": "no alarm seen in time"},
        {"id": "tamper", "result": "untested"},
    ],
    "simulated": [{"seq": 8, "id": "x", "confirmed": True}],
}  # fmt: skip


def test_a_report_is_stored_once_sent_and_durable_across_a_restart(rig: Rig) -> None:
    duty = rig.duty()
    stored = duty.store_report(parse_report(REPORT) | {"handed_in_by": "root"})
    assert stored["summary"] == {"passed": 1, "failed": 1, "untested": 1,
                                 "simulated_confirmed": 1, "simulated_sent": 1}  # fmt: skip
    event = rig.points("selfcheck")[0]
    assert (event.state, event.severity.value) == ("selfcheck_report", "minor")
    assert event.detail is not None
    assert event.detail["selfcheck"]["number"] == stored["number"]
    assert "张三" in event.text
    again = rig.duty().reports(10)
    assert [(r["number"], r["operator"], r["points"][0]["result"]) for r in again] == [
        (stored["number"], "张三", "passed")]  # fmt: skip
    assert rig.duty().summary()["last_selfcheck"]["failed"] == 1


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"operator": ""}, "report.operator"),
        ({"points": "all"}, "report.points"),
        ({"points": [{"id": "x", "result": "maybe"}]}, "report.points[0].result"),
        ({"simulated": [{"seq": 1}]}, "report.simulated[0]"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_a_bad_report_is_refused_naming_the_field(change: dict[str, Any], where: str) -> None:
    with pytest.raises(BadReport, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_report(REPORT | change)


def test_the_default_points_are_the_alarm_inputs_and_alarm_points() -> None:
    cfg = load_config(ROOT / "config" / "scenarios" / "care-home-agent.toml")
    ids = [p["id"] for p in check_points(cfg)]
    assert ids[:2] == ["manual-alarm", "tamper"]  # inputs of kind alarm, not the door
    assert "exit-door-1" not in ids
    assert "fap/point3" in ids and "efd-1/ch1_leak" in ids
    assert "efd-2/ch4_temp" not in ids  # disabled on that device
    manual = check_points(cfg)[0]
    assert (manual["device"], manual["point"]) == ("manual-alarm", "contact")


@needs_root
@pytest.mark.world  # mounts a tmpfs (a `mount` process)
def test_a_full_card_fails_space_and_write(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "card", "1m") as card:
        records = UitdRecords(card / "uitd.db")
        try:
            gateway = Gateway(records, card)
            assert selftest.run(gateway, "daily").ok  # the file exists, with room to spare
            fill(card)
            failed = {(i.id, i.detail[:16]) for i in selftest.run(gateway, "daily").failed}
            assert {i for i, _ in failed} == {"space", "write"}, failed
        finally:
            records.close()


# --- the feed contract: the events as sent match docs/schemas/event.schema.json --------------


def test_the_duties_events_match_the_event_schema(rig: Rig) -> None:
    rig.clock.now = datetime(2026, 12, 26, 3, 30, tzinfo=BEIJING)
    rig.gateway.dead.add("gas-1")
    duty = rig.duty()
    duty.tick()  # the daily self-test (failing one item) and the simulated-fires reminder
    duty.store_report(parse_report(REPORT) | {"handed_in_by": "root"})
    states = {e.state for e in rig.emitted}
    assert {"selftest_failed", "simulated_fires_due", "selfcheck_report"} <= states
    ident = Identity("cn-sz-futian-yl001", "gw1")
    for seq, event in enumerate(rig.emitted, 1):
        assert_valid("event", _stored(event, seq).to_payload(ident))
    bad = _stored(rig.points("selftest")[0], 1).to_payload(ident)
    bad["detail"]["gb"]["flags"] = 32
    assert_invalid("event", bad)


# --- the training rig: what `alarmgw-sim alarm/clear-alarm/pulse` put into the points --------


def test_the_simulator_knows_each_points_alarm_and_its_normal() -> None:
    cfg = load_config(ROOT / "config" / "scenarios" / "care-home-agent.toml")
    panel = cfg.profiles["fire-panel-gst"].points["point3"]
    assert (alarm_stimulus(panel, active=True), alarm_stimulus(panel, active=False)) == (
        "fire", "normal")  # fmt: skip
    leak = cfg.profiles["electrical-fire-4ch"].points["ch1_leak"]
    alarm = next(t for t in leak.thresholds.values() if t.kind.value == "alarm")
    assert alarm_stimulus(leak, active=True) > alarm.value
    assert alarm_stimulus(leak, active=False) < alarm.value - alarm.hysteresis
    assert alarm_stimulus(leak, active=True) >= 400  # past a site's raised threshold too
    pressure = cfg.profiles["analog-4-20ma"].points["ch1_pressure"]  # alarms below 0.1 MPa
    low = next(t for t in pressure.thresholds.values() if t.kind.value == "alarm")
    assert 0 <= alarm_stimulus(pressure, active=True) < low.value
    assert alarm_stimulus(pressure, active=False) > low.value + low.hysteresis
    gas = cfg.profiles["gas-detector"].points["low_alarm"]  # the detector's own alarm bit
    assert (alarm_stimulus(gas, active=True), alarm_stimulus(gas, active=False)) == (1.0, 0.0)
    power = cfg.profiles["fire-panel-gst"].points["main_power"]  # a fault flag: no alarm
    with pytest.raises(SimulatorError, match="no alarm"):
        alarm_stimulus(power, active=True)


# --- what `alarmgw status` shows of them ---------------------------------------------------


def test_status_shows_the_duties_and_counts_their_problems(rig: Rig) -> None:
    rig.clock.now = datetime(2026, 12, 26, 3, 30, tzinfo=BEIJING)
    rig.gateway.connected = False
    duty = rig.duty()
    duty.tick()
    duty.store_report(parse_report(REPORT) | {"handed_in_by": "root"})
    duties = duty.summary()
    lines = render.duty_lines(duties)
    assert lines[0].endswith("(daily) FAILED: link uplink")
    assert lines[1] == ("simulated fires 2026-12: 0 of 2 confirmed, reminder day 25  DUE: run them")
    assert "张三: 1 passed, 1 failed, 1 untested" in lines[2]
    assert all(width(line) <= 80 for line in lines)
    assert render.duty_problems(duties) == ["self-test failed: link uplink",
                                            "simulated fires due (0 of 2)"]  # fmt: skip
    rig.gateway.connected = True
    duty.run_selftest("cli:root")
    assert render.duty_problems(duty.summary()) == ["simulated fires due (0 of 2)"]


def test_reports_are_readable_offline_with_the_agent_stopped(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    duty = rig.duty()
    first = duty.store_report(parse_report(REPORT) | {"handed_in_by": "root"})
    second = duty.store_report(parse_report(REPORT | {"operator": "李四"}) | {"handed_in_by": "x"})
    duty.records.close()
    path = str(rig.tmp / "uitd.db")
    before = (rig.tmp / "uitd.db").stat().st_mtime_ns
    assert main(["selfcheck", "--show", "--file", path, "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["number"] == second["number"]
    assert main(["selfcheck", "--show", "list", "--file", path]) == EXIT_OK
    shown = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in shown] == [f"#{second['number']}", f"#{first['number']}"]
    assert "李四" in shown[0]
    assert (rig.tmp / "uitd.db").stat().st_mtime_ns == before  # read-only: never written
    assert main(["selfcheck", "--file", path]) == EXIT_USAGE
    missing = rig.tmp / "none.db"
    assert main(["selfcheck", "--show", "--file", str(missing)]) == EXIT_PROBLEM
    assert "cannot be read" in capsys.readouterr().err
    assert not missing.exists()


def test_a_report_the_card_refuses_is_still_sent_and_said_so(rig: Rig) -> None:
    duty = rig.duty()
    duty.records.close()
    duty.records.path = rig.tmp / "no-such-dir" / "uitd.db"
    stored = duty.store_report(parse_report(REPORT) | {"handed_in_by": "root"})
    assert stored["number"] is None
    sent = rig.points("selfcheck")
    assert len(sent) == 1 and sent[0].detail is not None
    assert sent[0].detail["selfcheck"]["operator"] == "张三"
    assert any(e.point == "uitd_records" and e.kind.value == "fault" for e in rig.emitted)
    assert_valid("event", _stored(sent[0], 1).to_payload(Identity("s", "g")))
