"""Device profiles as data: load and validate a profile TOML into typed specs.

A profile says where each named point of a device model lives (table, address,
type, bit, scaling) and what its values mean (a state table, a flag, analog
thresholds, telemetry). The agent and the simulator read the same files, so
they cannot drift. What a file may hold is declared in drivers/profile_schema.py
(and published as docs/schemas/profile.schema.json); docs/profiles.md explains it.

This module must never accept a doubtful profile: every problem found is
reported at once as a ConfigError naming the file and the key (for example
`points[3].bit`), and start-up stops. It never talks to a device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.checks import BAD, ID_RE, Problems, check_file, closest, join
from core.errors import ConfigError
from core.events import Category, Kind, Severity
from drivers.gb_profile import (
    FormulaError,
    GbDeviceSpec,
    GbSpec,
    GbTemplate,
    point_template,
    status_key_problem,
)
from drivers.gb_profile import device_spec as gb_device_spec
from drivers.profile_schema import (
    FLAG,
    HEADER,
    OVERRIDES,
    POINT,
    POINT_OVERRIDE,
    PROFILE_FILE,
    READ_ONLY,
    RESERVED_STATES,
    STATE,
    THRESHOLD,
    point_type,
)
from drivers.types import Direction as Direction  # noqa: PLC0414 - re-exported
from drivers.types import PointType as PointType  # noqa: PLC0414
from drivers.types import PollClass, Table
from drivers.types import WordOrder as WordOrder  # noqa: PLC0414


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
    gb: GbSpec | None = None  # its GB/T 26875.3 coordinates (drivers/gb_profile.py)

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
    gb_device: GbDeviceSpec | None = None  # the device's own GB component ([gb.device])


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


# --- a whole profile file ------------------------------------------------------------


def load_profile(path: Path) -> Profile:
    """Load and validate one profile file; raise ConfigError with every problem found."""
    path = Path(path)
    clean, out = check_file(path, PROFILE_FILE)
    header = _header(clean.get("profile", {}), path.stem, out)
    category = header["category"] if header else Category.SYSTEM
    shared = _Shared(clean.get("state_tables", {}), clean.get("gb"), out, out.under("gb"))
    points = _points(clean.get("points", []), category, shared, out)
    _check_profile_status(shared, points, out)
    device = gb_device_spec(shared.gb.get("device") if shared.gb else None, "gb.device", out.add)
    if out.items or header is None:
        raise ConfigError(out.items)
    return Profile(points=points, source=str(path), gb_device=device, **header)


@dataclass(frozen=True, slots=True)
class _Shared:
    """What a profile declares once for its points: named state tables, `[gb]` defaults."""

    state_tables: Mapping[str, Any]
    gb: Mapping[str, Any] | None
    out: Problems
    gb_refused: bool = False  # [gb] itself failed its shape: its points are not built

    def states(self, value: Any, where: str) -> Mapping[str, Any] | None:
        """A point's state table: its own, or the shared one it names."""
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        if value not in self.state_tables:
            if not self.out.under("state_tables"):
                have = ", ".join(self.state_tables) or "none in [state_tables]"
                self.out.add(
                    where,
                    f'no state table "{value}" (has: {have}){closest(value, self.state_tables)}',
                )
            return None
        return self.state_tables[value]  # type: ignore[no-any-return]

    def gb_template(
        self, spec: PointSpec, own: Mapping[str, Any] | None, where: str
    ) -> GbTemplate | None:
        """The point's merged gb declaration, or None (none, disabled, or a problem)."""
        if (self.gb is None and own is None) or self.gb_refused:
            return None
        return point_template(self.gb, own, spec, where, self.out)


def _check_profile_status(shared: _Shared, points: Mapping[str, PointSpec], out: Problems) -> None:
    """Each state the profile's `[gb] status` names is a condition of some mapped point (a
    typo, or a normal state, would set bits that never go out, silently)."""
    if shared.gb is None or shared.gb_refused or out.items:
        return
    mapped = [spec for spec in points.values() if spec.gb is not None]
    for state in shared.gb.get("status", {}):
        wrong = status_key_problem(state, mapped)
        if wrong is not None:
            out.add(f"gb.status.{state}", wrong)


def _header(clean: Mapping[str, Any], stem: str, out: Problems) -> dict[str, Any] | None:
    if not ID_RE.fullmatch(stem):
        out.add(
            "",
            f'the file name "{stem}" is the profile id: it must be 1-64 characters A-Z a-z 0-9 _ -',
        )
    if clean.get("id", stem) != stem:
        out.add("profile.id", f'"{clean["id"]}" must equal the file name without .toml ("{stem}")')
    v = HEADER.with_defaults(clean)
    if v["name"] is None or v["category"] is None:
        return None
    return {
        "id": stem,
        "name": v["name"],
        "description": v["description"],
        "category": Category(v["category"]),
    }


def _points(
    entries: list[dict[str, Any]], category: Category, shared: _Shared, out: Problems
) -> dict[str, PointSpec]:
    points: dict[str, PointSpec] = {}
    origin: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"points[{i}]"
        template = _point(entry, where, category, shared, out)
        if template is None:
            continue
        gb = shared.gb_template(template, entry.get("gb"), f"{where}.gb")
        for spec in _expand(template, gb, entry, where, out):
            if spec.id in points:
                out.add(
                    f"{where}.id",
                    f'duplicate point id "{spec.id}" (also points[{origin[spec.id]}])',
                )
                continue
            points[spec.id] = spec
            origin[spec.id] = i
    return points


# the keys a point's layout is built from: with a problem on any, it is not built
_LAYOUT = (
    "id",
    "name",
    "table",
    "address",
    "type",
    "bit",
    "scale",
    "offset",
    "raw_range",
    "eng_range",
    "repeat",
    "first",
    "stride",
    "bit_stride",
)


def _point(
    clean: Mapping[str, Any], where: str, profile_category: Category, shared: _Shared,
    out: Problems,
) -> PointSpec | None:  # fmt: skip
    """A template PointSpec (id/name may still hold `{n}`), or None when its layout failed."""
    ptype = point_type(clean)
    missing = any(k not in clean for k in ("id", "name", "table", "address"))
    if missing or ptype is None or any(out.under(join(where, k)) for k in _LAYOUT):
        return None
    v = POINT.with_defaults(clean)
    category = Category(v["category"] or profile_category)
    states = None if v["states"] is None else shared.states(v["states"], f"{where}.states")
    spec = PointSpec(
        id=v["id"],
        name=v["name"],
        table=Table(v["table"]),
        address=v["address"],
        type=ptype,
        bit=None if Table(v["table"]).is_bits else v["bit"],
        word_order=WordOrder(v["word_order"]),
        scale=float(v["scale"]),
        offset=float(v["offset"]),
        unit=v["unit"],
        poll=PollClass(v["poll"]),
        category=category,
        states=None if states is None else _states(states, f"{where}.states", category, out),
        flag=None if v["flag"] is None else _flag(v["flag"], f"{where}.flag", category, out),
        telemetry_s=_float(v["telemetry_s"]),
        deadband=_float(v["deadband"]),
        raw_range=_range(v["raw_range"]),
        eng_range=_range(v["eng_range"]),
        fault_below=_float(v["fault_below"]),
        writable=v["writable"],
    )
    thresholds = _thresholds(v["thresholds"] or [], f"{where}.thresholds", category, out)
    for j, thr in thresholds:
        reason = threshold_problem(spec, thr)
        if reason is not None:
            out.add(f"{where}.thresholds[{j}]", reason)
    return replace(spec, thresholds={thr.id: thr for _, thr in thresholds})


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _range(value: list[float] | None) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def _states(
    clean: Mapping[str, Any], where: str, category: Category, out: Problems
) -> dict[int, StateSpec] | None:
    if out.under(where):
        return None
    states = {}
    for code, state in clean.items():
        v = STATE.with_defaults(state)
        normal = v["normal"]
        states[int(code)] = StateSpec(
            state=v["state"],
            label=v["label"] or v["state"],
            normal=normal,
            kind=None if normal else Kind(v["kind"]),
            category=Category(v["category"] or category),
            severity=Severity(v["severity"] or Severity.INFO),
        )
    return states


def _flag(
    clean: Mapping[str, Any], where: str, category: Category, out: Problems
) -> FlagSpec | None:
    if out.under(where):
        return None
    v = FLAG.with_defaults(clean)
    return FlagSpec(
        kind=Kind(v["kind"]),
        category=Category(v["category"] or category),
        severity=Severity(v["severity"]),
        active_state=v["active_state"],
        inactive_state=v["inactive_state"],
        active_label=v["active_label"] or v["active_state"],
        inactive_label=v["inactive_label"] or v["inactive_state"],
    )


def _thresholds(
    items: list[dict[str, Any]], where: str, category: Category, out: Problems
) -> list[tuple[int, ThresholdSpec]]:
    """The point's thresholds that passed, with their positions in the file."""
    found: list[tuple[int, ThresholdSpec]] = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if out.under(here):
            continue
        thr = _threshold(item, category)
        # The state names the condition (alarms are kept and restored per condition).
        if thr.id in {t.id for _, t in found}:
            out.add(f"{here}.id", f'duplicate threshold id "{thr.id}"')
        elif thr.state in {t.state for _, t in found} | RESERVED_STATES:
            out.add(f"{here}.state", f'state "{thr.state}" is already used on this point')
        else:
            found.append((i, thr))
    return found


def _threshold(clean: Mapping[str, Any], category: Category) -> ThresholdSpec:
    v = THRESHOLD.with_defaults(clean)
    direction = Direction.ABOVE if v["above"] is not None else Direction.BELOW
    state = v["state"] or v["id"]
    return ThresholdSpec(
        id=v["id"],
        direction=direction,
        value=float(v[direction.value]),
        hysteresis=float(v["hysteresis"]),
        confirm_s=float(v["confirm_s"]),
        kind=Kind(v["kind"]),
        category=Category(v["category"] or category),
        severity=Severity(v["severity"]),
        state=state,
        label=v["label"] or state,
    )


def _expand(
    template: PointSpec, gb: GbTemplate | None, clean: Mapping[str, Any], where: str,
    out: Problems,
) -> list[PointSpec]:  # fmt: skip
    """Apply repeat/stride: one entry, many points; `{n}` in id and name (1-based)."""
    v = POINT.with_defaults(clean)
    repeat, first, bit_stride = v["repeat"], v["first"], v["bit_stride"]
    stride = template.register_count if v["stride"] is None else v["stride"]
    if repeat > 1 and "{n}" not in template.id:
        return []  # the rule on `id` said so
    points = []
    components: dict[tuple[int, int, int], tuple[str, int]] = {}  # place -> first id, address
    for i in range(repeat):
        n = first + i
        address = template.address + i * stride
        bit = None if template.bit is None else template.bit + i * bit_stride
        if address + template.register_count > 65536:
            out.add(f"{where}.address", f"address {address} of n={n} is past the end of the table")
            return []
        if bit is not None and bit > 15:
            out.add(f"{where}.bit", f"bit {bit} of n={n} is out of range 0..15")
            return []
        try:
            placed = None if gb is None else gb.resolve(n, address, bit)
        except FormulaError as exc:
            out.add(f"{where}.gb", f"n={n}: {exc}")
            return []
        if placed is not None and placed.record == "component":
            # a repeat's points share a component only from one register: else the
            # address formula collides (an operator's typo, say loop * 16 + point)
            place = (placed.system_type, placed.zone, placed.position)
            first_at = components.setdefault(place, (template.id.replace("{n}", str(n)), address))
            clash = first_at[0] if first_at[1] != address else None
            if clash is not None:
                out.add(
                    f"{where}.gb",
                    f"n={n} is at the component of {clash} (zone {placed.zone}, position "
                    f"{placed.position}) but reads another register: the address formula "
                    "gives two points one component (points of one component share a "
                    "register, or are written as separate [[points]])",
                )
                return []
        sub = str(n)
        points.append(
            replace(
                template,
                id=template.id.replace("{n}", sub),
                name=template.name.replace("{n}", sub),
                address=address,
                bit=bit,
                gb=placed,
            )
        )
    return points


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


def check_overrides(
    profile: Profile, overrides: Mapping[str, Mapping[str, Any]], where: str, out: Problems
) -> None:
    """Overrides of the right shape (OVERRIDES, checked by the caller) against the profile:
    the points and thresholds they name exist, a threshold moved can still trip and clear,
    and only a writable table is made writable. The one place overrides are judged: the
    config's check and the runtime's apply_overrides both come here."""
    for pid, override in overrides.items():
        here = join(where, pid)
        spec = profile.points.get(pid)
        if spec is None:
            out.add(
                here, f'profile "{profile.id}" has no point "{pid}"{closest(pid, profile.points)}'
            )
            continue
        for tid, value in override.get("threshold", {}).items():
            thr = spec.thresholds.get(tid)
            if thr is None:
                has = ", ".join(spec.thresholds) or "none"
                out.add(
                    f"{here}.threshold.{tid}",
                    f'point "{pid}" has no threshold "{tid}" (has: {has})',
                )
                continue
            reason = threshold_problem(spec, replace(thr, value=float(value)))
            if reason is not None:
                out.add(f"{here}.threshold.{tid}", reason)
        if override.get("writable") and spec.table in READ_ONLY:
            out.add(
                f"{here}.writable",
                f"a {spec.table} point is read-only in Modbus; it cannot be written",
            )


def apply_overrides(profile: Profile, overrides: Mapping[str, Any]) -> Profile:
    """A device's view of a profile: points renamed, disabled (removed), thresholds,
    telemetry period, deadband or writability changed. Overrides are PointOverride
    objects (agent.config) or plain mappings with the same keys; anything the config
    check would refuse raises ConfigError (keys `points.<id>...`)."""
    out = Problems(profile.source or profile.id)
    tables = {pid: _as_table(override) for pid, override in overrides.items()}
    clean = OVERRIDES.clean(tables, "points", out)
    if clean is not BAD:
        check_overrides(profile, clean, "points", out)
    out.raise_if_any()
    points = dict(profile.points)
    for pid, override in clean.items():
        v = POINT_OVERRIDE.with_defaults(override)
        if not v["enabled"]:
            del points[pid]
            continue
        spec = points[pid]
        changes: dict[str, Any] = {
            attr: float(v[attr]) for attr in ("telemetry_s", "deadband") if v[attr] is not None
        }
        if v["name"] is not None:
            changes["name"] = v["name"]
        if v["writable"]:
            changes["writable"] = True
        changes["thresholds"] = {
            tid: replace(thr, value=float(v["threshold"][tid])) if tid in v["threshold"] else thr
            for tid, thr in spec.thresholds.items()
        }
        points[pid] = replace(spec, **changes)
    return replace(profile, points=points)


def _as_table(override: Any) -> Any:
    """A PointOverride's set fields as a table; a mapping (or anything else) as it is."""
    if isinstance(override, Mapping) or not hasattr(override, "enabled"):
        return dict(override) if isinstance(override, Mapping) else override
    values = {name: getattr(override, name, None) for name in POINT_OVERRIDE}
    return {name: value for name, value in values.items() if value is not None}
