"""Buffered records -> GB/T 26875.3 information objects: the GB uplink's half of the contract
(docs/gb26875.md, "What the gateway sends").

A record the centre can be told about carries its GB coordinates in `detail["gb"]`, computed
where the facts are known (the field side from the profile, the duties for their own
operations): {"tf": 1|2|3|21|24, ...} as the contract lists them. This module only packs
them: it never looks at profiles. The description of a component state (31 bytes GB18030) is
made here from the event's names; every time is the record's detection time (ts_ms) as
Beijing wall time (codec.GbTime.from_epoch).

A Reading has no detail: it is a component analog only when the point's static mapping
(agent/gb26875/points.py: GbPoints.analog, wired by agent/runtime.py) gives its
coordinates; otherwise it is set aside for the GB reader when it is stored.

It works on the stored payload (the same JSON bytes MQTT publishes), so what the centre gets
is what was buffered. It must never raise on a payload: a record it cannot describe is None
(set aside, counted by the uplink), never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.buffer import StoredRow
from agent.gb26875.adu import (
    DESCRIPTION_SIZE,
    Adu,
    AduObject,
    ComponentAddress,
    ComponentAnalog,
    ComponentState,
    SystemState,
    UitdOperation,
    UitdState,
    fit_gb18030,
    pack,
)
from agent.gb26875.codec import BEIJING_UTC_OFFSET_S, CodecError, GbTime
from core.events import LIFE_SAFETY, Event, Kind, Reading, Record

# A reading's static coordinates: GbPoints.analog(reading) -> the contract's tf 3 dict or None.
AnalogLookup = Callable[[Reading], "dict[str, Any] | None"]

# Fire and manual alarms go before every other packet (GB 26875.1 names them). Gas and
# electrical-fire alarms go as priority packets too: in a care home they are as urgent, and
# as ordinary packets they waited behind up to MAX_QUEUED stop-and-wait packets (4 x 5 s with
# lost confirms ahead: past the 10 s promise). Priority packets are sent at once, beside one
# another, so a fire never waits for them; they lead the buffer's delivery order already.
PRIORITY_CATEGORIES: Final = frozenset(c.value for c in LIFE_SAFETY)


def carries(record: Record, analogs: AnalogLookup | None = None) -> bool:
    """The GB reader's predicate at store time (agent/buffer.py Reader): does the centre get
    this record? Events: those with detail["gb"]. Readings: those the static mapping knows."""
    if isinstance(record, Event):
        return isinstance((record.detail or {}).get("gb"), dict)
    # a lookup that raises: the buffer offers the record (agent/buffer.py _carried)
    return analogs is not None and analogs(record) is not None


@dataclass(frozen=True, slots=True)
class Mapped:
    """One buffered row and the object that carries it to the centre."""

    row: StoredRow
    obj: AduObject
    priority: bool


def map_row(
    row: StoredRow,
    analogs: AnalogLookup | None = None,
    utc_offset_s: int = BEIJING_UTC_OFFSET_S,
) -> Mapped | None:
    """The object for one stored row, or None: not for the centre (set aside)."""
    try:
        payload = json.loads(row.payload)
        if not isinstance(payload, dict):
            return None
        obj = _object(payload, analogs, utc_offset_s)
    except (ValueError, TypeError, KeyError, OverflowError, CodecError):
        return None
    if obj is None:
        return None
    priority = payload.get("kind") == Kind.ALARM.value and payload.get("category") in (
        PRIORITY_CATEGORIES
    )
    return Mapped(row, obj, bool(priority))


def _object(
    payload: dict[str, Any], analogs: AnalogLookup | None, utc_offset_s: int
) -> AduObject | None:
    when = GbTime.from_epoch(int(payload["ts_ms"]) / 1000, utc_offset_s)
    detail = payload.get("detail")
    gb = detail.get("gb") if isinstance(detail, dict) else None
    if gb is None and "kind" not in payload and analogs is not None:
        gb = analogs(_reading(payload))
    if not isinstance(gb, dict):
        return None
    return _from_gb(gb, payload, when)


def _from_gb(gb: dict[str, Any], payload: dict[str, Any], when: GbTime) -> AduObject | None:
    tf = gb.get("tf")
    if tf == 2:
        return ComponentState(
            _u8(gb["sys_type"]),
            _u8(gb["sys_addr"]),
            _u8(gb["comp_type"]),
            ComponentAddress(_u16(gb["zone"]), _u16(gb["pos"])),
            _u16(gb["status"]),
            description(payload),
            when,
        )
    if tf == 3:
        return ComponentAnalog(
            _u8(gb["sys_type"]),
            _u8(gb["sys_addr"]),
            _u8(gb["comp_type"]),
            ComponentAddress(_u16(gb["zone"]), _u16(gb["pos"])),
            _u8(gb["analog_type"]),
            _s16(gb["value"]),
            when,
        )
    if tf == 1:
        return SystemState(_u8(gb["sys_type"]), _u8(gb["sys_addr"]), _u16(gb["status"]), when)
    if tf == 21:
        return UitdState(_u8(gb["status"]), when)
    if tf == 24:
        return UitdOperation(_u8(gb["flags"]), _u8(gb["operator"]), when)
    return None


def description(payload: dict[str, Any]) -> str:
    """The component's description: where it is and what it is (location, point name), or
    the device's name for a device-wide state; at most 31 bytes of GB18030, cut on a
    character boundary."""
    names = [payload.get("location"), payload.get("point_name") or payload.get("point")]
    parts = [n for n in names if isinstance(n, str) and n]
    if not parts:
        parts = [n for n in (payload.get("device_name"), payload.get("device")) if n][:1]
    text = " ".join(str(p) for p in parts)
    return fit_gb18030(text, DESCRIPTION_SIZE).decode("gb18030")


def _reading(payload: dict[str, Any]) -> Reading:
    return Reading(
        str(payload["device"]),
        str(payload["point"]),
        payload["value"],
        payload.get("unit"),
        ts_ms=int(payload["ts_ms"]),
        quality=str(payload.get("quality", "good")),
        id=str(payload.get("id", "")),
        seq=payload.get("seq"),
    )


def _int(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{value!r} is not an integer in {low}..{high}")
    return value


def _u8(value: object) -> int:
    return _int(value, 0, 0xFF)


def _u16(value: object) -> int:
    return _int(value, 0, 0xFFFF)


def _s16(value: object) -> int:
    return _int(value, -0x8000, 0x7FFF)


@dataclass(frozen=True, slots=True)
class Batch:
    """One packet's worth: an ADU and the rows it carries (acked when it is confirmed)."""

    adu: Adu
    rows: tuple[StoredRow, ...]
    priority: bool


def batches(mapped: Iterable[Mapped]) -> list[Batch]:
    """Packets for rows in delivery order: runs of the same priority, each packed into as
    few ADUs as each type's object limit and the 1024-byte ADU allow (adu.pack), order kept."""
    out: list[Batch] = []
    run: list[Mapped] = []
    for item in mapped:
        if run and item.priority != run[0].priority:
            out += _packed(run)
            run = []
        run.append(item)
    if run:
        out += _packed(run)
    return out


def _packed(run: Sequence[Mapped]) -> list[Batch]:
    out = []
    at = 0
    for adu in pack(m.obj for m in run):
        n = len(adu.objects)
        out.append(Batch(adu, tuple(m.row for m in run[at : at + n]), run[0].priority))
        at += n
    return out
