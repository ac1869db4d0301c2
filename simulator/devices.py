"""Simulated field devices: the four Modbus tables of one unit, built from its profile.

A `SimDevice` is what a detector or panel looks like from the bus. Putting a
point into a state or giving it a value writes the registers and bits the
profile describes, encoded by drivers/codec.py — the same files and the same
codec the agent decodes with, so agent and simulator cannot drift.
It must never invent a register map of its own: addresses come from the profile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers import codec
from drivers.codec import EncodeError
from drivers.gb_profile import GbField
from drivers.profile import PointSpec, Profile
from drivers.types import Table
from simulator.faults import FaultSet
from simulator.rtu import ILLEGAL_ADDRESS, BankError


class SimulatorError(ValueError):
    """A name the simulator does not know (device, point, state, input...) or a bad value.

    The message names what is unknown and lists what exists.
    """


# The device type a simulated panel reports where its profile reads the GB component type
# from a register field (a GST panel's high byte): 42 点型光电感烟火灾探测器, a care home's
# usual loop device; a field with a map gets the first device code the map lists.
SIM_COMPONENT_TYPE = 42


def device_type_words(profile: Profile) -> dict[tuple[Table, int], tuple[int, int]]:
    """(table, address) -> (mask, bits) to OR in at start: each point's device-type field."""
    out: dict[tuple[Table, int], tuple[int, int]] = {}
    for spec in profile.points.values():
        field = spec.gb.component_type if spec.gb is not None else None
        if not isinstance(field, GbField) or spec.gb is None or spec.gb.record != "component":
            continue
        code = min(field.map) if field.map else SIM_COMPONENT_TYPE
        mask = ((1 << (field.high - field.low + 1)) - 1) << field.low
        out[(spec.table, spec.address + field.offset)] = (mask, (code << field.low) & mask)
    return out


def unknown(what: str, name: str, known: list[str] | Any) -> SimulatorError:
    names = ", ".join(sorted(str(k) for k in known)) or "none"
    return SimulatorError(f"unknown {what} {name!r} (known: {names})")


def _extents(profile: Profile) -> dict[Table, int]:
    ext = dict.fromkeys(Table, 0)
    for spec in profile.points.values():
        ext[spec.table] = max(ext[spec.table], spec.address + spec.register_count)
    return ext


@dataclass(frozen=True, slots=True)
class PointSetting:
    """The last thing the simulator was told about a point (for `state` and the log)."""

    state: str | None
    value: float | None
    mono: float


class SimDevice:
    """One unit: four tables, a silenced flag, its own faults. Thread-safe."""

    def __init__(
        self,
        device_id: str,
        unit_id: int,
        profile: Profile | None = None,
        extents: dict[Table, int] | None = None,
        writable_all: bool = False,
    ) -> None:
        self.id = device_id
        self.unit_id = unit_id
        self.profile = profile
        size = extents or (_extents(profile) if profile else dict.fromkeys(Table, 0))
        self.tables: dict[Table, list[int]] = {t: [0] * size.get(t, 0) for t in Table}
        self.writable_all = writable_all
        self.silenced = False
        self.faults = FaultSet(seed=unit_id)
        self.settings: dict[str, PointSetting] = {}
        self.writes: list[tuple[Table, int, int]] = []  # what the master wrote, in order
        self._lock = threading.Lock()
        self._writable = self._writable_addresses()
        for (table, address), (mask, bits) in device_type_words(profile).items() if profile else ():
            cells = self.tables[table]
            if address < len(cells):
                cells[address] = (cells[address] & ~mask & 0xFFFF) | bits

    def _writable_addresses(self) -> set[tuple[Table, int]]:
        out: set[tuple[Table, int]] = set()
        for spec in self.profile.points.values() if self.profile else ():
            if spec.writable:
                out.update((spec.table, spec.address + i) for i in range(spec.register_count))
        return out

    # -- RegisterBank ----------------------------------------------------------

    def read(self, table: Table, address: int, count: int) -> list[int]:
        with self._lock:
            cells = self.tables[table]
            if address + count > len(cells):
                raise BankError(ILLEGAL_ADDRESS)
            return cells[address : address + count]

    def write(self, table: Table, address: int, values: list[int]) -> None:
        with self._lock:
            cells = self.tables[table]
            if address + len(values) > len(cells):
                raise BankError(ILLEGAL_ADDRESS)
            if not self.writable_all and any(
                (table, address + i) not in self._writable for i in range(len(values))
            ):
                raise BankError(ILLEGAL_ADDRESS, "read-only address")
            for i, value in enumerate(values):
                cells[address + i] = value
                self.writes.append((table, address + i, value))

    # -- what the timeline and the technician do -----------------------------------

    def point(self, point_id: str) -> PointSpec:
        points = self.profile.points if self.profile else {}
        if point_id not in points:
            raise unknown(f"point of device {self.id!r}:", point_id, list(points))
        return points[point_id]

    def _encode(self, spec: PointSpec, how: Callable[[Mapping[int, int]], dict[int, int]]) -> None:
        """Apply the codec's answer; it gets the current registers so shared words keep
        the bits and bytes of other points."""
        with self._lock:
            cells = self.tables[spec.table]
            span = range(spec.address, min(spec.address + spec.register_count, len(cells)))
            try:
                words = how({a: cells[a] for a in span})
            except EncodeError as exc:
                raise SimulatorError(f"device {self.id!r}: {exc}") from None
            for address, word in words.items():
                cells[address] = word

    def set_state(self, point_id: str, state: str) -> None:
        spec = self.point(point_id)
        self._encode(spec, lambda current: codec.encode_state(spec, state, current))
        self.settings[point_id] = PointSetting(state, None, time.monotonic())

    def set_value(self, point_id: str, value: float) -> None:
        spec = self.point(point_id)
        self._encode(spec, lambda current: codec.encode(spec, value, current))
        self.settings[point_id] = PointSetting(None, value, time.monotonic())

    def silence(self) -> None:
        self.silenced = True

    def revive(self) -> None:
        self.silenced = False

    def snapshot(self) -> dict[str, Any]:
        points = {
            pid: {"state": s.state, "value": s.value} for pid, s in sorted(self.settings.items())
        }
        return {
            "unit_id": self.unit_id,
            "profile": self.profile.id if self.profile else None,
            "silenced": self.silenced,
            "faults": [f.describe() for f in self.faults.active()],
            "points": points,
        }
