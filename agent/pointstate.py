"""Which alarm/fault/supervisory conditions the platform was last told are active.

A tiny SQLite file (WAL, synchronous=FULL), one row per active condition of a
(device, point), written from the events that reached the buffer. After a
restart the point rules are seeded from it, so a fire still present is not
announced twice and one that cleared while the agent was down gets its
restore (without it that restore would never be sent).

What a condition is: for a raise (alarm, fault, supervisory) its `state`; for
a restore its `detail["restores"]` (see `condition_of`). A restore without
one ends every condition of its point. Per condition the event with the highest
seq wins, as for the platform (docs/feed.md section 3): events may be recorded out
of seq order (a degraded buffer settles them as the broker acknowledges them, and
life-safety alarms are sent first), and an older restore must not end a newer raise.

This module must never crash the agent, never lose the buffer's data, and never
delete or move aside the alarm memory for anything but proven corruption (the
policy in agent/storage.py, shared with the buffer):

- a corrupt file is moved aside and the store starts empty (conditions are then
  re-announced, the safe side);
- a locked file at start is waited for (LOCK_WAIT_S, retrying), never called
  corrupt;
- a file that cannot be written (full or read-only card, I/O error, locked for
  longer) is read if it can be, and the store carries on in memory, trying the
  file again every RETRY_S; once it opens, memory is written to it whole. If it
  could not even be read at start, what it holds is merged in first (minus the
  conditions restored meanwhile), so no condition the platform was told about is
  forgotten.

It writes nothing when nothing changed (SD card wear). Record only events the
buffer made safe (on disk, or acknowledged by the broker): a condition recorded
but never delivered would be a lost alarm after a restart.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.storage import (
    CorruptDatabase,
    certainly_missing,
    check_integrity,
    is_locked,
    move_aside,
    open_read_only,
    proving_corruption,
)
from core.events import Category, Event, Kind, Severity

log = logging.getLogger(__name__)

LOCK_WAIT_S: Final = 15.0  # a file locked at start is waited for this long, then worked around
LOCK_POLL_S: Final = 0.5
RETRY_S: Final = 5.0  # a store without a writable file tries it again this often

RAISING_KINDS: Final = frozenset({Kind.ALARM, Kind.FAULT, Kind.SUPERVISORY, Kind.COMM_LOSS})
ENDING_KINDS: Final = frozenset({Kind.RESTORE, Kind.COMM_RESTORE})
COMM: Final = "comm"  # the condition of a device that stopped answering
_NO_POINT = ""  # SQLite primary keys and NULL do not mix: a point-less event is stored as ""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS active (
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    condition TEXT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    category TEXT NOT NULL,
    severity TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (device, point, condition)
) WITHOUT ROWID
"""
_UPSERT = "INSERT OR REPLACE INTO active VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM active WHERE device = ? AND point = ? AND condition = ?"


@dataclass(frozen=True, slots=True)
class ActiveCondition:
    """One condition the platform was told is active and has not been told has ended."""

    condition: str
    state: str
    kind: Kind
    category: Category
    severity: Severity
    since_ms: int


PointKey = tuple[str, str | None]  # (device, point)
Remembered = dict[PointKey, dict[str, ActiveCondition]]


def condition_of(event: Event) -> str | None:
    """The condition an alarm/fault/supervisory raises or a restore ends; None otherwise
    (and for a restore that does not say what it restores: it ends them all)."""
    if event.kind in (Kind.COMM_LOSS, Kind.COMM_RESTORE):
        return COMM
    if event.kind is Kind.RESTORE:
        restores = (event.detail or {}).get("restores")
        return restores if isinstance(restores, str) else None
    if event.kind in RAISING_KINDS:
        return event.state
    return None


class PointStateStore:
    """The active conditions, durable across restarts. Thread-safe."""

    def __init__(
        self, path: Path, *, lock_wait_s: float = LOCK_WAIT_S, retry_s: float = RETRY_S
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._active: Remembered = {}
        self._dirty = False  # the file lags the memory (it missed a change or is not open)
        self._conn: sqlite3.Connection | None = None
        self._retry_s = retry_s
        self._next_try = 0.0
        # False when the memory could not start from what the file holds (damaged, or
        # unreadable): conditions still active are announced again, and a restore for
        # one that ended while the agent was down may not come
        self.remembered_at_start = True
        self._merge = False  # the file was unreadable at start: merge it in when it opens
        self._ended: set[tuple[PointKey, str | None]] = set()  # restores meanwhile
        # the seq of the newest event applied, per condition and per "ends every condition"
        # of a point (this run's seqs only: every one is above what the file holds)
        self._seq_of: dict[tuple[PointKey, str | None], int] = {}
        self.problem: str | None = None  # why the file is not up to date; None when it is
        self._open_at_start(lock_wait_s)

    # --- public -------------------------------------------------------------------

    def load(self) -> Remembered:
        """A copy of every remembered active condition, by (device, point)."""
        with self._lock:
            return {key: dict(conds) for key, conds in self._active.items()}

    def record(self, events: Iterable[Event]) -> int:
        """Apply emitted events (raise -> row, restore -> no row) in one transaction.
        Returns how many rows changed; writes nothing when that is 0."""
        with self._lock:
            upserts, deletes = self._apply_locked(events)
            if not (upserts or deletes or self._dirty):
                return 0
            self._write_locked(upserts, deletes)
            return len(upserts) + len(deletes)

    def maintain(self) -> None:
        """Bring a lagging file up to date (called when idle; tries every retry_s)."""
        with self._lock:
            if self._dirty and time.monotonic() >= self._next_try:
                self._write_locked([], [])

    def close(self) -> None:
        """A lagging file gets one last try (the card may be fine by now), then closes."""
        with self._lock:
            if self._dirty:
                self._next_try = 0.0
                self._write_locked([], [])
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PointStateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- memory -------------------------------------------------------------------

    def _apply_locked(
        self, events: Iterable[Event]
    ) -> tuple[list[tuple[PointKey, ActiveCondition]], list[tuple[PointKey, str]]]:
        upserts: dict[tuple[PointKey, str], ActiveCondition] = {}
        deletes: set[tuple[PointKey, str]] = set()
        for event in events:
            if event.test:
                continue  # a test alarm is never an active condition
            key: PointKey = (event.device, event.point)
            condition = condition_of(event)
            if not self._newest(key, condition, event):
                continue  # a newer event of this condition was applied already
            if event.kind in RAISING_KINDS and condition is not None:
                if condition in self._active.get(key, {}):
                    continue  # already active: keep the first `since`
                active = ActiveCondition(
                    condition, event.state, event.kind, event.category, event.severity,
                    event.ts_ms,
                )  # fmt: skip
                self._active.setdefault(key, {})[condition] = active
                upserts[(key, condition)] = active
                deletes.discard((key, condition))
            elif event.kind in ENDING_KINDS:
                if self._merge:  # the unread file may hold this condition: remember the end
                    self._ended.add((key, condition))
                conds = self._active.get(key, {})
                ended = [condition] if condition is not None else self._older_than(key, event)
                for cond in ended:
                    if conds.pop(cond, None) is not None:
                        deletes.add((key, cond))
                        upserts.pop((key, cond), None)
                if not conds:
                    self._active.pop(key, None)
        return [(k, a) for (k, _), a in upserts.items()], sorted(deletes, key=_sort_key)

    def _newest(self, key: PointKey, condition: str | None, event: Event) -> bool:
        """Is `event` newer than what was applied to its condition? Records it if so."""
        seq = event.seq
        if seq is None or (event.kind not in RAISING_KINDS and event.kind not in ENDING_KINDS):
            return True
        newer = max(self._seq_of.get((key, condition), 0), self._seq_of.get((key, None), 0))
        if seq < newer:
            return False
        self._seq_of[(key, condition)] = seq
        return True

    def _older_than(self, key: PointKey, event: Event) -> list[str]:
        """The conditions of `key` that a restore of them all, `event`, ends: those not
        raised again by a newer event."""
        seq = event.seq if event.seq is not None else 0
        conds = self._active.get(key, {})
        return [c for c in conds if self._seq_of.get((key, c), 0) <= seq]

    # --- file ---------------------------------------------------------------------

    def _write_locked(
        self,
        upserts: list[tuple[PointKey, ActiveCondition]],
        deletes: list[tuple[PointKey, str]],
    ) -> None:
        if self._conn is None and not self._reopen_locked():
            self._dirty = True
            return
        assert self._conn is not None
        try:
            with _transaction(self._conn):
                if self._dirty:  # the file missed a change: rewrite it whole
                    self._conn.execute("DELETE FROM active")
                    upserts = [(k, a) for k, conds in self._active.items() for a in conds.values()]
                    deletes = []
                self._conn.executemany(_DELETE, [(d, p or _NO_POINT, c) for (d, p), c in deletes])
                self._conn.executemany(_UPSERT, [_row(k, a) for k, a in upserts])
        except sqlite3.Error as exc:
            self._dirty = True
            self._next_try = time.monotonic() + self._retry_s
            self._trouble(f"cannot be written: {exc}")
            return
        self._dirty = False
        if self.problem is not None:
            log.warning("point state %s is written again", self.path)
            self.problem = None

    def _trouble(self, problem: str) -> None:
        if problem != self.problem:  # said once, not at every retry
            log.error("point state %s %s (kept in memory, retried)", self.path, problem)
        self.problem = problem

    def _open_at_start(self, lock_wait_s: float) -> None:
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                self._conn, self._active = self._open()
            except CorruptDatabase as exc:
                self._replace_corrupt(str(exc))
            except sqlite3.Error as exc:
                if is_locked(exc) and time.monotonic() < deadline:
                    time.sleep(LOCK_POLL_S)  # another process holds it: it will let go
                    continue
                self._without_file(exc)
            return

    def _replace_corrupt(self, why: str) -> None:
        """Proven damaged: keep it for a post-mortem and start empty (the safe side)."""
        self.remembered_at_start = False
        try:
            stamp = move_aside(self.path)
        except OSError as exc:  # read-only card: leave it, run from memory
            self._dirty = True
            self._trouble(f"is damaged ({why}) and cannot be moved aside: {exc.strerror}")
            return
        log.error("point state %s is damaged (%s): moved aside as %s", self.path, why, stamp)
        try:
            self._conn, _ = self._open()
        except (sqlite3.Error, CorruptDatabase) as exc:
            self._dirty = True
            self._trouble(f"cannot be created: {exc}")

    def _without_file(self, exc: sqlite3.Error) -> None:
        """Not corruption (locked, full, read-only, I/O error, missing directory): leave
        the file alone, start from what can be read of it, write it once it opens."""
        self._dirty = True
        self._next_try = time.monotonic() + self._retry_s
        self._trouble(f"cannot be opened for writing: {exc}")
        if certainly_missing(self.path) and not certainly_missing(self.path.parent):
            return  # a first start: nothing to remember
        try:
            conn = open_read_only(self.path)
            try:
                self._active = _load(conn)
            finally:
                conn.close()
        except sqlite3.Error as read_exc:
            log.error(  # noqa: TRY400 - the reason is enough
                "point state %s cannot be read either (%s): conditions still active are "
                "announced again; the file is merged in once it opens",
                self.path,
                read_exc,
            )
            self.remembered_at_start = False
            self._merge = True

    def _reopen_locked(self) -> bool:
        """Open the file for writing again (at most every retry_s). Memory is written to
        it whole next; if it could not be read at start, its conditions are merged in."""
        if time.monotonic() < self._next_try:
            return False
        self._next_try = time.monotonic() + self._retry_s
        try:
            conn, on_file = self._open()
        except CorruptDatabase as exc:
            self._replace_corrupt(str(exc))
            if self._conn is None:
                return False
            conn, on_file = self._conn, {}
        except sqlite3.Error as exc:
            self._trouble(f"cannot be opened for writing: {exc}")
            return False
        if self._merge:
            self._merge_locked(on_file)
        self._conn = conn
        self._dirty = True
        return True

    def _merge_locked(self, on_file: Remembered) -> None:
        for key, conds in on_file.items():
            for cond, active in conds.items():
                if (key, cond) in self._ended or (key, None) in self._ended:
                    continue  # ended while the file could not be read
                self._active.setdefault(key, {}).setdefault(cond, active)
        self._merge = False
        self._ended.clear()

    def _open(self) -> tuple[sqlite3.Connection, Remembered]:
        """The file for writing and what it holds. CorruptDatabase only on proof."""
        try:  # the state directory may not exist yet on a first start outside systemd
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.path.parent}: {exc}") from exc
        # Nobody else opens this file: a lock means trouble; _open_at_start waits it out.
        conn = sqlite3.connect(
            self.path, timeout=1.0, isolation_level=None, check_same_thread=False
        )
        with proving_corruption(conn):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            check_integrity(conn)
            conn.execute(_SCHEMA)
            active = _load(conn)
        return conn, active


def _load(conn: sqlite3.Connection) -> Remembered:
    active: Remembered = {}
    try:
        rows = conn.execute("SELECT * FROM active").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return active  # created but never written
        raise
    for row in rows:
        try:
            key, condition = _from_row(row)
        except ValueError as exc:  # a value this version does not know: skip that row
            log.error("point state: unreadable row %r skipped: %s", row, exc)  # noqa: TRY400
            continue
        active.setdefault(key, {})[condition.condition] = condition
    return active


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _sort_key(item: tuple[PointKey, str]) -> tuple[str, str, str]:
    (device, point), condition = item
    return (device, point or _NO_POINT, condition)


def _row(key: PointKey, a: ActiveCondition) -> tuple[str, str, str, str, str, str, str, int]:
    device, point = key
    return (
        device, point or _NO_POINT, a.condition, a.state, a.kind.value, a.category.value,
        a.severity.value, a.since_ms,
    )  # fmt: skip


def _from_row(
    row: tuple[str, str, str, str, str, str, str, int],
) -> tuple[PointKey, ActiveCondition]:
    device, point, condition, state, kind, category, severity, since_ms = row
    active = ActiveCondition(
        condition, state, Kind(kind), Category(category), Severity(severity), int(since_ms)
    )
    return (device, point or None), active
