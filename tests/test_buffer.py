"""EventBuffer on real SQLite files: seqs across restarts, group commit, no idle writes,
a corrupt or missing database, a full disk, a record that cannot be serialised, and a
sick card at start (full, read-only, locked, missing: real tmpfs mounts)."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import MAX_BATCH, EventBuffer, GroupRefused, StoredRecords
from agent.storage import is_corruption
from core.errors import BufferError_
from core.events import Lane, Record
from tests.mounts import fill, needs_root, remount, tmpfs
from tests.uplink_helpers import IDENT, alarm, info_event, reading, wait_until


def open_buffer(path: Path, max_events: int = 100_000, **kw: object) -> EventBuffer:
    return EventBuffer(path, IDENT, max_events, **kw).start()  # type: ignore[arg-type]


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
        # The storm arrives while the writer is busy (as in a slow fsync): it cannot take
        # from the queue until the lock it takes the queue under is free. How many records
        # a real storm finds queued depends on CPU speed; that it takes them all, at most
        # MAX_BATCH to a transaction, does not.
        with buf._cond:
            futures = [buf.submit(info_event(i)) for i in range(5000)]
        assert [f.result(10).seq for f in futures] == list(range(1, 5001))
        assert buf.commits == math.ceil(5000 / MAX_BATCH)  # not one per event
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


def test_a_damaged_page_behind_a_good_header_is_also_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        last = buf.submit_many([alarm(f"fire {i}" * 200) for i in range(200)]).result(10)[-1].seq
    raw = bytearray(db.read_bytes())
    assert len(raw) > 8 * 4096, "needs pages beyond the header to damage"
    raw[4096:] = bytes([0xA5]) * (len(raw) - 4096)  # page 1 (header, schema) intact
    db.write_bytes(bytes(raw))
    with open_buffer(db) as buf:
        fault = json.loads(buf.pending(Lane.EVENT)[0].payload)
    assert [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert fault["kind"] == "fault" and fault["seq"] > last


# --- a healthy file that cannot be opened right now is never moved aside ------------


def _five_alarms(db: Path) -> list[int]:
    with open_buffer(db) as buf:
        return [buf.submit(alarm(f"fire {i}")).result(5).seq for i in range(5)]


def _assert_untouched_and_resumes(db: Path, seqs: list[int], *after: str) -> None:
    names = sorted(p.name for p in db.parent.iterdir())
    assert not [n for n in names if ".corrupt-" in n], names
    with open_buffer(db) as buf:  # once the obstacle is gone: every alarm, no loss fault
        rows = buf.pending(Lane.EVENT)
        assert [r.seq for r in rows[: len(seqs)]] == seqs
        states = [json.loads(r.payload)["state"] for r in rows]
        assert states == ["fire"] * 5 + list(after)


def _hold_exclusive_lock(db: Path) -> sqlite3.Connection:
    # a technician's sqlite3 shell, or a stuck old agent, holding the write lock
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    return other


@pytest.mark.slow
def test_a_database_locked_at_start_degrades_and_is_written_once_free(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    seqs = _five_alarms(db)
    other = _hold_exclusive_lock(db)
    buf = open_buffer(db, retry_s=0.2)  # waits out busy_timeout (5 s), then degrades
    try:
        assert buf.degraded and "locked" in (buf.stats()["degraded_reason"] or "")
        held = buf.submit(alarm()).result(5)  # still accepted, and forwarded from RAM
        assert held.seq == 7 and buf.is_held(Lane.EVENT, 7)  # 6: the degraded fault
        # a clean stop left no WAL content: the file is read without a lock, and delivered
        assert [r.seq for r in buf.pending(Lane.EVENT)] == [*seqs, 6, 7]
        names = sorted(p.name for p in tmp_path.iterdir())
        assert not [n for n in names if ".corrupt-" in n], names
        other.close()
        assert wait_until(lambda: not buf.degraded, timeout=10)
        assert not buf.is_held(Lane.EVENT, 7)
    finally:
        other.close()
        buf.close()
    # the degraded fault, the alarm held meanwhile and the restore: all on disk, in order
    _assert_untouched_and_resumes(db, seqs, "degraded", "fire", "normal")


_LOCK_HOLDER = """
import sqlite3, sys
other = sqlite3.connect(sys.argv[1], isolation_level=None)
other.execute("PRAGMA locking_mode=EXCLUSIVE")
other.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


@pytest.mark.slow
@pytest.mark.world
def test_a_database_locked_by_another_process_is_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    seqs = _five_alarms(db)
    with subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline() == "locked\n"
            with open_buffer(db, retry_s=60) as buf:
                assert buf.degraded  # and stays so: its degraded fault (seq 6) dies in RAM
        finally:
            holder.stdin.close()
            holder.wait(10)
    _assert_untouched_and_resumes(db, seqs, "buffer_recovered")
    with open_buffer(db) as buf:
        fault = json.loads(buf.pending(Lane.EVENT)[5].payload)
    assert fault["detail"]["lost_range"] == [6, 6]  # exactly what was handed out


def test_a_database_that_cannot_be_opened_degrades_and_is_not_moved(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    db.mkdir()  # SQLITE_CANTOPEN: says nothing about any file's health
    with open_buffer(db, retry_s=60) as buf:
        assert buf.degraded and "unable to open" in (buf.stats()["degraded_reason"] or "")
        assert buf.submit(alarm()).result(5).seq is not None
    assert db.is_dir()
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_only_corrupt_and_notadb_result_codes_count_as_corruption(tmp_path: Path) -> None:
    garbage = tmp_path / "g.db"
    garbage.write_bytes(b"not a database" * 100)
    conn = sqlite3.connect(garbage)
    try:
        with pytest.raises(sqlite3.DatabaseError) as notadb:
            conn.execute("PRAGMA quick_check")
    finally:
        conn.close()
    assert is_corruption(notadb.value)
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert not is_corruption(busy)
    assert not is_corruption(sqlite3.DatabaseError("no code at all"))


def test_a_missing_database_with_a_sidecar_is_a_fault_not_a_silent_reset(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        old = [buf.submit(alarm()).result(5).seq or 0 for _ in range(3)]
    for p in tmp_path.glob("b.db*"):
        if not p.name.endswith(".seq"):
            p.unlink()
    with open_buffer(db) as buf:
        faults = [json.loads(r.payload) for r in buf.pending(Lane.EVENT)]
        new = buf.submit(alarm()).result(5).seq or 0
    event_fault = next(f for f in faults if f["detail"]["lane"] == "event")
    assert (event_fault["kind"], event_fault["state"]) == ("fault", "buffer_recovered")
    assert "missing" in event_fault["detail"]["why"]
    assert event_fault["seq"] > max(old) and new > event_fault["seq"]  # no seq again
    assert event_fault["detail"]["lost_range"][1] == event_fault["seq"] - 1


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
        assert wait_until(lambda: _events(buf)[-1]["state"] == "degraded")  # queued behind
        pend = [r.seq for r in buf.pending(Lane.EVENT, 0, 1000)]
        assert pend == list(range(1, 82))  # stored + held + the fault: one ordered lane
    # the process "died" with rows only in RAM: those seqs must not be handed out again,
    # and the loss names exactly those that were handed out (not a reserved block)
    on_disk = {seq for (lane, seq) in _stored_in_file(db) if lane == "event"}
    died = [seq for seq in pend if seq not in on_disk]
    with open_buffer(db) as buf:
        rows = buf.pending(Lane.EVENT, 0, 1000)
        faults = [json.loads(r.payload) for r in rows if json.loads(r.payload)["kind"] == "fault"]
        new = buf.submit(alarm()).result(5).seq
    assert died == list(range(died[0], max(pend) + 1))
    assert [f["detail"]["lost_range"] for f in faults if "lost_range" in f["detail"]] == [
        [died[0], max(pend)]
    ]
    assert new == max(pend) + 2  # right after the lost ones and the announcement


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", {1, 2}),  # a set is not JSON
        ("severity", "critical"),  # a plain string where the enum belongs
        ("ts_ms", 10**20),  # no calendar holds that second
        ("test", "false"),  # a truthy string must not become a test flag
        ("device", 7),  # a number in a text field
    ],
)
def test_a_record_that_cannot_be_serialised_is_refused_without_using_a_seq(
    tmp_path: Path, field: str, value: object
) -> None:
    with open_buffer(tmp_path / "b.db") as buf:
        bad = info_event(1)
        object.__setattr__(bad, field, value)
        failed = buf.submit(bad)  # never raises: the future says it
        group = buf.submit_many([alarm(), bad])
        ok = buf.submit(info_event(2)).result(5)
        assert isinstance(failed.exception(5), BufferError_)
        error = group.exception(5)
        assert isinstance(error, GroupRefused) and list(error.bad) == [1]
        assert ok.seq == 1


def test_submit_after_close_fails_the_future_instead_of_raising(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    buf.close()
    future = buf.submit(alarm())
    assert future.done()  # at once: nobody waits on a writer that is gone
    error = future.exception(0)
    assert isinstance(error, BufferError_) and "not running" in str(error)


@pytest.mark.slow
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
    from core.events import dumps

    with open_buffer(tmp_path / "b.db") as buf:
        stored = [buf.submit(r).result(5) for r in (alarm(), info_event(7), reading(3))]
        rows = buf.pending(Lane.EVENT) + buf.pending(Lane.TELEMETRY)
    by_key = {(r.lane, r.seq): r.payload for r in rows}
    for record in stored:
        assert record.seq is not None
        assert by_key[(record.lane, record.seq)] == dumps(record.to_payload(IDENT))


# --- submit_many: one future per group -------------------------------------------------

_KILL_CHILD = """
import sys
from pathlib import Path
from agent.buffer import EventBuffer
from tests.uplink_helpers import IDENT, alarm, info_event, reading

buf = EventBuffer(Path(sys.argv[1]), IDENT, 1_000_000).start()
n = 0
while True:  # until killed: groups of mixed lanes, each printed once it is stored
    group = [info_event(n + i) if i % 5 else reading(n + i) for i in range(49)] + [alarm()]
    n += len(group)
    stored = buf.submit_many(group).result(10)
    print(" ".join(f"{r.lane.value}:{r.seq}:{r.id}" for r in stored), flush=True)
"""


def _stored_in_file(db: Path) -> dict[tuple[str, int], str]:
    """(lane, seq) -> event id of every row in the file, read by a fresh connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT lane, seq, payload FROM records").fetchall()
    finally:
        conn.close()
    return {(lane, seq): json.loads(payload)["id"] for lane, seq, payload in rows}


def _run_child_until_killed(db: Path, groups: int) -> list[str]:
    """Start the child, read `groups` 'stored' lines, SIGKILL it at once: the moment right
    after a future resolved. Returns every line it printed."""
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, str(db)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        lines = []
        try:
            for _ in range(groups):
                line = child.stdout.readline()
                if not line:
                    break
                lines.append(line)
        finally:
            child.kill()
            child.wait(10)
        lines += child.stdout.readlines()  # printed between the last read and the kill
    assert len(lines) >= groups, "the child stopped before storing enough groups"
    return lines


@pytest.mark.world
def test_submit_many_is_durable_when_killed_right_after_the_future_resolves(
    tmp_path: Path,
) -> None:
    """Every event that resolved is in the file after kill -9. Telemetry waits in RAM
    for its PUBACK (none comes here): what died with the process is announced by the
    next start, and its seqs are never handed out again."""
    db = tmp_path / "b.db"
    seen: dict[tuple[str, int], str] = {}
    for cycle in range(3):  # killed and restarted: seqs continue, none reused
        for line in _run_child_until_killed(db, groups=5 + 7 * cycle):
            for item in line.split():
                lane, seq, ident = item.split(":")
                assert (lane, int(seq)) not in seen, "a seq was handed out twice"
                seen[(lane, int(seq))] = ident
        stored = _stored_in_file(db)
        missing = {k: v for k, v in seen.items() if k[0] == "event" and stored.get(k) != v}
        assert not missing, f"resolved but not in the file after kill -9: {sorted(missing)[:5]}"
    with open_buffer(db):  # the last start announces what the last kill took
        pass
    announced = [
        range(low, high + 1)
        for payload in _payloads(db)
        if payload["state"] == "buffer_recovered" and payload["detail"]["lane"] == "telemetry"
        for low, high in [payload["detail"]["lost_range"]]
    ]
    stored = _stored_in_file(db)
    gone = [k for k, v in seen.items() if k[0] == "telemetry" and stored.get(k) != v]
    assert gone, "telemetry died in RAM (the child never acked it)"
    assert all(any(k[1] in r for r in announced) for k in gone), "a silent telemetry loss"
    for lane in ("event", "telemetry"):
        seqs = sorted(seq for (ln, seq) in seen if ln == lane)
        assert seqs == sorted(set(seqs)) and seqs[0] == 1


def _payloads(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT payload FROM records ORDER BY lane, seq").fetchall()
    finally:
        conn.close()
    return [json.loads(payload) for (payload,) in rows]


def test_groups_and_single_submits_from_threads_keep_lane_order(tmp_path: Path) -> None:
    """Two threads submit groups (mixed lanes), two submit one by one, at once. Every
    group gets consecutive seqs per lane, each thread's records keep their order, each
    lane is 1..N without a gap, and a group's future resolves only when every one of
    its rows is committed (checked from a fresh connection inside the callback)."""
    db = tmp_path / "b.db"
    invisible: list[int] = []
    results: dict[str, list[Future[Any]]] = {}

    def check_visible(future: Future[StoredRecords]) -> None:
        keys = {(lane.value, seq) for lane, seq in future.result().lane_seqs()}
        events = {key for key in keys if key[0] == "event"}  # telemetry waits in RAM first
        invisible.extend(seq for key in events - _stored_in_file(db).keys() for seq in [key[1]])

    def grouped(name: str) -> None:
        futures: list[Future[Any]] = []
        for g in range(20):
            group = [info_event(g * 100 + i) if i % 3 else reading(i) for i in range(30)]
            future = buf.submit_many(group)
            future.add_done_callback(check_visible)
            futures.append(future)
        results[name] = futures

    def single(name: str) -> None:
        results[name] = [buf.submit(alarm() if i % 2 else reading(i)) for i in range(300)]

    with open_buffer(db) as buf:
        threads = [
            threading.Thread(target=fn, args=(f"{fn.__name__}{k}",))
            for k in range(2)
            for fn in (grouped, single)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        big = buf.submit_many([info_event(i) for i in range(2500)])  # > MAX_BATCH: not split
        big.add_done_callback(check_visible)
        stored = {name: [f.result(20) for f in fs] for name, fs in results.items()}
        big_seqs = big.result(20).seqs
    assert not invisible, f"future resolved before its rows were committed: {invisible[:5]}"
    assert big_seqs == list(range(big_seqs[0], big_seqs[0] + 2500))
    per_lane: dict[Lane, list[int]] = {Lane.EVENT: [], Lane.TELEMETRY: []}
    for name, outcomes in stored.items():
        records = [r for o in outcomes for r in (o if isinstance(o, StoredRecords) else [o])]
        for lane in per_lane:
            mine = [r.seq or 0 for r in records if r.lane is lane]
            assert mine == sorted(mine), f"{name}: {lane} out of submission order"
            per_lane[lane] += mine
        for group in (o for o in outcomes if isinstance(o, StoredRecords)):
            for lane in per_lane:
                seqs = [s for (ln, s) in group.lane_seqs() if ln is lane]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "group interleaved"
    per_lane[Lane.EVENT] += big_seqs
    for lane, seqs in per_lane.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"{lane}: gap or duplicate"


def test_a_group_overflowing_the_bound_drops_telemetry_first_and_says_so(
    tmp_path: Path,
) -> None:
    with open_buffer(tmp_path / "b.db", max_events=100) as buf:
        buf.submit_many([reading(i) for i in range(40)] + [info_event(i) for i in range(40)])
        group = [alarm() for _ in range(30)] + [reading(i) for i in range(20)]
        stored = buf.submit_many(group).result(10)
        assert [r.id for r in stored] == [r.id for r in group]  # every record got its seq
        assert wait_until(lambda: buf.stats()["drops"]["telemetry"] >= 30)
        events = [json.loads(r.payload) for r in buf.pending(Lane.EVENT, 0, 1000)]
        assert wait_until(lambda: any(e["state"] == "overflow" for e in _events(buf)))
        stats = buf.stats()
        telemetry = [r.seq for r in buf.pending(Lane.TELEMETRY, 0, 1000)]
    alarms = [e for e in events if e["kind"] == "alarm"]
    assert len(alarms) == 30, "a life-safety alarm was dropped while telemetry was left"
    assert stats["drops"]["alarm"] == 0 and stats["drops"]["event"] == 0
    # 40 + 40 + 50 records and the overflow announcement (each one makes room for itself:
    # a second comes a second later if the test is slow), in room for 100
    assert stats["drops"]["telemetry"] in (31, 32) and stats["depth"] == 100
    assert telemetry == list(range(telemetry[0], 61)) and telemetry[0] in (32, 33)


def _events(buf: EventBuffer) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in buf.pending(Lane.EVENT, 0, 1000)]


def test_drops_just_before_a_clean_stop_are_announced(tmp_path: Path) -> None:
    """Review item 7: drops tallied within ANNOUNCE_S of close() were lost with the RAM
    tally. Every drop is in some announcement after the restart. announce_s of an hour:
    the drops after the first announcement are in the tally at close however slow the
    machine (with 1 s they could be announced on time and the test pass without the fix)."""
    db = tmp_path / "b.db"
    with open_buffer(db, max_events=10, announce_s=3600) as buf:
        buf.submit_many([info_event(n) for n in range(10)]).result(5)  # at the bound
        buf.submit_many([info_event(n) for n in range(10, 15)]).result(5)
        buf.submit_many([info_event(n) for n in range(15, 20)]).result(5)
        dropped = buf.stats()["drops"]["event"]
    assert dropped >= 10
    with open_buffer(db, max_events=10) as buf:
        announced = [e["detail"]["dropped"] for e in _events(buf) if e["state"] == "overflow"]
    counted = sum(d.get("event", {}).get("count", 0) for d in announced)
    assert counted == dropped, f"{dropped} dropped, {counted} announced: {announced}"


def test_a_group_on_a_full_disk_is_held_and_resolves_in_order(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    big = "满" * 2000
    with open_buffer(db, max_pages=30, retry_s=60) as buf:
        first = buf.submit_many([alarm(big) for _ in range(5)]).result(5)
        held = buf.submit_many([alarm(big) for _ in range(80)]).result(5)  # cannot fit
        assert first.seqs == [1, 2, 3, 4, 5] and held.seqs == list(range(6, 86))
        assert buf.degraded and buf.stats()["held"] >= 80
        assert wait_until(lambda: _events(buf)[-1]["state"] == "degraded")  # queued behind
        pend = _events(buf)
        assert [p["seq"] for p in pend] == list(range(1, 87))  # + the fault, one lane
        ids = {p["seq"]: p["id"] for p in pend}
        assert all(ids[r.seq] == r.id for r in held)  # what resolved is what is pending
    with open_buffer(db) as buf:  # the held group died with the process: said so, exactly
        faults = [e for e in _events(buf) if e["kind"] == "fault"]
        assert buf.submit_many([alarm()]).result(5).seqs[0] == 88
    assert [f["detail"]["lost_range"] for f in faults] == [[6, 86]]


def test_a_group_with_a_record_that_cannot_be_stored_is_refused_whole(
    tmp_path: Path,
) -> None:
    with open_buffer(tmp_path / "b.db") as buf:
        bad = info_event(1)
        object.__setattr__(bad, "value", {1, 2})  # a set is not JSON
        already = buf.submit(alarm()).result(5)  # seq 1, and it has its seq set
        refused = buf.submit_many([info_event(0), bad, alarm(), already])
        error = refused.exception(5)
        assert isinstance(error, GroupRefused) and isinstance(error, BufferError_)
        assert sorted(error.bad) == [1, 3] and "serialised" in error.bad[1]
        assert buf.submit_many([]).result(5).seqs == []
        ok = buf.submit_many([info_event(2), reading(1)]).result(5)
        assert [r.seq for r in ok] == [2, 1]  # no seq was used up by the refused group
        assert len(buf.pending(Lane.EVENT)) == 2
    closed = buf.submit_many([alarm()])
    assert isinstance(closed.exception(1), BufferError_)


def test_submit_many_stores_the_records_own_bytes_and_reads_back_lazily(
    tmp_path: Path,
) -> None:
    from core.events import dumps

    group: list[Record] = [alarm(), info_event(7), reading(3), info_event(8)]
    with open_buffer(tmp_path / "b.db") as buf:
        stored = buf.submit_many(group).result(5)
        rows = buf.pending(Lane.EVENT) + buf.pending(Lane.TELEMETRY)
    by_key = {(r.lane, r.seq): r.payload for r in rows}
    assert len(stored) == 4 and stored.lane_seqs() == [(r.lane, r.seq) for r in stored]
    assert [r.seq for r in stored[1:3]] == [2, 1] and stored[-1].seq == 3
    for record, original in zip(stored, group, strict=True):
        assert record.seq is not None and original.seq is None  # a copy, not a mutation
        assert record.id == original.id
        assert by_key[(record.lane, record.seq)] == dumps(record.to_payload(IDENT))


# --- telemetry waits in RAM for its PUBACK: an idle gateway writes nothing --------------


def _files(d: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir())


def test_telemetry_acknowledged_in_time_never_touches_the_disk(tmp_path: Path) -> None:
    with open_buffer(tmp_path / "b.db", spill_s=60) as buf:
        buf.submit(reading(0)).result(5)  # the first one marks the lane in the sidecar
        buf.ack(Lane.TELEMETRY, 1)
        assert wait_until(lambda: buf.stats()["telemetry_depth"] == 0)
        commits, files = buf.commits, _files(tmp_path)
        for n in range(1, 200):  # periodic readings, each acknowledged by the broker
            row = buf.submit(reading(n)).result(5)
            assert buf.pending(Lane.TELEMETRY)[-1].seq == row.seq  # the uplink reads it
            buf.ack(Lane.TELEMETRY, row.seq or 0)
        assert wait_until(lambda: buf.stats()["telemetry_depth"] == 0)
        assert buf.commits == commits
        assert _files(tmp_path) == files  # not a byte: no WAL frame, no -shm page


@pytest.mark.slow
def test_telemetry_without_a_puback_reaches_the_disk_after_spill_s(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db, spill_s=3) as buf:
        seqs = [buf.submit(reading(n)).result(5).seq for n in range(5)]
        assert buf.stats()["volatile"] == 5 and not _stored_in_file(db)
        assert wait_until(lambda: len(_stored_in_file(db)) == 5, timeout=15)
        assert buf.stats()["volatile"] == 0
        assert [r.seq for r in buf.pending(Lane.TELEMETRY)] == seqs  # still to be sent
    with open_buffer(db) as buf:  # a clean restart: nothing lost, nothing announced
        assert [r.seq for r in buf.pending(Lane.TELEMETRY)] == seqs
        assert _events(buf) == []
        assert buf.submit(reading(9)).result(5).seq == 6


def test_a_clean_close_stores_telemetry_in_ram_and_continues_without_a_gap(
    tmp_path: Path,
) -> None:
    db = tmp_path / "b.db"
    with open_buffer(db, spill_s=60) as buf:
        for n in range(3):
            buf.submit(reading(n)).result(5)
        buf.ack_many(Lane.TELEMETRY, [1, 2])  # 3 is never acknowledged
    with open_buffer(db) as buf:
        assert [r.seq for r in buf.pending(Lane.TELEMETRY)] == [3]
        assert _events(buf) == []  # no loss to announce
        assert buf.submit(reading(4)).result(5).seq == 4


# --- a sick card at start: the buffer runs degraded, never refuses to start ---------------


@pytest.fixture
def card(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: the gateway's SD card, to fill up or turn read-only."""
    with tmpfs(tmp_path / "card") as mounted:
        yield mounted


def _queued_before(db: Path) -> list[int]:
    with open_buffer(db) as buf:
        seqs = [buf.submit(alarm(f"fire {i}")).result(5).seq or 0 for i in range(5)]
        buf.ack_many(Lane.EVENT, seqs[:2])  # two delivered, three still queued
        assert wait_until(lambda: buf.stats()["event_depth"] == 3)
        return seqs[2:]


@needs_root
@pytest.mark.world
def test_a_full_card_at_start_degrades_delivers_and_recovers_without_loss(card: Path) -> None:
    db = card / "buffer.db"
    queued = _queued_before(db)
    filler = fill(card)
    with open_buffer(db, retry_s=0.2) as buf:
        assert buf.degraded
        events = _events(buf)  # the queue on the card is read and delivered
        assert [e["seq"] for e in events[:3]] == queued
        assert events[3]["state"] == "degraded"
        held = buf.submit(alarm()).result(5)
        buf.ack_many(Lane.EVENT, queued)  # delivered: deleted once the card takes writes
        assert buf.is_held(Lane.EVENT, held.seq or 0)
        filler.unlink()
        assert wait_until(lambda: not buf.degraded, timeout=10)
        assert wait_until(lambda: buf.stats()["event_depth"] == 3, timeout=5)
    on_disk = sorted(seq for lane, seq in _stored_in_file(db) if lane == "event")
    assert on_disk == [held.seq - 1, held.seq, held.seq + 1]  # degraded, the alarm, restored
    with open_buffer(db) as buf:
        assert [e["state"] for e in _events(buf)] == ["degraded", "fire", "normal"]


@needs_root
@pytest.mark.world
def test_a_read_only_card_at_start_degrades_and_recovers_when_writable(card: Path) -> None:
    db = card / "buffer.db"
    queued = _queued_before(db)
    remount(card, "ro")
    try:
        with open_buffer(db, retry_s=0.2) as buf:
            assert buf.degraded and "read" in (buf.stats()["degraded_reason"] or "").lower()
            assert [e["seq"] for e in _events(buf)][:3] == queued
            seq = buf.submit(alarm()).result(5).seq or 0
            assert seq > queued[-1]
            remount(card, "rw")
            assert wait_until(lambda: not buf.degraded, timeout=10)
    finally:
        remount(card, "rw")
    assert ("event", seq) in _stored_in_file(db)


@needs_root
@pytest.mark.world
def test_restarts_on_a_card_that_cannot_record_seqs_never_repeat_one(card: Path) -> None:
    """Read-only from the start, sidecar too: nothing can record the seqs a run hands
    out, so each start jumps (microseconds since boot) and says continuity is unknown."""
    db = card / "buffer.db"
    _queued_before(db)
    remount(card, "ro")
    try:
        runs = []
        for _ in range(2):
            with open_buffer(db, retry_s=60) as buf:
                runs.append([buf.submit(alarm()).result(5).seq or 0 for _ in range(3)])
                notes = [e for e in _events(buf) if e["state"] == "buffer_recovered"]
        assert runs[1][0] > runs[0][-1] > 5
        assert notes and all("lost_range" not in e["detail"] for e in notes)
    finally:
        remount(card, "rw")


@needs_root
@pytest.mark.world
def test_a_corrupt_file_on_a_read_only_card_is_left_alone_until_it_can_be_moved(
    card: Path,
) -> None:
    db = card / "buffer.db"
    _queued_before(db)
    db.write_bytes(b"this is not an SQLite database" * 100)
    remount(card, "ro")
    try:
        with open_buffer(db, retry_s=0.2) as buf:
            assert buf.degraded
            assert db.read_bytes().startswith(b"this is not")  # neither moved nor deleted
            remount(card, "rw")
            assert wait_until(lambda: not buf.degraded, timeout=10)
            assert wait_until(
                lambda: any(e["state"] == "buffer_recovered" for e in _events(buf)), timeout=5
            )
    finally:
        remount(card, "rw")
    assert [p for p in card.iterdir() if ".corrupt-" in p.name]


def test_a_card_that_is_not_there_degrades(tmp_path: Path) -> None:
    blocker = tmp_path / "var"
    blocker.write_text("a file where the state directory should be")
    with open_buffer(blocker / "lib" / "buffer.db", retry_s=60) as buf:
        assert buf.degraded
        first = buf.submit(alarm()).result(5)
        assert first.seq is not None and buf.pending(Lane.EVENT)[-1].seq == first.seq


def test_a_loss_after_an_emptied_buffer_is_announced_from_the_first_held_seq(
    tmp_path: Path,
) -> None:
    """Everything delivered (the file holds no row), then the disk refuses writes: the
    rows that died in RAM start right after the last one stored."""
    db = tmp_path / "b.db"
    with open_buffer(db, max_pages=30, retry_s=60) as buf:
        delivered = [buf.submit(alarm()).result(5).seq or 0 for _ in range(5)]
        buf.ack_many(Lane.EVENT, delivered)
        assert wait_until(lambda: buf.stats()["depth"] == 0)
        held = [buf.submit(alarm("满" * 2000)).result(5).seq or 0 for _ in range(80)]
        assert buf.degraded
        assert wait_until(lambda: any(e["state"] == "degraded" for e in _events(buf)))
        last = _events(buf)[-1]["seq"]
    on_disk = {seq for (lane, seq) in _stored_in_file(db) if lane == "event"}
    first_lost = min(seq for seq in held if seq not in on_disk)
    with open_buffer(db) as buf:
        ranges = [e["detail"]["lost_range"] for e in _events(buf) if e["kind"] == "fault"]
    assert ranges == [[first_lost, last]]
