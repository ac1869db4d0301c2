"""Scenario files (TOML): what the simulated world holds and what happens to it, when.

`load_scenario(path)` reads lines, their devices (unit id, profile, initial
states and values), Modbus TCP devices, GPIO inputs and outputs, and a
timeline of steps, and checks every name against the profiles, so a typo is
caught before anything starts. What a file may hold is declared below with the
checking kit the config and profiles use (core/checks.py); problems come all at
once as a ConfigError naming the file and the key (`timeline.steps[3].state`).

This module must never start anything: it only reads and checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.checks import (
    IDENT,
    ArrayOf,
    Key,
    MapOf,
    Problems,
    Rule,
    Table,
    boolean,
    check_file,
    integer,
    known,
    number,
    one_of,
    path_list,
    path_text,
    text,
)
from core.errors import ConfigError
from drivers import codec
from drivers.codec import EncodeError
from drivers.profile import Profile, find_profiles, load_profile
from simulator.faults import make_fault
from simulator.platform import PlatformSpec

BUILTIN_PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"
RUN_DIR = Path("/tmp/alarmgw-sim")  # noqa: S108 - a rig's run directory, overridable

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
    "duty-check": (),  # the platform asks (simulator/platform.py): needs [platform]
    # a point's own alarm, whatever its kind of meaning (a state, a flag, a threshold): the
    # training rig and the scripted monthly self-check (simulator/world.py alarm_stimulus)
    "alarm": ("device", "point"),
    "clear-alarm": ("device", "point"),
}
OPTIONAL_STEP_KEYS = {
    "duty-check": ("timeout_s",),
    "ramp": ("step",),
    "fault": ("rate", "delay", "code"),
    "clear-fault": ("kind",),
}
ACTIONS = tuple(STEP_KEYS)

# --- what a scenario file may hold ------------------------------------------------------

SIMULATOR = Table(
    {
        "name": Key(text(), doc="default: the file name"),
        "log": Key(path_text, doc="a JSON-lines log of every stimulus"),
        "control": Key(path_text, default=str(RUN_DIR / "control.sock")),
        "gpio_socket": Key(path_text, default=str(RUN_DIR / "gpio.sock")),
        "profile_dirs": Key(path_list, default=[], doc="searched before the built-in profiles"),
    }
)

DEVICE = Table(
    {
        "id": Key(IDENT, required=True),
        "unit_id": Key(integer(1, 247), required=True),
        "profile": Key(IDENT, required=True),
        "states": Key(MapOf(text()), default={}, doc="point id -> initial state"),
        "values": Key(MapOf(number()), default={}, doc="point id -> initial value"),
        "writable_all": Key(boolean, default=False),
    }
)
TCP_DEVICE = DEVICE.extended({"port": Key(integer(1, 65535), required=True)})

LINE = Table(
    {
        "id": Key(IDENT, required=True),
        "path": Key(path_text, required=True, doc="the pseudo-terminal's link, e.g. /tmp/x/ttyV0"),
        "baudrate": Key(integer(1, 4_000_000), default=9600),
        "parity": Key(one_of("N", "E", "O"), default="N"),
        "stopbits": Key(one_of(1, 2), default=1),
        "wire_time": Key(boolean, default=False, doc="answer no faster than the wire would"),
        "devices": Key(ArrayOf(DEVICE), default=[]),
    }
)

INPUT = Table(
    {
        "id": Key(IDENT, required=True),
        "pin": Key(integer(0, 27), required=True),
        "active": Key(one_of("low", "high"), default="low"),
        "rail": Key(one_of("gnd", "3v3"), default="gnd"),
        "initially_active": Key(boolean, default=False),
    }
)
OUTPUT = Table({"id": Key(IDENT, required=True), "pin": Key(integer(0, 27), required=True)})


def _takes(do: str) -> tuple[str, ...]:
    return STEP_KEYS[do] + OPTIONAL_STEP_KEYS.get(do, ())


def _step_rules(key: str) -> tuple[Rule, ...]:
    """A step's keys depend on its action: those it needs, and only those it takes."""
    return (
        Rule(key, lambda t: "do" in t and key in STEP_KEYS[t["do"]] and key not in t,
             lambda t: f'required key is missing (a "{t["do"]}" step needs '
                       f'{", ".join(STEP_KEYS[t["do"]])})', reads=("do",)),
        Rule(key, lambda t: "do" in t and key in t and key not in _takes(t["do"]),
             lambda t: f'a "{t["do"]}" step has no {key} (it takes: {", ".join(_takes(t["do"]))})',
             reads=("do",)),
    )  # fmt: skip


_STEP_VALUES = {
    "device": Key(IDENT),
    "point": Key(IDENT),
    "state": Key(IDENT),
    "value": Key(number()),
    "from": Key(number()),
    "to": Key(number()),
    "over": Key(number(ge=0), doc="seconds"),
    "step": Key(number()),
    "input": Key(IDENT),
    "target": Key(IDENT, doc="a device or a line"),
    "kind": Key(text(), doc="a fault kind (simulator/faults.py)"),
    "rate": Key(number()),
    "delay": Key(number()),
    "code": Key(integer(1, 255), doc="the Modbus exception code of an exception fault"),
    "timeout_s": Key(integer(10, 3600), doc="a duty check's timeout (default the gateway's)"),
}
STEP = Table(
    {
        "at": Key(number(ge=0), required=True, doc="seconds from the start of the timeline"),
        "do": Key(one_of(*ACTIONS), required=True),
        **_STEP_VALUES,
    },
    rules=tuple(rule for key in _STEP_VALUES for rule in _step_rules(key)),
)

TIMELINE = Table(
    {
        "loop": Key(boolean, default=False),
        "period": Key(number(gt=0), doc="of a loop; default: 5 s after the last step"),
        "steps": Key(ArrayOf(STEP), default=[]),
    }
)

# the platform's stand-in (simulator/platform.py): whom its commands address, via which broker
PLATFORM = Table(
    {
        "site": Key(IDENT, required=True),
        "gateway": Key(IDENT, required=True),
        "host": Key(text(253, nonempty=True), default="127.0.0.1"),
        "port": Key(integer(1, 65535), default=1883, doc="alarmgw-sim run --broker overrides"),
        "topic_prefix": Key(text(100, nonempty=True), default="alarmgw"),
    }
)

SCENARIO_FILE = Table(
    {
        "simulator": Key(SIMULATOR, default={}),
        "platform": Key(PLATFORM, doc="needed by duty-check steps"),
        "lines": Key(ArrayOf(LINE), default=[]),
        "tcp_devices": Key(ArrayOf(TCP_DEVICE), default=[]),
        "inputs": Key(ArrayOf(INPUT), default=[]),
        "outputs": Key(ArrayOf(OUTPUT), default=[]),
        "timeline": Key(TIMELINE, default={}),
    },
    doc="An alarmgw-sim scenario: the simulated world and its timeline.",
)


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
    platform: PlatformSpec | None = None

    def devices(self) -> dict[str, DeviceSpec]:
        out = {d.id: d for line in self.lines for d in line.devices}
        out.update({t.device.id: t.device for t in self.tcp_devices})
        return out


# --- the checks between sections, and the built values -----------------------------------


class _Context:
    """What the checks of a later section need from earlier ones."""

    def __init__(self, profile_dirs: list[Path], out: Problems) -> None:
        self.out = out
        self.profile_files = find_profiles(profile_dirs)
        self.profiles: dict[str, Profile | None] = {}
        self.devices: dict[str, DeviceSpec] = {}
        self.lines: set[str] = set()
        self.inputs: set[str] = set()
        self.platform = False

    def profile(self, where: str, name: str) -> Profile | None:
        """The profile, loaded once; an unknown or invalid one is reported at its first use."""
        if name in self.profiles:
            return self.profiles[name]
        self.profiles[name] = None
        if name not in self.profile_files:
            self.out.add(where, f'unknown profile "{name}" (known: {known(self.profile_files)})')
            return None
        try:
            self.profiles[name] = load_profile(self.profile_files[name])
        except ConfigError as exc:
            self.out.add(where, f'profile "{name}" is invalid, see below')
            self.out.extend(exc.problems)
        return self.profiles[name]


def _point_state_problem(profile: Profile, point: str, state: str | None) -> str | None:
    if point not in profile.points:
        return f'unknown point "{point}" of profile "{profile.id}" (known: {known(profile.points)})'
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


def _device(clean: Mapping[str, Any], where: str, ctx: _Context) -> DeviceSpec | None:
    v = DEVICE.with_defaults(clean)
    if v["id"] in ctx.devices:
        ctx.out.add(f"{where}.id", f'duplicate device id "{v["id"]}"')
    profile = ctx.profile(f"{where}.profile", v["profile"]) if v["profile"] else None
    if profile is not None:
        for point, state in v["states"].items():
            if problem := _point_state_problem(profile, point, state):
                ctx.out.add(f"{where}.states.{point}", problem)
        for point, value in v["values"].items():
            if problem := _value_problem(profile, point, float(value)):
                ctx.out.add(f"{where}.values.{point}", problem)
    if v["id"] is None or v["unit_id"] is None or profile is None:
        return None
    spec = DeviceSpec(
        v["id"],
        v["unit_id"],
        profile,
        dict(v["states"]),
        {k: float(x) for k, x in v["values"].items()},
        v["writable_all"],
    )
    ctx.devices[spec.id] = spec
    return spec


def _line(clean: Mapping[str, Any], where: str, ctx: _Context) -> LineSpec | None:
    v = LINE.with_defaults(clean)
    found = [(i, _device(d, f"{where}.devices[{i}]", ctx)) for i, d in enumerate(v["devices"])]
    devices = [(i, d) for i, d in found if d is not None]
    units: dict[int, str] = {}
    for i, dev in devices:
        if dev.unit_id in units:
            ctx.out.add(
                f"{where}.devices[{i}].unit_id",
                f'unit id {dev.unit_id} already used by "{units[dev.unit_id]}" on this line',
            )
        units[dev.unit_id] = dev.id
    if v["id"] in ctx.lines:
        ctx.out.add(f"{where}.id", f'duplicate line id "{v["id"]}"')
    if v["id"] is None or v["path"] is None:
        return None
    ctx.lines.add(v["id"])
    return LineSpec(
        v["id"],
        Path(v["path"]),
        v["baudrate"],
        v["parity"],
        v["stopbits"],
        v["wire_time"],
        [d for _, d in devices],
    )


def _gpio(clean: Mapping[str, Any], ctx: _Context) -> tuple[list[InputSpec], list[OutputSpec]]:
    inputs: list[InputSpec] = []
    outputs: list[OutputSpec] = []
    pins: dict[int, str] = {}
    for name in ("inputs", "outputs"):
        for i, item in enumerate(clean.get(name, [])):
            if "id" not in item or "pin" not in item:
                continue
            iid, pin = item["id"], item["pin"]
            if pin in pins:
                ctx.out.add(f"{name}[{i}].pin", f'pin {pin} already used by "{pins[pin]}"')
            pins[pin] = iid
            if name == "outputs":
                outputs.append(OutputSpec(iid, pin))
                continue
            v = INPUT.with_defaults(item)
            ctx.inputs.add(iid)
            inputs.append(InputSpec(iid, pin, v["active"], v["rail"], v["initially_active"]))
    return inputs, outputs


def _unknown(what: str, name: str, names: set[str] | dict[str, Any]) -> str:
    return f'unknown {what} "{name}" (known: {known(names)})'


def _check_step_names(step: Mapping[str, Any], where: str, ctx: _Context) -> None:
    do, out = step["do"], ctx.out
    if "device" in step and step["device"] not in ctx.devices:
        out.add(f"{where}.device", _unknown("device", step["device"], ctx.devices))
    elif "point" in step:
        profile = ctx.devices[step["device"]].profile
        problem = _point_state_problem(profile, step["point"], step.get("state"))
        if problem:
            out.add(f"{where}.{'point' if 'unknown point' in problem else 'state'}", problem)
        elif do == "value" and (problem := _value_problem(profile, step["point"], step["value"])):
            out.add(f"{where}.value", problem)
    if "input" in step and step["input"] not in ctx.inputs:
        out.add(f"{where}.input", _unknown("input", step["input"], ctx.inputs))
    if "target" in step and step["target"] not in ctx.devices and step["target"] not in ctx.lines:
        out.add(
            f"{where}.target",
            _unknown("device or line", step["target"], set(ctx.devices) | ctx.lines),
        )
    if do == "duty-check" and not ctx.platform:
        out.add(f"{where}.do", "a duty-check step needs a [platform] section (site, gateway)")
    if do == "fault":
        try:
            make_fault(
                step["kind"], step.get("rate", 1.0), step.get("delay", 1.0), step.get("code", 4)
            )
        except ValueError as exc:
            out.add(f"{where}.kind", str(exc))


def _ramp(at: float, raw: Mapping[str, Any]) -> list[Step]:
    start, end, over = float(raw["from"]), float(raw["to"]), float(raw["over"])
    step = abs(float(raw.get("step", (end - start) / max(over, 1.0)))) or 1.0
    count = max(1, math.ceil(abs(end - start) / step - 1e-9))
    base = {"do": "value", "device": raw["device"], "point": raw["point"], "ramp": True}
    out = []
    for k in range(count + 1):
        value = end if k == count else start + math.copysign(step * k, end - start)
        out.append(Step(at + over * k / count, {**base, "value": round(value, 6)}))
    return out


def _timeline(clean: Mapping[str, Any], ctx: _Context) -> tuple[list[Step], bool, float]:
    v = TIMELINE.with_defaults(clean)
    steps: list[Step] = []
    for i, step in enumerate(v["steps"]):
        where = f"timeline.steps[{i}]"
        if ctx.out.under(where):
            continue
        _check_step_names(step, where, ctx)
        if ctx.out.under(where):
            continue
        if step["do"] == "ramp":
            steps += _ramp(float(step["at"]), step)
        else:
            steps.append(Step(float(step["at"]), {k: x for k, x in step.items() if k != "at"}))
    steps.sort(key=lambda s: s.at)
    last = steps[-1].at if steps else 0.0
    period = float(v["period"] if v["period"] is not None else last + 5.0)
    if v["loop"] and period <= last:
        ctx.out.add("timeline.period", f"must be longer than the last step (at {last} s)")
    return steps, v["loop"], period


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario; ConfigError with every problem (file, key, reason)."""
    path = Path(path)
    clean, out = check_file(path, SCENARIO_FILE)
    sim = SIMULATOR.with_defaults(clean.get("simulator", {}))
    dirs = [path.parent / d for d in sim["profile_dirs"]]
    ctx = _Context([*dirs, path.parent.parent / "profiles", BUILTIN_PROFILES], out)
    found = (_line(ln, f"lines[{i}]", ctx) for i, ln in enumerate(clean.get("lines", [])))
    lines = [line for line in found if line is not None]
    tcp = []
    for i, item in enumerate(clean.get("tcp_devices", [])):
        dev = _device(item, f"tcp_devices[{i}]", ctx)
        if dev is not None and "port" in item:
            tcp.append(TcpDeviceSpec(dev, item["port"]))
    inputs, outputs = _gpio(clean, ctx)
    platform = _platform(clean.get("platform"))
    ctx.platform = platform is not None or out.under("platform")  # one mistake, one problem
    steps, loop, period = _timeline(clean.get("timeline", {}), ctx)
    out.raise_if_any()
    return Scenario(
        path,
        sim["name"] or path.stem,
        lines,
        tcp,
        inputs,
        outputs,
        steps,
        loop,
        period,
        Path(sim["log"]) if sim["log"] else None,
        Path(sim["control"]),
        Path(sim["gpio_socket"]),
        platform,
    )


def _platform(clean: Mapping[str, Any] | None) -> PlatformSpec | None:
    if clean is None or "site" not in clean or "gateway" not in clean:
        return None
    v = PLATFORM.with_defaults(clean)
    return PlatformSpec(v["site"], v["gateway"], v["host"], v["port"], v["topic_prefix"])
