"""EventBuffer on real SQLite files: seqs across restarts, group commit, no idle writes,
a corrupt or missing database, a full disk, a record that cannot be serialised."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.buffer import EventBuffer
from agent.events import Lane
from tests.uplink_helpers import IDENT, alarm, info_event, reading, wait_until


def open_buffer(path: Path, **kw: object) -> EventBuffer:
    return EventBuffer(path, IDENT, 100_000, **kw).start()  # type: ignore[arg-type]


def test_seqs_continue_across_restarts_without_skipping(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        seqs = [buf.submit(alarm()).result(5).seq for _ in range(3)]
        tseqs = [buf.submit(reading(i)).result(5).seq for i in range(2)]
    assert seqs == [1, 2, 3] and tseqs == [1, 2]
    with open_buffer(db) as buf:
        assert buf.submit(alarm()).result(5).seq == 4  # a normal restart skips nothing
        rows = buf.pending(Lane.EVENT)
        assert [r.seq for r in rows] == [1, 2, 3, 4]
        assert json.loads(rows[0].payload)["text"] == "1号楼 火警"
        for r in rows:
            buf.ack(r.lane, r.seq)
        assert wait_until(lambda: buf.stats()["event_depth"] == 0)
    with open_buffer(db) as buf:  # emptied buffer: still never reused
        assert buf.submit(alarm()).result(5).seq == 5
        assert buf.pending(Lane.TELEMETRY)[-1].seq == 2


def test_a_storm_is_group_committed_and_idle_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        futures = [buf.submit(info_event(i)) for i in range(5000)]
        assert [f.result(10).seq for f in futures] == list(range(1, 5001))
        assert buf.commits < 100  # thousands of events, a handful of transactions
        commits = buf.commits
        sizes = [p.stat().st_mtime_ns for p in tmp_path.iterdir()]
        time.sleep(0.5)  # observing that nothing happens: there is no event to await
        assert buf.commits == commits
        assert [p.stat().st_mtime_ns for p in tmp_path.iterdir()] == sizes


def test_a_corrupt_database_is_moved_aside_and_no_seq_is_reused(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        last = [buf.submit(alarm()).result(5).seq for _ in range(10)][-1]
    db.write_bytes(b"this is not an SQLite database" * 100)
    with open_buffer(db) as buf:
        rows = buf.pending(Lane.EVENT)
        fault = json.loads(rows[0].payload)
        new_seq = buf.submit(alarm()).result(5).seq
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside, "the corrupt file is kept for inspection"
    assert fault["kind"] == "fault" and fault["category"] == "system"
    low, high = fault["detail"]["lost_range"]
    assert low <= 1 and high >= last  # the range covers what the old file held
    assert fault["seq"] > last and new_seq > fault["seq"]  # above every seq handed out


def test_a_missing_database_with_a_sidecar_is_a_fault_not_a_silent_reset(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        buf.submit(alarm()).result(5)
    for p in tmp_path.glob("b.db*"):
        if not p.name.endswith(".seq"):
            p.unlink()
    with open_buffer(db) as buf:
        fault = json.loads(buf.pending(Lane.EVENT)[0].payload)
    assert fault["kind"] == "fault" and fault["seq"] > 1


def test_full_disk_holds_in_memory_and_a_restart_then_skips_to_the_ceiling(
    tmp_path: Path,
) -> None:
    db = tmp_path / "b.db"
    big = "满" * 2000
    with open_buffer(db, max_pages=30, retry_s=60) as buf:
        futures = [buf.submit(alarm(big)) for _ in range(80)]
        seqs = [f.result(5).seq for f in futures]
        assert seqs == sorted(seqs)  # all accepted, in order, despite the full file
        assert buf.degraded and buf.stats()["held"] > 0
        pend = [r.seq for r in buf.pending(Lane.EVENT, 0, 1000)]
        assert pend == list(range(1, 82))  # stored + held + the fault: one ordered lane
        states = [json.loads(r.payload)["state"] for r in buf.pending(Lane.EVENT, 0, 1000)]
        assert "degraded" in states
    # the process "died" with rows only in RAM: those seqs must not be handed out again
    with open_buffer(db) as buf:
        rows = buf.pending(Lane.EVENT, 0, 1000)
        faults = [json.loads(r.payload) for r in rows if json.loads(r.payload)["kind"] == "fault"]
        new = buf.submit(alarm()).result(5).seq
    assert any("lost_range" in f["detail"] for f in faults)
    assert new > max(pend)


def test_a_record_that_cannot_be_serialised_is_refused_without_using_a_seq(
    tmp_path: Path,
) -> None:
    with open_buffer(tmp_path / "b.db") as buf:
        bad = info_event(1)
        object.__setattr__(bad, "value", {1, 2})  # a set is not JSON
        failed = buf.submit(bad)
        ok = buf.submit(info_event(2)).result(5)
        assert failed.exception(5) is not None
        assert ok.seq == 1


def test_submit_after_close_fails_the_future_instead_of_raising(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    buf.close()
    assert buf.submit(alarm()).exception(1) is not None


def test_the_writer_stays_alive_when_idle_without_writing(tmp_path: Path) -> None:
    with open_buffer(tmp_path / "b.db") as buf:
        buf.submit(alarm()).result(5)
        commits = buf.commits
        before = buf.alive
        assert wait_until(lambda: buf.alive > before + 1.0, timeout=5)  # >= 2 idle ticks
        assert buf.commits == commits


def test_stored_bytes_are_exactly_the_records_payload(tmp_path: Path) -> None:
    """The writer splices the seq into bytes serialised by the submitter: the result must
    be byte for byte the record's own payload."""
    from agent.events import dumps

    with open_buffer(tmp_path / "b.db") as buf:
        stored = [buf.submit(r).result(5) for r in (alarm(), info_event(7), reading(3))]
        rows = buf.pending(Lane.EVENT) + buf.pending(Lane.TELEMETRY)
    by_key = {(r.lane, r.seq): r.payload for r in rows}
    for record in stored:
        assert record.seq is not None
        assert by_key[(record.lane, record.seq)] == dumps(record.to_payload(IDENT))
