"""One listening socket, one accept thread and one thread per client: the lifecycle the
simulator's control socket, its GPIO socket and its Modbus TCP devices share.

`close()` stops accepting, shuts every client down and joins every thread, so a
simulator that stops leaves nothing behind (the tests' leak check holds it to that).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class SocketServer:
    """Serve `sock` (bound and listening) with `serve(conn)` on a thread per client."""

    def __init__(
        self,
        sock: socket.socket,
        serve: Callable[[socket.socket], None],
        name: str,
        on_accept: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self._sock: socket.socket | None = sock
        self._serve = serve
        self._name = name
        self._on_accept = on_accept
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: list[tuple[socket.socket, threading.Thread]] = []
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def clients(self) -> list[socket.socket]:
        with self._lock:
            return [conn for conn, _ in self._clients]

    def _accept(self) -> None:
        sock = self._sock
        while sock is not None and not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if self._on_accept is not None:
                self._on_accept(conn)
            thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"{self._name}-client", daemon=True
            )
            with self._lock:
                self._clients.append((conn, thread))
            thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        self._thread.join(timeout=5)
        with self._lock:
            clients, self._clients = self._clients, []
        for conn, _ in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for conn, thread in clients:
            thread.join(timeout=5)
            conn.close()
