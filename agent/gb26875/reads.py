"""Answers to the centre's reads (GB/T 26875.3 8.3.2) from the gateway's live state.

The GB uplink hands every read it receives to `answer_read(adu, live)` and sends what it
returns as the response (command 5), or a deny (command 6) for None. Answered here:

    61 facility system state   -> typeflag 1 objects, one per system asked that we have
    62 component state         -> typeflag 2, the component's whole status word now
    63 component analog        -> typeflag 3, the last value read (not a stale one)
    81 UITD state              -> typeflag 21, the gateway's running state

from the last known values the points thread keeps (agent/points.py trackers, through
`FieldLive`) and the GPIO contacts' debounced levels (an `[inputs.gb]` component, the manual
call point's fire in the UITD state): no Modbus read is made, so an answer never waits on a
slow RS-485 line. A read of several objects is answered with those we know; if none, or for
any other typeflag, the answer is None (deny): the uplink decides what a deny looks like.

This module must never do I/O, block, or raise on what the centre asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent.gb26875.adu import (
    DESCRIPTION_SIZE,
    Adu,
    AduObject,
    ComponentAnalog,
    ComponentState,
    ReadComponentAnalog,
    ReadComponentState,
    ReadSystemState,
    ReadUitdState,
    SystemState,
    UitdState,
    fit_gb18030,
)
from agent.gb26875.codec import GbTime
from agent.gb26875.points import GbDevice, GbPoints, Place, contact_gb
from agent.gb26875.tables import ComponentStatus, SystemStatus, UitdStatus

# Bits of a component's word that also say something about its system (fire ... delayed).
_SYSTEM_FROM_COMPONENTS = 0xFE


@dataclass(frozen=True, slots=True)
class ComponentNow:
    """A component as the gateway knows it now."""

    component_type: int
    status: int
    description: str
    analog: tuple[int, int] | None  # (analog type, value) when it has a fresh one


class LiveState(Protocol):
    """What the answers read: the gateway's state now, in GB terms."""

    def system_status(self, system_type: int, system_address: int) -> int | None: ...

    def component(self, place: Place) -> ComponentNow | None: ...

    def uitd_status(self) -> int: ...

    def now(self) -> GbTime: ...


def answer_read(adu: Any, live: LiveState) -> Adu | None:
    """The response to a read, or None (deny): unknown typeflag, nothing known, or a
    failure in the live state (a read must never take the uplink down)."""
    try:
        return _answer(adu, live)
    except Exception:  # noqa: BLE001 - a deny, never a crash of the uplink's thread
        return None


def _answer(adu: Any, live: LiveState) -> Adu | None:
    objects = getattr(adu, "objects", ())
    if not isinstance(adu, Adu) or not objects:
        return None
    now = live.now()
    found: list[AduObject] = []
    for asked in objects:
        found += _one(asked, live, now)
    return Adu.of(*found) if found else None


def _one(asked: AduObject, live: LiveState, now: GbTime) -> list[AduObject]:
    if isinstance(asked, ReadUitdState):
        return [UitdState(live.uitd_status(), now)]
    if isinstance(asked, ReadSystemState):
        status = live.system_status(asked.system_type, asked.system_address)
        if status is None:
            return []
        return [SystemState(asked.system_type, asked.system_address, status, now)]
    if isinstance(asked, ReadComponentState | ReadComponentAnalog):
        return _component(asked, live, now)
    return []


def _component(
    asked: ReadComponentState | ReadComponentAnalog, live: LiveState, now: GbTime
) -> list[AduObject]:
    address = asked.component_address
    sys_type, sys_addr = asked.system_type, asked.system_address
    part = live.component((sys_type, sys_addr, address.zone, address.position))
    if part is None:
        return []
    comp_type = part.component_type
    if isinstance(asked, ReadComponentState):
        # cut here as the wire will (31 bytes GB18030, whole characters): what we answer
        # is what the centre reads
        text = fit_gb18030(part.description, DESCRIPTION_SIZE).decode("gb18030")
        state = ComponentState(sys_type, sys_addr, comp_type, address, part.status, text, now)
        return [state]
    if part.analog is None:
        return []
    analog_type, value = part.analog
    return [ComponentAnalog(sys_type, sys_addr, comp_type, address, analog_type, value, now)]


# --- the live state of the running gateway ----------------------------------------------------


class FieldLive:
    """LiveState from the field devices the views hold (agent.field.DeviceRuntime: config,
    point trackers, comm state) and their GB mapping. Read from the uplink's thread while
    the points thread updates the trackers: each answer is a snapshot of last known values.

    `uitd_faults`: whether the gateway has a fault of its own now (agent.faults, the buffer);
    `contacts`: the GPIO inputs now, each (agent.config.InputConfig, debounced level active)
    (none until GPIO is open); `clock`: epoch seconds for the answers' timestamps."""

    def __init__(
        self,
        gb: GbPoints,
        devices: Mapping[str, Any],
        uitd_faults: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        contacts: Callable[[], Iterable[tuple[Any, bool]]] = lambda: (),
    ) -> None:
        self._gb = gb
        self._devices = devices
        self._uitd_faults = uitd_faults
        self._clock = clock
        self._contacts = contacts
        self._places = gb.places()

    def now(self) -> GbTime:
        return GbTime.from_epoch(self._clock())

    def _by_address(self, system_address: int) -> list[tuple[GbDevice, Any]]:
        return [
            (mapped, self._devices[d])
            for d, mapped in self._gb.devices.items()
            if mapped.sys_addr == system_address and d in self._devices
        ]

    def system_status(self, system_type: int, system_address: int) -> int | None:
        value, known = int(SystemStatus.NORMAL), False
        for mapped, dev in self._by_address(system_address):
            for pid, spec in mapped.specs.items():
                gb = spec.gb
                if gb is None or gb.system_type != system_type:
                    continue
                known = True
                word = mapped.status(dev.points, pid)
                value |= word if gb.record == "system" else word & _SYSTEM_FROM_COMPONENTS
            if known and dev.lost:
                value |= int(SystemStatus.FAULT)
        for cfg, contact in self._contact_words():
            place = cfg.gb
            if (place.system_type, place.system_address) == (system_type, system_address):
                known = True
                value |= contact["status"] & _SYSTEM_FROM_COMPONENTS
        return value if known else None

    def _contact_words(self) -> list[tuple[Any, dict[str, int]]]:
        """Each GPIO contact with an [inputs.gb] component, with its word now."""
        out = []
        for cfg, active in self._contacts():
            word = contact_gb(cfg, active) if getattr(cfg, "gb", None) is not None else None
            if word is not None:
                out.append((cfg, word))
        return out

    def component(self, place: Place) -> ComponentNow | None:
        points = self._places.get(place)
        if not points:
            return self._contact_component(place) or self._device_component(place)
        device_id, first = points[0]
        mapped = self._gb.devices[device_id]
        dev = self._devices.get(device_id)
        if dev is None:
            return None
        status = mapped.status(dev.points, first)
        if dev.lost:
            status |= int(ComponentStatus.FAULT)  # not watched now
        analog = None
        for _, pid in points:
            tracker = dev.points.trackers.get(pid)
            if tracker is None or tracker.stale or dev.lost:
                continue
            found = mapped.analog(pid, tracker.value)
            if found is not None:
                analog = (found["analog_type"], found["value"])
                break
        names = [dev.points.trackers[p].spec.name for _, p in points if p in dev.points.trackers]
        text = f"{dev.cfg.name} {names[0] if names else first}"
        return ComponentNow(mapped.component_type(first), status, text, analog)

    def _contact_component(self, place: Place) -> ComponentNow | None:
        """A GPIO contact's [inputs.gb] component, with its word now."""
        for cfg, word in self._contact_words():
            gb = cfg.gb
            if (gb.system_type, gb.system_address, gb.zone, gb.position) == place:
                return ComponentNow(gb.component_type, word["status"], cfg.name, None)
        return None

    def _device_component(self, place: Place) -> ComponentNow | None:
        """A device's own component (not one of its points): faulty while it is lost."""
        for device_id, mapped in self._gb.devices.items():
            own = mapped.device_place
            dev = self._devices.get(device_id)
            if own is None or dev is None:
                continue
            sys_type, comp_type, zone, pos = own
            if (sys_type, mapped.sys_addr, zone, pos) == place:
                status = int(ComponentStatus.NORMAL)
                if dev.lost:
                    status |= int(ComponentStatus.FAULT)
                return ComponentNow(comp_type, status, dev.cfg.name, None)
        return None

    def uitd_status(self) -> int:
        """Normal, plus fire while any mapped point or GPIO contact is in fire (a contact's
        [inputs.gb] word with the fire bit, the manual call point pressed, a fire contact
        in alarm), fault while a device is lost
        or the gateway has a fault of its own. (Link fault is the uplink's: a read arrives
        over a working link. The gateway has no power sensing: bits 3-4 stay clear.)"""
        value = int(UitdStatus.NORMAL)
        for device_id, mapped in self._gb.devices.items():
            dev = self._devices.get(device_id)
            if dev is None:
                continue
            if dev.lost:
                value |= int(UitdStatus.FAULT)
            for pid, spec in mapped.specs.items():
                gb = spec.gb
                if gb is not None and mapped.status(dev.points, pid) & int(ComponentStatus.FIRE):
                    value |= int(UitdStatus.FIRE)
        if any(_contact_fire(cfg, active) for cfg, active in self._contacts()):
            value |= int(UitdStatus.FIRE)
        if self._uitd_faults():
            value |= int(UitdStatus.FAULT)
        return value


def _contact_fire(cfg: Any, active: bool) -> bool:
    """Is this GPIO contact, at this level, a fire the UITD state must show?"""
    if not active:
        return False
    word = contact_gb(cfg, active)
    if word is not None and word["tf"] == 24:
        return True  # the manual call point pressed: the UITD's manual alarm
    if word is not None and word["tf"] == 2:
        return bool(word["status"] & int(ComponentStatus.FIRE))
    category = str(getattr(cfg.category, "value", cfg.category))
    kind = str(getattr(cfg.kind, "value", cfg.kind))
    return category in ("fire", "manual") and kind == "alarm"
