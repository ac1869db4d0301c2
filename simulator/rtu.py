"""Modbus as the slave side sees it: CRC16, RTU/MBAP framing and PDU execution.

Pure functions of bytes plus one protocol (`RegisterBank`) for the data a
slave serves, so every framing rule is testable with literal hex. Transports
(simulator/wire.py for RTU lines, simulator/tcp.py for Modbus TCP) wrap it.
It must never do I/O and never raise on bad input: a request it cannot make
sense of yields an exception response or `None` (stay silent, as slaves do).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from drivers.types import Table

# Modbus exception codes a slave answers with.
ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4

READ_TABLES = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}
MAX_READ = {Table.COIL: 2000, Table.DISCRETE: 2000, Table.HOLDING: 125, Table.INPUT: 125}


class RegisterBank(Protocol):
    """What a slave serves. Both methods raise `BankError(code)` for a refused access."""

    def read(self, table: Table, address: int, count: int) -> list[int]: ...

    def write(self, table: Table, address: int, values: list[int]) -> None: ...


class BankError(Exception):
    """A register access the bank refuses; `code` is the Modbus exception code to answer."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"exception {code}")


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """Append the CRC, low byte first as it goes on the wire."""
    return frame + struct.pack("<H", crc16(frame))


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == struct.unpack("<H", frame[-2:])[0]


def rtu_request_length(buf: bytes) -> int | None:
    """Length of the request frame at the start of `buf`, or None if not yet knowable.

    Returns 0 for a function code whose length we cannot know (the caller then
    ends the frame at the inter-frame silence instead).
    """
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    return 0


def pack_bits(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> list[int]:
    return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]


def exception_pdu(fc: int, code: int) -> bytes:
    return bytes([(fc | 0x80) & 0xFF, code])


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request PDU (function code, start address, count or written values)."""

    fc: int
    address: int = 0
    count: int = 0
    values: tuple[int, ...] = ()


def _read_pdu(bank: RegisterBank, fc: int, pdu: bytes) -> bytes:
    address, count = struct.unpack(">HH", pdu[1:5])
    table = READ_TABLES[fc]
    if not 1 <= count <= MAX_READ[table]:
        return exception_pdu(fc, ILLEGAL_VALUE)
    values = bank.read(table, address, count)
    data = pack_bits(values) if table.is_bits else struct.pack(f">{count}H", *values)
    return bytes([fc, len(data)]) + data


def _write_single_pdu(bank: RegisterBank, fc: int, pdu: bytes) -> bytes:
    address, raw = struct.unpack(">HH", pdu[1:5])
    if fc == 5:
        if raw not in (0x0000, 0xFF00):
            return exception_pdu(fc, ILLEGAL_VALUE)
        bank.write(Table.COIL, address, [1 if raw else 0])
    else:
        bank.write(Table.HOLDING, address, [raw])
    return pdu[:5]


def _write_multiple_pdu(bank: RegisterBank, fc: int, pdu: bytes) -> bytes:
    address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
    data = pdu[6:]
    if fc == 15:
        if not 1 <= count <= 1968 or nbytes != (count + 7) // 8 or len(data) != nbytes:
            return exception_pdu(fc, ILLEGAL_VALUE)
        bank.write(Table.COIL, address, unpack_bits(data, count))
    else:
        if not 1 <= count <= 123 or nbytes != 2 * count or len(data) != nbytes:
            return exception_pdu(fc, ILLEGAL_VALUE)
        bank.write(Table.HOLDING, address, list(struct.unpack(f">{count}H", data)))
    return pdu[:5]


_MIN_PDU = {1: 5, 2: 5, 3: 5, 4: 5, 5: 5, 6: 5, 15: 6, 16: 6}


def execute(bank: RegisterBank, pdu: bytes) -> bytes:
    """Answer one request PDU: the response PDU or an exception PDU. Never raises."""
    fc = pdu[0]
    if fc not in _MIN_PDU:
        return exception_pdu(fc, ILLEGAL_FUNCTION)
    if len(pdu) < _MIN_PDU[fc]:
        return exception_pdu(fc, ILLEGAL_VALUE)
    try:
        if fc in READ_TABLES:
            return _read_pdu(bank, fc, pdu)
        if fc in (5, 6):
            return _write_single_pdu(bank, fc, pdu)
        return _write_multiple_pdu(bank, fc, pdu)
    except BankError as exc:
        return exception_pdu(fc, exc.code)


def parse_mbap(header: bytes) -> tuple[int, int, int, int]:
    """(transaction id, protocol id, length, unit id) from a 7-byte MBAP header."""
    tid, pid, length, unit = struct.unpack(">HHHB", header)
    return tid, pid, length, unit


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
