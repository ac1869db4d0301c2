"""The centre's reads (61, 62, 63, 81) answered from the gateway's live state: the example
config's devices, their trackers fed with register values, no Modbus read."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.field import DeviceRuntime, field_devices
from agent.gb26875.adu import (
    Adu,
    ComponentAddress,
    ComponentAnalog,
    ComponentState,
    DutyCheck,
    ReadComponentAnalog,
    ReadComponentState,
    ReadSystemState,
    ReadUitdState,
    SystemState,
    UitdState,
    decode_adu,
)
from agent.gb26875.codec import GbTime
from agent.gb26875.points import GbPoints
from agent.gb26875.reads import FieldLive, answer_read
from agent.gb26875.tables import ComponentStatus, SystemStatus, UitdStatus
from drivers.plan import plan_device
from drivers.types import Block, PollClass

ROOT = Path(__file__).resolve().parent.parent
EPOCH = 1_764_900_000.0  # a fixed clock: 2025-12-05 (UTC+8 on the wire)
NOW = GbTime.from_epoch(EPOCH)
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


@pytest.fixture
def live(gb: GbPoints, devices: dict[str, DeviceRuntime]) -> FieldLive:
    return FieldLive(gb, devices, clock=lambda: EPOCH)


def feed(dev: DeviceRuntime, poll: PollClass, registers: dict[int, int]) -> None:
    blocks = [
        Block(req, tuple(registers.get(a, 0) for a in range(req.address, req.address + req.count)))
        for req in plan_device(dev.profile, dev.cfg.unit_id, poll, max_gap=8)
    ]
    dev.points.update(poll, blocks, 1000, True, 1.0)


def ask(live: FieldLive, *objects: object) -> Adu | None:
    answer = answer_read(Adu.of(*objects), live)  # type: ignore[arg-type]
    if answer is not None:
        assert decode_adu(answer.encode()) == answer  # it goes on the wire as it is
    return answer


def test_component_state_is_the_whole_word_now(
    live: FieldLive, devices: dict[str, DeviceRuntime]
) -> None:
    feed(devices["fap"], PollClass.FAST, {2: 0x2A01})  # point3: fire, device type 42
    place = ComponentAddress(256 + 3, 0)
    answer = ask(
        live, ReadComponentState(1, 1, place), ReadComponentState(1, 1, ComponentAddress(9, 9))
    )
    assert answer == Adu.of(
        ComponentState(1, 1, 42, place, NORMAL | FIRE, "1号火灾报警控制器 点位3", NOW)
    )  # the unknown component is left out


def test_component_analog_is_the_last_value_read(
    live: FieldLive, devices: dict[str, DeviceRuntime]
) -> None:
    feed(devices["efd-1"], PollClass.FAST, {0: 412})  # ch1 leakage 412 mA
    place = ComponentAddress(0, 1)
    answer = ask(live, ReadComponentAnalog(0, 2, place))
    assert answer == Adu.of(ComponentAnalog(0, 2, 17, place, 128, 412, NOW))
    # a device that stopped answering has no fresh value: deny
    devices["efd-1"].lost = True
    assert ask(live, ReadComponentAnalog(0, 2, place)) is None
    state = ask(live, ReadComponentState(0, 2, place))
    assert state is not None
    assert state.objects[0].status & FAULT  # type: ignore[attr-defined]


def test_system_state_combines_power_bits_and_components(
    live: FieldLive, devices: dict[str, DeviceRuntime]
) -> None:
    feed(devices["fap"], PollClass.FAST, {1000: 0b001, 4: 0x0002})  # mains fault, point5 fault
    answer = ask(live, ReadSystemState(1, 1), ReadSystemState(1, 99))
    word = SystemStatus.NORMAL | SystemStatus.MAIN_POWER_FAULT | SystemStatus.FAULT
    assert answer == Adu.of(SystemState(1, 1, word, NOW))


def test_uitd_state(live: FieldLive, devices: dict[str, DeviceRuntime]) -> None:
    assert ask(live, ReadUitdState()) == Adu.of(UitdState(UitdStatus.NORMAL, NOW))
    feed(devices["gas-1"], PollClass.FAST, {1: 0b001})  # low alarm: the fire bit
    devices["ai-1"].lost = True
    assert ask(live, ReadUitdState()) == Adu.of(
        UitdState(UitdStatus.NORMAL | UitdStatus.FIRE | UitdStatus.FAULT, NOW)
    )


def test_a_devices_own_component_reads_faulty_while_lost(
    live: FieldLive, devices: dict[str, DeviceRuntime]
) -> None:
    panel = ComponentAddress(0, 0)
    assert ask(live, ReadComponentState(1, 1, panel)) == Adu.of(
        ComponentState(1, 1, 1, panel, NORMAL, "1号火灾报警控制器", NOW)
    )
    devices["fap"].lost = True
    answer = ask(live, ReadComponentState(1, 1, panel))
    assert answer is not None and answer.objects[0].status == NORMAL | FAULT  # type: ignore[attr-defined]


def test_what_is_not_a_read_we_answer_is_denied(live: FieldLive) -> None:
    assert ask(live, DutyCheck()) is None
    assert answer_read(b"\x3d\x01\x01\x01", live) is None  # not a decoded ADU
    assert answer_read(Adu(62, ()), live) is None


def test_gpio_contacts_are_read_as_the_centre_was_told_them(
    cfg: Config, gb: GbPoints, devices: dict[str, DeviceRuntime]
) -> None:
    """A read (62) of an [inputs.gb] component answers its word now; the UITD state (81)
    shows fire while the manual call point is pressed (review item 4)."""
    levels = {i.id: False for i in cfg.inputs}
    inputs = {i.id: i for i in cfg.inputs}
    live = FieldLive(
        gb,
        devices,
        clock=lambda: EPOCH,
        contacts=lambda: [(inputs[i], a) for i, a in levels.items()],
    )
    pump = ComponentAddress(0, 1)  # example.toml: fire-pump, system 11 at address 0, type 91
    assert ask(live, ReadComponentState(11, 0, pump)) == Adu.of(
        ComponentState(11, 0, 91, pump, NORMAL, "消防泵运行", NOW)
    )
    levels["fire-pump"] = True
    started = ask(live, ReadComponentState(11, 0, pump))
    assert started is not None
    assert started.objects[0].status == NORMAL | ComponentStatus.STARTED  # type: ignore[attr-defined]
    assert ask(live, ReadUitdState()) == Adu.of(UitdState(UitdStatus.NORMAL, NOW))
    levels["manual-alarm"] = True
    assert ask(live, ReadUitdState()) == Adu.of(UitdState(UitdStatus.NORMAL | UitdStatus.FIRE, NOW))
