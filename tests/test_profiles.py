"""Device profiles: the built-ins load, validation names file and key, overrides,
and golden files pin every built-in profile from register values to events."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.gb26875.points import GbDevice
from agent.points import DevicePoints
from core.errors import ConfigError
from core.events import Category, Event, Kind, Severity
from drivers.codec import decode
from drivers.plan import plan_device
from drivers.profile import (
    Direction,
    PointType,
    apply_overrides,
    find_profiles,
    load_profile,
)
from drivers.types import Block, PollClass, Table

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "config" / "profiles"
GOLDEN = Path(__file__).resolve().parent / "golden"
BUILTIN_IDS = sorted(p.stem for p in BUILTIN.glob("*.toml"))


# --- the built-in profiles ------------------------------------------------------------


def test_every_required_builtin_exists() -> None:
    assert {"fire-panel-gst", "electrical-fire-4ch", "gas-detector", "analog-4-20ma"} <= set(
        BUILTIN_IDS
    )


@pytest.mark.parametrize("profile_id", BUILTIN_IDS)
def test_builtin_profile_loads(profile_id: str) -> None:
    profile = load_profile(BUILTIN / f"{profile_id}.toml")
    assert profile.id == profile_id
    assert profile.points
    assert profile.source.endswith(f"{profile_id}.toml")


def test_fire_panel_repeat_expands_sixteen_loop_points() -> None:
    profile = load_profile(BUILTIN / "fire-panel-gst.toml")
    loop = [p for p in profile.points.values() if p.id.startswith("point")]
    assert [p.id for p in loop] == [f"point{n}" for n in range(1, 17)]
    assert [p.address for p in loop] == list(range(16))
    assert profile.points["point3"].name == "点位3"
    assert profile.points["point3"].type is PointType.U8LO
    states = profile.points["point1"].states
    assert states is not None
    assert states[1].kind is Kind.ALARM and states[1].severity is Severity.CRITICAL
    assert states[7].state == "isolated" and states[7].kind is Kind.FAULT
    assert all(states[c].normal for c in (0, 4, 6, 9))
    assert profile.points["main_power"].category is Category.POWER
    assert profile.points["loop_bus"].flag is not None


def test_electrical_fire_ids_and_thresholds_match_the_example_config() -> None:
    profile = load_profile(BUILTIN / "electrical-fire-4ch.toml")
    assert {"ch1_leak", "ch2_leak", "ch3_temp", "ch4_temp"} <= set(profile.points)
    leak = profile.points["ch1_leak"].thresholds["alarm"]
    assert (leak.direction, leak.value, leak.hysteresis) == (Direction.ABOVE, 300.0, 30.0)
    temp = profile.points["ch3_temp"]
    assert temp.scale == 0.1 and temp.type is PointType.S16
    assert temp.thresholds["alarm"].value == 80.0
    bits = [profile.points[f"ch{n}_device_alarm"] for n in range(1, 5)]
    assert [(b.address, b.bit) for b in bits] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    # The detector's bits are supervisory: only the gateway threshold raises the alarm.
    assert all(b.flag is not None and b.flag.kind is Kind.SUPERVISORY for b in bits)


# --- validation: every problem names the file and the key -----------------------------

GOOD_POINT = """
[[points]]
id = "p1"
name = "点1"
table = "holding"
address = 0
type = "u16"
"""
HEADER = '[profile]\nname = "x"\ncategory = "fire"\n'


def point(*, replace: tuple[str, str] = ("", ""), extra: str = "") -> str:
    """The good point with one edit: a string replaced and/or lines appended."""
    text = GOOD_POINT.replace(*replace) if replace[0] else GOOD_POINT
    return HEADER + text + extra


AS_BIT = ('type = "u16"', 'type = "bit"')
STATE_FIRE = '[points.states.1]\nstate = "fire"\nkind = "alarm"\nseverity = "critical"\n'
STATE_OK = '[points.states.0]\nstate = "ok"\nnormal = true\n'
THRESHOLD = '[[points.thresholds]]\nid = "hi"\nabove = 3\n'
THR0 = "points[0].thresholds[0]"

GB_POINT = "[points.gb]\nsystem_type = 1\ncomponent_type = 25\n"


def gb_point(line: str) -> str:
    """A point's gb table with one line added (or replacing the key it sets)."""
    key = line.partition(" =")[0]
    keep = [k for k in GB_POINT.splitlines()[1:] if k.partition(" =")[0] != key]
    return "\n".join(["[points.gb]", *keep, line]) + "\n"


BAD_PROFILES = [
    (point(replace=AS_BIT, extra="bit = 16\n"), "points[0].bit", "0..15"),
    (point(replace=AS_BIT), "points[0].bit", "required"),
    (point(replace=('type = "u16"', 'type = "u17"')), "points[0].type", "must be one of"),
    (point(extra="adress = 3\n"), "points[0].adress", "unknown key"),
    (point(replace=('name = "点1"\n', "")), "points[0].name", "missing"),
    (point(replace=("address = 0", "address = -1")), "points[0].address", "0..65535"),
    (point(replace=('table = "holding"', 'table = "coil"')), "points[0].type", "bit"),
    (point(extra='word_order = "big"\n'), "points[0].word_order", "32-bit"),
    (point(extra="scale = 0\n"), "points[0].scale", "not be 0"),
    (point(replace=('id = "p1"', 'id = "p 1"')), "points[0].id", "A-Z a-z 0-9"),
    (point(extra="repeat = 3\n"), "points[0].id", "{n}"),
    (point(extra=GOOD_POINT), "points[1].id", "duplicate"),
    (point(extra="raw_range = [4000, 20000]\n"), "points[0]", "eng_range"),
    (point(extra="fault_below = 3800\n"), "points[0].fault_below", "raw_range"),
    (point(replace=("u16", "f32"), extra=STATE_OK), "points[0].states", "integer type"),
    (point(extra=STATE_FIRE), "points[0].states", "normal = true"),
    (point(extra=STATE_OK.replace(".0]", ".x]")), "points[0].states.x", "integers"),
    (
        point(extra=STATE_FIRE.replace('"alarm"', '"restore"') + STATE_OK),
        "points[0].states.1.kind",
        "must be one of",
    ),
    (
        point(extra=THRESHOLD + 'below = 1\nseverity = "major"\n'),
        "points[0].thresholds[0]",
        "exactly one",
    ),
    (
        point(extra=THRESHOLD + 'hysteresis = -1\nseverity = "major"\n'),
        "points[0].thresholds[0].hysteresis",
        "must be at least 0",
    ),
    (point(extra=THRESHOLD), "points[0].thresholds[0].severity", "missing"),
    # non-finite numbers: confirm_s = inf never alarms, hysteresis = inf never restores
    (point(extra="scale = nan\n"), "points[0].scale", "finite"),
    (point(extra="offset = -inf\n"), "points[0].offset", "finite"),
    (point(extra="deadband = inf\n"), "points[0].deadband", "finite"),
    (
        point(extra=THRESHOLD + 'confirm_s = inf\nseverity = "major"\n'),
        THR0 + ".confirm_s",
        "finite",
    ),
    (
        point(extra=THRESHOLD + 'hysteresis = inf\nseverity = "major"\n'),
        THR0 + ".hysteresis",
        "finite",
    ),
    (
        point(extra=THRESHOLD.replace("3", "nan") + 'severity = "major"\n'),
        THR0 + ".above",
        "finite",
    ),
    (
        point(extra="raw_range = [4000, inf]\neng_range = [0, 1.6]\n"),
        "points[0].raw_range",
        "finite",
    ),
    # thresholds that can never clear (or never trip) within what the point can read
    (point(extra=THRESHOLD + 'hysteresis = 3\nseverity = "major"\n'), THR0, "never clear"),
    (
        point(
            extra=THRESHOLD.replace("above = 3", "below = 60000")
            + 'hysteresis = 5535\nseverity = "major"\n'
        ),
        THR0,
        "never clear",
    ),
    (point(extra=THRESHOLD.replace("3", "70000") + 'severity = "major"\n'), THR0, "never trip"),
    (
        point(
            replace=("u16", "s16"),
            extra=THRESHOLD.replace("above = 3", "below = -40000") + 'severity = "major"\n',
        ),
        THR0,
        "never trip",
    ),
    (
        point(
            extra="raw_range = [4000, 20000]\neng_range = [0, 1.6]\n"
            + THRESHOLD.replace("above = 3", "below = 0.1")
            + 'hysteresis = 1.5\nseverity = "major"\n'
        ),
        THR0,
        "never clear",
    ),
    (
        point(
            extra=THRESHOLD
            + 'severity = "major"\n'
            + THRESHOLD.replace('"hi"', '"hi2"').replace("3", "9")
            + 'state = "hi"\nseverity = "major"\n'
        ),
        "points[0].thresholds[1].state",
        "already used",
    ),
    (
        point(replace=AS_BIT, extra='bit = 1\nflag = { kind = "alarm" }\n'),
        "points[0].flag.severity",
        "missing",
    ),
    (
        point(extra='flag = { kind = "alarm", severity = "major" }\n'),
        "points[0].flag",
        'type "bit"',
    ),
    (
        point(replace=('table = "holding"', 'table = "input"'), extra="writable = true\n"),
        "points[0].writable",
        "read-only",
    ),
    (
        HEADER.replace('category = "fire"', 'category = "lava"') + GOOD_POINT,
        "profile.category",
        "must be one of",
    ),
    (HEADER + 'id = "other"\n' + GOOD_POINT, "profile.id", "file name"),
    (HEADER, "points", "at least one"),
    (GOOD_POINT, "profile", "required"),
    ("this is = not toml [", "", "not valid TOML"),
    # the GB/T 26875.3 mapping (drivers/gb_profile.py) and shared state tables
    *[
        (point(extra=gb_point(line)), key, reason)
        for line, key, reason in [
            ('address = "loop * 256 + pint"', "points[0].gb.address", 'unknown name "pint"'),
            ('address = "loop * (256"', "points[0].gb.address", "not closed"),
            ('address = "__import__(1)"', "points[0].gb.address", "unknown name"),
            ('address = "n; 1"', "points[0].gb.address", 'unexpected ";"'),
            ('zone = "n / 0"', "points[0].gb", "division by zero"),
            ('position = "n - 5"', "points[0].gb", "outside 0..65535"),
            ('address = "n"\nzone = "1"', "points[0].gb.address", "not both"),
            ('status = { fire = ["burning"] }', "points[0].gb.status.fire", "not a component"),
            ("analog = { type = 40 }", "points[0].gb.analog.type", "reserved"),
            ("analog = { type = 128 }", "points[0].gb.analog.scale", "user-defined"),
            (
                'component_type = { byte = "high", bits = [8, 15] }',
                "points[0].gb.component_type",
                "not both",
            ),
            ("component_type = { offset = 1 }", "points[0].gb.component_type.offset", "1 register"),
            ("component_type = { bits = [0, 11] }", "points[0].gb.component_type.bits", "8 bits"),
            ("system_type = 300", "points[0].gb.system_type", "0..255"),
            ("colour = 1", "points[0].gb.colour", "unknown key"),
        ]
    ],
    (point(extra="[points.gb]\ncomponent_type = 25\n"), "points[0].gb.system_type", "missing"),
    (
        point(replace=AS_BIT, extra="bit = 0\n" + GB_POINT + "analog = { type = 3 }\n"),
        "points[0].gb.analog",
        "only an analog point",
    ),
    (
        HEADER + '[gb]\nsystem_type = 1\n[gb.device]\naddress = "unit +"\n' + GOOD_POINT,
        "gb.device.address",
        "ends too early",
    ),
    (point(extra='states = "gst"\n'), "points[0].states", 'no state table "gst"'),
    (  # a mistake in [gb] is the profile's, said once, not on every point inheriting it
        HEADER
        + '[gb]\nsystem_type = 1\ncomponent_type = 1\naddress = "pint"\n'
        + GOOD_POINT
        + GOOD_POINT.replace('"p1"', '"p2"'),
        "gb.address",
        'unknown name "pint"',
    ),
    (
        HEADER + '[state_tables.gst.1]\nstate = "fire"\n' + GOOD_POINT,
        "state_tables.gst.1.kind",
        "required",
    ),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_PROFILES)
def test_bad_profile_names_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    problems = info.value.problems
    assert all(p.file == str(path) for p in problems)
    matching = [p for p in problems if p.key == key]
    assert matching, f"no problem on {key!r}; got {[str(p) for p in problems]}"
    assert any(reason in p.reason for p in matching), [str(p) for p in matching]
    assert str(path) in str(info.value)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.toml"
    bad = GOOD_POINT.replace('type = "u16"', 'type = "bit"\nbit = 20') + "colour = 1\n"
    bad2 = GOOD_POINT.replace('id = "p1"', 'id = "p2"').replace("address = 0", "address = 70000")
    path.write_text(HEADER + bad + bad2, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    keys = sorted(p.key for p in info.value.problems)
    assert keys == ["points[0].bit", "points[0].colour", "points[1].address"]


def test_missing_and_non_utf8_files_give_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_profile(tmp_path / "nope.toml")
    assert [p.reason for p in info.value.problems] == ["file not found"]
    latin = tmp_path / "latin.toml"
    latin.write_bytes(HEADER.encode() + b"# \xe9\xe9\n" + GOOD_POINT.encode())
    with pytest.raises(ConfigError) as info:
        load_profile(latin)
    assert len(info.value.problems) == 1


def test_repeat_with_first_stride_and_bit_stride(tmp_path: Path) -> None:
    path = tmp_path / "bits.toml"
    path.write_text(
        HEADER
        + """
[[points]]
id = "z{n}_alarm"
name = "区{n}"
repeat = 3
first = 2
stride = 0
bit_stride = 2
table = "input"
address = 7
type = "bit"
bit = 1
flag = { kind = "alarm", severity = "critical" }
""",
        encoding="utf-8",
    )
    profile = load_profile(path)
    assert [(p.id, p.name, p.address, p.bit) for p in profile.points.values()] == [
        ("z2_alarm", "区2", 7, 1),
        ("z3_alarm", "区3", 7, 3),
        ("z4_alarm", "区4", 7, 5),
    ]


def test_repeat_running_out_of_bits_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bits.toml"
    text = HEADER + GOOD_POINT.replace('id = "p1"', 'id = "p{n}"').replace(
        'type = "u16"', 'type = "bit"\nbit = 12\nrepeat = 5\nstride = 0\nbit_stride = 1'
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert [(p.key, "n=5" in p.reason) for p in info.value.problems] == [("points[0].bit", True)]


# --- finding and overriding -----------------------------------------------------------


def test_find_profiles_earlier_directory_wins(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "gas-detector.toml").write_text(HEADER + GOOD_POINT, encoding="utf-8")
    (site / "my-model.toml").write_text(HEADER + GOOD_POINT, encoding="utf-8")
    found = find_profiles([site, tmp_path / "missing", BUILTIN])
    assert found["gas-detector"] == site / "gas-detector.toml"
    assert found["my-model"] == site / "my-model.toml"
    assert found["fire-panel-gst"] == BUILTIN / "fire-panel-gst.toml"


def test_apply_overrides_rename_disable_threshold() -> None:
    profile = load_profile(BUILTIN / "electrical-fire-4ch.toml")
    override = SimpleNamespace(
        name="厨房回路剩余电流",
        enabled=True,
        threshold={"alarm": 400},
        telemetry_s=30.0,
        deadband=None,
        writable=False,
    )
    device = apply_overrides(profile, {"ch1_leak": override, "ch4_temp": {"enabled": False}})
    leak = device.points["ch1_leak"]
    assert leak.name == "厨房回路剩余电流"
    assert leak.thresholds["alarm"].value == 400.0
    assert leak.thresholds["alarm"].hysteresis == 30.0  # the rest of the threshold is kept
    assert leak.telemetry_s == 30.0 and leak.deadband == 20.0
    assert "ch4_temp" not in device.points
    # the shared profile is untouched
    assert profile.points["ch1_leak"].thresholds["alarm"].value == 300.0
    assert "ch4_temp" in profile.points


def test_apply_overrides_rejects_unknown_point_and_threshold() -> None:
    profile = load_profile(BUILTIN / "electrical-fire-4ch.toml")
    with pytest.raises(ConfigError) as info:
        apply_overrides(profile, {"ch9_leak": {}, "ch1_leak": {"threshold": {"pre": 100}}})
    keys = sorted(p.key for p in info.value.problems)
    assert keys == ["points.ch1_leak.threshold.pre", "points.ch9_leak"]


def test_apply_overrides_refuses_a_threshold_that_could_never_clear() -> None:
    profile = load_profile(BUILTIN / "electrical-fire-4ch.toml")
    # ch1_leak: u16 mA, hysteresis 30: at 20 it would clear only below -10 mA
    with pytest.raises(ConfigError) as info:
        apply_overrides(profile, {"ch1_leak": {"threshold": {"alarm": 20}}})
    [problem] = info.value.problems
    assert problem.key == "points.ch1_leak.threshold.alarm"
    assert "never clear" in problem.reason and "-10" in problem.reason
    assert apply_overrides(profile, {"ch1_leak": {"threshold": {"alarm": 31}}})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "300", True])
def test_apply_overrides_refuses_non_finite_or_non_numbers(bad: Any) -> None:
    profile = load_profile(BUILTIN / "electrical-fire-4ch.toml")
    with pytest.raises(ConfigError) as info:
        apply_overrides(
            profile, {"ch1_leak": {"threshold": {"alarm": bad}}, "ch2_leak": {"deadband": bad}}
        )
    keys = sorted(p.key for p in info.value.problems)
    assert keys == ["points.ch1_leak.threshold.alarm", "points.ch2_leak.deadband"]


def test_example_config_loads_with_these_profiles() -> None:
    config_mod = pytest.importorskip("agent.config")
    config = config_mod.load_config(ROOT / "config" / "example.toml")
    assert set(config.profiles) >= {"fire-panel-gst", "electrical-fire-4ch"}
    efd2 = next(d for d in config.devices if d.id == "efd-2")
    device = apply_overrides(config.profiles[efd2.profile], efd2.points)
    assert device.points["ch1_leak"].thresholds["alarm"].value == 400.0
    assert "ch4_temp" not in device.points


# --- golden files: register values in, typed values and events out ------------------


def _record(record: Any) -> dict[str, Any]:
    if isinstance(record, Event):
        out = {
            "kind": record.kind.value,
            "category": record.category.value,
            "severity": record.severity.value,
            "state": record.state,
            "point": record.point,
            "value": record.value,
            "text": record.text,
        }
        if record.detail:
            out["detail"] = record.detail
        return out
    return {
        "reading": record.point,
        "value": record.value,
        "unit": record.unit,
        "quality": record.quality,
    }


def test_every_builtin_profile_has_a_golden_file() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == BUILTIN_IDS


@pytest.mark.parametrize("profile_id", BUILTIN_IDS)
def test_golden(profile_id: str) -> None:
    golden = json.loads((GOLDEN / f"{profile_id}.json").read_text(encoding="utf-8"))
    profile = load_profile(BUILTIN / f"{profile_id}.toml")
    dev = golden["device"]
    # GB/T 26875.3 coordinates too: system address 1, unit 1 (detail.gb in every event)
    gb = GbDevice(dev["id"], 1, 1, profile)
    points = DevicePoints(dev["id"], dev["name"], dev["location"], profile, gb=gb)
    image: dict[Table, dict[int, int]] = {t: {} for t in Table}
    for i, step in enumerate(golden["steps"]):
        for table, registers in step["set"].items():
            for address, value in registers.items():
                image[Table(table)][int(address)] = int(value, 16)
        poll = PollClass(step["poll"])
        blocks = [
            Block(
                req,
                tuple(
                    image[req.table].get(a, 0) for a in range(req.address, req.address + req.count)
                ),
            )
            for req in plan_device(profile, 1, poll, max_gap=8)
        ]
        where = f"step {i} ({step['note']})"
        values = {s.id: decode(s, blocks) for s in profile.points.values() if s.poll is poll}
        assert values == step["values"], where
        for pid, value in values.items():  # typed: a bool stays a bool, a code an int
            assert type(value) is type(step["values"][pid]) or isinstance(value, float), (
                where,
                pid,
            )
        # the golden timeline drives the monotonic clock too (confirmation timers)
        mono_s = step["ts_ms"] / 1000
        records = [_record(r) for r in points.update(poll, blocks, step["ts_ms"], True, mono_s)]
        assert records == step["records"], where
