"""The control socket, as the technician's CLI meets it: a real Unix socket in
tmp_path, a server thread per client, and a working fake agent behind it
(real events with seqs, a device that can be made slow, a live event feed)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.client import (
    AgentNotRunning,
    ControlClient,
    ControlError,
    _LineReader,
    _send_request,
)
from agent.control import ControlServer, ControlSetupError
from agent.control_protocol import MAX_LINE_BYTES, _error, encode_line
from agent.fanout import EventFanout, FanoutSubscription
from core.errors import FieldTimeout, UnknownPoint
from tests.waiting import wait_until


class FakeAgent:
    """A small working agent: stored events with seqs, devices with points, a buzzer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stored: list[dict[str, Any]] = []
        self.fanout = EventFanout(queue_size=50)
        self.silenced = False
        self.slow_release = threading.Event()
        self.slow_entered = threading.Event()
        self.points = {
            "efd-1": {"ch1_leak": (312, "mA"), "ch1_temp": (41.5, "°C")},
            "gas-1": {"lel": (3.0, "%LEL")},
        }
        for n in range(5):
            self.store({"kind": "state", "device": "exit-door-1", "text": f"门 {n}"})

    def store(self, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            stored = {**event, "seq": len(self.stored) + 1}
            self.stored.append(stored)
        self.fanout.publish(stored)
        return stored

    # ControlTarget

    def status(self) -> dict[str, Any]:
        return {"uplink": "down", "buffer_depth": len(self.stored), "site": "福田区第一养老院"}

    def devices(self) -> list[dict[str, Any]]:
        return [{"id": d, "comm": "ok", "points": len(p)} for d, p in self.points.items()]

    def events(self, since_seq: int | None, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            if since_seq is None:
                return list(self.stored[-limit:]) if limit else []
            return [e for e in self.stored if e["seq"] > since_seq][:limit]

    def subscribe_events(self) -> FanoutSubscription:
        return self.fanout.subscribe()

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        if device == "slow":
            self.slow_entered.set()
            if not self.slow_release.wait(10):
                raise FieldTimeout("slow device never answered")
            return {"device": "slow", "values": {}}
        if device == "dead":
            raise FieldTimeout("no answer from unit 9 after 2 tries")
        if device == "broken":
            raise RuntimeError("bug in the runtime")
        if device == "nan":
            return {"device": "nan", "values": {"x": float("nan")}, "at": Path("/x")}
        if device == "weird":
            return {"device": "weird", "values": {"x": object()}}
        if device not in self.points or (point and point not in self.points[device]):
            raise UnknownPoint(f"no such device/point: {device}/{point}")
        names = [point] if point else sorted(self.points[device])
        values = {
            n: {"value": self.points[device][n][0], "unit": self.points[device][n][1]}
            for n in names
        }
        return {"device": device, "values": values}

    def test_alarm(self, requested_by: str) -> dict[str, Any]:
        stored = self.store({"kind": "test", "test": True, "text": f"test by {requested_by}"})
        return {"seq": stored["seq"], "requested_by": requested_by, "broker_acked": False}

    def silence(self) -> dict[str, Any]:
        self.silenced = True
        return {"silenced": True}

    def buffer(self) -> dict[str, Any]:
        return {"depth": len(self.stored), "oldest_age_s": 12.5, "degraded": False}


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can come close.
    assert len(str(tmp_path / "control.sock")) < 100
    return tmp_path / "control.sock"


@pytest.fixture
def server(sock_path: Path, agent: FakeAgent) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, agent)
    srv.start()
    try:
        yield srv
    finally:
        agent.slow_release.set()
        srv.close()


@pytest.fixture
def client(server: ControlServer) -> ControlClient:
    return ControlClient(server.path, timeout_s=5.0)


class RawConn:
    """A hand-driven connection for the malformed-input cases."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_message(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, data: bytes) -> dict[str, Any] | None:
        self.send(data)
        return self.recv_message()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: ControlServer) -> Iterator[RawConn]:
    conn = RawConn(server.path)
    try:
        yield conn
    finally:
        conn.close()


# --- each command -------------------------------------------------------------


def test_read_only_commands_answer_with_the_agents_data(client: ControlClient) -> None:
    assert client.call("ping")["pong"] is True
    assert client.call("status") == {
        "uplink": "down",
        "buffer_depth": 5,
        "site": "福田区第一养老院",
    }
    devices = client.call("devices")["devices"]
    assert [d["id"] for d in devices] == ["efd-1", "gas-1"]
    assert client.call("buffer")["oldest_age_s"] == 12.5


def test_events_recent_and_since(client: ControlClient) -> None:
    assert [e["seq"] for e in client.call("events", limit=2)["events"]] == [4, 5]
    assert [e["seq"] for e in client.call("events", since_seq=2, limit=10)["events"]] == [3, 4, 5]
    assert client.call("events")["events"][0]["text"] == "门 0"  # UTF-8 survives the trip


def test_read_point_and_unknown_point(client: ControlClient) -> None:
    result = client.call("read", device="efd-1", point="ch1_leak")
    assert result == {"device": "efd-1", "values": {"ch1_leak": {"value": 312, "unit": "mA"}}}
    assert set(client.call("read", device="efd-1")["values"]) == {"ch1_leak", "ch1_temp"}
    with pytest.raises(ControlError) as err:
        client.call("read", device="efd-1", point="nope")
    assert err.value.code == "unknown_point"
    with pytest.raises(ControlError) as err:
        client.call("read", device="dead")
    assert err.value.code == "field_error"
    assert "timeout" in err.value.message


def test_test_alarm_is_stored_and_names_the_peer_from_the_kernel(
    client: ControlClient, agent: FakeAgent
) -> None:
    result = client.call("test_alarm", requested_by="cli")
    me = pwd.getpwuid(os.getuid()).pw_name
    assert result["requested_by"] == f"cli:{me}"
    assert agent.stored[-1]["seq"] == result["seq"] == 6
    assert agent.stored[-1]["test"] is True


def test_silence(client: ControlClient, agent: FakeAgent) -> None:
    assert client.call("silence") == {"silenced": True}
    assert agent.silenced


def test_target_bug_is_an_internal_error_and_the_server_lives_on(client: ControlClient) -> None:
    with pytest.raises(ControlError) as err:
        client.call("read", device="broken")
    assert err.value.code == "internal"
    assert "RuntimeError" in err.value.message
    assert client.call("ping")["pong"] is True


def test_results_are_strict_json(client: ControlClient, raw: RawConn) -> None:
    # NaN is not JSON: it goes out as null; a Path as text.
    answer = raw.ask(b'{"id":3,"cmd":"read","args":{"device":"nan"}}\n')
    assert answer == {
        "id": 3,
        "ok": True,
        "result": {"device": "nan", "values": {"x": None}, "at": "/x"},
    }
    with pytest.raises(ControlError) as err:
        client.call("read", device="weird")
    assert err.value.code == "internal"


# --- malformed and oversized input ---------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json at all", "bad_json"),
        (b"\xff\xfe\xfd", "bad_json"),
        (b"[1, 2, 3]", "bad_request"),
        (b'"status"', "bad_request"),
        (b'{"id": 1}', "bad_request"),
        (b'{"id": 1, "cmd": 7}', "bad_request"),
        (b'{"id": true, "cmd": "status"}', "bad_request"),
        (b'{"id": 1, "cmd": "status", "args": [1]}', "bad_request"),
        (b'{"id": 1, "cmd": "status", "extra": 1}', "bad_request"),
        (b'{"id": 1, "cmd": "reboot"}', "unknown_command"),
        (b'{"id": 1, "cmd": "status", "args": {"x": 1}}', "bad_argument"),
        (b'{"id": 1, "cmd": "events", "args": {"limit": -1}}', "bad_argument"),
        (b'{"id": 1, "cmd": "events", "args": {"limit": 100000}}', "bad_argument"),
        (b'{"id": 1, "cmd": "events", "args": {"since_seq": "5"}}', "bad_argument"),
        (b'{"id": 1, "cmd": "events", "args": {"follow": "yes"}}', "bad_argument"),
        (b'{"id": 1, "cmd": "read", "args": {}}', "bad_argument"),
        (b'{"id": 1, "cmd": "read", "args": {"device": 5}}', "bad_argument"),
        (b"[" * 50_000, "bad_json"),  # nested past Python's recursion limit
    ],
)
def test_malformed_request_gets_an_error_and_the_connection_survives(
    raw: RawConn, line: bytes, code: str
) -> None:
    answer = raw.ask(line + b"\n")
    assert answer is not None
    assert answer["ok"] is False
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]
    again = raw.ask(b'{"id": "next", "cmd": "ping"}\n')
    assert again is not None
    assert again["id"] == "next"
    assert again["ok"] is True


def test_ids_are_echoed_and_blank_lines_ignored(raw: RawConn) -> None:
    raw.send(b'\n\n{"id": 41, "cmd": "ping"}\n{"id": "b", "cmd": "status"}\n')
    first, second = raw.recv_message(), raw.recv_message()
    assert first is not None and first["id"] == 41
    assert second is not None and second["id"] == "b"


def test_oversized_line_is_refused_and_others_still_served(
    server: ControlServer, raw: RawConn, client: ControlClient
) -> None:
    junk = b"x" * (MAX_LINE_BYTES + 4096)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        raw.send(junk)
    answer = raw.recv_message()
    assert answer is not None
    assert answer["error"]["code"] == "request_too_large"
    assert raw.recv_message() is None  # and the server hung up
    assert client.call("ping")["pong"] is True


def test_oversized_line_with_newline_is_refused(raw: RawConn) -> None:
    line = b'{"id":1,"cmd":"status","pad":"' + b"y" * MAX_LINE_BYTES + b'"}\n'
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        raw.send(line)
    answer = raw.recv_message()
    assert answer is not None
    assert answer["error"]["code"] == "request_too_large"


def test_idle_client_is_dropped(sock_path: Path, agent: FakeAgent) -> None:
    with ControlServer(sock_path, agent, idle_timeout_s=0.3) as srv:
        conn = RawConn(srv.path)
        try:
            t0 = time.monotonic()
            assert conn.recv_message() is None
            assert time.monotonic() - t0 < 3.0
        finally:
            conn.close()


# --- streaming -------------------------------------------------------------------


def test_follow_sends_backlog_then_each_new_event(client: ControlClient, agent: FakeAgent) -> None:
    stream = client.stream("events", follow=True, since_seq=3)
    try:
        first = next(stream)
        assert [e["seq"] for e in first["result"]["events"]] == [4, 5]
        # The subscription was made before the backlog was answered: nothing can fall between.
        agent.store({"kind": "alarm", "device": "efd-1", "text": "剩余电流报警"})
        agent.store({"kind": "restore", "device": "efd-1", "text": "恢复"})
        got = [next(stream), next(stream)]
        assert [m["event"]["seq"] for m in got] == [6, 7]
        assert got[0]["event"]["text"] == "剩余电流报警"
    finally:
        stream.close()


def test_follow_ends_server_side_when_client_leaves(
    client: ControlClient, agent: FakeAgent, server: ControlServer
) -> None:
    stream = client.stream("events", follow=True, limit=0)
    assert next(stream) == {"result": {"events": []}}
    assert agent.fanout.subscriber_count() == 1
    stream.close()
    assert wait_until(lambda: agent.fanout.subscriber_count() == 0)
    assert wait_until(lambda: server.client_count() == 0)


def test_follow_gets_end_when_server_closes(sock_path: Path, agent: FakeAgent) -> None:
    srv = ControlServer(sock_path, agent)
    srv.start()
    stream = ControlClient(sock_path, timeout_s=5).stream("events", follow=True, limit=1)
    try:
        next(stream)
        closer = threading.Thread(target=srv.close)
        closer.start()
        # the server's "end" says why; the CLI exits 69 with it instead of a silent 0
        with pytest.raises(AgentNotRunning, match="shutdown"):
            next(stream)
        closer.join()
    finally:
        stream.close()
        srv.close()
    assert not sock_path.exists()


def test_follow_from_an_old_seq_says_how_many_it_left_out(
    client: ControlClient, agent: FakeAgent
) -> None:
    """--follow --since 0 --limit 2 with 5 stored: the 2 newest, and a notice for the 3
    between since_seq and them (they used to vanish without a word)."""
    stream = client.stream("events", follow=True, since_seq=0, limit=2)
    try:
        first = next(stream)
        assert [e["seq"] for e in first["result"]["events"]] == [4, 5]
        assert next(stream) == {"notice": {"code": "lagged", "missed": 3}}
        agent.store({"kind": "alarm", "device": "efd-1", "text": "剩余电流报警"})
        assert next(stream)["event"]["seq"] == 6
    finally:
        stream.close()


def test_an_agent_that_dies_mid_follow_is_not_a_quiet_end(sock_path: Path) -> None:
    """The peer closes without an "end" (the agent was killed): not a clean finish."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(1)
        sock_path.chmod(0o660)

        def agent_that_dies() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'{"id": 1, "ok": true, "result": {"events": []}}\n')

        dying = threading.Thread(target=agent_that_dies)
        dying.start()
        stream = ControlClient(sock_path, timeout_s=5).stream("events", follow=True)
        try:
            assert next(stream) == {"result": {"events": []}}
            with pytest.raises(AgentNotRunning, match="without a word"):
                next(stream)
        finally:
            stream.close()
            dying.join()


def test_slow_follower_is_told_how_many_it_missed() -> None:
    fanout = EventFanout(queue_size=3)
    sub = fanout.subscribe()
    for seq in range(1, 6):
        fanout.publish({"seq": seq})
    assert sub.take_missed() == 2
    assert [sub.next_event(0.1)["seq"] for _ in range(3)] == [3, 4, 5]  # type: ignore[index]
    assert sub.next_event(0.05) is None
    sub.close()
    assert fanout.subscriber_count() == 0


class LaggingSubscription:
    """A follower that fell behind: 8 events were lost before these two arrived."""

    def __init__(self) -> None:
        self.pending = [{"seq": 108}, {"seq": 109}]
        self.missed = 8
        self.closed = threading.Event()

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        if self.pending:
            return self.pending.pop(0)
        self.closed.wait(timeout_s)
        return None

    def take_missed(self) -> int:
        missed, self.missed = self.missed, 0
        return missed

    def close(self) -> None:
        self.closed.set()


def test_lag_notice_reaches_the_client(sock_path: Path, agent: FakeAgent) -> None:
    lagging = LaggingSubscription()
    agent.subscribe_events = lambda: lagging  # type: ignore[assignment,method-assign,return-value]
    with ControlServer(sock_path, agent) as srv:
        stream = ControlClient(srv.path, timeout_s=5).stream("events", follow=True, limit=0)
        try:
            next(stream)
            messages = [next(stream) for _ in range(3)]
            assert messages[0] == {"notice": {"code": "lagged", "missed": 8}}
            assert [m["event"]["seq"] for m in messages[1:]] == [108, 109]
        finally:
            stream.close()
    assert lagging.closed.is_set()


# --- concurrency -------------------------------------------------------------------


def test_concurrent_clients_each_get_their_own_answers(client: ControlClient) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                seq = client.call("events", since_seq=i % 5, limit=10)["events"][0]["seq"]
                assert seq == i % 5 + 1
                assert client.call("read", device="gas-1")["values"]["lel"]["value"] == 3.0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_slow_read_does_not_block_other_clients(client: ControlClient, agent: FakeAgent) -> None:
    result: dict[str, Any] = {}
    slow = threading.Thread(target=lambda: result.update(client.call("read", device="slow")))
    slow.start()
    try:
        assert agent.slow_entered.wait(5)
        t0 = time.monotonic()
        assert client.call("status")["uplink"] == "down"
        assert time.monotonic() - t0 < 1.0
    finally:
        agent.slow_release.set()
        slow.join()
    assert result == {"device": "slow", "values": {}}


def test_too_many_clients_get_busy(sock_path: Path, agent: FakeAgent) -> None:
    with ControlServer(sock_path, agent, max_clients=2) as srv:
        held = [RawConn(srv.path), RawConn(srv.path)]
        try:
            for conn in held:  # make sure both are admitted before the third arrives
                assert conn.ask(b'{"cmd":"ping"}\n') is not None
            extra = RawConn(srv.path)
            try:
                answer = extra.recv_message()
                assert answer is not None
                assert answer["error"]["code"] == "busy"
            finally:
                extra.close()
        finally:
            for conn in held:
                conn.close()
        assert wait_until(lambda: srv.client_count() == 0)
        assert ControlClient(srv.path).call("ping")["pong"] is True


def test_a_request_that_meets_a_busy_agent_already_gone_still_reads_its_answer() -> None:
    """The busy agent answers and hangs up at once; when the CLI's request comes after
    that, sending it fails (EPIPE). That was a BrokenPipeError traceback; the answer is
    waiting to be read, and it says busy."""
    agent_end, cli_end = socket.socketpair()
    agent_end.sendall(encode_line(_error(None, "busy", "too many control clients")))
    agent_end.close()
    with cli_end:
        _send_request(cli_end, "ping", {})
        answer = _LineReader(cli_end).next_message()
    assert answer is not None and answer["error"]["code"] == "busy"


# --- the socket file ----------------------------------------------------------------


def test_socket_is_0660_and_owned_by_the_group(sock_path: Path, agent: FakeAgent) -> None:
    group = grp.getgrgid(os.getgid()).gr_name if os.getuid() != 0 else "dialout"
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"group {group} does not exist on this machine")
    with ControlServer(sock_path, agent, group=group):
        st = sock_path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
        assert [p.name for p in sock_path.parent.iterdir()] == ["control.sock"]  # no temp left


def test_unknown_group_is_a_setup_error(sock_path: Path, agent: FakeAgent) -> None:
    with pytest.raises(ControlSetupError, match="no-such-group-xyz"):
        ControlServer(sock_path, agent, group="no-such-group-xyz")


def test_agent_not_running_when_socket_missing(tmp_path: Path) -> None:
    with pytest.raises(AgentNotRunning):
        ControlClient(tmp_path / "missing.sock").call("status")


def test_stale_socket_is_not_running_then_replaced(sock_path: Path, agent: FakeAgent) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # what a killed agent leaves behind
    with pytest.raises(AgentNotRunning):
        ControlClient(sock_path).call("status")
    with ControlServer(sock_path, agent):
        assert ControlClient(sock_path).call("ping")["pong"] is True


def test_second_server_on_the_same_path_is_refused(server: ControlServer, agent: FakeAgent) -> None:
    with pytest.raises(ControlSetupError, match="already serving"):
        ControlServer(server.path, agent).start()
    assert ControlClient(server.path).call("ping")["pong"] is True


def test_a_regular_file_is_never_removed(sock_path: Path, agent: FakeAgent) -> None:
    sock_path.write_text("precious")
    with pytest.raises(ControlSetupError, match="not a socket"):
        ControlServer(sock_path, agent).start()
    assert sock_path.read_text() == "precious"


@pytest.mark.slow
def test_close_does_not_wait_for_a_client_that_never_reads(
    sock_path: Path, agent: FakeAgent
) -> None:
    """Its answers fill the socket and its thread blocks in sendall; close() must cut it off
    after a short grace, not after the client's 10 s timeout (shutdown has 20 s in all)."""
    srv = ControlServer(sock_path, agent)
    srv.start()
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(sock_path))
    hog.setblocking(False)
    sent = 0
    try:
        # requests until the server stops taking them: its answers, never read, fill the
        # socket and its thread blocks in sendall (a full send buffer is the event)
        request = b'{"id": 1, "cmd": "status"}\n'
        progress = time.monotonic()
        while time.monotonic() - progress < 0.5:  # half a second without taking a byte
            try:
                sent += hog.send(request)
                progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)  # the server may still be answering: let it fill up
        assert sent > 0 and srv.client_count() == 1
        closer = threading.Thread(target=srv.close)
        closer.start()
        closer.join(timeout=5.0)
        assert not closer.is_alive(), "close() waited for a client that does not read"
    finally:
        hog.close()
        srv.close()
