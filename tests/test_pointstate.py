"""The remembered active conditions: a real SQLite file, closed and reopened as a
restart would, and the point rules seeded from it (no duplicate alarm for a fire
still present, exactly one restore for one that cleared while the agent was down);
and a sick card (locked, full, read-only: real tmpfs mounts) that must never cost
the memory."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.points import DevicePoints
from agent.pointstate import ActiveCondition, PointStateStore, condition_of
from core.events import Category, Event, Kind, Reading, Record, Severity
from drivers.profile import load_profile
from drivers.types import Block, PollClass, ReadRequest, Table
from tests.mounts import fill, needs_root, remount, tmpfs

ROOT = Path(__file__).resolve().parent.parent
FIRE_PANEL = load_profile(ROOT / "config" / "profiles" / "fire-panel-gst.toml")
ANALOG = load_profile(ROOT / "config" / "profiles" / "analog-4-20ma.toml")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "pointstate.db"


@pytest.fixture
def store(path: Path) -> Iterator[PointStateStore]:
    with PointStateStore(path) as s:
        yield s


def fire(point: str = "point3", device: str = "fap", **kw: object) -> Event:
    return Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", device, point, **kw)  # type: ignore[arg-type]


def restore(restores: str | None, point: str = "point3", device: str = "fap") -> Event:
    detail = {"restores": restores} if restores else None
    return Event(
        Kind.RESTORE, Category.FIRE, Severity.INFO, "normal", "恢复", device, point, detail=detail
    )


def reopened(path: Path) -> dict[tuple[str, str | None], dict[str, ActiveCondition]]:
    with PointStateStore(path) as again:
        return again.load()


# --- the store --------------------------------------------------------------------


def test_raise_is_remembered_across_a_reopen_and_restore_forgets_it(
    store: PointStateStore, path: Path
) -> None:
    fault = Event(
        Kind.FAULT, Category.POWER, Severity.MINOR, "power_fault", "主电故障", "fap", "main_power"
    )
    assert store.record([fire(ts_ms=1000), fault]) == 2
    remembered = reopened(path)
    assert remembered[("fap", "point3")] == {
        "fire": ActiveCondition("fire", "fire", Kind.ALARM, Category.FIRE, Severity.CRITICAL, 1000)
    }
    assert set(remembered[("fap", "main_power")]) == {"power_fault"}
    assert store.record([restore("fire")]) == 1
    assert set(reopened(path)) == {("fap", "main_power")}


def test_a_repeated_raise_keeps_its_first_time(store: PointStateStore, path: Path) -> None:
    store.record([fire(ts_ms=1000)])
    assert store.record([fire(ts_ms=5000)]) == 0
    assert reopened(path)[("fap", "point3")]["fire"].since_ms == 1000


def test_raise_and_restore_in_one_call_leave_nothing(store: PointStateStore, path: Path) -> None:
    store.record([fire(), restore("fire"), fire("point4"), restore(None, "point4")])
    assert reopened(path) == {}


def test_no_write_when_nothing_changes(store: PointStateStore, path: Path) -> None:
    store.record([fire()])
    files = sorted(path.parent.glob(path.name + "*"))
    before = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    quiet: list[Event] = [
        fire(),  # already active
        restore("fault"),  # was never active
        restore("fire", point="point9"),
        fire(point="point5", test=True),  # a test alarm is not a condition
        Event(Kind.STATE, Category.PUMP, Severity.INFO, "running", "运行", "gpio", "pump"),
        Event(Kind.SYSTEM, Category.SYSTEM, Severity.WARNING, "clock_unsynced", "时钟", "gateway"),
    ]
    assert store.record(quiet) == 0
    assert store.record([]) == 0
    after = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    assert after == before
    assert sorted(path.parent.glob(path.name + "*")) == files


def test_point_less_conditions_round_trip(store: PointStateStore, path: Path) -> None:
    ev = Event(Kind.FAULT, Category.SYSTEM, Severity.MINOR, "disk_full", "磁盘满", "gateway")
    store.record([ev])
    assert set(reopened(path)[("gateway", None)]) == {"disk_full"}


def test_an_older_restore_recorded_late_does_not_end_a_newer_raise(
    store: PointStateStore, path: Path
) -> None:
    """A degraded buffer records events as the broker acknowledges them, and life-safety
    alarms are sent first: fire 14 and fire 16 may settle before restore 15. Per
    condition the highest seq wins (feed.md section 3), here as on the platform."""
    store.record([fire().with_seq(14), fire().with_seq(16)])
    store.record([restore("fire").with_seq(15)])
    assert set(reopened_after(store, path)[("fap", "point3")]) == {"fire"}


def test_an_older_restore_of_everything_spares_what_was_raised_after_it(
    store: PointStateStore, path: Path
) -> None:
    store.record([fire().with_seq(16)])
    store.record([restore(None).with_seq(15)])
    assert set(reopened_after(store, path)[("fap", "point3")]) == {"fire"}
    store.record([fire().with_seq(14)])  # older than the restore of everything: stale
    store.record([restore(None).with_seq(17)])
    assert reopened_after(store, path) == {}


def test_a_stale_raise_after_a_newer_restore_stays_ended(
    store: PointStateStore, path: Path
) -> None:
    store.record([restore("fire").with_seq(21)])
    store.record([fire().with_seq(20)])
    assert reopened_after(store, path) == {}


def reopened_after(
    store: PointStateStore, path: Path
) -> dict[tuple[str, str | None], dict[str, ActiveCondition]]:
    """What a restart would find: the memory matches the file."""
    remembered = reopened(path)
    assert remembered == store.load()
    return remembered


def test_condition_of() -> None:
    assert condition_of(fire()) == "fire"
    assert condition_of(restore("fire")) == "fire"
    assert condition_of(restore(None)) is None
    state = Event(Kind.STATE, Category.DOOR, Severity.INFO, "open", "开", "gpio", "door")
    assert condition_of(state) is None


def test_garbage_file_is_moved_aside_and_the_store_starts_fresh(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path.write_bytes(b"this is not a database, it is what a power cut left\n" * 200)
    with caplog.at_level(logging.ERROR), PointStateStore(path) as store:
        assert store.load() == {}
        assert store.record([fire()]) == 1
    assert "moved aside" in caplog.text
    [aside] = path.parent.glob(path.name + ".corrupt-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    assert set(reopened(path)) == {("fap", "point3")}


def test_damaged_pages_are_detected_and_moved_aside(path: Path) -> None:
    with PointStateStore(path) as store:
        store.record([fire(f"point{n}") for n in range(1, 200)])
    with sqlite3.connect(path) as conn:  # fold the WAL in, so the damage hits the data
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 2 * page
    data[page : 2 * page] = b"\xa5" * page  # scribble over page 2
    path.write_bytes(bytes(data))
    with PointStateStore(path) as store:  # no crash
        assert store.load() == {}
    assert list(path.parent.glob(path.name + ".corrupt-*"))


@pytest.mark.slow
def test_a_failed_write_is_retried_in_full_by_the_next_call(
    store: PointStateStore, path: Path
) -> None:
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # another writer holds the file
        store.record([fire()])  # cannot be written: logged, never raised
        assert store.load()[("fap", "point3")]  # memory still knows it
        locker.execute("ROLLBACK")
    finally:
        locker.close()
    store.record([])  # nothing new, but the file lags: it is rewritten
    assert set(reopened(path)) == {("fap", "point3")}


# --- restarts: the point rules seeded from the store ---------------------------------


def blocks(codes: dict[int, int], power: int = 0) -> list[Block]:
    regs = tuple(codes.get(a, 0) for a in range(16))
    return [
        Block(ReadRequest(1, Table.HOLDING, 0, 16), regs),
        Block(ReadRequest(1, Table.HOLDING, 1000, 1), (power,)),
    ]


def events(records: list[Record]) -> list[tuple[Kind, str, str | None, str | None]]:
    return [
        (r.kind, r.state, r.point, (r.detail or {}).get("restores"))
        for r in records
        if isinstance(r, Event)
    ]


def run_agent(path: Path, codes: dict[int, int], ts_ms: int, power: int = 0) -> list[Record]:
    """One agent life: open the store, build the points from it, poll once, record."""
    with PointStateStore(path) as store:
        points = DevicePoints("fap", "1号火灾报警控制器", None, FIRE_PANEL, store.load())
        out = points.update(PollClass.FAST, blocks(codes, power), ts_ms, True, ts_ms / 1000)
        store.record(e for e in out if isinstance(e, Event))
        return out


def test_restart_with_a_fire_still_present_does_not_alarm_twice(path: Path) -> None:
    assert events(run_agent(path, {2: 1}, 1000, power=1)) == [
        (Kind.ALARM, "fire", "point3", None),
        (Kind.FAULT, "power_fault", "main_power", None),
    ]
    assert run_agent(path, {2: 1}, 2000, power=1) == []  # restarted: still there, said before
    assert run_agent(path, {2: 1}, 3000, power=1) == []


def test_restart_with_a_cleared_fire_restores_exactly_once(path: Path) -> None:
    run_agent(path, {2: 1}, 1000)
    assert events(run_agent(path, {}, 2000)) == [(Kind.RESTORE, "normal", "point3", "fire")]
    assert run_agent(path, {}, 3000) == []


def test_restart_raises_what_is_new_and_keeps_a_fire_through_a_fault(path: Path) -> None:
    run_agent(path, {2: 1}, 1000)
    # while the agent was down the point went into fault and point5 into fire
    assert events(run_agent(path, {2: 2, 4: 1}, 2000)) == [
        (Kind.FAULT, "fault", "point3", None),
        (Kind.ALARM, "fire", "point5", None),
    ]
    assert events(run_agent(path, {}, 3000)) == [
        (Kind.RESTORE, "normal", "point3", "fire"),
        (Kind.RESTORE, "normal", "point3", "fault"),
        (Kind.RESTORE, "normal", "point5", "fire"),
    ]


def test_without_a_store_the_first_poll_behaves_as_before() -> None:
    points = DevicePoints("fap", "FAP", None, FIRE_PANEL)
    assert events(points.update(PollClass.FAST, blocks({2: 1}), 0, True, 0.0)) == [
        (Kind.ALARM, "fire", "point3", None)
    ]


def active(condition: str, kind: Kind = Kind.ALARM) -> ActiveCondition:
    return ActiveCondition(condition, condition, kind, Category.WATER, Severity.MAJOR, 0)


def analog_blocks(ch1_ua: int, ch2_ua: int) -> list[Block]:
    return [Block(ReadRequest(1, Table.INPUT, 0, 2), (ch1_ua, ch2_ua))]


def test_remembered_thresholds_and_wire_breaks() -> None:
    remembered = {
        ("ai", "ch1_pressure"): {"low_pressure": active("low_pressure")},
        ("ai", "ch2_level"): {"wire_break": active("wire_break", Kind.FAULT)},
    }
    points = DevicePoints("ai", "模拟量模块", None, ANALOG, remembered)
    [low] = list(ANALOG.points["ch1_pressure"].thresholds.values())
    assert low.state == "low_pressure"
    # ch1 still low (0.05 MPa = 4500 µA), ch2 back from its wire break (2.5 m)
    out = points.update(PollClass.SLOW, analog_blocks(4500, 12000), 0, True, 0.0)
    assert events(out) == [(Kind.RESTORE, "normal", "ch2_level", "wire_break")]
    assert [r.point for r in out if isinstance(r, Reading)] == ["ch1_pressure", "ch2_level"]
    # and ch1 restores as it would have without the restart
    out = points.update(PollClass.SLOW, analog_blocks(12000, 12000), 1000, True, 1.0)
    assert events(out) == [(Kind.RESTORE, "normal", "ch1_pressure", "low_pressure")]


def test_remembered_decode_error_and_vanished_points_are_restored() -> None:
    decode = ActiveCondition(
        "decode_error", "decode_error", Kind.FAULT, Category.SYSTEM, Severity.MINOR, 0
    )
    remembered = {
        ("fap", "point3"): {"decode_error": decode},
        ("fap", "point99"): {"fire": active("fire")},  # removed from the profile since
        ("other", "point4"): {"fire": active("fire")},  # another device's: not ours
    }
    points = DevicePoints("fap", "FAP", None, FIRE_PANEL, remembered)
    out = points.update(PollClass.FAST, blocks({}), 0, True, 0.0)
    assert events(out) == [
        (Kind.RESTORE, "normal", "point99", "fire"),
        (Kind.RESTORE, "normal", "point3", "decode_error"),
    ]
    assert points.update(PollClass.FAST, blocks({}), 1000, True, 1.0) == []


def test_a_missing_state_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "pointstate.db"
    with PointStateStore(path) as store:
        assert store.record([]) == 0
    assert path.exists()


# --- a sick card: the alarm memory is never lost for anything but proven corruption ----

_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))  # the scenario: someone holds the file this long
conn.close()
"""


def _fires(path: Path, *points: str) -> None:
    with PointStateStore(path) as store:
        store.record([fire(p, ts_ms=1000) for p in points])


def _not_moved(path: Path) -> None:
    assert not list(path.parent.glob("*.corrupt-*"))


@pytest.mark.slow
@pytest.mark.world
def test_a_file_locked_at_start_is_waited_for_never_moved_aside(path: Path) -> None:
    _fires(path, "point3")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with PointStateStore(path, lock_wait_s=30) as store:
            assert set(store.load()) == {("fap", "point3")}
            assert store.remembered_at_start and store.problem is None
    finally:
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    _not_moved(path)


def _lock_with_wal_content(path: Path) -> sqlite3.Connection:
    """Held exclusively, with committed pages still in the WAL: not even readable."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA user_version = 7")  # a committed change, not yet checkpointed
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.mark.slow
def test_a_file_locked_past_the_wait_is_merged_in_once_free(path: Path) -> None:
    _fires(path, "point3", "point5")
    holder = _lock_with_wal_content(path)
    try:
        with PointStateStore(path, lock_wait_s=0.3, retry_s=0) as store:
            assert not store.remembered_at_start and store.problem is not None
            assert store.load() == {}  # could not be read: conditions are announced again
            store.record([restore("fire", "point5"), fire("point4")])  # point5 ended meanwhile
            holder.close()
            store.maintain()
            assert store.problem is None
    finally:
        holder.close()
    _not_moved(path)
    assert set(reopened(path)) == {("fap", "point3"), ("fap", "point4")}


@needs_root
@pytest.mark.world
def test_a_read_only_card_at_start_still_remembers_and_writes_once_writable(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "card") as card:
        path = card / "pointstate.db"
        _fires(path, "point3", "point5")
        remount(card, "ro")
        try:
            with PointStateStore(path, retry_s=0) as store:  # no traceback
                assert set(store.load()) == {("fap", "point3"), ("fap", "point5")}
                assert store.remembered_at_start and store.problem is not None
                store.record([restore("fire", "point5")])  # kept in memory
                remount(card, "rw")
                store.maintain()
                assert store.problem is None
        finally:
            remount(card, "rw")
        assert set(reopened(path)) == {("fap", "point3")}
        _not_moved(path)


@needs_root
@pytest.mark.world
def test_a_full_card_at_start_neither_forgets_nor_moves_the_memory(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "card", size="1m") as card:
        path = card / "pointstate.db"
        _fires(path, "point3")
        filler = fill(card)
        with PointStateStore(path, retry_s=0) as store:
            assert set(store.load()) == {("fap", "point3")}  # read without the -shm index
            store.record([fire("point4")])
            assert store.problem is not None
            filler.unlink()
            store.maintain()
            assert store.problem is None
        _not_moved(path)
        assert set(reopened(path)) == {("fap", "point3"), ("fap", "point4")}


@needs_root
@pytest.mark.world
def test_a_corrupt_file_that_cannot_be_moved_aside_is_never_deleted(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "card") as card:
        path = card / "pointstate.db"
        damaged = b"this is not a database, it is what a power cut left\n" * 200
        path.write_bytes(damaged)
        remount(card, "ro")
        try:
            with PointStateStore(path) as store:  # no traceback, runs from memory
                assert store.load() == {} and not store.remembered_at_start
                store.record([fire()])
            assert path.read_bytes() == damaged
        finally:
            remount(card, "rw")
        with PointStateStore(path) as store:  # writable again: now it is moved aside
            assert store.record([fire()]) == 1
        assert list(card.glob("pointstate.db.corrupt-*"))


@pytest.mark.world
@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to drop")
def test_a_state_directory_the_service_user_cannot_search_is_trouble_not_a_traceback(
    tmp_path: Path,
) -> None:
    """Path.exists() raises PermissionError (not False) when the directory cannot be
    searched: the store must start anyway, remembering nothing it cannot read."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with PointStateStore(state / "pointstate.db") as s:
        s.record([fire().with_seq(1)])
    tmp_path.chmod(0o755)
    probe = (
        "from pathlib import Path; from agent.pointstate import PointStateStore;"
        f"s = PointStateStore(Path({str(state / 'pointstate.db')!r}), lock_wait_s=0);"
        "print('started', s.remembered_at_start, s.problem is not None); s.close()"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         probe],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.split() == ["started", "False", "True"]
