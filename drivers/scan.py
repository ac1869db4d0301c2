"""`alarmgw scan`: find the Modbus units on an RS-485 line and guess their profiles.

An offline commissioning tool. For each baud rate it opens the serial port
itself (through drivers/modbus.py's RtuLink, so framing and CRC are the
agent's own), probes each unit id with a one-register read (FC03 address 0,
then FC04 if FC03 got no answer at all: a Modbus exception answer proves the
unit exists just as well as data), then reads the registers each known
profile defines and checks that the values decode plausibly (codes in the
state table, no undefined status bits set, analogs in range).

It must never run while the agent owns the line: the port is opened
exclusively, and a port another process holds raises `PortBusy`, never a
probe that interleaves with the agent's polls. It never writes to a device.
"""

from __future__ import annotations

import asyncio
import errno
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from core.errors import (
    AlarmgwError,
    CrcError,
    Disconnected,
    FieldError,
    FieldTimeout,
    Garbage,
    ModbusException,
    WrongUnit,
)
from drivers import codec
from drivers.modbus import RtuLink
from drivers.modbus_frames import function_code
from drivers.plan import plan_polls
from drivers.profile import PointSpec, PointType, Profile
from drivers.types import Block, ReadRequest, Table, inter_frame_gap_ms

PROBE_TABLES = (Table.HOLDING, Table.INPUT)  # FC03 first, then FC04
_BUSY_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EWOULDBLOCK}
_MAX_GAP = 8
ANALOG_MARGIN = 0.25  # a 4-20 mA value may overshoot its range by a quarter of the span

Progress = Callable[[int, int, int], None]  # (baudrate, unit, units in this pass)


class PortBusy(AlarmgwError):
    """Another process (normally the running agent) holds the serial port."""


class PortUnavailable(AlarmgwError):
    """The serial port cannot be opened (missing, no permission, bad settings)."""


@dataclass(frozen=True, slots=True)
class ScanSettings:
    port: str
    baudrates: tuple[int, ...] = (9600,)
    units: tuple[int, ...] = tuple(range(1, 248))
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 0.1


@dataclass(frozen=True, slots=True)
class ProfileMatch:
    """How well one profile explains what a unit answered."""

    profile: str
    registers_read: int  # registers/bits the profile's reads returned (0 if any read failed)
    points: int
    plausible: int
    problems: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        return self.registers_read > 0 and self.plausible == self.points

    @property
    def rank(self) -> tuple[bool, int, float]:
        """Full matches first; then the profile that explains more registers."""
        share = self.plausible / self.points if self.points else 0.0
        return (self.matches, self.registers_read, share)


@dataclass(frozen=True, slots=True)
class FoundUnit:
    unit: int
    baudrate: int
    evidence: str  # "FC03 data", "FC04 exception 2"...
    candidates: tuple[ProfileMatch, ...] = field(default=())

    @property
    def best(self) -> ProfileMatch | None:
        """The best full match, or None ("unknown")."""
        ranked = sorted(self.candidates, key=lambda m: m.rank, reverse=True)
        return ranked[0] if ranked and ranked[0].matches else None


@dataclass(frozen=True, slots=True)
class Noise:
    """Something answered in a unit's slot but not as a valid frame: wrong baud, bad wiring."""

    unit: int
    baudrate: int
    reason: str


@dataclass
class ScanReport:
    found: list[FoundUnit] = field(default_factory=list)
    noise: list[Noise] = field(default_factory=list)


# --- plausibility of decoded values --------------------------------------------------------


def _analog_ok(spec: PointSpec, value: float) -> str | None:
    if not math.isfinite(value):
        return "not a finite number"
    if spec.eng_range is None:
        return None
    if (
        spec.fault_below is not None
        and codec.engineering_to_raw_units(spec, value) < spec.fault_below
    ):
        return None  # a wire break reads as a fault, and still proves the register map
    lo, hi = spec.eng_range
    margin = (hi - lo) * ANALOG_MARGIN
    if not lo - margin <= value <= hi + margin:
        return f"{value:g} outside {lo:g}..{hi:g}"
    return None


def point_problem(spec: PointSpec, blocks: list[Block]) -> str | None:
    """Why the decoded value of `spec` is implausible for this profile, or None."""
    try:
        value = codec.decode(spec, blocks)
    except FieldError as exc:
        return str(exc)
    if isinstance(value, bool):
        return None
    if spec.states is not None:
        return None if value in spec.states else f"code {value} not in its state table"
    return _analog_ok(spec, float(value))


def undefined_bits(profile: Profile, blocks: list[Block]) -> list[str]:
    """Status registers (only bit points defined in them) with bits set that the profile
    does not define: a telltale sign that the register means something else here."""
    defined: dict[tuple[Table, int], int] = {}
    mixed: set[tuple[Table, int]] = set()
    for spec in profile.points.values():
        key = (spec.table, spec.address)
        if spec.table.is_bits:
            continue
        if spec.type is PointType.BIT and spec.bit is not None:
            defined[key] = defined.get(key, 0) | (1 << spec.bit)
        else:
            mixed.update((spec.table, spec.address + i) for i in range(spec.register_count))
    out = []
    for (table, address), mask in sorted(defined.items()):
        if (table, address) in mixed:
            continue
        for block in blocks:
            if block.request.table is table and block.covers(address):
                extra = block.at(address) & ~mask
                if extra:
                    out.append(f"{table.value} {address}: undefined bits {extra:#06x}")
    return out


def judge(profile: Profile, blocks: list[Block]) -> ProfileMatch:
    """Score a profile against the blocks its own reads returned."""
    found = [
        f"{spec.id}: {problem}"
        for spec in profile.points.values()
        if (problem := point_problem(spec, blocks)) is not None
    ]
    found += undefined_bits(profile, blocks)
    points = len(profile.points)
    implausible = min(points, len(found))
    return ProfileMatch(
        profile=profile.id,
        registers_read=sum(len(b.values) for b in blocks),
        points=points,
        plausible=points - implausible,
        problems=tuple(found),
    )


def profile_reads(profile: Profile, unit: int) -> list[ReadRequest]:
    return [req for requests in plan_polls(profile, unit, _MAX_GAP).values() for req in requests]


# --- the bus -----------------------------------------------------------------------------


class _Bus:
    """One baud rate's pass over the port, paced by the inter-frame gap."""

    def __init__(self, settings: ScanSettings, baudrate: int) -> None:
        self.settings = settings
        self.baudrate = baudrate
        self.link = RtuLink(
            settings.port,
            baudrate=baudrate,
            parity=settings.parity,
            stopbits=settings.stopbits,
            bytesize=settings.bytesize,
        )
        gap_ms = inter_frame_gap_ms(baudrate, settings.bytesize, settings.parity, settings.stopbits)
        self.gap_s = gap_ms / 1000

    async def open(self) -> None:
        try:
            await self.link.open()
        except Disconnected as exc:
            cause = exc.__cause__
            if getattr(cause, "errno", None) in _BUSY_ERRNOS:
                raise PortBusy(f"{self.settings.port} is held by another process") from exc
            raise PortUnavailable(str(exc)) from exc

    async def read(self, req: ReadRequest, timeout_s: float) -> Block:
        try:
            return await self.link.read(req, timeout_s)
        finally:
            await asyncio.sleep(self.gap_s)  # the line must be quiet before the next frame

    async def probe(self, unit: int) -> str | Noise | None:
        """Evidence that `unit` exists, Noise for a garbled answer, or None for silence."""
        noise: Noise | None = None
        for table in PROBE_TABLES:
            fc = function_code(table)
            try:
                await self.read(ReadRequest(unit, table, 0, 1), self.settings.timeout_s)
            except ModbusException as exc:
                return f"FC{fc:02d} exception {exc.code}"
            except FieldTimeout:
                continue
            except (CrcError, Garbage, WrongUnit, FieldError) as exc:
                noise = Noise(unit, self.baudrate, f"FC{fc:02d} {exc.reason}: {exc}")
                continue
            return f"FC{fc:02d} data"
        return noise

    async def match(self, unit: int, profiles: Iterable[Profile]) -> tuple[ProfileMatch, ...]:
        out = []
        for profile in profiles:
            blocks: list[Block] = []
            failure = ""
            for req in profile_reads(profile, unit):
                try:
                    blocks.append(await self.read(req, max(self.settings.timeout_s, 0.2)))
                except FieldError as exc:
                    failure = f"{req.table.value} {req.address}+{req.count}: {exc.reason} {exc}"
                    break
            if failure:
                out.append(ProfileMatch(profile.id, 0, len(profile.points), 0, (failure,)))
            else:
                out.append(judge(profile, blocks))
        return tuple(out)


async def scan_async(
    settings: ScanSettings, profiles: Mapping[str, Profile], progress: Progress | None = None
) -> ScanReport:
    """Scan every baud rate and unit; raises PortBusy or PortUnavailable before any probe."""
    report = ScanReport()
    for baudrate in settings.baudrates:
        bus = _Bus(settings, baudrate)
        await bus.open()
        try:
            for unit in settings.units:
                if progress is not None:
                    progress(baudrate, unit, len(settings.units))
                evidence = await bus.probe(unit)
                if isinstance(evidence, Noise):
                    report.noise.append(evidence)
                elif evidence is not None:
                    matches = await bus.match(unit, profiles.values())
                    report.found.append(FoundUnit(unit, baudrate, evidence, matches))
        finally:
            await bus.link.close()
    return report


def scan(
    settings: ScanSettings, profiles: Mapping[str, Profile], progress: Progress | None = None
) -> ScanReport:
    return asyncio.run(scan_async(settings, profiles, progress))


def parse_units(text: str) -> tuple[int, ...]:
    """'1-247', '1,3,5-8' -> unit ids; ValueError for anything outside 1..247."""
    units: list[int] = []
    for part in text.split(","):
        lo_text, _, hi_text = part.strip().partition("-")
        lo = int(lo_text)
        hi = int(hi_text) if hi_text else lo
        if not 1 <= lo <= hi <= 247:
            raise ValueError(f"unit ids are 1..247, got {part.strip()!r}")
        units.extend(range(lo, hi + 1))
    return tuple(dict.fromkeys(units))


def parse_baudrates(text: str) -> tuple[int, ...]:
    rates = tuple(int(part) for part in text.split(",") if part.strip())
    if not rates or any(r not in _STANDARD_BAUDS for r in rates):
        raise ValueError(f"baud rates are among {sorted(_STANDARD_BAUDS)}, got {text!r}")
    return rates


_STANDARD_BAUDS = frozenset({1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200})
