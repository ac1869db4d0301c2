"""GPIO contacts and outputs on gpiozero's MockFactory: a bench with a few switches.

Debounce runs on real wall time (30-100 ms); tests await reported changes on a
Condition with generous deadlines and assert on counts and order, never on
tight timings, so a loaded two-core CI machine does not make them flaky.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from core.events import now_ms
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
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.close()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def test_active_low_with_pull_up_reports_initial_then_changes(
    factory: MockFactory, rec: Recorder
) -> None:
    door = ContactInput(In("door", 17), rec, pin_factory=factory)
    try:
        pin = factory.pin(17)
        assert rec.of("door") == [ContactChange("door", False, rec.of("door")[0].ts_ms, True)]
        pin.drive_low()  # contact closes to ground: active
        rec.wait_for("door", 2)
        assert door.is_active
        pin.drive_high()
        changes = rec.wait_for("door", 3)
    finally:
        door.close()
    assert [(c.active, c.initial) for c in changes] == [
        (False, True),
        (True, False),
        (False, False),
    ]
    assert changes[0].ts_ms <= changes[1].ts_ms <= changes[2].ts_ms


def test_active_high_with_pull_down(factory: MockFactory, rec: Recorder) -> None:
    flow = ContactInput(In("flow", 5, pull="down", active="high"), rec, pin_factory=factory)
    try:
        pin = factory.pin(5)
        pin.drive_high()
        rec.wait_for("flow", 2)
        pin.drive_low()
        changes = rec.wait_for("flow", 3)
    finally:
        flow.close()
    assert [c.active for c in changes] == [False, True, False]


def test_pull_up_but_active_high_is_inverted_from_gpiozero_default(
    factory: MockFactory, rec: Recorder
) -> None:
    # The tamper switch: pulled up, held low by the lid, active when the lid is off.
    tamper = ContactInput(In("tamper", 23, pull="up", active="high"), rec, pin_factory=factory)
    try:
        pin = factory.pin(23)
        assert rec.of("tamper")[0].active  # nothing holds it low: lid off
        pin.drive_low()  # lid fitted
        changes = rec.wait_for("tamper", 2)
    finally:
        tamper.close()
    assert [c.active for c in changes] == [True, False]


def test_floating_pin_active_at_boot_is_reported(factory: MockFactory, rec: Recorder) -> None:
    # A floating mock pin reads low; active-low means the contact is active at start.
    door = ContactInput(In("door", 6, pull="none", active="low"), rec, pin_factory=factory)
    door.close()
    assert [(c.active, c.initial) for c in rec.of("door")] == [(True, True)]


def test_bounce_burst_gives_one_change_stamped_at_first_edge(
    factory: MockFactory, rec: Recorder
) -> None:
    timer = SettleTimer()
    button = ContactInput(In("button", 22, debounce_ms=80), rec, timer=timer, pin_factory=factory)
    witness = ContactInput(In("witness", 27, debounce_ms=80), rec, timer=timer, pin_factory=factory)
    try:
        pin = factory.pin(22)
        before_first = now_ms()
        pin.drive_low()
        after_first = now_ms()
        time.sleep(0.01)  # the contact chatters a little later: shapes the burst, not a sync
        for _ in range(5):
            pin.drive_high()
            pin.drive_low()
        last_edge = time.monotonic()
        # A witness edge after the burst settles after it on the shared timer,
        # so once the witness is reported the burst has had its say.
        factory.pin(27).drive_low()
        rec.wait_for("witness", 2)
        changes = rec.of("button")
        reported_at = rec.reported_at[rec.changes.index(changes[-1])]
    finally:
        button.close()
        witness.close()
        timer.close()
    assert [(c.active, c.initial) for c in changes] == [(False, True), (True, False)]
    assert before_first <= changes[1].ts_ms <= after_first
    assert reported_at - last_edge >= 0.08 * 0.95  # not before the level was stable


def test_pulse_shorter_than_debounce_gives_no_change(factory: MockFactory, rec: Recorder) -> None:
    timer = SettleTimer()
    button = ContactInput(In("button", 22, debounce_ms=50), rec, timer=timer, pin_factory=factory)
    witness = ContactInput(In("witness", 27, debounce_ms=50), rec, timer=timer, pin_factory=factory)
    try:
        pin = factory.pin(22)
        pin.drive_low()
        pin.drive_high()
        pin.drive_low()
        pin.drive_high()  # back where it was, well within 50 ms
        factory.pin(27).drive_low()
        rec.wait_for("witness", 2)
        assert [c.initial for c in rec.of("button")] == [True]
        # and the input still works after the glitch
        pin.drive_low()
        changes = rec.wait_for("button", 2)
    finally:
        button.close()
        witness.close()
        timer.close()
    assert [c.active for c in changes] == [False, True]


def test_each_input_reports_in_edge_order_across_many_changes(
    factory: MockFactory, rec: Recorder
) -> None:
    door = ContactInput(In("door", 17, debounce_ms=30), rec, pin_factory=factory)
    pin = factory.pin(17)
    try:
        for n in range(1, 6):
            pin.drive_low()
            rec.wait_for("door", 2 * n)
            pin.drive_high()
            rec.wait_for("door", 2 * n + 1)
    finally:
        door.close()
    changes = rec.of("door")
    assert [c.active for c in changes] == [False] + [True, False] * 5
    assert [c.ts_ms for c in changes] == sorted(c.ts_ms for c in changes)


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


def test_busy_pin_raises_gpio_error_and_leaks_nothing(factory: MockFactory, rec: Recorder) -> None:
    taken = Output(Out("relay", 24), pin_factory=factory)
    try:
        with pytest.raises(GpioError, match="input 'door' on GPIO24"):
            GpioBank([In("ok", 4), In("door", 24)], [Out("led", 25)], rec, pin_factory=factory)
        # everything the failed bank opened was released again
        again = GpioBank([In("ok", 4)], [Out("led", 25)], rec, pin_factory=factory)
        again.close()
    finally:
        taken.close()


def test_invalid_pin_raises_gpio_error(factory: MockFactory, rec: Recorder) -> None:
    with pytest.raises(GpioError, match="GPIO99"):
        ContactInput(In("door", 99), rec, pin_factory=factory)


def test_output_on_off_follow_active_level(factory: MockFactory) -> None:
    high = Output(Out("buzzer", 24, active="high"), pin_factory=factory)
    low = Output(Out("relay", 26, type="relay", active="low"), pin_factory=factory)
    try:
        assert (factory.pin(24).state, factory.pin(26).state) == (False, True)
        high.on()
        low.on()
        assert (factory.pin(24).state, factory.pin(26).state) == (True, False)
        assert high.is_on and low.is_on and high.mode == "on"
        high.off()
        low.off()
        assert (factory.pin(24).state, factory.pin(26).state) == (False, True)
        assert high.mode == "off" and not high.is_on
    finally:
        high.close()
        low.close()


def wait_states(pin: object, count: int, timeout: float = DEADLINE_S) -> list[bool]:
    """Wait until the mock pin's state history has `count` entries (polls its list)."""
    deadline = time.monotonic() + timeout
    while len(pin.states) < count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"pin history stuck at {pin.states}"  # type: ignore[attr-defined]
        time.sleep(0.005)
    return [s.state for s in pin.states]  # type: ignore[attr-defined]


def test_output_blinks_and_repeating_blink_does_not_restart_it(factory: MockFactory) -> None:
    led = Output(Out("led", 25, type="led"), pin_factory=factory)
    pin = factory.pin(25)
    try:
        pin.clear_states()
        led.blink(0.02, 0.02)
        led.blink(0.02, 0.02)  # a no-op: no second thread, no phase reset
        states = wait_states(pin, 7)
        assert led.mode == "blink"
        led.off()
        after_off = len(pin.states)
    finally:
        led.close()
    assert states[:7] == [False, True, False, True, False, True, False]
    assert not pin.state
    assert len(pin.states) == after_off  # the blink thread was stopped and joined by off()


def test_close_while_blinking_stops_the_blink_thread(factory: MockFactory) -> None:
    led = Output(Out("led", 25, type="led"), pin_factory=factory)
    led.blink(0.01, 0.01)
    wait_states(factory.pin(25), 3)
    led.close()  # the leak check fails this test if gpiozero's blink thread survives
    led.close()  # and closing twice is harmless


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
