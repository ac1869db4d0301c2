"""Which alarm/fault/supervisory conditions the platform was last told are active.

A tiny SQLite file (WAL, synchronous=FULL), one row per active condition of a
(device, point), written from the events that reached the buffer. After a
restart the point rules are seeded from it, so a fire still present is not
announced twice and one that cleared while the agent was down gets its
restore (without it that restore would never be sent).

What a condition is: for a raise (alarm, fault, supervisory) its `state`; for
a restore its `detail["restores"]` (see `condition_of`). A restore without
one ends every condition of its point.

This module must never crash the agent and never lose the buffer's data: a
corrupt file is moved aside and the store starts empty (conditions are then
re-announced, the safe side); a failed write is logged and retried in full
on the next call. It writes nothing when nothing changed (SD card wear).
Record only events the buffer made durable: a condition recorded but never
buffered would be a lost alarm after a restart.
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

from agent.events import Category, Event, Kind, Severity

log = logging.getLogger(__name__)

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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._active: Remembered = {}
        self._dirty = False  # the file lags the memory after a failed write
        self._conn = self._open_or_start_fresh()

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

    def close(self) -> None:
        with self._lock:
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
                conds = self._active.get(key, {})
                ended = list(conds) if condition is None else [condition]
                for cond in ended:
                    if conds.pop(cond, None) is not None:
                        deletes.add((key, cond))
                        upserts.pop((key, cond), None)
                if not conds:
                    self._active.pop(key, None)
        return [(k, a) for (k, _), a in upserts.items()], sorted(deletes, key=_sort_key)

    # --- file ---------------------------------------------------------------------

    def _write_locked(
        self,
        upserts: list[tuple[PointKey, ActiveCondition]],
        deletes: list[tuple[PointKey, str]],
    ) -> None:
        if self._conn is None:
            return  # running without a file (it could not be created): memory only
        try:
            with _transaction(self._conn):
                if self._dirty:  # the file missed a change: rewrite it whole
                    self._conn.execute("DELETE FROM active")
                    upserts = [(k, a) for k, conds in self._active.items() for a in conds.values()]
                    deletes = []
                self._conn.executemany(_DELETE, [(d, p or _NO_POINT, c) for (d, p), c in deletes])
                self._conn.executemany(_UPSERT, [_row(k, a) for k, a in upserts])
            self._dirty = False
        except sqlite3.Error as exc:
            self._dirty = True
            log.error(  # noqa: TRY400 - the reason is enough, a traceback says nothing more
                "point state %s could not be written (retried next time): %s", self.path, exc
            )

    def _open_or_start_fresh(self) -> sqlite3.Connection | None:
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            log.error(  # noqa: TRY400
                "point state %s is unreadable (%s): moved aside, starting fresh", self.path, exc
            )
            self._move_aside()
        try:
            return self._open()
        except sqlite3.Error as exc:
            log.error(  # noqa: TRY400
                "point state %s cannot be created (%s): kept in memory only", self.path, exc
            )
            return None

    def _open(self) -> sqlite3.Connection:
        self._active = {}
        try:  # the state directory may not exist yet on a first start outside systemd
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.path.parent}: {exc}") from exc
        # Nobody else opens this file: a lock means trouble, never wait long for it.
        conn = sqlite3.connect(
            self.path, timeout=1.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
            conn.execute(_SCHEMA)
            for row in conn.execute("SELECT * FROM active"):
                key, active = _from_row(row)
                self._active.setdefault(key, {})[active.condition] = active
        except (sqlite3.Error, ValueError) as exc:
            conn.close()
            self._active = {}
            raise sqlite3.DatabaseError(str(exc)) from exc
        return conn

    def _move_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            try:
                part.rename(part.with_name(f"{part.name}.corrupt-{stamp}"))
            except FileNotFoundError:
                continue
            except OSError as exc:  # cannot keep it for a post-mortem: at least get rid of it
                log.error("cannot move %s aside (%s): deleting it", part, exc)  # noqa: TRY400
                part.unlink(missing_ok=True)


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
