"""A TCP endpoint that black-holes connects: what a hung Modbus TCP gateway looks like.

The port is bound and listening, but nothing ever accepts, and its accept queue is
kept full by connections of our own, so the kernel drops every further SYN and a
client's connect hangs until its own timeout (a dead gateway behind a switch, or a
firewall that DROPs, looks the same). A closed port would answer at once with a
reset; this one never answers at all.

It must never accept a connection, and never bind anything but a loopback address.
"""

from __future__ import annotations

import contextlib
import socket
import time

LOOPBACK = "127.0.0.1"
_FILL_TIMEOUT_S = 0.2  # a connect the full queue drops does not finish within this


class BlackHole:
    """Listen on 127.0.0.1:`port` and never accept. Use `with`, or start()/close()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []

    def start(self) -> BlackHole:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOOPBACK, self.port))
            listener.listen(0)  # Linux queues one connection for backlog 0; we take it
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._fill_queue()
        return self

    def _fill_queue(self) -> None:
        """Connect until a connect no longer completes: from then on the queue is full."""
        while True:
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex((LOOPBACK, self.port))
            self._fillers.append(filler)
            deadline = time.monotonic() + _FILL_TIMEOUT_S
            while time.monotonic() < deadline:
                if filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _connected(
                    filler
                ):
                    break
                time.sleep(0.005)  # a kernel handshake on loopback; nothing to await
            else:
                return  # this one hangs: the queue is full

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> BlackHole:
        return self if self._listener is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connected(sock: socket.socket) -> bool:
    with contextlib.suppress(OSError):
        sock.getpeername()
        return True
    return False
