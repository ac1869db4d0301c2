"""The GB/T 26875.3 frame, its time label, and a streaming decoder: pure functions of bytes.

    @@ | serial 2 | version 2 | time 6 | source 6 | destination 6 | ADU length 2 | command 1
       | ADU (0..1024) | checksum 1 | ##

Multi-byte integers are little-endian (serial, ADU length, and the 6-byte addresses, which
this module keeps as plain integers). The checksum is the low 8 bits of the sum of every byte
from the serial to the end of the ADU. The version is two bytes, (major, user-defined minor);
it is carried, never judged: real devices send 01 01, 00 01 and 10 00 (docs/gb26875.md).

`FrameStream` takes TCP chunks of any size and shape and hands back `Frame`s and `BadFrame`s:
it resynchronises after garbage, reports a wrong checksum, an ADU length over 1024 or a wrong
end marker as a BadFrame that carries the serial and addresses the deny (command 6) needs, and
never raises, whatever it is fed.

This module must never do I/O, read a clock or decide what a frame means (adu.py and link.py
do that). Time labels are computed with datetime arithmetic, never time.gmtime/localtime, so
they stay right past 2038 on a 32-bit time_t.
"""

from __future__ import annotations

import datetime
import enum
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from core.errors import AlarmgwError

START = b"@@"
END = b"##"
# start(2) + serial(2) + version(2) + time(6) + source(6) + destination(6) + length(2) + command(1)
HEADER_SIZE = 27
TRAILER_SIZE = 3  # checksum(1) + end(2)
MAX_ADU = 1024
MAX_FRAME = HEADER_SIZE + MAX_ADU + TRAILER_SIZE
ADDRESS_MAX = (1 << 48) - 1

# The gateway's time labels are Beijing time (UTC+08:00, no daylight saving): what the centres
# expect and what the Go codec's vectors encode (docs/gb26875.md, "Time").
BEIJING_UTC_OFFSET_S = 8 * 3600


class Command(enum.IntEnum):
    """The control unit's command byte. 7-127 are reserved, 128-255 user-defined."""

    CONTROL = 1  # clock sync, initialise, duty check (centre -> UITD)
    SEND_DATA = 2  # alarms, states, operations (UITD -> centre)
    CONFIRM = 3
    REQUEST = 4  # reads (centre -> UITD)
    RESPONSE = 5
    DENY = 6


def command_name(command: int) -> str:
    try:
        return Command(command).name.lower().replace("_", "-")
    except ValueError:
        return f"command-{command}"


class CodecError(AlarmgwError, ValueError):
    """Bytes that are not a valid frame, ADU or object, or a value that cannot be encoded."""


class FrameError(CodecError):
    """One buffer that is not exactly one valid frame. `reason` says which check failed."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# --- time label ------------------------------------------------------------------------------

_EPOCH = datetime.datetime(1970, 1, 1)  # naive: every wall time here is an offset from it
_FIRST_S = 946_684_800  # 2000-01-01 00:00:00, the first instant a label can carry
_LAST_S = 4_102_444_799  # 2099-12-31 23:59:59, the last


@dataclass(frozen=True, slots=True)
class GbTime:
    """The 6-byte time label: second, minute, hour, day, month, year (0-99 = 2000-2099), as
    wall-clock fields. Decoded labels are kept as received, valid or not; `to_epoch` judges."""

    second: int
    minute: int
    hour: int
    day: int
    month: int
    year: int

    SIZE: ClassVar[int] = 6

    def encode(self) -> bytes:
        fields = (self.second, self.minute, self.hour, self.day, self.month, self.year)
        if not all(0 <= f <= 0xFF for f in fields):
            raise CodecError(f"time label {fields} does not fit in six bytes")
        return bytes(fields)

    @classmethod
    def decode(cls, data: bytes) -> GbTime:
        if len(data) != cls.SIZE:
            raise CodecError(f"a time label is 6 bytes, not {len(data)}")
        return cls(data[0], data[1], data[2], data[3], data[4], data[5])

    @classmethod
    def from_epoch(cls, epoch_s: float, utc_offset_s: int = BEIJING_UTC_OFFSET_S) -> GbTime:
        """The label for a Unix time, as wall time at `utc_offset_s`. Times a label cannot
        carry are clamped to 2000-01-01 00:00:00 / 2099-12-31 23:59:59: an unsynchronised
        gateway clock (1970) is sent as the first instant, never as an invalid label."""
        if not math.isfinite(epoch_s):
            raise CodecError(f"no time label for {epoch_s}")
        wall = min(max(math.floor(epoch_s) + utc_offset_s, _FIRST_S), _LAST_S)
        t = _EPOCH + datetime.timedelta(seconds=wall)
        return cls(t.second, t.minute, t.hour, t.day, t.month, t.year - 2000)

    def to_datetime(self) -> datetime.datetime:
        """The naive wall time the label names; CodecError if it names no real instant."""
        try:
            return datetime.datetime(
                2000 + self.year, self.month, self.day, self.hour, self.minute, self.second
            )
        except ValueError as exc:
            raise CodecError(f"time label {self.encode().hex(' ')} is not a date: {exc}") from None

    def to_epoch(self, utc_offset_s: int = BEIJING_UTC_OFFSET_S) -> int:
        if not 0 <= self.year <= 99:
            raise CodecError(f"time label year {self.year} is outside 0..99")
        return (self.to_datetime() - _EPOCH) // datetime.timedelta(seconds=1) - utc_offset_s

    @property
    def valid(self) -> bool:
        try:
            self.to_epoch()
        except CodecError:
            return False
        return True

    def __str__(self) -> str:
        if self.valid:
            return self.to_datetime().isoformat(sep=" ")
        t = self
        return f"invalid({t.year}-{t.month}-{t.day} {t.hour}:{t.minute}:{t.second})"


# --- frame -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One packet. `command` is an int so that reserved and user-defined commands survive a
    decode; `adu` is the raw application data unit (adu.decode_adu gives it its meaning)."""

    serial: int
    command: int
    source: int
    destination: int
    time: GbTime
    adu: bytes = b""
    version: tuple[int, int] = (1, 0)


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The low 8 bits of the byte sum (of the serial .. the last ADU byte)."""
    return sum(data) & 0xFF


def encode_frame(frame: Frame) -> bytes:
    if not 0 <= frame.serial <= 0xFFFF:
        raise CodecError(f"serial {frame.serial} is outside 0..65535")
    if not 0 <= frame.command <= 0xFF:
        raise CodecError(f"command {frame.command} is outside 0..255")
    for name, address in (("source", frame.source), ("destination", frame.destination)):
        if not 0 <= address <= ADDRESS_MAX:
            raise CodecError(f"{name} address {address} does not fit in six bytes")
    if not all(0 <= v <= 0xFF for v in frame.version) or len(frame.version) != 2:
        raise CodecError(f"version {frame.version} is not two bytes")
    if len(frame.adu) > MAX_ADU:
        raise CodecError(f"ADU of {len(frame.adu)} bytes is over the limit of {MAX_ADU}")
    body = b"".join(
        (
            frame.serial.to_bytes(2, "little"),
            bytes(frame.version),
            frame.time.encode(),
            frame.source.to_bytes(6, "little"),
            frame.destination.to_bytes(6, "little"),
            len(frame.adu).to_bytes(2, "little"),
            bytes((frame.command,)),
            frame.adu,
        )
    )
    return START + body + bytes((checksum(body),)) + END


def _header(buf: bytes | bytearray) -> tuple[int, tuple[int, int], GbTime, int, int, int, int]:
    """serial, version, time, source, destination, ADU length, command of a >= 27-byte buffer."""
    return (
        int.from_bytes(buf[2:4], "little"),
        (buf[4], buf[5]),
        GbTime.decode(bytes(buf[6:12])),
        int.from_bytes(buf[12:18], "little"),
        int.from_bytes(buf[18:24], "little"),
        int.from_bytes(buf[24:26], "little"),
        buf[26],
    )


def decode_frame(data: bytes) -> Frame:
    """Exactly one frame; FrameError (reason start/short/length/end/checksum/trailing) if not."""
    if data[:2] != START:
        raise FrameError("start", "a frame starts with @@")
    if len(data) < HEADER_SIZE + TRAILER_SIZE:
        raise FrameError("short", f"{len(data)} bytes are too few for a frame")
    serial, version, time, source, destination, length, command = _header(data)
    if length > MAX_ADU:
        raise FrameError("length", f"ADU length {length} is over the limit of {MAX_ADU}")
    total = HEADER_SIZE + length + TRAILER_SIZE
    if len(data) < total:
        raise FrameError("short", f"ADU length {length} needs {total} bytes, got {len(data)}")
    if len(data) > total:
        raise FrameError("trailing", f"{len(data) - total} bytes after the end marker")
    if data[total - 2 : total] != END:
        raise FrameError("end", f"end marker {data[total - 2 : total].hex(' ')} is not 23 23")
    if checksum(data[2 : total - TRAILER_SIZE]) != data[total - TRAILER_SIZE]:
        raise FrameError("checksum", "checksum does not match")
    adu = bytes(data[HEADER_SIZE : HEADER_SIZE + length])
    return Frame(serial, command, source, destination, time, adu, version)


# --- streaming decoder -----------------------------------------------------------------------

BadReason = Literal["checksum", "length", "end"]


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame whose header could be read but which failed a check. The standard's answer is
    a deny (command 6) echoing `serial`, sent to `source`."""

    reason: BadReason
    serial: int
    command: int
    source: int
    destination: int
    version: tuple[int, int]


class FrameStream:
    """Bytes in, frames out. Feed it whatever the socket gave; it never raises.

    After a wrong end marker or length the frame's extent cannot be trusted, so the stream
    resumes the search one byte after its start (and reports no BadFrame when another '@@'
    sits inside the header: that was garbage running into a real start); after a wrong
    checksum, the end marker in place, it skips the whole frame. A start that never completes
    does not stall the link: a complete valid frame further on wins, and what precedes it is
    garbage.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0  # bytes thrown away as garbage, for the link's counters

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        self._buf += data
        out: list[Frame | BadFrame] = []
        while (item := self._next()) is not None:
            out.append(item)
        return out

    def reset(self) -> None:
        """Forget a partial frame (the connection it came on is gone)."""
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _discard(self, n: int) -> None:
        del self._buf[:n]
        self.discarded += n

    def _next(self) -> Frame | BadFrame | None:
        buf = self._buf
        while True:
            start = buf.find(START)
            if start < 0:
                self._discard(len(buf) - (1 if buf.endswith(b"@") else 0))
                return None
            self._discard(start)
            if len(buf) < HEADER_SIZE:
                return None
            length = int.from_bytes(buf[24:26], "little")
            if length <= MAX_ADU and len(buf) < HEADER_SIZE + length + TRAILER_SIZE:
                later = self._later_valid_frame(len(buf))
                if later is None:
                    return None
                self._discard(later)
                continue
            item = self._judge(length)
            if item is not None:
                return item

    def _judge(self, length: int) -> Frame | BadFrame | None:
        """The candidate at the buffer's start, complete (or with a length over the limit);
        None when it was garbage not worth a deny."""
        buf = self._buf
        serial, version, time, source, destination, _, command = _header(buf)
        total = HEADER_SIZE + length + TRAILER_SIZE
        if length > MAX_ADU or buf[total - 2 : total] != END:
            # The extent is untrusted: look again one byte on. A second '@@' inside this
            # header means garbage ran into a real start: not a frame, no deny for it.
            overlapped = buf.find(START, 1, HEADER_SIZE) >= 0
            self._discard(1)
            if overlapped:
                return None
            reason: BadReason = "length" if length > MAX_ADU else "end"
            return BadFrame(reason, serial, command, source, destination, version)
        if checksum(buf[2 : total - TRAILER_SIZE]) != buf[total - TRAILER_SIZE]:
            # skip the frame, but not a valid frame that a corrupted length made it swallow
            later = self._later_valid_frame(total)
            del buf[: total if later is None else later]
            return BadFrame("checksum", serial, command, source, destination, version)
        adu = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
        del buf[:total]
        return Frame(serial, command, source, destination, time, adu, version)

    def _later_valid_frame(self, before: int) -> int | None:
        """The offset (1 .. before-1) of a later '@@' at which a complete, valid frame sits."""
        buf = self._buf
        at = buf.find(START, 1, before + 1)
        while 0 <= at < before:
            if len(buf) - at >= HEADER_SIZE + TRAILER_SIZE:
                length = int.from_bytes(buf[at + 24 : at + 26], "little")
                end = at + HEADER_SIZE + length + TRAILER_SIZE
                if (
                    length <= MAX_ADU
                    and end <= len(buf)
                    and buf[end - 2 : end] == END
                    and checksum(buf[at + 2 : end - TRAILER_SIZE]) == buf[end - TRAILER_SIZE]
                ):
                    return at
            at = buf.find(START, at + 1)
        return None
