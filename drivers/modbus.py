"""Modbus RTU and TCP links: one request, one typed answer. No pymodbus client inside.

A `ModbusLink` sends one request and returns a `Block` or raises exactly one of
the `core.errors.FieldError` types: FieldTimeout, CrcError, ModbusException
(code), WrongLength, WrongUnit, Garbage or Disconnected. Nothing else escapes:
no pymodbus exception, no OSError, no bare Exception.

Why we own the transport and framing instead of using pymodbus's clients:
pymodbus 3.16's transaction layer (transaction/transaction.py, framer/base.py)
silently drops a frame with a bad CRC and a frame from another unit id (it
logs and keeps waiting), so both surface only as a timeout; it has its own
retry loop and closes a TCP connection after `retries + 3` silent requests;
(measured here: AsyncModbusSerialClient with retries=0 reports a bad-CRC answer
and an answer from the wrong unit both as "No response received" after the
full 0.3 s timeout; this module reports CrcError / WrongUnit within ~1 ms);
and it has no inter-frame gap. An alarm gateway must count CRC errors and
wrong-unit answers separately (they mean a wiring or termination fault, not a
dead device), do its own counted retries and pace the line itself. So this
module uses pymodbus only where it is solid — PDU encoding and decoding and the
RTU CRC, wrapped as pure functions of bytes in drivers/modbus_frames.py — over a
pyserial port / asyncio stream that we drive, and classifies every answer
itself.

Timing: an RTU answer's deadline is `timeout_s` counted from the moment the
expected answer should have finished arriving, i.e. after our request's wire
time plus the full expected answer's wire time (bytes x character time). So
`timeout_s` is the device's think time plus slack, independent of the baud rate
and block size: a 125-register answer at 2400 baud takes ~1.1 s on the wire and
is still accepted with the default 0.5 s timeout. Writing the request is bounded
too: a port that stops draining (flow control stuck, adapter hung) fails with
Disconnected after `timeout_s` instead of hanging the line owner.

A link that breaks (adapter unplugged, tty hung up, any unexpected error) is
closed at once, so the next request reopens it; the caller paces reopening.
A persistent failure is logged once, and once more when the link works again.

This module must never retry, sleep between requests, or decide what a failure
means for a device: that is the line owner's job (drivers/line.py). It must
never block the event loop: all waits are asyncio waits with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import struct
import termios
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TypeVar

import serial

from core.errors import (
    Disconnected,
    FieldError,
    FieldTimeout,
    Garbage,
    WrongUnit,
)
from drivers.modbus_frames import (
    check_write_answer,
    decode_read_answer,
    expected_answer_length,
    read_pdu,
    rtu_frame,
    scan_rtu_answer,
    write_coil_pdu,
    write_register_pdu,
)
from drivers.types import Block, ReadRequest, char_time_s

log = logging.getLogger(__name__)

T = TypeVar("T")
_MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
# what a dead or unplugged port raises from the OS, termios or pyserial
_PORT_ERRORS: tuple[type[Exception], ...] = (OSError, termios.error, serial.SerialException)


# --- links --------------------------------------------------------------------


class ModbusLink(ABC):
    """One Modbus transport. Strictly one request at a time; the caller serialises."""

    name: str
    # what the line reports when no device on it answers while the link itself works
    silent_bus_reason = "bus_silent"

    @abstractmethod
    async def open(self) -> None:
        """Open the port or connection; raises Disconnected. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release the port or connection. Idempotent; never raises."""

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    @abstractmethod
    async def _exchange(self, unit: int, pdu: bytes, fc: int, timeout_s: float) -> bytes:
        """Send one request PDU and return the answer's PDU (or raise a FieldError)."""

    async def read(self, req: ReadRequest, timeout_s: float) -> Block:
        """Read one block. Raises a FieldError subclass, never anything else."""
        try:
            pdu = read_pdu(req)
        except ValueError as exc:
            raise Garbage(f"refusing to send an impossible request: {exc}") from exc
        answer = await self._guarded(req.unit, pdu, timeout_s)
        return decode_read_answer(req, answer)

    async def write_register(self, unit: int, address: int, value: int, timeout_s: float) -> None:
        """FC06. Only for points the config makes explicitly writable (the caller checks)."""
        try:
            pdu = write_register_pdu(address, value)
        except ValueError as exc:
            raise Garbage(f"refusing to send an impossible write: {exc}") from exc
        check_write_answer(pdu, await self._guarded(unit, pdu, timeout_s))

    async def write_coil(self, unit: int, address: int, value: bool, timeout_s: float) -> None:
        """FC05. Only for points the config makes explicitly writable (the caller checks)."""
        pdu = write_coil_pdu(address, value)
        check_write_answer(pdu, await self._guarded(unit, pdu, timeout_s))

    async def connect(self) -> None:
        """Open the link if it is closed (the line's reconnect probe while it is down).
        Raises Disconnected, never anything else."""
        await self._guarded_call(self.open)

    def _gone_while_idle(self) -> str | None:
        """Why the open link is already known to be broken (hung up, closed by the peer)."""
        return None

    async def check_idle(self) -> Disconnected | None:
        """Between exchanges: if the link broke meanwhile, close it and say why, so the
        line learns it now rather than at its next poll (which may be seconds away)."""
        why = self._gone_while_idle() if self.is_open else None
        if why is None:
            return None
        return await self._broken(Disconnected(f"{self.name}: {why}"), unexpected=False)

    async def _guarded(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Open if needed and exchange; a broken link is closed and becomes Disconnected."""

        async def exchange() -> bytes:
            await self.open()
            return await self._exchange(unit, pdu, pdu[0], timeout_s)

        return await self._guarded_call(exchange)

    async def _guarded_call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            answer = await call()
        except Disconnected as exc:
            await self._broken(exc, unexpected=False)
            raise
        except FieldError:
            self._works()  # the device answered, if badly: the link itself is fine
            raise
        except _PORT_ERRORS as exc:
            raise await self._broken(Disconnected(f"{self.name}: {exc}"), unexpected=False) from exc
        except Exception as exc:  # a library surprise must become a typed error, not a crash
            error = Disconnected(f"{self.name}: unexpected {type(exc).__name__}: {exc}")
            raise await self._broken(error, unexpected=True) from exc
        self._works()
        return answer

    # a persistent failure is logged once and its end once: not a line per exchange
    _failing: str | None = None

    async def _broken(self, error: Disconnected, *, unexpected: bool) -> Disconnected:
        """Close the link (the next request reopens it) and log the first failure of a run."""
        await self.close()
        if self._failing is None:
            log.warning(
                "%s: link failed, closed for reopening: %s", self.name, error, exc_info=unexpected
            )
        self._failing = str(error)
        return error

    def _works(self) -> None:
        if self._failing is not None:
            log.warning("%s: link works again (was: %s)", self.name, self._failing)
            self._failing = None


class RtuLink(ModbusLink):
    """Modbus RTU over a serial port (RS-485 adapter or pty), driven from the event loop."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> None:
        self.name = port
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        # time one character takes on the wire (start + data + parity + stop bits)
        self.char_time_s = char_time_s(baudrate, bytesize, parity, stopbits)
        self._serial: serial.Serial | None = None
        self._rx = bytearray()
        self._rx_event = asyncio.Event()
        self._rx_error: OSError | None = None
        self.stale_bytes = 0  # bytes found waiting before a request (late answers, noise)

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def open(self) -> None:
        if self._serial is not None:
            return
        try:
            # exclusive: a second opener (another agent, `alarmgw scan`) must fail, not interleave
            port = serial.Serial(
                self.port,
                baudrate=self.baudrate,
                parity=self.parity,
                stopbits=self.stopbits,
                bytesize=self.bytesize,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise Disconnected(f"cannot open {self.port}: {exc}") from exc
        self._serial = port
        self._rx.clear()
        self._rx_error = None
        asyncio.get_running_loop().add_reader(port.fileno(), self._on_readable)
        log.debug("opened %s at %d baud", self.port, self.baudrate)

    async def close(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(port.fileno())
        with contextlib.suppress(Exception):
            port.close()

    def _on_readable(self) -> None:
        if self._serial is None:
            return
        try:
            data = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # adapter unplugged: stop listening, report on next wait
            self._lose_port(exc)
            return
        if not data:  # end of file: the tty was hung up (USB adapter gone); never spin on it
            self._lose_port(OSError(errno.EIO, "port hung up (end of file)"))
            return
        self._rx += data
        self._rx_event.set()

    def _gone_while_idle(self) -> str | None:
        return None if self._rx_error is None else str(self._rx_error)

    def _lose_port(self, error: OSError) -> None:
        self._rx_error = error
        if self._serial is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._serial.fileno())
        self._rx_event.set()

    def _discard_stale_input(self) -> None:
        """Bytes waiting before we ask are from an earlier, timed-out exchange or noise.

        Raises what the port raises (termios.error on a hung-up tty): the caller
        turns that into Disconnected and closes the link.
        """
        assert self._serial is not None
        self.stale_bytes += len(self._rx)
        self._rx.clear()
        self._serial.reset_input_buffer()

    async def _write_all(self, data: bytes, deadline: float) -> None:
        """Write the whole frame, or raise Disconnected at `deadline` if the port stops draining."""
        assert self._serial is not None
        view = memoryview(data)
        fd = self._serial.fileno()
        while view:
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if view and not await _wait_writable(fd, deadline - time.monotonic()):
                raise Disconnected(
                    f"{self.port}: port stopped draining ({len(view)} of {len(data)} bytes unsent)"
                )

    async def _exchange(self, unit: int, pdu: bytes, fc: int, timeout_s: float) -> bytes:
        if self._rx_error is not None:  # hung up while idle: report it before writing
            raise self._rx_error
        self._discard_stale_input()
        frame = rtu_frame(unit, pdu)
        request_wire_s = len(frame) * self.char_time_s
        await self._write_all(frame, time.monotonic() + request_wire_s + timeout_s)
        # timeout_s counts from when the whole expected answer should have arrived:
        # our request's wire time + the answer's wire time (a 125-register answer
        # at 2400 baud alone takes ~1.1 s), so timeout_s is the device's think time
        answer_wire_s = expected_answer_length(pdu) * self.char_time_s
        deadline = time.monotonic() + request_wire_s + answer_wire_s + timeout_s
        while True:
            if self._rx_error is not None:
                raise self._rx_error
            try:
                answer = scan_rtu_answer(bytes(self._rx), unit, fc)
            except FieldError:
                self._rx.clear()
                raise
            if answer is not None:
                self._rx.clear()
                return answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._verdict_at_deadline(unit, timeout_s)
            self._rx_event.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._rx_event.wait()

    def _verdict_at_deadline(self, unit: int, timeout_s: float) -> FieldError:
        if not self._rx:
            return FieldTimeout(f"unit {unit}: no answer within {timeout_s:.3f} s")
        got = bytes(self._rx[:32]).hex(" ")
        if self._rx[0] == unit and len(self._rx) < 5:
            return FieldTimeout(f"unit {unit}: answer cut short: {got}")
        return Garbage(f"unit {unit}: {len(self._rx)} unparseable bytes: {got}")


async def _wait_writable(fd: int, within_s: float) -> bool:
    """True once `fd` is writable, False if it is not within `within_s` seconds."""
    if within_s <= 0:
        return False
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        async with asyncio.timeout(within_s):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(fd)
    return True


# Requests in a row that get no answer at all on one TCP connection, from any unit, before the
# connection is presumed dead (a gateway that lost power keeps no state to send a reset) and
# replaced at once: a dead endpoint then shows as Disconnected. One that accepts the new
# connection is there, and what is behind it is silent (a gateway's RS-485 side): that is
# not checked again for SILENT_RECHECK_S unless something answers in between, so a silent
# bus behind a gateway costs one reconnect a minute, not one every few requests.
SILENT_RECONNECT = 3
SILENT_RECHECK_S = 60.0


class TcpLink(ModbusLink):
    """Modbus TCP (MBAP framing) to one endpoint; reconnects lazily on the next request.

    A connection on which SILENT_RECONNECT requests in a row went unanswered is replaced by
    a new one: if the endpoint does not take it, the last request raises Disconnected (a
    black-holed endpoint then looks like what it is, a link that is gone, instead of every
    device behind it timing out on its own); if it does, the endpoint is there and what is
    behind it is silent (FieldTimeout; the line names it `gateway_silent`)."""

    silent_bus_reason = "gateway_silent"

    def __init__(self, host: str, port: int = 502, connect_timeout: float = 3.0) -> None:
        self.name = f"{host}:{port}"
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tid = 0
        self._unanswered = 0  # requests in a row without any answer on this connection
        self._silence_checked = -math.inf  # monotonic: reconnected after silence, endpoint up

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def open(self) -> None:
        if self._writer is not None:
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {self.connect_timeout:g} s"
            raise Disconnected(f"cannot connect to {self.name}: {why}") from exc
        self._unanswered = 0

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    def _gone_while_idle(self) -> str | None:
        if self._reader is not None and self._reader.at_eof():
            return "connection closed by the device"
        return None

    def _next_tid(self) -> int:
        self._tid = self._tid % 0xFFFF + 1
        return self._tid

    async def _exchange(self, unit: int, pdu: bytes, fc: int, timeout_s: float) -> bytes:
        assert self._writer is not None
        tid = self._next_tid()
        self._writer.write(_MBAP_HEADER.pack(tid, 0, len(pdu) + 1, unit) + pdu)
        try:
            async with asyncio.timeout(timeout_s):  # a peer that stops reading must not hang us
                await self._writer.drain()
        except TimeoutError:
            raise Disconnected(f"{self.name}: connection stopped draining") from None
        try:
            async with asyncio.timeout(timeout_s):
                answer = await self._answer_for(tid, unit)
        except TimeoutError:
            self._unanswered += 1
            if self._unanswered >= SILENT_RECONNECT:
                await self._check_endpoint()
            raise FieldTimeout(
                f"{self.name} unit {unit}: no answer within {timeout_s:.3f} s"
            ) from None
        except asyncio.IncompleteReadError as exc:
            await self.close()
            raise Disconnected(f"{self.name}: connection closed by the device") from exc
        except Garbage:
            await self.close()  # the stream is out of step; a fresh connection resynchronises it
            raise
        self._unanswered = 0
        self._silence_checked = -math.inf  # something answers: silence is news again
        return answer

    async def _check_endpoint(self) -> None:
        """Nothing answers on this connection: is the endpoint still there? A new
        connection tells (Disconnected if not); not asked again within SILENT_RECHECK_S."""
        if time.monotonic() - self._silence_checked < SILENT_RECHECK_S:
            return
        silent = self._unanswered
        await self.close()
        try:
            await self.open()
        except Disconnected as exc:
            raise Disconnected(
                f"{self.name}: no answer to {silent} requests in a row, and {exc}"
            ) from None
        self._silence_checked = time.monotonic()
        log.warning(
            "%s: no answer to %d requests in a row, but it accepts connections:"
            " what is behind it is silent",
            self.name,
            silent,
        )

    async def _answer_for(self, tid: int, unit: int) -> bytes:
        assert self._reader is not None
        while True:
            header = await self._reader.readexactly(_MBAP_HEADER.size)
            got_tid, proto, length, got_unit = _MBAP_HEADER.unpack(header)
            if proto != 0 or not 2 <= length <= 254:
                raise Garbage(f"{self.name}: bad MBAP header {header.hex(' ')}")
            pdu = await self._reader.readexactly(length - 1)
            if got_tid != tid:
                log.debug("%s: dropping late answer tid %d (want %d)", self.name, got_tid, tid)
                continue
            if got_unit != unit:
                raise WrongUnit(f"{self.name}: answer from unit {got_unit}, asked unit {unit}")
            return pdu
