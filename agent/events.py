"""The event model: what the gateway says about the field, as typed values.

Written to match docs/feed.md and docs/schemas/ (the contract comes first;
tests validate every payload built here against those schemas). An event is
immutable once made; the buffer gives it its sequence number. Serialisation is
UTF-8 JSON with non-ASCII kept as is (Chinese names stay readable).

This module must never do I/O: it only describes and serialises.
"""

from __future__ import annotations

import enum
import math
import time
import uuid
from _json import encode_basestring as _encode_basestring  # CPython's json accelerator
from _json import make_encoder as _c_make_encoder
from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeVar

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


_last_second: tuple[int, str] = (-1, "")  # a storm stamps many events in the same second


def iso_ms(ts_ms: int) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-11-29T19:20:01.123Z."""
    global _last_second  # noqa: PLW0603 - a one-entry cache; a tuple swap is thread-safe
    secs, ms = divmod(ts_ms, 1000)
    cached_secs, text = _last_second
    if cached_secs != secs:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        _last_second = (secs, text)
    return f"{text}.{ms:03d}Z"


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is speaking: fixed per gateway, stamped on every payload."""

    site: str
    gateway: str
    site_name: str = ""
    gateway_name: str = ""


@dataclass(frozen=True, slots=True)
class Event:
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

    def with_seq(self, seq: int) -> Event:
        return _copy_with_seq(self, seq)

    def to_payload(self, ident: Identity) -> dict[str, Any]:
        if self.seq is None:
            raise ValueError("an event is serialised only after the buffer gave it a seq")
        return {"v": FEED_VERSION, "seq": self.seq, **self._body(ident)}

    def payload_without_seq(self, ident: Identity) -> bytes:
        """The serialised payload minus "v" and "seq"; `splice_seq` completes it."""
        return dumps(self._body(ident))

    def _body(self, ident: Identity) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.id,
            "ts": iso_ms(self.ts_ms),
            "ts_ms": self.ts_ms,
            "clock_synced": self.clock_synced,
            "site": ident.site,
            "gateway": ident.gateway,
            "device": self.device,
            "point": self.point,
            "kind": self.kind.value,
            "category": self.category.value,
            "severity": self.severity.value,
            "state": self.state,
            "value": finite_or_none(self.value),
            "unit": self.unit,
            "text": self.text,
            "test": self.test,
        }
        for key in ("device_name", "point_name", "location", "detail"):
            extra = getattr(self, key)
            if extra is not None:
                payload[key] = extra
        return payload


@dataclass(frozen=True, slots=True)
class Reading:
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

    def with_seq(self, seq: int) -> Reading:
        return _copy_with_seq(self, seq)

    def to_payload(self, ident: Identity) -> dict[str, Any]:
        if self.seq is None:
            raise ValueError("a reading is serialised only after the buffer gave it a seq")
        return {"v": FEED_VERSION, "seq": self.seq, **self._body(ident)}

    def payload_without_seq(self, ident: Identity) -> bytes:
        """The serialised payload minus "v" and "seq"; `splice_seq` completes it."""
        return dumps(self._body(ident))

    def _body(self, ident: Identity) -> dict[str, Any]:
        value = finite_or_none(self.value)
        return {
            "id": self.id,
            "ts": iso_ms(self.ts_ms),
            "ts_ms": self.ts_ms,
            "clock_synced": self.clock_synced,
            "site": ident.site,
            "gateway": ident.gateway,
            "device": self.device,
            "point": self.point,
            "value": value,
            "unit": self.unit,
            "quality": self.quality if value is not None else "bad",
        }


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
_R = TypeVar("_R", Event, Reading)

# The slot descriptors of each record class: copying through them skips the frozen
# __setattr__ and __init__ that dataclasses.replace pays (the buffer stamps every record).
_SLOTS: Final = {
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


def finite_or_none(value: Any) -> Any:
    """NaN and infinities (a float32 register can hold them) are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON with non-ASCII kept as is; never emits NaN/Infinity.

    The same bytes as json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False), through one C encoder made here per call: json.dumps builds a
    JSONEncoder and then a C encoder on every call, which the buffer pays per record.
    """
    encode = _c_make_encoder(
        {}, _not_json, _encode_basestring, None, ":", ",", False, False, False
    )  # a fresh markers dict: it is what catches a circular `detail` (ValueError)
    return "".join(encode(payload, 0)).encode("utf-8")


def topic_root(prefix: str, ident: Identity) -> str:
    return f"{prefix}/v{FEED_VERSION}/{ident.site}/{ident.gateway}"
