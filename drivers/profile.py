"""Device profiles as data: load and validate a profile TOML into typed specs.

A profile says where each named point of a device model lives (table, address,
type, bit, scaling) and what its values mean (a state table, a flag, analog
thresholds, telemetry). The agent and the simulator read the same files, so
they cannot drift. The schema is written down in docs/profiles.md.

This module must never accept a doubtful profile: every problem found is
reported at once as a ConfigError naming the file and the key (for example
`points[3].bit`), and start-up stops. It never talks to a device.
"""

from __future__ import annotations

import enum
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError, ConfigProblem
from core.events import Category, Kind, Severity
from drivers.types import PollClass, Table


class PointType(enum.StrEnum):
    """How the raw register(s) or bit of a point are read."""

    BIT = "bit"  # one bit: a coil/discrete input, or bit `bit` of a register
    U8LO = "u8lo"  # low byte of a register (status codes of many panels)
    U8HI = "u8hi"  # high byte of a register
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"  # two registers, see word_order
    S32 = "s32"
    F32 = "f32"  # IEEE 754 single, two registers

    @property
    def register_count(self) -> int:
        return 2 if self in (PointType.U32, PointType.S32, PointType.F32) else 1

    @property
    def is_integer(self) -> bool:
        return self not in (PointType.BIT, PointType.F32)


class WordOrder(enum.StrEnum):
    BIG = "big"  # high word at the lower address (Modbus convention)
    LITTLE = "little"  # low word first ("word swapped"), seen on many meters


class Direction(enum.StrEnum):
    ABOVE = "above"  # trips when value >= threshold
    BELOW = "below"  # trips when value <= threshold


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One code of a state table. Normal states carry no kind: leaving an abnormal
    state for a normal one produces a restore."""

    state: str
    label: str
    normal: bool
    kind: Kind | None
    category: Category
    severity: Severity


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """Meaning of a bit point: raised while the bit is 1."""

    kind: Kind
    category: Category
    severity: Severity
    active_state: str
    inactive_state: str
    active_label: str
    inactive_label: str


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    """An analog limit: trips at `value`, clears only past `value -/+ hysteresis`,
    and must hold for `confirm_s` before it raises."""

    id: str
    direction: Direction
    value: float
    hysteresis: float
    confirm_s: float
    kind: Kind
    category: Category
    severity: Severity
    state: str
    label: str


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One named value of a device model, fully resolved (repeat already expanded)."""

    id: str
    name: str
    table: Table
    address: int
    type: PointType
    bit: int | None = None
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    poll: PollClass = PollClass.FAST
    states: dict[int, StateSpec] | None = None
    flag: FlagSpec | None = None
    thresholds: dict[str, ThresholdSpec] = field(default_factory=dict)
    telemetry_s: float | None = None
    deadband: float | None = None
    raw_range: tuple[float, float] | None = None
    eng_range: tuple[float, float] | None = None
    fault_below: float | None = None
    writable: bool = False
    category: Category = Category.SYSTEM  # default category of this point's events

    @property
    def register_count(self) -> int:
        """Registers (or bits) this point occupies from `address`."""
        return 1 if self.table.is_bits else self.type.register_count


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    name: str
    description: str
    category: Category
    points: dict[str, PointSpec]
    source: str = ""  # the file it was loaded from, for error messages


# --- reading raw TOML tables, collecting problems instead of stopping at the first ---

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # ids go into MQTT topics and the feed
_EVENT_KINDS = (Kind.ALARM, Kind.FAULT, Kind.SUPERVISORY, Kind.STATE)
_E = TypeVar("_E", bound=enum.StrEnum)
_MISSING: Any = object()


class _Problems:
    """Every problem of one file, in the order found."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append(ConfigProblem(self.file, key, reason))


class _Reader:
    """Typed access to one TOML table; a wrong value becomes a problem and None."""

    def __init__(self, raw: Mapping[str, Any], where: str, probs: _Problems) -> None:
        self.raw = raw
        self.where = where
        self.probs = probs

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def problem(self, name: str, reason: str) -> None:
        self.probs.add(self.key(name), reason)

    def has(self, name: str) -> bool:
        return name in self.raw

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed_set = set(allowed)
        for name in self.raw:
            if name not in allowed_set:
                self.problem(name, f"unknown key (allowed: {', '.join(sorted(allowed_set))})")

    def _fetch(self, name: str, default: Any) -> Any:
        if name in self.raw:
            return self.raw[name]
        if default is _MISSING:
            self.problem(name, "required key is missing")
        return _MISSING

    def text(self, name: str, default: Any = _MISSING) -> Any:
        value = self._fetch(name, default)
        if value is _MISSING:
            return None if default is _MISSING else default
        if not isinstance(value, str) or not value.strip():
            self.problem(name, "must be a non-empty string")
            return None
        return value

    def ident(self, name: str) -> str | None:
        value = self.text(name)
        if not isinstance(value, str):
            return None
        if not _ID_RE.match(value.replace("{n}", "1")):
            self.problem(name, f"{value!r} must match [A-Za-z0-9_-]{{1,64}} (ids go into topics)")
            return None
        return value

    def number(self, name: str, default: Any = _MISSING, *, minimum: float | None = None) -> Any:
        value = self._fetch(name, default)
        if value is _MISSING:
            return None if default is _MISSING else default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(name, f"must be a number, not {type(value).__name__}")
            return None
        if not math.isfinite(value):
            self.problem(name, f"must be a finite number, not {value}")
            return None
        if minimum is not None and value < minimum:
            self.problem(name, f"must be >= {minimum:g}, not {value:g}")
            return None
        return float(value)

    def integer(self, name: str, default: Any = _MISSING, *, lo: int = 0, hi: int = 65535) -> Any:
        value = self._fetch(name, default)
        if value is _MISSING:
            return None if default is _MISSING else default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, f"must be an integer, not {type(value).__name__}")
            return None
        if not lo <= value <= hi:
            self.problem(name, f"must be in {lo}..{hi}, not {value}")
            return None
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            self.problem(name, "must be true or false")
            return default
        return value

    def choice(self, name: str, enum_type: type[_E], default: _E | None = None) -> _E | None:
        value = self._fetch(name, _MISSING if default is None else default)
        if value is _MISSING:
            return default
        if isinstance(value, enum_type):
            return value
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum_type)
            self.problem(name, f"{value!r} is not one of: {allowed}")
            return None

    def pair(self, name: str) -> tuple[float, float] | None:
        value = self.raw.get(name)
        if value is None:
            return None
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and all(math.isfinite(v) for v in value)
        )
        if not ok:
            self.problem(name, "must be a list of two finite numbers [low, high]")
            return None
        low, high = float(value[0]), float(value[1])
        if low == high:
            self.problem(name, "the two ends must differ")
            return None
        return (low, high)

    def sub(self, name: str) -> _Reader | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(name, "must be a table")
            return None
        return _Reader(value, self.key(name), self.probs)


# --- the meaning of a point: state tables, flags, thresholds ------------------------


def _event_kind(r: _Reader, name: str = "kind", default: Kind | None = None) -> Kind | None:
    kind = r.choice(name, Kind, default)
    if kind is not None and kind not in _EVENT_KINDS:
        allowed = ", ".join(k.value for k in _EVENT_KINDS)
        r.problem(name, f"{kind.value!r} is not one of: {allowed}")
        return None
    return kind


def _parse_state(r: _Reader, category: Category) -> StateSpec | None:
    r.check_keys(("state", "label", "normal", "kind", "category", "severity"))
    state = r.ident("state")
    normal = r.flag("normal", default=False)
    if normal:
        kind = None
        if r.has("kind"):
            r.problem("kind", "a normal state has no kind (leaving an abnormal state is a restore)")
        severity = r.choice("severity", Severity, Severity.INFO)
    else:
        kind = _event_kind(r)
        severity = r.choice("severity", Severity)
    cat = r.choice("category", Category, category)
    label = r.text("label", state)
    if state is None or cat is None or severity is None or (not normal and kind is None):
        return None
    return StateSpec(state, label or state, normal, kind, cat, severity)


def _parse_states(r: _Reader, category: Category) -> dict[int, StateSpec] | None:
    states: dict[int, StateSpec] = {}
    for code_text in r.raw:
        try:
            code = int(code_text)
        except ValueError:
            r.problem(code_text, "state codes must be integers")
            continue
        sub = r.sub(code_text)
        if sub is None:
            r.problem(code_text, "must be a table with at least `state`")
            continue
        spec = _parse_state(sub, category)
        if spec is not None:
            states[code] = spec
    if not r.raw:
        r.probs.add(r.where, "a state table needs at least one code")
    elif states and not any(s.normal for s in states.values()):
        r.probs.add(r.where, "a state table needs at least one state with normal = true")
    return states


def _parse_flag(r: _Reader, category: Category) -> FlagSpec | None:
    r.check_keys(
        (
            "kind",
            "category",
            "severity",
            "active_state",
            "inactive_state",
            "active_label",
            "inactive_label",
        )
    )
    kind = _event_kind(r)
    cat = r.choice("category", Category, category)
    severity = r.choice("severity", Severity)
    active = r.ident("active_state") if r.has("active_state") else "active"
    inactive = r.ident("inactive_state") if r.has("inactive_state") else "normal"
    active_label = r.text("active_label", active)
    inactive_label = r.text("inactive_label", inactive)
    if None in (kind, cat, severity, active, inactive, active_label, inactive_label):
        return None
    return FlagSpec(kind, cat, severity, active, inactive, active_label, inactive_label)  # type: ignore[arg-type]


_THRESHOLD_KEYS = (
    "id",
    "above",
    "below",
    "hysteresis",
    "confirm_s",
    "kind",
    "category",
    "severity",
    "state",
    "label",
)


def _parse_threshold(r: _Reader, category: Category) -> ThresholdSpec | None:
    r.check_keys(_THRESHOLD_KEYS)
    tid = r.ident("id")
    if r.has("above") == r.has("below"):
        r.probs.add(r.where, "give exactly one of `above` or `below`")
        return None
    direction = Direction.ABOVE if r.has("above") else Direction.BELOW
    value = r.number(direction.value)
    hysteresis = r.number("hysteresis", 0.0, minimum=0.0)
    confirm_s = r.number("confirm_s", 0.0, minimum=0.0)
    kind = _event_kind(r, default=Kind.ALARM)
    cat = r.choice("category", Category, category)
    severity = r.choice("severity", Severity)
    state = r.ident("state") if r.has("state") else tid
    label = r.text("label", state)
    if (
        tid is None
        or value is None
        or hysteresis is None
        or confirm_s is None
        or kind is None
        or cat is None
        or severity is None
        or state is None
        or label is None
    ):
        return None
    return ThresholdSpec(
        tid, direction, value, hysteresis, confirm_s, kind, cat, severity, state, label
    )


def _parse_thresholds(
    raw: Any, where: str, probs: _Problems, category: Category
) -> dict[str, ThresholdSpec]:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        probs.add(where, "must be an array of tables ([[points.thresholds]])")
        return {}
    out: dict[str, ThresholdSpec] = {}
    for i, item in enumerate(raw):
        spec = _parse_threshold(_Reader(item, f"{where}[{i}]", probs), category)
        if spec is None:
            continue
        if spec.id in out:
            probs.add(f"{where}[{i}].id", f"duplicate threshold id {spec.id!r}")
            continue
        # The state names the condition (alarms are kept and restored per condition).
        taken = {t.state for t in out.values()} | _RESERVED_STATES
        if spec.state in taken:
            probs.add(f"{where}[{i}].state", f"state {spec.state!r} is already used on this point")
            continue
        out[spec.id] = spec
    return out


_RESERVED_STATES = frozenset({"normal", "wire_break", "decode_error"})  # agent.points' own

# The raw integer range of each register type (f32: the largest finite single).
_F32_MAX = 3.4028234663852886e38
_TYPE_RANGE: dict[PointType, tuple[float, float]] = {
    PointType.U8LO: (0, 255),
    PointType.U8HI: (0, 255),
    PointType.U16: (0, 65535),
    PointType.S16: (-32768, 32767),
    PointType.U32: (0, 2**32 - 1),
    PointType.S32: (-(2**31), 2**31 - 1),
    PointType.F32: (-_F32_MAX, _F32_MAX),
}


def value_range(spec: PointSpec) -> tuple[float, float] | None:
    """The lowest and highest engineering value the point can read: its eng_range
    when it has one (4-20 mA), else its type's range through scale and offset."""
    if spec.eng_range is not None:
        return (min(spec.eng_range), max(spec.eng_range))
    limits = _TYPE_RANGE.get(spec.type)
    if limits is None:
        return None
    ends = [limit * spec.scale + spec.offset for limit in limits]
    return (min(ends), max(ends))


def threshold_problem(spec: PointSpec, thr: ThresholdSpec) -> str | None:
    """Why `thr` could never trip or never clear on this point, or None when it can."""
    span = value_range(spec)
    if span is None:
        return None
    if thr.direction is Direction.ABOVE:
        return _above_problem(thr, *span)
    return _below_problem(thr, *span)


def _above_problem(thr: ThresholdSpec, lo: float, hi: float) -> str | None:
    clear_at = thr.value - thr.hysteresis
    if thr.value > hi:
        return f"can never trip: above {thr.value:g}, but the point reads at most {hi:g}"
    if clear_at <= lo:
        return (
            f"can never clear: it needs a value below {clear_at:g} ({thr.value:g} - hysteresis"
            f" {thr.hysteresis:g}), but the point reads no lower than {lo:g}"
        )
    return None


def _below_problem(thr: ThresholdSpec, lo: float, hi: float) -> str | None:
    clear_at = thr.value + thr.hysteresis
    if thr.value < lo:
        return f"can never trip: below {thr.value:g}, but the point reads no lower than {lo:g}"
    if clear_at >= hi:
        return (
            f"can never clear: it needs a value above {clear_at:g} ({thr.value:g} + hysteresis"
            f" {thr.hysteresis:g}), but the point reads at most {hi:g}"
        )
    return None


# --- one [[points]] entry ------------------------------------------------------------

_POINT_KEYS = (
    "id",
    "name",
    "table",
    "address",
    "type",
    "bit",
    "word_order",
    "scale",
    "offset",
    "unit",
    "poll",
    "category",
    "states",
    "flag",
    "thresholds",
    "telemetry_s",
    "deadband",
    "raw_range",
    "eng_range",
    "fault_below",
    "writable",
    "repeat",
    "stride",
    "bit_stride",
    "first",
)


def _parse_layout(r: _Reader) -> dict[str, Any] | None:
    """Where the value lives and how its raw bits become a number."""
    table = r.choice("table", Table)
    address = r.integer("address")
    if table is not None and table.is_bits:
        ptype = r.choice("type", PointType, PointType.BIT)
        if ptype is not None and ptype is not PointType.BIT:
            r.problem("type", f"a {table.value} point is a single bit: type must be 'bit'")
        if r.has("bit"):
            r.problem("bit", f"a {table.value} point has no bit number: its address is the bit")
        bit = None
    else:
        ptype = r.choice("type", PointType)
        bit = r.integer("bit", None, lo=0, hi=15)
        if ptype is PointType.BIT and not r.has("bit"):
            r.problem("bit", "required for type 'bit' in a register table (0..15)")
        if ptype is not PointType.BIT and r.has("bit"):
            r.problem("bit", f"only type 'bit' takes a bit number, not {ptype}")
    word_order = r.choice("word_order", WordOrder, WordOrder.BIG)
    if r.has("word_order") and ptype is not None and ptype.register_count != 2:
        r.problem("word_order", "only 32-bit types (u32, s32, f32) have a word order")
    scale = r.number("scale", 1.0)
    if scale == 0:
        r.problem("scale", "must not be 0")
    offset = r.number("offset", 0.0)
    writable = r.flag("writable", default=False)
    if writable and table in (Table.DISCRETE, Table.INPUT):
        r.problem("writable", f"a {table.value} table is read-only")
    layout = {
        "table": table,
        "address": address,
        "type": ptype,
        "bit": bit,
        "word_order": word_order,
        "scale": scale,
        "offset": offset,
        "writable": writable,
    }
    if any(
        layout[k] is None for k in ("table", "address", "type", "word_order", "scale", "offset")
    ):
        return None
    return layout


def _parse_analog(r: _Reader, ptype: PointType | None) -> dict[str, Any]:
    """Telemetry, 4-20 mA ranges and wire-break detection."""
    telemetry_s = r.number("telemetry_s", None, minimum=0.1)
    deadband = r.number("deadband", None, minimum=0.0)
    raw_range = r.pair("raw_range")
    eng_range = r.pair("eng_range")
    if (raw_range is None) != (eng_range is None) and not (
        r.has("raw_range") and r.has("eng_range")
    ):
        r.probs.add(r.where, "raw_range and eng_range go together")
    fault_below = r.number("fault_below", None)
    if r.has("fault_below") and not r.has("raw_range"):
        r.problem("fault_below", "needs raw_range (it is in raw units, e.g. µA)")
    if ptype is PointType.BIT and (raw_range is not None or telemetry_s is not None):
        r.probs.add(r.where, "a bit point has no ranges or telemetry")
    return {
        "telemetry_s": telemetry_s,
        "deadband": deadband,
        "raw_range": raw_range,
        "eng_range": eng_range,
        "fault_below": fault_below,
    }


def _parse_meaning(r: _Reader, ptype: PointType | None, category: Category) -> dict[str, Any]:
    """What the value means: exactly one of a state table, a flag or thresholds (or none)."""
    given = [k for k in ("states", "flag", "thresholds") if r.has(k)]
    if len(given) > 1:
        r.probs.add(r.where, f"give only one of states, flag, thresholds (got {', '.join(given)})")
    states = flag = None
    thresholds: dict[str, ThresholdSpec] = {}
    states_r = r.sub("states")
    if states_r is not None:
        if ptype is not None and not ptype.is_integer:
            r.problem("states", f"a state table needs an integer type, not {ptype}")
        states = _parse_states(states_r, category)
    flag_r = r.sub("flag")
    if flag_r is not None:
        if ptype is not None and ptype is not PointType.BIT:
            r.problem("flag", f"a flag needs type 'bit', not {ptype}")
        flag = _parse_flag(flag_r, category)
    if r.has("thresholds"):
        if ptype is PointType.BIT:
            r.problem("thresholds", "a bit point has no thresholds: use a flag")
        thresholds = _parse_thresholds(r.raw["thresholds"], r.key("thresholds"), r.probs, category)
    return {"states": states, "flag": flag, "thresholds": thresholds}


def _parse_point(r: _Reader, profile_category: Category) -> PointSpec | None:
    """A template PointSpec (id/name may still hold `{n}`)."""
    r.check_keys(_POINT_KEYS)
    pid = r.ident("id")
    name = r.text("name")
    category = r.choice("category", Category, profile_category) or profile_category
    unit = r.text("unit", None)
    poll = r.choice("poll", PollClass, PollClass.FAST)
    layout = _parse_layout(r)
    ptype = layout["type"] if layout else None
    analog = _parse_analog(r, ptype)
    meaning = _parse_meaning(r, ptype, category)
    if pid is None or name is None or poll is None or layout is None:
        return None
    spec = PointSpec(
        id=pid, name=name, unit=unit, poll=poll, category=category, **layout, **analog, **meaning
    )
    for j, thr in enumerate(spec.thresholds.values()):
        reason = threshold_problem(spec, thr)
        if reason is not None:
            r.probs.add(f"{r.key('thresholds')}[{j}]", reason)
    return spec


def _expand(template: PointSpec, r: _Reader) -> list[PointSpec]:
    """Apply repeat/stride: one entry, many points; `{n}` in id and name (1-based)."""
    repeat = r.integer("repeat", 1, lo=1, hi=4096)
    stride = r.integer("stride", template.register_count, lo=0, hi=65535)
    bit_stride = r.integer("bit_stride", 0, lo=0, hi=15)
    first = r.integer("first", 1, lo=0, hi=65535)
    if None in (repeat, stride, bit_stride, first):
        return []
    if repeat > 1 and "{n}" not in template.id:
        r.problem("id", "a repeated point needs {n} in its id")
        return []
    points = []
    for i in range(repeat):
        n = first + i
        address = template.address + i * stride
        bit = None if template.bit is None else template.bit + i * bit_stride
        if address + template.register_count > 65536:
            r.problem("address", f"address {address} of n={n} is past the end of the table")
            return []
        if bit is not None and bit > 15:
            r.problem("bit", f"bit {bit} of n={n} is out of range 0..15")
            return []
        sub = str(n)
        points.append(
            replace(
                template,
                id=template.id.replace("{n}", sub),
                name=template.name.replace("{n}", sub),
                address=address,
                bit=bit,
            )
        )
    return points


# --- a whole profile file ------------------------------------------------------------


def _read_toml(path: Path, probs: _Problems) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        probs.add("", "file not found")
    except IsADirectoryError:
        probs.add("", "is a directory, not a profile file")
    except UnicodeDecodeError:
        probs.add("", "is not valid UTF-8")
    except tomllib.TOMLDecodeError as exc:
        probs.add("", f"not valid TOML: {exc}")
    except OSError as exc:
        probs.add("", f"cannot be read: {exc.strerror or exc}")
    return None


def _parse_header(raw: dict[str, Any], stem: str, probs: _Problems) -> dict[str, Any] | None:
    header = raw.get("profile")
    if not isinstance(header, dict):
        probs.add("profile", "a [profile] table is required (name, category)")
        return None
    r = _Reader(header, "profile", probs)
    r.check_keys(("id", "name", "description", "category"))
    pid = r.ident("id") if r.has("id") else stem
    if pid is not None and pid != stem:
        r.problem("id", f"{pid!r} must equal the file name stem {stem!r}")
    if not _ID_RE.match(stem):
        probs.add("", f"file stem {stem!r} is the profile id and must match [A-Za-z0-9_-]")
    name = r.text("name")
    description = r.text("description", "")
    category = r.choice("category", Category)
    if name is None or category is None:
        return None
    return {"id": stem, "name": name, "description": description, "category": category}


def _parse_points(
    raw: dict[str, Any], category: Category, probs: _Problems
) -> dict[str, PointSpec]:
    entries = raw.get("points")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        probs.add("points", "at least one [[points]] table is required")
        return {}
    points: dict[str, PointSpec] = {}
    origin: dict[str, int] = {}
    for i, entry in enumerate(entries):
        r = _Reader(entry, f"points[{i}]", probs)
        template = _parse_point(r, category)
        if template is None:
            continue
        for spec in _expand(template, r):
            if spec.id in points:
                r.problem("id", f"duplicate point id {spec.id!r} (also points[{origin[spec.id]}])")
                continue
            points[spec.id] = spec
            origin[spec.id] = i
    return points


def load_profile(path: Path) -> Profile:
    """Load and validate one profile file; raise ConfigError with every problem found."""
    path = Path(path)
    probs = _Problems(str(path))
    raw = _read_toml(path, probs)
    if raw is None:
        raise ConfigError(probs.items)
    _Reader(raw, "", probs).check_keys(("profile", "points"))
    header = _parse_header(raw, path.stem, probs)
    category = header["category"] if header else Category.SYSTEM
    points = _parse_points(raw, category, probs)
    if probs.items or header is None:
        raise ConfigError(probs.items)
    return Profile(points=points, source=str(path), **header)


def find_profiles(dirs: Iterable[Path]) -> dict[str, Path]:
    """Map profile id (file stem) -> file. Earlier directories win, so a site's own
    directory can shadow a built-in profile of the same id."""
    found: dict[str, Path] = {}
    for directory in dirs:
        folder = Path(directory)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


# --- device-level overrides ------------------------------------------------------------


def _override_field(override: Any, name: str, default: Any) -> Any:
    """Read a PointOverride attribute, or a key when a plain mapping is given."""
    if isinstance(override, Mapping):
        return override.get(name, default)
    return getattr(override, name, default)


def _override_point(spec: PointSpec, override: Any, key: str, probs: _Problems) -> PointSpec | None:
    if _override_field(override, "enabled", True) is False:
        return None
    changes: dict[str, Any] = {}
    name = _override_field(override, "name", None)
    if name is not None:
        changes["name"] = name
    for attr in ("telemetry_s", "deadband"):
        value = _override_field(override, attr, None)
        if value is not None:
            if not _finite(value):
                probs.add(f"{key}.{attr}", f"must be a finite number, not {value!r}")
                continue
            changes[attr] = float(value)
    if _override_field(override, "writable", False):
        if spec.table in (Table.DISCRETE, Table.INPUT):
            probs.add(f"{key}.writable", f"a {spec.table.value} point cannot be written")
        changes["writable"] = True
    thresholds = dict(spec.thresholds)
    for tid, value in (_override_field(override, "threshold", None) or {}).items():
        if tid not in thresholds:
            known = ", ".join(thresholds) or "none"
            probs.add(f"{key}.threshold.{tid}", f"no such threshold (known: {known})")
            continue
        if not _finite(value):
            probs.add(f"{key}.threshold.{tid}", f"must be a finite number, not {value!r}")
            continue
        thresholds[tid] = replace(thresholds[tid], value=float(value))
        reason = threshold_problem(spec, thresholds[tid])
        if reason is not None:
            probs.add(f"{key}.threshold.{tid}", reason)
    changes["thresholds"] = thresholds
    return replace(spec, **changes)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def apply_overrides(profile: Profile, overrides: Mapping[str, Any]) -> Profile:
    """A device's view of a profile: points renamed, disabled (removed), thresholds,
    telemetry period, deadband or writability changed. Overrides are PointOverride
    objects (agent.config) or plain mappings with the same keys."""
    probs = _Problems(profile.source or profile.id)
    points = dict(profile.points)
    for pid, override in overrides.items():
        key = f"points.{pid}"
        if pid not in points:
            probs.add(key, f"profile {profile.id!r} has no point {pid!r}")
            continue
        spec = _override_point(points[pid], override, key, probs)
        if spec is None:
            del points[pid]
        else:
            points[pid] = spec
    if probs.items:
        raise ConfigError(probs.items)
    return replace(profile, points=points)
