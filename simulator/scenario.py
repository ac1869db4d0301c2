"""Scenario files (TOML): what the simulated world holds and what happens to it, when.

`load_scenario(path)` reads lines, their devices (unit id, profile, initial
states and values), Modbus TCP devices, GPIO inputs and outputs, and a
timeline of steps, and checks every name against the profiles, so a typo is
caught before anything starts. Problems come all at once as a ConfigError
naming the file and the key (`timeline.steps[3].state`).

This module must never start anything: it only reads and checks.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError, ConfigProblem
from drivers import codec
from drivers.codec import EncodeError
from drivers.profile import Profile, find_profiles, load_profile
from simulator.faults import make_fault

BUILTIN_PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
RUN_DIR = Path("/tmp/alarmgw-sim")  # noqa: S108 - a rig's run directory, overridable

ACTIONS = (
    "state",
    "value",
    "ramp",
    "silence",
    "revive",
    "press",
    "release",
    "fault",
    "clear-fault",
)
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "state": ("device", "point", "state"),
    "value": ("device", "point", "value"),
    "ramp": ("device", "point", "from", "to", "over"),
    "silence": ("device",),
    "revive": ("device",),
    "press": ("input",),
    "release": ("input",),
    "fault": ("target", "kind"),
    "clear-fault": ("target",),
}
OPTIONAL_STEP_KEYS = {
    "ramp": ("step",),
    "fault": ("rate", "delay", "code"),
    "clear-fault": ("kind",),
}


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    unit_id: int
    profile: Profile
    states: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    writable_all: bool = False


@dataclass(frozen=True)
class LineSpec:
    id: str
    path: Path
    baudrate: int
    parity: str
    stopbits: int
    wire_time: bool
    devices: list[DeviceSpec]


@dataclass(frozen=True)
class TcpDeviceSpec:
    device: DeviceSpec
    port: int


@dataclass(frozen=True)
class InputSpec:
    id: str
    pin: int
    active: str
    rail: str
    initially_active: bool


@dataclass(frozen=True)
class OutputSpec:
    id: str
    pin: int


@dataclass(frozen=True)
class Step:
    """One timeline step, already expanded: a ramp becomes many `value` steps."""

    at: float
    action: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    lines: list[LineSpec]
    tcp_devices: list[TcpDeviceSpec]
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    steps: list[Step]
    loop: bool
    period: float
    log: Path | None
    control: Path
    gpio_socket: Path

    def devices(self) -> dict[str, DeviceSpec]:
        out = {d.id: d for line in self.lines for d in line.devices}
        out.update({t.device.id: t.device for t in self.tcp_devices})
        return out


class _Reader:
    """Typed access to one TOML table, collecting problems under a key prefix."""

    def __init__(self, raw: Any, key: str, problems: list[ConfigProblem], file: str) -> None:
        self.raw = raw if isinstance(raw, dict) else {}
        self.key, self.problems, self.file = key, problems, file
        if not isinstance(raw, dict):
            self.problem("", "must be a table")

    def problem(self, key: str, reason: str) -> None:
        full = f"{self.key}.{key}" if self.key and key else (self.key or key)
        self.problems.append(ConfigProblem(self.file, full, reason))

    def sub(self, key: str, raw: Any) -> _Reader:
        return _Reader(raw, f"{self.key}.{key}" if self.key else key, self.problems, self.file)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.raw:
            if default is ...:
                self.problem(key, "missing")
                return None
            return default
        value = self.raw[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.problem(key, f"must be {_kind_name(kind)}, not a boolean")
            return None
        if not isinstance(value, kind):
            self.problem(key, f"must be {_kind_name(kind)}, got {value!r}")
            return None
        return value

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.raw:
            if key not in allowed:
                self.problem(key, f"unknown key (allowed: {', '.join(allowed)})")

    def items(self, key: str) -> list[_Reader]:
        value = self.raw.get(key, [])
        if not isinstance(value, list):
            self.problem(key, "must be an array of tables")
            return []
        return [self.sub(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "an array",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class _Context:
    """What the checks of a later section need from earlier ones."""

    def __init__(self, path: Path, profile_dirs: list[Path]) -> None:
        self.path = path
        self.profile_files = find_profiles(profile_dirs)
        self.profiles: dict[str, Profile] = {}
        self.devices: dict[str, DeviceSpec] = {}
        self.lines: set[str] = set()
        self.inputs: set[str] = set()

    def profile(self, r: _Reader, key: str, name: str) -> Profile | None:
        if name in self.profiles:
            return self.profiles[name]
        if name not in self.profile_files:
            known = ", ".join(sorted(self.profile_files)) or "none"
            r.problem(key, f"unknown profile {name!r} (known: {known})")
            return None
        try:
            self.profiles[name] = load_profile(self.profile_files[name])
        except ConfigError as exc:
            r.problem(key, f"profile {name!r} is invalid: {exc}")
            return None
        return self.profiles[name]


def _point_state_problem(profile: Profile, point: str, state: str | None) -> str | None:
    if point not in profile.points:
        return (
            f"unknown point {point!r} of profile {profile.id!r} (known: "
            + ", ".join(sorted(profile.points))
            + ")"
        )
    if state is not None:
        try:
            codec.encode_state(profile.points[point], state)
        except EncodeError as exc:
            return str(exc)
    return None


def _value_problem(profile: Profile, point: str, value: float) -> str | None:
    problem = _point_state_problem(profile, point, None)
    if problem is None:
        try:
            codec.encode(profile.points[point], value)
        except EncodeError as exc:
            return str(exc)
    return problem


def _device(r: _Reader, ctx: _Context, extra_keys: tuple[str, ...] = ()) -> DeviceSpec | None:
    r.check_keys(("id", "unit_id", "profile", "states", "values", "writable_all", *extra_keys))
    dev_id, unit = r.get("id", str), r.get("unit_id", int)
    profile_name = r.get("profile", str)
    if isinstance(unit, int) and not 1 <= unit <= 247:
        r.problem("unit_id", f"must be 1..247, got {unit}")
    if dev_id in ctx.devices:
        r.problem("id", f"duplicate device id {dev_id!r}")
    profile = ctx.profile(r, "profile", profile_name) if profile_name else None
    states = r.get("states", dict, {}) or {}
    values = r.get("values", dict, {}) or {}
    if profile is not None:
        for point, state in states.items():
            problem = _point_state_problem(profile, point, str(state))
            if problem:
                r.problem(f"states.{point}", problem)
        for point, value in values.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                r.problem(f"values.{point}", f"must be a number, got {value!r}")
            elif problem := _value_problem(profile, point, float(value)):
                r.problem(f"values.{point}", problem)
    if not (isinstance(dev_id, str) and isinstance(unit, int) and profile):
        return None
    spec = DeviceSpec(
        dev_id,
        unit,
        profile,
        {k: str(v) for k, v in states.items()},
        {k: float(v) for k, v in values.items()},
        bool(r.get("writable_all", bool, False)),
    )
    ctx.devices[dev_id] = spec
    return spec


def _line(r: _Reader, ctx: _Context) -> LineSpec | None:
    r.check_keys(("id", "path", "baudrate", "parity", "stopbits", "wire_time", "devices"))
    line_id, path = r.get("id", str), r.get("path", str)
    baud = r.get("baudrate", int, 9600)
    parity, stopbits = r.get("parity", str, "N"), r.get("stopbits", int, 1)
    if parity not in ("N", "E", "O"):
        r.problem("parity", f"must be N, E or O, got {parity!r}")
    if stopbits not in (1, 2):
        r.problem("stopbits", f"must be 1 or 2, got {stopbits!r}")
    if isinstance(baud, int) and baud <= 0:
        r.problem("baudrate", "must be positive")
    devices = [d for d in (_device(dr, ctx) for dr in r.items("devices")) if d]
    units: dict[int, str] = {}
    for i, dev in enumerate(devices):
        if dev.unit_id in units:
            r.problem(
                f"devices[{i}].unit_id",
                f"unit id {dev.unit_id} already used by {units[dev.unit_id]!r} on this line",
            )
        units[dev.unit_id] = dev.id
    if line_id in ctx.lines:
        r.problem("id", f"duplicate line id {line_id!r}")
    if not (isinstance(line_id, str) and isinstance(path, str)):
        return None
    ctx.lines.add(line_id)
    wire_time = bool(r.get("wire_time", bool, False))
    return LineSpec(
        line_id, Path(path), baud or 9600, parity or "N", stopbits or 1, wire_time, devices
    )


def _gpio(r: _Reader, ctx: _Context) -> tuple[list[InputSpec], list[OutputSpec]]:
    inputs: list[InputSpec] = []
    outputs: list[OutputSpec] = []
    pins: dict[int, str] = {}
    for ir in r.items("inputs"):
        ir.check_keys(("id", "pin", "active", "rail", "initially_active"))
        iid, pin = ir.get("id", str), ir.get("pin", int)
        active, rail = ir.get("active", str, "low"), ir.get("rail", str, "gnd")
        if active not in ("low", "high"):
            ir.problem("active", f"must be low or high, got {active!r}")
        if rail not in ("gnd", "3v3"):
            ir.problem("rail", f"must be gnd or 3v3, got {rail!r}")
        if iid and pin is not None:
            if pin in pins:
                ir.problem("pin", f"pin {pin} already used by {pins[pin]!r}")
            pins[pin] = iid
            ctx.inputs.add(iid)
            inputs.append(
                InputSpec(
                    iid,
                    pin,
                    active or "low",
                    rail or "gnd",
                    bool(ir.get("initially_active", bool, False)),
                )
            )
    for orr in r.items("outputs"):
        orr.check_keys(("id", "pin"))
        oid, pin = orr.get("id", str), orr.get("pin", int)
        if oid and pin is not None:
            if pin in pins:
                orr.problem("pin", f"pin {pin} already used by {pins[pin]!r}")
            pins[pin] = oid
            outputs.append(OutputSpec(oid, pin))
    return inputs, outputs


def _check_step_names(r: _Reader, ctx: _Context, do: str, raw: dict[str, Any]) -> None:
    if "device" in raw and raw["device"] not in ctx.devices:
        r.problem(
            "device",
            f"unknown device {raw['device']!r} (known: " + ", ".join(sorted(ctx.devices)) + ")",
        )
    elif "point" in raw:
        profile = ctx.devices[raw["device"]].profile
        problem = _point_state_problem(profile, str(raw["point"]), raw.get("state"))
        if problem:
            r.problem("state" if "unknown point" not in problem else "point", problem)
        elif do == "value" and (problem := _value_problem(profile, raw["point"], raw["value"])):
            r.problem("value", problem)
    if "input" in raw and raw["input"] not in ctx.inputs:
        r.problem(
            "input",
            f"unknown input {raw['input']!r} (known: " + ", ".join(sorted(ctx.inputs)) + ")",
        )
    if "target" in raw and raw["target"] not in ctx.devices and raw["target"] not in ctx.lines:
        r.problem(
            "target",
            f"unknown device or line {raw['target']!r} (known: "
            + ", ".join(sorted(set(ctx.devices) | ctx.lines))
            + ")",
        )
    if do == "fault":
        try:
            make_fault(
                str(raw["kind"]),
                float(raw.get("rate", 1.0)),
                float(raw.get("delay", 1.0)),
                int(raw.get("code", 4)),
            )
        except (ValueError, TypeError) as exc:
            r.problem("kind", str(exc))


def _ramp(at: float, raw: dict[str, Any]) -> list[Step]:
    start, end, over = float(raw["from"]), float(raw["to"]), float(raw["over"])
    step = abs(float(raw.get("step", (end - start) / max(over, 1.0)))) or 1.0
    count = max(1, math.ceil(abs(end - start) / step - 1e-9))
    base = {"do": "value", "device": raw["device"], "point": raw["point"], "ramp": True}
    out = []
    for k in range(count + 1):
        value = end if k == count else start + math.copysign(step * k, end - start)
        out.append(Step(at + over * k / count, {**base, "value": round(value, 6)}))
    return out


def _step(r: _Reader, ctx: _Context) -> list[Step]:
    before = len(r.problems)
    do, at = r.get("do", str), r.get("at", (int, float))
    if do not in ACTIONS:
        if do is not None:
            r.problem("do", f"unknown action {do!r} (known: {', '.join(ACTIONS)})")
        return []
    needed, optional = STEP_KEYS[do], OPTIONAL_STEP_KEYS.get(do, ())
    r.check_keys(("at", "do", *needed, *optional))
    missing = [k for k in needed if k not in r.raw]
    for key in missing:
        r.problem(key, f"missing (a {do!r} step needs {', '.join(needed)})")
    for key in ("value", "from", "to", "over", "step", "rate", "delay"):
        if key in r.raw:
            r.get(key, (int, float))
    if at is not None and at < 0:
        r.problem("at", "must be >= 0")
    if missing or at is None or len(r.problems) > before:
        return []
    _check_step_names(r, ctx, do, r.raw)
    if len(r.problems) > before:
        return []
    if do == "ramp":
        return _ramp(float(at), r.raw)
    action = {k: v for k, v in r.raw.items() if k != "at"}
    return [Step(float(at), action)]


def _timeline(r: _Reader, ctx: _Context) -> tuple[list[Step], bool, float]:
    r.check_keys(("loop", "period", "steps"))
    steps = sorted((s for sr in r.items("steps") for s in _step(sr, ctx)), key=lambda s: s.at)
    loop = bool(r.get("loop", bool, False))
    last = steps[-1].at if steps else 0.0
    period = float(r.get("period", (int, float), last + 5.0) or last + 5.0)
    if loop and period <= last:
        r.problem("period", f"must be longer than the last step (at {last} s)")
    return steps, loop, period


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"not valid TOML: {exc}")]) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario; ConfigError with every problem (file, key, reason)."""
    path = Path(path)
    raw = _read_toml(path)
    problems: list[ConfigProblem] = []
    top = _Reader(raw, "", problems, str(path))
    top.check_keys(("simulator", "lines", "tcp_devices", "inputs", "outputs", "timeline"))
    sim = top.sub("simulator", raw.get("simulator", {}))
    sim.check_keys(("name", "log", "control", "gpio_socket", "profile_dirs"))
    dirs = [path.parent / d for d in sim.get("profile_dirs", list, []) or []]
    ctx = _Context(path, [*dirs, path.parent.parent / "profiles", BUILTIN_PROFILES])
    lines = [ln for ln in (_line(lr, ctx) for lr in top.items("lines")) if ln]
    tcp = []
    for tr in top.items("tcp_devices"):
        dev, port = _device(tr, ctx, ("port",)), tr.get("port", int)
        if dev and port is not None:
            tcp.append(TcpDeviceSpec(dev, port))
    inputs, outputs = _gpio(top, ctx)
    steps, loop, period = _timeline(top.sub("timeline", raw.get("timeline", {})), ctx)
    if problems:
        raise ConfigError(problems)
    log = sim.get("log", str, None)
    return Scenario(
        path,
        str(sim.get("name", str, path.stem)),
        lines,
        tcp,
        inputs,
        outputs,
        steps,
        loop,
        period,
        Path(log) if log else None,
        Path(sim.get("control", str, str(RUN_DIR / "control.sock"))),
        Path(sim.get("gpio_socket", str, str(RUN_DIR / "gpio.sock"))),
    )
