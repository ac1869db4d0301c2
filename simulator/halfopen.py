"""A TCP path that can go half-open: what a 4G NAT that forgot a flow looks like.

`HalfOpenPath` relays every connection to `upstream` byte for byte. After `forget()`, the
connections open at that moment swallow every byte in both directions and are never
closed (no FIN, no reset: the client's socket stays "connected" and its sends succeed),
while new connections relay normally: the carrier's NAT lost its mapping, a fresh flow gets
a new one.

It must never alter a byte it lets through, nor close a forgotten connection itself.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from simulator.relay import CHUNK, Pair, TcpRelay


@dataclass
class _Pair(Pair):
    forgotten: bool = False


class HalfOpenPath(TcpRelay[_Pair]):
    """Listens on 127.0.0.1:`port`, relays to `upstream`. start() (or `with`), then close()."""

    thread_name = "half-open-path"

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self.swallowed = 0  # bytes swallowed on forgotten connections

    def forget(self) -> None:
        """The NAT forgets every flow open now: their bytes vanish from here on."""
        with self._lock:
            for pair in self._pairs.values():
                pair.forgotten = True

    def _pair(self, client: socket.socket, upstream: socket.socket) -> _Pair:
        return _Pair(client, upstream)

    def _relay(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(CHUNK)
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
