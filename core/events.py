"""The event model: what the gateway says about the field, as typed values.

Written to match docs/feed.md and docs/schemas/ (the contract comes first;
tests validate every payload built here against those schemas). An event is
immutable once made; the buffer gives it its sequence number. Serialisation is
UTF-8 JSON with non-ASCII kept as is (Chinese names stay readable).

This module must never do I/O: it only describes and serialises.
"""

from __future__ import annotations

import datetime
import enum
import functools
import json
import math
import time
import uuid
from _json import encode_basestring as _encode_basestring  # CPython's json accelerator
from _json import make_encoder as _c_make_encoder
from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeVar

_R = TypeVar("_R", bound="_RecordMethods")

FEED_VERSION = 1  # the "v1" in topics and the "v" field in payloads


class Kind(enum.StrEnum):
    ALARM = "alarm"  # a life-safety or hazard condition (fire, gas, leakage...)
    FAULT = "fault"  # equipment trouble (detector fault, wire break, power fault)
    SUPERVISORY = "supervisory"  # supervisory / feedback states of a panel
    RESTORE = "restore"  # an alarm/fault/supervisory condition returned to normal
    STATE = "state"  # a non-alarm state change (door opened, pump running)
    COMM_LOSS = "comm_loss"  # a field device stopped answering
    COMM_RESTORE = "comm_restore"
    TEST = "test"  # a test alarm (always with test=true)
    SYSTEM = "system"  # gateway-internal: buffer degraded, clock unsynced, overflow...


class Category(enum.StrEnum):
    FIRE = "fire"
    GAS = "gas"
    ELECTRICAL = "electrical"
    WATER = "water"
    DOOR = "door"
    PUMP = "pump"
    POWER = "power"
    MANUAL = "manual"
    TAMPER = "tamper"
    COMM = "comm"
    SYSTEM = "system"


class Severity(enum.StrEnum):
    """Ordered from most to least severe; `rank` is used for drop policy and sorting."""

    CRITICAL = "critical"  # fire alarm, manual alarm button
    MAJOR = "major"  # gas / electrical-fire alarm, water pressure lost
    MINOR = "minor"  # equipment faults, comm loss
    WARNING = "warning"  # supervisory, tamper, degraded
    INFO = "info"  # restores, state changes, tests

    @property
    def rank(self) -> int:
        """0 is most severe."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(Severity)}

# Alarms of these categories are dropped last of all when the buffer overflows.
LIFE_SAFETY = frozenset({Category.FIRE, Category.GAS, Category.ELECTRICAL, Category.MANUAL})


class Lane(enum.StrEnum):
    """Delivery lanes: events always leave before telemetry. Each has its own seq series."""

    EVENT = "event"
    TELEMETRY = "telemetry"


def now_ms() -> int:
    """Wall-clock UTC time in milliseconds (the detection time of what we see now)."""
    return time.time_ns() // 1_000_000


_EPOCH: Final = datetime.datetime(1970, 1, 1)  # naive, UTC by convention
_last_second: tuple[int, str] = (-1, "")  # a storm stamps many events in the same second


def iso_ms(ts_ms: int) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-11-29T19:20:01.123Z."""
    global _last_second  # noqa: PLW0603 - a one-entry cache; a tuple swap is thread-safe
    secs, ms = divmod(ts_ms, 1000)
    cached_secs, text = _last_second
    if cached_secs != secs:
        # datetime arithmetic, not time.gmtime: a 32-bit time_t (32-bit Raspberry Pi OS)
        # cannot hold a second past 2038-01-19, and gmtime would refuse every event then
        text = (_EPOCH + datetime.timedelta(seconds=secs)).isoformat()
        _last_second = (secs, text)
    return f"{text}.{ms:03d}Z"


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)  # no slots: one per gateway, and json_fields caches in __dict__
class Identity:
    """Who is speaking: fixed per gateway, stamped on every payload."""

    site: str
    gateway: str
    site_name: str = ""
    gateway_name: str = ""

    @functools.cached_property
    def json_fields(self) -> str:
        """'"site":...,"gateway":...': the same on every payload, so serialised once."""
        return f'"site":{_str(self.site)},"gateway":{_str(self.gateway)}'


class _RecordMethods:
    """What Event and Reading share: stamping a seq and serialising.

    The payload is built as text straight from a format per class (`json_body`): the
    buffer serialises every record it stores, and building a dict for the C JSON
    encoder cost three times as much. For a record whose fields have their declared
    types it is byte for byte what json.dumps(..., ensure_ascii=False,
    separators=(",", ":"), allow_nan=False) gives for the payload in docs/feed.md
    (tests/test_events.py checks that for generated records). It is stricter than
    json.dumps: a field of another type (a number in a text field, a string in a
    flag, a list as a value) raises TypeError instead of reaching the platform in a
    shape the contract does not allow; the buffer refuses such a record before it
    uses a seq.
    """

    __slots__ = ()
    id: str
    ts_ms: int
    clock_synced: bool
    device: str
    seq: int | None

    def json_body(self, ident: Identity) -> str:
        raise NotImplementedError

    def _json_head(self, ident: Identity) -> str:
        """The fields every payload starts with, up to and including "device"."""
        return _HEAD_JSON % (
            _str(self.id),
            iso_ms(self.ts_ms),
            self.ts_ms,
            _flag(self.clock_synced),
            ident.json_fields,
            _str(self.device),
        )

    def with_seq(self: _R, seq: int) -> _R:
        return _copy_with_seq(self, seq)

    def payload_without_seq(self, ident: Identity) -> bytes:
        """The serialised payload minus "v" and "seq"; `splice_seq` completes it."""
        return self.json_body(ident).encode()

    def to_payload(self, ident: Identity) -> dict[str, Any]:
        """The payload as a dict (the control socket, tests): parsed from the same bytes
        the buffer stores, so there is one serialisation, not two that could drift."""
        if self.seq is None:
            raise ValueError("a record is serialised only after the buffer gave it a seq")
        payload: dict[str, Any] = json.loads(splice_seq(self.payload_without_seq(ident), self.seq))
        return payload


@dataclass(frozen=True, slots=True)
class Event(_RecordMethods):
    """One discrete event. `seq` is None until the buffer has stored it durably."""

    kind: Kind
    category: Category
    severity: Severity
    state: str
    text: str
    device: str  # device id from the config; "gateway" for gateway-internal events
    point: str | None = None
    value: float | int | bool | str | None = None
    unit: str | None = None
    test: bool = False
    ts_ms: int = field(default_factory=now_ms)
    clock_synced: bool = True
    device_name: str | None = None
    point_name: str | None = None
    location: str | None = None
    detail: dict[str, Any] | None = None  # small structured extras (drop ranges, fault counts)
    id: str = field(default_factory=new_id)
    seq: int | None = None

    @property
    def lane(self) -> Lane:
        return Lane.EVENT

    @property
    def is_life_safety_alarm(self) -> bool:
        return self.kind is Kind.ALARM and self.category in LIFE_SAFETY

    def json_body(self, ident: Identity) -> str:
        """The payload as JSON text, minus "v" and "seq" (see _RecordMethods)."""
        extras = ""
        if self.device_name is not None:
            extras += ',"device_name":' + _str(self.device_name)
        if self.point_name is not None:
            extras += ',"point_name":' + _str(self.point_name)
        if self.location is not None:
            extras += ',"location":' + _str(self.location)
        if self.detail is not None:
            extras += ',"detail":' + dumps_text(self.detail)
        return _EVENT_JSON % (
            self._json_head(ident),
            _opt_str(self.point),
            _str(self.kind),
            _str(self.category),
            _str(self.severity),
            _str(self.state),
            _json_value(self.value),
            _opt_str(self.unit),
            _str(self.text),
            _flag(self.test),
            extras,
        )


@dataclass(frozen=True, slots=True)
class Reading(_RecordMethods):
    """One periodic analog value for the telemetry lane."""

    device: str
    point: str
    value: float | int
    unit: str | None = None
    ts_ms: int = field(default_factory=now_ms)
    clock_synced: bool = True
    quality: str = "good"  # good | stale | bad (e.g. 4-20 mA wire break)
    id: str = field(default_factory=new_id)
    seq: int | None = None

    @property
    def lane(self) -> Lane:
        return Lane.TELEMETRY

    def json_body(self, ident: Identity) -> str:
        """The payload as JSON text, minus "v" and "seq" (see _RecordMethods)."""
        value = _json_value(self.value)
        return _READING_JSON % (
            self._json_head(ident),
            _str(self.point),
            value,
            _opt_str(self.unit),
            _str(self.quality if value != "null" else "bad"),
        )


GATEWAY_DEVICE = "gateway"  # the `device` of gateway-internal events


def system_event(
    kind: Kind,
    severity: Severity,
    state: str,
    text: str,
    *,
    point: str,
    clock_synced: bool,
    category: Category = Category.SYSTEM,
    detail: dict[str, Any] | None = None,
) -> Event:
    """An event about the gateway itself (buffer, clock, GPIO, control socket)."""
    return Event(
        kind=kind,
        category=category,
        severity=severity,
        state=state,
        text=text,
        device=GATEWAY_DEVICE,
        point=point,
        clock_synced=clock_synced,
        detail=detail or None,
    )


Record = Event | Reading

# The slot descriptors of each record class: copying through them skips the frozen
# __setattr__ and __init__ that dataclasses.replace pays (the buffer stamps every record).
_SLOTS: Final[dict[type, tuple[tuple[str, Any], ...]]] = {
    cls: tuple((f.name, getattr(cls, f.name)) for f in fields(cls)) for cls in (Event, Reading)
}
_SEQ_HEAD: Final = b'{"v":%d,"seq":' % FEED_VERSION


def _copy_with_seq(record: _R, seq: int) -> _R:
    cls = type(record)
    clone = object.__new__(cls)
    for name, slot in _SLOTS[cls]:
        slot.__set__(clone, seq if name == "seq" else slot.__get__(record, cls))
    return clone


def splice_seq(body: bytes, seq: int) -> bytes:
    """The final payload of a record given its seq, from `payload_without_seq()` bytes:
    byte for byte what dumps(record.with_seq(seq).to_payload(ident)) gives, without
    serialising again (the buffer's writer does this for every record it stores)."""
    return b"%s%d,%s" % (_SEQ_HEAD, seq, body[1:])


_HEAD_JSON: Final = '{"id":%s,"ts":"%s","ts_ms":%d,"clock_synced":%s,%s,"device":%s'
_EVENT_JSON: Final = (
    '%s,"point":%s,"kind":%s,"category":%s,"severity":%s,"state":%s,"value":%s,"unit":%s,'
    '"text":%s,"test":%s%s}'
)  # the first %s: _HEAD_JSON; the last: the optional fields (device_name ... detail)
_READING_JSON: Final = '%s,"point":%s,"value":%s,"unit":%s,"quality":%s}'  # %s: _HEAD_JSON
_str: Final = _encode_basestring  # a JSON string; TypeError for anything but a str


def _flag(value: bool) -> str:
    """A bool field: only True and False (a truthy "false" must not become true)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise TypeError(f"a flag must be true or false, not {value!r}")


def _opt_str(text: str | None) -> str:
    return "null" if text is None else _str(text)


def _json_value(value: Any) -> str:
    """A point value as JSON, as the C encoder writes it; NaN and infinities are null."""
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value) if math.isfinite(value) else "null"
    if isinstance(value, str):
        return _str(value)
    return _not_json(value)  # type: ignore[no-any-return]


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON with non-ASCII kept as is; never emits NaN/Infinity."""
    return dumps_text(payload).encode("utf-8")


def dumps_text(payload: dict[str, Any]) -> str:
    """The same text as json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False), through one C encoder made here per call: json.dumps builds a
    JSONEncoder and then a C encoder on every call."""
    encode = _c_make_encoder(
        {}, _not_json, _encode_basestring, None, ":", ",", False, False, False
    )  # a fresh markers dict: it is what catches a circular `detail` (ValueError)
    return "".join(encode(payload, 0))


def topic_root(prefix: str, ident: Identity) -> str:
    return f"{prefix}/v{FEED_VERSION}/{ident.site}/{ident.gateway}"
