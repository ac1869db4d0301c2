"""The CLI's end of the local control socket (agent/control.py serves the other end).

One connection per call: send one JSON line, read the answer (or, for `events
--follow`, a stream of lines until the agent ends it). docs/control-protocol.md is
the contract. Every way the agent can be out of reach is a typed error the CLI
turns into an exit code: not running (69), no permission (77), an error answer (1).

It must never hang on an agent that stopped answering (every answer is bounded by
`timeout_s`, except a follow on a quiet site) and never trust an answer's size.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from core.errors import AlarmgwError

DEFAULT_SOCKET: Final = Path("/run/alarmgw/control.sock")
MAX_ANSWER_BYTES: Final = 16 * 1024 * 1024


class AgentNotRunning(AlarmgwError):
    """No agent answers on the control socket (missing file or connection refused)."""


class ControlAccessDenied(AlarmgwError):
    """The socket exists but this user may not open it (not root, not in the group)."""


class ControlError(AlarmgwError):
    """The agent answered a request with an error, or the answer was unreadable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def _send_request(sock: socket.socket, cmd: str, args: dict[str, Any]) -> None:
    """A full agent answers `busy` and hangs up at once: the request may then meet a
    closed socket, but the answer is already waiting to be read, so read it."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        request = json.dumps({"id": 1, "cmd": cmd, "args": args}, ensure_ascii=False)
        sock.sendall(request.encode() + b"\n")


def _ask(sock: socket.socket, cmd: str, args: dict[str, Any]) -> tuple[_LineReader, dict[str, Any]]:
    """Send one request and read its first answer; the reader goes on for a stream."""
    reader = _LineReader(sock)
    _send_request(sock, cmd, args)
    answer = reader.next_message()
    if answer is None:
        raise ControlError("no_answer", "the agent closed the connection without answering")
    return reader, answer


class ControlClient:
    """The CLI's end: one connection per call. `timeout_s` bounds each answer; a test
    alarm waits for the buffer and perhaps the broker, so keep it above that wait."""

    def __init__(self, path: Path = DEFAULT_SOCKET, timeout_s: float = 15.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; its result, or ControlError for an error answer."""
        with self._connect() as sock:
            _, answer = _ask(sock, cmd, args)
            return _result_of(answer)

    def stream(self, cmd: str, **args: Any) -> Iterator[dict[str, Any]]:
        """Send a streaming command (`events` with follow=True is the one there is) and
        yield each message: first {"result": ...}, then {"event": ...} or
        {"notice": ...} lines until the agent ends the stream or the caller stops."""
        with self._connect() as sock:
            reader, first = _ask(sock, cmd, args)
            yield {"result": _result_of(first)}
            sock.settimeout(None)  # a quiet site may send no event for hours
            while (message := reader.next_message()) is not None:
                if "end" in message:
                    end = message["end"]
                    reason = end.get("reason", "?") if isinstance(end, dict) else end
                    raise AgentNotRunning(f"the agent ended the stream ({reason})")
                yield {k: v for k, v in message.items() if k != "id"}
            # not Ctrl-C, not an end message: the agent died or was killed (watchdog?)
            raise AgentNotRunning("the agent closed the stream without a word")

    def open_stream(self, cmd: str, **args: Any) -> OpenStream:
        """Like `stream`, as an object another thread may `close()` while it waits (the
        self-check watches events while it talks to the technician)."""
        sock = self._connect()
        try:
            reader, first = _ask(sock, cmd, args)
            result = _result_of(first)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return OpenStream(sock, reader, result)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise AgentNotRunning(f"no agent answers on {self.path}: {exc.strerror}") from exc
        except PermissionError as exc:
            sock.close()
            raise ControlAccessDenied(
                f"no permission to open {self.path}: run as root or join the service group"
            ) from exc
        except OSError as exc:
            sock.close()
            raise AgentNotRunning(f"cannot reach the agent on {self.path}: {exc}") from exc
        return sock


class OpenStream:
    """A stream's first result, then its messages (`messages()`), until `close()`."""

    def __init__(self, sock: socket.socket, reader: _LineReader, result: dict[str, Any]) -> None:
        self._sock = sock
        self._reader = reader
        self.result = result

    def messages(self) -> Iterator[dict[str, Any]]:
        """Each later message; ends quietly when closed or when the agent ends it."""
        while True:
            try:
                message = self._reader.next_message()
            except ControlError:
                return  # closed under us, or the agent went away: the caller sees the end
            if message is None or "end" in message:
                return
            yield {k: v for k, v in message.items() if k != "id"}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
        self._sock.close()


def _result_of(answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("ok") is True and isinstance(answer.get("result"), dict):
        result: dict[str, Any] = answer["result"]
        return result
    error = answer.get("error")
    if isinstance(error, dict):
        raise ControlError(str(error.get("code", "error")), str(error.get("message", "")))
    raise ControlError("bad_answer", f"unexpected answer: {answer!r}"[:300])


class _LineReader:
    """JSON lines from a socket, with the same size bound the server applies."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = b""

    def next_message(self) -> dict[str, Any] | None:
        while b"\n" not in self._pending:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise ControlError("timeout", "the agent did not answer in time") from None
            except OSError as exc:
                raise ControlError("connection_lost", str(exc)) from exc
            if not chunk:
                return None
            self._pending += chunk
            if len(self._pending) > MAX_ANSWER_BYTES:
                raise ControlError("bad_answer", "answer line too long")
        line, self._pending = self._pending.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ControlError("bad_answer", f"unreadable answer: {exc}") from None
        if not isinstance(message, dict):
            raise ControlError("bad_answer", "answer is not a JSON object")
        return message
