"""The control socket's protocol: one client's requests, checked, answered, streamed.

docs/control-protocol.md is the contract: JSON lines, `{"id", "cmd", "args"}` in,
`{"id", "ok", "result" | "error"}` out, and for `events` with `follow` a stream of
`event` and `notice` lines until `end`. A session reads one connection's requests one
at a time and answers each from the target (the running agent's LocalView,
agent/views.py); agent/control.py owns the socket, the threads and the peers.

It must never let a client crash its thread or the agent: malformed, oversized or
hostile input gets an error answer (or the connection closed), and every exception
from the target becomes an error answer.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import math
import os
import pwd
import select
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from core.errors import AlarmgwError, FieldError, LineBusy, UnknownPoint

log = logging.getLogger("agent.control")

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024  # a request is a few hundred bytes; anything near this is abuse
MAX_EVENTS_LIMIT = 1000
_SEND_TIMEOUT_S = 10.0  # a client that stops reading is dropped, not waited on
_FOLLOW_POLL_S = 0.25  # how often a follow stream checks for disconnect and shutdown


class _RequestError(Exception):
    """Internal: a request that gets an error answer with this code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


# --- what the runtime provides ------------------------------------------------


class EventSubscription(Protocol):
    """New events for one follower, in the order they were stored."""

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        """The next new event, or None if none arrived within timeout_s."""
        ...

    def take_missed(self) -> int:
        """How many events this follower lost since the last call (it was too slow)."""
        ...

    def close(self) -> None: ...


class ControlTarget(Protocol):
    """What the running agent answers. Called from several client threads at once,
    so every method must be thread-safe; each may raise AlarmgwError subclasses
    (UnknownPoint, FieldError...), which become typed error answers."""

    def status(self) -> dict[str, Any]: ...

    def devices(self) -> list[dict[str, Any]]: ...

    def events(self, since_seq: int | None, limit: int) -> list[dict[str, Any]]:
        """Stored events, oldest first: those with seq > since_seq, or the latest `limit`."""
        ...

    def subscribe_events(self) -> EventSubscription: ...

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """A live read; `gave_up()` turns true once the client has hung up, so a read
        still waiting for its line is dropped instead of run for nobody."""
        ...

    def test_alarm(self, requested_by: str) -> dict[str, Any]: ...

    def silence(self) -> dict[str, Any]: ...

    def ack(self, answered_by: str) -> dict[str, Any]: ...  # answers the duty check

    def buffer(self) -> dict[str, Any]: ...

    def selftest(self, requested_by: str) -> dict[str, Any]: ...

    def selfcheck_points(self) -> dict[str, Any]: ...

    def selfcheck_testing(self, device: str, point: str, seconds: float) -> dict[str, Any]: ...

    def selfcheck_report(self, report: dict[str, Any], handed_in_by: str) -> dict[str, Any]: ...

    def selfcheck_reports(self, limit: int) -> dict[str, Any]: ...


# --- wire format --------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: enums by value, paths as text, NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    elif isinstance(value, Path):
        value = str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def encode_line(message: dict[str, Any]) -> bytes:
    return (
        json.dumps(_jsonable(message), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    )


def _error(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


# --- request validation -------------------------------------------------------


def _parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """-> (id, cmd, args); raises _RequestError. The id is echoed only if it is sane."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # Recursion: [[[[...
        raise _RequestError("bad_json", f"not a JSON object: {exc!s:.200}") from None
    if not isinstance(request, dict):
        raise _RequestError("bad_request", "a request is a JSON object")
    request_id = request.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, int | str)
    ):
        raise _RequestError("bad_request", "id must be an integer or a string")
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise _RequestError("bad_request", "cmd must be a string")
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise _RequestError("bad_request", "args must be an object")
    unknown = set(request) - {"id", "cmd", "args"}
    if unknown:
        raise _RequestError("bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    return request_id, cmd, args


def _check_args(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise _RequestError("bad_argument", f"unknown argument(s): {', '.join(sorted(unknown))}")


def _int_arg(args: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = args.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _RequestError("bad_argument", f"{name} must be an integer in {lo}..{hi}")
    return value


def _str_arg(args: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise _RequestError("bad_argument", f"{name} must be a non-empty string")
    return value


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is on the other end, from the kernel (SO_PEERCRED), not from the client."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def _peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class ClientSession:
    """Reads request lines from one connection and answers them, one at a time."""

    def __init__(
        self,
        conn: socket.socket,
        peer: Peer,
        target: ControlTarget,
        stopping: threading.Event,
        idle_timeout_s: float,
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.target = target
        self._stopping = stopping  # the server is closing
        self._idle_timeout_s = idle_timeout_s
        self._pending = b""

    def run(self) -> None:
        while not self._stopping.is_set():
            line = self._read_line()
            if line is None:
                return
            if not line.strip():
                continue
            if not self._answer(line):
                return

    def _read_line(self) -> bytes | None:
        """The next request line, or None when the client is gone or must be dropped."""
        self.conn.settimeout(self._idle_timeout_s)
        while b"\n" not in self._pending:
            if len(self._pending) > MAX_LINE_BYTES:
                self._send(
                    _error(None, "request_too_large", f"a line is at most {MAX_LINE_BYTES} bytes")
                )
                return None
            try:
                chunk = self.conn.recv(16384)
            except OSError:
                return None  # idle timeout, reset, or shut down by close()
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        if len(line) > MAX_LINE_BYTES:
            self._send(
                _error(None, "request_too_large", f"a line is at most {MAX_LINE_BYTES} bytes")
            )
            return None
        return line

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            data = encode_line(message)
        except (TypeError, ValueError):
            log.exception("control answer not serialisable")
            data = encode_line(_error(message.get("id"), "internal", "answer not serialisable"))
        self.conn.settimeout(_SEND_TIMEOUT_S)
        try:
            self.conn.sendall(data)
        except OSError:
            return False
        return True

    def _answer(self, line: bytes) -> bool:
        """Answer one request; False when the connection should end."""
        request_id: Any = None
        try:
            request_id, cmd, args = _parse_request(line)
            if cmd == "events" and args.get("follow") is True:
                return self._follow(request_id, args)
            result = self._dispatch(cmd, args)
        except Exception as exc:  # noqa: BLE001 - every failure is an answer, never a dead server
            code, message = _error_code(exc)
            return self._send(_error(request_id, code, message))
        return self._send({"id": request_id, "ok": True, "result": result})

    def _dispatch(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = _COMMANDS.get(cmd)
        if handler is None:
            known = ", ".join(sorted(_COMMANDS))
            raise _RequestError("unknown_command", f"unknown command {cmd!r}; known: {known}")
        return handler(self, args)

    # commands

    def cmd_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        return {"pong": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid()}

    def cmd_status(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        return self.target.status()

    def cmd_devices(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        return {"devices": self.target.devices()}

    def cmd_events(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"since_seq", "limit", "follow"})
        since_seq, limit = self._events_args(args)
        return {"events": self.target.events(since_seq, limit)}

    def cmd_read(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"device", "point"})
        device = _str_arg(args, "device", required=True)
        assert device is not None
        point = _str_arg(args, "point", required=False)
        gave_up = functools.partial(self._client_hung_up, keep_input=True)
        return self.target.read_point(device, point, gave_up=gave_up)

    def cmd_test_alarm(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"requested_by"})
        tool = _str_arg(args, "requested_by", required=False) or "control"
        # Who asked is taken from the kernel, not from the request: it goes on record.
        requested_by = f"{tool}:{self.peer.user}"
        log.warning("test alarm requested by %s (pid %d)", requested_by, self.peer.pid)
        return self.target.test_alarm(requested_by)

    def cmd_silence(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        log.warning("local buzzer silenced by %s (pid %d)", self.peer.user, self.peer.pid)
        return self.target.silence()

    def cmd_ack(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        # who answered is taken from the kernel, as for a test alarm: it goes on record
        answered_by = f"cli:{self.peer.user}"
        log.warning("duty check answered by %s (pid %d)", answered_by, self.peer.pid)
        return self.target.ack(answered_by)

    def cmd_buffer(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        return self.target.buffer()

    def cmd_selftest(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        log.warning("self-test requested by %s (pid %d)", self.peer.user, self.peer.pid)
        return self.target.selftest(f"cli:{self.peer.user}")

    def cmd_selfcheck_points(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        return self.target.selfcheck_points()

    def cmd_selfcheck_testing(self, args: dict[str, Any]) -> dict[str, Any]:
        """The self-check's point under test now: its events are tests for `seconds`."""
        _check_args(args, {"device", "point", "seconds"})
        device = _str_arg(args, "device", required=True)
        point = _str_arg(args, "point", required=True)
        seconds = _int_arg(args, "seconds", None, 0, 3600)
        assert device is not None and point is not None
        if seconds is None:
            raise _RequestError("bad_argument", "seconds must be an integer in 0..3600")
        log.warning("self-check by %s: %s/%s under test for %d s", self.peer.user, device,
                    point, seconds)  # fmt: skip
        return self.target.selfcheck_testing(device, point, seconds)

    def cmd_selfcheck_report(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"report"})
        log.warning("self-check report handed in by %s (pid %d)", self.peer.user, self.peer.pid)
        report = args.get("report")
        if not isinstance(report, dict):
            raise _RequestError("bad_argument", "report must be an object")
        # who handed it in is taken from the kernel, beside the operator the person typed
        return self.target.selfcheck_report(report, self.peer.user)

    def cmd_selfcheck_reports(self, args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"limit"})
        limit = _int_arg(args, "limit", 20, 1, 100)
        assert limit is not None
        return self.target.selfcheck_reports(limit)

    @staticmethod
    def _events_args(args: dict[str, Any]) -> tuple[int | None, int]:
        since_seq = _int_arg(args, "since_seq", None, 0, 2**63 - 1)
        limit = _int_arg(args, "limit", 100, 0, MAX_EVENTS_LIMIT)
        assert limit is not None
        if "follow" in args and not isinstance(args["follow"], bool):
            raise _RequestError("bad_argument", "follow must be true or false")
        return since_seq, limit

    # streaming

    def _follow(self, request_id: Any, args: dict[str, Any]) -> bool:
        _check_args(args, {"since_seq", "limit", "follow"})
        since_seq, limit = self._events_args(args)
        # Subscribe before reading the backlog so nothing falls between the two;
        # events seen in both are skipped by seq.
        subscription = self.target.subscribe_events()
        try:
            if since_seq is None:
                backlog, skipped = self.target.events(None, limit), 0
            else:  # every event since since_seq, or the newest `limit` and say how many not
                after = self.target.events(since_seq, MAX_EVENTS_LIMIT)
                backlog = after[len(after) - limit :] if limit else []
                skipped = len(after) - len(backlog)
            if not self._send({"id": request_id, "ok": True, "result": {"events": backlog}}):
                return False
            if skipped and not self._send(
                {"id": request_id, "notice": {"code": "lagged", "missed": skipped}}
            ):
                return False
            last_seq = max((_seq_of(e) for e in backlog), default=-1)
            return self._stream(request_id, subscription, last_seq)
        finally:
            subscription.close()

    def _stream(self, request_id: Any, subscription: EventSubscription, last_seq: int) -> bool:
        while not self._stopping.is_set():
            if self._client_hung_up():
                break  # the client left, or close() shut our reading side
            event = subscription.next_event(_FOLLOW_POLL_S)
            missed = subscription.take_missed()
            if missed and not self._send(
                {"id": request_id, "notice": {"code": "lagged", "missed": missed}}
            ):
                return False
            if event is None or _seq_of(event) <= last_seq:
                continue
            if not self._send({"id": request_id, "event": event}):
                return False
        if self._stopping.is_set():
            self._send({"id": request_id, "end": {"reason": "shutdown"}})
        return False

    def _client_hung_up(self, *, keep_input: bool = False) -> bool:
        """True once the client closed its end. Bytes it sent meanwhile are ignored (during
        a stream), or left for its next request (`keep_input`, while a read waits)."""
        readable, _, _ = select.select([self.conn], [], [], 0)
        if not readable:
            return False
        try:
            if keep_input:
                return not self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return not self.conn.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True


def _error_code(exc: Exception) -> tuple[str, str]:
    """The protocol's error code and message for an exception from parsing or the target."""
    if isinstance(exc, _RequestError):
        return exc.code, exc.message
    if isinstance(exc, UnknownPoint):
        return "unknown_point", str(exc)
    if isinstance(exc, LineBusy):
        return "busy", str(exc)
    if isinstance(exc, FieldError):
        return "field_error", f"{exc.reason}: {exc}"
    if isinstance(exc, AlarmgwError):
        return "agent_error", f"{type(exc).__name__}: {exc}"
    log.error("control command failed", exc_info=exc)
    return "internal", f"{type(exc).__name__}: {exc}"


def _seq_of(event: dict[str, Any]) -> int:
    seq = event.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


_Handler = Callable[[ClientSession, dict[str, Any]], dict[str, Any]]
_COMMANDS: dict[str, _Handler] = {
    "ping": ClientSession.cmd_ping,
    "status": ClientSession.cmd_status,
    "devices": ClientSession.cmd_devices,
    "events": ClientSession.cmd_events,
    "read": ClientSession.cmd_read,
    "test_alarm": ClientSession.cmd_test_alarm,
    "silence": ClientSession.cmd_silence,
    "ack": ClientSession.cmd_ack,
    "buffer": ClientSession.cmd_buffer,
    "selftest": ClientSession.cmd_selftest,
    "selfcheck_points": ClientSession.cmd_selfcheck_points,
    "selfcheck_testing": ClientSession.cmd_selfcheck_testing,
    "selfcheck_report": ClientSession.cmd_selfcheck_report,
    "selfcheck_reports": ClientSession.cmd_selfcheck_reports,
}
