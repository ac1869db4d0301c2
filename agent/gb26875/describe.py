"""GB/T 26875.3 packets as text for people and as plain data for JSON: one readable line per
frame (the simulated centre's screen, the uplink's journal) and a dict per object.

    #12 send-data ComponentState x1: sys 1/1 comp 40 感烟火灾探测器 @10-2 NORMAL|FIRE "3楼"
        2012-09-26 09:58:02

It must never raise on what it is shown: a frame is described whatever it holds.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

from agent.gb26875.adu import Adu, AduError, AduObject, ComponentAddress, RawAdu, decode_adu
from agent.gb26875.codec import Frame, GbTime, command_name
from agent.gb26875.tables import (
    ANALOG_TYPES,
    COMPONENT_TYPES,
    ComponentStatus,
    SystemOperationFlags,
    SystemStatus,
    UitdOperationFlags,
    UitdStatus,
    type_name,
)

# typeflag -> the flag enum of its `status` / `flags` field
_FLAGS: dict[int, type[enum.IntFlag]] = {
    1: SystemStatus,
    2: ComponentStatus,
    4: SystemOperationFlags,
    21: UitdStatus,
    24: UitdOperationFlags,
}
MAX_SHOWN = 3  # objects written out per line; the rest are counted


def flag_names(flags: type[enum.IntFlag], value: int) -> str:
    names = [m.name or "" for m in flags if value & m.value]
    unknown = value & ~sum(m.value for m in flags)
    if unknown:
        names.append(hex(unknown))
    return "|".join(names) or "0"


def _names(obj: AduObject) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]  # type: ignore[arg-type]


def _analog(obj: Any) -> str:
    analog = ANALOG_TYPES.get(obj.analog_type)
    if analog is None:
        return f"analog type {obj.analog_type}: {obj.value}"
    return f"{analog.name} {obj.value * analog.step:g} {analog.unit}"


# field that triggers it -> its text; in this order, each field shown once
_PARTS: list[tuple[str, Callable[[Any], str]]] = [
    ("system_type", lambda o: f"sys {o.system_type}/{o.system_address}"),
    (
        "component_type",
        lambda o: f"comp {o.component_type} {type_name(COMPONENT_TYPES, o.component_type)}",
    ),
    ("component_address", lambda o: f"@{o.component_address}"),
    ("status", lambda o: flag_names(_FLAGS.get(o.TYPEFLAG, _NoFlags), o.status)),
    ("flags", lambda o: flag_names(_FLAGS.get(o.TYPEFLAG, _NoFlags), o.flags)),
    ("analog_type", _analog),
    ("operator", lambda o: f"operator {o.operator}"),
    ("major", lambda o: f"v{o.major}.{o.minor}"),
    ("records", lambda o: f"{o.records} records"),
    ("answer_minutes", lambda o: f"answer within {o.timeout_min} min"),
    ("description", lambda o: f'"{o.description}"'),
    ("start", lambda o: f"from {o.start}"),
    ("time", lambda o: str(o.time) if o.time is not None else "no time"),
]


class _NoFlags(enum.IntFlag):
    pass


def describe_object(obj: AduObject) -> str:
    names = set(_names(obj))
    return " ".join(text(obj) for name, text in _PARTS if name in names) or "-"


def describe_adu(adu: bytes) -> str:
    try:
        decoded = decode_adu(adu)
    except AduError as exc:
        return f"ADU {adu[:16].hex(' ')}{'...' if len(adu) > 16 else ''} ({exc})"
    if isinstance(decoded, RawAdu):
        return f"raw ADU {adu[:16].hex(' ')}{'...' if len(adu) > 16 else ''}" if adu else "-"
    if not decoded.objects:
        return f"typeflag {decoded.typeflag} x0"
    shown = "; ".join(describe_object(o) for o in decoded.objects[:MAX_SHOWN])
    more = len(decoded.objects) - MAX_SHOWN
    kind = type(decoded.objects[0]).__name__
    return f"{kind} x{len(decoded.objects)}: {shown}{f' (+{more} more)' if more > 0 else ''}"


def describe_frame(frame: Frame) -> str:
    return f"#{frame.serial} {command_name(frame.command)} {describe_adu(frame.adu)}"


def plain(value: Any) -> Any:
    """JSON-ready: objects as dicts with their class name, times as text, addresses as pairs."""
    if isinstance(value, GbTime):
        return str(value)
    if isinstance(value, ComponentAddress):
        return [value.zone, value.position]
    if isinstance(value, AduObject):
        return {"type": type(value).__name__} | {n: plain(getattr(value, n)) for n in _names(value)}
    return value


def plain_adu(adu: bytes) -> dict[str, Any]:
    try:
        decoded = decode_adu(adu)
    except AduError as exc:
        return {"typeflag": adu[0] if adu else None, "error": str(exc)}
    if isinstance(decoded, Adu):
        return {"typeflag": decoded.typeflag, "objects": [plain(o) for o in decoded.objects]}
    return {"typeflag": decoded.typeflag, "raw": adu.hex()}
