"""One checking kit (core/checks.py) for the three kinds of file a person writes: the
config, profiles and scenarios read the same way and speak one dialect; the published
profile schema is the kit's own declaration; point overrides are judged in one place."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from agent.config import load_config
from core.checks import (
    BAD,
    IDENT,
    ArrayOf,
    Either,
    Key,
    MapOf,
    Problems,
    Rule,
    Table,
    integer,
    json_schema,
    matching,
    number,
    one_of,
)
from core.errors import ConfigError, ConfigProblem
from drivers.profile import apply_overrides, load_profile
from drivers.profile_schema import PROFILE_FILE, STATES, profile_json_schema
from simulator.scenario import load_scenario
from tests.test_config import good_text
from tests.test_profiles import GOOD_POINT, HEADER

ROOT = Path(__file__).resolve().parent.parent
PROFILE_SCHEMA = ROOT / "docs" / "schemas" / "profile.schema.json"
BUILTIN = ROOT / "config" / "profiles"
SCENARIO = """
[[lines]]
id = "rs485-1"
path = "/tmp/alarmgw-test-none/ttyV0"
  [[lines.devices]]
  id = "gas-1"
  unit_id = 4
  profile = "gas-detector"
"""


def problems_of(load: Callable[[Path], Any], path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.problems


# --- the kit itself -------------------------------------------------------------------

LINE = Table(
    {
        "id": Key(IDENT, required=True),
        "unit": Key(integer(1, 247), required=True),
        "gap": Key(number(gt=0), default=3.5),
        "limit": Key(number(gt=0), default=10.0),
    },
    rules=(Rule("gap", lambda t: t.get("gap", 3.5) >= t.get("limit", 10.0),
                "must be smaller than limit", reads=("limit",)),),
)  # fmt: skip


def test_a_table_keeps_only_valid_keys_and_names_every_problem() -> None:
    out = Problems("f.toml")
    clean = LINE.clean({"id": "a b", "unit": 300, "gap": 1, "colour": 1}, "lines[0]", out)
    assert clean == {"gap": 1}
    assert [str(p) for p in out.items] == [
        "f.toml: lines[0].id: must be an id of 1-64 characters A-Z a-z 0-9 _ - (it goes into "
        'MQTT topics), got "a b"',
        "f.toml: lines[0].unit: must be 1..247, got 300",
        "f.toml: lines[0].colour: unknown key",
    ]
    out = Problems("f.toml")
    LINE.clean({"uint": 3}, "lines[1]", out)
    assert [(p.key, p.reason) for p in out.items] == [
        ("lines[1].uint", 'unknown key (did you mean "unit"?)'),
        ("lines[1].id", "required key is missing"),
        ("lines[1].unit", "required key is missing"),
    ]
    assert LINE.with_defaults({"id": "a"}) == {"id": "a", "unit": None, "gap": 3.5, "limit": 10.0}


def test_a_rule_is_not_applied_where_a_key_already_failed() -> None:
    out = Problems("f")
    LINE.clean({"id": "a", "unit": 1, "gap": 20}, "", out)
    assert [(p.key, p.reason) for p in out.items] == [("gap", "must be smaller than limit")]
    out = Problems("f")  # one mistake (limit), one problem: the rule that reads it is quiet
    LINE.clean({"id": "a", "unit": 1, "gap": 20, "limit": -1}, "", out)
    assert [p.key for p in out.items] == ["limit"]


def test_either_checks_by_the_kind_of_value() -> None:
    field = Table({"register": Key(integer(0, 65535), required=True)})
    shape = Either((integer(0, 255), field), "a fixed code or a register field")
    out = Problems("f")
    assert shape.clean(7, "x", out) == 7
    assert shape.clean({"register": 3}, "x", out) == {"register": 3}
    assert shape.clean("7", "x", out) is BAD
    assert shape.clean({"register": -1}, "y", out) == {}  # a table keeps what passed
    assert [(p.key, p.reason) for p in out.items] == [
        ("x", 'must be a fixed code or a register field, got "7"'),
        ("y.register", "must be 0..65535, got -1"),
    ]


def test_non_finite_numbers_are_refused_by_name() -> None:
    assert number()(float("inf")) == "must be a finite number, got inf"
    assert number()(float("nan")) == "must be a finite number, got nan"
    assert number()(True) == "must be a number, got true"


# A GB/T 26875.3 mapping section as the next issue will want it, declared here only to
# show that such an extension is a declaration: shared state tables referred to by name,
# a component type fixed or read from a register field, an address formula.
FIELD = Table({"table": Key(one_of("holding", "input"), required=True),
               "address": Key(integer(0, 65535), required=True)})  # fmt: skip
GB_POINT = Table(
    {
        "system_type": Key(integer(0, 255), required=True),
        "component_type": Key(Either((integer(0, 255), FIELD), "a code or a register field")),
        "address": Key(matching(__import__("re").compile(r"[a-z0-9_*+ ]{1,64}"), "a formula")),
        "states": Key(Either((IDENT, STATES), "a shared state table's name or a state table")),
    }
)
EXTENDED = PROFILE_FILE.extended(
    {"state_tables": Key(MapOf(STATES, names=IDENT)), "gb26875": Key(MapOf(GB_POINT))}
)


def test_a_new_profile_section_is_a_declaration_checked_and_published_like_the_rest() -> None:
    doc = tomllib.loads(
        HEADER
        + GOOD_POINT
        + """
[state_tables.panel]
0 = { state = "normal", normal = true }
1 = { state = "fire", kind = "alarm", severity = "critical" }
[gb26875.p1]
system_type = 1
component_type = { table = "holding", address = -4 }
address = "loop*256+point"
states = "panel"
[gb26875.p2]
system_type = 1
component_type = 21
states = { 0 = { state = "ok", normal = true } }
colour = 3
"""
    )
    out = Problems("x.toml")
    clean = EXTENDED.clean(doc, "", out)
    assert clean["gb26875"]["p1"]["states"] == "panel"
    assert [(p.key, p.reason) for p in out.items] == [
        ("gb26875.p1.component_type.address", "must be 0..65535, got -4"),
        ("gb26875.p2.colour", "unknown key"),
    ]
    schema = json_schema(EXTENDED, id="urn:x", title="x")
    Draft7Validator.check_schema(schema)
    errors = [e.message for e in Draft7Validator(schema).iter_errors(doc)]
    assert len(errors) == 2, errors


# --- one reader, one dialect, for the three kinds of file -------------------------------

KINDS = {
    "config": (load_config, "alarmgw.toml", good_text),
    "profile": (load_profile, "good.toml", lambda: HEADER + GOOD_POINT),
    "scenario": (load_scenario, "scenario.toml", lambda: SCENARIO),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> tuple[Callable[[Path], Any], str, str]:
    load, name, text = KINDS[request.param]
    return load, name, text()


def test_a_byte_order_mark_is_accepted_in_every_file(
    tmp_path: Path, kind: tuple[Callable[[Path], Any], str, str]
) -> None:
    load, name, text = kind
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'name = "\xe9t\xe9"\n', "not UTF-8 text (byte 0xe9 at offset 8); save it as UTF-8"),
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",
         "not usable: arrays or tables nested hundreds of levels deep"),
        (b"[[lines]\n", "not valid TOML: Expected ']]' at the end of an array declaration "
         "(at line 1, column 8)"),
    ],
    ids=["latin-1", "nested", "broken"],
)  # fmt: skip
def test_a_file_that_is_not_usable_gives_one_problem_never_a_traceback(
    tmp_path: Path, kind: tuple[Callable[[Path], Any], str, str], content: bytes, reason: str
) -> None:
    load, name, _ = kind
    path = tmp_path / name
    path.write_bytes(content)
    assert problems_of(load, path) == [ConfigProblem(str(path), "", reason)]


def test_a_missing_file_or_a_directory_gives_one_problem(
    tmp_path: Path, kind: tuple[Callable[[Path], Any], str, str]
) -> None:
    load, name, _ = kind
    assert problems_of(load, tmp_path / name) == [
        ConfigProblem(str(tmp_path / name), "", "file not found")
    ]
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    assert [p.reason for p in problems_of(load, folder)] == ["is a directory, not a TOML file"]


DIALECT = {  # one key removed, one misspelt: the same words in every kind of file
    "config": (('gateway = "gw-t"\n', ""), ("baudrate = 19200", "baudrat = 19200"),
               "identity.gateway", "lines[0].baudrat", "baudrate"),
    "profile": (('name = "点1"\n', ""), ('type = "u16"', 'tpye = "u16"'),
                "points[0].name", "points[0].tpye", "type"),
    "scenario": (('path = "/tmp/alarmgw-test-none/ttyV0"\n', ""), ("unit_id", "unitid"),
                 "lines[0].path", "lines[0].devices[0].unitid", "unit_id"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DIALECT))
def test_every_kind_of_file_speaks_one_dialect(tmp_path: Path, name: str) -> None:
    load, file_name, text = KINDS[name]
    removed, misspelt, missing_key, typo_key, meant = DIALECT[name]
    path = tmp_path / file_name
    path.write_text(text().replace(*removed).replace(*misspelt), encoding="utf-8")
    found = {p.key: p.reason for p in problems_of(load, path)}
    assert found[missing_key] == "required key is missing"
    assert found[typo_key] == f'unknown key (did you mean "{meant}"?)'


# --- the published profile schema --------------------------------------------------------


def test_the_published_profile_schema_is_the_kits_declaration() -> None:
    """docs/schemas/profile.schema.json is generated: regenerate it with
    `python -m drivers.profile_schema > docs/schemas/profile.schema.json`."""
    published = json.loads(PROFILE_SCHEMA.read_text(encoding="utf-8"))
    assert published == profile_json_schema()
    Draft7Validator.check_schema(published)


def _profiles() -> list[Path]:
    return sorted(BUILTIN.glob("*.toml")) + sorted((ROOT / "tests/configs/profiles").glob("*"))


@pytest.mark.parametrize("path", _profiles(), ids=lambda p: p.name)
def test_every_shipped_profile_is_valid_by_the_published_schema(path: Path) -> None:
    validator = Draft7Validator(profile_json_schema())
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    assert [e.message for e in validator.iter_errors(doc)] == []


SCHEMA_MISTAKES = [  # (old, new): mistakes of one key the editor can show as they are typed
    ('type = "u16"', 'type = "u17"'),
    ("address = 0", "address = 70000"),
    ("address = 0", 'address = "0"'),
    ('name = "点1"\n', ""),
    ('type = "u16"', 'type = "u16"\nadress = 3'),
    ('type = "u16"', 'type = "u16"\nscale = 0'),
    ('type = "u16"', 'type = "u16"\npoll = "often"'),
    ('id = "p1"', 'id = "p 1"'),
    ('type = "u16"', 'type = "u16"\nstates = { x = { state = "ok", normal = true } }'),
    ('type = "u16"', 'type = "u16"\nthresholds = [{ id = "hi", above = 3 }]'),
    ('type = "u16"', 'type = "u16"\nraw_range = [1]'),
]


@pytest.mark.parametrize(("old", "new"), SCHEMA_MISTAKES)
def test_the_schema_refuses_what_the_loader_refuses(tmp_path: Path, old: str, new: str) -> None:
    text = HEADER + GOOD_POINT.replace(old, new)
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    keys = {p.key for p in problems_of(load_profile, path)}
    errors = list(Draft7Validator(profile_json_schema()).iter_errors(tomllib.loads(text)))
    assert errors, keys
    assert all(k.startswith("points[0]") for k in keys), keys


# --- point overrides: judged in one place ---------------------------------------------------

OVERRIDES = [
    ({"ch1_leak": {"threshold": {"pre": 100}}}, "ch1_leak.threshold.pre"),
    ({"ch1_leak": {"threshold": {"alarm": 20}}}, "ch1_leak.threshold.alarm"),
    ({"ch1_lek": {"enabled": False}}, "ch1_lek"),
    ({"fault": {"writable": True}}, "fault.writable"),
    ({"ch1_leak": {"deadband": float("inf")}}, "ch1_leak.deadband"),
]


@pytest.mark.parametrize(("override", "key"), OVERRIDES)
def test_the_config_and_the_runtime_judge_an_override_alike(
    tmp_path: Path, override: dict[str, dict[str, Any]], key: str
) -> None:
    profile = load_profile(ROOT / "tests/configs/profiles/test-leak-2ch.toml")
    with pytest.raises(ConfigError) as info:
        apply_overrides(profile, override)
    [at_runtime] = info.value.problems
    [(point, table)] = override.items()
    lines = "".join(f"  {k} = {_toml(v)}\n" for k, v in table.items())
    text = good_text().replace("  [devices.points.ch1_leak]\n  threshold.alarm = 400\n", "")
    text += '\n[[devices]]\nid = "x"\nline = "tcp-1"\nunit_id = 9\nprofile = "test-leak-2ch"\n'
    text += f"  [devices.points.{point}]\n{lines}"
    path = tmp_path / "alarmgw.toml"
    path.write_text(text, encoding="utf-8")
    [in_config] = problems_of(load_config, path)
    assert (at_runtime.key, in_config.key) == (f"points.{key}", f"devices[2].points.{key}")
    assert at_runtime.reason == in_config.reason


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "inf" if math.isinf(value) else repr(value)


def test_array_of_tables_keeps_positions() -> None:
    out = Problems("f")
    clean = ArrayOf(LINE).clean([{"id": "a", "unit": 1}, 5, {"id": "b", "unit": 2}], "lines", out)
    assert [t.get("id") for t in clean] == ["a", None, "b"]
    assert [(p.key, p.reason) for p in out.items] == [("lines[1]", "must be a table, got 5")]


def test_the_site_language_is_declared_with_its_default(tmp_path: Path) -> None:
    path = tmp_path / "alarmgw.toml"
    path.write_text(good_text(), encoding="utf-8")
    assert load_config(path).site.language == "zh"
    path.write_text(good_text() + '\n[site]\nlanguage = "en"\n', encoding="utf-8")
    assert load_config(path).site.language == "en"
    path.write_text(good_text() + '\n[site]\nlanguage = "fr"\n', encoding="utf-8")
    assert [(p.key, p.reason) for p in problems_of(load_config, path)] == [
        ("site.language", 'must be one of "zh", "en", got "fr"')
    ]
