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

import socket
from dataclasses import dataclass, field
from typing import Final

from simulator.relay import CHUNK, Pair, TcpRelay

PUBLISH: Final = 3  # MQTT control packet type (high nibble of the first byte)


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
class _Pair(Pair):
    splitter: _Splitter = field(default_factory=_Splitter)


class MqttProxy(TcpRelay[_Pair]):
    """Listens on 127.0.0.1:`port`, relays to `upstream`. start(), then close()."""

    thread_name = "mqtt-proxy"

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self.muted = False
        self.swallowed = 0  # PUBLISH packets dropped while muted

    def mute(self) -> None:
        self.muted = True

    def unmute(self) -> None:
        self.muted = False

    def _pair(self, client: socket.socket, upstream: socket.socket) -> _Pair:
        return _Pair(client, upstream)

    def _relay(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            self._drop(pair)
            return
        try:
            if sock is pair.upstream:
                pair.client.sendall(data)
                return
            for packet in pair.splitter.feed(data):
                if self.muted and packet[0] >> 4 == PUBLISH:
                    self.swallowed += 1
                    continue
                pair.upstream.sendall(packet)
        except (OSError, ValueError):
            self._drop(pair)
