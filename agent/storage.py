"""What a sick SD card looks like to SQLite, and the one policy both of our files follow.

The event buffer (agent/buffer.py) and the point-state memory (agent/pointstate.py)
sit side by side on the card, and both meet the same troubles: a card that fills
up, turns read-only, throws I/O errors, is not mounted, or a file another process
has locked. One policy for both:

- Only SQLite's own verdict that a file is damaged is corruption: the result codes
  SQLITE_CORRUPT and SQLITE_NOTADB, or a failed `PRAGMA quick_check`. Such a file
  is moved aside (renamed `<name>.corrupt-<UTC time>`, never deleted) and replaced.
- Everything else (locked, busy, full, I/O error, read-only, cannot open) says
  nothing about the file's health: the file is left exactly as it is, read if it
  can be read, and opened for writing again later.

This module must never delete a database, and never call a file corrupt on any
other evidence.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

# Primary result codes (the low byte of an extended code).
SQLITE_BUSY: Final = 5
SQLITE_LOCKED: Final = 6
SQLITE_CORRUPT: Final = 11
SQLITE_NOTADB: Final = 26

SUFFIXES: Final = ("", "-wal", "-shm")  # a WAL database and its two companions


class CorruptDatabase(Exception):
    """The file is proven damaged (SQLITE_CORRUPT/NOTADB or a failed quick_check)."""


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corruption(exc: BaseException) -> bool:
    """True only when SQLite's own result code says the file is damaged."""
    return _primary_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def is_locked(exc: BaseException) -> bool:
    """Another connection holds a lock: wait and try again, the file is fine."""
    return _primary_code(exc) in (SQLITE_BUSY, SQLITE_LOCKED)


def check_integrity(conn: sqlite3.Connection) -> None:
    """Raise CorruptDatabase unless `PRAGMA quick_check` says ok. A damaged page reached
    by the check raises sqlite3.DatabaseError (SQLITE_CORRUPT) instead: the caller
    sorts it with is_corruption()."""
    row = conn.execute("PRAGMA quick_check").fetchone()
    verdict = row[0] if row else "no answer"
    if verdict != "ok":
        # first lines only: the verdict lists every bad page and ends up in a fault event
        raise CorruptDatabase(f"quick_check: {' | '.join(str(verdict).splitlines()[:3])}")


@contextmanager
def proving_corruption(conn: sqlite3.Connection) -> Iterator[None]:
    """Around opening a database: on any failure the connection is closed, and only
    SQLite's own proof of damage comes out as CorruptDatabase (the rest as it was)."""
    try:
        yield
    except sqlite3.Error as exc:
        conn.close()
        if is_corruption(exc):
            raise CorruptDatabase(str(exc)) from exc
        raise
    except CorruptDatabase:
        conn.close()
        raise


def move_aside(path: Path) -> str:
    """Rename a corrupt database and its companions to `<name>.corrupt-<UTC time>`.

    The main file goes first: if it cannot be renamed (read-only card) nothing has
    changed and OSError propagates. Its companions follow; a WAL that cannot be moved
    must not meet the replacement database either, so that failure propagates too
    (the replacement is then not created). Never deletes anything. Returns the suffix.
    """
    stamp = "corrupt-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for suffix in SUFFIXES:
        src = Path(f"{path}{suffix}")
        try:
            src.rename(Path(f"{path}.{stamp}{suffix}"))
        except FileNotFoundError:
            continue
    return stamp


def certainly_missing(path: Path) -> bool:
    """True only when `path` is known not to exist. Path.exists() raises on EACCES or EIO
    (a directory the service user cannot search, a dying card): that is not "missing",
    and it must never escape into a traceback at start."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def is_file(path: Path) -> bool:
    """A regular file we can see; False when it is missing or cannot even be looked at."""
    try:
        return path.is_file()
    except OSError:
        return False


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only look into a database that cannot be opened for writing now.

    On a full or read-only card a WAL database may not open at all: SQLite wants to
    create or grow its `-shm` index. `mode=ro` reads it when the index is there (an
    unclean stop left it); after a clean stop there is no WAL content, and
    `immutable=1` reads the main file without any index or lock. A WAL with content
    but no usable index cannot be read safely (its frames would be missed): that
    raises like any other failure, and the caller treats the file as unreadable.
    """
    if not is_file(path):
        why = "no such database file" if certainly_missing(path) else "cannot be looked at"
        raise sqlite3.OperationalError(f"{path}: {why}")
    try:
        return _probed(f"file:{path}?mode=ro")
    except sqlite3.Error:
        if _wal_has_content(path):
            raise
    return _probed(f"file:{path}?immutable=1")


def _probed(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=1.0, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _wal_has_content(path: Path) -> bool:
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume the worst


def diagnose(path: Path) -> str | None:
    """What the card around `path` says, in words for `status` and the fault event (SQLite
    often only says "unable to open" or "disk I/O error")."""
    directory = path.parent
    try:
        if not directory.is_dir():
            return f"{directory} is missing"
        st = os.statvfs(directory)
    except OSError as exc:  # EACCES on a directory above it, EIO: say that, never raise
        return f"{exc.filename or directory}: {exc.strerror}"
    if st.f_flag & os.ST_RDONLY:
        return "the file system is read-only"
    if st.f_bavail == 0:
        return "the disk is full"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable for this user"
    return None
