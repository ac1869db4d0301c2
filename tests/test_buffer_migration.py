"""Buffers written by earlier versions, opened by this one: real SQLite files laid out
as the older code left them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agent.buffer import EventBuffer, ReadCursor
from core.events import Category, Event, Kind, Lane, Severity
from tests.uplink_helpers import IDENT, alarm, info_event, reading


def _as_before_the_life_safety_class(db: Path) -> None:
    """Lay the file out as the buffer did before commit a53c6b8 (this repository,
    agent/buffer.py): drop classes 0 telemetry, 1 ordinary, 2 protected (life-safety
    alarms and the buffer's drop announcements alike), no partial alarm index."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE records SET drop_class = 2 WHERE drop_class = 3")
        conn.execute("DROP INDEX records_life_safety")
        conn.execute("DELETE FROM meta WHERE key LIKE 'migrated:%'")  # this version's mark
    conn.close()


def _classes(db: Path) -> dict[int, int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT seq, drop_class FROM records WHERE lane = 'event'")
        return dict(rows.fetchall())
    finally:
        conn.close()


def test_alarms_in_an_old_buffer_become_life_safety_rows_on_open(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with EventBuffer(db, IDENT, 100_000) as buf:
        buf.submit_many([info_event(i) for i in range(3)]).result(10)  # 1..3
        buf.submit(alarm()).result(5)  # 4: a fire alarm
        buf.submit(alarm("燃气", Category.GAS)).result(5)  # 5
        buf.submit(reading(1)).result(5)
    _as_before_the_life_safety_class(db)
    assert _classes(db)[4] == 2
    with EventBuffer(db, IDENT, 100_000) as buf:
        rows = buf.next_rows(ReadCursor(), 3)
        assert [r.seq for r in rows] == [4, 5, 1]  # the old alarms overtake the backlog
        assert all(r.life_safety for r in rows[:2])
    assert _classes(db) == {1: 1, 2: 1, 3: 1, 4: 3, 5: 3}


def _gas_alarm() -> Event:
    return Event(Kind.ALARM, Category.GAS, Severity.MAJOR, "alarm", "燃气 高报", "gas-1", "lel")


def test_a_full_buffer_keeps_an_old_fire_alarm_as_it_keeps_a_new_one(tmp_path: Path) -> None:
    """Bound 3, an old fire alarm and three new gas alarms: one alarm must go, and by the
    drop order (life-safety last, then the least severe first) it is a gas alarm, as it
    would be had the fire alarm been stored by this version, not the fire alarm that sat
    one class lower in the old file."""
    db = tmp_path / "b.db"
    with EventBuffer(db, IDENT, 100_000) as buf:
        buf.submit(alarm()).result(5)  # 1: fire, critical
    _as_before_the_life_safety_class(db)
    with EventBuffer(db, IDENT, 3) as buf:
        for _ in range(3):
            buf.submit(_gas_alarm()).result(5)
        kept = [json.loads(r.payload) for r in buf.pending(Lane.EVENT, 0, 100)]
    assert [e["category"] for e in kept if e["kind"] == "alarm"] == ["fire", "gas", "gas"]
