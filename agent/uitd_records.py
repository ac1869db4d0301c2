"""The records a user information transmission device keeps of its own duties (GB 26875.1):
the daily self-test, the simulated fire transmissions of each month and the monthly
self-check reports. One small SQLite file beside the buffer (`uitd.db`).

SD wear: it is written a few times a day at most — once per self-test, twice per
simulated fire transmission (seen, then confirmed), once per self-check report and
once a month for a reminder — never per event or per poll.

It must never raise anything but `RecordsError` (an AlarmgwError) into its callers:
a card that is full or read-only makes a write fail, which the self-test reports as
its storage item failing and the duties report as a fault; it never stops the agent.
Every method is thread-safe (one connection under one lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.storage import open_read_only
from core.errors import AlarmgwError

FILE_NAME: Final = "uitd.db"
BUSY_TIMEOUT_S: Final = 5.0
MAX_LIST: Final = 100

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS simulated (
    event_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    month TEXT,               -- local calendar month "YYYY-MM"; NULL until the clock is synced
    confirmed_ms INTEGER      -- NULL until the uplinks confirmed it
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    operator TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class RecordsError(AlarmgwError):
    """The records file cannot be read or written (full, read-only or damaged card)."""


@dataclass(frozen=True)
class Simulated:
    """One simulated fire transmission (a test alarm) the gateway has seen stored."""

    event_id: str
    seq: int
    ts_ms: int
    month: str | None
    confirmed_ms: int | None


def read_reports(path: Path, limit: int = MAX_LIST) -> list[dict[str, Any]]:
    """The reports of a records file, newest first, read-only (never written, locked or
    created): `alarmgw selfcheck --show --file` with the agent stopped."""
    try:
        conn = open_read_only(Path(path))
    except sqlite3.Error as exc:
        raise RecordsError(f"{path}: cannot be read: {exc}") from exc
    try:
        rows = conn.execute(
            "SELECT id, body FROM reports ORDER BY id DESC LIMIT ?", (min(limit, MAX_LIST),)
        ).fetchall()
    except sqlite3.Error as exc:
        raise RecordsError(f"{path}: not a records file with reports: {exc}") from exc
    finally:
        conn.close()
    return [{**json.loads(body), "number": number} for number, body in rows]


class UitdRecords:
    """The durable records of the UITD duties (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    # --- key/value: the last self-test, the reminder already given -------------------

    def get(self, key: str) -> Any:
        """The JSON value stored under `key`, or None."""
        row = self._query("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(row[0][0]) if row else None

    def put(self, key: str, value: Any) -> None:
        self._write(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, ensure_ascii=False)),
        )

    # --- simulated fire transmissions -------------------------------------------------

    def simulated_seen(self, event_id: str, seq: int, ts_ms: int) -> None:
        self._write(
            "INSERT OR IGNORE INTO simulated (event_id, seq, ts_ms) VALUES (?, ?, ?)",
            (event_id, seq, ts_ms),
        )

    def unconfirmed(self) -> list[Simulated]:
        return [
            Simulated(*row)
            for row in self._query(
                "SELECT event_id, seq, ts_ms, month, confirmed_ms FROM simulated "
                "WHERE confirmed_ms IS NULL ORDER BY seq"
            )
        ]

    def confirm(
        self, event_id: str, seq: int, ts_ms: int, confirmed_ms: int, month: str | None
    ) -> None:
        """The test alarm is confirmed by every uplink: counted, even when its "seen" row
        never reached the file (an upsert: never an UPDATE of nothing reported as done)."""
        self._write(
            "INSERT INTO simulated (event_id, seq, ts_ms, month, confirmed_ms) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET "
            "confirmed_ms = excluded.confirmed_ms, month = excluded.month",
            (event_id, seq, ts_ms, month, confirmed_ms),
        )

    def date_undated(self, month: str) -> int:
        """Confirmed transmissions whose month was unknown (clock unsynced) count in
        `month`, the first month the clock was synced again. Returns how many."""
        # looked at every tick: read first, so an idle gateway writes nothing (SD wear)
        undated = "month IS NULL AND confirmed_ms IS NOT NULL"
        if not self._query(f"SELECT 1 FROM simulated WHERE {undated} LIMIT 1"):  # noqa: S608
            return 0
        return self._write(f"UPDATE simulated SET month = ? WHERE {undated}", (month,))  # noqa: S608

    def simulated_in(self, month: str) -> list[Simulated]:
        return [
            Simulated(*row)
            for row in self._query(
                "SELECT event_id, seq, ts_ms, month, confirmed_ms FROM simulated "
                "WHERE month = ? AND confirmed_ms IS NOT NULL ORDER BY seq",
                (month,),
            )
        ]

    # --- self-check reports -----------------------------------------------------------

    def add_report(self, ts_ms: int, operator: str, body: dict[str, Any]) -> int:
        """Store a report once; returns its number."""
        with self._lock:
            conn = self._open_locked()
            try:
                with conn:
                    cur = conn.execute(
                        "INSERT INTO reports (ts_ms, operator, body) VALUES (?, ?, ?)",
                        (ts_ms, operator, json.dumps(body, ensure_ascii=False)),
                    )
            except sqlite3.Error as exc:
                self._drop_locked()
                raise RecordsError(f"{self.path}: cannot store the report: {exc}") from exc
            return int(cur.lastrowid or 0)

    def reports(self, limit: int = MAX_LIST) -> list[dict[str, Any]]:
        """The newest first: each report's body with its number."""
        rows = self._query(
            "SELECT id, body FROM reports ORDER BY id DESC LIMIT ?", (min(limit, MAX_LIST),)
        )
        return [{**json.loads(body), "number": number} for number, body in rows]

    def close(self) -> None:
        with self._lock:
            self._drop_locked()

    # --- the connection -----------------------------------------------------------------

    def _open_locked(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
                )
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise RecordsError(f"{self.path}: cannot be opened: {exc}") from exc
            conn.isolation_level = "DEFERRED"  # `with conn:` transactions from here on
            self._conn = conn
        return self._conn

    def _drop_locked(self) -> None:
        # after a failure: the next call opens the file afresh (the card may be back)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._open_locked()
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self._drop_locked()
                raise RecordsError(f"{self.path}: cannot be read: {exc}") from exc

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            conn = self._open_locked()
            try:
                with conn:
                    return conn.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                self._drop_locked()
                raise RecordsError(f"{self.path}: cannot be written: {exc}") from exc
