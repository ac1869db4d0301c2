"""A virtual null-modem cable: two pseudo-terminals whose bytes are relayed to each other.

Each end is a real tty path (`/dev/pts/N`, optionally with a stable symlink)
that pyserial opens exactly like `/dev/ttyUSB0`. The relay thread copies bytes
master-to-master; a `tap` can rewrite or delay what crosses (garbage, CRC
damage, wire-time pacing). We hold each slave open ourselves (never reading
it) so the master never sees EIO while the real user has not opened it yet.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import termios
import threading
import tty
from collections.abc import Callable
from pathlib import Path

# tap(direction, data) -> bytes to deliver; direction "a->b" or "b->a"
Tap = Callable[[str, bytes], bytes]


def _open_raw_pty() -> tuple[int, int, str]:
    master, slave = pty.openpty()
    tty.setraw(slave, termios.TCSANOW)
    return master, slave, os.ttyname(slave)


class PtyPair:
    """Two linked pty paths, `a` and `b`. Close it to stop the relay and free the fds."""

    def __init__(self, link_a: Path | None = None, link_b: Path | None = None) -> None:
        self._ma, self._sa, self.a = _open_raw_pty()
        self._mb, self._sb, self.b = _open_raw_pty()
        self._links: list[Path] = []
        if link_a is not None:
            self.a = self._link(Path(link_a), self.a)
        if link_b is not None:
            self.b = self._link(Path(link_b), self.b)
        self.tap: Tap | None = None
        self.bytes_relayed = 0
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._relay, name="pty-relay", daemon=True)
        self._thread.start()

    def _link(self, link: Path, target: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(target)
        self._links.append(link)
        return str(link)

    def _relay(self) -> None:
        routes = {self._ma: (self._mb, "a->b"), self._mb: (self._ma, "b->a")}
        while True:
            readable, _, _ = select.select([self._ma, self._mb, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            for fd in readable:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                dest, direction = routes[fd]
                tap = self.tap
                if tap is not None:
                    data = tap(direction, data)
                if data:
                    self.bytes_relayed += len(data)
                    with contextlib.suppress(OSError):
                        os.write(dest, data)

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
        for fd in (self._ma, self._sa, self._mb, self._sb, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for link in self._links:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
