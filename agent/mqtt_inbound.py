"""Every packet from the broker kept within a size bound, before paho parses it.

paho reads whatever the broker sends into memory whole; on a 1 GB Pi a broker (or
anyone on its path) must not be able to make the agent allocate a huge packet. This is
MQTT's framing only (fixed header, remaining length, a PUBLISH's variable header),
pure byte handling on top of the socket read paho already does: it never imports
paho (agent/mqtt.py plugs it in) and never keeps more than `limit` bytes of a packet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, NoReturn

log = logging.getLogger("agent.mqtt")

DISCARD_CHUNK: Final = 64 * 1024  # an oversized payload is read and dropped this much at a time
PUBLISH_TYPE: Final = 3  # MQTT control packet type, the high nibble of the first byte


class InboundLimit:
    """The broker's byte stream as paho reads it, with every packet kept within `limit`.

    Packets within the limit pass through untouched. A PUBLISH over it reaches paho as
    its head alone (topic, packet id and MQTT 5 properties, with the remaining length
    rewritten) and an empty payload; the payload is read and dropped DISCARD_CHUNK at a
    time, and `too_large` holds its size until `take_too_large()` (on_message) takes it.
    paho then acknowledges it as usual (QoS 1), so the broker does not send it again.
    Any other packet over the limit, or a head that does not fit in it, ends the
    connection (ConnectionAbortedError, with the reason kept in `refused`).

    `raw` is paho's own socket read (TLS included); it raises BlockingIOError when no
    byte is waiting, and this object keeps its place across that.
    """

    def __init__(self, raw: Callable[[int], bytes], limit: int, v5: bool) -> None:
        self._raw = raw
        self.limit = limit
        self._v5 = v5
        self._header = bytearray()  # the fixed header of the next packet, as it arrives
        self._out = bytearray()  # bytes for paho before anything else is read
        self._through = 0  # bytes of the current packet still to pass through as they come
        self._first = 0  # first byte of the oversized PUBLISH whose head is being read
        self._remaining = 0  # its remaining length
        self._head = bytearray()  # its first bytes (at most `limit`)
        self._head_size = 0  # how many of them to read
        self._discard = 0  # bytes of an oversized payload still to read and drop
        self.too_large: int | None = None
        self.refused: str | None = None

    def take_too_large(self) -> int | None:
        size, self.too_large = self.too_large, None
        return size

    def recv(self, bufsize: int) -> bytes:
        """paho's `_sock_recv`: up to bufsize bytes; b"" when the connection is closed."""
        while not self._out:
            if self._through:
                data = self._raw(min(bufsize, self._through))
                self._through -= len(data)
                return data
            if not self._step():
                return b""
        data = bytes(self._out[:bufsize])
        del self._out[:bufsize]
        return data

    def _step(self) -> bool:
        """Read what the state needs next; False when the broker closed the connection."""
        if self._discard:
            data = self._raw(min(DISCARD_CHUNK, self._discard))
            self._discard -= len(data)
        elif self._head_size:
            data = self._raw(self._head_size - len(self._head))
            self._head += data
            if len(self._head) == self._head_size:
                self._cut_publish()
        else:
            data = self._raw(1)
            self._header += data
            if data and len(self._header) > 1 and not data[0] & 0x80:
                self._header_done()
            elif len(self._header) == 5:
                self._refuse("a malformed remaining length")
        return bool(data)

    def _header_done(self) -> None:
        remaining = _varint(self._header[1:])
        header, self._header = self._header, bytearray()
        if remaining <= self.limit:
            self._out += header
            self._through = remaining
            return
        qos = (header[0] >> 1) & 3
        if header[0] >> 4 != PUBLISH_TYPE or qos > 1:
            self._refuse(f"a packet of {remaining} bytes (type {header[0] >> 4})")
        self._first, self._remaining = header[0], remaining
        self._head_size = min(remaining, self.limit)
        self._head.clear()

    def _cut_publish(self) -> None:
        head = bytes(self._head)
        size = publish_head_size(head, qos=(self._first >> 1) & 3, v5=self._v5)
        if size is None:
            self._refuse(f"a PUBLISH of {self._remaining} bytes whose head is over the limit")
        self._out += bytes([self._first]) + _encode_varint(size) + head[:size]
        self._discard = self._remaining - len(head)
        self.too_large = self._remaining - size
        self._head_size = 0
        self._head.clear()
        log.warning(
            "broker sent a message of %d bytes (limit %d): payload dropped unread",
            self._remaining,
            self.limit,
        )

    def _refuse(self, what: str) -> NoReturn:
        self.refused = f"the broker sent {what}, over the {self.limit}-byte limit"
        raise ConnectionAbortedError(self.refused)


def publish_head_size(head: bytes, *, qos: int, v5: bool) -> int | None:
    """Length of a PUBLISH's variable header (topic, packet id, MQTT 5 properties) at the
    start of `head`, the bytes after its fixed header; None if it does not end in them."""
    if len(head) < 2:
        return None
    size = 2 + int.from_bytes(head[:2], "big") + (2 if qos else 0)
    if v5:
        props = head[size : size + 4]
        ends = [i for i, byte in enumerate(props) if not byte & 0x80]
        if not ends:
            return None
        size += ends[0] + 1 + _varint(props[: ends[0] + 1])
    return size if size <= len(head) else None


def _varint(data: bytes | bytearray) -> int:
    """MQTT's variable byte integer (remaining length, property length)."""
    return sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(data))


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
