"""Plain values passed between the field-side layers (plan -> line -> codec)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Table(enum.StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"          # FC01, read/write bits
    DISCRETE = "discrete"  # FC02, read-only bits
    HOLDING = "holding"    # FC03, read/write 16-bit registers
    INPUT = "input"        # FC04, read-only 16-bit registers

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


class PollClass(enum.StrEnum):
    FAST = "fast"  # alarm and status points
    SLOW = "slow"  # analog values


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers (or bits) from `address` of `table` on `unit`."""

    unit: int
    table: Table
    address: int
    count: int


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
