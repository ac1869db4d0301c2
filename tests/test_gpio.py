"""GPIO contacts and outputs on gpiozero's MockFactory: what is particular to our code
(one settle thread for a bank, a failing consumer, closing mid-settle, errors, the default
factory). What every pin factory must do alike is tests/test_gpio_contract.py.

Debounce runs on real wall time (30-100 ms); tests await reported changes on a
Condition with generous deadlines and assert on counts and order, never on
tight timings, so a loaded two-core CI machine does not make them flaky.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from drivers.gpio import ContactChange, ContactInput, GpioBank, GpioError, Output, SettleTimer

DEADLINE_S = 5.0


@dataclass(frozen=True)
class In:
    id: str
    pin: int
    pull: str = "up"
    active: str = "low"
    debounce_ms: int = 30


@dataclass(frozen=True)
class Out:
    id: str
    pin: int
    type: str = "buzzer"
    active: str = "high"


class Recorder:
    """Collects ContactChanges from any thread; tests wait on it with a deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.changes: list[ContactChange] = []
        self.reported_at: list[float] = []  # monotonic time of each callback

    def __call__(self, change: ContactChange) -> None:
        with self._cond:
            self.changes.append(change)
            self.reported_at.append(time.monotonic())
            self._cond.notify_all()

    def of(self, input_id: str) -> list[ContactChange]:
        with self._cond:
            return [c for c in self.changes if c.input_id == input_id]

    def wait_for(
        self, input_id: str, count: int, timeout: float = DEADLINE_S
    ) -> list[ContactChange]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(c.input_id == input_id for c in self.changes) >= count, timeout
            )
        got = self.of(input_id)
        assert ok, f"expected {count} changes of {input_id}, got {got}"
        return got


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def test_bank_shares_one_timer_thread_for_all_inputs(factory: MockFactory, rec: Recorder) -> None:
    before = threading.active_count()
    bank = GpioBank(
        [In(f"in{n}", pin) for n, pin in enumerate((4, 5, 6, 12, 13, 16))],
        [Out("buzzer", 24)],
        rec,
        pin_factory=factory,
    )
    try:
        assert threading.active_count() == before + 1
        assert sorted(c.input_id for c in rec.changes) == [f"in{n}" for n in range(6)]
        factory.pin(13).drive_low()
        factory.pin(4).drive_low()
        rec.wait_for("in4", 2)
        rec.wait_for("in0", 2)
    finally:
        bank.close()
    assert [c.active for c in rec.of("in1")] == [False]


def test_failing_consumer_does_not_stop_other_reports(factory: MockFactory) -> None:
    rec = Recorder()

    def flaky(change: ContactChange) -> None:
        rec(change)
        if change.input_id == "bad" and not change.initial:
            raise RuntimeError("consumer bug")

    bank = GpioBank([In("bad", 4), In("good", 5)], [], flaky, pin_factory=factory)
    try:
        factory.pin(4).drive_low()
        rec.wait_for("bad", 2)
        factory.pin(5).drive_low()
        rec.wait_for("good", 2)
        factory.pin(4).drive_high()
        rec.wait_for("bad", 3)
    finally:
        bank.close()


def test_close_while_settling_reports_nothing_more(factory: MockFactory, rec: Recorder) -> None:
    timer = SettleTimer()
    door = ContactInput(In("door", 17, debounce_ms=30), rec, timer=timer, pin_factory=factory)
    witness = ContactInput(In("witness", 27, debounce_ms=30), rec, timer=timer, pin_factory=factory)
    try:
        factory.pin(17).drive_low()
        door.close()
        factory.pin(27).drive_low()
        rec.wait_for("witness", 2)
    finally:
        witness.close()
        timer.close()
    assert [c.initial for c in rec.of("door")] == [True]


def test_invalid_pin_raises_gpio_error(factory: MockFactory, rec: Recorder) -> None:
    with pytest.raises(GpioError, match="GPIO99"):
        ContactInput(In("door", 99), rec, pin_factory=factory)


def wait_states(pin: object, count: int, timeout: float = DEADLINE_S) -> list[bool]:
    """Wait until the mock pin's state history has `count` entries (polls its list)."""
    deadline = time.monotonic() + timeout
    while len(pin.states) < count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"pin history stuck at {pin.states}"  # type: ignore[attr-defined]
        time.sleep(0.005)
    return [s.state for s in pin.states]  # type: ignore[attr-defined]


def test_close_while_blinking_stops_the_blink_thread(factory: MockFactory) -> None:
    led = Output(Out("led", 25, type="led"), pin_factory=factory)
    led.blink(0.01, 0.01)
    wait_states(factory.pin(25), 3)
    led.close()  # the leak check fails this test if gpiozero's blink thread survives
    led.close()  # and closing twice is harmless


def test_a_closed_output_ignores_commands_instead_of_starting_a_blink(
    factory: MockFactory,
) -> None:
    """At shutdown a rule may still drive an output (a record stored after GPIO closed
    lights the transmission light): a blink thread started on a closed device would die
    with GPIODeviceClosed, so a closed output takes no command at all."""
    led = Output(Out("led", 25, type="led"), pin_factory=factory)
    led.close()
    before = threading.active_count()
    led.blink(0.01, 0.01)
    led.on()
    assert (led.mode, threading.active_count()) == ("off", before)


def test_default_factory_comes_from_gpiozero_env(
    monkeypatch: pytest.MonkeyPatch, rec: Recorder
) -> None:
    """With no pin_factory argument, gpiozero's own selection (GPIOZERO_PIN_FACTORY) applies."""
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(Device, "pin_factory", None)
    bank = GpioBank([In("door", 17)], [Out("buzzer", 24)], rec)
    try:
        chosen = Device.pin_factory
        assert isinstance(chosen, MockFactory)
        chosen.pin(17).drive_low()
        rec.wait_for("door", 2)
        bank.outputs["buzzer"].on()
        assert chosen.pin(24).state
    finally:
        bank.close()
        if Device.pin_factory is not None:
            Device.pin_factory.close()


class _ClaimedPin(MockPin):
    """A pin factory's own error type, as lgpio raises `lgpio.error('GPIO busy')`."""

    def __init__(self, *_: object, **__: object) -> None:
        raise OSError(16, "GPIO busy")


@pytest.mark.parametrize("what", ["input", "output"])
def test_a_factory_specific_error_becomes_gpio_error(what: str, rec: Recorder) -> None:
    factory = MockFactory(pin_class=_ClaimedPin)
    try:
        with pytest.raises(GpioError, match="GPIO busy"):
            if what == "input":
                GpioBank([In("door", 17)], [], rec, pin_factory=factory)
            else:
                GpioBank([], [Out("buzzer", 24)], rec, pin_factory=factory)
    finally:
        factory.close()
