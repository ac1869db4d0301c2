"""The gateway's wiring, on gpiozero's MockFactory (the only thing that cannot exist here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from agent.config import Config, load_config
from agent.runtime import Gateway
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


class HeldLowPin(MockPin):
    """A contact already closed to ground when the gateway boots: the pull-up cannot lift it."""

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        self.drive_low()


def example_config(tmp_path: Path) -> Config:
    text = (ROOT / "config" / "example.toml").read_text(encoding="utf-8")
    text = text.replace("/var/lib/alarmgw/buffer.db", str(tmp_path / "buffer.db"))
    text = text.replace("/run/alarmgw/control.sock", str(tmp_path / "control.sock"))
    path = tmp_path / "alarmgw.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(example_config(tmp_path))
    gw.buffer.start()
    try:
        yield gw
    finally:
        if gw.gpio is not None:
            gw.gpio.close()
        gw.uplink.stop()  # never started here; this releases its wake-up socket pair
        gw.buffer.close()
        gw.pointstate.close()


def test_manual_alarm_held_at_boot_sounds_the_buzzer(gateway: Gateway) -> None:
    factory = MockFactory()
    factory.pin(22, pin_class=HeldLowPin)  # the manual alarm button, pressed at boot
    factory.pin(23, pin_class=HeldLowPin)  # the tamper switch, held closed by the lid
    Device.pin_factory = factory
    try:
        gateway._start_gpio()
        assert gateway.gpio is not None
        deadline = time.monotonic() + 5
        while not gateway.rules.alarm.sounding and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # the contact settles after its 20 ms debounce
        assert gateway.rules.alarm.sounding
        assert [a.device for a in gateway.rules.active_alarms()] == ["manual-alarm"]
        assert factory.pin(24).state  # the buzzer output is driven
    finally:
        if gateway.gpio is not None:
            gateway.gpio.close()
            gateway.gpio = None
        Device.pin_factory = None
        factory.close()


@pytest.mark.world
def test_the_agent_does_not_load_the_offline_tools_dependencies() -> None:
    """sqlite-utils (with click under it) is ~14 MB of RSS: only `alarmgw buffer --file`
    may load it, never the long-running agent on a 1 GB Pi (the footprint bench caught it)."""
    import subprocess
    import sys

    code = "import sys, agent.cli, agent.runtime; print('sqlite_utils' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.world
def test_a_locked_buffer_starts_degraded_and_keeps_watching(tmp_path: Path) -> None:
    """Not corruption: the file is left alone, the agent starts anyway (degraded, which
    `status` shows) and stores to the file once the lock is gone."""
    import signal
    import sqlite3
    import subprocess
    import sys

    from agent.buffer import EventBuffer
    from agent.cli.client import AgentNotRunning, ControlClient
    from core.events import Identity
    from tests.waiting import wait_until

    text = (ROOT / "config" / "example.toml").read_text(encoding="utf-8")
    db = tmp_path / "buffer.db"
    text = text.replace("/var/lib/alarmgw/buffer.db", str(db))
    text = text.replace("/run/alarmgw/control.sock", str(tmp_path / "control.sock"))
    config = tmp_path / "alarmgw.toml"
    config.write_text(text, encoding="utf-8")
    EventBuffer(db, Identity("s", "g"), 1000).start().close()
    holder = sqlite3.connect(db)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    client = ControlClient(tmp_path / "control.sock", timeout_s=5)

    def buffer_state() -> dict[str, object]:
        try:
            return dict(client.call("buffer"))
        except AgentNotRunning:
            return {}

    with subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={"GPIOZERO_PIN_FACTORY": "mock", "PATH": "/usr/bin:/bin"},
    ) as agent:
        try:
            assert wait_until(lambda: buffer_state().get("degraded") is True, timeout=30)
            assert "locked" in str(buffer_state()["degraded_reason"])
            holder.close()
            assert wait_until(lambda: buffer_state().get("degraded") is False, timeout=30)
        finally:
            holder.close()
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert not list(tmp_path.glob("buffer.db.corrupt*"))


def test_field_results_queued_behind_stored_events_keep_their_order(gateway: Gateway) -> None:
    """The points thread records stored events in batches; a comm change queued behind
    them must still be handled before the one queued after it (loss, then restore)."""
    import json

    from core.events import Category, Event, Kind, Lane, Severity, now_ms
    from drivers.line import CommChange

    stored = Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", "门开", "gpio", "door")
    lost = CommChange("gas-1", lost=True, reason="timeout", failures=3, ts_ms=now_ms())
    back = CommChange("gas-1", lost=False, reason="", failures=0, ts_ms=now_ms())
    gateway.field.line_output(lost)
    gateway.field.line_output(back)
    assert gateway.field.process_queued(stored.with_seq(1)) is True
    assert gateway.field_devices["gas-1"].lost is False
    deadline = time.monotonic() + 10
    rows = gateway.buffer.pending(Lane.EVENT, 0, 100)
    while len(rows) < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)  # the group commit happens on the writer thread
        rows = gateway.buffer.pending(Lane.EVENT, 0, 100)
    assert [json.loads(bytes(r.payload))["kind"] for r in rows] == ["comm_loss", "comm_restore"]


def test_recent_events_page_forward_from_a_seq_and_limit_zero_gives_none(
    gateway: Gateway,
) -> None:
    """`alarmgw events --since SEQ --limit N` pages forward: the N after SEQ, oldest first
    (not the newest N, which would skip the ones between); limit 0 is a follow with no
    backlog."""
    from core.events import Category, Event, Kind, Severity

    futures = [
        gateway.emit(Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", f"门 {i}", "door"))
        for i in range(10)
    ]
    seqs = [f.result(5).seq for f in futures]
    deadline = time.monotonic() + 5
    while len(gateway.pipeline.recent()) < 10 and time.monotonic() < deadline:
        threading.Event().wait(0.01)  # the stored callback runs on the buffer's thread
    first = seqs[0]
    assert first is not None
    events = gateway.local_view.events
    page = events(first, 3)
    assert [e["seq"] for e in page] == seqs[1:4]
    assert [e["seq"] for e in events(None, 3)] == seqs[-3:]
    assert events(None, 0) == []
    assert events(first, 0) == []


class BreakablePin(MockPin):
    """An output whose GPIO line refuses to be driven while `broken` (a lost gpiochip, a
    line claimed by another process): what gpiozero's factories raise then."""

    broken = False

    def _set_state(self, value: bool) -> None:
        if BreakablePin.broken:
            raise OSError(16, "Device or resource busy")
        super()._set_state(value)


def stored_events(gateway: Gateway, count: int) -> list[dict[str, object]]:
    import json

    from core.events import Lane

    deadline = time.monotonic() + 10
    rows = gateway.buffer.pending(Lane.EVENT, 0, 100)
    while len(rows) < count and time.monotonic() < deadline:
        threading.Event().wait(0.01)  # the group commit happens on the writer thread
        rows = gateway.buffer.pending(Lane.EVENT, 0, 100)
    return [json.loads(bytes(r.payload)) for r in rows]


def test_a_buzzer_that_cannot_be_driven_is_one_fault_and_restored_when_it_sounds(
    gateway: Gateway,
) -> None:
    factory = MockFactory()
    factory.pin(24, pin_class=BreakablePin)  # the buzzer
    Device.pin_factory = factory
    try:
        gateway._start_gpio()
        BreakablePin.broken = True  # after it opened: the line is lost while running
        for _ in range(2):  # the button pressed twice: one fault, not one a press
            factory.pin(22).drive_low()
            assert wait_until(lambda: gateway.rules.alarm.sounding)
            factory.pin(22).drive_high()
            assert wait_until(lambda: not gateway.rules.alarm.sounding)
        events = stored_events(gateway, 5)
        faults = [e for e in events if e["point"] == "output-buzzer"]
        assert [(e["kind"], e["state"], e["device"]) for e in faults] == [
            ("fault", "output_failed", "gateway")
        ]
        assert "Device or resource busy" in str(faults[0]["detail"])
        factory.pin(22).drive_low()  # sounding again, into the still broken output
        assert wait_until(lambda: gateway.rules.alarm.sounding)
        BreakablePin.broken = False
        gateway.rules.reapply()  # what the runtime's tick does while an output is failing
        assert factory.pin(24).state
        after = stored_events(gateway, 8)
        assert [e["kind"] for e in after if e["point"] == "output-buzzer"] == [
            "fault",
            "restore",
        ]
    finally:
        BreakablePin.broken = False
        if gateway.gpio is not None:
            gateway.gpio.close()
            gateway.gpio = None
        Device.pin_factory = None
        factory.close()


def test_an_uplink_whose_wake_up_raises_is_a_fault_not_a_dead_writer(gateway: Gateway) -> None:
    from core.events import Category, Event, Kind, Severity

    class BrokenUplink:
        alive = 0.0
        connected = False

        def wake(self) -> None:
            raise RuntimeError("a bug in a second uplink")

        def start(self) -> None: ...

        def stop(self) -> None: ...

    gateway.uplinks.append(BrokenUplink())
    for i in range(3):
        gateway.emit(Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", f"门{i}", "d"))
    events = stored_events(gateway, 4)
    assert [e["point"] for e in events].count("buffer_listener") == 1
    assert len(events) == 4  # the writer kept storing


def test_contact_conditions_remembered_under_the_old_gpio_device_are_restored(
    tmp_path: Path,
) -> None:
    """Before feed 1.2 a contact was device "gpio", point = the input. An alarm remembered
    that way would sound the buzzer after the upgrade and never be restored (the input now
    reports as its own device): it is restored at start instead."""
    from agent.pointstate import PointStateStore
    from core.events import Category, Event, Kind, Severity

    cfg = example_config(tmp_path)
    old = Event(Kind.ALARM, Category.MANUAL, Severity.CRITICAL, "pressed", "按下", "gpio",
                "manual-alarm")  # fmt: skip
    store = PointStateStore(cfg.buffer.path.with_name("pointstate.db"))
    store.record([old.with_seq(7)])
    store.close()
    upgraded = Gateway(cfg)
    upgraded.buffer.start()
    factory = MockFactory()  # every contact at rest
    Device.pin_factory = factory
    try:
        upgraded._restore_gateway_conditions()
        upgraded._start_gpio()
        assert not upgraded.rules.alarm.sounding
        events = stored_events(upgraded, 2)  # and the tamper lid, open on a bare bench
        old_key = [e for e in events if e["device"] == "gpio"]
        assert [(e["device"], e["point"], e["kind"], e["detail"]) for e in old_key] == [
            ("gpio", "manual-alarm", "restore", {"restores": "pressed", "reason": "restart"})
        ]
    finally:
        if upgraded.gpio is not None:
            upgraded.gpio.close()
        Device.pin_factory = None
        factory.close()
        upgraded.uplink.stop()
        upgraded.buffer.close()
        upgraded.pointstate.close()


def test_a_fire_stored_by_the_gateway_carries_its_gb_coordinates_and_reads_see_it(
    gateway: Gateway,
) -> None:
    """The runtime wires the mapping: the points thread stamps detail.gb before the buffer
    stores the event (the MQTT feed and the GB uplink read the same bytes), and the GB
    uplink's read hook answers from the same live state."""
    import json

    from agent.gb26875.adu import Adu, ComponentAddress, ComponentState, ReadComponentState
    from core.events import Lane, now_ms
    from drivers.line import PollResult
    from drivers.plan import plan_device
    from drivers.types import Block, PollClass

    fap = gateway.field_devices["fap"]
    registers = {2: 0x2A01}  # point3: fire, device type 42 in the high byte
    blocks = [
        Block(req, tuple(registers.get(a, 0) for a in range(req.address, req.address + req.count)))
        for req in plan_device(fap.profile, 1, PollClass.FAST, max_gap=8)
    ]
    assert gateway.field.process_queued(PollResult("fap", PollClass.FAST, blocks, now_ms()))

    def stored() -> list[dict[str, object]]:
        return [json.loads(bytes(r.payload)) for r in gateway.buffer.pending(Lane.EVENT, 0, 10)]

    assert wait_until(lambda: len(stored()) == 1, timeout=10)
    fire = stored()[0]
    assert fire["point"] == "point3"
    assert fire["detail"] == {
        "gb": {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 42, "zone": 259, "pos": 0,
               "status": 3},
    }  # fmt: skip
    answer = gateway.answer_read(Adu.of(ReadComponentState(1, 1, ComponentAddress(259, 0))))
    assert answer is not None
    state = answer.objects[0]
    assert isinstance(state, ComponentState)
    assert (state.component_type, state.status) == (42, 3)
