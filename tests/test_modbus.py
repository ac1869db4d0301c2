"""drivers/modbus_frames.py with literal hex, then drivers/modbus.py: real links over a pty and TCP.

Bench session: a pymodbus RTU server sits on one end of a virtual RS-485
cable (simulator.pty.PtyPair), our RtuLink on the other; a unit is made to
misbehave and we check the exact typed error, and that the next read works.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import termios
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from core.errors import (
    CrcError,
    Disconnected,
    FieldError,
    FieldTimeout,
    Garbage,
    GatewayNoAnswer,
    ModbusException,
    WrongLength,
    WrongUnit,
)
from drivers.modbus import SILENT_RECONNECT, RtuLink, TcpLink
from drivers.modbus_frames import crc_ok, decode_read_answer, read_pdu, rtu_frame, scan_rtu_answer
from drivers.types import ReadRequest, Table
from simulator.pty import PtyPair
from simulator.rtu import mbap_frame, parse_mbap
from tests.modbus_servers import bit_value, register_value, rtu_server, tcp_server

T = TypeVar("T")
HOLD = Table.HOLDING


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# --- pure codec ----------------------------------------------------------------


def test_request_frame_is_the_textbook_one() -> None:
    # The classic example: read 10 holding registers from 0 on unit 1.
    frame = rtu_frame(1, read_pdu(ReadRequest(1, HOLD, 0, 10)))
    assert frame == bytes.fromhex("01 03 00 00 00 0A C5 CD")
    assert rtu_frame(17, read_pdu(ReadRequest(17, Table.COIL, 19, 37)))[:6] == bytes.fromhex(
        "11 01 00 13 00 25"
    )


def test_impossible_request_is_refused() -> None:
    with pytest.raises(ValueError, match="impossible"):
        read_pdu(ReadRequest(1, HOLD, 0, 126))


ANSWER = rtu_frame(1, bytes.fromhex("03 04 00 2A 01 00"))


def test_scan_finds_a_complete_answer() -> None:
    assert scan_rtu_answer(ANSWER, 1, 3) == bytes.fromhex("03 04 00 2A 01 00")
    block = decode_read_answer(ReadRequest(1, HOLD, 7, 2), bytes.fromhex("03 04 00 2A 01 00"))
    assert block.values == (42, 256)
    assert block.at(8) == 256


def test_scan_waits_for_the_rest_of_a_frame() -> None:
    for cut in range(len(ANSWER)):
        assert scan_rtu_answer(ANSWER[:cut], 1, 3) is None


def test_scan_skips_noise_before_a_valid_frame() -> None:
    assert scan_rtu_answer(b"\x00\xff\x13" + ANSWER, 1, 3) == ANSWER[1:-2]


def test_scan_types_damaged_and_foreign_frames() -> None:
    damaged = ANSWER[:4] + bytes([ANSWER[4] ^ 0x10]) + ANSWER[5:]
    assert not crc_ok(damaged)
    with pytest.raises(CrcError):
        scan_rtu_answer(damaged, 1, 3)
    with pytest.raises(WrongUnit, match="unit 2"):
        scan_rtu_answer(rtu_frame(2, ANSWER[1:-2]), 1, 3)


def test_decode_types_exception_and_wrong_length() -> None:
    with pytest.raises(ModbusException) as info:
        decode_read_answer(ReadRequest(1, HOLD, 0, 2), bytes.fromhex("83 02"))
    assert info.value.code == 2
    assert str(info.value) == "illegal data address (2)"  # what the fault event will say
    with pytest.raises(WrongLength):
        decode_read_answer(ReadRequest(1, HOLD, 0, 3), bytes.fromhex("03 04 00 2A 01 00"))
    with pytest.raises(Garbage):
        decode_read_answer(ReadRequest(1, HOLD, 0, 2), bytes.fromhex("04 04 00 2A 01 00"))
    bits = decode_read_answer(ReadRequest(1, Table.COIL, 0, 10), bytes.fromhex("01 02 05 02"))
    assert bits.values == (1, 0, 1, 0, 0, 0, 0, 0, 0, 1)


@pytest.mark.parametrize(
    ("pdu", "text"),
    [
        ("83 01", "illegal function (1)"),
        ("84 03", "illegal data value (3)"),
        ("83 04", "server device failure (4)"),
        ("83 06", "server device busy (6)"),
        ("83 09", "unknown exception (9)"),
    ],
)
def test_an_exception_answer_names_its_code(pdu: str, text: str) -> None:
    """Names from the Modbus Application Protocol V1.1b3, section 7."""
    fc = int(pdu[:2], 16) & 0x7F
    table = {3: HOLD, 4: Table.INPUT}[fc]
    with pytest.raises(ModbusException, match=re.escape(text)) as info:
        decode_read_answer(ReadRequest(1, table, 0, 1), bytes.fromhex(pdu))
    assert info.value.reason == "exception"


@pytest.mark.parametrize("code", [10, 11])
def test_a_gateways_no_answer_is_typed_apart(code: int) -> None:
    """Exceptions 10 and 11 come from a gateway: the device behind it did not answer."""
    with pytest.raises(GatewayNoAnswer) as info:
        decode_read_answer(ReadRequest(1, HOLD, 0, 1), bytes([0x83, code]))
    assert info.value.code == code and info.value.reason == "gateway_no_answer"
    assert str(info.value).startswith("gateway ")


# --- RTU over a real pty ---------------------------------------------------------


def test_rtu_reads_every_table_of_several_units(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, 2, 247]):
            link = RtuLink(pty_pair.a, 115200)
            try:
                for unit in (1, 2, 247):
                    for table in (Table.HOLDING, Table.INPUT):
                        block = await link.read(ReadRequest(unit, table, 3, 4), 0.5)
                        assert block.values == tuple(register_value(unit, a) for a in range(3, 7))
                    for table in (Table.COIL, Table.DISCRETE):
                        block = await link.read(ReadRequest(unit, table, 1, 11), 0.5)
                        assert block.values == tuple(bit_value(a) for a in range(1, 12))
            finally:
                await link.close()

    run(bench())


@pytest.mark.parametrize(
    ("mode", "error", "fast"),
    [
        ("silent", FieldTimeout, False),
        ("crc", CrcError, True),
        ("wrong_unit", WrongUnit, True),
        ("short", WrongLength, True),
        ("garbage", Garbage, False),
        ("exception", ModbusException, True),
    ],
)
def test_rtu_faults_are_typed_and_the_link_recovers(
    pty_pair: PtyPair, mode: str, error: type[FieldError], fast: bool
) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, 2]) as (_, plan):
            link = RtuLink(pty_pair.a, 115200)
            try:
                plan.modes[2] = mode
                started = time.monotonic()
                with pytest.raises(error):
                    await link.read(ReadRequest(2, HOLD, 0, 4), 0.3)
                # a recognisable bad frame is reported at once, not after the timeout
                assert (time.monotonic() - started < 0.25) is fast
                plan.modes[2] = "ok"
                block = await link.read(ReadRequest(2, HOLD, 0, 4), 0.3)
                assert block.values == (200, 201, 202, 203)
            finally:
                await link.close()

    run(bench())


def test_rtu_exception_code_from_the_device(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1]):
            link = RtuLink(pty_pair.a, 115200)
            try:
                with pytest.raises(ModbusException) as info:
                    await link.read(ReadRequest(1, HOLD, 18, 5), 0.3)  # past the map
                assert info.value.code == 2  # illegal data address
            finally:
                await link.close()

    run(bench())


def test_rtu_late_answer_is_not_taken_for_the_next_one(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, 2]) as (_, plan):
            link = RtuLink(pty_pair.a, 115200)
            try:
                plan.delay_s[2] = 0.2
                with pytest.raises(FieldTimeout):
                    await link.read(ReadRequest(2, HOLD, 0, 4), 0.05)
                await wait_until(lambda: plan.answered.get(2, 0) == 1)
                await wait_until(lambda: link._rx != bytearray())  # the late bytes are here
                block = await link.read(ReadRequest(1, HOLD, 0, 4), 0.3)
                assert block.values == (100, 101, 102, 103)
                assert link.stale_bytes == 13  # the whole late 4-register answer was dropped
            finally:
                await link.close()

    run(bench())


def test_rtu_noise_on_the_wire(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1]):
            link = RtuLink(pty_pair.a, 115200)
            try:
                # noise ahead of the answer: the CRC-valid frame behind it is still found
                pty_pair.tap = lambda d, data: (b"\x00\xfe" + data) if d == "b->a" else data
                block = await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)
                assert block.values == (100, 101)
                # a bit flipped inside the answer: a CRC error, reported as such
                pty_pair.tap = lambda d, data: (
                    data[:3] + bytes([data[3] ^ 4]) + data[4:] if d == "b->a" else data
                )
                with pytest.raises(CrcError):
                    await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)
                pty_pair.tap = None
                assert (await link.read(ReadRequest(1, HOLD, 1, 1), 0.3)).values == (101,)
            finally:
                await link.close()

    run(bench())


def test_rtu_write_register_and_coil(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [3]):
            link = RtuLink(pty_pair.a, 115200)
            try:
                await link.write_register(3, 5, 4242, 0.3)
                await link.write_coil(3, 4, False, 0.3)
                assert (await link.read(ReadRequest(3, HOLD, 5, 1), 0.3)).values == (4242,)
                assert (await link.read(ReadRequest(3, Table.COIL, 4, 1), 0.3)).values == (0,)
            finally:
                await link.close()

    run(bench())


def test_rtu_missing_or_busy_port_is_disconnected(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        with pytest.raises(Disconnected, match="cannot open"):
            await RtuLink("/dev/alarmgw-no-such-port").read(ReadRequest(1, HOLD, 0, 1), 0.1)
        first, second = RtuLink(pty_pair.a), RtuLink(pty_pair.a)
        try:
            await first.open()
            with pytest.raises(Disconnected, match="cannot open"):
                await second.open()  # one owner per line: a second opener is refused
        finally:
            await first.close()
            await second.close()

    run(bench())


# --- TCP over a real loopback socket -----------------------------------------------


def test_tcp_reads_times_out_and_drops_late_answers() -> None:
    async def bench() -> None:
        async with tcp_server([1, 7]) as (_, plan, port):
            link = TcpLink("127.0.0.1", port)
            try:
                assert (await link.read(ReadRequest(7, Table.INPUT, 0, 3), 0.5)).values == (
                    700,
                    701,
                    702,
                )
                plan.delay_s[7] = 0.2
                with pytest.raises(FieldTimeout):
                    await link.read(ReadRequest(7, HOLD, 0, 3), 0.05)
                plan.delay_s[7] = 0.0
                await wait_until(lambda: plan.answered.get(7, 0) == 2)
                # the late answer (old transaction id) is already in the socket: it is dropped
                block = await link.read(ReadRequest(1, HOLD, 2, 2), 0.5)
                assert block.values == (102, 103)
                with pytest.raises(ModbusException) as info:
                    await link.read(ReadRequest(1, HOLD, 19, 3), 0.5)
                assert info.value.code == 2
            finally:
                await link.close()

    run(bench())


def test_tcp_server_gone_then_back() -> None:
    async def bench() -> None:
        async with tcp_server([1]) as (_, _, port):
            link = TcpLink("127.0.0.1", port)
            assert (await link.read(ReadRequest(1, HOLD, 0, 1), 0.5)).values == (100,)
        try:
            with pytest.raises(Disconnected):
                await link.read(ReadRequest(1, HOLD, 0, 1), 0.5)
            with pytest.raises(Disconnected, match="cannot connect"):
                await link.read(ReadRequest(1, HOLD, 0, 1), 0.5)
            async with tcp_server([1], port=port):
                # the link reconnects by itself on the next request
                assert (await link.read(ReadRequest(1, HOLD, 4, 1), 0.5)).values == (104,)
        finally:
            await link.close()

    run(bench())


def test_a_tcp_connection_that_never_answers_is_closed_as_disconnected() -> None:
    """A gateway that lost power keeps no state to reset our connection: requests just go
    unanswered. After SILENT_RECONNECT of them in a row the link tries a new connection;
    a dead endpoint does not take it (its SYNs go unanswered): Disconnected, and closed."""

    async def bench() -> None:
        sink = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sink.bind(("127.0.0.1", 0))
        sink.listen(0)  # our connection fills its one queue slot; nobody accepts or answers
        link = TcpLink("127.0.0.1", sink.getsockname()[1], connect_timeout=0.2)
        try:
            for _ in range(SILENT_RECONNECT - 1):
                with pytest.raises(FieldTimeout):
                    await link.read(ReadRequest(1, HOLD, 0, 1), 0.05)
            assert link.is_open
            with pytest.raises(Disconnected, match="no answer to 3 requests in a row, and"):
                await link.read(ReadRequest(1, HOLD, 0, 1), 0.05)
            assert not link.is_open
        finally:
            await link.close()
            sink.close()

    run(bench())


class _MuteGateway:
    """A Modbus TCP gateway whose RS-485 side is silent: it accepts every connection and
    never answers a request. Counts the connections it accepted."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()


def test_a_gateway_that_accepts_but_whose_devices_are_silent_is_not_churned() -> None:
    """The silence makes the link try a new connection once; the gateway takes it, so
    the link is up and the devices behind it are what is silent (FieldTimeout, not
    Disconnected), and it is not reconnected again for more of the same silence."""

    async def bench() -> None:
        gateway = _MuteGateway()
        link = TcpLink("127.0.0.1", gateway.port, connect_timeout=0.5)
        try:
            for _ in range(4 * SILENT_RECONNECT):
                with pytest.raises(FieldTimeout):
                    await link.read(ReadRequest(2, HOLD, 0, 1), 0.05)
                assert link.is_open
            assert len(gateway.accepted) == 2  # the first connection and the one check
        finally:
            await link.close()
            gateway.close()

    run(bench())


def _gateway_with_one_dead_unit(listener: socket.socket) -> None:
    """Answer unit 1 (holding 0 = 100), never unit 2, on one connection, until it closes."""
    conn, _ = listener.accept()
    with conn, contextlib.suppress(OSError):
        while header := conn.recv(7, socket.MSG_WAITALL):
            tid, _, length, unit = parse_mbap(header)
            conn.recv(length - 1, socket.MSG_WAITALL)
            if unit == 1:
                conn.sendall(mbap_frame(tid, 1, bytes.fromhex("03 02 00 64")))


def test_an_answer_keeps_a_tcp_connection_however_many_units_are_silent() -> None:
    """A gateway with a dead unit behind it still answers for the live ones: its
    connection is not churned."""

    async def bench() -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        gateway = threading.Thread(target=_gateway_with_one_dead_unit, args=(listener,))
        gateway.start()
        link = TcpLink("127.0.0.1", listener.getsockname()[1])
        try:
            for _ in range(2 * SILENT_RECONNECT):
                for _ in range(SILENT_RECONNECT - 1):
                    with pytest.raises(FieldTimeout):
                        await link.read(ReadRequest(2, HOLD, 0, 1), 0.05)
                assert (await link.read(ReadRequest(1, HOLD, 0, 1), 0.5)).values == (100,)
            assert link.is_open
        finally:
            await link.close()
            gateway.join(5)
            listener.close()

    run(bench())


# --- a broken port: unplugged adapter, stalled output, slow wire ------------------------

TIOCVHANGUP = 0x5437  # what the kernel does to an open tty when its USB adapter goes away


def _hang_up(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(fd, TIOCVHANGUP)
    finally:
        os.close(fd)


def _hangup_is_emulated() -> bool:
    """qemu-user (the emulated ARM userlands of scripts/test-pi) answers TIOCVHANGUP with
    ENOSYS, which no Linux kernel says of a tty ioctl."""
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, TIOCVHANGUP)
    except OSError as exc:
        return exc.errno == errno.ENOSYS
    finally:
        os.close(master)
        os.close(slave)
    return False


def _link_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "drivers.modbus" and r.levelno >= logging.WARNING
    ]


class CountingRtuLink(RtuLink):
    """A real RtuLink that counts its readable callbacks (a hung-up tty must not spin)."""

    readable_calls = 0

    def _on_readable(self) -> None:
        self.readable_calls += 1
        super()._on_readable()


@pytest.mark.skipif(
    _hangup_is_emulated(),
    reason="qemu-user does not implement the TIOCVHANGUP ioctl (ENOSYS), so an unplugged "
    "USB adapter cannot be played here; it runs on a real kernel",
)
@pytest.mark.parametrize("idle_first", [False, True])
def test_rtu_hangup_closes_the_link_and_the_next_read_reopens_it(
    pty_pair: PtyPair, caplog: pytest.LogCaptureFixture, idle_first: bool
) -> None:
    """Review r7/r7b. idle_first: the reader sees the hangup (end of file) before the next
    request; otherwise the request meets it first (termios.error from the input flush)."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1]):
            link = CountingRtuLink(pty_pair.a, 115200)
            try:
                assert (await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)).values == (100, 101)
                fd = link._serial.fileno() if link._serial else -1
                _hang_up(pty_pair.a)
                if idle_first:
                    await wait_until(lambda: link._rx_error is not None)
                    calls = link.readable_calls
                    await asyncio.sleep(0.2)  # a measurement window: does the reader spin?
                    assert link.readable_calls == calls
                    assert not asyncio.get_running_loop().remove_reader(fd)  # it stopped
                with pytest.raises(Disconnected):
                    await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)
                assert not link.is_open  # closed, so the next request reopens it
                assert (await link.read(ReadRequest(1, HOLD, 2, 2), 0.3)).values == (102, 103)
                assert link.is_open
            finally:
                await link.close()
        warnings = _link_warnings(caplog)
        assert [("link failed" in r.getMessage(), bool(r.exc_info)) for r in warnings[:1]] == [
            (True, False)  # one line, no traceback
        ]
        assert len(warnings) == 2 and "works again" in warnings[1].getMessage()

    caplog.set_level(logging.INFO, logger="drivers.modbus")
    run(bench())


def test_rtu_port_that_stops_draining_fails_at_the_deadline(
    pty_pair: PtyPair, caplog: pytest.LogCaptureFixture
) -> None:
    """Output suspended (XOFF / stuck adapter): the write must not hang the line owner."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1]):
            link = RtuLink(pty_pair.a, 115200)
            try:
                await link.open()
                assert link._serial is not None
                termios.tcflow(link._serial.fileno(), termios.TCOOFF)
                for _ in range(3):  # a persistent failure: logged once, not per request
                    started = time.monotonic()
                    async with asyncio.timeout(5):  # before the fix: hangs forever
                        with pytest.raises(Disconnected, match="stopped draining"):
                            await link.read(ReadRequest(1, HOLD, 0, 2), 0.2)
                    assert 0.2 <= time.monotonic() - started < 0.6
                    assert not link.is_open
                fd = os.open(pty_pair.a, os.O_RDWR | os.O_NOCTTY)
                try:
                    termios.tcflow(fd, termios.TCOON)  # the port drains again
                finally:
                    os.close(fd)
                assert (await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)).values == (100, 101)
            finally:
                await link.close()
        messages = [r.getMessage() for r in _link_warnings(caplog)]
        assert len(messages) == 2, messages
        assert "link failed" in messages[0] and "works again" in messages[1]

    caplog.set_level(logging.INFO, logger="drivers.modbus")
    run(bench())


def _wire_time_tap(char_time_s: float) -> Callable[[str, bytes], bytes]:
    """Deliver each chunk only after its wire time: a pty alone ignores the baud rate."""

    def tap(_direction: str, data: bytes) -> bytes:
        time.sleep(len(data) * char_time_s)  # plays the wire in the relay thread
        return data

    return tap


@pytest.mark.slow
def test_rtu_timeout_counts_from_the_end_of_a_long_answer(pty_pair: PtyPair) -> None:
    """125 registers at 2400 baud take ~1.1 s on the wire; timeout 0.5 s must still work."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1], registers=125) as (_, plan):
            link = RtuLink(pty_pair.a, 2400)
            pty_pair.tap = _wire_time_tap(link.char_time_s)
            try:
                started = time.monotonic()
                block = await link.read(ReadRequest(1, HOLD, 0, 125), 0.5)
                took = time.monotonic() - started
                assert block.values == tuple(register_value(1, a) for a in range(125))
                assert took > 1.0  # it really took the wire time
                # silence: the deadline is request + full expected answer wire time + timeout
                plan.modes[1] = "silent"
                started = time.monotonic()
                with pytest.raises(FieldTimeout):
                    await link.read(ReadRequest(1, HOLD, 0, 125), 0.2)
                expected = (8 + 255) * link.char_time_s + 0.2
                assert expected <= time.monotonic() - started < expected + 0.3
            finally:
                pty_pair.tap = None
                await link.close()

    run(bench())


class SurprisingRtuLink(RtuLink):
    """A real RtuLink whose exchange hits a library bug once (not a FieldError, not OSError)."""

    surprises = 1

    def _discard_stale_input(self) -> None:
        if self.surprises:
            self.surprises -= 1
            raise KeyError("a pymodbus surprise")
        super()._discard_stale_input()


def test_an_unexpected_error_closes_the_link_with_one_traceback(
    pty_pair: PtyPair, caplog: pytest.LogCaptureFixture
) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1]):
            link = SurprisingRtuLink(pty_pair.a, 115200)
            try:
                with pytest.raises(Disconnected, match="unexpected KeyError"):
                    await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)
                assert not link.is_open
                assert (await link.read(ReadRequest(1, HOLD, 0, 2), 0.3)).values == (100, 101)
            finally:
                await link.close()
        warnings = _link_warnings(caplog)
        assert [bool(r.exc_info) for r in warnings] == [True, False]  # the bug, the recovery

    caplog.set_level(logging.INFO, logger="drivers.modbus")
    run(bench())
