"""Simulated GPIO: dry contacts and driven outputs, served to pin factories over a Unix socket.

The `GpioBoard` is the electrical truth: each input is a contact that, when
closed, ties its pin to a rail (ground by default); when open the pin reads
whatever pull the agent configured (floating reads 0). So a missing pull-up
in the agent's config shows up here as it would on a real board. Outputs keep
their state and a timestamped history.

The `GpioServer` speaks JSON lines with simulator/pinfactory.py. It must
never block the board on a slow client: edges are pushed best-effort.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.devices import SimulatorError, unknown
from simulator.listener import SocketServer

DEFAULT_GPIO_SOCKET = "/tmp/alarmgw-sim/gpio.sock"  # noqa: S108 - a rig path, overridable


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SimInput:
    """A contact on `pin`. `active` is the level the agent treats as active."""

    id: str
    pin: int
    active: str = "low"  # "low" or "high"
    rail: str = "gnd"  # what a closed contact ties the pin to: "gnd" or "3v3"
    is_active: bool = False  # the physical situation: door open, button pressed...

    @property
    def closed(self) -> bool:
        rail_level = 0 if self.rail == "gnd" else 1
        active_level = 0 if self.active == "low" else 1
        # Active means "at the active level": close the contact if the rail gives that level,
        # otherwise open it and let the pull resistor do it (tamper switches work this way).
        return self.is_active == (active_level == rail_level)


@dataclass
class SimOutput:
    id: str
    pin: int
    state: int | None = None  # None: not driven (not set up, or released)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=2000))

    def record(self, state: int | None) -> None:
        self.state = state
        self.history.append({"wall_ms": wall_ms(), "mono": time.monotonic(), "state": state})


@dataclass
class PinSetup:
    function: str = "input"
    pull: str = "floating"


class GpioBoard:
    """The simulated pins. `on_edge(pin, level, mono)` is called when an input level changes."""

    def __init__(self, inputs: list[SimInput], outputs: list[SimOutput]) -> None:
        self.inputs = {i.id: i for i in inputs}
        self.outputs = {o.id: o for o in outputs}
        self._outputs_by_pin = {o.pin: o for o in outputs}
        self._inputs_by_pin = {i.pin: i for i in inputs}
        self.setups: dict[int, PinSetup] = {}
        self.on_edge: Callable[[int, int, float], None] | None = None
        self._lock = threading.RLock()

    def level(self, pin: int) -> int:
        with self._lock:
            setup = self.setups.get(pin, PinSetup())
            contact = self._inputs_by_pin.get(pin)
            if contact is not None and contact.closed:
                return 0 if contact.rail == "gnd" else 1
            return 1 if setup.pull == "up" else 0

    def _changing(self, pin: int, change: Callable[[], None]) -> None:
        before = self.level(pin)
        change()
        after = self.level(pin)
        if after != before and self.on_edge is not None:
            self.on_edge(pin, after, time.monotonic())

    def set_input(self, input_id: str, active: bool) -> None:
        with self._lock:
            contact = self.inputs.get(input_id)
            if contact is None:
                raise unknown("input", input_id, list(self.inputs))

            def change() -> None:
                contact.is_active = active

            self._changing(contact.pin, change)

    def setup(self, pin: int, function: str, pull: str, state: int | None) -> int:
        """A pin factory configured `pin`; returns the level it now reads."""
        with self._lock:
            self.setups[pin] = PinSetup(function, pull)
            output = self._outputs_by_pin.get(pin)
            if function == "output":
                if output is None:
                    output = SimOutput(f"pin{pin}", pin)
                    self.outputs[output.id] = output
                    self._outputs_by_pin[pin] = output
                if state is not None and state != output.state:
                    output.record(state)
                return output.state or 0
            if output is not None and output.state is not None:
                output.record(None)  # an output turned back into an input no longer drives
            return self.level(pin)

    def drive(self, pin: int, state: int) -> None:
        with self._lock:
            output = self._outputs_by_pin.get(pin)
            if output is None or self.setups.get(pin, PinSetup()).function != "output":
                raise SimulatorError(f"pin {pin} is not set up as an output")
            if output.state != state:
                output.record(state)

    def release(self, pin: int) -> None:
        with self._lock:
            self.setups.pop(pin, None)
            output = self._outputs_by_pin.get(pin)
            if output is not None and output.state is not None:
                output.record(None)

    def output(self, output_id: str) -> SimOutput:
        if output_id not in self.outputs:
            raise unknown("output", output_id, list(self.outputs))
        return self.outputs[output_id]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            inputs = {
                i.id: {
                    "pin": i.pin,
                    "active": i.is_active,
                    "contact": "closed" if i.closed else "open",
                    "level": self.level(i.pin),
                    "pull": self.setups.get(i.pin, PinSetup()).pull,
                    "set_up": i.pin in self.setups,
                }
                for i in self.inputs.values()
            }
            outputs = {
                o.id: {"pin": o.pin, "state": o.state, "changes": len(o.history)}
                for o in self.outputs.values()
            }
            return {"inputs": inputs, "outputs": outputs}


class GpioServer:
    """Serves a GpioBoard on a Unix socket to any number of SimFactory clients."""

    def __init__(self, board: GpioBoard, path: str | Path) -> None:
        self.board = board
        self.path = Path(path)
        self._server: SocketServer | None = None
        self._send_locks: dict[socket.socket, threading.Lock] = {}  # one writer per client
        self._lock = threading.Lock()
        board.on_edge = self._push_edge

    def start(self) -> GpioServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o660)  # noqa: PTH101 - the socket, not a Path-like file
        sock.listen(8)
        self._server = SocketServer(sock, self._serve, "sim-gpio", on_accept=self._accepted)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            self._send_locks.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accepted(self, conn: socket.socket) -> None:
        with self._lock:
            self._send_locks[conn] = threading.Lock()

    def _send_lock(self, conn: socket.socket) -> threading.Lock:
        with self._lock:
            return self._send_locks.setdefault(conn, threading.Lock())

    def _push_edge(self, pin: int, level: int, mono: float) -> None:
        line = json.dumps({"ev": "edge", "pin": pin, "state": level, "ticks": mono}) + "\n"
        clients = self._server.clients() if self._server is not None else []
        for conn in clients:
            with self._send_lock(conn), contextlib.suppress(OSError):
                conn.sendall(line.encode())

    def _serve(self, conn: socket.socket) -> None:
        send_lock = self._send_lock(conn)
        claimed: set[int] = set()
        with contextlib.suppress(OSError), conn.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                reply = self._answer(line, claimed)
                with send_lock:
                    conn.sendall((json.dumps(reply) + "\n").encode())
        for pin in claimed:  # a client that went away no longer drives its pins
            self.board.release(pin)
        with self._lock:
            self._send_locks.pop(conn, None)

    def _answer(self, line: str, claimed: set[int]) -> dict[str, Any]:
        try:
            msg = json.loads(line)
        except ValueError as exc:
            return {"id": None, "error": f"bad JSON: {exc}"}
        req_id = msg.get("id") if isinstance(msg, dict) else None
        try:
            return {"id": req_id, **self._apply(msg, claimed)}
        except (ValueError, KeyError, TypeError, SimulatorError) as exc:
            return {"id": req_id, "error": str(exc)}

    def _apply(self, msg: dict[str, Any], claimed: set[int]) -> dict[str, Any]:
        op, pin = msg["op"], int(msg["pin"])
        if op == "setup":
            claimed.add(pin)
            function, pull = str(msg["function"]), str(msg.get("pull", "floating"))
            return {"state": self.board.setup(pin, function, pull, msg.get("state"))}
        if op == "write":
            self.board.drive(pin, 1 if msg["state"] else 0)
            return {}
        if op == "close":
            claimed.discard(pin)
            self.board.release(pin)
            return {}
        return {"error": f"unknown op {op!r}"}
