"""Request planning: coalescing rules and wire-time arithmetic checked by hand."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from core.events import Category
from drivers.plan import plan_device, render_plan, wire_time_s
from drivers.profile import PointSpec, PointType, Profile, load_profile
from drivers.types import PollClass, ReadRequest, Table, inter_frame_gap_ms

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "config" / "profiles"


def make_profile(*points: tuple[str, Table, int, str]) -> Profile:
    specs = {}
    for pid, table, address, ptype in points:
        specs[pid] = PointSpec(
            id=pid,
            name=pid,
            table=table,
            address=address,
            type=PointType(ptype),
            bit=0 if ptype == "bit" and not table.is_bits else None,
            poll=PollClass.SLOW if pid.startswith("s") else PollClass.FAST,
        )
    return Profile("t", "t", "", Category.FIRE, specs)


H, INP, C = Table.HOLDING, Table.INPUT, Table.COIL


def test_gap_up_to_max_gap_is_bridged_and_beyond_is_not() -> None:
    profile = make_profile(("a", H, 0, "u16"), ("b", H, 9, "u16"), ("c", H, 19, "u16"))
    # 0 -> 9 leaves 8 unused registers (1..8): bridged; 9 -> 19 leaves 9: not bridged
    assert plan_device(profile, 3, PollClass.FAST, max_gap=8) == [
        ReadRequest(3, H, 0, 10),
        ReadRequest(3, H, 19, 1),
    ]
    assert plan_device(profile, 3, PollClass.FAST, max_gap=0) == [
        ReadRequest(3, H, 0, 1),
        ReadRequest(3, H, 9, 1),
        ReadRequest(3, H, 19, 1),
    ]


def test_32_bit_points_and_shared_registers() -> None:
    profile = make_profile(
        ("a", H, 10, "u32"), ("b", H, 12, "bit"), ("c", H, 12, "u8lo"), ("d", H, 13, "f32")
    )
    assert plan_device(profile, 1, PollClass.FAST, max_gap=0) == [ReadRequest(1, H, 10, 5)]


def test_max_block_splits_long_runs() -> None:
    profile = make_profile(*[(f"p{i}", H, i, "u16") for i in range(300)])
    requests = plan_device(profile, 1, PollClass.FAST, max_gap=8)
    assert [(r.address, r.count) for r in requests] == [(0, 125), (125, 125), (250, 50)]
    small = plan_device(profile, 1, PollClass.FAST, max_gap=8, max_block=100)
    assert [r.count for r in small] == [100, 100, 100]
    assert all(r.count <= 125 for r in plan_device(profile, 1, PollClass.FAST, 8, max_block=999))


def test_a_32_bit_value_is_never_split_across_requests() -> None:
    profile = make_profile(*[(f"p{i}", H, 2 * i, "u32") for i in range(70)])
    requests = plan_device(profile, 1, PollClass.FAST, max_gap=0)
    assert [(r.address, r.count) for r in requests] == [(0, 124), (124, 16)]


def test_tables_and_poll_classes_are_separate() -> None:
    profile = make_profile(
        ("a", H, 0, "u16"), ("b", INP, 1, "u16"), ("s1", H, 1, "u16"), ("c", C, 2, "bit")
    )
    assert plan_device(profile, 1, PollClass.FAST, max_gap=8) == [
        ReadRequest(1, C, 2, 1),
        ReadRequest(1, H, 0, 1),
        ReadRequest(1, INP, 1, 1),
    ]
    assert plan_device(profile, 1, PollClass.SLOW, max_gap=8) == [ReadRequest(1, H, 1, 1)]


def test_bit_tables_allow_2000_bits_and_bridge_gaps_in_bits() -> None:
    profile = make_profile(*[(f"c{i}", C, i * 10, "bit") for i in range(500)])
    requests = plan_device(profile, 1, PollClass.FAST, max_gap=1)  # bridges 16 bits
    assert [(r.address, r.count) for r in requests] == [(0, 1991), (2000, 1991), (4000, 991)]


def test_builtin_fire_panel_is_two_requests() -> None:
    profile = load_profile(BUILTIN / "fire-panel-gst.toml")
    assert plan_device(profile, 1, PollClass.FAST, max_gap=8) == [
        ReadRequest(1, H, 0, 16),
        ReadRequest(1, H, 1000, 1),
    ]
    assert plan_device(profile, 1, PollClass.SLOW, max_gap=8) == []


# --- wire time, against hand arithmetic ------------------------------------------------


def test_wire_time_ten_registers_at_9600_8n1() -> None:
    # request 8 bytes + response 5 + 2*10 = 33 characters of 10 bits at 9600 baud
    # = 34.375 ms, plus two gaps of 3.5 chars (3.6458 ms each) = 41.667 ms
    req = ReadRequest(1, H, 0, 10)
    assert inter_frame_gap_ms(9600) == pytest.approx(3.5 * 10 / 9600 * 1000)
    assert wire_time_s(req, 9600) == pytest.approx(0.041667, abs=1e-6)
    # an explicit gap replaces the 3.5-character default
    assert wire_time_s(req, 9600, gap_ms=5.0) == pytest.approx(0.034375 + 0.010)


def test_wire_time_bits_parity_and_stop_bits() -> None:
    # 20 coils: response 5 + ceil(20/8)=3 -> 16 chars; 8E1 = 11 bits/char at 19200
    # = 9.1667 ms; gaps 3.5 * 11 / 19200 = 2.0052 ms each
    req = ReadRequest(1, C, 0, 20)
    expected = 16 * 11 / 19200 + 2 * (3.5 * 11 / 19200)
    assert wire_time_s(req, 19200, parity="E") == pytest.approx(expected)
    assert expected == pytest.approx(0.013177, abs=1e-6)
    # 8N2 at 115200: 3.5 chars = 0.334 ms, so the 1.75 ms floor applies
    assert inter_frame_gap_ms(115200, stopbits=2) == 1.75
    fast = wire_time_s(ReadRequest(1, H, 0, 1), 115200, stopbits=2)
    assert fast == pytest.approx(15 * 11 / 115200 + 0.0035)


# --- render_plan ----------------------------------------------------------------------


def _line(**kw: object) -> SimpleNamespace:
    base = {
        "id": "rs485-1", "type": "rtu", "port": "/dev/ttyUSB0", "baudrate": 9600,
        "bytesize": 8, "parity": "N", "stopbits": 1, "inter_frame_gap_ms": 3.6458,
        "max_gap": 8, "max_block": 125, "host": None, "tcp_port": None,
    }  # fmt: skip
    base.update(kw)
    return SimpleNamespace(**base)


def _device(dev_id: str, unit: int, profile: str, **kw: object) -> SimpleNamespace:
    base = {
        "id": dev_id, "line": "rs485-1", "unit_id": unit, "profile": profile,
        "fast_poll_s": 1.0, "slow_poll_s": 5.0, "points": {},
    }  # fmt: skip
    base.update(kw)
    return SimpleNamespace(**base)


def _profiles() -> dict[str, Profile]:
    return {p.stem: load_profile(p) for p in BUILTIN.glob("*.toml")}


def test_render_plan_lists_requests_and_cycle_times() -> None:
    config = SimpleNamespace(
        lines=[_line()],
        devices=[_device("fap", 1, "fire-panel-gst"), _device("gas-1", 4, "gas-detector")],
        profiles=_profiles(),
    )
    text = render_plan(config)
    lines = text.splitlines()
    assert lines[0].startswith("line rs485-1: RTU /dev/ttyUSB0 9600 8N1")
    assert "  fap  unit 1  fire-panel-gst" in lines
    assert any("fast  holding  0..15" in ln and "(16)" in ln for ln in lines)
    # fap fast: 16 regs (8+37 chars) + 1 reg (8+7) ; gas fast: 1 reg => 75 chars
    fast_ms = (45 + 15 + 15) * 10 / 9600 * 1000 + 3 * 2 * 3.6458
    assert f"fast cycle {fast_ms:7.1f} ms" in text
    assert "WARNING" not in text
    assert all(len(ln) <= 80 for ln in lines)


def test_render_plan_warns_when_a_cycle_does_not_fit() -> None:
    devices = [_device(f"fap{u}", u, "fire-panel-gst", fast_poll_s=0.5) for u in range(1, 11)]
    config = SimpleNamespace(lines=[_line(baudrate=1200)], devices=devices, profiles=_profiles())
    text = render_plan(config)
    assert "WARNING: the fast cycle" in text
    assert "over-subscribed" in text


def test_render_plan_skips_disabled_points_and_handles_tcp() -> None:
    devices = [
        _device("efd", 2, "electrical-fire-4ch", points={"ch4_temp": {"enabled": False}}),
        _device("tcp-gas", 1, "gas-detector", line="tcp-1"),
    ]
    tcp = _line(id="tcp-1", type="tcp", host="10.0.0.5", tcp_port=502)
    config = SimpleNamespace(lines=[_line(), tcp], devices=devices, profiles=_profiles())
    text = render_plan(config)
    assert "holding  0..5" in text  # ch4_temp (address 3) is disabled but inside the block
    assert "line tcp-1: Modbus TCP 10.0.0.5:502" in text
    assert "tcp-gas  unit 1  gas-detector" in text


def test_render_plan_of_the_example_config() -> None:
    config_mod = pytest.importorskip("agent.config")
    config = config_mod.load_config(ROOT / "config" / "example.toml")
    text = render_plan(config)
    for dev in ("fap", "efd-1", "efd-2", "gas-1", "ai-1"):
        assert f"  {dev}  unit" in text
    assert "WARNING" not in text
