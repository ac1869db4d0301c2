"""One GPIO contract, every pin factory: the same switches and lamps on each backend.

drivers/gpio.py must not depend on which pin factory gpiozero gives it (STYLE.md,
gpiozero's own model). So each behaviour here — inputs with their pull and active
level, debounced edges, outputs — is asserted through drivers/gpio.py against every
factory present: gpiozero's MockFactory, alarmgw-sim's SimFactory (a real simulator
board over a Unix socket, edges in the factory's own thread, as with lgpio), and lgpio
on a Raspberry Pi (skipped when lgpio is absent; on a Pi it needs jumper wires, named in
ALARMGW_LGPIO_LOOPBACK as `pin:partner,...`, each partner driving its pin).

A `Bench` is the hand of the technician: it closes and opens a contact between a pin
and a rail, and reads what an output pin drives. Debounce runs on real time; the tests
await reported changes with generous deadlines and never assert tight timings.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from gpiozero.pins.mock import MockFactory

from core.events import now_ms
from drivers.gpio import ContactInput, GpioBank, GpioError, Output, SettleTimer
from simulator.gpio_server import GpioBoard, GpioServer, SimInput, SimOutput
from simulator.pinfactory import SimFactory
from tests.test_gpio import In, Out, Recorder
from tests.waiting import wait_until

RAIL_LEVEL = {"gnd": 0, "3v3": 1}


class Bench(Protocol):
    factory: Any
    synchronous: bool  # edges reach drivers/gpio.py before contact() returns

    def contact(self, pin: int, closed: bool) -> None:
        """Close (or open) the contact wired between `pin` and its rail."""

    def level(self, pin: int) -> int | None:
        """What the output on `pin` drives now (None: not driven)."""

    def history(self, pin: int) -> list[int | None]:
        """The output's levels since `mark(pin)`, the level at the mark first."""

    def mark(self, pin: int) -> None: ...

    def close(self) -> None: ...


class MockBench:
    """gpiozero's MockFactory: a contact drives the pin to its rail, or back to its pull.
    Its edges are delivered in the caller's thread, before `contact` returns."""

    synchronous = True

    def __init__(self, contacts: dict[int, str], outputs: list[int], _tmp: Path) -> None:
        self.factory = MockFactory()
        self.rails = contacts

    def contact(self, pin: int, closed: bool) -> None:
        mock = self.factory.pin(pin)
        high = RAIL_LEVEL[self.rails[pin]] if closed else mock.pull == "up"
        mock.drive_high() if high else mock.drive_low()

    def level(self, pin: int) -> int | None:
        return int(self.factory.pin(pin).state)

    def mark(self, pin: int) -> None:
        self.factory.pin(pin).clear_states()

    def history(self, pin: int) -> list[int | None]:
        return [int(s.state) for s in self.factory.pin(pin).states]

    def close(self) -> None:
        self.factory.close()


class SimBench:
    """alarmgw-sim's board served on a Unix socket to a SimFactory, as the agent meets it."""

    synchronous = False

    def __init__(self, contacts: dict[int, str], outputs: list[int], tmp: Path) -> None:
        # A contact whose active level is its rail's: closed exactly while it is "active".
        inputs = [
            SimInput(f"in{pin}", pin, "low" if rail == "gnd" else "high", rail)
            for pin, rail in contacts.items()
        ]
        self.board = GpioBoard(inputs, [SimOutput(f"out{pin}", pin) for pin in outputs])
        self.server = GpioServer(self.board, tmp / "gpio.sock").start()
        self.factory = SimFactory(str(tmp / "gpio.sock"))
        self._marks: dict[int, tuple[int | None, int]] = {}

    def contact(self, pin: int, closed: bool) -> None:
        self.board.set_input(f"in{pin}", closed)

    def _output(self, pin: int) -> SimOutput:
        return next(o for o in self.board.outputs.values() if o.pin == pin)

    def level(self, pin: int) -> int | None:
        return self._output(pin).state

    def mark(self, pin: int) -> None:
        out = self._output(pin)
        self._marks[pin] = (out.state, len(out.history))

    def history(self, pin: int) -> list[int | None]:
        state, start = self._marks[pin]
        return [state] + [h["state"] for h in list(self._output(pin).history)[start:]]

    def close(self) -> None:
        self.factory.close()
        self.server.close()


class LgpioBench:
    """A Raspberry Pi: each pin under test is wired to a partner pin that plays the
    contact (partner driving = closed to that rail; partner an input = open)."""

    synchronous = False

    def __init__(self, contacts: dict[int, str], outputs: list[int], _tmp: Path) -> None:
        from gpiozero import DigitalInputDevice, DigitalOutputDevice
        from gpiozero.pins.lgpio import LGPIOFactory

        wiring = os.environ.get("ALARMGW_LGPIO_LOOPBACK", "")
        self.partner = {int(a): int(b) for a, b in (w.split(":") for w in wiring.split(",") if w)}
        needed = set(contacts) | set(outputs)
        if not needed <= set(self.partner):
            pytest.skip(f"lgpio: wire pins {sorted(needed)} to partners (ALARMGW_LGPIO_LOOPBACK)")
        self.factory = LGPIOFactory()
        self._helper = LGPIOFactory()
        self._out_cls, self._in_cls = DigitalOutputDevice, DigitalInputDevice
        self.rails = contacts
        self._driving: dict[int, Any] = {}
        self._reading = {p: DigitalInputDevice(self.partner[p], pin_factory=self._helper)
                         for p in outputs}  # fmt: skip
        self._marks: dict[int, list[int | None]] = {}

    def contact(self, pin: int, closed: bool) -> None:
        if pin in self._driving:
            self._driving.pop(pin).close()  # an input again: high impedance, the pull decides
        if closed:
            level = bool(RAIL_LEVEL[self.rails[pin]])
            self._driving[pin] = self._out_cls(
                self.partner[pin], initial_value=level, pin_factory=self._helper
            )

    def level(self, pin: int) -> int | None:
        return int(self._reading[pin].value)

    def mark(self, pin: int) -> None:
        self._marks[pin] = [self.level(pin)]
        self._reading[pin].when_activated = lambda: self._marks[pin].append(1)
        self._reading[pin].when_deactivated = lambda: self._marks[pin].append(0)

    def history(self, pin: int) -> list[int | None]:
        return list(self._marks[pin])

    def close(self) -> None:
        for device in [*self._driving.values(), *self._reading.values()]:
            device.close()
        self.factory.close()
        self._helper.close()


def _lgpio_present() -> bool:
    try:
        import lgpio  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = [
    pytest.param(MockBench, id="mock"),
    pytest.param(SimBench, id="sim", marks=pytest.mark.world),  # a Unix socket
    pytest.param(
        LgpioBench,
        id="lgpio",
        marks=[
            pytest.mark.world,
            pytest.mark.skipif(not _lgpio_present(), reason="lgpio absent (not a Pi)"),
        ],
    ),
]

MakeBench = Callable[..., Bench]


@pytest.fixture(params=BACKENDS)
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBench]:
    made: list[Bench] = []

    def make(contacts: dict[int, str] | None = None, outputs: list[int] | None = None) -> Bench:
        b: Bench = request.param(contacts or {}, outputs or [], tmp_path)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


# --- inputs: pull and active level ----------------------------------------------------

CONTACTS = [  # pull, active, rail the contact closes to, active while the contact is open
    pytest.param("up", "low", "gnd", False, id="pull-up-active-low"),  # a door contact
    pytest.param("down", "high", "3v3", False, id="pull-down-active-high"),  # flow switch
    pytest.param("up", "high", "gnd", True, id="pull-up-active-high"),  # tamper: lid holds it
    pytest.param("none", "high", "3v3", False, id="floating-active-high"),
    pytest.param("none", "low", "3v3", True, id="floating-active-low"),  # reads low when open
]


@pytest.mark.parametrize(("pull", "active", "rail", "open_active"), CONTACTS)
def test_an_input_reports_its_level_at_start_then_each_change(
    bench: MakeBench, rec: Recorder, pull: str, active: str, rail: str, open_active: bool
) -> None:
    b = bench({17: rail})
    contact = ContactInput(In("c", 17, pull=pull, active=active), rec, pin_factory=b.factory)
    try:
        b.contact(17, True)
        rec.wait_for("c", 2)
        assert contact.is_active is not open_active
        b.contact(17, False)
        changes = rec.wait_for("c", 3)
    finally:
        contact.close()
    assert [(c.active, c.initial) for c in changes] == [
        (open_active, True),
        (not open_active, False),
        (open_active, False),
    ]
    assert changes[0].ts_ms <= changes[1].ts_ms <= changes[2].ts_ms


# --- edges: debounce and order ----------------------------------------------------------


@contextlib.contextmanager
def button_and_witness(b: Bench, rec: Recorder, debounce_ms: int) -> Iterator[None]:
    """A button on pin 22 and a witness on pin 27, settled by one shared timer: once the
    witness, changed after the button, is reported, the button has had its say."""
    timer = SettleTimer()
    button = ContactInput(In("button", 22, debounce_ms=debounce_ms), rec, timer=timer,
                          pin_factory=b.factory)  # fmt: skip
    witness = ContactInput(In("witness", 27, debounce_ms=debounce_ms), rec, timer=timer,
                           pin_factory=b.factory)  # fmt: skip
    try:
        yield
    finally:
        button.close()
        witness.close()
        timer.close()


def test_a_bouncing_contact_gives_one_change_stamped_at_its_first_edge(
    bench: MakeBench, rec: Recorder
) -> None:
    b = bench({22: "gnd", 27: "gnd"})
    with button_and_witness(b, rec, debounce_ms=80):
        before_first = now_ms()
        b.contact(22, True)
        after_first = now_ms()
        # the contact chatters for half a second, each bounce well inside the debounce
        # (the sleeps shape the stimulus; nothing is awaited by them)
        while now_ms() - before_first < 500:
            time.sleep(0.02)
            b.contact(22, False)
            b.contact(22, True)
        last_edge = time.monotonic()
        # A witness edge after the burst settles after it on the shared timer,
        # so once the witness is reported the burst has had its say.
        b.contact(27, True)
        rec.wait_for("witness", 2)
        changes = rec.of("button")
        reported_at = rec.reported_at[rec.changes.index(changes[-1])]
    assert [(c.active, c.initial) for c in changes] == [(False, True), (True, False)]
    assert before_first <= changes[1].ts_ms < before_first + 250  # the first edge, not the last
    if b.synchronous:  # where the edge is seen at once, exactly when it happened
        assert changes[1].ts_ms <= after_first
    assert reported_at - last_edge >= 0.08 * 0.95  # not before the level was stable


def test_a_pulse_shorter_than_the_debounce_is_no_change(bench: MakeBench, rec: Recorder) -> None:
    b = bench({22: "gnd", 27: "gnd"})
    with button_and_witness(b, rec, debounce_ms=50):
        for closed in (True, False, True, False):  # back where it was, well within 50 ms
            b.contact(22, closed)
        b.contact(27, True)
        rec.wait_for("witness", 2)
        assert [c.initial for c in rec.of("button")] == [True]
        b.contact(22, True)  # and the input still works after the glitch
        changes = rec.wait_for("button", 2)
    assert [c.active for c in changes] == [False, True]


def test_changes_are_reported_in_edge_order(bench: MakeBench, rec: Recorder) -> None:
    b = bench({17: "gnd"})
    door = ContactInput(In("door", 17, debounce_ms=30), rec, pin_factory=b.factory)
    try:
        for n in range(1, 6):
            b.contact(17, True)
            rec.wait_for("door", 2 * n)
            b.contact(17, False)
            rec.wait_for("door", 2 * n + 1)
    finally:
        door.close()
    changes = rec.of("door")
    assert [c.active for c in changes] == [False] + [True, False] * 5
    assert [c.ts_ms for c in changes] == sorted(c.ts_ms for c in changes)


# --- outputs ------------------------------------------------------------------------------


def test_outputs_follow_their_active_level(bench: MakeBench) -> None:
    b = bench(outputs=[24, 26])
    high = Output(Out("buzzer", 24, active="high"), pin_factory=b.factory)
    low = Output(Out("relay", 26, type="relay", active="low"), pin_factory=b.factory)
    try:
        assert (b.level(24), b.level(26)) == (0, 1)
        high.on()
        low.on()
        assert wait_until(lambda: (b.level(24), b.level(26)) == (1, 0), timeout=5)
        assert high.is_on and low.is_on and high.mode == low.mode == "on"
        high.off()
        low.off()
        assert wait_until(lambda: (b.level(24), b.level(26)) == (0, 1), timeout=5)
        assert high.mode == "off" and not high.is_on
    finally:
        high.close()
        low.close()


def test_an_output_blinks_once_however_often_it_is_told(bench: MakeBench) -> None:
    b = bench(outputs=[25])
    led = Output(Out("led", 25, type="led"), pin_factory=b.factory)
    try:
        b.mark(25)
        led.blink(0.02, 0.02)
        led.blink(0.02, 0.02)  # a no-op: no second thread, no phase reset
        assert wait_until(lambda: len(b.history(25)) >= 7, timeout=5), b.history(25)
        assert led.mode == "blink"
        led.off()
        after_off = len(b.history(25))
    finally:
        led.close()  # joins gpiozero's blink thread
    history = b.history(25)
    assert history[:7] == [0, 1, 0, 1, 0, 1, 0]
    assert history[after_off - 1] == 0
    # the blink thread was stopped by off(): nothing drove the pin after it (a released
    # pin is no longer driven: None)
    assert [level for level in history[after_off:] if level is not None] == []


def test_a_pin_already_in_use_is_a_gpio_error_and_nothing_leaks(
    bench: MakeBench, rec: Recorder
) -> None:
    b = bench({4: "gnd", 24: "gnd"}, outputs=[24, 25])
    taken = Output(Out("relay", 24), pin_factory=b.factory)
    try:
        with pytest.raises(GpioError, match="input 'door' on GPIO24"):
            GpioBank([In("ok", 4), In("door", 24)], [Out("led", 25)], rec, pin_factory=b.factory)
        # everything the failed bank opened was released again
        again = GpioBank([In("ok", 4)], [Out("led", 25)], rec, pin_factory=b.factory)
        again.close()
    finally:
        taken.close()
