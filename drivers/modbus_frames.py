"""Modbus frames as pure functions of bytes: request PDUs, RTU framing and CRC, and the
typed verdict on an answer. The only module that imports pymodbus.

pymodbus is used where it is solid — request/response PDU encoding and decoding
(`pymodbus.pdu`) and the RTU CRC (`FramerRTU.compute_CRC`); drivers/modbus.py says why
its clients and transaction layer are not. So pymodbus API churn (it renamed `slave=` to
`device_id=` in 3.10) touches this file only. Every function is tested with literal hex
(tests/test_modbus.py).

It must never touch a port, a socket or the clock: bytes in, bytes or a typed
`core.errors.FieldError` out.
"""

from __future__ import annotations

from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteSingleRegisterRequest,
)

from core.errors import (
    CrcError,
    Garbage,
    WrongLength,
    WrongUnit,
    modbus_exception,
)
from drivers.types import MAX_BITS, MAX_REGISTERS, Block, ReadRequest, Table

FC_WRITE_COIL = 5
FC_WRITE_REGISTER = 6
_READ_PDU = {
    Table.COIL: ReadCoilsRequest,
    Table.DISCRETE: ReadDiscreteInputsRequest,
    Table.HOLDING: ReadHoldingRegistersRequest,
    Table.INPUT: ReadInputRegistersRequest,
}
_DECODER = DecodePDU(is_server=False)


def function_code(table: Table) -> int:
    """The read function code for a table (FC01..FC04)."""
    return int(_READ_PDU[table].function_code)


def read_pdu(req: ReadRequest) -> bytes:
    """The request PDU (function code + data) for a read; ValueError on an impossible request."""
    limit = MAX_BITS if req.table.is_bits else MAX_REGISTERS
    if not 1 <= req.count <= limit or not 0 <= req.address <= 0xFFFF:
        raise ValueError(f"impossible read: {req}")
    pdu = _READ_PDU[req.table](address=req.address, count=req.count, dev_id=req.unit)
    return _pdu_bytes(pdu)


def write_register_pdu(address: int, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"register value out of range: {value}")
    return _pdu_bytes(WriteSingleRegisterRequest(address=address, registers=[value]))


def write_coil_pdu(address: int, value: bool) -> bytes:
    return _pdu_bytes(WriteSingleCoilRequest(address=address, bits=[value]))


def _pdu_bytes(pdu: ModbusPDU) -> bytes:
    return bytes([pdu.function_code]) + pdu.encode()


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """Unit id + PDU + CRC16 (low byte first on the wire)."""
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and rtu_frame(frame[0], frame[1:-2]) == frame


def _answer_length(buf: bytes, offset: int, fc: int) -> int | None:
    """Total RTU length of the answer starting at `offset`, or None if not known yet."""
    got_fc = buf[offset + 1]
    if got_fc == fc | 0x80:
        return 5
    if fc in (FC_WRITE_COIL, FC_WRITE_REGISTER):
        return 8
    if len(buf) < offset + 3:
        return None
    return 3 + buf[offset + 2] + 2


def expected_answer_length(pdu: bytes) -> int:
    """RTU bytes of the normal answer to a request PDU (unit + PDU + CRC).

    Reads answer unit, fc, byte count, data, CRC; single writes echo 8 bytes.
    An unknown function code gets the longest possible frame (never too short a wait).
    """
    fc = pdu[0]
    if fc in (FC_WRITE_COIL, FC_WRITE_REGISTER):
        return 8
    if len(pdu) >= 5 and fc in (1, 2, 3, 4):
        count = int.from_bytes(pdu[3:5], "big")
        data = (count + 7) // 8 if fc in (1, 2) else 2 * count
        return 5 + data
    return 256


def scan_rtu_answer(buf: bytes, unit: int, fc: int) -> bytes | None:
    """Find the answer to (unit, fc) in the bytes received so far.

    Returns the answer's PDU (function code + data, CRC stripped) once a
    complete CRC-valid frame from `unit` is there; None while more bytes may
    still complete it. Raises CrcError when the frame in the answer's place is
    complete but damaged, WrongUnit when a valid answer came from another unit.
    Noise before a valid frame is skipped (the CRC protects what we accept).
    """
    if len(buf) < 2:
        return None
    if buf[1] in (fc, fc | 0x80):
        length = _answer_length(buf, 0, fc)
        if length is None or len(buf) < length:
            return None
        frame = buf[:length]
        if not crc_ok(frame):
            raise CrcError(f"bad CRC in answer {frame.hex(' ')}")
        if frame[0] != unit:
            raise WrongUnit(f"answer from unit {frame[0]}, asked unit {unit}")
        return frame[1:-2]
    return _hunt_valid_frame(buf, unit, fc)


def _hunt_valid_frame(buf: bytes, unit: int, fc: int) -> bytes | None:
    for offset in range(1, len(buf) - 3):
        if buf[offset] != unit or buf[offset + 1] not in (fc, fc | 0x80):
            continue
        length = _answer_length(buf, offset, fc)
        if length is not None and len(buf) >= offset + length:
            frame = buf[offset : offset + length]
            if crc_ok(frame):
                return frame[1:-2]
    return None


def decode_read_answer(req: ReadRequest, pdu: bytes) -> Block:
    """Turn a read answer's PDU into a Block, or raise the typed error it deserves."""
    fc = function_code(req.table)
    _raise_if_exception(pdu, fc)
    want = (req.count + 7) // 8 if req.table.is_bits else 2 * req.count
    if len(pdu) < 2 or pdu[0] != fc:
        raise Garbage(f"unexpected answer {pdu.hex(' ')} to FC{fc:02d}")
    if pdu[1] != want or len(pdu) != 2 + want:
        raise WrongLength(f"answer has {pdu[1]} data bytes ({len(pdu) - 2} sent), expected {want}")
    decoded = _DECODER.decode(pdu)
    if decoded is None:
        raise Garbage(f"undecodable answer {pdu.hex(' ')}")
    if req.table.is_bits:
        values = tuple(int(bool(b)) for b in decoded.bits[: req.count])
    else:
        values = tuple(int(r) for r in decoded.registers)
    return Block(request=req, values=values)


def check_write_answer(request_pdu: bytes, pdu: bytes) -> None:
    """A single write is answered by an echo of the request; anything else is an error."""
    _raise_if_exception(pdu, request_pdu[0])
    if pdu != request_pdu:
        raise Garbage(f"write answer {pdu.hex(' ')} does not echo {request_pdu.hex(' ')}")


def _raise_if_exception(pdu: bytes, fc: int) -> None:
    if pdu and pdu[0] == fc | 0x80:
        if len(pdu) != 2:
            raise Garbage(f"malformed exception answer {pdu.hex(' ')}")
        answer = _DECODER.decode(pdu)
        code = answer.exception_code if isinstance(answer, ExceptionResponse) else pdu[1]
        raise modbus_exception(int(code))
