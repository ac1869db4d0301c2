"""agent.mqtt.InboundLimit: the broker's bytes as paho reads them, every packet bounded.

Packets are literal bytes (MQTT 3.1.1 / 5 fixed header, remaining length, variable
header), read back the way paho reads them (one byte, then the remaining length byte by
byte, then the rest), through a socket stand-in that hands out what it has and then says
"would block", as a non-blocking socket does.
"""

from __future__ import annotations

import pytest

from agent.mqtt_inbound import DISCARD_CHUNK, InboundLimit, publish_head_size


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 7, props: bytes | None = None
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


PINGRESP = b"\xd0\x00"
PUBACK = b"\x40\x02\x00\x07"


class Wire:
    """The socket's side: hands out at most `step` bytes per read, and after each read
    that got something, one BlockingIOError (no byte waiting), as a slow link does."""

    def __init__(self, data: bytes, step: int = 1 << 30) -> None:
        self.data = data
        self.step = step
        self.largest_read = 0
        self._blocked = False

    def recv(self, n: int) -> bytes:
        if self._blocked:
            self._blocked = False
            raise BlockingIOError
        self.largest_read = max(self.largest_read, n)
        chunk, self.data = self.data[: min(n, self.step)], self.data[min(n, self.step) :]
        self._blocked = bool(chunk)
        return chunk


def read_packets(inbound: InboundLimit, count: int) -> list[bytes]:
    """Read `count` packets as paho's _packet_read does (retrying on would-block)."""

    def take(n: int) -> bytes:
        while True:
            try:
                data = inbound.recv(n)
            except BlockingIOError:
                continue
            assert data, "connection closed"
            return data

    packets = []
    for _ in range(count):
        packet = bytearray(take(1))
        length, mult = 0, 1
        while True:
            byte = take(1)
            packet += byte
            length += (byte[0] & 0x7F) * mult
            mult *= 128
            if not byte[0] & 0x80:
                break
        body = bytearray()
        while len(body) < length:
            body += take(length - len(body))
        packets.append(bytes(packet + body))
    return packets


def test_packets_within_the_limit_pass_untouched() -> None:
    stream = publish(b"a/cmd/ping", b'{"id":"1"}') + PINGRESP + PUBACK + publish(b"t", b"x" * 1000)
    inbound = InboundLimit(Wire(stream, step=3).recv, 1024, v5=False)
    got = read_packets(inbound, 4)
    assert b"".join(got) == stream
    assert inbound.take_too_large() is None


def test_an_oversized_publish_reaches_paho_as_its_head_and_its_payload_is_read_in_chunks() -> None:
    big = b"{" + b"x" * 5_000_000 + b"}"
    stream = publish(b"a/cmd/ping", big, mid=0x1234) + PINGRESP
    wire = Wire(stream)
    inbound = InboundLimit(wire.recv, 16 * 1024, v5=False)
    cut, ping = read_packets(inbound, 2)
    assert cut == bytes([0x32, 2 + 10 + 2]) + b"\x00\x0aa/cmd/ping" + b"\x12\x34"  # QoS 1, same mid
    assert inbound.take_too_large() == len(big)
    assert inbound.take_too_large() is None  # taken once, by that message's on_message
    assert ping == PINGRESP  # the stream stays in step after the dropped payload
    assert wire.largest_read <= DISCARD_CHUNK  # never one read of the whole payload


def test_an_oversized_mqtt5_publish_keeps_its_properties() -> None:
    props = b"\x01\x01"  # payload format indicator = 1
    stream = publish(b"t/x", b"y" * 70_000, qos=0, props=props)
    inbound = InboundLimit(Wire(stream, step=1000).recv, 16 * 1024, v5=True)
    [cut] = read_packets(inbound, 1)
    assert cut == bytes([0x30, 2 + 3 + 1 + 2]) + b"\x00\x03t/x" + b"\x02" + props
    assert inbound.take_too_large() == 70_000


@pytest.mark.parametrize(
    ("packet", "what"),
    [
        (b"\x90" + varint(100_000) + b"\x00" * 100_000, "type 9"),  # a SUBACK that size
        (publish(b"t" * 20_000, b"z" * 10), "head is over the limit"),  # topic alone too big
        (b"\x30\xff\xff\xff\xff\x7f", "malformed remaining length"),
    ],
)
def test_other_oversized_or_malformed_packets_end_the_connection(packet: bytes, what: str) -> None:
    inbound = InboundLimit(Wire(packet).recv, 16 * 1024, v5=False)
    with pytest.raises(ConnectionAbortedError, match=what):
        read_packets(inbound, 1)
    assert inbound.refused is not None and what in inbound.refused


def test_the_head_size_of_a_publish() -> None:
    assert publish_head_size(b"\x00\x03abc\x00\x01payload", qos=1, v5=False) == 7
    assert publish_head_size(b"\x00\x03abcpayload", qos=0, v5=False) == 5
    assert publish_head_size(b"\x00\x03abc\x00\x01\x00payload", qos=1, v5=True) == 8
    assert publish_head_size(b"\x00\x03ab", qos=0, v5=False) is None  # cut short
    assert publish_head_size(b"\x00", qos=0, v5=False) is None
