"""Local rules on real gpiozero outputs (MockFactory pins) and contact -> event mapping.

The bench: a buzzer on GPIO24 and a status LED on GPIO25, as in
config/example.toml; the example's four inputs map to events exactly as the
feed expects.
"""

from __future__ import annotations

import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from agent.points import PointTracker
from agent.pointstate import ActiveCondition
from agent.rules import (
    CONTACT_POINT,
    AlarmRule,
    LocalRules,
    UplinkLedRule,
    contact_event,
)
from core.errors import ConfigError
from core.events import Category, Event, Identity, Kind, Severity, dumps
from drivers.gpio import ContactChange, GpioBank, Output
from drivers.profile import Direction, PointSpec, PointType, ThresholdSpec, load_profile
from drivers.types import Table
from tests.parts import OutputCfg as Out

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.toml"
DEADLINE_S = 5.0


@dataclass(frozen=True)
class InputCfg:
    """The [[inputs]] keys as the config gives them (kind defaults to "state")."""

    id: str
    name: str
    pin: int
    pull: str
    active: str
    debounce_ms: int
    category: str
    severity: str
    active_state: str
    inactive_state: str
    kind: str = "state"
    role: str = "contact"


def example_inputs() -> dict[str, InputCfg]:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    # [inputs.gb] is the GB mapping's (tests/test_gb_points.py), built by the config loader;
    # the duty answer button is no contact: it raises no contact event (agent/duty.py)
    return {
        i["id"]: InputCfg(**{k: v for k, v in i.items() if k != "gb"})
        for i in raw["inputs"]
        if i.get("role") != "duty_answer"
    }


def alarm(device: str, point: str, category: Category = Category.FIRE, **kw: Any) -> Event:
    return Event(
        kind=Kind.ALARM,
        category=category,
        severity=Severity.CRITICAL,
        state="fire",
        text=f"{device}/{point} 火警",
        device=device,
        point=point,
        **kw,
    )


def restore(device: str, point: str, category: Category = Category.FIRE) -> Event:
    return Event(
        kind=Kind.RESTORE,
        category=category,
        severity=Severity.INFO,
        state="normal",
        text=f"{device}/{point} 恢复",
        device=device,
        point=point,
    )


@pytest.fixture
def buzzer(factory: MockFactory) -> Iterator[Output]:
    out = Output(Out("buzzer", 24, "buzzer"), pin_factory=factory)
    yield out
    out.close()


@pytest.fixture
def led(factory: MockFactory) -> Iterator[Output]:
    out = Output(Out("status-led", 25, "led"), pin_factory=factory)
    yield out
    out.close()


def test_buzzer_sounds_on_alarm_silences_resounds_and_clears(
    factory: MockFactory, buzzer: Output
) -> None:
    pin = factory.pin(24)
    rule = AlarmRule([buzzer])
    assert not pin.state
    rule.on_event(alarm("fap", "zone3"))
    assert pin.state and rule.sounding
    assert rule.silence() is True
    assert not pin.state and rule.silenced
    rule.on_event(alarm("fap", "zone3"))  # the same alarm repeated is not new
    assert not pin.state
    rule.on_event(alarm("gas-1", "lel", Category.GAS))  # a new alarm sounds again
    assert pin.state and not rule.silenced
    rule.on_event(restore("fap", "zone3"))
    assert pin.state  # the gas alarm is still active
    rule.on_event(restore("gas-1", "lel", Category.GAS))
    assert not pin.state and not rule.sounding
    assert rule.active_alarms() == []
    assert [s.state for s in pin.states] == [False, True, False, True, False]


def test_silenced_stays_silent_while_one_of_two_alarms_restores(buzzer: Output) -> None:
    rule = AlarmRule([buzzer])
    rule.on_event(alarm("efd-1", "ch1_leak", Category.ELECTRICAL))
    rule.on_event(alarm("efd-2", "ch2_leak", Category.ELECTRICAL))
    rule.silence()
    rule.on_event(restore("efd-1", "ch1_leak", Category.ELECTRICAL))
    assert not buzzer.is_on and rule.silenced
    # once everything cleared, the next alarm sounds even though we silenced before
    rule.on_event(restore("efd-2", "ch2_leak", Category.ELECTRICAL))
    rule.on_event(alarm("efd-2", "ch2_leak", Category.ELECTRICAL))
    assert buzzer.is_on


def test_silence_with_nothing_active_returns_false_and_does_not_mute_next_alarm(
    buzzer: Output,
) -> None:
    rule = AlarmRule([buzzer])
    assert rule.silence() is False
    rule.on_event(alarm("fap", "zone1"))
    assert buzzer.is_on


@pytest.mark.parametrize("category", [Category.DOOR, Category.TAMPER, Category.WATER])
def test_non_life_safety_alarms_are_listed_but_do_not_sound(
    buzzer: Output, category: Category
) -> None:
    rule = AlarmRule([buzzer])
    rule.on_event(alarm("gpio", "x", category))
    assert not buzzer.is_on
    assert [e.category for e in rule.active_alarms()] == [category]


def test_test_events_and_other_kinds_do_not_sound(buzzer: Output) -> None:
    rule = AlarmRule([buzzer])
    rule.on_event(alarm("fap", "zone1", test=True))
    rule.on_event(
        Event(Kind.FAULT, Category.FIRE, Severity.MINOR, "fault", "回路故障", "fap", "loop1")
    )
    assert not buzzer.is_on
    assert rule.active_alarms() == []


def test_active_alarms_most_severe_then_oldest_first(buzzer: Output) -> None:
    rule = AlarmRule([buzzer])
    door = Event(Kind.ALARM, Category.DOOR, Severity.WARNING, "open", "门", "gpio", "d", ts_ms=1)
    fire_late = alarm("fap", "z2", ts_ms=30)
    fire_early = alarm("fap", "z1", ts_ms=20)
    for e in (door, fire_late, fire_early):
        rule.on_event(e)
    assert [e.point for e in rule.active_alarms()] == ["z1", "z2", "d"]


def test_alarm_rule_is_safe_from_many_threads(buzzer: Output) -> None:
    rule = AlarmRule([buzzer])

    def storm(n: int) -> None:
        for i in range(200):
            rule.on_event(alarm("fap", f"t{n}-{i}"))
            rule.on_event(restore("fap", f"t{n}-{i}"))

    threads = [threading.Thread(target=storm, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rule.active_alarms() == []
    assert not buzzer.is_on


def wait_history(pin: Any, count: int) -> list[bool]:
    """Wait (polling the mock pin's history, with a deadline) for `count` states."""
    deadline = time.monotonic() + DEADLINE_S
    while len(pin.states) < count:
        assert time.monotonic() < deadline, f"LED history stuck at {pin.states}"
        time.sleep(0.005)
    return [s.state for s in pin.states]


def test_led_blinks_while_uplink_down_and_is_steady_when_up(
    factory: MockFactory, led: Output
) -> None:
    pin = factory.pin(25)
    pin.clear_states()
    rule = UplinkLedRule([led], blink_on_s=0.02, blink_off_s=0.02)
    assert not rule.connected
    blinking = wait_history(pin, 6)
    assert blinking[:6] == [False, True, False, True, False, True]
    rule.uplink_changed(True)
    assert pin.state and led.mode == "on"
    steady_len = len(pin.states)
    rule.uplink_changed(True)  # repeated news changes nothing
    rule.uplink_changed(False)
    assert led.mode == "blink"
    wait_history(pin, steady_len + 3)  # toggling again
    rule.uplink_changed(True)
    assert pin.state


def test_local_rules_wire_outputs_by_rule_name(
    factory: MockFactory, buzzer: Output, led: Output
) -> None:
    relay = Output(Out("relay", 26, "relay"), pin_factory=factory)
    try:
        rules = LocalRules(
            [
                ("buzzer", "alarm", buzzer),
                ("status-led", "uplink-down-blink", led),
                ("relay", "none", relay),
            ]
        )
        rules.uplink_changed(True)
        rules.on_event(alarm("fap", "zone1"))
        assert buzzer.is_on and led.mode == "on" and relay.mode == "off"
        assert [e.point for e in rules.active_alarms()] == ["zone1"]
        assert rules.silence() is True
        assert not buzzer.is_on
    finally:
        relay.close()


def test_local_rules_reject_unknown_rule(buzzer: Output) -> None:
    with pytest.raises(ConfigError) as err:
        LocalRules([("buzzer", "alarm-sometimes", buzzer)])
    assert err.value.problems[0].key == "outputs.buzzer.rule"
    assert "alarm-sometimes" in err.value.problems[0].reason


EXPECTED = {
    # id: (active kind, active severity, inactive kind, category, active state, inactive state)
    "exit-door-1": (Kind.STATE, Severity.WARNING, Kind.STATE, Category.DOOR, "open", "closed"),
    "fire-pump": (Kind.STATE, Severity.INFO, Kind.STATE, Category.PUMP, "running", "stopped"),
    "manual-alarm": (
        Kind.ALARM,
        Severity.CRITICAL,
        Kind.RESTORE,
        Category.MANUAL,
        "pressed",
        "released",
    ),
    "tamper": (Kind.ALARM, Severity.WARNING, Kind.RESTORE, Category.TAMPER, "open", "closed"),
}


@pytest.mark.parametrize("input_id", sorted(EXPECTED))
def test_contact_event_for_each_example_input(input_id: str) -> None:
    cfg = example_inputs()[input_id]
    kind_on, sev_on, kind_off, category, state_on, state_off = EXPECTED[input_id]
    on = contact_event(cfg, ContactChange(input_id, True, 1_764_444_001_123), clock_synced=False)
    off = contact_event(cfg, ContactChange(input_id, False, 1_764_444_009_000), clock_synced=True)
    assert (on.kind, on.severity, on.category, on.state, on.value) == (
        kind_on,
        sev_on,
        category,
        state_on,
        True,
    )
    assert (off.kind, off.severity, off.category, off.state, off.value) == (
        kind_off,
        Severity.INFO,
        category,
        state_off,
        False,
    )
    # the input is the device (docs/feed.md: devices and inputs share one id space)
    assert (on.device, on.point, on.point_name) == (input_id, CONTACT_POINT, cfg.name)
    assert (on.ts_ms, on.clock_synced, off.clock_synced) == (1_764_444_001_123, False, True)
    assert cfg.name in on.text and state_on in on.text and cfg.name in off.text
    payload = on.with_seq(1).to_payload(Identity("site", "gw1"))
    assert cfg.name in dumps(payload).decode("utf-8")  # Chinese kept as is


def test_manual_alarm_button_end_to_end_sounds_buzzer(factory: MockFactory) -> None:
    """Press the gateway's button: debounced contact -> ALARM event -> buzzer; release clears."""
    cfgs = example_inputs()
    events: list[Event] = []
    cond = threading.Condition()
    holder: dict[str, LocalRules] = {}

    def on_change(change: ContactChange) -> None:
        event = contact_event(cfgs[change.input_id], change, clock_synced=True)
        with cond:
            events.append(event)
            if "rules" in holder:
                holder["rules"].on_event(event)
            cond.notify_all()

    bank = GpioBank(
        list(cfgs.values()),
        [Out("buzzer", 24, "buzzer"), Out("status-led", 25, "led")],
        on_change,
        pin_factory=factory,
    )
    try:
        with cond:
            holder["rules"] = LocalRules(
                [
                    ("buzzer", "alarm", bank.outputs["buzzer"]),
                    ("status-led", "uplink-down-blink", bank.outputs["status-led"]),
                ]
            )
            initial = list(events)
        buzzer_pin = factory.pin(24)
        factory.pin(22).drive_low()  # press
        with cond:
            assert cond.wait_for(lambda: len(events) > len(initial), DEADLINE_S)
            pressed = events[-1]
        assert (pressed.kind, pressed.category, pressed.state) == (
            Kind.ALARM,
            Category.MANUAL,
            "pressed",
        )
        assert buzzer_pin.state
        factory.pin(22).drive_high()  # release
        with cond:
            assert cond.wait_for(lambda: len(events) > len(initial) + 1, DEADLINE_S)
            released = events[-1]
        assert released.kind is Kind.RESTORE
        assert not buzzer_pin.state
    finally:
        bank.close()
    # at boot every input reported its level once
    assert sorted(e.device for e in initial) == sorted(cfgs)


# --- review fixes: conditions are kept apart, and only a normal state ends a fire ----

FIRE_PANEL = Path(__file__).resolve().parent.parent / "config" / "profiles" / "fire-panel-gst.toml"


def fire_point() -> PointTracker:
    spec = load_profile(FIRE_PANEL).points["point3"]
    return PointTracker("fap", "1号火灾报警控制器", None, spec)


def drive(rule: AlarmRule, tracker: PointTracker, value: float, ts_ms: int) -> list[Event]:
    """One poll through the tracker; every event goes to the rule, as the runtime does."""
    out = [e for e in tracker.update(value, ts_ms, True, ts_ms / 1000) if isinstance(e, Event)]
    for event in out:
        rule.on_event(event)
    return out


@pytest.mark.parametrize(("code", "kind"), [(2, Kind.FAULT), (7, Kind.FAULT)])
def test_a_fire_that_turns_into_fault_or_isolated_keeps_sounding(
    buzzer: Output, code: int, kind: Kind
) -> None:
    rule, point = AlarmRule([buzzer]), fire_point()
    drive(rule, point, 0, 0)
    drive(rule, point, 1, 1000)
    assert buzzer.is_on
    [event] = drive(rule, point, code, 2000)
    assert (event.kind, event.detail) == (kind, {"previous": "fire"})
    assert buzzer.is_on  # no restore came: the fire is still a fire
    assert [e.state for e in rule.active_alarms()] == ["fire"]
    back = drive(rule, point, 0, 3000)
    assert [(e.kind, (e.detail or {}).get("restores")) for e in back] == [
        (Kind.RESTORE, "fire"),
        (Kind.RESTORE, "fault" if code == 2 else "isolated"),
    ]
    assert not buzzer.is_on and rule.active_alarms() == []


GAS_POINT = PointSpec(
    id="conc", name="浓度", table=Table.HOLDING, address=0, type=PointType.U16, scale=0.1,
    unit="%LEL", category=Category.GAS,
    thresholds={
        "low": ThresholdSpec("low", Direction.ABOVE, 25.0, 2.0, 0.0, Kind.ALARM, Category.GAS,
                             Severity.MAJOR, "low_alarm", "低报"),
        "high": ThresholdSpec("high", Direction.ABOVE, 50.0, 2.0, 0.0, Kind.ALARM, Category.GAS,
                              Severity.CRITICAL, "high_alarm", "高报"),
    },
)  # fmt: skip


def test_high_gas_restoring_leaves_the_low_alarm_sounding(buzzer: Output) -> None:
    rule, point = AlarmRule([buzzer]), PointTracker("gas-1", "厨房", None, GAS_POINT)
    for ts, value in enumerate((10, 30, 60), start=1):
        drive(rule, point, value, ts * 1000)
    assert buzzer.is_on
    [restore_high] = drive(rule, point, 45, 4000)
    assert (restore_high.kind, restore_high.state, restore_high.detail) == (
        Kind.RESTORE, "low_alarm", {"restores": "high_alarm"},
    )  # fmt: skip
    assert buzzer.is_on
    assert [e.state for e in rule.active_alarms()] == ["low_alarm"]
    assert drive(rule, point, 30, 5000) == []
    assert buzzer.is_on
    [restore_low] = drive(rule, point, 20, 6000)
    assert (restore_low.state, restore_low.detail) == ("normal", {"restores": "low_alarm"})
    assert not buzzer.is_on


def test_a_rise_from_low_to_high_after_silencing_sounds_again(buzzer: Output) -> None:
    rule, point = AlarmRule([buzzer]), PointTracker("gas-1", "厨房", None, GAS_POINT)
    drive(rule, point, 30, 1000)
    assert rule.silence() is True
    assert not buzzer.is_on
    drive(rule, point, 40, 2000)  # still only low: stays silent
    assert not buzzer.is_on
    drive(rule, point, 60, 3000)  # a new, more severe alarm
    assert buzzer.is_on and not rule.silenced


def test_a_restore_naming_another_condition_leaves_the_alarm(buzzer: Output) -> None:
    rule = AlarmRule([buzzer])
    rule.on_event(alarm("fap", "p3"))
    other = Event(
        Kind.RESTORE, Category.FIRE, Severity.INFO, "normal", "故障恢复", "fap", "p3",
        detail={"restores": "fault"},
    )  # fmt: skip
    rule.on_event(other)
    assert buzzer.is_on
    rule.on_event(restore("fap", "p3"))  # says nothing of what it restores: ends them all
    assert not buzzer.is_on


def test_a_supervisory_contact_is_an_event_not_a_crash() -> None:
    """A sprinkler flow switch: validates in config, must not kill GPIO at runtime."""
    cfg = InputCfg(
        "sprinkler-flow", "喷淋水流指示器", 17, "up", "low", 50, "water", "warning",
        "flowing", "still", kind="supervisory",
    )  # fmt: skip
    on = contact_event(cfg, ContactChange(cfg.id, True, 1000), clock_synced=True)
    off = contact_event(cfg, ContactChange(cfg.id, False, 2000), clock_synced=True)
    assert (on.kind, on.severity, on.state) == (Kind.SUPERVISORY, Severity.WARNING, "flowing")
    assert (off.kind, off.severity, off.state) == (Kind.RESTORE, Severity.INFO, "still")
    assert off.detail == {"pin": 17, "restores": "flowing"}
    assert "监管" in on.text and "恢复" in off.text


def test_a_contact_restore_names_what_it_restores() -> None:
    cfg = example_inputs()["tamper"]
    off = contact_event(cfg, ContactChange(cfg.id, False, 1000, initial=True), clock_synced=True)
    assert off.detail == {"pin": cfg.pin, "initial": True, "restores": cfg.active_state}


def test_the_manual_call_point_carries_its_gb_coordinates_and_a_plain_contact_none() -> None:
    """GB contract: the gateway's manual alarm button pressed is the UITD's manual alarm
    (typeflag 24, flag bit 2), as GB 26875.1 asks of a UITD's button; its release is not
    sent (no [inputs.gb] on it in the example)."""
    cfg = example_inputs()["manual-alarm"]
    assert cfg.role == "manual_call_point"
    on = contact_event(cfg, ContactChange(cfg.id, True, 1000), clock_synced=True)
    off = contact_event(cfg, ContactChange(cfg.id, False, 2000), clock_synced=True)
    assert on.detail is not None and off.detail is not None
    assert on.detail["gb"] == {"tf": 24, "flags": 4, "operator": 0}
    assert "gb" not in off.detail
    door = example_inputs()["exit-door-1"]
    plain = contact_event(door, ContactChange(door.id, True, 1000), clock_synced=True)
    assert plain.detail is not None and "gb" not in plain.detail


def test_alarms_remembered_across_a_restart_sound_until_restored(buzzer: Output) -> None:
    """The first poll after a restart does not raise a remembered fire again: the
    buzzer must learn of it from the store, and the restore must still clear it."""
    fire_cond = ActiveCondition("fire", "fire", Kind.ALARM, Category.FIRE, Severity.CRITICAL, 5)
    fault_cond = ActiveCondition("fault", "fault", Kind.FAULT, Category.FIRE, Severity.MINOR, 6)
    rules = LocalRules([("buzzer", "alarm", buzzer)])
    rules.remember({("fap", "point3"): {"fire": fire_cond, "fault": fault_cond}})
    assert buzzer.is_on
    assert [(e.point, e.state, e.ts_ms) for e in rules.active_alarms()] == [("point3", "fire", 5)]
    rules.on_event(
        Event(
            Kind.RESTORE,
            Category.FIRE,
            Severity.INFO,
            "normal",
            "恢复",
            "fap",
            "point3",
            detail={"restores": "fire"},
        )
    )
    assert not buzzer.is_on and rules.active_alarms() == []
