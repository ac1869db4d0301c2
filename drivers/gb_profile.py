"""How a profile's points map to GB/T 26875.3: typed specs, address formulas, their checks.

A profile says, per point (or per `[[points]]` entry, inherited from the profile's `[gb]`),
where the point sits in the standard's terms: the system type, the component type (fixed,
or read at run time from a field of the point's own registers, such as a GST panel's
device-type byte), the component address (a small formula over loop/point), the status
bits each of its states sets, and for analog points the analog type and scale. What a
file may hold is declared in drivers/profile_schema.py (`GB`, `PROFILE_GB`); this module
turns what passed into `GbSpec`s and checks what the shapes cannot (formulas, bit names,
ranges once the repeat is expanded). The agent (agent/gb26875/points.py) computes the
coordinates of each event from these specs; the bit values live in
agent/gb26875/tables.py, the names here are checked against them by a test.

Formulas are data, never Python: integers, the variables below, + - * / (integer
division) % and parentheses, parsed here. This module must never evaluate anything else,
read files or know about events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.checks import Problems, join
from drivers.types import PointType

if TYPE_CHECKING:
    from drivers.profile import PointSpec

# The status bit names a state may set (agent/gb26875/tables.py: ComponentStatus and
# SystemStatus, lower-case; bit 0 `normal` is the gateway's, never a state's).
COMPONENT_BITS = (
    "fire", "fault", "isolated", "supervisory", "started", "feedback", "delayed", "power_fault",
)  # fmt: skip
SYSTEM_BITS = (
    "fire", "fault", "isolated", "supervisory", "started", "feedback", "delayed",
    "main_power_fault", "backup_power_fault", "bus_fault", "manual_mode", "config_changed",
    "reset",
)  # fmt: skip
# An event kind's bit when the state is not listed in `status` (core.events.Kind values).
KIND_BITS = {"alarm": "fire", "fault": "fault", "supervisory": "supervisory"}

ANALOG_STANDARD = range(1, 13)  # 1..12: the standard's analog types (tables.ANALOG_TYPES)
ANALOG_USER = range(128, 256)  # user-defined: the profile must give the scale

POINT_VARS = ("n", "address", "bit")  # what a point's loop/point formulas may use
ADDRESS_VARS = ("n", "address", "bit", "loop", "point")
DEVICE_VARS = ("unit",)  # the device's own component: its Modbus unit id


class FormulaError(ValueError):
    """A formula that does not parse, names an unknown variable or divides by zero."""


# --- formulas ------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


def _tokens(text: str) -> list[str]:
    out = []
    for number, name, other in _TOKEN.findall(text.strip()):
        sym = number or name or other
        if sym not in "+-*/%()" and not (number or name):
            raise FormulaError(f'unexpected "{sym}"')
        out.append(sym)
    return out


@dataclass(frozen=True, slots=True)
class Formula:
    """An integer formula, e.g. `loop * 256 + point`; `text` is what was written."""

    text: str
    _rpn: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, names: tuple[str, ...]) -> Formula:
        tokens = _tokens(text)
        if not tokens:
            raise FormulaError("empty formula")
        rpn: list[str] = []
        rest = _expr(tokens, 0, rpn, names)
        if rest != len(tokens):
            raise FormulaError(f'unexpected "{tokens[rest]}"')
        return cls(text, tuple(rpn))

    def __call__(self, env: Mapping[str, int]) -> int:
        stack: list[int] = []
        for sym in self._rpn:
            if sym.isdigit():
                stack.append(int(sym))
            elif sym == "neg":
                stack.append(-stack.pop())
            elif sym in _OPS:
                right, left = stack.pop(), stack.pop()
                stack.append(_apply(sym, left, right))
            else:
                stack.append(env[sym])
        return stack[0]


_OPS = ("+", "-", "*", "/", "%")


def _apply(op: str, left: int, right: int) -> int:
    if op in "/%" and right == 0:
        raise FormulaError("division by zero")
    return {
        "+": lambda: left + right,
        "-": lambda: left - right,
        "*": lambda: left * right,
        "/": lambda: left // right,
        "%": lambda: left % right,
    }[op]()


def _expr(tokens: list[str], at: int, rpn: list[str], names: tuple[str, ...]) -> int:
    at = _term(tokens, at, rpn, names)
    while at < len(tokens) and tokens[at] in "+-":
        op = tokens[at]
        at = _term(tokens, at + 1, rpn, names)
        rpn.append(op)
    return at


def _term(tokens: list[str], at: int, rpn: list[str], names: tuple[str, ...]) -> int:
    at = _factor(tokens, at, rpn, names)
    while at < len(tokens) and tokens[at] in "*/%":
        op = tokens[at]
        at = _factor(tokens, at + 1, rpn, names)
        rpn.append(op)
    return at


def _factor(tokens: list[str], at: int, rpn: list[str], names: tuple[str, ...]) -> int:
    if at >= len(tokens):
        raise FormulaError("the formula ends too early")
    sym = tokens[at]
    if sym == "-":
        at = _factor(tokens, at + 1, rpn, names)
        rpn.append("neg")
        return at
    if sym == "(":
        at = _expr(tokens, at + 1, rpn, names)
        if at >= len(tokens) or tokens[at] != ")":
            raise FormulaError('a "(" is not closed')
        return at + 1
    if sym.isdigit():
        rpn.append(sym)
        return at + 1
    if sym in names:
        rpn.append(sym)
        return at + 1
    if sym[0].isalpha() or sym[0] == "_":
        raise FormulaError(f'unknown name "{sym}" (may use: {", ".join(names)})')
    raise FormulaError(f'unexpected "{sym}"')


# --- typed specs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GbField:
    """The component type read at run time from the point's own register(s): word `offset`
    from the point's address, bits `low..high` of it; `map` translates the device's code
    into a GB code; `default` is used for 0 or a code the map does not list."""

    offset: int
    low: int
    high: int
    map: Mapping[int, int] | None
    default: int

    def component_type(self, word: int) -> int:
        code = (word >> self.low) & ((1 << (self.high - self.low + 1)) - 1)
        if self.map is not None:
            return self.map.get(code, self.default)
        return code if 0 < code <= 255 else self.default


@dataclass(frozen=True, slots=True)
class GbAnalog:
    """count = round(value * scale), the signed 16-bit value of a component analog."""

    type: int
    scale: float | None  # None: 1 / the standard type's step (agent/gb26875/tables.py)


@dataclass(frozen=True, slots=True)
class GbSpec:
    """A point's GB coordinates, resolved for one expanded point."""

    record: str  # "component" (typeflag 2/3) or "system" (typeflag 1)
    system_type: int
    component_type: int | GbField
    zone: int
    position: int
    status: Mapping[str, tuple[str, ...]]  # state name -> bit names (unlisted: by kind)
    analog: GbAnalog | None = None


@dataclass(frozen=True, slots=True)
class GbDeviceSpec:
    """The device's own component (its comm loss is a fault of it): type and address
    formulas over `unit`."""

    component_type: int
    zone: Formula | None
    position: Formula | None
    address: Formula | None

    def address_of(self, unit: int) -> tuple[int, int]:
        """(zone, position) of a device with this Modbus unit id."""
        return _place(self.zone, self.position, self.address, {"unit": unit})


def _place(
    zone: Formula | None, position: Formula | None, address: Formula | None, env: Mapping[str, int]
) -> tuple[int, int]:
    if address is not None:
        value = address(env)
        if not 0 <= value <= 0xFFFF_FFFF:
            raise FormulaError(f"address {address.text} = {value}, outside 0..4294967295")
        return value & 0xFFFF, value >> 16  # the 4 bytes: zone (LE16) then position (LE16)
    z = 0 if zone is None else zone(env)
    p = 0 if position is None else position(env)
    for what, formula, value in (("zone", zone, z), ("position", position, p)):
        if not 0 <= value <= 0xFFFF:
            text = formula.text if formula is not None else "0"
            raise FormulaError(f"{what} {text} = {value}, outside 0..65535")
    return z, p


# --- building from what the schema passed --------------------------------------------------


@dataclass(frozen=True, slots=True)
class GbTemplate:
    """A `[[points]]` entry's merged gb declaration, before the repeat is expanded."""

    record: str
    system_type: int
    component_type: int | GbField
    loop: Formula
    point: Formula
    zone: Formula | None
    position: Formula | None
    address: Formula | None
    status: Mapping[str, tuple[str, ...]]
    analog: GbAnalog | None

    def resolve(self, n: int, address: int, bit: int | None) -> GbSpec:
        """The spec of one expanded point; FormulaError when its address is out of range."""
        env = {"n": n, "address": address, "bit": bit or 0}
        env["loop"] = self.loop(env)
        env["point"] = self.point(env)
        zone, position = _place(self.zone, self.position, self.address, env)
        return GbSpec(
            self.record, self.system_type, self.component_type, zone, position, self.status,
            self.analog,
        )  # fmt: skip


def merge(
    profile_gb: Mapping[str, Any] | None, point_gb: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A point's gb keys over the profile's `[gb]` (its `status` merged state by state;
    `device` is the profile's own)."""
    base = {k: v for k, v in (profile_gb or {}).items() if k != "device"}
    mine = dict(point_gb or {})
    status = {**base.get("status", {}), **mine.get("status", {})}
    merged = {**base, **mine}
    if status:
        merged["status"] = status
    # an address written on the point replaces the profile's, whichever form it took
    if {"zone", "position", "address"} & mine.keys():
        for key in ("zone", "position", "address"):
            if key not in mine:
                merged.pop(key, None)
    return merged


def template(merged: Mapping[str, Any], where: str, add: Any) -> GbTemplate | None:
    """The typed template, or None after `add(key, reason)` for each problem found.
    `merged` is a point's gb with the profile's defaults (`merge`)."""
    ok = True
    for key in ("system_type", "component_type"):
        if key not in merged:
            add(f"{where}.{key}", "required key is missing (on the point or in the profile's [gb])")
            ok = False
    record = merged.get("record", "component")
    names = COMPONENT_BITS if record == "component" else SYSTEM_BITS
    for state, bits in merged.get("status", {}).items():
        wrong = [b for b in bits if b not in names]
        if wrong:
            add(
                f"{where}.status.{state}",
                f"not a {record} status bit: {', '.join(wrong)} (known: {', '.join(names)})",
            )
            ok = False
    formulas: dict[str, Formula | str | None] = {
        "loop": _formula(merged.get("loop", 0), POINT_VARS),
        "point": _formula(merged.get("point", "n"), POINT_VARS),
    }
    placed = {"zone", "position", "address"} & merged.keys()
    defaults = {} if placed else {"zone": "loop", "position": "point"}  # loop/point by default
    for key in ("zone", "position", "address"):
        text = merged.get(key, defaults.get(key))
        formulas[key] = None if text is None else _formula(text, ADDRESS_VARS)
    for key, formula in formulas.items():
        if isinstance(formula, str):
            add(f"{where}.{key}", formula)
            ok = False
    analog = merged.get("analog")
    if analog is not None and analog["type"] in ANALOG_USER and "scale" not in analog:
        add(f"{where}.analog.scale", "required for a user-defined analog type (128-255)")
        ok = False
    if analog is not None and record == "system":
        add(f"{where}.analog", 'a system record (record = "system") has no analog value')
        ok = False
    if not ok:
        return None
    return GbTemplate(
        record=record,
        system_type=merged["system_type"],
        component_type=_component_type(merged["component_type"]),
        status={state: tuple(bits) for state, bits in merged.get("status", {}).items()},
        analog=None if analog is None else GbAnalog(analog["type"], analog.get("scale")),
        **formulas,  # type: ignore[arg-type]
    )


def point_template(
    profile_gb: Mapping[str, Any] | None,
    own: Mapping[str, Any] | None,
    spec: PointSpec,
    where: str,
    out: Problems,
) -> GbTemplate | None:
    """A `[[points]]` entry's gb declaration merged over the profile's `[gb]` and checked
    against the point; None when disabled or wrong (problems added at `where`)."""
    merged = merge(profile_gb, own)
    if not merged.get("enabled", True):
        return None
    found = len(out)
    mine = own or {}

    def add(key: str, reason: str) -> None:
        """A problem of a key the point inherited is the profile's: said once, at [gb]."""
        path = key.removeprefix(f"{where}.").split(".")
        written = path[0] in mine
        if path[0] == "status" and len(path) > 1:
            written = path[1] in mine.get("status", {})
        if written or path[0] in ("system_type", "component_type"):
            out.add(key, reason)
            return
        at = "gb." + ".".join(path)
        if not any(p.key == at and p.reason == reason for p in out.items):
            out.add(at, reason)

    made = template(merged, where, add)
    reason = None if made is None else _point_problem(spec, made)
    if reason is not None:
        out.add(join(where, reason[0]), reason[1])
    for state in mine.get("status", {}) if made is not None else ():
        wrong = status_key_problem(state, [spec])
        if wrong is not None:
            out.add(f"{where}.status.{state}", wrong)
    return made if len(out) == found else None


# conditions agent/points.py raises on any point (drivers.profile_schema.RESERVED_STATES)
ALWAYS_CONDITIONS = frozenset({"wire_break", "decode_error"})


def point_states(spec: PointSpec) -> tuple[set[str], set[str]]:
    """The point's states that are conditions (raise an event, set bits in a status word)
    and its normal ones (a condition's end: no bits)."""
    conditions: set[str] = set(ALWAYS_CONDITIONS)
    normal: set[str] = set()
    for state in (spec.states or {}).values():
        (normal if state.normal or state.kind is None else conditions).add(state.state)
    if spec.flag is not None:
        conditions.add(spec.flag.active_state)
        normal.add(spec.flag.inactive_state)
    conditions.update(t.state for t in spec.thresholds.values())
    return conditions, normal - conditions


def status_key_problem(state: str, specs: list[PointSpec]) -> str | None:
    """Why a `status` key cannot be one of these points' conditions (a typo, a normal
    state whose bits would never be sent), or None when it names one."""
    conditions: set[str] = set()
    normal: set[str] = set()
    for spec in specs:
        c, n = point_states(spec)
        conditions |= c
        normal |= n
    if state in conditions:
        return None
    if state in normal:
        return (
            f'"{state}" is a normal state: it raises no condition, so its bits would never be sent'
        )
    known = ", ".join(sorted(conditions - ALWAYS_CONDITIONS)) or "none"
    return f'no point here has a state "{state}" (their conditions: {known})'


def _point_problem(spec: PointSpec, gb: GbTemplate) -> tuple[str, str] | None:
    """What a point's gb declaration asks that this point cannot give."""
    field = gb.component_type
    if isinstance(field, GbField) and gb.record == "component":
        if spec.table.is_bits:
            return ("component_type", f"a {spec.table} point has no register to read a type from")
        if field.offset >= spec.register_count:
            return ("component_type.offset", f"the point has {spec.register_count} register(s)")
    analog = spec.states is None and spec.flag is None and spec.type is not PointType.BIT
    if gb.analog is not None and not analog:
        return ("analog", "only an analog point (no states, no flag, not a bit) has a value")
    return None


def _formula(text: str | int, names: tuple[str, ...]) -> Formula | str:
    """The parsed formula, or the reason it is wrong (a string)."""
    try:
        return Formula.parse(str(text), names)
    except FormulaError as exc:
        return f'formula "{text}": {exc}'


def _component_type(value: int | Mapping[str, Any]) -> int | GbField:
    if isinstance(value, int):
        return value
    if "bits" in value:
        low, high = value["bits"]
    else:
        low, high = (8, 15) if value.get("byte", "high") == "high" else (0, 7)
    codes = value.get("map")
    return GbField(
        offset=value.get("offset", 0),
        low=low,
        high=high,
        map=None if codes is None else {int(k): v for k, v in codes.items()},
        default=value.get("default", 0),
    )


def device_spec(clean: Mapping[str, Any] | None, where: str, add: Any) -> GbDeviceSpec | None:
    """The profile's `[gb.device]`, or None (problems added)."""
    if clean is None:
        return None
    formulas: dict[str, Formula | None] = {}
    ok = True
    for key in ("zone", "position", "address"):
        if key not in clean:
            formulas[key] = None
            continue
        parsed = _formula(clean[key], DEVICE_VARS)
        if isinstance(parsed, str):
            add(f"{where}.{key}", parsed)
            ok = False
        else:
            formulas[key] = parsed
    if not ok:
        return None
    return GbDeviceSpec(clean["component_type"], **formulas)
