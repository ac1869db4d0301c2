"""The transmission light and the transmission-failed signal (GB 26875.1), on real
gpiozero outputs (MockFactory pins), a real buffer with both uplinks' readers (MQTT, then
GB/T 26875.3: "confirmed" is every reader's acknowledgement, asked as the running agent asks,
through agent.duty.UitdDuties) and an injectable clock: five minutes pass in no time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.buffer import EventBuffer
from agent.duty import UitdDuties
from agent.faults import Faults
from agent.rules import LocalRules
from core.events import Category, Event, Identity, Kind, Lane, Severity
from drivers.gpio import Output
from tests.parts import HandClock
from tests.parts import OutputCfg as Out

IDENT = Identity("site", "gw1")


@dataclass
class Bench:
    rules: LocalRules
    buffer: EventBuffer
    clock: HandClock
    light: Output
    sounder: Output
    duties: UitdDuties

    def emit(self, event: Event) -> Event:
        """What the pipeline does: rules at once, the buffer, then the stored listener."""
        self.rules.on_event(event)
        stored = self.buffer.submit(event).result(timeout=10)
        assert isinstance(stored, Event)
        self.rules.transmission.stored(stored)
        return stored

    def tick(self) -> None:
        """What the duties' thread does twice a second."""
        self.rules.transmission.tick(self.unconfirmed)

    def unconfirmed(self, seq: int) -> bool:
        return self.duties.unconfirmed(seq)

    def confirm(self, event: Event, readers: tuple[str, ...] = ("mqtt", "gb")) -> None:
        """The broker's PUBACK and the centre's confirmation, as the uplinks ack."""
        assert event.seq is not None
        for reader in readers:
            self.buffer.ack(Lane.EVENT, event.seq, reader)


class Guard:
    def guard(self, cause: str, fn: Callable[[], None]) -> Callable[[], None]:
        return fn


@dataclass(frozen=True)
class DutySettings:
    duty_check_timeout_s: float = 600.0


@pytest.fixture
def bench(tmp_path: Path, factory: MockFactory) -> Iterator[Bench]:
    yield from _bench(tmp_path, factory, 1000)


@pytest.fixture
def small_bench(tmp_path: Path, factory: MockFactory) -> Iterator[Bench]:
    """A buffer bounded at 3 records: the bound drops."""
    yield from _bench(tmp_path, factory, 3)


def _bench(tmp_path: Path, factory: MockFactory, max_events: int) -> Iterator[Bench]:
    light = Output(Out("transmission-led", 16, "led"), pin_factory=factory)
    sounder = Output(Out("failure-sounder", 26, "buzzer"), pin_factory=factory)
    clock = HandClock(5000.0)
    rules = LocalRules(
        [
            ("transmission-led", "transmission-light", light),
            ("failure-sounder", "transmission-failed", sounder),
        ],
        monotonic=clock,
    )
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, max_events, readers=("mqtt", "gb")).start()
    rules.uplink_changed(True)
    duties = UitdDuties(lambda e: None, buffer, lambda: rules, Guard(), DutySettings())
    yield Bench(rules, buffer, clock, light, sounder, duties)
    buffer.close()
    light.close()
    sounder.close()


def fire(kind: Kind = Kind.ALARM, point: str = "point3", **kw: object) -> Event:
    return Event(
        kind,
        Category.FIRE,
        Severity.CRITICAL if kind is Kind.ALARM else Severity.INFO,
        "fire" if kind is Kind.ALARM else "normal",
        "1号火灾报警控制器 火警",
        "fap",
        point,
        **kw,  # type: ignore[arg-type]
    )


def test_the_light_blinks_while_sending_is_steady_once_confirmed_and_off_five_minutes_after_reset(
    bench: Bench,
) -> None:
    assert bench.light.mode == "off"
    alarm = bench.emit(fire())
    bench.tick()
    assert bench.light.mode == "blink"  # stored, not yet confirmed
    bench.clock.now += 2
    bench.confirm(alarm)
    bench.tick()
    assert bench.light.mode == "on"
    bench.clock.now += 3600
    bench.tick()
    assert bench.light.mode == "on"  # the fire is still there: the light stays
    bench.emit(fire(Kind.RESTORE))  # the panel resets
    bench.clock.now += 299.9
    bench.tick()
    assert bench.light.mode == "on"
    bench.clock.now += 0.1
    bench.tick()
    assert bench.light.mode == "off"
    assert bench.sounder.mode == "off"  # nothing failed


def test_the_light_holds_five_minutes_after_a_confirmed_test_transmission(
    bench: Bench,
) -> None:
    test = bench.emit(fire(Kind.TEST, point="test_alarm", test=True))
    bench.tick()
    assert bench.light.mode == "blink"
    bench.confirm(test)
    bench.tick()
    assert bench.light.mode == "on"
    bench.clock.now += 299
    bench.tick()
    assert bench.light.mode == "on"
    bench.clock.now += 1
    bench.tick()
    assert bench.light.mode == "off"


def test_other_events_never_light_it(bench: Bench) -> None:
    gas = Event(Kind.ALARM, Category.GAS, Severity.MAJOR, "alarm", "gas", "gas-1", "low_alarm")
    door = Event(Kind.STATE, Category.DOOR, Severity.WARNING, "open", "door", "door-1", "contact")
    for event in (gas, door):
        bench.emit(event)
    bench.tick()
    assert bench.light.mode == "off"


def test_an_alarm_unconfirmed_for_forty_seconds_sounds_the_failure_signal_until_confirmed(
    bench: Bench,
) -> None:
    alarm = bench.emit(fire())
    bench.clock.now += 39.9
    bench.tick()
    assert (bench.light.mode, bench.sounder.mode) == ("blink", "off")
    bench.clock.now += 0.1
    bench.tick()
    assert bench.sounder.mode == "blink"  # rapid beeps
    assert bench.rules.transmission.failed == [f"unconfirmed:{alarm.seq}"]
    bench.confirm(alarm)  # the broker came back and took it
    bench.tick()
    assert (bench.light.mode, bench.sounder.mode) == ("on", "off")


def test_only_every_uplinks_confirmation_is_confirmed(bench: Bench) -> None:
    """The broker's PUBACK alone is not "confirmed" while the centre has not confirmed:
    the light keeps blinking and the 40 s failure fires for the centre (review item 2)."""
    alarm = bench.emit(fire())
    bench.confirm(alarm, readers=("mqtt",))
    bench.tick()
    assert bench.light.mode == "blink"
    bench.clock.now += 40
    bench.tick()
    assert bench.sounder.mode == "blink"
    assert bench.rules.transmission.failed == [f"unconfirmed:{alarm.seq}"]
    bench.confirm(alarm, readers=("gb",))  # the centre confirms at last
    bench.tick()
    assert (bench.light.mode, bench.sounder.mode) == ("on", "off")


def test_a_fire_the_full_buffer_dropped_before_the_centre_got_it_sounds_the_failure(
    small_bench: Bench,
) -> None:
    """Review C item 2: a fire alarm the bound dropped (the centre down, the buffer full of
    fires) is gone from the buffer but was never confirmed by the centre: the light keeps
    blinking and the 40 s failure signal sounds, instead of "confirmed by every uplink"."""
    bench = small_bench
    first = bench.emit(fire(point="p1"))
    bench.confirm(first, readers=("mqtt",))  # the broker has it; the centre is down
    for n in range(2, 5):  # three more fires: the bound (3) drops the oldest
        bench.confirm(bench.emit(fire(point=f"p{n}")), readers=("mqtt",))
    assert bench.buffer.stats()["drops"]["alarm"] >= 1
    assert first.seq not in {r.seq for r in bench.buffer.pending(Lane.EVENT, 0, 100, "gb")}
    bench.tick()
    assert bench.light.mode == "blink"
    bench.clock.now += 40
    bench.tick()
    assert bench.sounder.mode == "blink"
    assert f"unconfirmed:{first.seq}" in bench.rules.transmission.failed


def test_a_link_fault_sounds_until_its_restore_and_silence_holds_until_a_new_failure(
    bench: Bench,
) -> None:
    link_fault = Event(
        Kind.FAULT,
        Category.SYSTEM,
        Severity.MAJOR,
        "link_fault",
        "centre link lost",
        "gateway",
        "gb_link",
        detail={"gb": {"tf": 21, "status": 1 << 5}},  # UITD state: centre-link fault
    )
    bench.emit(link_fault)
    assert bench.sounder.mode == "blink"
    assert bench.rules.silence() is True
    assert bench.sounder.mode == "off"
    bench.rules.uplink_changed(False)  # the MQTT link goes too: a new failure, in 100 s
    bench.clock.now += 99
    bench.tick()
    assert bench.sounder.mode == "off"
    bench.clock.now += 1
    bench.tick()
    assert bench.sounder.mode == "blink"
    assert bench.rules.transmission.failed == ["link_fault:gateway/gb_link", "uplink_down"]
    bench.rules.uplink_changed(True)
    restore = Event(
        Kind.RESTORE, Category.SYSTEM, Severity.INFO, "normal", "back", "gateway", "gb_link"
    )
    bench.emit(restore)
    assert bench.sounder.mode == "off"
    assert bench.rules.transmission.failed == []


def test_the_gb_uplinks_own_link_fault_sounds_the_signal_and_its_restore_stops_it(
    bench: Bench,
) -> None:
    """The fault the GB uplink raises (Faults.link_failed, agent/gb26875/uplink.py) is the
    one the failure signal listens for: emitted through the real fault mechanism."""
    faults = Faults(bench.emit)
    faults.link_failed("gb26875-link", "no confirm after 3 resends")
    assert bench.sounder.mode == "blink"
    assert bench.rules.transmission.failed == ["link_fault:gateway/gb26875-link"]
    faults.worked("gb26875-link")
    assert bench.sounder.mode == "off"
    assert bench.rules.transmission.failed == []


def test_a_storm_of_waiting_alarms_costs_a_bounded_number_of_reads_a_tick(bench: Bench) -> None:
    """The oldest 16 still-unconfirmed alarms are read each tick, not every one: the light
    blinks on them anyway, and the newer ones are looked at once they are confirmed."""
    alarms = [bench.emit(fire(point=f"p{i}")) for i in range(100)]
    reads: list[int] = []

    def counted(seq: int) -> bool:
        reads.append(seq)
        return bench.unconfirmed(seq)

    bench.rules.transmission.tick(counted)
    assert reads == [a.seq for a in alarms[:16]]
    assert bench.light.mode == "blink"
    for alarm in alarms:
        bench.confirm(alarm)
    reads.clear()
    bench.rules.transmission.tick(counted)
    assert len(reads) == 100 and bench.light.mode == "on"  # all confirmed in one look


def test_the_running_gateway_lights_a_fire_being_sent_and_steadies_it_once_acknowledged(
    tmp_path: Path,
) -> None:
    """The runtime's wiring: the stored listener, the duties' thread and the buffer's
    acknowledgement (what the uplink does on PUBACK), on the example config's outputs."""
    from gpiozero import Device

    from agent.runtime import Gateway
    from tests.test_runtime import HeldLowPin, example_config
    from tests.waiting import wait_until

    gw = Gateway(example_config(tmp_path))
    gw.buffer.start()
    factory = MockFactory()
    factory.pin(23, pin_class=HeldLowPin)  # the tamper switch, held closed by the lid
    Device.pin_factory = factory
    try:
        gw._start_gpio()
        gw.duty_timers.start()
        light = factory.pin(16)  # transmission-led
        stored = gw.emit(fire()).result(timeout=10)
        assert wait_until(lambda: gw.rules.transmission.light == "blink")
        assert gw.gpio is not None and gw.gpio.outputs["transmission-led"].mode == "blink"
        assert stored.seq is not None
        gw.buffer.ack(Lane.EVENT, stored.seq)
        assert wait_until(lambda: gw.rules.transmission.light == "on")
        assert wait_until(lambda: light.state)
    finally:
        gw.duty_timers.stop()
        if gw.gpio is not None:
            gw.gpio.close()
        gw.uplink.stop()  # never started here; this releases its wake-up socket pair
        gw.buffer.close()
        gw.pointstate.close()
        Device.pin_factory = None
        factory.close()


def test_an_alarm_unconfirmed_across_a_restart_drives_the_light_and_the_failure_again(
    bench: Bench, tmp_path: Path
) -> None:
    """kill -9 with a fire the centre has not confirmed: the next run learns it from the
    buffer, blinks the light and sounds the failure 40 s later (review item 8)."""
    alarm = bench.emit(fire())
    bench.confirm(alarm, readers=("mqtt",))  # the broker took it, the centre did not
    bench.emit(Event(Kind.STATE, Category.DOOR, Severity.WARNING, "open", "门", "door-1"))
    bench.buffer.close()  # the run ends
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, 1000, readers=("mqtt", "gb")).start()
    clock = HandClock(5000.0)
    rules = LocalRules(
        [
            ("transmission-led", "transmission-light", bench.light),
            ("failure-sounder", "transmission-failed", bench.sounder),
        ],
        monotonic=clock,
    )
    rules.uplink_changed(True)
    duties = UitdDuties(lambda e: None, buffer, lambda: rules, Guard(), DutySettings())
    try:
        assert duties.resume() == 1
        rules.transmission.tick(duties.unconfirmed)
        assert bench.light.mode == "blink"
        clock.now += 40
        rules.transmission.tick(duties.unconfirmed)
        assert bench.sounder.mode == "blink"
        assert rules.transmission.failed == [f"unconfirmed:{alarm.seq}"]
        assert alarm.seq is not None
        buffer.ack(Lane.EVENT, alarm.seq, "gb")
        rules.transmission.tick(duties.unconfirmed)
        assert (bench.light.mode, bench.sounder.mode) == ("on", "off")
    finally:
        buffer.close()
