"""One buffer, several readers: the MQTT uplink and the GB/T 26875.3 uplink read the same
durable buffer, each with its own cursor; a record leaves only when every reader has
confirmed it or set it aside (agent/buffer.py, Reader)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent import buffer as buffer_module
from agent.buffer import EventBuffer, ReadCursor, Reader
from core.events import Event, Lane, Record
from tests.uplink_helpers import IDENT, alarm, info_event, reading
from tests.waiting import wait_until


def _for_gb(record: Record) -> bool:
    return isinstance(record, Event) and "gb" in (record.detail or {})


def _gb_alarm() -> Event:
    return dataclasses.replace(alarm(), detail={"gb": {"tf": 2, "status": 3}})


READERS = ("mqtt", Reader("gb", _for_gb))


def _open(path: Path, max_events: int = 10_000, **kw: object) -> EventBuffer:
    return EventBuffer(path, IDENT, max_events, readers=READERS, **kw).start()  # type: ignore[arg-type]


def _seqs(buf: EventBuffer, reader: str, limit: int = 1000) -> list[int]:
    return [r.seq for r in buf.next_rows(ReadCursor(reader=reader), limit)]


def _rows_in_file(db: Path) -> list[tuple[str, int, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT lane, seq, done FROM records ORDER BY lane, seq").fetchall()
    finally:
        conn.close()


def test_a_record_leaves_only_when_every_reader_confirmed_it(tmp_path: Path) -> None:
    with _open(tmp_path / "b.db") as buf:
        seqs = [buf.submit(_gb_alarm()).result(5).seq for _ in range(3)]
        assert _seqs(buf, "mqtt") == seqs == _seqs(buf, "gb")
        buf.ack_many(Lane.EVENT, seqs[:2], "mqtt")
        assert wait_until(lambda: _seqs(buf, "mqtt") == seqs[2:])
        assert _seqs(buf, "gb") == seqs  # the other reader still has all three to send
        assert buf.stats()["event_depth"] == 3
        buf.ack_many(Lane.EVENT, seqs[1:], "gb")
        assert wait_until(lambda: buf.stats()["event_depth"] == 2)  # seq 2: both done
        assert _seqs(buf, "mqtt") == seqs[2:]
        assert _seqs(buf, "gb") == seqs[:1]
        assert buf.stats()["readers"] == {"mqtt": 1, "gb": 1}


def test_a_record_a_reader_cannot_carry_is_set_aside_at_store_without_a_write(
    tmp_path: Path,
) -> None:
    """A door event has no GB coordinates: the GB reader never sees it, and the MQTT
    reader's confirmation alone deletes it: no extra commit for the second reader."""
    with _open(tmp_path / "b.db") as buf:
        door = buf.submit(info_event(1)).result(5).seq
        fire = buf.submit(_gb_alarm()).result(5).seq
        assert _seqs(buf, "gb") == [fire]
        assert _seqs(buf, "mqtt") == [fire, door]
        commits = buf.commits
        buf.ack(Lane.EVENT, door, "mqtt")
        assert wait_until(lambda: buf.stats()["event_depth"] == 1)
        assert buf.commits == commits + 1  # the delete, nothing else


def test_telemetry_leaves_ram_when_the_reader_that_carries_it_acked(tmp_path: Path) -> None:
    with _open(tmp_path / "b.db") as buf:
        seq = buf.submit(reading(1)).result(5).seq
        assert _seqs(buf, "gb") == []  # a reading without a GB mapping: aside for GB
        assert buf.stats()["volatile"] == 1
        buf.ack(Lane.TELEMETRY, seq, "mqtt")
        assert wait_until(lambda: buf.stats()["volatile"] == 0)
        assert buf.stats()["telemetry_depth"] == 0
        assert buf.commits == 0  # never touched the card


def test_telemetry_both_readers_carry_stays_in_ram_until_both_acked(tmp_path: Path) -> None:
    readers = ("mqtt", Reader("gb", lambda r: True))
    with EventBuffer(tmp_path / "b.db", IDENT, 100, readers=readers) as buf:
        seq = buf.submit(reading(1)).result(5).seq
        buf.ack(Lane.TELEMETRY, seq, "mqtt")
        assert wait_until(lambda: _seqs(buf, "mqtt") == [])
        assert buf.stats()["volatile"] == 1 and _seqs(buf, "gb") == [seq]
        buf.ack(Lane.TELEMETRY, seq, "gb")
        assert wait_until(lambda: buf.stats()["volatile"] == 0)
        assert buf.commits == 0


def test_one_reader_down_never_stops_the_other_and_drops_are_announced_to_both(
    tmp_path: Path,
) -> None:
    """GB is down (never acks); MQTT keeps delivering. The bound still holds: when the
    buffer must drop, the rows only GB still needs go, MQTT gets every record, and the
    announcement, a record both readers get, says that GB lost them."""
    with _open(tmp_path / "b.db", max_events=10) as buf:
        got: list[int] = []
        for n in range(30):
            gb_fault = dataclasses.replace(info_event(n), detail={"gb": {"tf": 2, "status": 5}})
            seq = buf.submit(gb_fault if n % 2 else info_event(n)).result(5).seq
            assert seq in _seqs(buf, "mqtt"), f"seq {seq} never reached the MQTT reader"
            got.append(seq)
            buf.ack(Lane.EVENT, seq, "mqtt")  # MQTT keeps up
        assert buf.stats()["drops"]["event"] > 0

        def announced() -> list[dict[str, Any]]:  # at most one announcement a second
            rows = buf.next_rows(ReadCursor(reader="gb"), 100)
            return [json.loads(r.payload) for r in rows if b'"overflow"' in r.payload]

        assert wait_until(lambda: announced() != []), "the GB reader got no drop announcement"
        mqtt_rows = buf.next_rows(ReadCursor(reader="mqtt"), 100)
        assert {a["seq"] for a in announced()} <= {r.seq for r in mqtt_rows}
        assert all(set(a["detail"]["lost"]) == {"gb"} for a in announced())


def test_with_the_centre_down_mqtt_loses_no_event_to_the_bound(tmp_path: Path) -> None:
    """Review item 6: the buffer full of rows MQTT already delivered (the centre down):
    the next event MQTT has not seen, even an info event the centre does not carry, is
    kept; the rows of its class only the centre needed make room, and it is told."""
    with _open(tmp_path / "b.db", max_events=100) as buf:
        gb_fault = dataclasses.replace(info_event(0), detail={"gb": {"tf": 2, "status": 5}})
        seqs = buf.submit_many([dataclasses.replace(gb_fault) for _ in range(100)]).result(5)
        buf.ack_many(Lane.EVENT, list(seqs.seqs), "mqtt")  # MQTT delivered them all
        assert wait_until(lambda: buf.stats()["readers"] == {"mqtt": 0, "gb": 100})
        door = buf.submit(info_event(1)).result(5).seq
        mqtt = {(r.lane, r.seq) for r in buf.next_rows(ReadCursor(reader="mqtt"), 1000)}
        assert (Lane.EVENT, door) in mqtt
        assert buf.stats()["drops"]["event"] >= 1

        def lost() -> dict[str, Any]:
            rows = buf.next_rows(ReadCursor(reader="mqtt"), 1000)
            found = [json.loads(r.payload) for r in rows if b'"overflow"' in r.payload]
            return found[0]["detail"]["lost"] if found else {}

        assert wait_until(lambda: lost() != {})
        assert set(lost()) == {"gb"}, "MQTT was told it lost records it has"


def _fires_mqtt_has(buf: EventBuffer, count: int) -> list[int]:
    """`count` fire alarms MQTT delivered and the centre (down) still waits for."""
    seqs = list(buf.submit_many([_gb_alarm() for _ in range(count)]).result(5).seqs)
    buf.ack_many(Lane.EVENT, seqs, "mqtt")
    assert wait_until(lambda: buf.stats()["readers"] == {"mqtt": 0, "gb": count})
    return seqs


def test_fire_alarms_the_centre_lacks_outlive_readings_mqtt_lacks(tmp_path: Path) -> None:
    """Review C item 2: the centre down with 70 fire alarms MQTT has, then MQTT down too
    with 40 readings unsent, max_events 100: the class order comes first for every
    reader, so the readings make room (telemetry first) and every fire alarm stays for
    the centre, although the readings are rows the lagging reader does not need."""
    with _open(tmp_path / "b.db", max_events=100) as buf:
        fires = _fires_mqtt_has(buf, 70)
        for n in range(40):
            buf.submit(reading(n)).result(5)
        gb = {r.seq for r in buf.next_rows(ReadCursor(reader="gb"), 1000) if r.life_safety}
        assert gb == set(fires), f"{len(set(fires) - gb)} fire alarms lost to the centre"
        assert buf.stats()["drops"]["alarm"] == 0
        assert buf.stats()["drops"]["telemetry"] >= 10


def test_within_a_class_the_rows_only_the_laggard_needs_go_first(tmp_path: Path) -> None:
    """Life-safety rows are dropped only when nothing else is left, and then the ones
    only the centre still needs go before a fire MQTT has not sent."""
    with _open(tmp_path / "b.db", max_events=10) as buf:
        old = _fires_mqtt_has(buf, 10)
        new = buf.submit(_gb_alarm()).result(5).seq  # neither uplink has it
        mqtt = {r.seq for r in buf.next_rows(ReadCursor(reader="mqtt"), 100)}
        assert new in mqtt, "a fire MQTT never sent was dropped before one it had sent"
        gb = {r.seq for r in buf.next_rows(ReadCursor(reader="gb"), 100)}
        assert new in gb and old[0] not in gb
        assert buf.stats()["drops"]["alarm"] >= 1


def test_a_dropped_fire_alarm_is_not_delivered(tmp_path: Path) -> None:
    """Review C item 2: a fire alarm the bound dropped before the centre confirmed it is
    not "confirmed by every uplink": delivered() says False (the light, the 40 s failure
    signal, the duties and the self-check all ask it), not True because the row is gone."""
    with _open(tmp_path / "b.db", max_events=10) as buf:
        fires = _fires_mqtt_has(buf, 10)
        buf.submit_many([_gb_alarm() for _ in range(3)]).result(5)
        gb = {r.seq for r in buf.next_rows(ReadCursor(reader="gb"), 100)}
        dropped = [s for s in fires if s not in gb]
        assert dropped, "the bound dropped nothing"
        assert not any(buf.delivered(Lane.EVENT, s) for s in dropped)
        kept = next(s for s in fires if s in gb)
        buf.ack(Lane.EVENT, kept, "gb")
        assert buf.delivered(Lane.EVENT, kept)  # a confirmed one still is


def test_ordinary_drops_never_push_a_dropped_fire_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dropped seqs kept in RAM are bounded per kind: however many ordinary events
    are dropped afterwards (a chatty device while the buffer is full of fire alarms),
    the dropped fire stays "not delivered"."""
    monkeypatch.setattr(buffer_module, "DROPPED_KEPT", 2)
    with _open(tmp_path / "b.db", max_events=10) as buf:
        fires = _fires_mqtt_has(buf, 10)
        buf.submit(_gb_alarm()).result(5)
        dropped = fires[0]
        assert dropped not in {r.seq for r in buf.next_rows(ReadCursor(reader="gb"), 100)}
        doors = [buf.submit(info_event(n)).result(5).seq for n in range(5)]
        assert buf.stats()["drops"]["event"] >= 6  # the doors went: the lowest class
        assert not any(buf.delivered(Lane.EVENT, s) for s in doors[-2:])
        assert not buf.delivered(Lane.EVENT, dropped)


def test_a_dropped_event_with_one_reader_is_not_delivered(tmp_path: Path) -> None:
    with EventBuffer(tmp_path / "b.db", IDENT, 5) as buf:
        seqs = [buf.submit(alarm()).result(5).seq for _ in range(8)]
        gone = [s for s in seqs if s not in {r.seq for r in buf.pending(Lane.EVENT, 0, 100)}]
        assert gone
        assert not any(buf.delivered(Lane.EVENT, s) for s in gone)


def _deny_reads(conn: sqlite3.Connection) -> None:
    """Every statement on this connection fails, as on a card that returns I/O errors
    (a real sqlite3.DatabaseError from SQLite's authorizer, not a stand-in object)."""
    conn.set_authorizer(lambda *_: sqlite3.SQLITE_DENY)


def test_delivered_is_false_when_the_read_fails(tmp_path: Path) -> None:
    """Review C item 3: a failed read is no proof that the row is gone: a fire alarm the
    centre has not confirmed is not called delivered while the card refuses reads (the
    light would show it confirmed and the failure signal never sound)."""
    with _open(tmp_path / "b.db") as buf:
        fire = buf.submit(_gb_alarm()).result(5).seq
        buf.ack(Lane.EVENT, fire, "mqtt")
        assert wait_until(lambda: _rows_in_file(tmp_path / "b.db") == [("event", fire, 1)])
        assert not buf.delivered(Lane.EVENT, fire)
        assert buf._reader is not None
        _deny_reads(buf._reader)
        failures = buf.read_failures
        assert not buf.delivered(Lane.EVENT, fire)
        assert buf.read_failures > failures  # the read was tried, and failed
        buf._reader.set_authorizer(None)
        buf.ack(Lane.EVENT, fire, "gb")
        assert buf.delivered(Lane.EVENT, fire)


def test_delivered_is_false_when_the_read_fails_with_one_reader(tmp_path: Path) -> None:
    with EventBuffer(tmp_path / "b.db", IDENT, 100) as buf:
        seq = buf.submit(alarm()).result(5).seq
        assert buf._reader is not None
        _deny_reads(buf._reader)
        assert not buf.delivered(Lane.EVENT, seq)
        assert buf.read_failures > 0


def test_single_reader_buffer_deletes_on_ack_as_before(tmp_path: Path) -> None:
    with EventBuffer(tmp_path / "b.db", IDENT, 100) as buf:
        seq = buf.submit(alarm()).result(5).seq
        buf.ack(Lane.EVENT, seq)
        assert wait_until(lambda: buf.stats()["depth"] == 0)
        assert buf.stats()["readers"] == {"mqtt": 0}
    assert _rows_in_file(tmp_path / "b.db") == []


def test_removing_a_reader_from_the_config_releases_what_the_others_confirmed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "b.db"
    with _open(db) as buf:
        seq = buf.submit(_gb_alarm()).result(5).seq
        buf.ack(Lane.EVENT, seq, "mqtt")
        assert wait_until(lambda: _rows_in_file(db) == [("event", seq, 1)])
    with EventBuffer(db, IDENT, 100) as buf:  # MQTT only now: the row is finished
        assert buf.stats()["depth"] == 0
    assert _rows_in_file(db) == []


def test_an_unknown_reader_is_refused(tmp_path: Path) -> None:
    with _open(tmp_path / "b.db") as buf, pytest.raises(ValueError, match="unknown"):
        buf.ack(Lane.EVENT, 1, "gb2")
    with pytest.raises(ValueError, match="distinct"):
        EventBuffer(tmp_path / "c.db", IDENT, 10, readers=("mqtt", "mqtt"))


def test_a_carries_predicate_that_raises_offers_the_record(tmp_path: Path) -> None:
    def broken(record: Record) -> bool:
        raise KeyError("bug")

    readers = ("mqtt", Reader("gb", broken))
    with EventBuffer(tmp_path / "b.db", IDENT, 100, readers=readers) as buf:
        seq = buf.submit(info_event(1)).result(5).seq
        assert _seqs(buf, "gb") == [seq]


def test_a_file_from_before_readers_gains_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with EventBuffer(db, IDENT, 100) as buf:
        seq = buf.submit(_gb_alarm()).result(5).seq
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE records DROP COLUMN done")
    conn.commit()
    conn.close()
    with _open(db) as buf:
        assert _seqs(buf, "mqtt") == [seq] == _seqs(buf, "gb")


_CHILD = """
import sys
from pathlib import Path
from agent.buffer import EventBuffer, Reader
from dataclasses import replace
from core.events import Lane
from tests.uplink_helpers import IDENT, alarm, info_event

def gb_alarm(n):
    return replace(alarm(f"fire {n}"), detail={"gb": {"tf": 2, "status": 3}})

readers = ("mqtt", Reader("gb", lambda r: "gb" in (getattr(r, "detail", None) or {})))
buf = EventBuffer(Path(sys.argv[1]), IDENT, 100_000, readers=readers).start()
seqs = [buf.submit(gb_alarm(n) if n % 2 else info_event(n)).result(10).seq for n in range(40)]
buf.ack_many(Lane.EVENT, seqs[:30], "mqtt")
buf.ack_many(Lane.EVENT, [s for s in seqs[10:] if s % 2 == 0], "gb")
buf.submit(info_event(99)).result(10)  # committed after the acks (one queue, in order)
print(" ".join(map(str, seqs)), flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.world
def test_which_reader_confirmed_what_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        seqs = [int(s) for s in child.stdout.readline().split()]
        child.kill()
        child.wait(10)
    assert len(seqs) == 40
    gb_has = [s for s in seqs if s % 2 == 0]  # odd n (gb_alarm) got even seqs 2, 4, ...
    with _open(db) as buf:
        mqtt_left = set(_seqs(buf, "mqtt"))
        gb_left = set(_seqs(buf, "gb"))
    assert mqtt_left & set(seqs) == set(seqs[30:])
    assert gb_left & set(seqs) == {s for s in gb_has if s in seqs[:10]}


class Delivered:
    def __init__(self) -> None:
        self.keys: list[tuple[Lane, int]] = []

    def __call__(self, keys: list[tuple[Lane, int]]) -> None:
        self.keys += keys


def test_delivered_means_every_reader_confirmed_or_set_it_aside(tmp_path: Path) -> None:
    """The UITD's "sent" (the duties' transmission light): a fire is delivered once MQTT
    and the centre both confirmed it; a door event once MQTT did (the centre set it aside
    at store time)."""
    delivered = Delivered()
    with _open(tmp_path / "b.db") as buf:
        buf.on_delivered = delivered
        fire = buf.submit(_gb_alarm()).result(5).seq
        door = buf.submit(info_event(1)).result(5).seq
        buf.ack_many(Lane.EVENT, [fire, door], "mqtt")
        assert wait_until(lambda: delivered.keys == [(Lane.EVENT, door)])
        buf.ack(Lane.EVENT, fire, "gb")
        assert wait_until(lambda: delivered.keys == [(Lane.EVENT, door), (Lane.EVENT, fire)])


def test_asked_delivered_is_every_readers_answer_at_once(tmp_path: Path) -> None:
    """EventBuffer.delivered, what "confirmed" means to the light, the duties and the
    self-check: a fire the broker alone acked is not delivered; a door event the centre
    never carries is, on the broker's ack. No wait: an ack counts the moment it is made."""
    with _open(tmp_path / "b.db") as buf:
        fire = buf.submit(_gb_alarm()).result(5).seq
        door = buf.submit(info_event(1)).result(5).seq
        assert not buf.delivered(Lane.EVENT, fire) and not buf.delivered(Lane.EVENT, door)
        buf.ack_many(Lane.EVENT, [fire, door], "mqtt")
        assert buf.delivered(Lane.EVENT, door)
        assert not buf.delivered(Lane.EVENT, fire)
        buf.ack(Lane.EVENT, fire, "gb")
        assert buf.delivered(Lane.EVENT, fire)


def test_delivered_with_one_reader_is_its_ack(tmp_path: Path) -> None:
    delivered = Delivered()
    with EventBuffer(tmp_path / "b.db", IDENT, 100) as buf:
        buf.on_delivered = delivered
        seq = buf.submit(alarm()).result(5).seq
        assert delivered.keys == []
        buf.ack(Lane.EVENT, seq)
        assert wait_until(lambda: delivered.keys == [(Lane.EVENT, seq)])


def test_on_a_full_disk_held_rows_leave_ram_once_every_reader_is_done(tmp_path: Path) -> None:
    """Degraded (the card is full): new rows are held in RAM; each reader's confirmation
    is kept with the row there, and the row leaves RAM when the last reader confirms."""
    big = "满" * 2000
    with _open(tmp_path / "b.db", max_pages=30, retry_s=60) as buf:
        buf.submit_many([_gb_alarm() for _ in range(5)]).result(5)
        held = buf.submit_many(
            [dataclasses.replace(_gb_alarm(), text=big) for _ in range(40)]
        ).result(5)
        assert buf.degraded
        seqs = list(held.seqs)
        buf.ack_many(Lane.EVENT, seqs, "mqtt")
        assert wait_until(lambda: not set(seqs) & set(_seqs(buf, "mqtt")))
        assert set(seqs) <= set(_seqs(buf, "gb"))  # still the centre's to send
        assert all(buf.is_held(Lane.EVENT, seq) for seq in seqs)  # in RAM, for the centre
        buf.ack_many(Lane.EVENT, seqs, "gb")
        assert wait_until(lambda: not any(buf.is_held(Lane.EVENT, seq) for seq in seqs))
        assert buf.degraded  # still: they left RAM because both readers are done
        assert not set(seqs) & set(_seqs(buf, "gb"))


@pytest.mark.slow
def test_a_file_from_before_readers_that_cannot_be_migrated_is_still_read(
    tmp_path: Path,
) -> None:
    """Upgraded on a card that refuses writes (here: another process holds the write
    lock): the old file cannot gain its column, yet both readers get its records."""
    db = tmp_path / "b.db"
    with EventBuffer(db, IDENT, 100) as buf:
        seq = buf.submit(_gb_alarm()).result(5).seq
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE records DROP COLUMN done")
    conn.commit()
    conn.close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with _open(db, retry_s=60) as buf:  # waits out busy_timeout (5 s), then degrades
            assert buf.degraded
            assert seq in _seqs(buf, "mqtt") and seq in _seqs(buf, "gb")
            assert buf.read_failures == 0
    finally:
        other.close()


def test_counting_per_reader_never_holds_up_the_readers(tmp_path: Path) -> None:
    """Review item 9: stats()["readers"] scans the table (26 ms at 100,000 rows); it does
    that on a connection of its own, so an uplink's next_rows does not wait for it."""
    with _open(tmp_path / "b.db") as buf:
        seq = buf.submit(_gb_alarm()).result(5).seq
        buf.stats()  # opens the counting connection
        conn = buf._counting.db
        assert conn is not None
        inside, release = threading.Event(), threading.Event()

        def slow_scan(statement: str) -> None:  # the count, stopped half-way
            inside.set()
            release.wait(30)

        conn.set_trace_callback(slow_scan)
        buf.submit(info_event(1)).result(5)  # a commit: the next stats() counts again
        counting = threading.Thread(target=buf.stats, daemon=True)
        counting.start()
        try:
            assert inside.wait(10)
            got: list[list[int]] = []
            reading = threading.Thread(target=lambda: got.append(_seqs(buf, "gb")), daemon=True)
            reading.start()
            reading.join(10)  # a guard only: the read does not wait for the count
            assert got == [[seq]], "next_rows waited for the count"
        finally:
            release.set()
            counting.join(10)


def test_the_count_per_reader_is_taken_again_only_after_a_commit(tmp_path: Path) -> None:
    with _open(tmp_path / "b.db") as buf:
        buf.submit(_gb_alarm()).result(5)
        assert buf.stats()["readers"] == {"mqtt": 1, "gb": 1}
        statements: list[str] = []
        conn = buf._counting.db
        assert conn is not None
        conn.set_trace_callback(statements.append)
        for _ in range(3):
            assert buf.stats()["readers"] == {"mqtt": 1, "gb": 1}
        assert statements == []  # nothing changed in the file: no scan
        buf.submit(info_event(1)).result(5)  # a commit
        assert buf.stats()["readers"] == {"mqtt": 2, "gb": 1}
        assert len(statements) == 1
