"""Load the gateway's TOML config into typed, frozen values — or refuse, naming every problem.

An alarm system must refuse to start on bad config rather than guess: this module
never repairs a value, never drops an unknown key silently and never stops at the
first problem. `load_config` checks in three layers and then raises one
`ConfigError` listing every `ConfigProblem(file, key, reason)`:

  (a) each key on its own: type, range, unknown keys (typos such as `baudrat`);
  (b) keys of one table together, as rules (`host` on an rtu line...);
  (c) the whole config: duplicate ids, references between tables, shared
      resources (serial ports, unit ids, GPIO pins), device profiles and overrides.

(a) and (b) are declared in agent/config_schema.py with the checking kit shared with
profiles and scenarios (core/checks.py), (c) is agent/config_checks.py, and the files
the uplink opens are checked as the service opens them in agent/config_files.py.
Only values that passed layer (a) reach layers (b) and (c), so one mistake is
reported once. Defaults are applied only when building the final dataclasses.

It must never open a serial port, a socket or a GPIO pin: checking a config is
safe on a running gateway. Key paths look like `lines[0].baudrate` and
`devices[1].points.ch1_leak.threshold.alarm`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config_checks import BUILTIN_PROFILE_DIR as BUILTIN_PROFILE_DIR  # noqa: PLC0414
from agent.config_checks import GATEWAY_DEVICE_ID as GATEWAY_DEVICE_ID  # noqa: PLC0414
from agent.config_checks import SYSTEM_PROFILE_DIR as SYSTEM_PROFILE_DIR  # noqa: PLC0414
from agent.config_checks import (
    WHOLE_CONFIG_CHECKS,
    check_device_overrides,
    check_selfcheck_points,
    load_profiles,
)
from agent.config_files import check_uplink_files
from agent.config_schema import (
    BUFFER,
    CLOCK,
    CONFIG_FILE,
    CONTROL,
    DUTIES,
    GB26875,
    IDENTITY,
    INPUT,
    INPUT_GB,
    LINE,
    OUTPUT,
    SELFCHECK,
    SELFTEST,
    SITE,
    Checked,
    config_relative,
)
from agent.config_schema import DEVICE as DEVICE  # noqa: PLC0414 - re-exported
from agent.config_schema import UPLINK as UPLINK  # noqa: PLC0414
from core.checks import Problems, check_file
from core.events import Category, Identity, Kind, Severity
from drivers.profile import Profile
from drivers.profile_schema import POINT_OVERRIDE
from drivers.types import inter_frame_gap_ms

# --- the values the rest of the gateway receives -------------------------------------


@dataclass(frozen=True)
class UplinkConfig:
    host: str
    port: int
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    credentials_file: Path | None
    topic_prefix: str
    mqtt_version: str  # "3.1.1" or "5"
    keepalive_s: int
    heartbeat_s: float
    inflight_window: int
    reconnect_min_s: float
    reconnect_max_s: float
    client_id: str

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


@dataclass(frozen=True)
class GbConfig:
    """[gb26875]: the GB/T 26875.3 uplink to the city's fire remote-monitoring centre
    (agent/gb26875/uplink.py; docs/gb26875.md). Addresses are the 6-byte integers."""

    host: str
    port: int
    uitd_address: int
    centre_address: int
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    minor_version: int = 0
    heartbeat_s: float = 30.0
    confirm_timeout_s: float = 5.0
    resends: int = 3
    set_clock: bool = False
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 8.0

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


@dataclass(frozen=True)
class BufferConfig:
    path: Path
    max_events: int


@dataclass(frozen=True)
class ClockConfig:
    source: str  # "kernel" | "assume-synced" | "assume-unsynced"


@dataclass(frozen=True)
class LineConfig:
    """One Modbus line. Serial fields keep their defaults on a tcp line and mean nothing there."""

    id: str
    type: str  # "rtu" | "tcp"
    port: str | None  # serial device path (rtu)
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    host: str | None  # tcp
    tcp_port: int | None  # tcp
    timeout_s: float
    retries: int
    inter_frame_gap_ms: float  # resolved: never None
    max_gap: int
    max_block: int


@dataclass(frozen=True)
class PointOverride:
    name: str | None
    enabled: bool
    threshold: dict[str, float]
    telemetry_s: float | None
    deadband: float | None
    writable: bool


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    name: str
    location: str
    line: str
    unit_id: int
    profile: str
    fast_poll_s: float
    slow_poll_s: float
    comm_fault_after: int
    timeout_s: float | None  # None: the line's
    retries: int | None  # None: the line's
    backoff_max_s: float
    points: dict[str, PointOverride]
    gb_system_address: int = 1  # GB/T 26875.3 system address (default: position in [[devices]])


@dataclass(frozen=True)
class InputConfig:
    id: str
    name: str
    pin: int
    pull: str  # "up" | "down" | "none"
    active: str  # "high" | "low"
    debounce_ms: int
    category: Category
    severity: Severity
    kind: Kind
    active_state: str
    inactive_state: str
    gb: InputGb | None = None  # the contact as a GB/T 26875.3 component
    role: str = "contact"  # "contact" | "manual_call_point" | "duty_answer"


@dataclass(frozen=True)
class InputGb:
    """[inputs.gb]: where a contact sits in GB/T 26875.3 terms; `status`: its bits while
    active (None: by its kind)."""

    system_type: int
    system_address: int
    component_type: int
    zone: int
    position: int
    status: tuple[str, ...] | None


@dataclass(frozen=True)
class OutputConfig:
    id: str
    name: str
    pin: int
    type: str  # "buzzer" | "led" | "relay"
    active: str  # "high" | "low"
    rule: str


@dataclass(frozen=True)
class SiteConfig:
    language: str  # "zh" | "en": the language of event text


@dataclass(frozen=True)
class DutiesConfig:
    """The UITD duties (GB 26875.1): duty check, transmission light, failure signal."""

    duty_check_timeout_s: float = 600.0
    transmission_hold_s: float = 300.0
    transmission_fail_after_s: float = 40.0
    link_fault_after_s: float = 100.0


@dataclass(frozen=True)
class ControlConfig:
    socket: Path
    group: str | None


@dataclass(frozen=True)
class SelfTestConfig:
    """[selftest] and [selfcheck]: the UITD duties of agent/uitd_duty.py."""

    selftest_time: str = "03:00"  # local "HH:MM"
    min_simulated_fires: int = 2
    reminder_day: int = 25
    check_points: tuple[str, ...] | None = None  # None: every alarm input and point
    point_timeout_s: float = 120.0


@dataclass(frozen=True)
class Config:
    path: Path
    identity: Identity
    uplink: UplinkConfig
    buffer: BufferConfig
    clock: ClockConfig
    lines: list[LineConfig]
    devices: list[DeviceConfig]
    inputs: list[InputConfig]
    outputs: list[OutputConfig]
    control: ControlConfig
    profiles: dict[str, Profile] = field(default_factory=dict)  # by profile id (file stem)
    site: SiteConfig = SiteConfig("zh")
    duties: DutiesConfig = DutiesConfig()
    selftests: SelfTestConfig = SelfTestConfig()
    gb26875: GbConfig | None = None  # None: no [gb26875] section, no GB uplink


# --- building them from what passed the checks ------------------------------------------


def _build_identity(clean: Mapping[str, Any]) -> Identity:
    v = IDENTITY.with_defaults(clean)
    return Identity(v["site"], v["gateway"], v["site_name"], v["gateway_name"])


def _build_uplink(clean: Mapping[str, Any], ident: Identity, base: Path) -> UplinkConfig:
    v = UPLINK.with_defaults(clean)
    tls = v["ca_file"] is not None
    return UplinkConfig(
        host=v["host"],
        port=v["port"] if v["port"] is not None else (8883 if tls else 1883),
        ca_file=config_relative(v["ca_file"], base),
        cert_file=config_relative(v["cert_file"], base),
        key_file=config_relative(v["key_file"], base),
        credentials_file=config_relative(v["credentials_file"], base),
        topic_prefix=v["topic_prefix"],
        mqtt_version=v["mqtt_version"],
        keepalive_s=v["keepalive_s"],
        heartbeat_s=float(v["heartbeat_s"]),
        inflight_window=v["inflight_window"],
        reconnect_min_s=float(v["reconnect_min_s"]),
        reconnect_max_s=float(v["reconnect_max_s"]),
        client_id=v["client_id"] or f"alarmgw-{ident.site}-{ident.gateway}",
    )


def _build_gb(clean: Mapping[str, Any], base: Path) -> GbConfig | None:
    if not clean:  # no [gb26875] section: no GB uplink
        return None
    v = GB26875.with_defaults(clean)
    return GbConfig(
        host=v["host"],
        port=v["port"],
        uitd_address=v["uitd_address"],
        centre_address=v["centre_address"],
        ca_file=config_relative(v["ca_file"], base),
        cert_file=config_relative(v["cert_file"], base),
        key_file=config_relative(v["key_file"], base),
        minor_version=v["minor_version"],
        heartbeat_s=float(v["heartbeat_s"]),
        confirm_timeout_s=float(v["confirm_timeout_s"]),
        resends=v["resends"],
        set_clock=v["set_clock"],
        reconnect_min_s=float(v["reconnect_min_s"]),
        reconnect_max_s=float(v["reconnect_max_s"]),
    )


def _build_line(clean: Mapping[str, Any]) -> LineConfig:
    v = LINE.with_defaults(clean)
    rtu = v["type"] == "rtu"
    gap = v["inter_frame_gap_ms"]
    if gap is None:
        gap = inter_frame_gap_ms(v["baudrate"], v["bytesize"], v["parity"], v["stopbits"])
        gap = gap if rtu else 0.0  # TCP frames are delimited by the MBAP header
    return LineConfig(
        id=v["id"],
        type=v["type"],
        port=v["port"] if rtu else None,
        baudrate=v["baudrate"],
        parity=v["parity"],
        stopbits=v["stopbits"],
        bytesize=v["bytesize"],
        host=None if rtu else v["host"],
        tcp_port=None if rtu else (v["port"] if v["port"] is not None else 502),
        timeout_s=float(v["timeout_s"]),
        retries=v["retries"],
        inter_frame_gap_ms=float(gap),
        max_gap=v["max_gap"],
        max_block=v["max_block"],
    )


def _build_override(clean: Mapping[str, Any]) -> PointOverride:
    v = POINT_OVERRIDE.with_defaults(clean)
    return PointOverride(
        name=v["name"],
        enabled=v["enabled"],
        threshold=dict(v["threshold"]),
        telemetry_s=None if v["telemetry_s"] is None else float(v["telemetry_s"]),
        deadband=None if v["deadband"] is None else float(v["deadband"]),
        writable=v["writable"],
    )


def _build_device(clean: Mapping[str, Any], position: int) -> DeviceConfig:
    v = DEVICE.with_defaults(clean)
    gb_address = v["gb_system_address"]
    return DeviceConfig(
        id=v["id"],
        name=v["name"] if v["name"] is not None else v["id"],
        location=v["location"],
        line=v["line"],
        unit_id=v["unit_id"],
        profile=v["profile"],
        fast_poll_s=float(v["fast_poll_s"]),
        slow_poll_s=float(v["slow_poll_s"]),
        comm_fault_after=v["comm_fault_after"],
        timeout_s=None if v["timeout_s"] is None else float(v["timeout_s"]),
        retries=v["retries"],
        backoff_max_s=float(v["backoff_max_s"]),
        points={pid: _build_override(o) for pid, o in v["points"].items()},
        gb_system_address=position if gb_address is None else gb_address,
    )


def _build_input(clean: Mapping[str, Any]) -> InputConfig:
    v = INPUT.with_defaults(clean)
    # A pull-up idles high, so the contact is active when it pulls the pin low (and vice versa).
    active = v["active"] or ("low" if v["pull"] == "up" else "high")
    # a duty_answer button raises no event of its own: its category and severity are unused
    category = v["category"] or Category.MANUAL.value
    severity = v["severity"] or Severity.INFO.value
    return InputConfig(
        id=v["id"],
        name=v["name"] if v["name"] is not None else v["id"],
        pin=v["pin"],
        pull=v["pull"],
        active=active,
        debounce_ms=v["debounce_ms"],
        category=Category(category),
        severity=Severity(severity),
        kind=Kind(v["kind"]),
        active_state=v["active_state"],
        inactive_state=v["inactive_state"],
        gb=None if v["gb"] is None else _build_input_gb(v["gb"]),
        role=v["role"],
    )


def _build_input_gb(clean: Mapping[str, Any]) -> InputGb:
    v = INPUT_GB.with_defaults(clean)
    status = None if v["status"] is None else tuple(v["status"])
    return InputGb(
        v["system_type"], v["system_address"], v["component_type"], v["zone"], v["position"],
        status,
    )  # fmt: skip


def _build_output(clean: Mapping[str, Any]) -> OutputConfig:
    v = OUTPUT.with_defaults(clean)
    name = v["name"] if v["name"] is not None else v["id"]
    return OutputConfig(v["id"], name, v["pin"], v["type"], v["active"], v["rule"])


def _build_duties(clean: Mapping[str, Any]) -> DutiesConfig:
    v = DUTIES.with_defaults(clean)
    return DutiesConfig(
        duty_check_timeout_s=float(v["duty_check_timeout_s"]),
        transmission_hold_s=float(v["transmission_hold_s"]),
        transmission_fail_after_s=float(v["transmission_fail_after_s"]),
        link_fault_after_s=float(v["link_fault_after_s"]),
    )


def build(path: Path, checked: Checked, profiles: dict[str, Profile]) -> Config:
    """Only called when no problem was found: every required key is present and valid."""
    base = path.parent
    s, a = checked.sections, checked.arrays
    identity = _build_identity(s["identity"])
    buffer = BUFFER.with_defaults(s["buffer"])
    control = CONTROL.with_defaults(s["control"])
    return Config(
        path=path,
        identity=identity,
        uplink=_build_uplink(s["uplink"], identity, base),
        buffer=BufferConfig(base / buffer["path"], buffer["max_events"]),
        clock=ClockConfig(CLOCK.with_defaults(s["clock"])["source"]),
        lines=[_build_line(t) for t in a["lines"]],
        devices=[_build_device(t, i) for i, t in enumerate(a["devices"], start=1)],
        inputs=[_build_input(t) for t in a["inputs"]],
        outputs=[_build_output(t) for t in a["outputs"]],
        control=ControlConfig(base / control["socket"], control["group"]),
        profiles=profiles,
        site=SiteConfig(SITE.with_defaults(s["site"])["language"]),
        duties=_build_duties(s["duties"]),
        selftests=_build_selftests(s["selftest"], s["selfcheck"]),
        gb26875=_build_gb(s["gb26875"], base),
    )


def _build_selftests(selftest: Mapping[str, Any], selfcheck: Mapping[str, Any]) -> SelfTestConfig:
    t, c = SELFTEST.with_defaults(selftest), SELFCHECK.with_defaults(selfcheck)
    points = c["points"]
    return SelfTestConfig(
        selftest_time=t["time"],
        min_simulated_fires=c["min_simulated_fires"],
        reminder_day=c["reminder_day"],
        check_points=None if points is None else tuple(points),
        point_timeout_s=float(c["point_timeout_s"]),
    )


def load_config(path: str | Path) -> Config:
    """Read, check and build the config; raise ConfigError listing every problem found."""
    out = Problems(Path(path))  # problems name the file as the technician typed it
    path = Path(path).absolute()
    clean, _ = check_file(path, CONFIG_FILE, out)
    checked = Checked.of(clean)  # layers (a) and (b)
    for check in WHOLE_CONFIG_CHECKS:
        check(checked, out)
    if not out.items:  # files last: one mistake in the config gives one problem
        check_uplink_files(checked, path.parent, out)
    profiles = load_profiles(checked, path.parent, out)
    check_device_overrides(checked, profiles, out)
    check_selfcheck_points(checked, profiles, out)
    out.raise_if_any()
    return build(path, checked, profiles)


def config_digest(path: str | Path) -> str:
    """Identifies the config a gateway runs (status message): sha256 of the bytes, 16 hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
