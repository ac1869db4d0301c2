"""A gpiozero pin factory whose pins live in a running `alarmgw-sim`, across processes.

Select it with GPIOZERO_PIN_FACTORY=alarmgw-sim (entry point
`gpiozero_pin_factories`); the socket path comes from ALARMGW_SIM_GPIO
(default /tmp/alarmgw-sim/gpio.sock). Input levels and edges are pushed by the
simulator and edge callbacks fire in this factory's own callback thread, as
with the real lgpio factory; outputs (buzzer, LED, gpiozero's blink thread)
are sent to the simulator synchronously, so it has seen a state change by the
time `pin.state = x` returns.

Code using gpiozero must never need to know it got this factory. This module
must never fall back silently: no simulator means BadPinFactory, loudly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import socket
import threading
import time
from typing import Any

from gpiozero.exc import (
    BadPinFactory,
    PinFixedPull,
    PinInvalidFunction,
    PinInvalidPull,
    PinPWMUnsupported,
    PinSetInput,
)
from gpiozero.pins.pi import PiFactory, PiPin

from simulator.gpio_server import DEFAULT_GPIO_SOCKET

REPLY_TIMEOUT_S = 5.0
_STOP = object()


class SimPin(PiPin):  # type: ignore[misc]
    """One pin of the simulated board; its truth is in the simulator."""

    def __init__(self, factory: SimFactory, info: Any) -> None:
        super().__init__(factory, info)
        self._function = "input"
        self._pull = info.pull or "floating"
        self._state = 0
        self._bounce: float | None = None
        self._edges = "both"
        self._last_edge: float | None = None
        self._gpio = int(info.name[4:])
        self._state = self._setup("input", self._pull)

    def _setup(self, function: str, pull: str, state: int | None = None) -> int:
        msg: dict[str, Any] = {"op": "setup", "pin": self._gpio, "function": function}
        msg["pull"] = pull
        if state is not None:
            msg["state"] = state
        return int(self._factory.request(msg)["state"])

    def close(self) -> None:
        self.when_changed = None
        with contextlib.suppress(OSError, BadPinFactory):
            self._factory.request({"op": "close", "pin": self._gpio})
        self._function = "input"

    def _get_function(self) -> str:
        return self._function

    def _set_function(self, value: str) -> None:
        if value not in ("input", "output"):
            raise PinInvalidFunction("function must be input or output")
        self._function = value
        self._state = self._setup(value, self._pull if value == "input" else "floating")

    def input_with_pull(self, pull: str) -> None:
        self._check_pull(pull)
        self._function, self._pull = "input", pull
        self._state = self._setup("input", pull)

    def output_with_state(self, state: Any) -> None:
        self._function = "output"
        self._state = self._setup("output", "floating", 1 if state else 0)

    def _get_state(self) -> int:
        return self._state

    def _set_state(self, value: Any) -> None:
        if self._function == "input":
            raise PinSetInput(f"cannot set state of pin {self!r}")
        level = 1 if value else 0
        self._factory.request({"op": "write", "pin": self._gpio, "state": level})
        self._state = level

    def _get_frequency(self) -> None:
        return None

    def _set_frequency(self, value: float | None) -> None:
        if value is not None:
            raise PinPWMUnsupported()

    def _check_pull(self, value: str) -> None:
        if self.info.pull and value != self.info.pull:
            raise PinFixedPull(f"{self!r} has a fixed pull resistor")
        if value not in ("floating", "up", "down"):
            raise PinInvalidPull("pull must be floating, up, or down")

    def _get_pull(self) -> str:
        return self._pull

    def _set_pull(self, value: str) -> None:
        if self._function != "input":
            raise PinFixedPull(f"cannot set pull on non-input pin {self!r}")
        self._check_pull(value)
        self._pull = value
        self._state = self._setup("input", value)

    def _get_bounce(self) -> float | None:
        return self._bounce

    def _set_bounce(self, value: float | None) -> None:
        self._bounce = None if value is None else float(value)

    def _get_edges(self) -> str:
        return self._edges

    def _set_edges(self, value: str) -> None:
        self._edges = value

    def _enable_event_detect(self) -> None:
        pass  # the simulator pushes every edge; the filter is in edge()

    def _disable_event_detect(self) -> None:
        pass

    def edge(self, level: int, ticks: float) -> None:
        """An input level change pushed by the simulator (called in the callback thread)."""
        if self._function != "input" or level == self._state:
            return
        self._state = level
        last, bounce = self._last_edge, self._bounce
        if bounce is not None and last is not None and ticks - last < bounce:
            return  # like hardware debounce: the level is tracked, the callback is not
        self._last_edge = ticks
        wanted = "rising" if level else "falling"
        if self._edges in ("both", wanted) and self._when_changed is not None:
            self._call_when_changed(ticks, level)


class SimFactory(PiFactory):  # type: ignore[misc]
    """gpiozero Factory for the alarmgw simulator's board (a Pi 3B by default)."""

    def __init__(self, path: str | None = None, revision: str | None = None) -> None:
        super().__init__()
        self.path = path or os.environ.get("ALARMGW_SIM_GPIO", DEFAULT_GPIO_SOCKET)
        self._revision = int(revision or os.environ.get("ALARMGW_SIM_REVISION", "a02082"), 16)
        self.pin_class = SimPin
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise BadPinFactory(
                f"alarmgw-sim GPIO socket {self.path} is not reachable ({exc}); "
                "is `alarmgw-sim run` running? (ALARMGW_SIM_GPIO sets the path)"
            ) from exc
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._send_lock = threading.Lock()
        self._edges: queue.Queue[Any] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="alarmgw-sim-gpio", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="alarmgw-sim-gpio-callbacks", daemon=True
        )
        self._reader.start()
        self._dispatcher.start()

    def _get_revision(self) -> int:
        return self._revision

    @staticmethod
    def ticks() -> float:
        return time.monotonic()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its reply; BadPinFactory if the simulator is gone."""
        req_id = next(self._ids)
        done, box = threading.Event(), list[dict[str, Any]]()
        self._pending[req_id] = (done, box)
        try:
            with self._send_lock:
                self._sock.sendall((json.dumps({**msg, "id": req_id}) + "\n").encode())
            if not done.wait(REPLY_TIMEOUT_S) or not box:
                raise BadPinFactory(f"alarmgw-sim at {self.path} did not answer {msg['op']}")
        except OSError as exc:
            raise BadPinFactory(f"alarmgw-sim at {self.path} went away: {exc}") from exc
        finally:
            self._pending.pop(req_id, None)
        reply: dict[str, Any] = box[0]
        if "error" in reply:
            raise BadPinFactory(f"alarmgw-sim refused {msg['op']}: {reply['error']}")
        return reply

    def _read(self) -> None:
        with contextlib.suppress(OSError), self._sock.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                msg = json.loads(line)
                if msg.get("ev") == "edge":
                    self._edges.put(msg)
                    continue
                waiter = self._pending.get(msg.get("id"))
                if waiter is not None:
                    waiter[1].append(msg)
                    waiter[0].set()
        for done, _ in list(self._pending.values()):
            done.set()  # wake anyone waiting: the reply is never coming
        self._edges.put(_STOP)

    def _dispatch(self) -> None:
        # Callbacks run here, not in the reader, so a callback may itself drive an output.
        while (msg := self._edges.get()) is not _STOP:
            for info, pin in list(self.pins.items()):
                if info.name == f"GPIO{msg['pin']}":
                    pin.edge(int(msg["state"]), float(msg["ticks"]))

    def close(self) -> None:
        super().close()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)
        self._dispatcher.join(timeout=5)
        self._sock.close()
