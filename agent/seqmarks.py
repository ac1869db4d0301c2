"""The seq sidecar of the event buffer: per lane, a ceiling of seqs that may have been handed
out, in a small fixed-size file beside the database, overwritten in place and fsynced.

A corrupt database that must be replaced, or records that died in RAM on a full card, would
otherwise let a restart hand out a seq twice; with the ceiling the buffer (agent/buffer.py)
restarts above every seq ever handed out and names the range that may be lost. Two slots
written alternately: a torn write leaves the other intact. It works on a full disk (no
allocation after creation) and keeps trying on a card that refuses writes.

It must never raise on what it reads (a bad slot is no slot).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from core.events import Lane

_SIDECAR_FMT: Final = "<4sHQ" + "QQB" * 2  # magic, version, generation, per lane ceiling/low/dirty
_SLOT: Final = 64  # two slots, written alternately: a torn write leaves the other intact
_MAGIC: Final = b"AGWS"
LANES: Final = (Lane.EVENT, Lane.TELEMETRY)  # the order of the lanes in a slot


@dataclass
class LaneMark:
    ceiling: int = 1  # every seq below this may have been handed out
    low: int = 1  # lowest unacknowledged seq when the ceiling was reserved
    dirty: bool = False  # seqs were handed out that the database does not hold
    # the ceiling is exactly the next seq handed out (degraded), not a block reserved
    # ahead of it (telemetry waiting in RAM): a restart can name the loss exactly
    exact: bool = True


class Sidecar:
    """A fixed-size file overwritten in place and fsynced: works on a full disk.

    On a card it cannot write (read-only, missing directory) it still offers what it
    could read, and `write()` keeps trying (the card may come back); `problem` says
    why the last attempt failed, None once a write went through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = 0
        self.unreadable: str | None = None  # why marks that may exist could not be read
        self.marks: dict[Lane, LaneMark] | None = self._read()
        self.problem: str | None = None
        self._fd: int | None = None
        self._open()

    def _open(self) -> bool:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
            if os.fstat(self._fd).st_size < 2 * _SLOT:
                os.pwrite(self._fd, bytes(2 * _SLOT), 0)
                os.fsync(self._fd)
        except OSError as exc:
            self.problem = f"cannot write {self.path}: {exc.strerror or exc}"
            self.close()
            return False
        return True

    @property
    def writable(self) -> bool:
        return self._fd is not None and self.problem is None

    def _read(self) -> dict[Lane, LaneMark] | None:
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:  # there, maybe, but not readable: not the same as none
            self.unreadable = f"cannot read {self.path}: {exc.strerror or exc}"
            return None
        best: tuple[int, dict[Lane, LaneMark]] | None = None
        for slot in range(2):
            parsed = _parse_slot(data[slot * _SLOT : (slot + 1) * _SLOT])
            if parsed is not None and (best is None or parsed[0] > best[0]):
                best = parsed
        if best is None:
            return None
        self.generation = best[0]
        return best[1]

    def write(self, marks: dict[Lane, LaneMark]) -> bool:
        """Store the marks durably; False (and `problem` set) if the card refused."""
        if self._fd is None and not self._open():
            return False
        assert self._fd is not None
        self.generation += 1
        values: list[Any] = [_MAGIC, 1, self.generation]
        for lane in LANES:
            mark = marks[lane]
            # dirty: 0 clean, 1 with an exact ceiling, 2 with a block reserved ahead
            values += [mark.ceiling, mark.low, (1 if mark.exact else 2) if mark.dirty else 0]
        body = struct.pack(_SIDECAR_FMT, *values)
        record = body + struct.pack("<I", zlib.crc32(body))
        try:
            os.pwrite(self._fd, record.ljust(_SLOT, b"\0"), (self.generation % 2) * _SLOT)
            os.fsync(self._fd)
        except OSError as exc:
            self.problem = f"cannot write {self.path}: {exc.strerror or exc}"
            return False
        self.problem = None
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse_slot(raw: bytes) -> tuple[int, dict[Lane, LaneMark]] | None:
    size = struct.calcsize(_SIDECAR_FMT)
    if len(raw) < size + 4:
        return None
    body = raw[:size]
    (crc,) = struct.unpack("<I", raw[size : size + 4])
    if zlib.crc32(body) != crc:
        return None
    fields = struct.unpack(_SIDECAR_FMT, body)
    if fields[0] != _MAGIC:
        return None
    marks = {}
    for i, lane in enumerate(LANES):
        ceiling, low, dirty = fields[3 + 3 * i : 6 + 3 * i]
        marks[lane] = LaneMark(ceiling, low, bool(dirty), exact=dirty != 2)
    return fields[2], marks
