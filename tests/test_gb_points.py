"""Events carry their GB/T 26875.3 coordinates (detail["gb"], docs/feed.md section 3), and
GbPoints gives the static coordinates and readings' analogs, from the example config."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.field import DeviceRuntime, comm_event, field_devices
from agent.gb26875.points import GbDevice, GbPoints
from agent.gb26875.tables import ComponentStatus, SystemStatus
from agent.points import DevicePoints
from agent.rules import contact_event
from agent.texts import CHINESE
from core.errors import ConfigError
from core.events import Event, Kind, Reading
from drivers.gpio import ContactChange
from drivers.line import CommChange
from drivers.plan import plan_device
from drivers.profile import load_profile
from drivers.types import Block, PollClass

ROOT = Path(__file__).resolve().parent.parent
GST = ROOT / "config" / "profiles" / "fire-panel-gst.toml"
NORMAL, FIRE, FAULT = ComponentStatus.NORMAL, ComponentStatus.FIRE, ComponentStatus.FAULT


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(ROOT / "config" / "example.toml")


@pytest.fixture
def gb(cfg: Config) -> GbPoints:
    return GbPoints.from_config(cfg.devices, cfg.profiles)


@pytest.fixture
def devices(cfg: Config, gb: GbPoints) -> dict[str, DeviceRuntime]:
    return field_devices(cfg.devices, cfg.profiles, {}, gb=gb)


def poll(points: DevicePoints, profile_path: Path, registers: dict[int, int]) -> list[Event]:
    profile = load_profile(profile_path)
    blocks = [
        Block(req, tuple(registers.get(a, 0) for a in range(req.address, req.address + req.count)))
        for req in plan_device(profile, 1, PollClass.FAST, max_gap=8)
    ]
    records = points.update(PollClass.FAST, blocks, 1000, True, 1.0)
    return [r for r in records if isinstance(r, Event)]


def test_the_gst_high_byte_is_the_component_type_at_run_time() -> None:
    profile = load_profile(GST)
    gb = GbDevice("fap", 3, 1, profile)
    points = DevicePoints("fap", "panel", None, profile, gb=gb)
    # point1: device type 0x28 (40 感烟) in fire; point2: no type (0) in fault
    events = poll(points, GST, {0: 0x2801, 1: 0x0002})
    by_point = {e.point: e.detail["gb"] for e in events if e.detail}
    assert by_point["point1"] == {
        "tf": 2, "sys_type": 1, "sys_addr": 3, "comp_type": 40, "zone": 256 + 1, "pos": 0,
        "status": NORMAL | FIRE,
    }  # fmt: skip
    assert by_point["point2"]["comp_type"] == 25  # the profile's default for 0
    assert by_point["point2"]["status"] == NORMAL | FAULT
    # the static coordinates follow what the panel reported last
    assert gb.coordinates("point1") == {
        "tf": 2, "sys_type": 1, "sys_addr": 3, "comp_type": 40, "zone": 257, "pos": 0,
    }  # fmt: skip
    # the type byte changes (a detector swapped): the next event says so
    events = poll(points, GST, {0: 0x2A00, 1: 0x0002})
    assert [e.detail["gb"]["comp_type"] for e in events if e.point == "point1"] == [42]


def test_system_points_share_one_system_status_word() -> None:
    profile = load_profile(GST)
    points = DevicePoints("fap", "panel", None, profile, gb=GbDevice("fap", 1, 1, profile))
    events = poll(points, GST, {1000: 0b011})  # main and backup power faults
    words = {e.point: e.detail["gb"] for e in events if e.detail}
    both = SystemStatus.NORMAL | SystemStatus.MAIN_POWER_FAULT | SystemStatus.BACKUP_POWER_FAULT
    assert words["main_power"] == {"tf": 1, "sys_type": 1, "sys_addr": 1, "status": both}
    assert words["backup_power"]["status"] == both


def test_comm_loss_is_a_fault_of_the_devices_own_component(
    devices: dict[str, DeviceRuntime],
) -> None:
    fap = devices["fap"]
    lost = comm_event(fap, CommChange("fap", True, "timeout", 3, 1), True, CHINESE)
    assert lost.kind is Kind.COMM_LOSS
    assert lost.detail is not None and lost.detail["reason"] == "timeout"
    assert lost.detail["gb"] == {
        "tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 1, "zone": 0, "pos": 0,
        "status": NORMAL | FAULT,
    }  # fmt: skip
    back = comm_event(fap, CommChange("fap", False, "", 0, 2), True, CHINESE)
    assert back.detail is not None and back.detail["gb"]["status"] == NORMAL
    # the gas detector is one component: its comm loss is a fault of that component
    gas = comm_event(devices["gas-1"], CommChange("gas-1", True, "t", 3, 1), True, CHINESE)
    assert gas.detail is not None
    assert (gas.detail["gb"]["comp_type"], gas.detail["gb"]["pos"]) == (11, 1)


def test_a_gas_alarm_stays_in_the_word_across_a_comm_loss_and_restore(
    devices: dict[str, DeviceRuntime],
) -> None:
    """The gas detector's [gb.device] is the component of its points: the comm words are
    that component's whole word, so the centre never reads "normal" while the high alarm
    stands (review fix-b item 1)."""
    gas = devices["gas-1"]
    profile = ROOT / "config" / "profiles" / "gas-detector.toml"
    poll(gas.points, profile, {1: 0})
    alarm = [e for e in poll(gas.points, profile, {1: 0b10}) if e.point == "high_alarm"]
    assert alarm[0].detail is not None and alarm[0].detail["gb"]["status"] == NORMAL | FIRE
    lost = comm_event(gas, CommChange("gas-1", True, "timeout", 3, 2), True, CHINESE)
    assert lost.detail is not None and lost.detail["gb"]["status"] == NORMAL | FIRE | FAULT
    back = comm_event(gas, CommChange("gas-1", False, "", 0, 3), True, CHINESE)
    assert back.detail is not None and back.detail["gb"]["status"] == NORMAL | FIRE
    # a device whose own component is apart from its points keeps the plain fault word
    fap = comm_event(devices["fap"], CommChange("fap", False, "", 0, 4), True, CHINESE)
    assert fap.detail is not None and fap.detail["gb"]["status"] == NORMAL


def test_system_addresses_default_to_the_device_position(gb: GbPoints) -> None:
    addresses = {d: c["sys_addr"] for d, c in _first_coords(gb).items()}
    assert addresses == {"fap": 1, "efd-1": 2, "efd-2": 3, "gas-1": 4, "ai-1": 5}


def test_readings_become_component_analogs(gb: GbPoints) -> None:
    def analog(device: str, point: str, value: float, quality: str = "good") -> object:
        reading = Reading(device=device, point=point, value=value, unit=None, quality=quality)
        return gb.analog(reading)

    # residual current: user-defined type 128, 1 mA per count
    assert analog("efd-1", "ch1_leak", 350) == {
        "tf": 3, "sys_type": 0, "sys_addr": 2, "comp_type": 17, "zone": 0, "pos": 1,
        "analog_type": 128, "value": 350,
    }  # fmt: skip
    temp = analog("efd-1", "ch3_temp", 81.5)
    assert isinstance(temp, dict) and (temp["analog_type"], temp["value"]) == (3, 815)
    gas = analog("gas-1", "concentration", 25.3)
    assert isinstance(gas, dict) and (gas["analog_type"], gas["value"]) == (6, 253)
    pressure = analog("ai-1", "ch1_pressure", 0.35)  # 0.35 MPa = 350 kPa = 3500 x 0.1 kPa
    assert isinstance(pressure, dict) and (pressure["analog_type"], pressure["value"]) == (5, 3500)
    level = analog("ai-1", "ch2_level", 3.21)
    assert isinstance(level, dict) and (level["analog_type"], level["value"]) == (2, 321)
    assert analog("ai-1", "ch1_pressure", 9.9) is not None  # 99000 saturates
    assert analog("ai-1", "ch1_pressure", 9.9)["value"] == 32767  # type: ignore[index]
    assert analog("ai-1", "ch2_level", 0.0, quality="bad") is None  # a broken loop
    assert analog("fap", "point1", 1) is None  # not an analog
    assert analog("nobody", "x", 1) is None


def test_a_point_without_a_mapping_has_no_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(
        '[profile]\nname = "x"\ncategory = "fire"\n[[points]]\nid = "a"\nname = "A"\n'
        'table = "holding"\naddress = 0\ntype = "u8lo"\n'
        'states = { 0 = { state = "ok", normal = true }, 1 = { state = "fire", '
        'kind = "alarm", severity = "critical" } }\n',
        encoding="utf-8",
    )
    profile = load_profile(path)
    gb = GbDevice("d", 1, 1, profile)
    points = DevicePoints("d", "D", None, profile, gb=gb)
    events = poll(points, path, {0: 1})
    assert [e.state for e in events] == ["fire"]
    assert events[0].detail is None  # not for the centre
    assert gb.coordinates("a") is None
    lost = gb.comm(events[0])
    assert lost.detail is None


def _first_coords(gb: GbPoints) -> dict[str, dict[str, int]]:
    out = {}
    for device_id, dev in gb.devices.items():
        pid = next(iter(dev.specs))
        coords = gb.coordinates(device_id, pid)
        assert coords is not None
        out[device_id] = coords
    return out


def test_the_gateways_manual_alarm_button_is_a_uitd_manual_alarm(cfg: Config) -> None:
    button = next(i for i in cfg.inputs if i.id == "manual-alarm")
    pressed = contact_event(button, ContactChange(button.id, True, 1000), True)
    assert pressed.detail is not None
    assert pressed.detail["gb"] == {"tf": 24, "flags": 4, "operator": 0}
    released = contact_event(button, ContactChange(button.id, False, 2000), True)
    assert released.detail is not None and "gb" not in released.detail


def test_a_contact_with_a_gb_table_is_a_component(cfg: Config) -> None:
    pump = next(i for i in cfg.inputs if i.id == "fire-pump")
    running = contact_event(pump, ContactChange(pump.id, True, 1000), True)
    assert running.detail is not None
    assert running.detail["gb"] == {
        "tf": 2, "sys_type": 11, "sys_addr": 0, "comp_type": 91, "zone": 0, "pos": 1,
        "status": NORMAL | ComponentStatus.STARTED,
    }  # fmt: skip
    stopped = contact_event(pump, ContactChange(pump.id, False, 2000), True)
    assert stopped.detail is not None and stopped.detail["gb"]["status"] == NORMAL
    door = next(i for i in cfg.inputs if i.id == "exit-door-1")
    opened = contact_event(door, ContactChange(door.id, True, 1000), True)
    assert opened.detail is not None and "gb" not in opened.detail  # not for the centre


def test_a_contacts_gb_table_is_checked(tmp_path: Path) -> None:
    text = (ROOT / "config" / "example.toml").read_text(encoding="utf-8")
    text = text.replace('status = ["started"]', 'status = ["running"]')
    path = tmp_path / "alarmgw.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(p.key, "not a component status bit" in p.reason) for p in info.value.problems] == [
        ("inputs[1].gb.status", True)
    ]
