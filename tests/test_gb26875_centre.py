"""The simulated monitoring centre over real TCP: a UITD made of the sans-IO Link and a socket
sends to it; the centre logs, confirms, denies, drops, delays or cuts on command, sends duty
checks, clock syncs, reads and initialise, and is driven through its control socket and CLI."""

from __future__ import annotations

import json
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.gb26875.adu import Adu, ComponentAddress, ComponentState, UitdState
from agent.gb26875.codec import Command, Frame, FrameStream, GbTime, encode_frame
from agent.gb26875.link import (
    Confirmed,
    Link,
    LinkEvent,
    LinkSettings,
    Packet,
    RequestReceived,
    Stale,
)
from simulator import cli
from simulator.centre import Centre, CentreControl, request
from simulator.procs import stop_process

UITD, CENTRE = 0x0379, 0x015B38


def label() -> GbTime:
    return GbTime.from_epoch(time.time())


def fire(n: int = 1) -> Packet:
    state = ComponentState(1, 1, 40, ComponentAddress(10, n), 0x0003, f"{n}号烟感", label())
    return Packet(Adu.of(state).encode(), priority=True, tag=n)


class Uitd:
    """A UITD for tests: the Link over a real socket, driven by select() until a condition."""

    def __init__(self, port: int, wrap: Callable[[socket.socket], socket.socket] | None = None,
                 **settings: Any) -> None:  # fmt: skip
        self.link = Link(LinkSettings(uitd_address=UITD, centre_address=CENTRE, **settings))
        self.port, self.wrap = port, wrap
        self.sock = self._connect()
        self.link.connected()
        self.events: list[LinkEvent] = []
        self.closed = False

    def run_until(self, done: Callable[[list[LinkEvent]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done(self.events) and not self.closed:
            self.sock.sendall(self.link.data_to_send())
            now = time.monotonic()
            if now >= deadline:
                return False
            wake = min(self.link.next_deadline() or deadline, deadline)
            readable, _, _ = select.select([self.sock], [], [], max(0.0, wake - now))
            if readable:
                data = self.sock.recv(4096)
                if data:
                    self.link.receive(data)
                else:
                    self.closed = True
                    self.link.disconnected()
            self.link.handle_timers()
            events = self.link.events()
            self.events += events
            if any(isinstance(e, Stale) for e in events):  # as the uplink: a fresh connection
                self.sock.close()
                self.sock = self._connect()
                self.link.connected()
        self.sock.sendall(self.link.data_to_send())
        return done(self.events)

    def _connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return self.wrap(raw) if self.wrap else raw

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def centre(tmp_path: Path) -> Iterator[Centre]:
    with Centre(address=CENTRE, log=tmp_path / "centre.jsonl") as c:
        yield c


@pytest.fixture
def uitd(centre: Centre) -> Iterator[Uitd]:
    u = Uitd(centre.port, confirm_timeout_s=0.5)
    yield u
    u.close()


def confirmed(n: int) -> Callable[[list[LinkEvent]], bool]:
    return lambda events: sum(isinstance(e, Confirmed) for e in events) >= n


def data_in(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("dir") == "in" and r.get("command") == Command.SEND_DATA]


# --- logging and confirming ------------------------------------------------------------------


def test_the_centre_decodes_logs_and_confirms_what_the_uitd_sends(
    centre: Centre, uitd: Uitd, tmp_path: Path
) -> None:
    uitd.link.submit(fire(2))
    assert uitd.run_until(confirmed(1))
    assert centre.wait_for(lambda r: len(r) >= 2)
    received, reply = centre.records[:2]
    assert received["dir"] == "in" and received["action"] == "confirm"
    assert (received["serial"], received["source"], received["typeflag"]) == (1, UITD, 2)
    (obj,) = received["objects"]
    assert obj["type"] == "ComponentState"
    assert (obj["component_address"], obj["status"], obj["description"]) == ([10, 2], 3, "2号烟感")
    assert (reply["dir"], reply["command"], reply["serial"]) == ("out", Command.CONFIRM, 1)
    assert (reply["source"], reply["destination"]) == (CENTRE, UITD)
    logged = [json.loads(line) for line in (tmp_path / "centre.jsonl").read_text().splitlines()]
    assert logged[:2] == centre.records[:2]


def test_deny_then_confirm_again(centre: Centre, uitd: Uitd) -> None:
    centre.set_mode("deny", count=1)
    packet = fire()
    uitd.link.submit(packet)
    assert uitd.run_until(confirmed(1))
    assert [r["action"] for r in data_in(centre.records)] == ["deny", "confirm"]
    assert [r["serial"] for r in data_in(centre.records)] == [1, 1]  # resent with its serial
    assert uitd.events == [Confirmed(packet)]


def test_a_dropped_confirm_is_resent_after_the_timeout(centre: Centre, uitd: Uitd) -> None:
    centre.set_mode("drop", count=1)
    uitd.link.submit(fire())
    started = time.monotonic()
    assert uitd.run_until(confirmed(1))
    assert time.monotonic() - started >= 0.5  # the UITD's confirm timeout
    assert [r["action"] for r in data_in(centre.records)] == ["drop", "confirm"]
    # nothing came back on the first connection: the resend went on a fresh one
    assert uitd.link.counters.stale == 1 and uitd.link.counters.resent == 1
    assert centre.counts["duplicates"] == 1  # the same object twice: seen and counted


def test_a_delayed_confirm_arrives_late(centre: Centre, uitd: Uitd) -> None:
    centre.set_mode("delay", count=1, delay_s=0.3)
    uitd.link.submit(fire())
    started = time.monotonic()
    assert uitd.run_until(confirmed(1))
    assert time.monotonic() - started >= 0.3
    assert centre.wait_for(lambda r: any(x["dir"] == "out" for x in r))  # logged after sending
    received = data_in(centre.records)[0]
    reply = next(r for r in centre.records if r["dir"] == "out")
    assert (received["action"], reply["action"]) == ("delay 0.3s", "delayed")
    assert len(data_in(centre.records)) == 1  # within the UITD's 0.5 s timeout: no resend


def test_close_cuts_the_connection_instead_of_confirming(centre: Centre, uitd: Uitd) -> None:
    centre.set_mode("close")
    uitd.link.submit(fire())
    assert uitd.run_until(lambda _: False, timeout=5) is False
    assert uitd.closed and uitd.link.queued == 1  # still the UITD's to send again
    assert centre.wait_for(lambda _: not centre.state()["peers"])


def test_a_bad_frame_is_denied_with_its_serial(centre: Centre) -> None:
    with socket.create_connection(("127.0.0.1", centre.port), timeout=5) as sock:
        good = encode_frame(
            Frame(42, Command.SEND_DATA, UITD, CENTRE, label(), b"\x15\x01\x01" + bytes(6))
        )
        sock.sendall(b"noise" + good[:-3] + bytes([good[-3] ^ 1]) + b"##")
        (reply,) = _read_frames(sock, 1)
    assert (reply.serial, reply.command) == (42, Command.DENY)
    assert centre.counts["bad"] == 1


def _read_frames(sock: socket.socket, n: int) -> list[Frame]:
    stream, frames = FrameStream(), []
    while len(frames) < n:
        data = sock.recv(4096)
        assert data, "connection closed"
        frames += [f for f in stream.feed(data) if isinstance(f, Frame)]
    return frames


# --- the centre's own requests ---------------------------------------------------------------


def test_duty_check_clock_sync_read_and_initialise_reach_the_uitd(
    centre: Centre, uitd: Uitd
) -> None:
    uitd.link.submit(fire())  # the centre learns the UITD's address from what it sends
    assert uitd.run_until(confirmed(1))
    sent = centre.duty_check(5) + centre.clock_sync(GbTime(0, 0, 12, 1, 1, 27))
    sent += centre.read(62, [[1, 1, 10, 2]]) + centre.initialise()
    assert sent == [1, 2, 3, 4]

    def requests(events: list[LinkEvent]) -> list[RequestReceived]:
        return [e for e in events if isinstance(e, RequestReceived)]

    assert uitd.run_until(lambda e: len(requests(e)) == 4)
    got = requests(uitd.events)
    assert [(r.request.command, r.request.typeflag) for r in got] == [
        (Command.CONTROL, 91), (Command.CONTROL, 90), (Command.REQUEST, 62), (Command.CONTROL, 89),
    ]  # fmt: skip
    assert got[0].request.adu.objects[0].timeout_min == 5  # type: ignore[union-attr]
    assert str(got[1].request.adu.objects[0].time) == "2027-01-01 12:00:00"  # type: ignore[union-attr]
    assert got[0].request.frame.destination == UITD
    for event in got:
        if event.request.typeflag == 62:
            uitd.link.respond(event.request, Adu.of(UitdState(1, label())))
        else:
            uitd.link.confirm(event.request)
    uitd.run_until(lambda _: True)
    answers = lambda r: [x["command"] for x in r if x["dir"] == "in" and x["command"] != 2]  # noqa: E731
    assert centre.wait_for(lambda r: len(answers(r)) == 4)
    assert sorted(answers(centre.records)) == [3, 3, 3, 5]


def test_read_arguments_are_checked(centre: Centre) -> None:
    with pytest.raises(ValueError, match="not a read"):
        centre.read(21)
    with pytest.raises(ValueError, match="at least one system"):
        centre.read(61, [])


# --- control socket and CLI ------------------------------------------------------------------


def test_control_socket_drives_the_centre_and_survives_bad_requests(
    centre: Centre, tmp_path: Path
) -> None:
    control = CentreControl(centre, tmp_path / "c.sock").start()
    try:
        path = control.path
        assert request(path, {"do": "mode", "mode": "drop", "count": 2}) == {
            "ok": True,
            "mode": "drop",
        }
        state = request(path, {"do": "state"})["state"]
        assert (state["mode"], state["mode_left"], state["port"]) == ("drop", 2, centre.port)
        assert request(path, {"do": "duty-check"}) == {"ok": False, "error": "no UITD is connected"}
        assert not request(path, {"do": "mode", "mode": "ignore"})["ok"]
        assert not request(path, {"do": "read", "typeflag": "x"})["ok"]
        assert not request(path, {"do": "read"})["ok"]
        assert not request(path, {"do": "fly"})["ok"]
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(10)
            raw.connect(str(path))
            raw.sendall(b"not json\n[1]\n")
            with raw.makefile() as lines:
                replies = lines.readline(), lines.readline()
        assert all(json.loads(r)["ok"] is False for r in replies)
        assert request(path, {"do": "state"})["ok"]
    finally:
        control.close()


def test_cli_serves_and_is_driven_by_its_subcommands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "centre.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator.cli",
            "centre",
            "--socket",
            str(sock),
            "serve",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode().strip() for _ in range(3)]
        assert lines[1:] == [f"control at {sock}", "ready"]
        port = int(lines[0].rsplit(":", 1)[1])
        assert cli.main(["centre", "--socket", str(sock), "mode", "deny", "--count", "1"]) == 0
        assert json.loads(capsys.readouterr().out) == {"mode": "deny"}
        assert cli.main(["centre", "--socket", str(sock), "state"]) == 0
        assert f"port {port}  mode deny" in capsys.readouterr().out
        assert cli.main(["centre", "--socket", str(sock), "initialise"]) == cli.EXIT_REFUSED
        assert "no UITD" in capsys.readouterr().err
        assert (
            cli.main(["centre", "--socket", str(sock), "read", "62", "--object", "1:x"])
            == cli.EXIT_USAGE
        )
        u = Uitd(port, confirm_timeout_s=0.5)
        try:
            u.link.submit(fire())
            assert u.run_until(confirmed(1))  # denied once, then confirmed
        finally:
            u.close()
    finally:
        stop_process(proc)
    assert proc.returncode == 0
    assert cli.main(["centre", "--socket", str(sock), "state"]) == cli.EXIT_UNREACHABLE


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    with Centre(tls=server) as c:
        u = Uitd(c.port, wrap=lambda s: client.wrap_socket(s, server_hostname="127.0.0.1"))
        try:
            u.link.submit(fire())
            assert u.run_until(confirmed(1))
        finally:
            u.close()
    assert data_in(c.records)[0]["objects"][0]["type"] == "ComponentState"
