"""A TCP path that can go half-open: what a 4G NAT that forgot a flow looks like.

`HalfOpenPath` relays every connection to `upstream` byte for byte. After `forget()`, the
connections open at that moment swallow every byte in both directions and are never
closed (no FIN, no reset: the client's socket stays "connected" and its sends succeed),
while new connections relay normally: the carrier's NAT lost its mapping, a fresh flow gets
a new one.

It must never alter a byte it lets through, nor close a forgotten connection itself.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass
from typing import Final

_CHUNK: Final = 65536


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    forgotten: bool = False


class HalfOpenPath:
    """Listens on 127.0.0.1:`port`, relays to `upstream`. start() (or `with`), then close()."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # connections accepted
        self.swallowed = 0  # bytes swallowed on forgotten connections
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, _Pair] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> HalfOpenPath:
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="half-open-path", daemon=True)
        self._thread.start()
        return self

    def forget(self) -> None:
        """The NAT forgets every flow open now: their bytes vanish from here on."""
        with self._lock:
            for pair in self._pairs.values():
                pair.forgotten = True

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

    def __enter__(self) -> HalfOpenPath:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        pair = _Pair(client, upstream)
        with self._lock:
            for sock in (client, upstream):
                sock.setblocking(True)  # sends block (briefly: loopback); reads follow select
                self._pairs[sock] = pair
                self._sel.register(sock, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            if not pair.forgotten:  # a forgotten flow tells the other side nothing
                self._drop(pair)
            else:
                self._unwatch(sock)
            return
        if pair.forgotten:
            self.swallowed += len(data)
            return
        other = pair.upstream if sock is pair.client else pair.client
        try:
            other.sendall(data)
        except OSError:
            self._drop(pair)

    def _unwatch(self, sock: socket.socket) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _drop(self, pair: _Pair) -> None:
        with self._lock:
            for sock in (pair.client, pair.upstream):
                if self._pairs.pop(sock, None) is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._sel.unregister(sock)
                sock.close()
