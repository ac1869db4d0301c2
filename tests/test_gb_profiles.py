"""The GB/T 26875.3 mapping a profile declares (drivers/gb_profile.py): shared state tables,
[gb] defaults inherited by points, address formulas, a component type read at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.gb26875.tables import ComponentStatus, SystemStatus
from core.errors import ConfigError
from drivers.gb_profile import COMPONENT_BITS, SYSTEM_BITS, Formula, FormulaError, GbField
from drivers.profile import load_profile

PANEL = """
[profile]
name = "panel"
category = "fire"

[gb]
system_type = 1
component_type = { byte = "high", default = 25 }
loop = "address / 240 + 1"
point = "address % 240 + 1"
address = "loop * 256 + point"
status = { isolated = ["isolated"], fire = ["fire", "started"] }

[gb.device]
component_type = 1
position = "unit"

[state_tables.gst]
0 = { state = "normal", normal = true }
1 = { state = "fire", kind = "alarm", severity = "critical" }
7 = { state = "isolated", kind = "fault", severity = "warning" }

[[points]]
id = "a{n}"
name = "A{n}"
repeat = 2
table = "holding"
address = 239
type = "u8lo"
states = "gst"

[[points]]
id = "b"
name = "B"
table = "holding"
address = 500
type = "u8lo"
states = "gst"
gb = { zone = "loop", position = "point", status = { fire = ["fire"] } }

[[points]]
id = "power"
name = "主电"
table = "holding"
address = 1000
type = "bit"
bit = 0
flag = { kind = "fault", severity = "minor", active_state = "power_fault" }
gb = { record = "system", status = { power_fault = ["main_power_fault"] } }

[[points]]
id = "temp"
name = "温度"
table = "holding"
address = 1001
type = "s16"
scale = 0.1
gb = { component_type = 18, analog = { type = 3 } }

[[points]]
id = "spare"
name = "备用"
table = "holding"
address = 1002
type = "u16"
gb = { enabled = false }
"""


@pytest.fixture
def panel(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "panel.toml"
    path.write_text(PANEL, encoding="utf-8")
    return load_profile(path)


def test_points_share_one_named_state_table(panel) -> None:  # type: ignore[no-untyped-def]
    a1, b = panel.points["a1"], panel.points["b"]
    assert a1.states is not None and b.states is not None
    assert a1.states == b.states
    assert a1.states[7].state == "isolated" and a1.states[1].kind.value == "alarm"


def test_loop_and_point_formulas_give_the_address(panel) -> None:  # type: ignore[no-untyped-def]
    a1, a2 = panel.points["a1"].gb, panel.points["a2"].gb
    # address 239: loop 1 point 240; address 240: loop 2 point 1; loop*256+point as one u32
    assert (a1.zone, a1.position) == (1 * 256 + 240, 0)
    assert (a2.zone, a2.position) == (2 * 256 + 1, 0)


def test_a_point_overrides_the_profile_and_merges_status(panel) -> None:  # type: ignore[no-untyped-def]
    b = panel.points["b"].gb
    assert (b.zone, b.position) == (500 // 240 + 1, 500 % 240 + 1)  # zone/position split
    assert b.status == {"isolated": ("isolated",), "fire": ("fire",)}
    assert b.component_type == GbField(offset=0, low=8, high=15, map=None, default=25)


def test_system_record_analog_and_opt_out(panel) -> None:  # type: ignore[no-untyped-def]
    assert panel.points["power"].gb.record == "system"
    temp = panel.points["temp"].gb
    assert temp.component_type == 18 and temp.analog.type == 3 and temp.analog.scale is None
    assert panel.points["spare"].gb is None


def test_device_component(panel) -> None:  # type: ignore[no-untyped-def]
    assert panel.gb_device.component_type == 1
    assert panel.gb_device.address_of(7) == (0, 7)


def test_a_field_reads_the_device_type_byte() -> None:
    high = GbField(offset=0, low=8, high=15, map=None, default=25)
    assert high.component_type(0x2A01) == 42
    assert high.component_type(0x0001) == 25  # no type given: the default
    mapped = GbField(offset=0, low=8, high=15, map={5: 42}, default=25)
    assert mapped.component_type(0x0502) == 42
    assert mapped.component_type(0x0602) == 25


@pytest.mark.parametrize(
    ("text", "env", "value"),
    [
        ("loop * 256 + point", {"loop": 2, "point": 3}, 515),
        ("(n - 1) / 8 + 1", {"n": 9}, 2),
        ("-n + 10 % 4", {"n": 1}, 1),
        ("7", {}, 7),
    ],
)
def test_formulas(text: str, env: dict[str, int], value: int) -> None:
    assert Formula.parse(text, ("n", "loop", "point"))(env) == value


@pytest.mark.parametrize("text", ["", "1 +", "n ** 2", "open('x')", "1.5", "n n"])
def test_formulas_refuse_anything_else(text: str) -> None:
    with pytest.raises(FormulaError):
        Formula.parse(text, ("n",))


def test_bit_names_are_the_standards() -> None:
    def names(flags: type) -> tuple[str, ...]:
        return tuple(
            f.name.lower()
            for f in flags
            if f.name and f.name != "NORMAL"  # type: ignore[attr-defined]
        )

    assert names(ComponentStatus) == COMPONENT_BITS
    assert names(SystemStatus) == SYSTEM_BITS


def test_a_mistake_in_gb_is_said_once_where_it_was_written(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[profile]\nname = "x"\ncategory = "fire"\n'
        '[gb]\nsystem_type = 1\ncomponent_type = 1\naddress = "pint"\n'
        'status = { fire = ["burn"] }\n'
        '[[points]]\nid = "a"\nname = "A"\ntable = "holding"\naddress = 0\ntype = "u16"\n'
        '[[points]]\nid = "b"\nname = "B"\ntable = "holding"\naddress = 1\ntype = "u16"\n'
        'gb = { status = { x = ["nope"] } }\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert sorted(p.key for p in info.value.problems) == [
        "gb.address",
        "gb.status.fire",
        "points[1].gb.status.x",
    ]


GST_TEXT = (
    Path(__file__).resolve().parent.parent / "config/profiles/fire-panel-gst.toml"
).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        # a typo in a state name: that state would never get its bits
        ('feedback = ["feedback"]', 'feedbak = ["feedback"]', "gb.status.feedbak", "no point"),
        # bits on a normal state: it raises no condition, so they would never go out
        ('release = ["started", "feedback"]', 'release = ["started"], cleared = ["fire"]',
         "gb.status.cleared", "normal state"),
        # on a point: a state the point does not have
        ('status = { power_fault = ["main_power_fault"] }',
         'status = { power_falt = ["main_power_fault"] }', "points[1].gb.status.power_falt",
         "no point"),
        # a repeat's formula gives two points of different registers one component
        ('address = "loop * 256 + point"', 'address = "loop * 16 + point"', "points[0].gb",
         "one component"),
    ],
)  # fmt: skip
def test_a_gb_mapping_that_would_mislead_the_centre_is_refused(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    """Review item 5: each was accepted silently."""
    path = tmp_path / "fire-panel-gst.toml"
    text = GST_TEXT.replace(old, new).replace("repeat = 16", "repeat = 300")
    assert old not in text
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert [(p.key, reason in p.reason) for p in info.value.problems] == [(key, True)]


def test_points_of_one_component_may_share_it_from_one_register_or_by_being_written_so(
    tmp_path: Path,
) -> None:
    """Deliberate sharing stays possible: the GST's 300 points from unique addresses, the
    gas detector's bits of one register with its concentration (another entry)."""
    path = tmp_path / "fire-panel-gst.toml"
    path.write_text(GST_TEXT.replace("repeat = 16", "repeat = 300"), encoding="utf-8")
    assert len(load_profile(path).points) == 300 + 3
    gas = load_profile(Path(__file__).resolve().parent.parent / "config/profiles/gas-detector.toml")
    places = {(s.gb.zone, s.gb.position) for s in gas.points.values() if s.gb is not None}
    assert places == {(0, 1)}
