"""The broker's name: a name server that never answers or a name that does not exist must
not hang the uplink (the systemd watchdog would restart the agent every 30 s), must be
said in `status`, and must not stop delivery once the name resolves again.

A name server that never answers cannot be made here without root and a changed
/etc/resolv.conf, so the getaddrinfo the Resolver calls is stood in for: it blocks until
the test lets it answer, then answers what the real one answers for 127.0.0.1. Everything
else is real: the broker, the buffer file, the subscriber."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import EventBuffer
from agent.cli.render import render_status
from agent.mqtt import MAX_LOOKUPS, Resolver
from agent.uplink import ALIVE_S, Uplink
from simulator.broker import Mosquitto
from tests.uplink_helpers import IDENT, Collector, Settings, alarm, running, wait_until

NAME = "broker.care-home.test"


class SilentNameServer:
    """getaddrinfo that hangs, as with an unreachable name server, until `answer()`."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._answer = threading.Event()

    def __call__(self, host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        self._answer.wait(60)
        return socket.getaddrinfo("127.0.0.1", port, **kw)

    def answer(self) -> None:
        self._answer.set()


@pytest.fixture
def silent() -> Iterator[SilentNameServer]:
    server = SilentNameServer()
    try:
        yield server
    finally:
        server.answer()  # no lookup thread outlives the test


def _uplink(tmp_path: Path, b: Mosquitto, resolver: Resolver) -> tuple[EventBuffer, Uplink]:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 100)
    settings = Settings(NAME, b.port, reconnect_min_s=0.1, reconnect_max_s=0.2)
    uplink = Uplink(settings, IDENT, buffer, version="t", config_digest="d", resolver=resolver)
    return buffer, uplink


def test_a_name_server_that_never_answers_neither_hangs_the_uplink_nor_loses_events(
    tmp_path: Path, broker: Mosquitto, silent: SilentNameServer
) -> None:
    resolver = Resolver(NAME, broker.port, silent, timeout_s=0.5)
    buffer, uplink = _uplink(tmp_path, broker, resolver)
    col = Collector(broker.host, broker.port, "alarmgw/v1/site-t/gw-t/#")
    try:
        with running(buffer, uplink):
            fire = buffer.submit(alarm()).result(5)
            assert wait_until(lambda: uplink.counters.failed_attempts >= 3)
            assert uplink.last_error is not None
            assert uplink.last_error.startswith(f"cannot resolve {NAME}: no answer within 0.5 s")
            # one lookup in flight, waited for by every attempt: no pile of stuck threads
            assert silent.asked == [NAME]
            # the connection loop keeps ticking for the watchdog while the lookup hangs
            before = uplink.alive
            assert wait_until(lambda: uplink.alive > before + ALIVE_S, timeout=3 * ALIVE_S)
            screen = "\n".join(render_status({"uplink": uplink.stats()}))
            assert f"last error: cannot resolve {NAME}" in screen

            silent.answer()
            assert col.wait_for(lambda: len(col.payloads("event")) == 1)
            assert col.payloads("event")[0]["seq"] == fire.seq
            assert uplink.connected
            # cleared by the broker's PUBACK, which may come a moment after the delivery
            assert wait_until(lambda: uplink.last_error is None)
    finally:
        col.close()


class SlowNameServer:
    """getaddrinfo that answers, correctly, but only after `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.asked = 0
        self._never = threading.Event()

    def __call__(self, host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        self.asked += 1
        self._never.wait(self.delay_s)
        return socket.getaddrinfo("127.0.0.1", port, **kw)


def test_an_answer_slower_than_the_bound_is_used_by_the_next_attempt(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The answer comes 0.3 s after the attempt gave up, inside the 1 s backoff: the next
    attempt takes it instead of asking again (and giving up again, forever)."""
    slow = SlowNameServer(delay_s=0.8)
    resolver = Resolver(NAME, broker.port, slow, timeout_s=0.5)
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 100)
    settings = Settings(NAME, broker.port, reconnect_min_s=1.0, reconnect_max_s=1.0)
    uplink = Uplink(
        settings, IDENT, buffer, version="t", config_digest="d", resolver=resolver,
        rng=lambda: 1.0,  # backoff exactly 1 s: the late answer always lands inside it
    )  # fmt: skip
    with running(buffer, uplink):
        buffer.submit(alarm()).result(5)
        assert wait_until(lambda: uplink.counters.acked == 1)
        assert uplink.counters.failed_attempts == 1
        assert slow.asked == 1


def test_a_lookup_that_never_returns_is_tried_beside_a_bounded_number_of_times(
    tmp_path: Path, broker: Mosquitto, silent: SilentNameServer
) -> None:
    resolver = Resolver(NAME, broker.port, silent, timeout_s=0.1, hung_after_s=0.3)
    buffer, uplink = _uplink(tmp_path, broker, resolver)
    with running(buffer, uplink):
        assert wait_until(lambda: len(silent.asked) == MAX_LOOKUPS)
        # many more attempts, each past hung_after_s: still no fourth thread
        attempts = uplink.counters.failed_attempts
        assert wait_until(lambda: uplink.counters.failed_attempts >= attempts + 10)
        assert len(silent.asked) == MAX_LOOKUPS
        silent.answer()
        assert wait_until(lambda: uplink.connected)


def test_a_name_that_does_not_resolve_is_reported_and_tried_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The real getaddrinfo, a name under .invalid (RFC 2606: never resolves)."""
    resolver = Resolver("no-such-broker.invalid", broker.port)
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 100)
    settings = Settings("no-such-broker.invalid", broker.port, reconnect_min_s=0.05)
    uplink = Uplink(settings, IDENT, buffer, version="t", config_digest="d", resolver=resolver)
    with running(buffer, uplink):
        buffer.submit(alarm()).result(5)
        assert wait_until(lambda: uplink.counters.failed_attempts >= 2)
        assert uplink.last_error is not None
        assert uplink.last_error.startswith("cannot resolve no-such-broker.invalid")
        assert buffer.stats()["event_depth"] == 1  # kept until a broker has it


def test_every_address_of_the_name_is_tried_in_one_attempt(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A name with a dead address first (nothing listens on 127.0.0.2) still
    connects in the same attempt, as socket.create_connection would have."""

    def two_addresses(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        dead = socket.getaddrinfo("127.0.0.2", port, **kw)
        live = socket.getaddrinfo(broker.host, port, **kw)
        return dead + live

    # the broker listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection at once
    resolver = Resolver(NAME, broker.port, two_addresses)
    buffer, uplink = _uplink(tmp_path, broker, resolver)
    with running(buffer, uplink):
        buffer.submit(alarm()).result(5)
        assert wait_until(lambda: uplink.counters.acked == 1)
        assert uplink.counters.failed_attempts == 0
