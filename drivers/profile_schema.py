"""What a profile file may hold, declared once with the checking kit (core/checks.py).

`PROFILE_FILE` is the whole file: `[profile]` and `[[points]]`, each point with its
layout, its meaning (a state table, a flag or thresholds) and its repeat. `OVERRIDES`
is what a device may change of its profile's points (`[devices.points.<id>]` in the
config). drivers/profile.py builds typed specs from what passed; the rules below are
the keys that only make sense together. docs/schemas/profile.schema.json is generated
from these declarations (`profile_json_schema`), and a test keeps it so.

A new section (a protocol mapping, state tables shared between points) is a new
`Key` here built from the kit's parts; its references to points are checked in
drivers/profile.py. This module must never build specs or read files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.checks import (
    IDENT,
    ArrayOf,
    Either,
    Key,
    MapOf,
    Rule,
    Table,
    Value,
    boolean,
    integer,
    json_schema,
    matching,
    number,
    one_of,
    pair,
    shown,
    text,
)
from core.events import Category, Kind, Severity
from drivers.gb_profile import ANALOG_STANDARD, ANALOG_USER
from drivers.types import Direction, PointType, PollClass, WordOrder
from drivers.types import Table as ModbusTable

EVENT_KINDS = (Kind.ALARM, Kind.FAULT, Kind.SUPERVISORY, Kind.STATE)
RESERVED_STATES = frozenset({"normal", "wire_break", "decode_error"})  # agent.points' own

_CATEGORY = one_of(*(c.value for c in Category))
_SEVERITY = one_of(*(s.value for s in Severity))
_KIND = one_of(*(k.value for k in EVENT_KINDS))
# a point id may hold {n}, replaced by the repeat number
POINT_ID = matching(
    re.compile(r"(?:[A-Za-z0-9_-]|\{n\}){1,64}"),
    "an id of 1-64 characters A-Z a-z 0-9 _ - (it goes into MQTT topics; {n} for repeats)",
)
_NAME = text(nonempty=True)


def _code(name: str) -> str | None:
    try:
        int(name)
    except ValueError:
        return f"state codes must be integers, got {shown(name)}"
    return None


STATE_CODE = Value(_code, {"type": "string", "pattern": "^[+-]?[0-9]+$"}, (str,))

# --- the meaning of a point -----------------------------------------------------------


def _normal(t: Mapping[str, Any]) -> bool:
    return bool(t.get("normal", STATE["normal"].default))


STATE = Table(
    {
        "state": Key(IDENT, required=True, doc="machine state name in the feed (fire, fault...)"),
        "label": Key(_NAME, doc="human text, e.g. 火警; default: the state"),
        "normal": Key(boolean, default=False, doc="a resting state: leaving it is an event"),
        "kind": Key(_KIND, doc="required unless normal; forbidden if normal"),
        "category": Key(_CATEGORY, doc="default: the point's category"),
        "severity": Key(_SEVERITY, doc="required unless normal (then info)"),
    },
    rules=(
        Rule("kind", lambda t: _normal(t) and "kind" in t,
             "a normal state has no kind (leaving an abnormal state is a restore)"),
        Rule("kind", lambda t: not _normal(t) and "kind" not in t,
             "required key is missing (unless normal = true)", reads=("normal",)),
        Rule("severity", lambda t: not _normal(t) and "severity" not in t,
             "required key is missing (unless normal = true)", reads=("normal",)),
    ),
)  # fmt: skip

STATES = MapOf(
    STATE,
    names=STATE_CODE,
    min_items=1,
    empty="a state table needs at least one code",
    rules=(
        Rule("", lambda m: bool(m) and not any(_normal(s) for s in m.values()),
             "a state table needs at least one state with normal = true"),
    ),
    doc="integer code -> state; a code not in the table is reported as unknown_<code>",
)  # fmt: skip

FLAG = Table(
    {
        "kind": Key(_KIND, required=True),
        "category": Key(_CATEGORY, doc="default: the point's category"),
        "severity": Key(_SEVERITY, required=True),
        "active_state": Key(IDENT, default="active", doc="state name while the bit is 1"),
        "inactive_state": Key(IDENT, default="normal", doc="state name while the bit is 0"),
        "active_label": Key(_NAME, doc="human text; default: active_state"),
        "inactive_label": Key(_NAME, doc="human text; default: inactive_state"),
    },
    doc="meaning of a bit: raised while the bit is 1",
)


def _one_limit(t: Mapping[str, Any]) -> bool:
    return ("above" in t) == ("below" in t)


THRESHOLD = Table(
    {
        "id": Key(IDENT, required=True, doc="unique per point; devices override threshold.<id>"),
        Direction.ABOVE.value: Key(number(), doc="trips when value >= above"),
        Direction.BELOW.value: Key(number(), doc="trips when value <= below"),
        "hysteresis": Key(number(ge=0), default=0.0, doc="clears only past the limit -/+ this"),
        "confirm_s": Key(number(ge=0), default=0.0, doc="must hold this long before the event"),
        "kind": Key(_KIND, default=Kind.ALARM.value),
        "category": Key(_CATEGORY, doc="default: the point's category"),
        "severity": Key(_SEVERITY, required=True),
        "state": Key(IDENT, doc="state name in the feed; default: the id"),
        "label": Key(_NAME, doc="human text; default: the state"),
    },
    rules=(
        Rule("", _one_limit, "give exactly one of `above` or `below`", reads=("above", "below")),
    ),
    doc="an analog limit with hysteresis and confirmation",
)

# --- the GB/T 26875.3 mapping (drivers/gb_profile.py builds it) -----------------------


def _formula_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f'must be a formula such as "loop * 256 + point", or an integer, got {shown(value)}'
    if isinstance(value, str) and not 0 < len(value) <= 200:
        return "must be 1-200 characters"
    return None


FORMULA = Value(
    _formula_text,
    {"type": ["string", "integer"], "description": "integers, n address bit loop point (unit "
     "for the device), + - * / (integer) % and parentheses"},
    (str, int),
)  # fmt: skip


def _bit_names(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f'must be a list of status bit names such as ["fire"], got {shown(value)}'
    return None


BIT_NAMES = Value(_bit_names, {"type": "array", "items": {"type": "string"}}, (list,))


def _bit_range(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return f"must be [low, high] bit numbers 0..15, got {shown(value)}"
    if not 0 <= value[0] <= value[1] <= 15:
        return f"must be [low, high] with 0 <= low <= high <= 15, got {shown(value)}"
    if value[1] - value[0] > 7:
        return "a component type is one byte: at most 8 bits"
    return None


GB_FIELD = Table(
    {
        "offset": Key(integer(0, 1), default=0, doc="register from the point's address (0 or 1)"),
        "byte": Key(one_of("high", "low"), doc='"high" (bits 8-15) or "low" (bits 0-7)'),
        "bits": Key(Value(_bit_range, {"type": "array", "items": {"type": "integer"}}, (list,)),
                    doc="[low, high] bit numbers, instead of byte"),
        "map": Key(MapOf(integer(0, 255), names=STATE_CODE),
                   doc="device code -> GB component type; default: the code is the GB type"),
        "default": Key(integer(0, 255), default=0,
                       doc="for 0 or a code the map does not list (0 = 通用)"),
    },
    rules=(
        Rule("", lambda t: "byte" in t and "bits" in t, "give byte or bits, not both",
             reads=("byte", "bits")),
    ),
    doc="the component type read at run time from the point's own register",
)  # fmt: skip

GB_ANALOG = Table(
    {
        "type": Key(integer(1, 255), required=True,
                    doc="1-12 the standard's analog types, 128-255 user-defined"),
        "scale": Key(number(nonzero=True),
                     doc="count = round(value * scale); default 1 / the type's step"),
    },
    rules=(
        Rule("type", lambda t: "type" in t and t["type"] not in ANALOG_STANDARD
             and t["type"] not in ANALOG_USER,
             lambda t: f"analog type {t['type']} is reserved: use 1-12 or 128-255"),
    ),
)  # fmt: skip


def _two_addresses(t: Mapping[str, Any]) -> bool:
    return "address" in t and ("zone" in t or "position" in t)


_PLACE_RULE = Rule("address", _two_addresses,
                   "give address (one 32-bit number) or zone/position, not both",
                   reads=("zone", "position"))  # fmt: skip

GB = Table(
    {
        "enabled": Key(boolean, default=True, doc="false: this point is not for the centre"),
        "record": Key(one_of("component", "system"), default="component",
                      doc="component (typeflag 2/3) or the facility system state (typeflag 1)"),
        "system_type": Key(integer(0, 255), doc="GB system type, e.g. 1 火灾报警系统"),
        "component_type": Key(Either((integer(0, 255), GB_FIELD), "a GB code or a table"),
                              doc="a GB component type, or {byte = \"high\"} read at run time"),
        "loop": Key(FORMULA, doc="formula over n, address, bit; default 0"),
        "point": Key(FORMULA, doc="formula over n, address, bit; default n"),
        "zone": Key(FORMULA, doc="component address, first half; default loop"),
        "position": Key(FORMULA, doc="component address, second half; default point"),
        "address": Key(FORMULA, doc="the 4 address bytes as one number, e.g. loop * 256 + point"),
        "status": Key(MapOf(BIT_NAMES, names=IDENT),
                      doc="state name -> status bits; unlisted: alarm fire, fault fault, "
                      "supervisory supervisory"),
        "analog": Key(GB_ANALOG, doc="analog points: the component analog type and scale"),
    },
    rules=(_PLACE_RULE,),
    doc="how this point maps to GB/T 26875.3 (docs/profiles.md)",
)  # fmt: skip

GB_DEVICE = Table(
    {
        "component_type": Key(integer(0, 255), required=True,
                              doc="the device itself, e.g. 1 火灾报警控制器"),
        "zone": Key(FORMULA, doc="formula over unit (the Modbus unit id); default 0"),
        "position": Key(FORMULA, doc="formula over unit; default 0"),
        "address": Key(FORMULA, doc="the 4 address bytes as one number"),
    },
    rules=(_PLACE_RULE,),
    doc="the device's own component: its comm loss is a fault of it",
)  # fmt: skip

PROFILE_GB = GB.extended(
    {"device": Key(GB_DEVICE)},
    doc="GB/T 26875.3 defaults every point inherits, and the device's own component",
)

# --- one [[points]] entry -------------------------------------------------------------


def _table(t: Mapping[str, Any]) -> ModbusTable | None:
    return ModbusTable(t["table"]) if "table" in t else None


def _bits(t: Mapping[str, Any]) -> bool:
    table = _table(t)
    return table is not None and table.is_bits


def _registers(t: Mapping[str, Any]) -> bool:
    table = _table(t)
    return table is not None and not table.is_bits


def point_type(t: Mapping[str, Any]) -> PointType | None:
    """The point's type: as given, or bit for a coil or discrete point."""
    if "type" in t:
        return PointType(t["type"])
    return PointType.BIT if _bits(t) else None


def _is(t: Mapping[str, Any], ptype: PointType) -> bool:
    return point_type(t) is ptype


def _meanings(t: Mapping[str, Any]) -> list[str]:
    return [k for k in ("states", "flag", "thresholds") if k in t]


READ_ONLY = (ModbusTable.DISCRETE, ModbusTable.INPUT)

POINT_RULES = (
    Rule("type", lambda t: _registers(t) and "type" not in t,
         "required key is missing (a holding or input point needs a type)", reads=("table",)),
    Rule("type", lambda t: _bits(t) and t.get("type", "bit") != "bit",
         lambda t: f'a {t["table"]} point is a single bit: type must be "bit"'),
    Rule("bit", lambda t: _bits(t) and "bit" in t,
         lambda t: f'a {t["table"]} point has no bit number: its address is the bit'),
    Rule("bit", lambda t: _registers(t) and _is(t, PointType.BIT) and "bit" not in t,
         'required for type "bit" in a register table (0..15)'),
    Rule("bit", lambda t: _registers(t) and "bit" in t and "type" in t and t["type"] != "bit",
         lambda t: f'only type "bit" takes a bit number, not "{t["type"]}"', reads=("type",)),
    Rule("word_order", lambda t: "word_order" in t and "type" in t
         and PointType(t["type"]).register_count != 2,
         "only 32-bit types (u32, s32, f32) have a word order", reads=("type",)),
    Rule("writable", lambda t: t.value("writable") and _table(t) in READ_ONLY,
         lambda t: f"a {t['table']} point is read-only in Modbus; it cannot be written"),
    Rule("", lambda t: ("raw_range" in t) != ("eng_range" in t),
         "raw_range and eng_range go together", reads=("raw_range", "eng_range")),
    Rule("fault_below", lambda t: "fault_below" in t and "raw_range" not in t,
         "needs raw_range (it is in raw units, e.g. µA)", reads=("raw_range",)),
    Rule("", lambda t: _is(t, PointType.BIT) and ("raw_range" in t or "telemetry_s" in t),
         "a bit point has no ranges or telemetry"),
    Rule("", lambda t: len(_meanings(t)) > 1,
         lambda t: f"give only one of states, flag, thresholds (got {', '.join(_meanings(t))})"),
    Rule("states", lambda t: "states" in t and "type" in t
         and not PointType(t["type"]).is_integer,
         lambda t: f'a state table needs an integer type, not "{t["type"]}"'),
    Rule("flag", lambda t: "flag" in t and point_type(t) not in (None, PointType.BIT),
         lambda t: f'a flag needs type "bit", not "{t["type"]}"'),
    Rule("thresholds", lambda t: "thresholds" in t and _is(t, PointType.BIT),
         "a bit point has no thresholds: use a flag"),
    Rule("id", lambda t: t.value("repeat") > 1 and "{n}" not in t.get("id", "{n}"),
         "a repeated point needs {n} in its id"),
)  # fmt: skip

POINT = Table(
    {
        "id": Key(POINT_ID, required=True, doc="unique in the profile; may hold {n}"),
        "name": Key(_NAME, required=True, doc="human name, may hold {n}; Chinese is fine"),
        "table": Key(one_of(*(t.value for t in ModbusTable)), required=True,
                     doc="coil, discrete, holding, input: FC01, FC02, FC03, FC04"),
        "address": Key(integer(0, 65535), required=True, doc="0-based protocol address"),
        "type": Key(one_of(*(t.value for t in PointType)),
                    doc="how the register(s) are read; required except for coil/discrete (bit)"),
        "bit": Key(integer(0, 15), doc="for type bit in a register table; 0 = least significant"),
        "word_order": Key(one_of(*(w.value for w in WordOrder)), default=WordOrder.BIG.value,
                          doc="32-bit types only: big = high word at the lower address"),
        "scale": Key(number(nonzero=True), default=1.0, doc="value = raw * scale + offset"),
        "offset": Key(number(), default=0.0),
        "unit": Key(_NAME, doc="e.g. mA, °C, %LEL, MPa"),
        "poll": Key(one_of(*(p.value for p in PollClass)), default=PollClass.FAST.value,
                    doc="fast: alarm and status (fast_poll_s), slow: analogs (slow_poll_s)"),
        "category": Key(_CATEGORY, doc="default category of its events; default: the profile's"),
        "states": Key(Either((STATES, IDENT), "a state table or the name of one"),
                      doc="a state table, or the name of one in [state_tables]"),
        "gb": Key(GB),
        "flag": Key(FLAG),
        "thresholds": Key(ArrayOf(THRESHOLD)),
        "telemetry_s": Key(number(ge=0.1), doc="periodic reading on the telemetry lane"),
        "deadband": Key(number(ge=0), doc="send a reading early when it moved more than this"),
        "raw_range": Key(pair, doc="[low, high] raw (scaled) values, with eng_range: 4-20 mA"),
        "eng_range": Key(pair, doc="[low, high] engineering values raw_range maps to"),
        "fault_below": Key(number(), doc="raw units, needs raw_range: below it the loop is broken"),
        "writable": Key(boolean, default=False, doc="holding/coil only; a device may override"),
        "repeat": Key(integer(1, 4096), default=1, doc="expand into this many points ({n})"),
        "first": Key(integer(0, 65535), default=1, doc="the first n"),
        "stride": Key(integer(0, 65535), doc="address step; default: the type's register count"),
        "bit_stride": Key(integer(0, 15), default=0, doc="bit step between repeated points"),
    },
    rules=POINT_RULES,
    doc="one named value of the device, or `repeat` of them",
)  # fmt: skip

HEADER = Table(
    {
        "id": Key(IDENT, doc="optional; if given it must equal the file name without .toml"),
        "name": Key(_NAME, required=True, doc="human name (UTF-8)"),
        "description": Key(text(4000), default=""),
        "category": Key(_CATEGORY, required=True, doc="default category of every point"),
    }
)

PROFILE_FILE = Table(
    {
        "profile": Key(HEADER, required=True),
        "gb": Key(PROFILE_GB),
        "state_tables": Key(
            MapOf(STATES, names=IDENT),
            doc='named state tables that points share: states = "<name>"',
        ),
        "points": Key(ArrayOf(POINT, min_items=1), required=True),
    },
    doc="An alarmgw device profile (docs/profiles.md); its id is the file name without .toml.",
)

# --- what a device may change (the config's [devices.points.<id>]) ----------------------

POINT_OVERRIDE = Table(
    {
        "name": Key(text()),
        "enabled": Key(boolean, default=True),
        "threshold": Key(MapOf(number()), default={}),
        "telemetry_s": Key(number(gt=0, le=86400)),
        "deadband": Key(number(ge=0)),
        "writable": Key(boolean, default=False),
    }
)
OVERRIDES = MapOf(POINT_OVERRIDE)


def profile_json_schema() -> dict[str, Any]:
    """docs/schemas/profile.schema.json, from the declarations above."""
    return json_schema(
        PROFILE_FILE,
        id="urn:alarmgw:profile:v1",
        title="alarmgw device profile (config/profiles/*.toml)",
    )


if __name__ == "__main__":  # python -m drivers.profile_schema > docs/schemas/profile.schema.json
    import json
    import sys

    json.dump(profile_json_schema(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
