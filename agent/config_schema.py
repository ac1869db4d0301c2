"""What the gateway's config file may hold, declared once with the checking kit.

Layer (a) and (b) of agent/config.py's checks: each key on its own (type, range,
unknown keys such as `baudrat`) and, as rules, the keys of one table together
(`host` on an rtu line...). Each default is written here, once, beside its key; the
values are built in agent/config.py and the whole config is checked in
agent/config_checks.py. The point overrides a device may give are the profile's
declaration (drivers/profile_schema.py), so they are checked in one place.

It must never open a file, a port or a socket.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.checks import (
    ID_RE,
    IDENT,
    ArrayOf,
    Either,
    Key,
    Rule,
    Table,
    Value,
    boolean,
    integer,
    matching,
    number,
    one_of,
    path_list,
    path_text,
    shown,
    text,
)
from core.events import Category, Kind, Severity
from drivers.gb_profile import COMPONENT_BITS
from drivers.profile_schema import OVERRIDES

STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
OUTPUT_RULES = (
    "alarm",
    "uplink-down-blink",
    "duty-prompt",
    "transmission-light",
    "transmission-failed",
    "none",
)
# What a contact input is for: a plain contact (its events go to the feed), the manual
# call point (a contact with the highest priority and GB coordinates: component type 23),
# or the duty-check answer button (not an alarm contact: a press answers a duty check).
INPUT_ROLES = ("contact", "manual_call_point", "duty_answer")
INPUT_KINDS = (Kind.ALARM, Kind.FAULT, Kind.SUPERVISORY, Kind.STATE)
# Reserved for the gateway's own events; a contact cannot be a comm or system fault.
INPUT_CATEGORIES = tuple(c for c in Category if c not in (Category.COMM, Category.SYSTEM))
LANGUAGES = ("zh", "en")
SERIAL_OPTIONS = ("baudrate", "parity", "stopbits", "bytesize")

_HOST_RE = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,253}")
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
_GROUP_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

HOST = matching(_HOST_RE, "a host name or IP address")


def _topic_prefix(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {shown(value)}"
    if any(ch in value for ch in "+#\x00") or value.startswith("$"):
        return "must not contain MQTT wildcards (+ #), NUL, or start with $"
    if any(not level for level in value.split("/")):
        return "must not have empty topic levels (leading, trailing or double /)"
    if len(value) > 100:
        return "must be at most 100 characters"
    return None


TOPIC_PREFIX = Value(
    _topic_prefix,
    {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"^[^$+#/][^+#]*$"},
    (str,),
)
# Which of the two it must be depends on the line's type: a rule, below.
SERIAL_PORT_OR_TCP_PORT = Either(
    (path_text, integer(1, 65535)), "a serial device path (rtu) or a TCP port number (tcp)"
)

# --- sections ------------------------------------------------------------------------------

IDENTITY = Table(
    {
        "site": Key(IDENT, required=True),
        "gateway": Key(IDENT, required=True),
        "site_name": Key(text(), default=""),
        "gateway_name": Key(text(), default=""),
    }
)

SITE = Table(
    {
        "language": Key(one_of(*LANGUAGES), default="zh", doc="language of the event text"),
    }
)

_UPLINK_KEYS = {
    "host": Key(HOST, required=True),
    "port": Key(integer(1, 65535), doc="default: 8883 with TLS (ca_file), else 1883"),
    "ca_file": Key(path_text),
    "cert_file": Key(path_text),
    "key_file": Key(path_text),
    "credentials_file": Key(path_text),
    "topic_prefix": Key(TOPIC_PREFIX, default="alarmgw"),
    "mqtt_version": Key(one_of("3.1.1", "5"), default="3.1.1"),
    "keepalive_s": Key(integer(5, 3600), default=30),
    "heartbeat_s": Key(number(ge=5, le=3600), default=30),
    "inflight_window": Key(integer(1, 1000), default=50),
    # 2 s and 8 s: after a broker restart every gateway is back within 8 s (the 10 s alarm
    # promise), and a fleet reconnects at no more than about N/4 per second (bench_fleet.py)
    "reconnect_min_s": Key(number(gt=0, le=3600), default=2),
    "reconnect_max_s": Key(number(gt=0, le=3600), default=8),
    "client_id": Key(
        matching(_CLIENT_ID_RE, "1-256 characters A-Z a-z 0-9 _ . : -"),
        doc="default: alarmgw-<site>-<gateway>",
    ),
}


UPLINK = Table(
    _UPLINK_KEYS,
    rules=(
        Rule("cert_file", lambda t: "cert_file" in t and "key_file" not in t,
             "a client certificate needs its key_file", reads=("key_file",)),
        Rule("key_file", lambda t: "key_file" in t and "cert_file" not in t,
             "a client key needs its cert_file", reads=("cert_file",)),
        Rule("cert_file", lambda t: "cert_file" in t and "ca_file" not in t,
             "a client certificate is used only with TLS: set ca_file too", reads=("ca_file",)),
        Rule("reconnect_max_s",
             lambda t: t.value("reconnect_max_s") < t.value("reconnect_min_s"),
             "must not be smaller than reconnect_min_s", reads=("reconnect_min_s",)),
    ),
)  # fmt: skip

BUFFER = Table(
    {
        "path": Key(path_text, default="/var/lib/alarmgw/buffer.db"),
        "max_events": Key(integer(100, 100_000_000), default=100_000),
    }
)

CLOCK = Table(
    {"source": Key(one_of("kernel", "assume-synced", "assume-unsynced"), default="kernel")}
)

CONTROL = Table(
    {
        "socket": Key(path_text, default="/run/alarmgw/control.sock"),
        "group": Key(matching(_GROUP_RE, "a Unix group name")),
    }
)

PROFILES = Table({"dirs": Key(path_list, default=[])})

# The duties of a user information transmission device (GB 26875.1), each default the
# standard's behaviour: agent/duty.py and agent/transmission.py.
DUTIES = Table(
    {
        "duty_check_timeout_s": Key(
            number(ge=10, le=3600),
            default=600,
            doc="a duty check not answered by then is unanswered",
        ),
        "transmission_hold_s": Key(
            number(ge=0, le=86400),
            default=300,
            doc="the transmission light stays on this long after the success or the reset",
        ),
        "transmission_fail_after_s": Key(
            number(gt=0, le=3600),
            default=40,
            doc="a fire or manual alarm not confirmed by then is a failed transmission",
        ),
        "link_fault_after_s": Key(
            number(gt=0, le=3600),
            default=100,
            doc="an uplink down this long sounds the transmission-failed signal",
        ),
    }
)

# --- the UITD duties: daily self-test, monthly self-check (agent/uitd_duty.py) -------------

_HH_MM_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
_CHECK_POINT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64})?")


def _check_points(value: Any) -> str | None:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _CHECK_POINT_RE.fullmatch(v) for v in value
    ):
        return f'must be a list of "device/point" or input ids, got {shown(value)}'
    return None


CHECK_POINTS = Value(
    _check_points,
    {"type": "array", "items": {"type": "string", "pattern": _CHECK_POINT_RE.pattern}},
    (list,),
)

SELFTEST = Table(
    {
        # local time (the Pi's time zone, Asia/Shanghai on an installed gateway); the test
        # waits for a synchronised clock and runs once a calendar day, restarts included
        "time": Key(matching(_HH_MM_RE, 'a local time "HH:MM"'), default="03:00"),
    }
)

SELFCHECK = Table(
    {
        # GB 26875.1: at least two simulated fire transmissions a month; a reminder
        # (event + status line) when fewer were confirmed by this day of the month
        "min_simulated_fires": Key(integer(0, 31), default=2),
        "reminder_day": Key(integer(1, 28), default=25),
        # the points a technician walks through; default: every input of kind alarm and
        # every device point whose profile can raise an alarm
        "points": Key(CHECK_POINTS, doc="default: every alarm input and alarm point"),
        "point_timeout_s": Key(number(gt=0, le=3600), default=120),
    }
)
# The GB/T 26875.3 uplink (agent/gb26875/uplink.py). Optional: without the section the
# gateway has the MQTT uplink only, exactly as before. Addresses are the standard's 6-byte
# little-endian integers (decimal or 0x... hex in TOML); docs/gb26875.md, "Configuration".
_GB_MAX_DETECTION_S = 100  # GB 26875.1: a link fault is signalled within 100 s
GB26875 = Table(
    {
        "host": Key(HOST, required=True, doc="the monitoring centre's host name or IP address"),
        "port": Key(integer(1, 65535), required=True),
        "uitd_address": Key(integer(0, 2**48 - 1), required=True, doc="this device, 6 bytes"),
        "centre_address": Key(integer(0, 2**48 - 1), required=True, doc="the centre, 6 bytes"),
        "ca_file": Key(path_text, doc="TLS where the centre offers it: its CA"),
        "cert_file": Key(path_text),
        "key_file": Key(path_text),
        "minor_version": Key(integer(0, 255), default=0, doc="the version's user-defined byte"),
        "heartbeat_s": Key(number(gt=0, le=90), default=30),
        # 5 s: one lost packet is resent and still confirmed within the 10 s promise
        "confirm_timeout_s": Key(number(gt=0, le=10), default=5),
        "resends": Key(integer(0, 10), default=3),
        "set_clock": Key(boolean, default=False, doc="let the centre's clock sync set the clock"),
        # as [uplink]: back within about 8 s of the centre's return (the 10 s promise)
        "reconnect_min_s": Key(number(gt=0, le=3600), default=0.5),
        "reconnect_max_s": Key(number(gt=0, le=3600), default=8),
    },
    rules=(
        Rule("heartbeat_s",
             lambda t: t.value("heartbeat_s") + (t.value("resends") + 1)
             * t.value("confirm_timeout_s") > _GB_MAX_DETECTION_S,
             "heartbeat_s + (resends + 1) x confirm_timeout_s must be at most 100 s "
             "(GB 26875.1: a link fault within 100 s)",
             reads=("resends", "confirm_timeout_s")),
        Rule("cert_file", lambda t: "cert_file" in t and "key_file" not in t,
             "a client certificate needs its key_file", reads=("key_file",)),
        Rule("key_file", lambda t: "key_file" in t and "cert_file" not in t,
             "a client key needs its cert_file", reads=("cert_file",)),
        Rule("cert_file", lambda t: "cert_file" in t and "ca_file" not in t,
             "a client certificate is used only with TLS: set ca_file too", reads=("ca_file",)),
        Rule("reconnect_max_s",
             lambda t: t.value("reconnect_max_s") < t.value("reconnect_min_s"),
             "must not be smaller than reconnect_min_s", reads=("reconnect_min_s",)),
    ),
)  # fmt: skip

# --- arrays of tables ----------------------------------------------------------------------


def _rtu(t: Mapping[str, Any]) -> bool:
    return t.get("type") == "rtu"


def _tcp(t: Mapping[str, Any]) -> bool:
    return t.get("type") == "tcp"


def is_pyserial_url(port: str) -> bool:
    return "://" in port  # socket://, rfc2217://, loop:// ... are pyserial's own


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _serial_option_on_tcp(option: str) -> Rule:
    return Rule(
        option,
        lambda t: _tcp(t) and option in t,
        "is a serial option; a tcp line has no baudrate, parity, stopbits or bytesize",
    )


LINE = Table(
    {
        "id": Key(IDENT, required=True),
        "type": Key(one_of("rtu", "tcp"), required=True),
        "port": Key(SERIAL_PORT_OR_TCP_PORT, doc="rtu: the serial device; tcp: default 502"),
        "host": Key(HOST, doc="tcp only"),
        "baudrate": Key(one_of(*STANDARD_BAUDRATES), default=9600),
        "parity": Key(one_of("N", "E", "O"), default="N"),
        "stopbits": Key(one_of(1, 2), default=1),
        "bytesize": Key(one_of(7, 8), default=8),
        # <= 10 s: one exchange must stay well inside the 30 s systemd watchdog (a device
        # answers in milliseconds; seconds only help a slow gateway behind Modbus TCP)
        "timeout_s": Key(number(gt=0, le=10), default=0.5),
        "retries": Key(integer(0, 10), default=1),
        "inter_frame_gap_ms": Key(number(gt=0, le=1000), doc="default: 3.5 character times"),
        "max_gap": Key(integer(0, 125), default=8),
        "max_block": Key(integer(1, 125), default=125),
    },
    rules=(
        Rule("host", lambda t: _rtu(t) and "host" in t,
             "only a tcp line has a host; an rtu line names its serial device in port"),
        Rule("port", lambda t: _rtu(t) and "port" not in t,
             'required on an rtu line: the serial device path, e.g. "/dev/ttyUSB0"'),
        Rule("port", lambda t: _rtu(t) and _is_int(t.get("port")),
             'must be a serial device path string on an rtu line, e.g. "/dev/ttyUSB0"'),
        Rule("port", lambda t: (
                _rtu(t) and isinstance(t.get("port"), str)
                and not (t["port"].startswith("/") or is_pyserial_url(t["port"]))
             ),
             'must be an absolute device path such as "/dev/ttyUSB0" (or a pyserial URL)'),
        Rule("host", lambda t: _tcp(t) and "host" not in t,
             "required on a tcp line: the device's host name or IP address"),
        Rule("port", lambda t: _tcp(t) and isinstance(t.get("port"), str),
             "must be a TCP port number on a tcp line (the address goes in host)"),
        *(_serial_option_on_tcp(option) for option in SERIAL_OPTIONS),
        Rule("max_gap", lambda t: t.value("max_gap") >= t.value("max_block"),
             "must be smaller than max_block", reads=("max_block",)),
    ),
)  # fmt: skip

DEVICE = Table(
    {
        "id": Key(IDENT, required=True),
        "name": Key(text(), doc="default: the id"),
        "location": Key(text(), default=""),
        "line": Key(IDENT, required=True),
        "unit_id": Key(integer(0, 255), required=True, doc="1..247 on an rtu line"),
        "profile": Key(
            matching(ID_RE, "a profile id (its file name without .toml)"),
            required=True,
        ),
        "fast_poll_s": Key(number(gt=0, le=3600), default=1.0),
        "slow_poll_s": Key(number(gt=0, le=3600), default=5.0),
        "comm_fault_after": Key(integer(1, 100), default=3),
        "timeout_s": Key(number(gt=0, le=10), doc="default: the line's"),
        "retries": Key(integer(0, 10), doc="default: the line's"),
        # a lost device is probed at least this often: one that answers again is reported
        # within about this plus one poll (the 10 s promise needs it well under 10 s)
        "backoff_max_s": Key(number(gt=0, le=3600), default=5.0),
        "points": Key(OVERRIDES, default={}, doc="point id -> what this device changes"),
        "gb_system_address": Key(
            integer(0, 255),
            doc="GB/T 26875.3 system address of this device's points; default: its position "
            "in [[devices]] (1, 2, ...), so no two devices share one",
        ),
    },
    rules=(
        Rule("slow_poll_s", lambda t: t.value("slow_poll_s") < t.value("fast_poll_s"),
             "must not be shorter than fast_poll_s", reads=("fast_poll_s",)),
    ),
)  # fmt: skip

# a contact or an output on one of the Pi's BCM pins
_ON_A_PIN = {
    "id": Key(IDENT, required=True),
    "name": Key(text(), doc="default: the id"),
    "pin": Key(integer(0, 27), required=True),
}


def _component_bits(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f'must be a list of status bit names such as ["started"], got {shown(value)}'
    wrong = [v for v in value if v not in COMPONENT_BITS]
    if wrong:
        return (
            f"not a component status bit: {', '.join(wrong)} (known: {', '.join(COMPONENT_BITS)})"
        )
    return None


INPUT_GB = Table(
    {
        "system_type": Key(integer(0, 255), required=True, doc="e.g. 11 消火栓系统"),
        "system_address": Key(integer(0, 255), default=0,
                              doc="default 0: the gateway's own inputs"),
        "component_type": Key(integer(0, 255), required=True, doc="e.g. 91 消防水泵"),
        "zone": Key(integer(0, 65535), default=0),
        "position": Key(integer(0, 65535), default=0),
        "status": Key(Value(_component_bits, {"type": "array", "items": {"type": "string"}},
                            (list,)),
                      doc="bits while active; default by kind (alarm fire, fault fault, "
                      "supervisory supervisory, state none)"),
    },
    doc="the contact as a GB/T 26875.3 component (docs/gb26875.md)",
)  # fmt: skip


def _required_on_contacts(key: str) -> Rule:
    return Rule(
        key,
        lambda t: t.value("role") != "duty_answer" and key not in t,
        "required for a contact input",
        reads=("role",),
    )


INPUT = Table(
    {
        **_ON_A_PIN,
        "gb": Key(INPUT_GB),
        "pull": Key(one_of("up", "down", "none"), default="up"),
        "active": Key(one_of("high", "low"), doc="default: low with a pull-up, else high"),
        "debounce_ms": Key(integer(0, 10000), default=50),
        "role": Key(one_of(*INPUT_ROLES), default="contact"),
        "category": Key(
            one_of(*(c.value for c in INPUT_CATEGORIES)), doc="required unless a duty_answer"
        ),
        "severity": Key(one_of(*(s.value for s in Severity)), doc="required unless a duty_answer"),
        "kind": Key(one_of(*(k.value for k in INPUT_KINDS)), default="state"),
        "active_state": Key(text(40, nonempty=True), default="active"),
        "inactive_state": Key(text(40, nonempty=True), default="inactive"),
    },
    rules=(
        _required_on_contacts("category"),
        _required_on_contacts("severity"),
        Rule("category", lambda t: t.value("role") == "manual_call_point"
             and t.get("category") != "manual",
             'must be "manual" on a manual call point', reads=("role",)),
        Rule("kind", lambda t: t.value("role") == "manual_call_point"
             and t.value("kind") != "alarm",
             'must be "alarm" on a manual call point', reads=("role",)),
        Rule("kind", lambda t: t.value("role") == "duty_answer" and t.value("kind") != "state",
             "a duty_answer button is not an alarm contact: leave kind out (state)",
             reads=("role",)),
        Rule("active", lambda t: t.value("pull") == "none" and "active" not in t,
             'required when pull = "none": nothing else says which level is active',
             reads=("pull",)),
        Rule("inactive_state",
             lambda t: t.value("inactive_state") == t.value("active_state"),
             "must differ from active_state", reads=("active_state",)),
    ),
)  # fmt: skip

OUTPUT = Table(
    {
        **_ON_A_PIN,
        "type": Key(one_of("buzzer", "led", "relay"), required=True),
        "active": Key(one_of("high", "low"), default="high"),
        "rule": Key(one_of(*OUTPUT_RULES), default="none"),
    }
)

SECTIONS: dict[str, Table] = {
    "identity": IDENTITY,
    "site": SITE,
    "uplink": UPLINK,
    "buffer": BUFFER,
    "clock": CLOCK,
    "control": CONTROL,
    "profiles": PROFILES,
    "duties": DUTIES,
    "selftest": SELFTEST,
    "selfcheck": SELFCHECK,
    "gb26875": GB26875,
}
ARRAYS: dict[str, Table] = {"lines": LINE, "devices": DEVICE, "inputs": INPUT, "outputs": OUTPUT}
REQUIRED_SECTIONS = ("identity", "uplink")

CONFIG_FILE = Table(
    {
        **{
            name: Key(table, required=name in REQUIRED_SECTIONS) for name, table in SECTIONS.items()
        },
        **{name: Key(ArrayOf(table)) for name, table in ARRAYS.items()},
    },
    doc="The alarmgw gateway config (config/example.toml shows every key).",
)


def config_relative(value: str | None, base: Path) -> Path | None:
    """A path from the config: relative paths are relative to the config file's folder,
    not to wherever the CLI was started."""
    return None if value is None else base / value


@dataclass
class Checked:
    """The config after layers (a) and (b): only valid values, raw structure kept."""

    sections: dict[str, dict[str, Any]]
    arrays: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, clean: Mapping[str, Any]) -> Checked:
        return cls(
            {name: dict(clean.get(name, {})) for name in SECTIONS},
            {name: list(clean.get(name, [])) for name in ARRAYS},
        )
