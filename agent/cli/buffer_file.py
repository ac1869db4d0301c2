"""Read a buffer file offline: what is queued, which seqs, how old — without the agent.

For the technician when the agent will not start, and for a database the agent
moved aside as corrupt (`buffer.db.corrupt-<time>`): what was in it? It opens
the file read-only through sqlite-utils and never writes, locks or repairs it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from core.errors import BufferError_
from core.events import now_ms


def _open_read_only(path: Path) -> sqlite_utils.Database:
    if not path.is_file():
        raise BufferError_(f"{path}: no such buffer file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        return sqlite_utils.Database(conn)
    except sqlite3.Error as exc:
        raise BufferError_(f"{path}: cannot open read-only: {exc}") from exc


def inspect(path: Path, tail: int = 10) -> dict[str, Any]:
    """Depth, seq range and oldest age per lane, the next seqs, and the newest `tail` events."""
    db = _open_read_only(path)
    try:
        if "records" not in db.table_names():
            raise BufferError_(f"{path}: not an alarmgw buffer (no records table)")
        lanes = {}
        for row in db.query(
            "SELECT lane, count(*) AS depth, min(seq) AS first_seq, max(seq) AS last_seq,"
            " min(ts_ms) AS oldest_ms FROM records GROUP BY lane"
        ):
            oldest = row["oldest_ms"]
            row["oldest_age_s"] = None if oldest is None else round((now_ms() - oldest) / 1000, 1)
            lanes[row.pop("lane")] = row
        meta = {r["key"]: r["value"] for r in db["meta"].rows} if "meta" in db.table_names() else {}
        newest = [
            _payload(bytes(r["payload"]))
            for r in db.query(
                "SELECT payload FROM records WHERE lane = 'event' ORDER BY seq DESC LIMIT ?",
                [tail],
            )
        ]
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:  # a corrupt file: say so, never raise further
        raise BufferError_(f"{path}: unreadable ({exc})") from exc
    finally:
        db.conn.close()
    return {
        "file": str(path),
        "integrity": check,
        "lanes": lanes,
        "meta": meta,
        "newest_events": list(reversed(newest)),
    }


def _payload(raw: bytes) -> dict[str, Any]:
    """A stored payload; a damaged one (this tool is for files set aside as corrupt) is
    shown as what could be read of it, never a traceback."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {"damaged": f"{exc!s:.120}", "raw": raw[:200].decode("utf-8", "replace")}
    return (
        payload if isinstance(payload, dict) else {"damaged": "not an object", "raw": str(payload)}
    )
