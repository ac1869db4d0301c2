"""A TCP relay on one thread: the base of the simulator's faulty paths.

`TcpRelay` listens on 127.0.0.1 (a free port: `port`) and relays every connection to
`upstream`, one selector thread for all of them. What a subclass does to the bytes is its
`_relay(sock, pair)`: simulator/mqtt_proxy.py (a broker that stops acknowledging) and
simulator/halfopen.py (a 4G NAT that forgot a flow).

It must never alter a byte on its own: only a subclass decides what passes.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass
from typing import Final, Generic, Self, TypeVar

CHUNK: Final = 65536


@dataclass
class Pair:
    """One relayed connection: the client's socket and ours to the upstream."""

    client: socket.socket
    upstream: socket.socket


P = TypeVar("P", bound=Pair)


class TcpRelay(Generic[P]):
    """start() (or `with`), then close(). Subclasses give `_pair` and `_relay`."""

    thread_name = "tcp-relay"

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self._listener = socket.create_server((self.host, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # client connections accepted
        self._lock = threading.Lock()  # _pairs and the selector, against other threads
        self._sel = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, P] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def _pair(self, client: socket.socket, upstream: socket.socket) -> P:
        raise NotImplementedError

    def _relay(self, sock: socket.socket, pair: P) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Self:
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop_w.send(b"\0")
            self._thread.join(10)
            self._thread = None
        for pair in list(self._pairs.values()):
            self._drop(pair)
        self._sel.close()
        self._listener.close()
        self._stop_r.close()
        self._stop_w.close()

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                sock = key.fileobj
                if sock is self._stop_r:
                    return
                if sock is self._listener:
                    self._accept()
                elif isinstance(sock, socket.socket) and sock in self._pairs:
                    self._relay(sock, self._pairs[sock])

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.connections += 1
        pair = self._pair(client, upstream)
        with self._lock:
            for sock in (client, upstream):
                sock.setblocking(True)  # sends block (briefly: loopback); reads follow select
                self._pairs[sock] = pair
                self._sel.register(sock, selectors.EVENT_READ)

    def _unwatch(self, sock: socket.socket) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _drop(self, pair: P) -> None:
        with self._lock:
            for sock in (pair.client, pair.upstream):
                if self._pairs.pop(sock, None) is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._sel.unregister(sock)
                sock.close()
