"""Application data units: typeflag (1) + object count (1) + objects, as typed dataclasses.

One frozen dataclass per typeflag, each one information object of that type, fields in wire
order (little-endian integers; timestamps are codec.GbTime). `decode_adu` turns an ADU into an
`Adu` of those objects, or a `RawAdu` for what it does not know (user-defined typeflags
128-254, reserved ones, the 1-byte handshake some devices send); a known typeflag with a
wrong layout is an AduError. `Adu.encode` checks the per-type object limit and the 1024-byte
ADU; `pack` batches objects into as few ADUs as those limits allow, keeping their order.

Descriptions are GB18030 (built into Python): fixed 31-byte fields padded with NULs and cut on
a character boundary, never half a character; decoding cuts at the first NUL (devices leave
garbage after it) and drops the trailing spaces some pad with.

Where the public sources disagree, decoding accepts every form seen and encoding writes the
one docs/gb26875.md names: clock sync (90) with or without a reserved byte before its time,
or with no time at all; a reserved byte present or missing in 81/85/86/88/89/91.

This module must never do I/O; it raises only CodecError (AduError) for bad input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, Self

from agent.gb26875.codec import MAX_ADU, CodecError, GbTime

DESCRIPTION_SIZE = 31
USER_DEFINED = range(128, 255)  # typeflags 128-254, both directions, passed through raw


class AduError(CodecError):
    """An ADU of a known typeflag whose layout is wrong (too short, bytes left over...)."""


# --- GB18030 text ----------------------------------------------------------------------------


def fit_gb18030(text: str, limit: int) -> bytes:
    """`text` in GB18030, at most `limit` bytes, cut before the first character that would not
    fit whole. Text after a NUL is dropped (a decoder would stop there anyway)."""
    text = text.split("\x00", 1)[0]
    data = text.encode("gb18030", errors="replace")
    if len(data) <= limit:
        return data
    out = bytearray()
    for char in text:
        encoded = char.encode("gb18030", errors="replace")
        if len(out) + len(encoded) > limit:
            break
        out += encoded
    return bytes(out)


def decode_gb18030(data: bytes) -> str:
    """Text up to the first NUL, trailing spaces dropped; undecodable bytes become U+FFFD."""
    return data.split(b"\x00", 1)[0].decode("gb18030", errors="replace").rstrip(" ")


def encode_description(text: str) -> bytes:
    """The fixed 31-byte description field."""
    return fit_gb18030(text, DESCRIPTION_SIZE).ljust(DESCRIPTION_SIZE, b"\x00")


# --- component address -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComponentAddress:
    """The 4-byte component address: zone (区号) then position (位号), each little-endian 16-bit,
    as the standard's description lays it out ("2号10区" = 0A 00 02 00). `u32` is the same four
    bytes read as one little-endian number, the way the Go codec shows them."""

    zone: int
    position: int

    @classmethod
    def from_u32(cls, value: int) -> ComponentAddress:
        if not 0 <= value <= 0xFFFF_FFFF:
            raise CodecError(f"component address {value} does not fit in four bytes")
        return cls(value & 0xFFFF, value >> 16)

    @property
    def u32(self) -> int:
        return self.zone | self.position << 16

    def __str__(self) -> str:
        return f"{self.zone}-{self.position}"


# --- field codecs ----------------------------------------------------------------------------


class _Field(Protocol):
    def encode(self, value: Any) -> bytes: ...
    def decode(self, data: bytes, at: int) -> tuple[Any, int]: ...


def _take(data: bytes, at: int, size: int) -> bytes:
    if at + size > len(data):
        raise AduError(f"object cut short: needs {size} bytes at offset {at}, has {len(data) - at}")
    return data[at : at + size]


@dataclass(frozen=True)
class _Int:
    size: int
    signed: bool = False

    def encode(self, value: int) -> bytes:
        try:
            return int(value).to_bytes(self.size, "little", signed=self.signed)
        except OverflowError:
            raise CodecError(f"{value} does not fit in {self.size} byte(s)") from None

    def decode(self, data: bytes, at: int) -> tuple[int, int]:
        raw = _take(data, at, self.size)
        return int.from_bytes(raw, "little", signed=self.signed), at + self.size


class _OptionalByte(_Int):
    """A reserved byte that some senders leave out when it is the last of the ADU."""

    def decode(self, data: bytes, at: int) -> tuple[int, int]:
        return (0, at) if at == len(data) else super().decode(data, at)


class _Time:
    def encode(self, value: GbTime) -> bytes:
        return value.encode()

    def decode(self, data: bytes, at: int) -> tuple[GbTime, int]:
        return GbTime.decode(_take(data, at, GbTime.SIZE)), at + GbTime.SIZE


class _Address:
    def encode(self, value: ComponentAddress) -> bytes:
        return _U16.encode(value.zone) + _U16.encode(value.position)

    def decode(self, data: bytes, at: int) -> tuple[ComponentAddress, int]:
        zone, at = _U16.decode(data, at)
        position, at = _U16.decode(data, at)
        return ComponentAddress(zone, position), at


class _Description:
    def encode(self, value: str) -> bytes:
        return encode_description(value)

    def decode(self, data: bytes, at: int) -> tuple[str, int]:
        return decode_gb18030(_take(data, at, DESCRIPTION_SIZE)), at + DESCRIPTION_SIZE


class _Text:
    """Length byte L (0-255) + L bytes of GB18030 (system and UITD configuration)."""

    def encode(self, value: str) -> bytes:
        data = fit_gb18030(value, 255)
        return bytes((len(data),)) + data

    def decode(self, data: bytes, at: int) -> tuple[str, int]:
        (length,) = _take(data, at, 1)
        return decode_gb18030(_take(data, at + 1, length)), at + 1 + length


_U8, _U16, _S16, _RESERVED = _Int(1), _Int(2), _Int(2, signed=True), _OptionalByte(1)
_TIME, _ADDR, _DESC, _TEXT = _Time(), _Address(), _Description(), _Text()


# --- objects ---------------------------------------------------------------------------------

OBJECT_TYPES: dict[int, type[AduObject]] = {}


class AduObject:
    """One information object. Subclasses are frozen dataclasses declared with their
    typeflag, the standard's object limit per ADU and the codecs of their fields in order:

        @dataclass(frozen=True, slots=True)
        class UitdState(AduObject, typeflag=21, max_count=1, codecs=(_U8, _TIME)): ...
    """

    __slots__ = ()
    TYPEFLAG: ClassVar[int]
    MAX_COUNT: ClassVar[int]
    _FIELDS: ClassVar[tuple[_Field, ...]]

    def __init_subclass__(
        cls, typeflag: int | None = None, max_count: int = 1, codecs: tuple[_Field, ...] = ()
    ) -> None:
        super().__init_subclass__()
        if typeflag is not None:
            cls.TYPEFLAG, cls.MAX_COUNT, cls._FIELDS = typeflag, max_count, codecs
        # dataclass(slots=True) makes a copy of the class, attributes included: register that
        OBJECT_TYPES[cls.TYPEFLAG] = cls

    def encode(self) -> bytes:
        names = (f.name for f in fields(self))  # type: ignore[arg-type]
        return b"".join(
            c.encode(getattr(self, n)) for c, n in zip(self._FIELDS, names, strict=True)
        )

    @classmethod
    def decode_from(cls, data: bytes, at: int) -> tuple[Self, int]:
        """One object starting at `at`; the object and the offset after it."""
        values = []
        for codec in cls._FIELDS:
            value, at = codec.decode(data, at)
            values.append(value)
        return cls(*values), at


# Upstream (UITD -> centre), 8.3.1. Counts per ADU from the standard.


@dataclass(frozen=True, slots=True)
class SystemState(AduObject, typeflag=1, max_count=102, codecs=(_U8, _U8, _U16, _TIME)):
    system_type: int
    system_address: int
    status: int  # tables.SystemStatus bits
    time: GbTime


@dataclass(frozen=True, slots=True)
class ComponentState(
    AduObject, typeflag=2, max_count=22, codecs=(_U8, _U8, _U8, _ADDR, _U16, _DESC, _TIME)
):
    system_type: int
    system_address: int
    component_type: int
    component_address: ComponentAddress
    status: int  # tables.ComponentStatus bits
    description: str
    time: GbTime


@dataclass(frozen=True, slots=True)
class ComponentAnalog(
    AduObject, typeflag=3, max_count=63, codecs=(_U8, _U8, _U8, _ADDR, _U8, _S16, _TIME)
):
    system_type: int
    system_address: int
    component_type: int
    component_address: ComponentAddress
    analog_type: int  # tables.ANALOG_TYPES; 128-255 user-defined
    value: int  # signed 16-bit count of the type's step
    time: GbTime


@dataclass(frozen=True, slots=True)
class SystemOperation(AduObject, typeflag=4, max_count=102, codecs=(_U8, _U8, _U8, _U8, _TIME)):
    system_type: int
    system_address: int
    flags: int  # tables.SystemOperationFlags
    operator: int
    time: GbTime


@dataclass(frozen=True, slots=True)
class SystemVersion(AduObject, typeflag=5, max_count=1, codecs=(_U8, _U8, _U8, _U8)):
    system_type: int
    system_address: int
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class SystemConfig(AduObject, typeflag=6, max_count=3, codecs=(_U8, _U8, _TEXT)):
    system_type: int
    system_address: int
    description: str


@dataclass(frozen=True, slots=True)
class ComponentConfig(AduObject, typeflag=7, max_count=26, codecs=(_U8, _U8, _U8, _ADDR, _DESC)):
    system_type: int
    system_address: int
    component_type: int
    component_address: ComponentAddress
    description: str


@dataclass(frozen=True, slots=True)
class SystemClock(AduObject, typeflag=8, max_count=1, codecs=(_U8, _U8, _TIME)):
    system_type: int
    system_address: int
    time: GbTime


@dataclass(frozen=True, slots=True)
class UitdState(AduObject, typeflag=21, max_count=1, codecs=(_U8, _TIME)):
    status: int  # tables.UitdStatus bits
    time: GbTime


@dataclass(frozen=True, slots=True)
class UitdOperation(AduObject, typeflag=24, max_count=127, codecs=(_U8, _U8, _TIME)):
    flags: int  # tables.UitdOperationFlags (bit 5: duty-check answer)
    operator: int
    time: GbTime


@dataclass(frozen=True, slots=True)
class UitdVersion(AduObject, typeflag=25, max_count=1, codecs=(_U8, _U8)):
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class UitdConfig(AduObject, typeflag=26, max_count=1, codecs=(_TEXT,)):
    description: str


@dataclass(frozen=True, slots=True)
class UitdClock(AduObject, typeflag=28, max_count=1, codecs=(_TIME,)):
    time: GbTime


# Downstream (centre -> UITD), 8.3.2: reads (command 4) and control (command 1).


@dataclass(frozen=True, slots=True)
class ReadSystemState(AduObject, typeflag=61, max_count=102, codecs=(_U8, _U8)):
    system_type: int
    system_address: int


@dataclass(frozen=True, slots=True)
class ReadComponentState(AduObject, typeflag=62, max_count=22, codecs=(_U8, _U8, _ADDR)):
    system_type: int
    system_address: int
    component_address: ComponentAddress


@dataclass(frozen=True, slots=True)
class ReadComponentAnalog(AduObject, typeflag=63, max_count=63, codecs=(_U8, _U8, _ADDR)):
    system_type: int
    system_address: int
    component_address: ComponentAddress


@dataclass(frozen=True, slots=True)
class ReadSystemOperations(AduObject, typeflag=64, max_count=1, codecs=(_U8, _U8, _U8, _TIME)):
    system_type: int
    system_address: int
    records: int  # at most 102
    start: GbTime


@dataclass(frozen=True, slots=True)
class ReadSystemVersion(AduObject, typeflag=65, max_count=1, codecs=(_U8, _U8)):
    system_type: int
    system_address: int


@dataclass(frozen=True, slots=True)
class ReadSystemConfig(AduObject, typeflag=66, max_count=3, codecs=(_U8, _U8)):
    system_type: int
    system_address: int


@dataclass(frozen=True, slots=True)
class ReadComponentConfig(AduObject, typeflag=67, max_count=26, codecs=(_U8, _U8, _ADDR)):
    system_type: int
    system_address: int
    component_address: ComponentAddress


@dataclass(frozen=True, slots=True)
class ReadSystemClock(AduObject, typeflag=68, max_count=1, codecs=(_U8, _U8)):
    system_type: int
    system_address: int


@dataclass(frozen=True, slots=True)
class ReadUitdState(AduObject, typeflag=81, max_count=1, codecs=(_RESERVED,)):
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class ReadUitdOperations(AduObject, typeflag=84, max_count=1, codecs=(_U8, _TIME)):
    records: int  # at most 102
    start: GbTime


@dataclass(frozen=True, slots=True)
class ReadUitdVersion(AduObject, typeflag=85, max_count=1, codecs=(_RESERVED,)):
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class ReadUitdConfig(AduObject, typeflag=86, max_count=1, codecs=(_RESERVED,)):
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class ReadUitdClock(AduObject, typeflag=88, max_count=1, codecs=(_RESERVED,)):
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class InitialiseUitd(AduObject, typeflag=89, max_count=1, codecs=(_RESERVED,)):
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class DutyCheck(AduObject, typeflag=91, max_count=1, codecs=(_RESERVED,)):
    """The description calls the byte reserved (0); its example and the Go codec carry the
    answer timeout in minutes. 0 means the standard's 10 minutes (`timeout_min`)."""

    answer_minutes: int = 0

    @property
    def timeout_min(self) -> int:
        return self.answer_minutes or 10


@dataclass(frozen=True, slots=True)
class SyncClock(AduObject, typeflag=90, max_count=1, codecs=(_TIME,)):
    """Set the UITD clock to `time`. Encoded as the time right after the count (the
    description's example, the Go codec); decoded also with a reserved byte before the time
    (the Rust codec) or with the reserved byte alone (the description's table: time None)."""

    time: GbTime | None

    def encode(self) -> bytes:
        return b"\x00" if self.time is None else self.time.encode()

    @classmethod
    def decode_from(cls, data: bytes, at: int) -> tuple[Self, int]:
        left = len(data) - at
        if left in (0, 1):
            return cls(None), len(data)
        if left == GbTime.SIZE + 1:
            at += 1
        time, at = _TIME.decode(data, at)
        return cls(time), at


# --- ADUs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Adu:
    """A typed ADU: `objects` all of the class registered for `typeflag`."""

    typeflag: int
    objects: tuple[AduObject, ...]

    @classmethod
    def of(cls, *objects: AduObject) -> Adu:
        if not objects:
            raise CodecError("an ADU of no objects has no typeflag; give one to Adu() itself")
        return cls(objects[0].TYPEFLAG, tuple(objects))

    def encode(self) -> bytes:
        kind = OBJECT_TYPES.get(self.typeflag)
        if kind is None:
            raise CodecError(f"typeflag {self.typeflag} has no typed objects; use RawAdu")
        wrong = [type(o).__name__ for o in self.objects if not isinstance(o, kind)]
        if wrong:
            raise CodecError(f"typeflag {self.typeflag} carries {kind.__name__}, not {wrong}")
        if len(self.objects) > kind.MAX_COUNT:
            raise CodecError(
                f"typeflag {self.typeflag} allows {kind.MAX_COUNT} objects, not {len(self.objects)}"
            )
        data = bytes((self.typeflag, len(self.objects))) + b"".join(
            o.encode() for o in self.objects
        )
        if len(data) > MAX_ADU:
            raise CodecError(f"ADU of {len(data)} bytes is over the limit of {MAX_ADU}")
        return data


@dataclass(frozen=True, slots=True)
class RawAdu:
    """An ADU passed through as bytes: user-defined or reserved typeflags, odd handshakes."""

    data: bytes

    @property
    def typeflag(self) -> int | None:
        return self.data[0] if self.data else None

    def encode(self) -> bytes:
        if len(self.data) > MAX_ADU:
            raise CodecError(f"ADU of {len(self.data)} bytes is over the limit of {MAX_ADU}")
        return self.data


def decode_adu(data: bytes) -> Adu | RawAdu:
    """The typed ADU, a RawAdu for typeflags without objects here (and ADUs under 2 bytes), or
    AduError when a known typeflag's objects do not fill the ADU exactly."""
    if len(data) < 2 or data[0] not in OBJECT_TYPES:
        return RawAdu(bytes(data))
    kind, count, at = OBJECT_TYPES[data[0]], data[1], 2
    objects = []
    for _ in range(count):
        obj, after = kind.decode_from(data, at)
        if after == at and count > 1:  # a reserved byte left out: only alone is that clear
            raise AduError(f"typeflag {data[0]}: {count} objects in {len(data) - 2} byte(s)")
        objects.append(obj)
        at = after
    if at != len(data):
        raise AduError(f"typeflag {data[0]}: {len(data) - at} bytes left after {count} object(s)")
    return Adu(data[0], tuple(objects))


def pack(objects: Iterable[AduObject]) -> list[Adu]:
    """Batch objects into as few ADUs as the limits allow without reordering them: a new ADU
    starts when the typeflag changes, the type's object limit is reached or 1024 bytes would
    be passed. The ADUs partition the input in order, so `len(adu.objects)` says how many of
    the caller's items each one carries."""
    out: list[Adu] = []
    run: list[AduObject] = []
    size = 2
    for obj in objects:
        obj_size = len(obj.encode())
        if run and (
            obj.TYPEFLAG != run[0].TYPEFLAG
            or len(run) == obj.MAX_COUNT
            or size + obj_size > MAX_ADU
        ):
            out.append(Adu(run[0].TYPEFLAG, tuple(run)))
            run, size = [], 2
        run.append(obj)
        size += obj_size
    if run:
        out.append(Adu(run[0].TYPEFLAG, tuple(run)))
    return out
