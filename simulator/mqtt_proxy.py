"""A TCP proxy in front of a broker that can make it stop acknowledging: a broker fault.

`MqttProxy` relays every connection to the real broker byte for byte. While it is
`muted`, the PUBLISH packets clients send are swallowed, so the broker neither
delivers nor acknowledges them, while CONNECT/CONNACK, SUBSCRIBE and keepalive
pings still go through: to the client it is a broker that keeps the connection
and answers pings but never sends a PUBACK (a hung persistence layer or
plug-in, a load balancer's half-dead backend). Muted from the start, it is a
broker that accepts, CONNACKs and never PUBACKs.

It must never alter a packet it lets through, nor touch the broker's own state.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field
from typing import Final

PUBLISH: Final = 3  # MQTT control packet type (high nibble of the first byte)
_CHUNK: Final = 65536


@dataclass
class _Splitter:
    """Cuts a client's byte stream into MQTT packets (fixed header + remaining length)."""

    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        packets: list[bytes] = []
        while True:
            size = _packet_size(self.buf)
            if size is None or len(self.buf) < size:
                return packets
            packets.append(bytes(self.buf[:size]))
            del self.buf[:size]


def _packet_size(buf: bytearray) -> int | None:
    """Total size of the packet at the start of buf, None until its header is complete."""
    length, mult = 0, 1
    for i in range(1, min(len(buf), 5)):
        length += (buf[i] & 0x7F) * mult
        if not buf[i] & 0x80:
            return 1 + i + length
        mult *= 128
    if len(buf) >= 5:
        raise ValueError("malformed remaining length")
    return None


@dataclass
class _Pair:
    client: socket.socket
    broker: socket.socket
    splitter: _Splitter = field(default_factory=_Splitter)


class MqttProxy:
    """Listens on 127.0.0.1:`port`, relays to `upstream`. start(), then close()."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self._listener = socket.create_server((self.host, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.muted = False
        self.swallowed = 0  # PUBLISH packets dropped while muted
        self.connections = 0  # client connections accepted
        self._sel = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, _Pair] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> MqttProxy:
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="mqtt-proxy", daemon=True)
        self._thread.start()
        return self

    def mute(self) -> None:
        self.muted = True

    def unmute(self) -> None:
        self.muted = False

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

    def __enter__(self) -> MqttProxy:
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
            broker = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.connections += 1
        pair = _Pair(client, broker)
        for sock in (client, broker):
            sock.setblocking(True)  # sends block (briefly: loopback); reads follow select
            self._pairs[sock] = pair
            self._sel.register(sock, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._drop(pair)
            return
        try:
            if sock is pair.broker:
                pair.client.sendall(data)
                return
            for packet in pair.splitter.feed(data):
                if self.muted and packet[0] >> 4 == PUBLISH:
                    self.swallowed += 1
                    continue
                pair.broker.sendall(packet)
        except (OSError, ValueError):
            self._drop(pair)

    def _drop(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.broker):
            if self._pairs.pop(sock, None) is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(sock)
            sock.close()
