"""The running simulator's control socket: JSON lines, one request and one reply each.

Requests are stimuli (`{"do": "state", "device": ..., ...}`) or `{"do": "get-state"}`;
replies are `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. It is how a
technician (the CLI) or a test drives a simulator running in another process.
It must never let one bad request take the simulator down.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from simulator.devices import SimulatorError
from simulator.listener import SocketServer
from simulator.world import Simulator


class ControlServer:
    def __init__(self, sim: Simulator, path: Path) -> None:
        self.sim = sim
        self.path = Path(path)
        self._server: SocketServer | None = None

    def start(self) -> ControlServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(4)
        self._server = SocketServer(sock, self._serve, "sim-control")
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                conn.sendall((json.dumps(self.answer(line), ensure_ascii=False) + "\n").encode())

    def answer(self, line: str) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise SimulatorError("a request is a JSON object")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        if request.get("do") == "get-state":
            return {"ok": True, "state": self.sim.state()}
        try:
            return {"ok": True, "logged": self.sim.apply(request, source="control")}
        except SimulatorError as exc:
            return {"ok": False, "error": str(exc)}


class SimulatorUnreachable(OSError):
    """No simulator answers on the control socket."""


def call(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running simulator and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise SimulatorUnreachable(
                f"no simulator on {path} ({exc.strerror}); start one with `alarmgw-sim run`"
            ) from None
        sock.sendall((json.dumps(request) + "\n").encode())
        with sock.makefile("r", encoding="utf-8") as replies:
            line = replies.readline()
    if not line:
        raise SimulatorUnreachable(f"the simulator on {path} closed the connection")
    reply: dict[str, Any] = json.loads(line)
    return reply
