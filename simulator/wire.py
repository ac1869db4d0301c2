"""A virtual RS-485 line: Modbus RTU slaves for several unit ids behind one serial path.

The simulator holds one end of a PtyPair (or any serial path), the agent opens
the other, exactly as it would open /dev/ttyUSB0. One thread per line reads
requests, delimits frames by length and by inter-frame silence, and answers
for the unit ids it serves, through the line's and the device's faults.
With `wire_time` the answer arrives as late as the request and answer bytes
would on a real wire at the line's baud rate (10 or 11 bits per character).

It must never answer for a unit id it does not serve, nor answer a frame with
a bad CRC: real slaves stay silent then, and the agent must time out.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import serial

from drivers.types import char_time_s, inter_frame_gap_ms
from simulator.faults import Answer, FaultSet, apply_rtu, merge_rolls
from simulator.rtu import RegisterBank, crc_ok, execute, rtu_request_length


class ServedUnit(RegisterBank, Protocol):
    """A RegisterBank that can also be silenced and carries its own faults."""

    silenced: bool
    faults: FaultSet


@dataclass
class LineStats:
    requests: int = 0
    answered: int = 0
    bad_crc: int = 0
    unknown_unit: int = 0
    broadcasts: int = 0
    last_request_mono: float = 0.0


@dataclass(frozen=True, slots=True)
class SerialSettings:
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def char_time(self) -> float:
        return char_time_s(self.baudrate, self.bytesize, self.parity, self.stopbits)

    def silence_s(self) -> float:
        """The 3.5-character inter-frame gap (1.75 ms floor above 19200 baud, as the spec says)."""
        return inter_frame_gap_ms(self.baudrate, self.bytesize, self.parity, self.stopbits) / 1000


@dataclass
class RtuLineServer:
    """Serve `units` (unit id -> bank) on serial `path`. start() then close()."""

    line_id: str
    path: str
    units: Mapping[int, ServedUnit]
    settings: SerialSettings = field(default_factory=SerialSettings)
    wire_time: bool = False
    faults: FaultSet = field(default_factory=FaultSet)
    on_request: Callable[[int, bytes], None] | None = None
    stats: LineStats = field(default_factory=LineStats)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._serial: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1

    def start(self) -> RtuLineServer:
        self._serial = serial.Serial(self.path, baudrate=self.settings.baudrate, timeout=0)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._serve, name=f"sim-rtu-{self.line_id}", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> RtuLineServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- the serving thread ---------------------------------------------------

    def _frame_timeout(self) -> float:
        # A pty delivers a frame in one go; the floor only guards against a split write.
        return max(self.settings.silence_s(), 0.02)

    def _serve(self) -> None:
        assert self._serial is not None
        fd = self._serial.fileno()
        buf = b""
        while not self._stop.is_set():
            timeout = self._frame_timeout() if buf else None
            readable, _, _ = select.select([fd, self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                return
            if fd in readable:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                buf += chunk
                buf = self._consume(buf, silent=False)
            elif buf:
                buf = self._consume(buf, silent=True)

    def _consume(self, buf: bytes, *, silent: bool) -> bytes:
        """Take whole frames off `buf`; at a silence, whatever is left is one (bad) frame."""
        while buf:
            length = rtu_request_length(buf)
            if length is None or length == 0 or length > len(buf):
                if not silent:
                    return buf
                length = len(buf)
            frame, buf = buf[:length], buf[length:]
            if not crc_ok(frame):
                # A real slave cannot resync inside a burst: it drops it all and waits for silence.
                self.stats.bad_crc += 1
                return b""
            self._handle(frame)
        return b""

    def _handle(self, frame: bytes) -> None:
        self.stats.requests += 1
        self.stats.last_request_mono = time.monotonic()
        unit, pdu = frame[0], frame[1:-2]
        if self.on_request is not None:
            self.on_request(unit, frame)
        if unit == 0:
            self.stats.broadcasts += 1
            for each in self.units.values():
                execute(each, pdu)
            return
        bank = self.units.get(unit)
        if bank is None:
            self.stats.unknown_unit += 1
            return
        if bank.silenced:
            return
        answer = apply_rtu(
            merge_rolls(self.faults.rolled(), bank.faults.rolled()),
            unit,
            pdu[0],
            execute(bank, pdu),
            self.faults,
        )
        self._send(answer, len(frame))

    def _send(self, answer: Answer, request_len: int) -> None:
        delay = answer.delay_s
        if self.wire_time:
            answer_len = len(answer.frame) if answer.frame else 0
            chars = request_len + answer_len
            delay += chars * self.settings.char_time() + self.settings.silence_s()
        if delay > 0 and self._stop.wait(delay):
            return
        if answer.frame is None or self._serial is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._serial.fileno(), answer.frame)
            self.stats.answered += 1
