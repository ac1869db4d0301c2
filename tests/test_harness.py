"""The harness itself: the private broker really stops and restarts; the pty cable carries bytes."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import serial

import tests.conftest
from simulator.broker import Mosquitto
from simulator.pty import PtyPair


def _roundtrip(host: str, port: int, topic: str) -> bytes:
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_subscribe = lambda *a: subscribed.set()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        done.set()

    c.on_message = on_message
    c.connect(host, port)
    c.loop_start()
    try:
        c.subscribe(topic, qos=1)
        assert subscribed.wait(5)
        c.publish(topic, "火警".encode(), qos=1).wait_for_publish(5)
        assert done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def test_private_broker_stops_and_restarts_on_same_port(broker: Mosquitto) -> None:
    assert _roundtrip(broker.host, broker.port, "t/a").decode() == "火警"
    port = broker.port
    broker.stop()
    with pytest.raises(OSError), socket.create_connection((broker.host, port), timeout=1):
        pass
    broker.start()
    assert broker.port == port
    assert _roundtrip(broker.host, broker.port, "t/b").decode() == "火警"
    broker.kill()
    assert not broker.running


def test_shared_broker_with_unique_topic(
    shared_broker_url: tuple[str, int], unique_topic: str
) -> None:
    assert _roundtrip(*shared_broker_url, f"{unique_topic}/x").decode() == "火警"


def test_pty_pair_carries_bytes_both_ways(pty_pair: PtyPair) -> None:
    with (
        serial.Serial(pty_pair.a, 9600, timeout=2) as a,
        serial.Serial(pty_pair.b, 9600, timeout=2) as b,
    ):
        a.write(bytes(range(256)))
        assert b.read(256) == bytes(range(256))
        b.write(b"\x01\x03\x02\x00\x01")
        assert a.read(5) == b"\x01\x03\x02\x00\x01"


def test_pty_tap_can_damage_bytes(pty_pair: PtyPair) -> None:
    pty_pair.tap = lambda direction, data: (
        bytes(x ^ 0xFF for x in data) if direction == "a->b" else data
    )
    with (
        serial.Serial(pty_pair.a, 9600, timeout=2) as a,
        serial.Serial(pty_pair.b, 9600, timeout=2) as b,
    ):
        a.write(b"\x00\x0f")
        assert b.read(2) == b"\xff\xf0"


def test_leak_check_sees_a_leaked_thread(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the inner run (in this process) need not wait 5 s for a thread that never ends
    monkeypatch.setattr(tests.conftest, "THREAD_GRACE_S", 0.2)
    pytester.makeconftest("from tests.conftest import leak_check  # noqa: F401\n")
    pytester.makepyfile(
        """
        import threading
        stop = threading.Event()
        def test_leaks():
            threading.Thread(target=stop.wait, daemon=True).start()
        def teardown_module():
            stop.set()
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*resource leak: threads left running*"])


def test_leak_check_sees_a_leaked_asyncio_task(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, repo_root: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(repo_root))
    pytester.makeconftest("from tests.conftest import leak_check  # noqa: F401\n")
    pytester.makepyfile(
        """
        import asyncio
        def test_forgets_a_task():
            async def main():
                asyncio.get_running_loop().create_task(asyncio.sleep(60), name="forgotten")
            asyncio.run(main())
        """
    )
    # in a subprocess: in-process, this test's own leak check would see the task too
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*resource leak: asyncio tasks left pending*forgotten (sleep)*"])
