"""GPIO dry contacts and outputs: the only module that imports gpiozero.

Inputs (door, pump, sprinkler flow, the manual alarm button, tamper) are read
through gpiozero's `DigitalInputDevice` and debounced HERE, not by gpiozero:
its `bounce_time` is ignored by mock pins and behaves differently on every pin
factory, and an alarm system must debounce identically on the bench and in the
field. One `SettleTimer` thread serves every input (a Pi has 1 GB of RAM and
no reason to keep a thread per contact); nothing polls.

A change is reported once the level has stayed put for `debounce_ms`; its
`ts_ms` is the wall-clock time of the FIRST edge of the burst that led to it
(the detection time, as the feed requires). The level at start is reported
too, so a door that is already open at boot is known.

Outputs (buzzer, LED, relay) wrap `DigitalOutputDevice`; blinking is
gpiozero's own background thread.

The pin factory is whatever gpiozero selects (GPIOZERO_PIN_FACTORY, the
`gpiozero_pin_factories` entry point, or a `pin_factory=` argument such as
MockFactory in tests). Nothing here may depend on which factory it got, and
nothing here decides what a contact means: that is agent/rules.py's job.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from core.errors import GpioError
from core.events import now_ms

log = logging.getLogger(__name__)

_PULL_UP: dict[str, bool | None] = {"up": True, "down": False, "none": None}


class InputSpec(Protocol):
    """What an input needs from its config (agent.config.InputConfig fits)."""

    @property
    def id(self) -> str: ...
    @property
    def pin(self) -> int: ...
    @property
    def pull(self) -> str: ...  # "up" | "down" | "none"
    @property
    def active(self) -> str: ...  # "high" | "low"
    @property
    def debounce_ms(self) -> int | float: ...


class OutputSpec(Protocol):
    """What an output needs from its config (agent.config.OutputConfig fits)."""

    @property
    def id(self) -> str: ...
    @property
    def pin(self) -> int: ...
    @property
    def type(self) -> str: ...  # "buzzer" | "led" | "relay"
    @property
    def active(self) -> str: ...  # "high" | "low"


@dataclass(frozen=True, slots=True)
class ContactChange:
    """A debounced contact level: `active` per the input's own active level."""

    input_id: str
    active: bool
    ts_ms: int  # wall clock at the first edge of the stable level (detection time)
    initial: bool = False  # True for the level read at start, not an edge


ChangeCallback = Callable[[ContactChange], None]


class SettleTimer:
    """One thread that runs each input's debounce check when it falls due.

    Callbacks run in this thread, one at a time, so they must be quick (hand the
    change to a queue). A callback that raises is logged and does not stop the
    thread: one bad consumer must not silence every other contact.
    """

    def __init__(self, name: str = "gpio-settle") -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties never compare callables
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Run `callback` once `time.monotonic()` reaches `deadline`."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._due, (deadline, next(self._order), callback))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._due.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _next_due(self) -> Callable[[], None] | None:
        """Block until a callback is due (returned) or the timer is closed (None)."""
        with self._cond:
            while not self._closed:
                if not self._due:
                    self._cond.wait()
                    continue
                wait_s = self._due[0][0] - time.monotonic()
                if wait_s <= 0:
                    return heapq.heappop(self._due)[2]
                self._cond.wait(wait_s)
            return None

    def _run(self) -> None:
        while (callback := self._next_due()) is not None:
            try:
                callback()
            except Exception:  # the timer serves every input; keep it alive
                log.exception("GPIO settle callback failed")


class ContactInput:
    """One debounced dry contact; reports `ContactChange`s to `on_change`.

    The initial level is reported (with `initial=True`) before the constructor
    returns. Later changes are reported from the settle timer's thread.
    """

    def __init__(
        self,
        cfg: InputSpec,
        on_change: ChangeCallback,
        *,
        timer: SettleTimer | None = None,
        pin_factory: Any = None,
    ) -> None:
        self.id = cfg.id
        self._debounce_s = max(0.0, float(cfg.debounce_ms) / 1000.0)
        self._on_change = on_change
        self._own_timer = timer is None
        self._timer = timer if timer is not None else SettleTimer(f"gpio-settle-{cfg.id}")
        # Reports are serialised so the initial level can never overtake (or be
        # overtaken by) a debounced change; edges only take _state_lock.
        self._report_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._armed = False
        self._last_edge = 0.0  # monotonic time of the latest raw edge
        self._burst_start_ms: int | None = None  # wall time of the first edge away
        self._reported = False
        self._tracked = False  # level as the edge stream says it is
        try:
            self._device, self._invert = _open_input(cfg, pin_factory)
        except BaseException:
            self._close_timer()
            raise
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def is_active(self) -> bool:
        """The debounced level last reported."""
        with self._state_lock:
            return self._reported

    def read_now(self) -> bool:
        """The contact's level read from the pin now, undebounced (the self-test: can the
        input be read at all). Raises GpioError when the pin cannot be read."""
        try:
            return self._read_level()
        except Exception as exc:  # the pin factory's own types
            raise GpioError(f"input {self.id!r}: {exc}") from exc

    def close(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._device.close()
        self._close_timer()

    def _start(self) -> None:
        with self._report_lock:
            with self._state_lock:
                self._device.when_activated = self._edge_to_active
                self._device.when_deactivated = self._edge_to_inactive
                level = self._read_level()
                self._reported = self._tracked = level
            self._on_change(ContactChange(self.id, level, now_ms(), initial=True))

    def _read_level(self) -> bool:
        return bool(self._device.value) != self._invert

    def _edge_to_active(self) -> None:
        self._edge(not self._invert)

    def _edge_to_inactive(self) -> None:
        self._edge(self._invert)

    def _edge(self, level: bool) -> None:
        """A raw edge (maybe a bounce): note it and (re)start the settle wait."""
        with self._state_lock:
            if self._closed:
                return
            self._note_edge_locked(level)

    def _note_edge_locked(self, level: bool) -> None:
        self._last_edge = time.monotonic()
        self._tracked = level
        if self._burst_start_ms is None and level != self._reported:
            self._burst_start_ms = now_ms()
        if not self._armed:
            self._armed = True
            self._timer.call_at(self._last_edge + self._debounce_s, self._settle)

    def _settle(self) -> None:
        """Runs in the timer thread: report the level if it has been stable long enough."""
        with self._report_lock:
            change = self._settled_change()
            if change is not None:
                self._on_change(change)

    def _settled_change(self) -> ContactChange | None:
        with self._state_lock:
            if self._closed:
                return None
            self._armed = False
            stable_at = self._last_edge + self._debounce_s
            if time.monotonic() < stable_at:
                # More bounces arrived since this check was armed: wait on.
                self._armed = True
                self._timer.call_at(stable_at, self._settle)
                return None
            level = self._read_level()
            if level != self._tracked:
                # An edge was lost (or is in flight): treat the read as an edge.
                self._note_edge_locked(level)
                return None
            started_ms, self._burst_start_ms = self._burst_start_ms, None
            if level == self._reported or started_ms is None:
                return None  # a glitch shorter than debounce_ms: nothing happened
            self._reported = level
            return ContactChange(self.id, level, started_ms)

    def _close_timer(self) -> None:
        if self._own_timer:
            self._timer.close()


def _open_input(cfg: InputSpec, pin_factory: Any) -> tuple[Any, bool]:
    """Open the pin; returns the device and whether gpiozero's 'active' is inverted.

    gpiozero ties the active level to the pull (pull-up means active-low) and
    only accepts `active_state` on a floating pin; our config states both
    independently (a tamper switch may be pulled up and active high), so the
    difference is applied here.
    """
    pull_up = _PULL_UP[cfg.pull]
    active_high = cfg.active == "high"
    active_state = active_high if pull_up is None else None
    try:
        device = DigitalInputDevice(
            cfg.pin, pull_up=pull_up, active_state=active_state, pin_factory=pin_factory
        )
    # Pin factories raise their own types (lgpio.error('GPIO busy'), OSError...), not only
    # GPIOZeroError: any failure to open a pin is a GpioError at this boundary.
    except Exception as exc:
        raise GpioError(f"input {cfg.id!r} on GPIO{cfg.pin}: {exc}") from exc
    gpiozero_active_high = active_high if pull_up is None else not pull_up
    return device, gpiozero_active_high != active_high


class Output:
    """A buzzer, LED or relay: on, off, or blinking (gpiozero's own blink thread).

    Repeating the current command is a no-op, so rules may re-assert their
    intent freely without restarting a blink cycle.
    """

    def __init__(self, cfg: OutputSpec, *, pin_factory: Any = None) -> None:
        self.id = cfg.id
        self.type = cfg.type
        self._lock = threading.Lock()
        self._mode: tuple[str, float, float] = ("off", 0.0, 0.0)
        self._closed = False
        try:
            self._device = DigitalOutputDevice(
                cfg.pin,
                active_high=cfg.active == "high",
                initial_value=False,
                pin_factory=pin_factory,
            )
        except Exception as exc:  # see _open_input: factories raise their own types
            raise GpioError(f"output {cfg.id!r} on GPIO{cfg.pin}: {exc}") from exc

    @property
    def mode(self) -> str:
        """'on', 'off' or 'blink' — what the output was last told to do."""
        with self._lock:
            return self._mode[0]

    @property
    def is_on(self) -> bool:
        """The output's level right now (flips while blinking)."""
        with self._lock:
            return bool(self._device.value)

    def on(self) -> None:
        self._command(("on", 0.0, 0.0), self._device.on)

    def off(self) -> None:
        self._command(("off", 0.0, 0.0), self._device.off)

    def blink(self, on_s: float, off_s: float) -> None:
        def start() -> None:
            self._device.blink(on_time=on_s, off_time=off_s, background=True)

        self._command(("blink", on_s, off_s), start)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._device.close()  # stops and joins the blink thread

    def _command(self, mode: tuple[str, float, float], apply: Callable[[], None]) -> None:
        with self._lock:
            if mode == self._mode or self._closed:
                return  # closed: a rule still running at shutdown must not start a blink
            apply()
            self._mode = mode


class GpioBank:
    """Every configured input and output, sharing one settle timer thread.

    If any pin cannot be opened, whatever was opened is closed again and
    GpioError is raised.
    """

    def __init__(
        self,
        inputs: Sequence[InputSpec],
        outputs: Sequence[OutputSpec],
        on_change: ChangeCallback,
        *,
        pin_factory: Any = None,
    ) -> None:
        self.inputs: dict[str, ContactInput] = {}
        self.outputs: dict[str, Output] = {}
        self._timer = SettleTimer()
        try:
            for out_cfg in outputs:
                self.outputs[out_cfg.id] = Output(out_cfg, pin_factory=pin_factory)
            for in_cfg in inputs:
                self.inputs[in_cfg.id] = ContactInput(
                    in_cfg, on_change, timer=self._timer, pin_factory=pin_factory
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for contact in self.inputs.values():
            contact.close()
        for output in self.outputs.values():
            output.close()
        self._timer.close()
