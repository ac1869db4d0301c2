"""Load the gateway's TOML config into typed, frozen values — or refuse, naming every problem.

An alarm system must refuse to start on bad config rather than guess: this module
never repairs a value, never drops an unknown key silently and never stops at the
first problem. `load_config` checks in three layers and then raises one
`ConfigError` listing every `ConfigProblem(file, key, reason)`:

  (a) each key on its own: type, range, unknown keys (typos such as `baudrat`);
  (b) keys of one table together, as a small rule table (`host` on an rtu line...);
  (c) the whole config: duplicate ids, references between tables, shared
      resources (serial ports, unit ids, GPIO pins), device profiles and overrides.

Only values that passed layer (a) reach layers (b) and (c), so one mistake is
reported once. Defaults are applied only when building the final dataclasses.

It must never open a serial port, a socket or a GPIO pin: checking a config is
safe on a running gateway. Key paths look like `lines[0].baudrate` and
`devices[1].points.ch1_leak.threshold.alarm`.
"""

from __future__ import annotations

import contextlib
import difflib
import grp
import hashlib
import importlib
import math
import os
import pwd
import re
import stat
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, ConfigProblem
from core.events import GATEWAY_DEVICE, Category, Identity, Kind, Severity
from drivers.types import Table, inter_frame_gap_ms

if TYPE_CHECKING:  # imported lazily at run time: see _profile_loader
    from drivers.profile import PointSpec, Profile

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


@dataclass(frozen=True)
class OutputConfig:
    id: str
    name: str
    pin: int
    type: str  # "buzzer" | "led" | "relay"
    active: str  # "high" | "low"
    rule: str


@dataclass(frozen=True)
class ControlConfig:
    socket: Path
    group: str | None


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
    language: str = "zh"  # [site] language: of the texts the gateway writes (agent/texts.py)


# --- constants -------------------------------------------------------------------------

STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
OUTPUT_RULES = ("alarm", "uplink-down-blink", "none")
INPUT_KINDS = (Kind.ALARM, Kind.FAULT, Kind.SUPERVISORY, Kind.STATE)
# Reserved for the gateway's own events; a contact cannot be a comm or system fault.
INPUT_CATEGORIES = tuple(c for c in Category if c not in (Category.COMM, Category.SYSTEM))
GATEWAY_DEVICE_ID = GATEWAY_DEVICE  # the `device` of gateway-internal events
BUILTIN_PROFILE_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"
SYSTEM_PROFILE_DIR = Path("/usr/share/alarmgw/profiles")
# The Pi's own UART pins: a line on the built-in serial port owns them.
PI_UART_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")
PI_UART_PINS = (14, 15)

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,253}$")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,256}$")
_GROUP_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


# --- collecting problems ---------------------------------------------------------------


class Problems:
    """Every problem found in one config file, in the order found."""

    def __init__(self, file: Path) -> None:
        self.file = str(file)
        self.items: list[ConfigProblem] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append(ConfigProblem(self.file, key, reason))

    def extend(self, problems: Iterable[ConfigProblem]) -> None:
        self.items.extend(problems)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- layer (a): one value at a time ------------------------------------------------------

Check = Callable[[Any], str | None]  # the reason a value is wrong, or None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(lo: int, hi: int) -> Check:
    def check(value: Any) -> str | None:
        if not _is_int(value):
            return f"must be an integer, got {_shown(value)}"
        if not lo <= value <= hi:
            return f"must be {lo}..{hi}, got {value}"
        return None

    return check


def number(*, gt: float | None = None, ge: float | None = None, le: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if not _is_number(value):
            return f"must be a number, got {_shown(value)}"
        if gt is not None and not value > gt:
            return f"must be greater than {gt:g}, got {value}"
        if ge is not None and not value >= ge:
            return f"must be at least {ge:g}, got {value}"
        if le is not None and not value <= le:
            return f"must be at most {le:g}, got {value}"
        return None

    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> str | None:
        # bool == 1 in Python; a boolean is never a valid choice here
        if isinstance(value, bool) or value not in choices:
            listed = ", ".join(_shown(c) for c in choices)
            return f"must be one of {listed}, got {_shown(value)}"
        return None

    return check


def matching(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string ({what}), got {_shown(value)}"
        if not pattern.fullmatch(value):
            return f"must be {what}, got {_shown(value)}"
        return None

    return check


def text(max_len: int = 200) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, got {_shown(value)}"
        if len(value) > max_len:
            return f"must be at most {max_len} characters, got {len(value)}"
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            return "must not contain control characters"
        return None

    return check


def nonempty_text(max_len: int = 200) -> Check:
    inner = text(max_len)

    def check(value: Any) -> str | None:
        if isinstance(value, str) and not value.strip():
            return "must not be empty"
        return inner(value)

    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"


def path_text(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty path string, got {_shown(value)}"
    if "\x00" in value:
        return "must not contain NUL"
    return None


def path_list(value: Any) -> str | None:
    if not isinstance(value, list) or any(path_text(v) for v in value):
        return f"must be a list of directory path strings, got {_shown(value)}"
    return None


def serial_port_or_tcp_port(value: Any) -> str | None:
    # Which of the two it must be depends on the line's type: rule table, layer (b).
    if isinstance(value, str):
        return path_text(value)
    return integer(1, 65535)(value)


def topic_prefix(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {_shown(value)}"
    if any(ch in value for ch in "+#\x00") or value.startswith("$"):
        return "must not contain MQTT wildcards (+ #), NUL, or start with $"
    if any(not level for level in value.split("/")):
        return "must not have empty topic levels (leading, trailing or double /)"
    if len(value) > 100:
        return "must be at most 100 characters"
    return None


IDENT = matching(_ID_RE, "an id of 1-64 characters A-Z a-z 0-9 _ - (it goes into MQTT topics)")
HOST = matching(_HOST_RE, "a host name or IP address")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


@dataclass(frozen=True)
class Key:
    """How one key of a table is checked; `default` is applied only when building."""

    check: Check
    required: bool = False
    default: Any = None


Schema = Mapping[str, Key]


def check_table(raw: Any, where: str, schema: Schema, out: Problems) -> dict[str, Any]:
    """Layer (a) for one table: returns the keys that are present AND valid, nothing else."""
    if not isinstance(raw, dict):
        out.add(where, f"must be a table, got {_shown(raw)}")
        return {}
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        spec = schema.get(key)
        if spec is None:
            out.add(_join(where, key), _unknown_key_reason(key, schema))
            continue
        reason = spec.check(value)
        if reason:
            out.add(_join(where, key), reason)
        else:
            clean[key] = value
    for key, spec in schema.items():
        if spec.required and key not in raw:
            out.add(_join(where, key), "required key is missing")
    return clean


def _unknown_key_reason(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown key{hint}"


def check_array(raw: Any, where: str, schema: Schema, out: Problems) -> list[dict[str, Any]]:
    """An array of tables such as [[lines]]; each element is checked by `check_table`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        out.add(where, f"must be an array of tables ([[{where}]]), got {_shown(raw)}")
        return []
    return [check_table(item, f"{where}[{i}]", schema, out) for i, item in enumerate(raw)]


IDENTITY: Schema = {
    "site": Key(IDENT, required=True),
    "gateway": Key(IDENT, required=True),
    "site_name": Key(text(), default=""),
    "gateway_name": Key(text(), default=""),
}

UPLINK: Schema = {
    "host": Key(HOST, required=True),
    "port": Key(integer(1, 65535)),  # default depends on TLS: see _build_uplink
    "ca_file": Key(path_text),
    "cert_file": Key(path_text),
    "key_file": Key(path_text),
    "credentials_file": Key(path_text),
    "topic_prefix": Key(topic_prefix, default="alarmgw"),
    "mqtt_version": Key(one_of("3.1.1", "5"), default="3.1.1"),
    "keepalive_s": Key(integer(5, 3600), default=30),
    "heartbeat_s": Key(number(ge=5, le=3600), default=30),
    "inflight_window": Key(integer(1, 1000), default=50),
    # 2 s and 8 s: after a broker restart every gateway is back within 8 s (the 10 s alarm
    # promise), and a fleet reconnects at no more than about N/4 per second (bench_fleet.py)
    "reconnect_min_s": Key(number(gt=0, le=3600), default=2),
    "reconnect_max_s": Key(number(gt=0, le=3600), default=8),
    "client_id": Key(matching(_CLIENT_ID_RE, "1-256 characters A-Z a-z 0-9 _ . : -")),
}

BUFFER: Schema = {
    "path": Key(path_text, default="/var/lib/alarmgw/buffer.db"),
    "max_events": Key(integer(100, 100_000_000), default=100_000),
}

CLOCK: Schema = {
    "source": Key(one_of("kernel", "assume-synced", "assume-unsynced"), default="kernel"),
}

CONTROL: Schema = {
    "socket": Key(path_text, default="/run/alarmgw/control.sock"),
    "group": Key(matching(_GROUP_RE, "a Unix group name")),
}

PROFILES: Schema = {"dirs": Key(path_list, default=[])}

SERIAL_OPTIONS = ("baudrate", "parity", "stopbits", "bytesize")

LINE: Schema = {
    "id": Key(IDENT, required=True),
    "type": Key(one_of("rtu", "tcp"), required=True),
    "port": Key(serial_port_or_tcp_port),
    "host": Key(HOST),
    "baudrate": Key(one_of(*STANDARD_BAUDRATES), default=9600),
    "parity": Key(one_of("N", "E", "O"), default="N"),
    "stopbits": Key(one_of(1, 2), default=1),
    "bytesize": Key(one_of(7, 8), default=8),
    # <= 10 s: one exchange must stay well inside the 30 s systemd watchdog (a device
    # answers in milliseconds; seconds only help a slow gateway behind Modbus TCP)
    "timeout_s": Key(number(gt=0, le=10), default=0.5),
    "retries": Key(integer(0, 10), default=1),
    "inter_frame_gap_ms": Key(number(gt=0, le=1000)),  # default: 3.5 character times
    "max_gap": Key(integer(0, 125), default=8),
    "max_block": Key(integer(1, 125), default=125),
}

DEVICE: Schema = {
    "id": Key(IDENT, required=True),
    "name": Key(text()),  # default: the id
    "location": Key(text(), default=""),
    "line": Key(IDENT, required=True),
    "unit_id": Key(integer(0, 255), required=True),  # 1..247 on rtu: layer (c)
    "profile": Key(matching(_ID_RE, "a profile id (its file name without .toml)"), required=True),
    "fast_poll_s": Key(number(gt=0, le=3600), default=1.0),
    "slow_poll_s": Key(number(gt=0, le=3600), default=5.0),
    "comm_fault_after": Key(integer(1, 100), default=3),
    "timeout_s": Key(number(gt=0, le=10)),
    "retries": Key(integer(0, 10)),
    # a lost device is probed at least this often: one that answers again is reported
    # within about this plus one poll (the 10 s promise needs it well under 10 s)
    "backoff_max_s": Key(number(gt=0, le=3600), default=5.0),
    "points": Key(lambda v: None if isinstance(v, dict) else "must be a table", default={}),
}

POINT_OVERRIDE: Schema = {
    "name": Key(text()),
    "enabled": Key(boolean, default=True),
    "threshold": Key(lambda v: None if isinstance(v, dict) else "must be a table", default={}),
    "telemetry_s": Key(number(gt=0, le=86400)),
    "deadband": Key(number(ge=0)),
    "writable": Key(boolean, default=False),
}

INPUT: Schema = {
    "id": Key(IDENT, required=True),
    "name": Key(text()),
    "pin": Key(integer(0, 27), required=True),
    "pull": Key(one_of("up", "down", "none"), default="up"),
    "active": Key(one_of("high", "low")),  # default follows pull: see _build_input
    "debounce_ms": Key(integer(0, 10000), default=50),
    "category": Key(one_of(*(c.value for c in INPUT_CATEGORIES)), required=True),
    "severity": Key(one_of(*(s.value for s in Severity)), required=True),
    "kind": Key(one_of(*(k.value for k in INPUT_KINDS)), default="state"),
    "active_state": Key(nonempty_text(40), default="active"),
    "inactive_state": Key(nonempty_text(40), default="inactive"),
}

OUTPUT: Schema = {
    "id": Key(IDENT, required=True),
    "name": Key(text()),
    "pin": Key(integer(0, 27), required=True),
    "type": Key(one_of("buzzer", "led", "relay"), required=True),
    "active": Key(one_of("high", "low"), default="high"),
    "rule": Key(one_of(*OUTPUT_RULES), default="none"),
}

# The language of the texts the gateway writes itself (agent/texts.py); names stay as written.
SITE: Schema = {"language": Key(one_of("zh", "en"), default="zh")}

SECTIONS: dict[str, Schema] = {
    "identity": IDENTITY,
    "site": SITE,
    "uplink": UPLINK,
    "buffer": BUFFER,
    "clock": CLOCK,
    "control": CONTROL,
    "profiles": PROFILES,
}
ARRAYS: dict[str, Schema] = {"lines": LINE, "devices": DEVICE, "inputs": INPUT, "outputs": OUTPUT}
REQUIRED_SECTIONS = ("identity", "uplink")


@dataclass
class Checked:
    """The config after layer (a): only valid values, raw structure kept."""

    sections: dict[str, dict[str, Any]]
    arrays: dict[str, list[dict[str, Any]]]


def check_types(doc: dict[str, Any], out: Problems) -> Checked:
    """Layer (a) for the whole document."""
    sections: dict[str, dict[str, Any]] = {}
    arrays: dict[str, list[dict[str, Any]]] = {}
    for key in doc:
        if key not in SECTIONS and key not in ARRAYS:
            out.add(key, _unknown_key_reason(key, [*SECTIONS, *ARRAYS]))
    for name, schema in SECTIONS.items():
        if name in doc:
            sections[name] = check_table(doc[name], name, schema, out)
        else:
            if name in REQUIRED_SECTIONS:
                out.add(name, f"required section [{name}] is missing")
            sections[name] = {}
    for name, schema in ARRAYS.items():
        arrays[name] = check_array(doc.get(name), name, schema, out)
    for i, device in enumerate(arrays["devices"]):
        device["points"] = _check_overrides(device.get("points", {}), f"devices[{i}].points", out)
    return Checked(sections, arrays)


def _check_overrides(raw: dict[str, Any], where: str, out: Problems) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for point_id, table in raw.items():
        here = _join(where, point_id)
        clean = check_table(table, here, POINT_OVERRIDE, out)
        thresholds: dict[str, float] = {}
        for threshold_id, value in clean.get("threshold", {}).items():
            reason = number()(value)
            if reason:
                out.add(f"{here}.threshold.{threshold_id}", reason)
            else:
                thresholds[threshold_id] = float(value)
        clean["threshold"] = thresholds
        overrides[point_id] = clean
    return overrides


# --- layer (b): keys of one table together, as a rule table ------------------------------


@dataclass(frozen=True)
class Rule:
    """A table breaks the rule when `broken(table)`; the problem is reported on `key`."""

    key: str
    broken: Callable[[Mapping[str, Any]], bool]
    reason: str


def _rtu(t: Mapping[str, Any]) -> bool:
    return t.get("type") == "rtu"


def _tcp(t: Mapping[str, Any]) -> bool:
    return t.get("type") == "tcp"


def _is_pyserial_url(port: str) -> bool:
    return "://" in port  # socket://, rfc2217://, loop:// ... are pyserial's own


def _serial_option_on_tcp(option: str) -> Rule:
    return Rule(
        option,
        lambda t: _tcp(t) and option in t,
        "is a serial option; a tcp line has no baudrate, parity, stopbits or bytesize",
    )


LINE_RULES: tuple[Rule, ...] = (
    Rule(
        "host",
        lambda t: _rtu(t) and "host" in t,
        "only a tcp line has a host; an rtu line names its serial device in port",
    ),
    Rule(
        "port",
        lambda t: _rtu(t) and "port" not in t,
        'required on an rtu line: the serial device path, e.g. "/dev/ttyUSB0"',
    ),
    Rule(
        "port",
        lambda t: _rtu(t) and _is_int(t.get("port")),
        'must be a serial device path string on an rtu line, e.g. "/dev/ttyUSB0"',
    ),
    Rule(
        "port",
        lambda t: (
            _rtu(t)
            and isinstance(t.get("port"), str)
            and not (t["port"].startswith("/") or _is_pyserial_url(t["port"]))
        ),
        'must be an absolute device path such as "/dev/ttyUSB0" (or a pyserial URL)',
    ),
    Rule(
        "host",
        lambda t: _tcp(t) and "host" not in t,
        "required on a tcp line: the device's host name or IP address",
    ),
    Rule(
        "port",
        lambda t: _tcp(t) and isinstance(t.get("port"), str),
        "must be a TCP port number on a tcp line (the address goes in host)",
    ),
    *(_serial_option_on_tcp(option) for option in SERIAL_OPTIONS),
    Rule(
        "max_gap",
        lambda t: t.get("max_gap", 8) >= t.get("max_block", 125),
        "must be smaller than max_block",
    ),
)

UPLINK_RULES: tuple[Rule, ...] = (
    Rule(
        "cert_file",
        lambda t: "cert_file" in t and "key_file" not in t,
        "a client certificate needs its key_file",
    ),
    Rule(
        "key_file",
        lambda t: "key_file" in t and "cert_file" not in t,
        "a client key needs its cert_file",
    ),
    Rule(
        "cert_file",
        lambda t: "cert_file" in t and "ca_file" not in t,
        "a client certificate is used only with TLS: set ca_file too",
    ),
    Rule(
        "reconnect_max_s",
        lambda t: (
            t.get("reconnect_max_s", UPLINK["reconnect_max_s"].default)
            < t.get("reconnect_min_s", UPLINK["reconnect_min_s"].default)
        ),
        "must not be smaller than reconnect_min_s",
    ),
)

DEVICE_RULES: tuple[Rule, ...] = (
    Rule(
        "slow_poll_s",
        lambda t: t.get("slow_poll_s", 5.0) < t.get("fast_poll_s", 1.0),
        "must not be shorter than fast_poll_s",
    ),
)

INPUT_RULES: tuple[Rule, ...] = (
    Rule(
        "active",
        lambda t: t.get("pull") == "none" and "active" not in t,
        'required when pull = "none": nothing else says which level is active',
    ),
    Rule(
        "inactive_state",
        lambda t: t.get("inactive_state", "inactive") == t.get("active_state", "active"),
        "must differ from active_state",
    ),
)

TABLE_RULES: dict[str, tuple[Rule, ...]] = {
    "uplink": UPLINK_RULES,
    "lines": LINE_RULES,
    "devices": DEVICE_RULES,
    "inputs": INPUT_RULES,
}


def check_rules(checked: Checked, out: Problems) -> None:
    """Layer (b): every table against its rules, one problem per broken rule and key."""
    for name, rules in TABLE_RULES.items():
        if name in checked.sections:
            _apply_rules(checked.sections[name], name, rules, out)
        for i, table in enumerate(checked.arrays.get(name, [])):
            _apply_rules(table, f"{name}[{i}]", rules, out)


def _apply_rules(
    table: Mapping[str, Any], where: str, rules: Iterable[Rule], out: Problems
) -> None:
    for rule in rules:
        if rule.broken(table):
            out.add(_join(where, rule.key), rule.reason)


# --- layer (c): the whole config ---------------------------------------------------------


def _first_use(
    items: list[dict[str, Any]], where: str, key: str, identity: Callable[[dict[str, Any]], Any]
) -> Iterable[tuple[str, dict[str, Any], str]]:
    """Yield (key path, item, earlier owner) for each item whose `identity` was seen before."""
    seen: dict[Any, str] = {}
    for i, item in enumerate(items):
        value = identity(item)
        if value is None:
            continue
        label = f"{where}[{i}]" + (f" ({item['id']})" if "id" in item else "")
        if value in seen:
            yield f"{where}[{i}].{key}", item, seen[value]
        else:
            seen[value] = label


def check_duplicate_ids(checked: Checked, out: Problems) -> None:
    for name in ("lines", "outputs"):
        for key, item, earlier in _first_use(checked.arrays[name], name, "id", _get("id")):
            out.add(key, f'duplicate id "{item["id"]}" (also {earlier})')
    # Devices and inputs share one namespace: both appear as `device` in the feed.
    feed_sources = [("devices", d) for d in checked.arrays["devices"]]
    feed_sources += [("inputs", d) for d in checked.arrays["inputs"]]
    seen: dict[str, str] = {}
    counters = {"devices": 0, "inputs": 0}
    for name, item in feed_sources:
        here = f"{name}[{counters[name]}]"
        counters[name] += 1
        ident = item.get("id")
        if ident is None:
            continue
        if ident == GATEWAY_DEVICE_ID:
            out.add(f"{here}.id", f'"{ident}" is reserved for the gateway\'s own events')
        elif ident in seen:
            out.add(
                f"{here}.id",
                f'duplicate id "{ident}" (also {seen[ident]}; '
                "devices and inputs share one id space in the feed)",
            )
        else:
            seen[ident] = here


def _get(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda item: item.get(key)


def _serial_device(line: dict[str, Any]) -> str | None:
    port = line.get("port")
    if line.get("type") != "rtu" or not isinstance(port, str):
        return None
    # /dev/serial/by-id/... and /dev/ttyUSB0 can be the same adapter
    return port if _is_pyserial_url(port) else os.path.realpath(port)


def _tcp_endpoint(line: dict[str, Any]) -> tuple[str, int] | None:
    if line.get("type") != "tcp" or "host" not in line:
        return None
    return (line["host"].lower(), line.get("port", 502))


def check_lines(checked: Checked, out: Problems) -> None:
    lines = checked.arrays["lines"]
    for key, _, earlier in _first_use(lines, "lines", "port", _serial_device):
        out.add(key, f"serial port already used by {earlier}: one line owns a port")
    for key, _, earlier in _first_use(lines, "lines", "host", _tcp_endpoint):
        out.add(key, f"same host and port as {earlier}: put both devices on one line")


def check_devices(checked: Checked, out: Problems) -> None:
    lines = {line["id"]: line for line in checked.arrays["lines"] if "id" in line}
    used_units: dict[tuple[str, int], str] = {}
    for i, device in enumerate(checked.arrays["devices"]):
        here = f"devices[{i}]"
        line_id = device.get("line")
        if line_id is None:
            continue
        line = lines.get(line_id)
        if line is None:
            known = ", ".join(lines) or "none defined"
            out.add(f"{here}.line", f'no line with id "{line_id}" (lines: {known})')
            continue
        unit = device.get("unit_id")
        if unit is None:
            continue
        if line.get("type") == "rtu" and not 1 <= unit <= 247:
            out.add(
                f"{here}.unit_id", f"must be 1..247 on an rtu line (0 is broadcast), got {unit}"
            )
        owner = used_units.get((line_id, unit))
        if owner:
            out.add(
                f"{here}.unit_id", f'unit id {unit} is already used by {owner} on line "{line_id}"'
            )
        else:
            used_units[(line_id, unit)] = f"{here} ({device.get('id', '?')})"


def check_pins(checked: Checked, out: Problems) -> None:
    owners: dict[int, str] = {}
    uart_line = next(
        (line["id"] for line in checked.arrays["lines"] if line.get("port") in PI_UART_PORTS), None
    )
    if uart_line is not None:
        for uart_pin in PI_UART_PINS:
            owners[uart_pin] = f'the Pi UART of line "{uart_line}"'
    for name in ("inputs", "outputs"):
        for i, item in enumerate(checked.arrays[name]):
            pin = item.get("pin")
            if pin is None:
                continue
            if pin in owners:
                out.add(f"{name}[{i}].pin", f"BCM pin {pin} is already used by {owners[pin]}")
            else:
                owners[pin] = f"{name}[{i}] ({item.get('id', '?')})"


def check_something_to_watch(checked: Checked, out: Problems) -> None:
    if not checked.arrays["devices"] and not checked.arrays["inputs"]:
        out.add("devices", "nothing to watch: the config has no [[devices]] and no [[inputs]]")


# --- profiles ------------------------------------------------------------------------------

ProfileLoader = Callable[[Path], "Profile"]


def _profile_loader() -> ProfileLoader | None:
    """drivers.profile.load_profile, imported lazily; None while that module does not exist."""
    try:
        module = importlib.import_module("drivers.profile")
    except ModuleNotFoundError as exc:
        if exc.name != "drivers.profile":
            raise  # a missing dependency of the loader is a real bug, not "not written yet"
        return None
    loader: ProfileLoader = module.load_profile
    return loader


def profile_dirs(extra: list[str], config_dir: Path) -> list[Path]:
    """Where profiles are looked up, first match wins: the config's dirs, built-in, system."""
    return [*(config_dir / d for d in extra), BUILTIN_PROFILE_DIR, SYSTEM_PROFILE_DIR]


def find_profile(profile_id: str, dirs: Iterable[Path]) -> Path | None:
    for directory in dirs:
        candidate = directory / f"{profile_id}.toml"
        if candidate.is_file():
            return candidate
    return None


def available_profiles(dirs: Iterable[Path]) -> list[str]:
    found: set[str] = set()
    for directory in dirs:
        if directory.is_dir():
            found.update(p.stem for p in directory.glob("*.toml"))
    return sorted(found)


def load_profiles(checked: Checked, config_dir: Path, out: Problems) -> dict[str, Profile]:
    """Find and load every profile a device names; problems go on `devices[i].profile`."""
    extra = checked.sections["profiles"].get("dirs", [])
    for i, directory in enumerate(extra):
        if not (config_dir / directory).is_dir():
            out.add(f"profiles.dirs[{i}]", f"directory not found: {config_dir / directory}")
    dirs = profile_dirs(extra, config_dir)
    loader = _profile_loader()
    profiles: dict[str, Profile] = {}
    failed: set[str] = set()
    for i, device in enumerate(checked.arrays["devices"]):
        profile_id = device.get("profile")
        if profile_id is None or profile_id in profiles or profile_id in failed:
            continue
        path = find_profile(profile_id, dirs)
        if path is None:
            failed.add(profile_id)
            known = ", ".join(available_profiles(dirs)) or "none"
            out.add(f"devices[{i}].profile", f'unknown profile "{profile_id}" (available: {known})')
        elif loader is not None:
            try:
                profiles[profile_id] = loader(path)
            except ConfigError as exc:
                failed.add(profile_id)
                out.add(f"devices[{i}].profile", f'profile "{profile_id}" is invalid, see below')
                out.extend(exc.problems)
            except RecursionError:  # tomllib, on arrays or tables nested hundreds deep
                failed.add(profile_id)
                out.add(f"devices[{i}].profile", f"{path}: not a usable profile: nested too deep")
    return profiles


def check_overrides(checked: Checked, profiles: Mapping[str, Profile], out: Problems) -> None:
    """Point overrides must name points and thresholds the device's profile has."""
    for i, device in enumerate(checked.arrays["devices"]):
        profile = profiles.get(device.get("profile", ""))
        if profile is None:
            continue  # unknown/invalid profile: already reported, or no loader yet
        found_before = len(out.items)
        for point_id, override in device.get("points", {}).items():
            here = f"devices[{i}].points.{point_id}"
            spec = profile.points.get(point_id)
            if spec is None:
                out.add(
                    here,
                    f'profile "{profile.id}" has no point "{point_id}"'
                    f"{_closest(point_id, profile.points)}",
                )
                continue
            _check_override(spec, override, here, out)
        if len(out.items) == found_before:
            _try_overrides(profile, device.get("points", {}), f"devices[{i}]", out)


def _try_overrides(
    profile: Profile, overrides: Mapping[str, Any], where: str, out: Problems
) -> None:
    """Apply the overrides as the runtime will, so anything it would refuse is refused now."""
    module = importlib.import_module("drivers.profile")
    try:
        module.apply_overrides(profile, overrides)
    except ConfigError as exc:
        for problem in exc.problems:  # their keys start at "points.<id>"
            out.add(_join(where, problem.key), problem.reason)


def _check_override(spec: PointSpec, override: Mapping[str, Any], here: str, out: Problems) -> None:
    thresholds = spec.thresholds
    for threshold_id in override.get("threshold", {}):
        if threshold_id not in thresholds:
            has = ", ".join(thresholds) or "none"
            out.add(
                f"{here}.threshold.{threshold_id}",
                f'point "{spec.id}" has no threshold "{threshold_id}" (has: {has})',
            )
    if override.get("writable") and spec.table in (Table.DISCRETE, Table.INPUT):
        out.add(
            f"{here}.writable", f"a {spec.table} point is read-only in Modbus; it cannot be written"
        )


def _closest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


# --- reading the file ----------------------------------------------------------------------


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a config file"
    if isinstance(exc, PermissionError):
        return "permission denied (run as root or as a member of the alarmgw group)"
    return f"cannot read: {exc.strerror or exc}"


def read_toml(path: Path, out: Problems) -> dict[str, Any] | None:
    """The parsed document, or None with exactly one problem saying why the file is unusable."""
    try:
        data = path.read_bytes()
        # Windows editors often prepend a byte-order mark, which TOML does not allow.
        return tomllib.loads(data.decode("utf-8").removeprefix("\ufeff"))
    except OSError as exc:
        out.add("", _unreadable(exc))
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        out.add("", f"not UTF-8 text (byte 0x{bad:02x} at offset {exc.start}); save it as UTF-8")
    except tomllib.TOMLDecodeError as exc:
        out.add("", f"not valid TOML: {exc}")
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        out.add("", "not a usable config: arrays or tables nested hundreds of levels deep")
    return None


# --- building the final values ---------------------------------------------------------------


def _defaults(schema: Schema, clean: Mapping[str, Any]) -> dict[str, Any]:
    merged = {key: spec.default for key, spec in schema.items()}
    merged.update(clean)
    return merged


def _path(value: str | None, base: Path) -> Path | None:
    # Relative paths are relative to the config file, not to wherever the CLI was started.
    return None if value is None else base / value


def _build_identity(clean: Mapping[str, Any]) -> Identity:
    v = _defaults(IDENTITY, clean)
    return Identity(v["site"], v["gateway"], v["site_name"], v["gateway_name"])


def _build_uplink(clean: Mapping[str, Any], ident: Identity, base: Path) -> UplinkConfig:
    v = _defaults(UPLINK, clean)
    tls = v["ca_file"] is not None
    return UplinkConfig(
        host=v["host"],
        port=v["port"] if v["port"] is not None else (8883 if tls else 1883),
        ca_file=_path(v["ca_file"], base),
        cert_file=_path(v["cert_file"], base),
        key_file=_path(v["key_file"], base),
        credentials_file=_path(v["credentials_file"], base),
        topic_prefix=v["topic_prefix"],
        mqtt_version=v["mqtt_version"],
        keepalive_s=v["keepalive_s"],
        heartbeat_s=float(v["heartbeat_s"]),
        inflight_window=v["inflight_window"],
        reconnect_min_s=float(v["reconnect_min_s"]),
        reconnect_max_s=float(v["reconnect_max_s"]),
        client_id=v["client_id"] or f"alarmgw-{ident.site}-{ident.gateway}",
    )


def _build_line(clean: Mapping[str, Any]) -> LineConfig:
    v = _defaults(LINE, clean)
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
    v = _defaults(POINT_OVERRIDE, clean)
    return PointOverride(
        name=v["name"],
        enabled=v["enabled"],
        threshold=dict(v["threshold"]),
        telemetry_s=None if v["telemetry_s"] is None else float(v["telemetry_s"]),
        deadband=None if v["deadband"] is None else float(v["deadband"]),
        writable=v["writable"],
    )


def _build_device(clean: Mapping[str, Any]) -> DeviceConfig:
    v = _defaults(DEVICE, clean)
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
    )


def _build_input(clean: Mapping[str, Any]) -> InputConfig:
    v = _defaults(INPUT, clean)
    # A pull-up idles high, so the contact is active when it pulls the pin low (and vice versa).
    active = v["active"] or ("low" if v["pull"] == "up" else "high")
    return InputConfig(
        id=v["id"],
        name=v["name"] if v["name"] is not None else v["id"],
        pin=v["pin"],
        pull=v["pull"],
        active=active,
        debounce_ms=v["debounce_ms"],
        category=Category(v["category"]),
        severity=Severity(v["severity"]),
        kind=Kind(v["kind"]),
        active_state=v["active_state"],
        inactive_state=v["inactive_state"],
    )


def _build_output(clean: Mapping[str, Any]) -> OutputConfig:
    v = _defaults(OUTPUT, clean)
    name = v["name"] if v["name"] is not None else v["id"]
    return OutputConfig(v["id"], name, v["pin"], v["type"], v["active"], v["rule"])


def build(path: Path, checked: Checked, profiles: dict[str, Profile]) -> Config:
    """Only called when no problem was found: every required key is present and valid."""
    base = path.parent
    s, a = checked.sections, checked.arrays
    identity = _build_identity(s["identity"])
    buffer = _defaults(BUFFER, s["buffer"])
    control = _defaults(CONTROL, s["control"])
    return Config(
        path=path,
        identity=identity,
        uplink=_build_uplink(s["uplink"], identity, base),
        buffer=BufferConfig(base / buffer["path"], buffer["max_events"]),
        clock=ClockConfig(_defaults(CLOCK, s["clock"])["source"]),
        lines=[_build_line(t) for t in a["lines"]],
        devices=[_build_device(t) for t in a["devices"]],
        inputs=[_build_input(t) for t in a["inputs"]],
        outputs=[_build_output(t) for t in a["outputs"]],
        control=ControlConfig(base / control["socket"], control["group"]),
        profiles=profiles,
        language=_defaults(SITE, s["site"])["language"],
    )


# --- the public entry points ---------------------------------------------------------------


def check_control_group(checked: Checked, out: Problems) -> None:
    """The control socket's group must exist on this machine (the agent would start
    without its socket otherwise: the CLI could not reach it)."""
    group = checked.sections["control"].get("group")
    if group is None:
        return
    try:
        grp.getgrnam(group)
    except KeyError:
        out.add("control.group", f"group {group!r} does not exist on this machine")


SERVICE_USER = "alarmgw"  # systemd/alarmgw.service: User=


def check_uplink_files(checked: Checked, base: Path, out: Problems) -> None:
    """The credentials file and TLS files, opened as the uplink opens them at start (mode,
    format, a CA and key that load), and readable by the service user: a file only root
    can read passes a check run with sudo and then stops the service with exit 78."""
    from agent.mqtt import TlsFiles, load_credentials, tls_context  # noqa: PLC0415
    from core.errors import UplinkError  # noqa: PLC0415 - paho only when there are files

    u = checked.sections["uplink"]
    files = {key: _path(u.get(key), base) for key in _UPLINK_FILES}
    creds = files["credentials_file"]
    if creds is not None:
        try:
            load_credentials(creds)
        except UplinkError as exc:
            out.add("uplink.credentials_file", str(exc))
    ca = files["ca_file"]
    if ca is not None:
        try:
            tls_context(TlsFiles(ca, files["cert_file"], files["key_file"]), "check-config")
        except UplinkError as exc:
            out.add("uplink.ca_file", str(exc))
    service = _service_account()
    for key, path in files.items():
        reason = _service_cannot_read(path, service) if path and service else None
        if reason:
            out.add(f"uplink.{key}", reason)
        elif path and key in _SECRETS:
            reason = _secret_link_problem(path)
            if reason:
                out.add(f"uplink.{key}", reason)


_UPLINK_FILES = ("credentials_file", "ca_file", "cert_file", "key_file")
_SECRETS = ("credentials_file", "key_file")


def _secret_link_problem(path: Path) -> str | None:
    """The policy for a symlinked secret (docs/operations.md): the link is followed, and
    only root or the service user may control it: the file it ends at is owned by one of
    them, and no directory holding a link on the way is writable by anyone else (who
    could point it elsewhere). The file's mode is checked by the loaders (0600)."""
    if not path.is_symlink():
        return None
    trusted = {0}
    with contextlib.suppress(KeyError):
        trusted.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    try:
        target = path.resolve(strict=True)
        owner = target.stat().st_uid
    except (OSError, RuntimeError):  # a dangling link or a loop: the loaders say so
        return None
    if owner not in trusted:
        return (
            f"{path} is a symlink to {target}, owned by uid {owner}: a secret may only be "
            f"owned by root or {SERVICE_USER} (sudo chown {SERVICE_USER}: {target})"
        )
    link = path
    for _ in range(40):  # the kernel's own limit on a chain of links
        if not link.is_symlink():
            return None
        st = link.parent.stat()
        if st.st_uid not in trusted or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (
                f"{link} is a symlink in {link.parent}, which others can write: they could "
                f"point it at another file; link from a directory only root can write, or "
                f"copy the file itself"
            )
        link = link.parent / link.readlink()
    return None


def _service_account() -> tuple[int, set[int]] | None:
    """The service user's uid and groups, or None when this machine has no such user (a
    config checked away from the gateway) or we are that user (the loaders above then
    opened each file as the service will, or said why not)."""
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    if os.geteuid() == user.pw_uid:
        return None
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    return user.pw_uid, groups


def _service_cannot_read(path: Path, service: tuple[int, set[int]]) -> str | None:
    """Why the service user could not read `path`, or None if it can."""
    uid, groups = service
    try:
        st = path.stat()
    except OSError:
        return None  # a missing file is reported by the loaders
    mode = st.st_mode
    if (
        (st.st_uid == uid and mode & stat.S_IRUSR)
        or (st.st_gid in groups and mode & stat.S_IRGRP)
        or mode & stat.S_IROTH
    ):
        return None
    return (
        f"the service runs as {SERVICE_USER} and cannot read {path} (mode "
        f"{stat.S_IMODE(mode):04o}): sudo chown {SERVICE_USER}: {path} && sudo chmod 600 {path}"
    )


WHOLE_CONFIG_CHECKS: tuple[Callable[[Checked, Problems], None], ...] = (
    check_duplicate_ids,
    check_lines,
    check_devices,
    check_pins,
    check_something_to_watch,
    check_control_group,
)


def load_config(path: str | Path) -> Config:
    """Read, check and build the config; raise ConfigError listing every problem found."""
    out = Problems(Path(path))  # problems name the file as the technician typed it
    path = Path(path).absolute()
    doc = read_toml(path, out)
    if doc is None:
        raise ConfigError(out.items)
    checked = check_types(doc, out)
    check_rules(checked, out)
    for check in WHOLE_CONFIG_CHECKS:
        check(checked, out)
    if not out.items:  # files last: one mistake in the config gives one problem
        check_uplink_files(checked, path.parent, out)
    profiles = load_profiles(checked, path.parent, out)
    check_overrides(checked, profiles, out)
    if out.items:
        raise ConfigError(out.items)
    return build(path, checked, profiles)


def config_digest(path: str | Path) -> str:
    """Identifies the config a gateway runs (status message): sha256 of the bytes, 16 hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
