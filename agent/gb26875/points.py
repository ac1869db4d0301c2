"""The field's points in GB/T 26875.3 coordinates: computed where the facts are.

Each device's profile (drivers/gb_profile.py) says where its points sit: system type,
component type (fixed, or a register field read from the last poll's blocks when an event
or a read needs it, such as a GST panel's device-type byte), component address, the status
bits of each state, analog type and scale; the device's config gives its system address.
From those and the live point trackers this module makes the contract's
`Event.detail["gb"]` (docs/feed.md section 3, docs/gb26875.md):

- a point's event: `{"tf": 2, sys_type, sys_addr, comp_type, zone, pos, status}`, the status
  word of the whole component after the poll (every point at the same address on the
  device, OR'ed: a gas detector's alarm and fault bits are one word), bit 0 set unless the
  event is a test; an analog point's threshold alarm too (the status word is what says
  "alarm"; its value goes out as readings, typeflag 3);
- a point declared `record = "system"` (a panel's power and bus faults): `{"tf": 1,
  sys_type, sys_addr, status}` with the system bits of every such point of the device;
- a device's comm loss/restore: its own component (`[gb.device]`, default type 0 at 0/0)
  with the fault bit while lost, OR'ed with the conditions of any point at that same
  component (a gas detector is one component: its alarm stays in the word).

- a GPIO contact (`contact_gb`): its `[inputs.gb]` component, or, for the gateway's own
  manual alarm button, the UITD's manual alarm operation (typeflag 24, flag bit 2).

`GbPoints` holds one `GbDevice` per configured device: the static `coordinates` of a point,
`analog(reading)` for Readings, and what agent/gb26875/reads.py (FieldLive) answers the
centre's reads with. Points without a mapping give None: not for the centre.

This module must never do I/O, never read a device (only the blocks a poll already read)
and never raise on a value: a field it cannot read keeps the last type (or the default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from agent.gb26875.tables import ANALOG_TYPES, ComponentStatus, SystemStatus, UitdOperationFlags
from core.events import Event, Kind, Reading, Record
from drivers.gb_profile import KIND_BITS, GbField, GbSpec
from drivers.profile import PointSpec, Profile, apply_overrides
from drivers.types import Block, PollClass

S16 = (-32768, 32767)
Place = tuple[int, int, int, int]  # system type, system address, zone, position


def _bits(names: Iterable[str], flags: type[ComponentStatus] | type[SystemStatus]) -> int:
    value = 0
    for name in names:
        value |= int(flags[name.upper()])
    return value


class _Points(Protocol):
    """What GbDevice reads of the live trackers (agent.points.DevicePoints)."""

    @property
    def trackers(self) -> Mapping[str, Any]: ...

    def undecodable(self, point_id: str) -> bool: ...


class GbDevice:
    """One device's points in GB coordinates (its profile with overrides applied)."""

    def __init__(self, device_id: str, system_address: int, unit_id: int, profile: Profile):
        self.device_id = device_id
        self.sys_addr = system_address
        self.specs: dict[str, PointSpec] = {
            pid: spec for pid, spec in profile.points.items() if spec.gb is not None
        }
        self._comp_types = {pid: self._static_type(spec) for pid, spec in self.specs.items()}
        # the points whose type is a register field: read from the last blocks when asked
        self._fields = {
            pid: spec.gb.component_type
            for pid, spec in self.specs.items()
            if spec.gb is not None
            and spec.gb.record == "component"
            and isinstance(spec.gb.component_type, GbField)
        }
        self._blocks: dict[PollClass, list[Block]] = {}  # the last poll's, by class
        self._groups = self._group()
        self._bits = {pid: _state_bits(spec.gb) for pid, spec in self.specs.items() if spec.gb}
        self.device_place: tuple[int, int, int, int] | None = None  # sys_type, type, zone, pos
        if self.specs:
            sys_type = next(iter(self.specs.values())).gb.system_type  # type: ignore[union-attr]
            own = profile.gb_device
            zone, pos = (0, 0) if own is None else own.address_of(unit_id)
            self.device_place = (sys_type, 0 if own is None else own.component_type, zone, pos)

    @staticmethod
    def _static_type(spec: PointSpec) -> int:
        assert spec.gb is not None
        kind = spec.gb.component_type
        return kind.default if isinstance(kind, GbField) else kind

    def _group(self) -> dict[str, tuple[str, ...]]:
        """Point -> every point whose conditions share its status word."""
        by_key: dict[tuple[Any, ...], list[str]] = {}
        keys = {}
        for pid, spec in self.specs.items():
            gb = spec.gb
            assert gb is not None
            key: tuple[Any, ...] = (gb.record, gb.system_type)
            if gb.record == "component":
                key += (gb.zone, gb.position)
            keys[pid] = key
            by_key.setdefault(key, []).append(pid)
        return {pid: tuple(by_key[key]) for pid, key in keys.items()}

    # --- static coordinates -----------------------------------------------------------

    def component_type(self, point_id: str) -> int:
        """The component type as last read (a field in the last poll's blocks), or as
        declared. Read on demand: a poll that changes nothing costs nothing here."""
        field = self._fields.get(point_id)
        if field is not None:
            spec = self.specs[point_id]
            word = _word(self._blocks.get(spec.poll, ()), spec, field.offset)
            if word is not None:
                self._comp_types[point_id] = field.component_type(word)
        return self._comp_types[point_id]

    def coordinates(self, point_id: str) -> dict[str, int] | None:
        """The point's coordinates without status (contract shape), or None when unmapped."""
        spec = self.specs.get(point_id)
        if spec is None or spec.gb is None:
            return None
        gb = spec.gb
        if gb.record == "system":
            return {"tf": 1, "sys_type": gb.system_type, "sys_addr": self.sys_addr}
        return {
            "tf": 2,
            "sys_type": gb.system_type,
            "sys_addr": self.sys_addr,
            "comp_type": self.component_type(point_id),
            "zone": gb.zone,
            "pos": gb.position,
        }

    def analog(self, point_id: str, value: Any) -> dict[str, int] | None:
        """A component analog (typeflag 3) of a value of the point, or None."""
        spec = self.specs.get(point_id)
        if spec is None or spec.gb is None or spec.gb.analog is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        analog = spec.gb.analog
        scale = analog.scale
        if scale is None:
            scale = 1 / ANALOG_TYPES[analog.type].step
        count = min(max(round(value * scale), S16[0]), S16[1])  # saturates: docs/gb26875.md
        coords = self.coordinates(point_id)
        assert coords is not None
        return {**coords, "tf": 3, "analog_type": analog.type, "value": count}

    # --- live -------------------------------------------------------------------------

    def status(self, points: _Points, point_id: str, *, test: bool = False) -> int:
        """The status word of the point's component (or system) as the trackers hold it."""
        spec = self.specs[point_id]
        assert spec.gb is not None
        flags = SystemStatus if spec.gb.record == "system" else ComponentStatus
        value = 0 if test else int(flags.NORMAL)
        for pid in self._groups[point_id]:
            tracker = points.trackers.get(pid)
            if tracker is None:
                continue
            conditions = list(tracker.conditions())
            if points.undecodable(pid):
                conditions.append(("decode_error", Kind.FAULT))
            by_state, by_kind = self._bits[pid]
            for state, kind in conditions:
                bits = by_state.get(state)
                value |= by_kind.get(kind, 0) if bits is None else bits
        return value

    def stamp(
        self, points: _Points, poll: PollClass, blocks: list[Block], records: list[Record]
    ) -> list[Record]:
        """The poll's records, each event of a mapped point with its detail["gb"]."""
        self._blocks[poll] = blocks
        return [self._stamp_one(points, r) for r in records]

    def _stamp_one(self, points: _Points, record: Record) -> Record:
        if not isinstance(record, Event) or record.point not in self.specs:
            return record
        coords = self.coordinates(record.point)
        assert coords is not None
        coords["status"] = self.status(points, record.point, test=record.test)
        return with_gb(record, coords, fresh=True)

    def comm(self, event: Event, points: _Points | None = None) -> Event:
        """A comm loss/restore of this device, as a fault of its own component. The word is
        the whole component's after the event: with `points` (the device's live trackers),
        the conditions of every point at the same component are OR'ed in, so a gas
        detector whose alarm persists across a comm loss (the [gb.device] and its points one
        component) never tells the centre "normal" while that alarm stands."""
        if self.device_place is None:
            return event
        sys_type, comp_type, zone, pos = self.device_place
        status = int(ComponentStatus.NORMAL)
        if event.kind is Kind.COMM_LOSS:
            status |= int(ComponentStatus.FAULT)
        sharing = self._sharing_device_place()
        if points is not None and sharing is not None:
            status |= self.status(points, sharing)
        gb = {
            "tf": 2, "sys_type": sys_type, "sys_addr": self.sys_addr, "comp_type": comp_type,
            "zone": zone, "pos": pos, "status": status,
        }  # fmt: skip
        return with_gb(event, gb)

    def _sharing_device_place(self) -> str | None:
        """A point at the device's own component (same system type, zone and position), or
        None: then the comm word is the device component's alone."""
        if self.device_place is None:
            return None
        sys_type, _, zone, pos = self.device_place
        for pid, spec in self.specs.items():
            gb = spec.gb
            if gb is None or gb.record != "component":
                continue
            if (gb.system_type, gb.zone, gb.position) == (sys_type, zone, pos):
                return pid
        return None


def _word(blocks: Iterable[Block], spec: PointSpec, offset: int) -> int | None:
    """One register of the point's from the blocks, or None when none covers it."""
    address = spec.address + offset
    for block in blocks:
        if block.request.table is spec.table and block.covers(address, 1):
            word = block.values[address - block.request.address]
            return word if 0 <= word <= 0xFFFF else None
    return None


def _state_bits(gb: GbSpec) -> tuple[dict[str, int], dict[Kind, int]]:
    """A point's bits by state (its `status`) and by kind (the defaults), computed once."""
    flags = SystemStatus if gb.record == "system" else ComponentStatus
    by_state = {state: _bits(names, flags) for state, names in gb.status.items()}
    by_kind = {Kind(kind): _bits((name,), flags) for kind, name in KIND_BITS.items()}
    return by_state, by_kind


def contact_gb(cfg: Any, active: bool) -> dict[str, int] | None:
    """A GPIO contact's coordinates (agent.config.InputConfig, or anything with its fields):
    its `[inputs.gb]` component, with its bits while active; else the gateway's own manual
    alarm button (category manual, kind alarm), pressed: a UITD operation, manual alarm
    (typeflag 24, flags bit 2), as GB 26875.1 asks of a UITD's button. None: not for the
    centre (its release, other unmapped contacts)."""
    gb = getattr(cfg, "gb", None)
    if gb is not None:
        names = gb.status
        if names is None:
            kind = str(getattr(cfg.kind, "value", cfg.kind))
            names = (KIND_BITS[kind],) if kind in KIND_BITS else ()
        status = int(ComponentStatus.NORMAL) | (_bits(names, ComponentStatus) if active else 0)
        return {
            "tf": 2, "sys_type": gb.system_type, "sys_addr": gb.system_address,
            "comp_type": gb.component_type, "zone": gb.zone, "pos": gb.position,
            "status": status,
        }  # fmt: skip
    manual = str(getattr(cfg.category, "value", cfg.category)) == "manual"
    if manual and str(getattr(cfg.kind, "value", cfg.kind)) == "alarm" and active:
        return {"tf": 24, "flags": int(UitdOperationFlags.MANUAL_ALARM), "operator": 0}
    return None


def with_gb(event: Event, gb: dict[str, int], *, fresh: bool = False) -> Event:
    """The event with detail["gb"]. `fresh`: the event was made by this poll's trackers a
    moment ago and handed to no one yet, so its detail is completed in place, as part of
    making it (a copy of each of 10,000 storm events cost more than the rest of the mapping);
    otherwise a new event."""
    detail = {**(event.detail or {}), "gb": gb}
    if fresh:
        object.__setattr__(event, "detail", detail)
        return event
    return dataclasses.replace(event, detail=detail)


class GbPoints:
    """Every configured device's points in GB coordinates, built from the loaded config."""

    def __init__(self, devices: Iterable[GbDevice]) -> None:
        self.devices = {d.device_id: d for d in devices}

    @classmethod
    def from_config(cls, devices: Iterable[Any], profiles: Mapping[str, Profile]) -> GbPoints:
        """From agent.config DeviceConfigs and the profiles they name (overrides applied)."""
        return cls(
            GbDevice(
                d.id, d.gb_system_address, d.unit_id, apply_overrides(profiles[d.profile], d.points)
            )
            for d in devices
        )

    def device(self, device_id: str) -> GbDevice | None:
        return self.devices.get(device_id)

    def coordinates(self, device: str, point: str) -> dict[str, int] | None:
        """The static coordinates of a point (no status), or None when it has none."""
        dev = self.devices.get(device)
        return None if dev is None else dev.coordinates(point)

    def analog(self, reading: Reading) -> dict[str, int] | None:
        """A Reading as a component analog (typeflag 3), or None: no analog mapping, or a
        value the loop cannot vouch for (quality bad: the wire-break fault says why)."""
        dev = self.devices.get(reading.device)
        if dev is None or reading.point is None or reading.quality != "good":
            return None
        return dev.analog(reading.point, reading.value)

    def places(self) -> dict[Place, list[tuple[str, str]]]:
        """(sys_type, sys_addr, zone, pos) -> the (device, point)s of that component."""
        out: dict[Place, list[tuple[str, str]]] = {}
        for dev in self.devices.values():
            for pid in dev.specs:
                coords = dev.coordinates(pid)
                if coords is None or coords["tf"] != 2:
                    continue
                place = (coords["sys_type"], coords["sys_addr"], coords["zone"], coords["pos"])
                out.setdefault(place, []).append((dev.device_id, pid))
        return out
