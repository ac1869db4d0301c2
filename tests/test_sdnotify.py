"""sd_notify as systemd sees it: datagrams on a real NOTIFY_SOCKET, and a
watchdog that stops pinging when one of the agent's loops hangs."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sdnotify
from agent.sdnotify import Watchdog
from tests.waiting import wait_until


class NotifySocket:
    """What systemd listens on: a datagram socket whose messages we collect."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout: float = 2.0) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except (TimeoutError, BlockingIOError):
            return None

    def drain(self) -> list[str]:
        got = []
        while (message := self.receive(0)) is not None:
            got.append(message)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify"
    sock = NotifySocket(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


# --- messages -------------------------------------------------------------------


@pytest.mark.world
def test_ready_status_watchdog_stopping_arrive(notify_socket: NotifySocket) -> None:
    assert sdnotify.ready("polling 5 devices")
    assert notify_socket.receive() == "READY=1\nSTATUS=polling 5 devices"
    assert sdnotify.status("uplink down,\nbuffer 12 queued")
    assert notify_socket.receive() == "STATUS=uplink down, buffer 12 queued"  # one line
    assert sdnotify.watchdog()
    assert notify_socket.receive() == "WATCHDOG=1"
    assert sdnotify.extend_timeout(20)
    assert notify_socket.receive() == "EXTEND_TIMEOUT_USEC=20000000"
    assert sdnotify.stopping()
    assert notify_socket.receive() == "STOPPING=1"


@pytest.mark.world
def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"alarmgw-test-{uuid.uuid4().hex}"
    sock = NotifySocket("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.receive() == "READY=1"
    finally:
        sock.close()


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234"])
def test_no_usable_socket_is_a_quiet_no_op(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


@pytest.mark.world
def test_missing_socket_file_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.watchdog() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        (None, None, None),
        ("30000000", "notanumber", None),
    ],
)
def test_watchdog_interval_from_environment(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            real = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(key, real)
    assert sdnotify.watchdog_interval_s() == expected


# --- the watchdog and liveness ------------------------------------------------------


class LineLoop:
    """A stand-in for a line owner's loop: iterates, records when, and can be made to hang
    the way a loop stuck in a blocking call does."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.last = time.monotonic()
        self.running = threading.Event()  # set = iterating, clear = hung
        self.running.set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fake-line")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.running.wait()
            self.last = time.monotonic()
            self.stop.wait(self.period_s)

    def close(self) -> None:
        self.stop.set()
        self.running.set()
        self.thread.join()


@pytest.fixture
def line_loop() -> Iterator[LineLoop]:
    loop = LineLoop()
    try:
        yield loop
    finally:
        loop.close()


def count_watchdog_pings(sock: NotifySocket, window_s: float) -> int:
    deadline = time.monotonic() + window_s
    pings = 0
    while (left := deadline - time.monotonic()) > 0:
        if sock.receive(left) == "WATCHDOG=1":
            pings += 1
    return pings


@pytest.mark.world
def test_watchdog_pings_at_half_interval_while_loops_live(
    notify_socket: NotifySocket, line_loop: LineLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s -> a ping every 0.05 s
    dog = Watchdog()
    assert dog.interval_s == 0.2
    dog.register("rs485-1", lambda: line_loop.last, max_age_s=0.15)
    dog.start()
    try:
        stamps = []
        for _ in range(5):
            assert notify_socket.receive() == "WATCHDOG=1"
            stamps.append(time.monotonic())
    finally:
        dog.stop()
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    assert 0.035 < gaps[len(gaps) // 2] < 0.1  # a quarter of the interval


@pytest.mark.slow
@pytest.mark.world
def test_pings_stop_while_a_loop_hangs_and_resume_after(
    notify_socket: NotifySocket, line_loop: LineLoop, caplog: pytest.LogCaptureFixture
) -> None:
    dog = Watchdog(interval_s=0.2)
    dog.register("rs485-1", lambda: line_loop.last, max_age_s=0.15)
    dog.register("uplink", time.monotonic, max_age_s=0.15)  # an uplink that never hangs
    caplog.set_level(logging.WARNING, logger="agent.sdnotify")
    dog.start()
    try:
        assert count_watchdog_pings(notify_socket, 0.35) >= 2

        line_loop.running.clear()  # the line loop hangs
        assert wait_until(lambda: dog.stale_probes() == ["rs485-1"])
        # The hang is logged by the tick that first saw it; ticks run one after another
        # in one thread, so every ping of an earlier tick is already queued: drain them.
        assert wait_until(lambda: "rs485-1" in caplog.text)
        notify_socket.drain()
        assert count_watchdog_pings(notify_socket, 0.6) == 0  # six ping periods, silence
        assert "uplink" not in caplog.text  # it names the hung loop, not the healthy one

        line_loop.running.set()
        assert notify_socket.receive(2.0) == "WATCHDOG=1"
        assert wait_until(lambda: "alive again: rs485-1" in caplog.text)
    finally:
        dog.stop()


def test_stale_is_logged_once_per_transition(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    last = [100.0]
    sent: list[int] = []
    dog = Watchdog(interval_s=10, clock=lambda: now[0], ping=lambda: sent.append(1) or True)
    dog.register("buffer-writer", lambda: last[0], max_age_s=5)
    caplog.set_level(logging.WARNING, logger="agent.sdnotify")
    assert dog.tick() is True
    now[0] = 106.0
    assert [dog.tick() for _ in range(3)] == [False, False, False]
    assert caplog.text.count("buffer-writer") == 1
    last[0] = 106.0
    assert dog.tick() is True
    assert len(sent) == 2
    assert dog.pings_sent == 2


def test_a_probe_that_raises_counts_as_hung() -> None:
    def broken() -> float:
        raise RuntimeError("loop object gone")

    sent: list[int] = []
    dog = Watchdog(interval_s=10, ping=lambda: sent.append(1) or True)
    dog.register("uplink", broken, max_age_s=5)
    assert dog.tick() is False
    assert sent == []
    dog.unregister("uplink")
    assert dog.tick() is True


def test_without_systemd_watchdog_start_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    dog = Watchdog()
    dog.start()
    assert dog.interval_s is None
    assert not any(t.name == "sd-watchdog" for t in threading.enumerate())
    dog.stop()


def test_register_rejects_nonsense_age() -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        Watchdog(interval_s=1).register("x", time.monotonic, 0)
