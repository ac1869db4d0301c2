"""Failures that used to be only a line in the log are fault events: once per cause while
they last, a restore when the same thing works again, and the event path goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import EventBuffer
from agent.faults import INTERNAL_ERROR, Faults
from agent.pipeline import Pipeline
from core.events import Category, Event, Identity, Kind, Lane, Record, Severity
from tests.waiting import wait_until

IDENT = Identity("site-t", "gw-t")


def door(i: int) -> Event:
    return Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", f"门 {i}", "door-1", "contact")


def test_a_guarded_callback_raises_one_fault_and_restores_when_it_works() -> None:
    sent: list[Record] = []
    faults = Faults(sent.append)
    broken = {"now": True}

    def listener() -> None:
        if broken["now"]:
            raise OSError("gone")

    guarded = faults.guard("buffer_listener", listener)
    for _ in range(5):
        guarded()  # never raises into the caller (the buffer's writer)
    assert [(e.kind, e.point, e.state) for e in sent if isinstance(e, Event)] == [
        (Kind.FAULT, "buffer_listener", INTERNAL_ERROR)
    ]
    broken["now"] = False
    guarded()
    guarded()
    restores = [e for e in sent[1:] if isinstance(e, Event)]
    assert [(e.kind, e.point, e.detail) for e in restores] == [
        (Kind.RESTORE, "buffer_listener", {"restores": INTERNAL_ERROR})
    ]
    assert faults.quiet


class BrokenRules:
    def __init__(self) -> None:
        self.broken = True
        self.seen = 0

    def on_event(self, event: Event) -> None:
        self.seen += 1
        if self.broken:
            raise RuntimeError("a buzzer rule bug")


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[EventBuffer]:
    buf = EventBuffer(tmp_path / "buffer.db", IDENT, 1000).start()
    try:
        yield buf
    finally:
        buf.close()


def stored(buffer: EventBuffer) -> list[tuple[str, str | None, str]]:
    import json

    rows = buffer.pending(Lane.EVENT, 0, 100)
    payloads = [json.loads(bytes(r.payload)) for r in rows]
    return [(p["kind"], p["point"], p["state"]) for p in payloads]


def test_rules_that_raise_cost_no_event_and_are_one_fault(buffer: EventBuffer) -> None:
    pipeline = Pipeline(buffer, IDENT)
    rules = BrokenRules()
    pipeline.set_rules(rules)
    for i in range(3):
        pipeline.emit(door(i)).result(5)
    assert wait_until(lambda: len(stored(buffer)) == 4)
    assert stored(buffer).count(("fault", "rules", INTERNAL_ERROR)) == 1
    assert stored(buffer).count(("state", "contact", "open")) == 3  # every event kept
    rules.broken = False
    pipeline.emit(door(9)).result(5)
    assert wait_until(lambda: ("restore", "rules", "normal") in stored(buffer))


def test_a_stored_listener_that_raises_is_one_fault_and_the_others_still_run(
    buffer: EventBuffer,
) -> None:
    pipeline = Pipeline(buffer, IDENT)
    heard: list[int] = []

    def bad(event: Event) -> None:
        raise ValueError("listener bug")

    pipeline.listen_stored("pointstate_listener", bad)
    pipeline.listen_stored("heard", lambda e: heard.append(e.seq or 0))
    for i in range(3):
        pipeline.emit(door(i)).result(5)
    assert wait_until(lambda: len(heard) >= 4)  # three doors and the fault, all heard
    assert stored(buffer).count(("fault", "pointstate_listener", INTERNAL_ERROR)) == 1
    assert len(pipeline.recent()) >= 4
