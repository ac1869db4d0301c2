"""Plain values passed between the field-side layers (plan -> line -> codec), and the
Modbus limits and RTU character timing every layer must agree on.

It must never import anything heavier than the standard library: agent/config.py
and the simulator import it without pulling in pymodbus or pyserial.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_REGISTERS = 125  # Modbus limit for FC03/FC04 in one request
MAX_BITS = 2000  # Modbus limit for FC01/FC02 in one request
MIN_GAP_MS = 1.75  # the spec's fixed inter-frame gap above 19200 baud


class Table(enum.StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"  # FC01, read/write bits
    DISCRETE = "discrete"  # FC02, read-only bits
    HOLDING = "holding"  # FC03, read/write 16-bit registers
    INPUT = "input"  # FC04, read-only 16-bit registers

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


class PollClass(enum.StrEnum):
    FAST = "fast"  # alarm and status points
    SLOW = "slow"  # analog values


class PointType(enum.StrEnum):
    """How the raw register(s) or bit of a point are read."""

    BIT = "bit"  # one bit: a coil/discrete input, or bit `bit` of a register
    U8LO = "u8lo"  # low byte of a register (status codes of many panels)
    U8HI = "u8hi"  # high byte of a register
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"  # two registers, see word_order
    S32 = "s32"
    F32 = "f32"  # IEEE 754 single, two registers

    @property
    def register_count(self) -> int:
        return 2 if self in (PointType.U32, PointType.S32, PointType.F32) else 1

    @property
    def is_integer(self) -> bool:
        return self not in (PointType.BIT, PointType.F32)


class WordOrder(enum.StrEnum):
    BIG = "big"  # high word at the lower address (Modbus convention)
    LITTLE = "little"  # low word first ("word swapped"), seen on many meters


class Direction(enum.StrEnum):
    ABOVE = "above"  # trips when value >= threshold
    BELOW = "below"  # trips when value <= threshold


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers (or bits) from `address` of `table` on `unit`."""

    unit: int
    table: Table
    address: int
    count: int

    def covers(self, table: Table, address: int, count: int = 1) -> bool:
        return (
            table is self.table
            and self.address <= address
            and address + count <= self.address + self.count
        )


@dataclass(frozen=True, slots=True)
class Block:
    """The answer to a ReadRequest: one int per register (0..65535) or per bit (0/1)."""

    request: ReadRequest
    values: tuple[int, ...]

    def at(self, address: int) -> int:
        return self.values[address - self.request.address]

    def covers(self, address: int, count: int = 1) -> bool:
        start = self.request.address
        return start <= address and address + count <= start + len(self.values)


# --- RTU character timing ----------------------------------------------------------------


def bits_per_char(bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Start bit + data bits + parity bit (if any) + stop bits."""
    return 1 + bytesize + (0 if parity.upper() == "N" else 1) + stopbits


def char_time_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """Seconds one character takes on the wire."""
    return bits_per_char(bytesize, parity, stopbits) / baudrate


def inter_frame_gap_ms(
    baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1
) -> float:
    """Modbus RTU's 3.5 character times, and never below 1.75 ms (the spec's
    fixed value above 19200 baud)."""
    return max(MIN_GAP_MS, 3.5 * char_time_s(baudrate, bytesize, parity, stopbits) * 1000.0)
