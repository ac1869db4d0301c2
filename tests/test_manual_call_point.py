"""The manual call point (the gateway's manual alarm button, GB 26875.1: highest priority)
end to end on the gateway side: pressed through the pin factory, it becomes a
life-safety alarm with its GB coordinates, overtakes a backlog on every uplink (the
order lives in the buffer's read API) and takes its turn behind a fire queued before it.

The ordering chosen (docs/gb26875.md, docs/feed.md section 7): fire and manual alarms
are one class, first before everything else, and among themselves in seq order (the
order they happened), so neither can starve the other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from agent.buffer import ReadCursor
from agent.config import load_config
from agent.gb26875.tables import UitdStatus
from agent.runtime import Gateway
from core.events import Category, Event, Kind, Lane, Severity
from tests.test_runtime import HeldLowPin, example_config
from tests.waiting import wait_until

BACKLOG = 300


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    cfg = example_config(tmp_path)  # with the GB uplink beside MQTT: two readers
    text = cfg.path.read_text(encoding="utf-8")
    text += '\n[gb26875]\nhost = "127.0.0.1"\nport = 9\nuitd_address = 889\ncentre_address = 1\n'
    cfg.path.write_text(text, encoding="utf-8")
    gw = Gateway(load_config(cfg.path))
    gw.buffer.start()
    factory = MockFactory()
    factory.pin(23, pin_class=HeldLowPin)  # the tamper switch, held closed by the lid
    Device.pin_factory = factory
    try:
        yield gw
    finally:
        if gw.gpio is not None:
            gw.gpio.close()
        for uplink in gw.uplinks:
            uplink.stop()  # never started here; this releases their wake-up socket pairs
        gw.buffer.close()
        gw.pointstate.close()
        Device.pin_factory = None
        factory.close()


GB_DOOR = {"tf": 2, "sys_type": 0, "sys_addr": 9, "comp_type": 85, "zone": 0, "pos": 1}


def door(i: int) -> Event:
    """A backlog record for both uplinks (its GB coordinates make it the centre's too)."""
    detail = {"gb": GB_DOOR | {"status": 1}}
    return Event(
        Kind.STATE, Category.DOOR, Severity.WARNING, "open", f"门 {i}", "exit-door-1", detail=detail
    )


def test_a_pressed_manual_call_point_overtakes_a_backlog_behind_an_earlier_fire(
    gateway: Gateway,
) -> None:
    gateway._start_gpio()
    for i in range(BACKLOG):  # an outage's worth of older records
        gateway.emit(door(i))
    gb_fire = {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 40, "zone": 1, "pos": 3}
    fire = Event(
        Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "3号点火警", "fap", "p3",
        detail={"gb": gb_fire | {"status": 3}},
    )  # fmt: skip
    fire_seq = gateway.emit(fire).result(timeout=10).seq
    factory = Device.pin_factory
    assert isinstance(factory, MockFactory)
    assert not gateway.gb_live.uitd_status() & UitdStatus.FIRE
    factory.pin(22).drive_low()  # the manual alarm button, pressed
    assert wait_until(lambda: gateway.rules.alarm.sounding)
    # a read of the UITD state by the centre says fire while it is held
    assert wait_until(lambda: bool(gateway.gb_live.uitd_status() & UitdStatus.FIRE))

    def first_rows(reader: str | None = None) -> list[dict[str, object]]:
        rows = gateway.buffer.next_rows(ReadCursor(reader=reader), 3)
        return [json.loads(bytes(r.payload)) | {"seq": r.seq} for r in rows]

    assert wait_until(lambda: any(row["device"] == "manual-alarm" for row in first_rows()))
    assert first_rows("gb") == first_rows()  # the centre's uplink reads the same order
    fire_row, manual, oldest = first_rows()
    assert fire_row["seq"] == fire_seq  # its turn: the fire happened first
    assert (manual["device"], manual["category"], manual["kind"]) == (
        "manual-alarm",
        "manual",
        "alarm",
    )
    assert isinstance(manual["seq"], int) and manual["seq"] > BACKLOG + 1  # the newest...
    assert (oldest["seq"], oldest["text"]) == (1, "门 0")  # ...yet ahead of the whole backlog
    # its GB coordinates: the UITD's manual alarm (typeflag 24, flag bit 2)
    assert manual["detail"]["gb"] == {"tf": 24, "flags": 4, "operator": 0}  # type: ignore[index]
    assert gateway.buffer.pending(Lane.EVENT, 0, 1)[0].seq == 1  # nothing was reordered on disk
