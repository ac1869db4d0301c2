"""Real pymodbus servers for the line tests: RTU on a pty path, TCP on a loopback port.

Each simulated unit serves holding/input registers 0..19 with the value
`unit * 100 + address` and coils/discrete inputs 0..15 alternating 1/0, so a
test can tell from the values alone which unit answered. A `FaultPlan` makes a
unit misbehave on the wire the way field devices do (silent, bad CRC, another
unit id, a short answer, garbage) by rewriting the frame the server sends;
delays come from an async SimDevice action. Private to tests: the simulator
package has the full fault-injecting simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from drivers.modbus_frames import crc_ok, rtu_frame

REGISTERS = 20
BITS = 16


def register_value(unit: int, address: int) -> int:
    return unit * 100 + address


def bit_value(address: int) -> int:
    return 1 - address % 2


@dataclass
class FaultPlan:
    """How each unit misbehaves right now; tests change it while the line runs."""

    modes: dict[int, str] = field(default_factory=dict)  # unit -> a key of FAULTS
    delay_s: dict[int, float] = field(default_factory=dict)  # unit -> answer delay
    answered: dict[int, int] = field(default_factory=dict)  # unit -> requests the server handled
    # set when the server shuts down: a slow answer still waiting gives up at once (pymodbus
    # does not cancel request handlers on shutdown, so they would outlive the test)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def rewrite(self, sending: bool, data: bytes) -> bytes:
        """pymodbus trace_packet hook: what the server really puts on the wire."""
        if not sending or not data:
            return data
        unit = data[0]
        self.answered[unit] = self.answered.get(unit, 0) + 1
        mode = self.modes.get(unit, "ok")
        return FAULTS[mode](data)

    def count_tcp(self, sending: bool, data: bytes) -> bytes:
        """pymodbus trace_packet hook for TCP: count answers per unit (MBAP byte 6); a
        "silent" unit's answer is not sent (a gateway whose RS-485 side is silent)."""
        if sending and len(data) > 6:
            self.answered[data[6]] = self.answered.get(data[6], 0) + 1
            if self.modes.get(data[6]) == "silent":
                return b""
        return data


def _wrong_unit(frame: bytes) -> bytes:
    return rtu_frame((frame[0] % 247) + 1, frame[1:-2])


def _short(frame: bytes) -> bytes:
    """A well-formed, CRC-valid answer that carries one register less than asked."""
    unit, fc, count = frame[0], frame[1], frame[2]
    if fc & 0x80 or count < 2:
        return frame
    return rtu_frame(unit, bytes([fc, count - 2]) + frame[3 : 3 + count - 2])


def _crc(frame: bytes) -> bytes:
    damaged = frame[:-1] + bytes([frame[-1] ^ 0xFF])
    assert not crc_ok(damaged)
    return damaged


FAULTS = {
    "ok": lambda f: f,
    "silent": lambda f: b"",
    "crc": _crc,
    "wrong_unit": _wrong_unit,
    "short": _short,
    "garbage": lambda f: bytes([0xFF, 0x00, 0xA5, 0x5A, 0xFF, 0x13]),
    "exception": lambda f: rtu_frame(f[0], bytes([f[1] | 0x80, 4])),  # server device failure
    "busy": lambda f: rtu_frame(f[0], bytes([f[1] | 0x80, 6])),  # server busy (alarm storm)
    # a gateway in front of the unit: "gateway target device failed to respond"
    "gateway_no_answer": lambda f: rtu_frame(f[0], bytes([f[1] | 0x80, 11])),
}


async def _request_handlers_done() -> None:
    """pymodbus starts each request's handler as a fire-and-forget task and does not wait
    for them on shutdown: wait for the ones still running, so none outlives the server.

    A frame read just before the shutdown gets its task two loop turns later (call_soon,
    then run_coroutine_threadsafe): on a slow CPU (emulated armhf) that is often after a
    first look. So let such callbacks run, and look again until no handler is left."""
    me = asyncio.current_task()
    while True:
        for _ in range(3):  # loop turns, not time: the callbacks already scheduled run
            await asyncio.sleep(0)
        handlers = [
            t
            for t in asyncio.all_tasks()
            if t is not me and getattr(t.get_coro(), "__qualname__", "").endswith("handle_request")
        ]
        if not handlers:
            return
        await asyncio.gather(*handlers, return_exceptions=True)


async def _delay_action(
    plan: FaultPlan,
    unit: int,
    _fc: int,
    _start: int,
    _address: int,
    _count: int,
    _regs: list[int],
    _set: list[int] | list[bool] | None,
) -> ExcCodes | None:
    delay = plan.delay_s.get(unit, 0.0)
    if delay:  # plays a slow device, not a synchronisation
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(plan.closing.wait(), delay)
    return None


def sim_device(unit: int, plan: FaultPlan, registers: int = REGISTERS) -> SimDevice:
    regs = [register_value(unit, a) for a in range(registers)]
    bits = [bool(bit_value(a)) for a in range(BITS)]
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=bits, datatype=DataType.BITS)],
            [SimData(0, values=bits, datatype=DataType.BITS)],
            [SimData(0, values=regs, datatype=DataType.REGISTERS)],
            [SimData(0, values=list(regs), datatype=DataType.REGISTERS)],
        ),
        action=partial(_delay_action, plan, unit),
    )


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def rtu_server(
    port: str, units: list[int], plan: FaultPlan | None = None, registers: int = REGISTERS
) -> AsyncIterator[tuple[ModbusSerialServer, FaultPlan]]:
    """A pymodbus RTU server answering `units` (with `registers` registers) on path `port`."""
    plan = plan or FaultPlan()
    server = ModbusSerialServer(
        [sim_device(u, plan, registers) for u in units],
        port=port,
        baudrate=115200,
        trace_packet=plan.rewrite,
    )
    await server.serve_forever(background=True)
    try:
        yield server, plan
    finally:
        plan.closing.set()
        await server.shutdown()
        await _request_handlers_done()


@contextlib.asynccontextmanager
async def tcp_server(
    units: list[int], plan: FaultPlan | None = None, port: int | None = None
) -> AsyncIterator[tuple[ModbusTcpServer, FaultPlan, int]]:
    """A pymodbus TCP server on a loopback port (a free one unless given) answering `units`."""
    plan = plan or FaultPlan()
    port = port or free_tcp_port()
    server = ModbusTcpServer(
        [sim_device(u, plan) for u in units],
        address=("127.0.0.1", port),
        trace_packet=plan.count_tcp,
    )
    await server.serve_forever(background=True)
    try:
        yield server, plan, port
    finally:
        plan.closing.set()
        await server.shutdown()
        await _request_handlers_done()
