"""Point rules, driven by explicit timestamps (nothing here sleeps).

`ts_ms` is the wall clock (reported detection time); `mono_s` the monotonic
clock that times confirmations. `feed()` and `at()` drive both together unless
a test is about them drifting apart (an NTP step)."""

from __future__ import annotations

from dataclasses import replace

from agent.points import DevicePoints, PointTracker
from core.events import Category, Event, Kind, Reading, Record, Severity
from drivers.profile import (
    Direction,
    FlagSpec,
    PointSpec,
    PointType,
    Profile,
    StateSpec,
    ThresholdSpec,
)
from drivers.types import Block, PollClass, ReadRequest, Table

LEAK_ALARM = ThresholdSpec(
    "alarm", Direction.ABOVE, 300.0, 30.0, 0.0, Kind.ALARM, Category.ELECTRICAL,
    Severity.MAJOR, "leakage_alarm", "剩余电流报警",
)  # fmt: skip
LEAK = PointSpec(
    id="ch1_leak", name="通道1剩余电流", table=Table.HOLDING, address=0, type=PointType.U16,
    unit="mA", thresholds={"alarm": LEAK_ALARM}, category=Category.ELECTRICAL,
)  # fmt: skip
STATES = {
    0: StateSpec("normal", "正常", True, None, Category.FIRE, Severity.INFO),
    1: StateSpec("fire", "火警", False, Kind.ALARM, Category.FIRE, Severity.CRITICAL),
    2: StateSpec("fault", "故障", False, Kind.FAULT, Category.FIRE, Severity.MINOR),
    9: StateSpec("restore", "恢复", True, None, Category.FIRE, Severity.INFO),
}
LOOP_POINT = PointSpec(
    id="point3", name="点位3", table=Table.HOLDING, address=2, type=PointType.U8LO,
    states=STATES, category=Category.FIRE,
)  # fmt: skip
PRESSURE = PointSpec(
    id="ch1_pressure", name="消防管网压力", table=Table.INPUT, address=0, type=PointType.U16,
    unit="MPa", raw_range=(4000.0, 20000.0), eng_range=(0.0, 1.6), fault_below=3800.0,
    category=Category.WATER,
    thresholds={"low": ThresholdSpec(
        "low", Direction.BELOW, 0.10, 0.02, 5.0, Kind.ALARM, Category.WATER, Severity.MAJOR,
        "low_pressure", "压力低",
    )},
)  # fmt: skip


def tracker(spec: PointSpec) -> PointTracker:
    return PointTracker("fap", "1号火灾报警控制器", "一楼消防控制室", spec)


def events(records: list[Record]) -> list[tuple[Kind, str]]:
    return [(r.kind, r.state) for r in records if isinstance(r, Event)]


def at(t: PointTracker, value: float, ts_ms: int) -> list[Record]:
    """One poll with the wall and monotonic clocks in step."""
    return t.update(value, ts_ms, True, ts_ms / 1000)


def feed(t: PointTracker, values: list[float], start: int = 0, step: int = 1000) -> list[Record]:
    out: list[Record] = []
    for i, value in enumerate(values):
        out.extend(at(t, value, start + i * step))
    return out


# --- state tables ---------------------------------------------------------------------


def test_state_change_raises_once_and_restores_with_readable_text() -> None:
    t = tracker(LOOP_POINT)
    assert t.update(0, 0, True) == []  # normal at boot: nothing
    [alarm] = t.update(1, 1000, False)
    assert isinstance(alarm, Event)
    assert (alarm.kind, alarm.category, alarm.severity, alarm.state) == (
        Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire",
    )  # fmt: skip
    assert alarm.text == "1号火灾报警控制器 点位3 火警"
    assert (alarm.device, alarm.point, alarm.value, alarm.ts_ms) == ("fap", "point3", 1, 1000)
    assert alarm.clock_synced is False
    assert (alarm.device_name, alarm.point_name, alarm.location) == (
        "1号火灾报警控制器", "点位3", "一楼消防控制室",
    )  # fmt: skip
    assert feed(t, [1, 1, 1], start=2000) == []  # unchanged polls say nothing
    [restore] = t.update(9, 6000, True)
    assert isinstance(restore, Event)
    assert (restore.kind, restore.category, restore.severity, restore.state) == (
        Kind.RESTORE, Category.FIRE, Severity.INFO, "restore",
    )  # fmt: skip
    assert restore.detail == {"restores": "fire"}
    assert restore.text == "1号火灾报警控制器 点位3 恢复"
    assert t.update(0, 7000, True) == []  # normal -> normal: nothing


def test_first_poll_reports_an_alarm_present_at_boot() -> None:
    t = tracker(LOOP_POINT)
    assert events(t.update(1, 0, True)) == [(Kind.ALARM, "fire")]
    assert t.update(1, 1000, True) == []


def test_abnormal_to_abnormal_names_the_previous_state_and_ends_nothing() -> None:
    t = tracker(LOOP_POINT)
    t.update(2, 0, True)
    [alarm] = t.update(1, 1000, True)
    assert isinstance(alarm, Event)
    assert (alarm.kind, alarm.state, alarm.detail) == (Kind.ALARM, "fire", {"previous": "fault"})
    assert t.state == "fire,fault"  # the fault was never restored: still held


def restores(records: list[Record]) -> list[tuple[str, str | None, str]]:
    return [
        (r.state, (r.detail or {}).get("restores"), r.text)
        for r in records
        if isinstance(r, Event) and r.kind is Kind.RESTORE
    ]


def test_fire_then_fault_then_normal_keeps_the_fire_until_normal() -> None:
    t = tracker(LOOP_POINT)
    assert events(t.update(1, 0, True)) == [(Kind.ALARM, "fire")]
    [fault] = t.update(2, 1000, True)  # a burnt detector: the panel now says fault
    assert isinstance(fault, Event)
    assert (fault.kind, fault.state, fault.detail) == (Kind.FAULT, "fault", {"previous": "fire"})
    assert t.update(2, 2000, True) == []
    back = t.update(0, 3000, True)
    assert events(back) == [(Kind.RESTORE, "normal"), (Kind.RESTORE, "normal")]
    assert restores(back) == [
        ("normal", "fire", "1号火灾报警控制器 点位3 火警恢复"),
        ("normal", "fault", "1号火灾报警控制器 点位3 故障恢复"),
    ]
    assert {r.category for r in back if isinstance(r, Event)} == {Category.FIRE}


def test_fire_then_fault_then_fire_again_is_one_fire_condition() -> None:
    t = tracker(LOOP_POINT)
    t.update(1, 0, True)
    t.update(2, 1000, True)
    [again] = t.update(1, 2000, True)  # the latest event of a point is its state
    assert (again.kind, again.detail) == (Kind.ALARM, {"previous": "fault"})  # type: ignore[union-attr]
    assert [d for _, d, _ in restores(t.update(9, 3000, True))] == ["fire", "fault"]


def test_unknown_code_is_a_fault_not_silence() -> None:
    t = tracker(LOOP_POINT)
    [fault] = t.update(77, 0, True)
    assert isinstance(fault, Event)
    assert (fault.kind, fault.state, fault.category) == (Kind.FAULT, "unknown_77", Category.FIRE)


def test_flag_first_poll_and_changes() -> None:
    flag = FlagSpec(
        Kind.FAULT, Category.POWER, Severity.MINOR, "power_fault", "normal", "故障", "恢复"
    )
    spec = PointSpec(
        id="main_power", name="主电", table=Table.HOLDING, address=1000, type=PointType.BIT,
        bit=0, flag=flag, category=Category.POWER,
    )  # fmt: skip
    t = tracker(spec)
    assert events(t.update(True, 0, True)) == [(Kind.FAULT, "power_fault")]
    assert t.update(True, 1000, True) == []
    [restore] = t.update(False, 2000, True)
    assert isinstance(restore, Event)
    assert (restore.kind, restore.category, restore.text) == (
        Kind.RESTORE, Category.POWER, "1号火灾报警控制器 主电 恢复",
    )  # fmt: skip
    quiet = tracker(spec)
    assert quiet.update(False, 0, True) == []


# --- thresholds -----------------------------------------------------------------------


def test_hysteresis_means_no_chatter_around_the_threshold() -> None:
    t = tracker(LEAK)
    values = [290, 301, 299, 305, 280, 300, 271, 310, 270, 269, 299, 300]
    got = events(feed(t, values))
    # trips at 301; 299..271 stay inside the band (clears only below 270); 269 clears
    assert got == [
        (Kind.ALARM, "leakage_alarm"),
        (Kind.RESTORE, "normal"),
        (Kind.ALARM, "leakage_alarm"),
    ]


def test_alarm_text_has_value_and_unit() -> None:
    [alarm] = tracker(LEAK).update(350, 0, True)
    assert isinstance(alarm, Event)
    assert alarm.text == "1号火灾报警控制器 通道1剩余电流 剩余电流报警 350 mA"
    assert (alarm.value, alarm.unit) == (350, "mA")


def test_confirm_time_must_hold_and_restarts_when_the_condition_drops_out() -> None:
    spec = replace(LEAK, thresholds={"alarm": replace(LEAK_ALARM, confirm_s=2.0)})
    t = tracker(spec)
    assert at(t, 350, 10_000) == []  # pending from 10.0 s
    assert at(t, 350, 11_999) == []  # 1.999 s: not yet
    assert at(t, 290, 12_500) == []  # dropped out: the timer restarts
    assert at(t, 350, 13_000) == []  # pending from 13.0 s
    assert at(t, 350, 14_999) == []
    assert events(at(t, 350, 15_000)) == [(Kind.ALARM, "leakage_alarm")]
    assert at(t, 350, 16_000) == []


CONFIRMED_LEAK = replace(LEAK, thresholds={"alarm": replace(LEAK_ALARM, confirm_s=2.0)})


def test_an_ntp_step_forward_does_not_confirm_a_two_poll_spike() -> None:
    t = tracker(CONFIRMED_LEAK)
    assert t.update(350, 1_000, True, mono_s=50.0) == []
    # NTP sets the clock (no RTC: it booted in 1970) between two polls 0.5 s apart
    assert t.update(350, 1_800_000_000_000, True, mono_s=50.5) == []
    assert t.update(100, 1_800_000_000_500, True, mono_s=51.0) == []  # the spike is over


def test_an_ntp_step_back_neither_confirms_early_nor_stalls() -> None:
    t = tracker(CONFIRMED_LEAK)
    assert t.update(350, 1_800_000_000_000, True, mono_s=50.0) == []
    assert t.update(350, 5_000, True, mono_s=51.0) == []  # wall clock stepped back
    [alarm] = t.update(350, 6_000, True, mono_s=52.0)  # 2 s held on the monotonic clock
    assert isinstance(alarm, Event)
    assert (alarm.kind, alarm.ts_ms) == (Kind.ALARM, 6_000)  # reported at the wall-clock time


def test_confirmation_defaults_to_the_monotonic_clock() -> None:
    t = tracker(CONFIRMED_LEAK)
    assert t.update(350, 0, True) == []
    assert t.update(350, 10**12, True) == []  # a huge wall-clock jump, no real time passed


def test_first_poll_over_threshold_alarms_at_once_without_confirm() -> None:
    assert events(tracker(LEAK).update(400, 0, True)) == [(Kind.ALARM, "leakage_alarm")]
    assert events(tracker(LEAK).update(100, 0, True)) == []


# --- 4-20 mA wire break ---------------------------------------------------------------


def test_wire_break_is_a_fault_holds_thresholds_and_marks_quality_bad() -> None:
    spec = replace(PRESSURE, telemetry_s=60.0)
    t = tracker(spec)
    t.update(0.8, 0, True)
    broken = t.update(-0.05, 1000, True)  # 3.5 mA: reads "below 0.1 MPa" but is a broken wire
    assert events(broken) == [(Kind.FAULT, "wire_break")]
    [reading] = [r for r in broken if isinstance(r, Reading)]
    assert reading.quality == "bad"
    assert t.state == "wire_break"
    # 3.8 mA exactly is still inside the 1 % clearing band: no chatter
    assert events(feed(t, [-0.05, -0.02, -0.05, -0.02] * 3, start=2000)) == []
    assert events(feed(t, [-0.05] * 10, start=20_000)) == []  # no low-pressure alarm
    back = t.update(0.8, 40_000, True)
    assert events(back) == [(Kind.RESTORE, "normal")]
    assert [r.quality for r in back if isinstance(r, Reading)] == ["good"]


def test_low_pressure_after_confirm_and_restore_above_band() -> None:
    t = tracker(PRESSURE)
    got = feed(t, [0.8, 0.09, 0.09, 0.09, 0.09, 0.09, 0.09, 0.11, 0.13], step=1000)
    assert events(got) == [(Kind.ALARM, "low_pressure"), (Kind.RESTORE, "normal")]
    alarm = next(r for r in got if isinstance(r, Event))
    assert alarm.ts_ms == 6000  # below from 1 s, confirmed 5 s later
    assert alarm.text == "1号火灾报警控制器 消防管网压力 压力低 0.09 MPa"


# --- telemetry ------------------------------------------------------------------------


def readings(records: list[Record]) -> list[tuple[int, float | int]]:
    return [(r.ts_ms, r.value) for r in records if isinstance(r, Reading)]


def test_telemetry_period_and_deadband() -> None:
    spec = replace(LEAK, thresholds={}, telemetry_s=60.0, deadband=20.0)
    t = tracker(spec)
    out: list[Record] = []
    for ts, value in [(0, 100), (5_000, 110), (10_000, 119), (15_000, 125), (59_000, 125),
                      (75_000, 125), (80_000, 104), (90_000, 103)]:  # fmt: skip
        out.extend(t.update(value, ts, True))
    # first value; 125 moved 25 > 20 from the last SENT 100; 60 s after 15 s; 104 moved 21
    assert readings(out) == [(0, 100), (15_000, 125), (75_000, 125), (80_000, 104)]


def test_telemetry_without_deadband_is_periodic_only() -> None:
    spec = replace(LEAK, thresholds={}, telemetry_s=10.0)
    t = tracker(spec)
    out = feed(t, [1, 500, 2, 900, 3, 4, 5, 6, 7, 8, 9, 10, 11], step=1000)
    assert readings(out) == [(0, 1), (10_000, 9)]


def test_mark_stale_stops_telemetry_and_keeps_states() -> None:
    spec = replace(LEAK, telemetry_s=60.0, deadband=20.0)
    t = tracker(spec)
    assert events(t.update(400, 0, True)) == [(Kind.ALARM, "leakage_alarm")]
    t.mark_stale()
    assert t.state == "stale"
    back = t.update(400, 5_000, True)  # the device answers again, still leaking
    assert events(back) == []  # the alarm is not announced twice
    assert readings(back) == [(5_000, 400)]  # fresh value sent at once
    assert t.state == "leakage_alarm"


# --- a device's points ----------------------------------------------------------------


def test_device_points_decode_blocks_and_report_undecodable_points_once() -> None:
    profile = Profile("t", "t", "", Category.FIRE, {"point3": LOOP_POINT, "ch1_leak": LEAK})
    points = DevicePoints("fap", "1号火灾报警控制器", None, profile)
    good = [Block(ReadRequest(1, Table.HOLDING, 0, 3), (100, 0, 0x0501))]
    assert events(points.update(PollClass.FAST, good, 0, True)) == [(Kind.ALARM, "fire")]
    short = [Block(ReadRequest(1, Table.HOLDING, 0, 2), (100, 0))]  # point3 missing
    first = points.update(PollClass.FAST, short, 1000, True)
    assert events(first) == [(Kind.FAULT, "decode_error")]
    assert first[0].category is Category.SYSTEM  # type: ignore[union-attr]
    assert points.update(PollClass.FAST, short, 2000, True) == []
    assert events(points.update(PollClass.FAST, good, 3000, True)) == [(Kind.RESTORE, "normal")]
    assert points.update(PollClass.SLOW, good, 4000, True) == []  # no slow points
