"""EventBuffer: the durable store between the field and the uplink.

Every event gets its sequence number here and is committed to SQLite (WAL,
synchronous=FULL) before its future resolves: nothing counts as accepted until
it is on disk. One writer thread owns the write connection and commits whatever
arrived together in one transaction (group commit), so a storm stays durable
without one flush per event, and nothing is written when nothing happens (the
SD card wears out).

Telemetry (the periodic readings, most of them unchanged values) is kept in
memory first: the uplink reads it from here like any stored row, and a reading
acknowledged by the broker within SPILL_S never touches the card. One that is
not (link down, broker slow) is committed then, with whatever else is due. A
power cut can thus lose the last SPILL_S of readings that were not yet
acknowledged; the next start announces their seqs (and never reuses them).

Sequence numbers: one series per lane, strictly increasing across restarts and
never reused. The next seq lives in the database (same transaction as the
rows); a small sidecar file beside it holds a reserved ceiling per lane, so a
corrupt database that must be replaced restarts above every seq ever handed
out, and a fault event names the range that may have been lost. Where neither file
can record them (a read-only card or sidecar), seqs jump by the microseconds since
boot and a fault event says continuity is unknown (and names the few held in RAM
that a restart may repeat); a reboot resets that clock, which the event also says.

Bounded: over `max_events` it drops telemetry oldest first, then the least
severe events oldest first, life-safety alarms last; every drop is counted and
announced. On a full disk (or any write failure) it keeps accepting, holding
new rows in memory (still with fresh seqs) until the database takes them
again, and raises a fault event; rows already stored are never deleted for it.
The same holds from the start: a database that cannot be opened (full, read-only
or missing card, locked, corrupt and not movable) never stops the start; the
buffer runs degraded, delivers what it can read, and tries the disk every
RETRY_S until it takes writes, then stores what it held (agent/storage.py has
the policy for telling corruption from trouble around the file).

It must never: block a submitter, lose a row that resolved its future while the
process lives, hand out a seq twice, or write when idle.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Final, NamedTuple, overload

from agent.seqmarks import LANES as _LANES
from agent.seqmarks import LaneMark, Sidecar
from agent.storage import (
    CorruptDatabase,
    certainly_missing,
    check_integrity,
    diagnose,
    move_aside,
    open_read_only,
    proving_corruption,
)
from core.errors import BufferError_
from core.events import (
    LIFE_SAFETY,
    Event,
    Identity,
    Kind,
    Lane,
    Record,
    Severity,
    now_ms,
    splice_seq,
    system_event,
)

log = logging.getLogger(__name__)

SEQ_BLOCK: Final = 10_000  # seqs reserved in the sidecar per write (one small fsync per block)
INSERT_CHUNK: Final = 2048  # rows per INSERT statement (7 parameters a row; SQLite allows 32766)
MAX_BATCH: Final = 2_000  # records per transaction; bounds the writer's latency under a storm
MAX_HELD: Final = 20_000  # rows kept in RAM while the disk refuses writes (1 GB Pi)
ALIVE_S: Final = 1.0  # the writer iterates at least this often (the watchdog reads `alive`)
RETRY_S: Final = 5.0  # how often a degraded buffer tries the database again
SPILL_S: Final = 10.0  # telemetry not acknowledged by then is committed to disk
MAX_VOLATILE: Final = 2_000  # telemetry rows in memory before the oldest are committed
ANNOUNCE_S: Final = 1.0  # at most one drop announcement per second
LAGGARD_S: Final = 5.0  # how long a count of rows per reader guides the drops (a scan)
# dropped events some uplink had not delivered, remembered (in RAM, this run) so that
# delivered() never calls them confirmed; beyond this many per kind (life-safety alarms,
# other events: ordinary drops never push a fire out) the oldest are forgotten (~2 MB)
DROPPED_KEPT: Final = 10_000

# drop classes: lower is dropped first. _PROTECTED: the buffer's own drop announcements;
# _LIFE_SAFETY: fire, gas, electrical-fire and manual alarms (Event.is_life_safety_alarm),
# dropped last of all and the only rows that overtake the backlog (EventBuffer.next_rows)
_TELEMETRY, _ORDINARY, _PROTECTED, _LIFE_SAFETY = 0, 1, 2, 3

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    lane TEXT NOT NULL,
    seq INTEGER NOT NULL,
    drop_class INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lane, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_drop_order ON records (drop_class, rank DESC, seq);
-- life-safety alarms (_LIFE_SAFETY = 3): what EventBuffer.next_rows reads first
CREATE INDEX IF NOT EXISTS records_life_safety ON records (lane, seq) WHERE drop_class = 3;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


Key = tuple[Lane, int]  # (lane, seq) names one row

FIRST_READER: Final = "mqtt"  # the reader of a buffer built without `readers`


class Reader(NamedTuple):
    """One uplink reading the buffer. `carries(record)` says at store time whether this
    reader will ever send the record: one it will not is set aside for it there (a bit in
    the row, no write of its own). None: it carries everything. The buffer's own
    announcements (drops, faults) are carried by every reader."""

    name: str
    carries: Callable[[Record], bool] | None = None


class StoredRow(NamedTuple):
    """One buffered record as the uplink publishes it: payload bytes are final.

    A tuple in the column order of the INSERT, so a batch goes to executemany as is
    (the writer makes one per stored record; a frozen dataclass costs several times more).
    """

    lane: Lane
    seq: int
    ts_ms: int
    payload: bytes
    drop_class: int = _ORDINARY
    rank: int = 0
    # readers (bits, EventBuffer.readers order) that confirmed it or set it aside; always 0
    # with one reader, whose confirmation deletes the row
    done: int = 0

    @property
    def life_safety(self) -> bool:
        """A fire, gas, electrical-fire or manual alarm: it overtakes the backlog."""
        return self.drop_class == _LIFE_SAFETY


@dataclass
class _Counting:
    """EventBuffer._stored_per_reader's connection and its last count (at a commit)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    db: sqlite3.Connection | None = None
    counted: tuple[int, dict[str, int]] | None = None  # (EventBuffer.commits, counts)
    laggard: tuple[float, int] = (float("-inf"), 0)  # (when, bit): the reader most behind


class Stream(NamedTuple):
    """A part of the buffer that is read in seq order: the life-safety alarms of the event
    lane, the rest of the event lane, or the telemetry lane."""

    name: str
    lane: Lane
    life_safety: bool | None  # only life-safety rows, all but them, or (None) every row

    def holds(self, row: StoredRow) -> bool:
        return row.lane is self.lane and self.life_safety in (None, row.life_safety)


# The delivery order of every uplink (EventBuffer.next_rows): life-safety alarms overtake
# everything older (GB 26875.1: fire alarms before all other traffic), then the event lane,
# then telemetry; each stream in seq order. The other streams are named as their lanes.
_ALARM_STREAM: Final = "alarm"
STREAMS: Final = (
    Stream(_ALARM_STREAM, Lane.EVENT, True),
    Stream(Lane.EVENT.value, Lane.EVENT, False),
    Stream(Lane.TELEMETRY.value, Lane.TELEMETRY, None),
)


@dataclass
class ReadCursor:
    """One reader's place in the buffer: per stream, the highest seq it has taken. Each
    uplink keeps its own cursor and moves it with passed(); the buffer never does. A fresh
    cursor starts again from the oldest unacknowledged row of every stream (the resend
    after a reconnect)."""

    after: dict[str, int] = field(default_factory=lambda: {s.name: 0 for s in STREAMS})
    # per stream, EventBuffer.stored_batches when a read found nothing past `after`: until
    # the buffer stores more there is nothing, and the (frequent) reads skip that query
    empty_at: dict[str, int] = field(default_factory=dict)
    reader: str | None = None  # whose cursor: None = the buffer's first reader

    def passed(self, row: StoredRow) -> None:
        """The reader took this row (sent it, or set it aside): next_rows moves past it."""
        name = _ALARM_STREAM if row.drop_class == _LIFE_SAFETY else row.lane.value
        self.after[name] = max(self.after[name], row.seq)


@dataclass
class DropTally:
    """Drops since the last announcement: count and seq ranges per lane, and (several
    readers) per reader that had not sent the row yet: what each uplink lost."""

    seqs: dict[Lane, list[int]] = field(default_factory=dict)
    lost: dict[str, dict[Lane, list[int]]] = field(default_factory=dict)

    def add(self, lane: Lane, seq: int, readers: Sequence[str] = ()) -> None:
        self.seqs.setdefault(lane, []).append(seq)
        for reader in readers:
            self.lost.setdefault(reader, {}).setdefault(lane, []).append(seq)

    def __bool__(self) -> bool:
        return any(self.seqs.values())

    def detail(self) -> dict[str, Any]:
        return _per_lane(self.seqs)

    def lost_detail(self) -> dict[str, Any]:
        return {reader: _per_lane(lanes) for reader, lanes in sorted(self.lost.items())}


def _per_lane(seqs_by_lane: dict[Lane, list[int]]) -> dict[str, Any]:
    return {
        lane.value: {"count": len(seqs), "ranges": _ranges(sorted(seqs))}
        for lane, seqs in seqs_by_lane.items()
        if seqs
    }


def _ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in seqs:
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out[:50]  # keep the announcement small; the count is exact


# --- the buffer ---------------------------------------------------------------


class StoredRecords(Sequence[Record]):
    """What submit_many()'s future resolves to: the group's records as stored, in order,
    each with its seq set. The seqs are plain ints (`seqs`, `lane_seqs()`); a record
    copy with its seq is built only when it is read (each read builds one), because most
    callers never read it and the copy costs several microseconds per record."""

    __slots__ = ("_records", "seqs")

    def __init__(self, records: Sequence[Record], seqs: list[int]) -> None:
        self._records = records
        self.seqs = seqs  # seqs[i] is the seq of the i-th record of the group

    def lane_seqs(self) -> list[Key]:
        """(lane, seq) of every record, in group order: the names the uplink acks by."""
        return [(r.lane, seq) for r, seq in zip(self._records, self.seqs, strict=True)]

    def __len__(self) -> int:
        return len(self.seqs)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            pairs = zip(self._records[index], self.seqs[index], strict=True)
            return [r.with_seq(seq) for r, seq in pairs]
        return self._records[index].with_seq(self.seqs[index])

    def __iter__(self) -> Iterator[Record]:
        for record, seq in zip(self._records, self.seqs, strict=True):
            yield record.with_seq(seq)

    def __repr__(self) -> str:
        return f"StoredRecords({len(self)} records, seqs {self.seqs[:3]}...)"


class GroupRefused(BufferError_):
    """submit_many() refused a whole group before it used a single seq: `bad` maps the
    index of each record that cannot be stored to the reason. The other records were
    not stored either (a group is stored whole or not at all); a caller that wants them
    stored submits them again without the bad ones."""

    def __init__(self, bad: dict[int, str]) -> None:
        first = next(iter(bad.items()))
        super().__init__(
            f"group refused: {len(bad)} record(s) cannot be stored (record {first[0]}: {first[1]})"
        )
        self.bad = bad


class _Group(NamedTuple):
    """Records on their way to the writer, already serialised by the submitter's thread
    (only the seqs are spliced in by the writer: the writer's time is the bottleneck).
    One transaction stores a whole group; one future answers for it. submit() sends a
    group of one whose future resolves to the record itself (`single`)."""

    records: Sequence[Record]
    prepared: list[tuple[bytes, int, int, int]]  # per record: payload, class, rank, aside
    future: Future[Any] | None  # None for the buffer's own announcements
    single: bool


class _Acks(NamedTuple):
    """PUBACKed seqs of one lane, handed over in one piece. `bit`: the reader that
    confirmed them when there are several (0 with one reader: the rows are deleted)."""

    lane: Lane
    seqs: list[int]
    bit: int = 0


# What serialising a record that breaks the contract raises: a set as a value, a circular
# detail, a number in a text field (TypeError, ValueError, RecursionError), a plain string
# where an enum belongs (AttributeError), a timestamp no calendar holds (OverflowError).
# Refused before it uses a seq; never raised out of submit().
_UNSTORABLE: Final = (TypeError, ValueError, RecursionError, AttributeError, OverflowError)


Carriers = tuple[tuple[int, Callable[[Record], bool]], ...]  # (reader bit, carries)


def _prepare(
    record: Record, ident: Identity, carriers: Carriers = ()
) -> tuple[bytes, int, int, int]:
    """Serialise one record for the writer: payload, drop class, rank and the readers
    that set it aside now. Raises _UNSTORABLE for a record that cannot be."""
    drop_class = _drop_class(record)
    aside = 0
    if carriers and drop_class != _PROTECTED:
        for bit, carries in carriers:
            if not _carried(carries, record):
                aside |= bit
    return record.payload_without_seq(ident), drop_class, _rank(record), aside


def _carried(carries: Callable[[Record], bool], record: Record) -> bool:
    """A reader's predicate that fails never refuses a record: it is then offered to the
    reader, which sets it aside when it reads it (and says why)."""
    try:
        return bool(carries(record))
    except Exception:
        log.exception("buffer: a reader's carries() failed; the record is offered to it")
        return True


def _own(record: Record, ident: Identity) -> _Group:
    """The buffer's own announcement (fault, restore, drops): built by us, always JSON."""
    return _Group((record,), [_prepare(record, ident)], None, True)


def _refusals(records: Sequence[Record], ident: Identity) -> dict[int, str]:
    """Why each record of a refused group cannot be stored (the slow path: only after
    the fast path failed)."""
    bad: dict[int, str] = {}
    for index, record in enumerate(records):
        if getattr(record, "seq", None) is not None:
            bad[index] = "record already has a seq; submit it once"
            continue
        try:
            _prepare(record, ident)
        except _UNSTORABLE as exc:
            bad[index] = f"record cannot be serialised: {exc!r}"
    return bad


def _drop_class(record: Record) -> int:
    if isinstance(record, Event):
        if record.is_life_safety_alarm:
            return _LIFE_SAFETY
        return _PROTECTED if (record.detail or {}).get("buffer") == "drops" else _ORDINARY
    return _TELEMETRY


def _rank(record: Record) -> int:
    return record.severity.rank if isinstance(record, Event) else Severity.INFO.rank


class EventBuffer:
    """Durable, bounded, two-lane buffer. Start it, submit records, read pending, ack."""

    _slack = 0  # rows the bound may be passed by: the drop announcement at close

    def __init__(
        self,
        path: Path | str,
        identity: Identity,
        max_events: int,
        *,
        on_stored: Callable[[], None] | None = None,
        max_pages: int | None = None,
        max_held: int = MAX_HELD,
        retry_s: float = RETRY_S,
        spill_s: float = SPILL_S,
        announce_s: float = ANNOUNCE_S,
        clock_synced: Callable[[], bool] = lambda: True,
        readers: Sequence[str | Reader] = (FIRST_READER,),
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._set_readers(readers)
        self.path = Path(path)
        self.identity = identity
        self.max_events = max_events
        self.on_stored = on_stored
        # Called by the writer with the event-lane keys of rows that were held in memory
        # and are now safe: committed to disk, or acknowledged by the broker.
        self.on_settled: Callable[[list[Key]], None] | None = None
        # Called by the writer with the event-lane keys of rows every reader has confirmed
        # or set aside (delivered wherever they go): the UITD's "sent" (transmission light).
        self.on_delivered: Callable[[list[Key]], None] | None = None
        self._delivered_keys: list[Key] = []
        self._max_pages = max_pages  # cap the file (small partitions; tests of a full disk)
        self._max_held = max_held
        self._retry_s = retry_s
        self._spill_s = spill_s
        self._announce_s = announce_s  # at most one drop announcement per this many s
        self._clock_synced = clock_synced
        self._cond = threading.Condition()
        self._queue: deque[_Group | _Acks] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._counting = _Counting()  # _stored_per_reader's own connection and cache
        self._sidecar: Sidecar | None = None
        self._known: dict[Lane, LaneMark] | None = None  # the sidecar's marks at start
        self._marks: dict[Lane, LaneMark] = {lane: LaneMark() for lane in _LANES}
        self._next_seq: dict[Lane, int] = dict.fromkeys(_LANES, 1)
        self._meta_next: dict[Lane, int] = dict.fromkeys(_LANES, 0)  # as the database has it
        self._unresolved = False  # the database could not be read at start
        self._init_continuity()
        self._depth: dict[Lane, int] = dict.fromkeys(_LANES, 0)
        # rows in RAM, in seq order per lane: telemetry awaiting its PUBACK, and whatever
        # the database refused (degraded); guarded by _held_lock with _acked
        self._held: dict[Lane, deque[StoredRow]] = {lane: deque() for lane in _LANES}
        self._held_lock = threading.Lock()
        # (time.monotonic() when held, last seq held then) per telemetry batch held
        self._spill_marks: deque[tuple[float, int]] = deque()
        self._acked: set[Key] = set()  # acked, delete not yet committed
        self._old_file = False  # read-only file without the `done` column (not migrated)
        self._drops: dict[str, int] = {"event": 0, "telemetry": 0, "alarm": 0}
        self._tally = DropTally()
        # event seqs dropped before every reader was done with them (DROPPED_KEPT each):
        # life-safety alarms, the other events
        self._dropped_undelivered: tuple[dict[int, None], dict[int, None]] = ({}, {})
        self._last_announce = 0.0
        self._degraded_reason: str | None = None
        self._last_retry = 0.0
        self._startup_faults: list[Event] = []
        self._deferred: list[Key] = []  # deletes a failed transaction must retry
        self._synchronous = "FULL"  # as _configure() leaves the write connection
        self.commits = 0  # transactions committed (tests check "no writes when idle")
        self.stored_batches = 0  # batches of new rows made readable (next_rows' skips)
        self.read_failures = 0  # reads that failed (and looked like "nothing pending")
        # time.monotonic() of the writer's last iteration; it wakes at least every ALIVE_S
        # even when idle (without touching the disk) so the systemd watchdog can trust it
        self.alive = time.monotonic()

    def _set_readers(self, readers: Sequence[str | Reader]) -> None:
        self.readers = tuple(r if isinstance(r, Reader) else Reader(r) for r in readers)
        names = [r.name for r in self.readers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"readers must be distinct and at least one, got {names}")
        # Reader i is bit 1 << i of a row's `done`, so the order is part of the file: the
        # first reader stays first (agent/runtime.py: MQTT, then GB/T 26875.3).
        self._bits = {name: 1 << i for i, name in enumerate(names)}
        self._all = (1 << len(names)) - 1
        self._carriers: Carriers = tuple(
            (self._bits[r.name], r.carries) for r in self.readers if r.carries is not None
        )
        # per reader bit, keys it confirmed whose mark is not committed yet (hidden from its
        # reads meanwhile); per held row, the readers done with it
        self._confirmed: dict[int, set[Key]] = {bit: set() for bit in self._bits.values()}
        self._held_done: dict[Key, int] = {}
        self._deferred_marks: list[tuple[int, Key]] = []  # marks a failed commit must retry

    def _init_continuity(self) -> None:
        self._floor: dict[Lane, int] = dict.fromkeys(_LANES, 1)  # above its highest row
        self._jumped = False  # seqs jumped since a file last recorded them
        self._sidecar_lost = False  # the database existed at start, no sidecar was readable

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> EventBuffer:
        """Open (or recover) the database and start the writer thread. Idempotent.

        Storage trouble never makes it fail: on a full, read-only or missing card, a
        locked file or a corrupt one that cannot be moved aside, the buffer starts
        degraded (`degraded`, a fault event) and keeps trying the disk."""
        if self._thread is not None:
            return self
        with contextlib.suppress(OSError):  # a card that is not there: the open says so
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sidecar = Sidecar(self.path.with_name(self.path.name + ".seq"))
        self._known = self._sidecar.marks
        # a database with no readable sidecar beside it (deleted, zero-filled after a power
        # cut or by fsck): the seqs its last run handed out from RAM are recorded nowhere
        self._sidecar_lost = self._known is None and not certainly_missing(self.path)
        try:
            db, fresh_why = self._open_writable()
            self._attach(db)
        except (sqlite3.Error, OSError) as exc:  # OSError: moving a corrupt file aside failed
            self._start_degraded(_reason(exc, self.path))
        else:
            self._continue(self._meta_next if fresh_why is None else None, fresh_why)
            if self._known is None or any(m.dirty for m in self._known.values()):
                self._write_sidecar()
            if self._sidecar_lost and not self._sidecar.unreadable:
                # continuity unknown: jump above anything handed out, and say so
                cause = f"{fresh_why}; " if fresh_why else ""
                self._startup_faults += self._jump_unrecorded(
                    f"{cause}no readable seq sidecar ({self._sidecar.path.name}) beside the "
                    "database: the seqs handed out from memory before the stop are not known"
                )
            elif not self._sidecar.writable or self._sidecar.unreadable:
                # an earlier run on this sidecar could not record its seqs either (or
                # what it recorded cannot be read): the ones it held in RAM when it
                # stopped are in neither file
                self._startup_faults += self._jump_unrecorded()
        self._thread = threading.Thread(target=self._run, name="buffer-writer", daemon=True)
        self._thread.start()
        # recovery faults are stored (and first in their lane) before start() returns
        faults, self._startup_faults = self._startup_faults, []
        wait([self.submit(fault) for fault in faults], timeout=10)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (and the telemetry still in memory), stop the writer,
        close files. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close_connections()

    def _close_connections(self) -> None:
        counting = self._counting
        with counting.lock:
            for conn in (self._db, self._reader, counting.db):
                if conn is not None:
                    conn.close()
            self._db = self._reader = counting.db = None
            counting.counted = None
        if self._sidecar is not None:
            self._sidecar.close()
            self._sidecar = None

    def __enter__(self) -> EventBuffer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening and recovery ------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection, busy_ms: int = 5000) -> None:
        # a technician's read-only inspection may lock for a moment: wait that out
        conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if self._max_pages is not None:
            conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")

    def _open_writable(self, busy_ms: int = 5000) -> tuple[sqlite3.Connection, str | None]:
        """The write connection, schema in place, and why it is a new database (None when
        it is the one we had). Only proven corruption is moved aside (agent/storage.py);
        anything else (locked, full, I/O error, read-only, cannot open) raises and leaves
        the file as it is. `busy_ms`: how long each step waits for another's lock."""
        # cannot tell (EACCES, EIO): it may well be there; "missing" would make it fresh
        existed = not certainly_missing(self.path)
        try:
            db = self._open_checked(busy_ms)
        except CorruptDatabase as exc:
            stamp = move_aside(self.path)  # OSError on a card that refuses: stay degraded
            log.error("buffer database %s was corrupt; moved aside as %s", self.path, stamp)  # noqa: TRY400
            return self._fresh(), f"corrupt buffer database moved aside: {exc}"
        if not existed and self._known is not None:
            db.close()
            return self._fresh(), "buffer database was missing"
        return db, None

    def _open_checked(self, busy_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        with proving_corruption(conn):
            self._configure(conn, busy_ms)
            conn.executescript(_SCHEMA)
            _migrate(conn)
            check_integrity(conn)
            _migrate_drop_classes(conn)
            if busy_ms != 5000:
                conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _fresh(self) -> sqlite3.Connection:
        """A new, empty database (its WAL companions would belong to the old one)."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
            _migrate(conn)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _attach(self, db: sqlite3.Connection) -> None:
        """Make `db` the write connection, with a reader beside it; on failure `db` is
        closed and nothing changed."""
        try:
            _forget_finished(db, self._all)
            stored = _stored_next(db)
            floor = _above_rows(db)
            depths = _depths(db)
            reader = self._connect()
            reader.execute("PRAGMA query_only=1")
        except sqlite3.Error:
            db.close()
            raise
        with self._read_lock:
            old, self._reader = self._reader, reader
        if old is not None:
            old.close()
        self._db = db
        self._meta_next = stored
        self._floor = floor
        self._depth = depths
        self._old_file = False  # migrated on opening for writes

    def _continue(self, stored: dict[Lane, int] | None, fresh_why: str | None) -> None:
        """Each lane's next seq at start: the database's (`stored`; None when it cannot be
        read now), above every seq the sidecar says may have left the process without
        reaching it. A database replaced by a fresh one (`fresh_why`) or records that died
        in memory are announced with the seqs that may be gone."""
        for lane in _LANES:
            mark = self._known[lane] if self._known else None
            if fresh_why is not None:
                nxt = mark.ceiling if mark else 1
                if mark is not None or not self._sidecar_lost:  # else the jump says it
                    self._startup_faults.append(
                        self._loss_fault(lane, fresh_why, mark.low if mark else None, nxt)
                    )
            elif stored is None:  # unreadable: above anything it may hold (settled later)
                nxt = mark.ceiling if mark else 1
                self._unresolved = True
            else:
                nxt = stored[lane]
                if mark is not None and mark.dirty and mark.ceiling > nxt:
                    # seqs up to the ceiling left the process from memory and may be gone
                    self._startup_faults.append(self._memory_loss(lane, mark, nxt))
                    nxt = mark.ceiling
                nxt = max(nxt, self._floor[lane])
            self._next_seq[lane] = nxt
            ceiling = max(nxt, mark.ceiling if mark else nxt)
            self._marks[lane] = LaneMark(ceiling=ceiling, low=mark.low if mark else nxt)

    def _start_degraded(self, reason: str) -> None:
        """Start without a writable database: read what can be read, choose seqs that
        cannot repeat, announce it, and let the writer try the disk every retry_s."""
        assert self._sidecar is not None
        log.error("buffer degraded from the start, holding new records in memory: %s", reason)
        self._degraded_reason = reason
        stored = self._read_what_is_there()
        self._continue(stored, None)
        unknown = self._sidecar_lost
        if unknown or not self._sidecar.writable or self._sidecar.unreadable:
            self._startup_faults += self._jump_unrecorded()
        self._exact_marks()
        self._startup_faults.insert(0, self._degraded_fault(reason))
        self._last_retry = time.monotonic()

    def _jump_unrecorded(self, cause: str | None = None) -> list[Event]:
        """Nothing on this card records the seqs handed out from now on: jump so far above
        the last recorded ones (microseconds since boot) that no earlier run of this boot
        can have reached them, and say so per lane. Rows already in RAM beyond what the
        card records are named: a restart after a reboot may hand those seqs out again.
        Across a reboot (the boot clock starts again, and the Pi has no RTC) even the
        jump cannot be sure to clear an earlier boot's seqs: the announcement says so."""
        jump = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1000
        self._jumped = True
        faults = []
        for lane in _LANES:
            with self._held_lock:
                held = [r.seq for r in self._held[lane]]
            self._next_seq[lane] += jump
            faults.append(self._unknown_continuity(lane, held=held, cause=cause))
        return faults

    def _read_what_is_there(self) -> dict[Lane, int] | None:
        """Next seqs and queued rows of a database that cannot take writes, read-only
        (they are delivered; their deletes wait for the disk). None if unreadable."""
        try:
            reader = open_read_only(self.path)
        except sqlite3.Error as exc:
            log.error("buffer database %s cannot be read either: %s", self.path, exc)  # noqa: TRY400
            return None
        try:
            stored = _stored_next(reader)
            self._floor = _above_rows(reader)
            self._depth = _depths(reader)
        except sqlite3.Error as exc:
            reader.close()
            log.error("buffer database %s cannot be read either: %s", self.path, exc)  # noqa: TRY400
            return None
        self._reader = reader
        return stored

    def _resolve(self, fresh_why: str | None) -> None:
        """The database could not be read at start and now opened: announce what the
        sidecar's marks at start leave open, now that the database's own seqs are known."""
        self._unresolved = False
        stored = self._meta_next
        for lane in _LANES:
            mark = self._known[lane] if self._known else None
            if fresh_why is not None:
                fault = self._loss_fault(
                    lane, fresh_why, mark.low if mark else None, mark.ceiling if mark else 1
                )
            elif mark is None or mark.ceiling <= stored[lane]:
                fault = None
            elif mark.dirty:
                fault = self._memory_loss(lane, mark, stored[lane])
            else:  # reserved before the stop, never handed out, skipped at start
                fault = self._unknown_continuity(
                    lane, f"seqs {stored[lane]}..{mark.ceiling - 1} were skipped, never used"
                )
            if fault is not None:
                self._enqueue(_own(fault, self.identity))

    def _memory_loss(self, lane: Lane, mark: LaneMark, stored: int) -> Event:
        """The announcement for records that were only in RAM when the agent stopped:
        below the database's next seq (`stored`) everything is on disk or delivered."""
        why = "held in memory when the agent stopped"
        low = max(stored, mark.low)
        if mark.exact:
            return self._loss_fault(lane, why, low, mark.ceiling)
        # a block reserved ahead (readings waiting in RAM for their PUBACK): which of its
        # seqs were handed out is not on the card (that would be a write per reading);
        # at most MAX_VOLATILE readings are ever in RAM only
        return self._loss_fault(lane, why, low, mark.ceiling, min(MAX_VOLATILE, mark.ceiling - low))

    def _loss_fault(
        self, lane: Lane, why: str, low: int | None, ceiling: int, at_most: int | None = None
    ) -> Event:
        if low is None:
            text = f"{why}; {lane.value} sequence continuity unknown (no sidecar)"
            detail: dict[str, Any] = {"buffer": "recovered", "lane": lane.value, "why": why}
        elif at_most is not None:
            text = (
                f"{why}; {lane.value} seqs {low}..{ceiling - 1} were reserved: at most "
                f"{at_most} of them were handed out and may have been lost, the others were "
                "never used (which ones is not recorded: readings are not written one by one)"
            )
            detail = {
                "buffer": "recovered",
                "lane": lane.value,
                "why": why,
                "lost_range": [low, ceiling - 1],
                "at_most": at_most,
            }
        else:
            text = f"{why}; {lane.value} seqs {low}..{ceiling - 1} may have been lost"
            detail = {
                "buffer": "recovered",
                "lane": lane.value,
                "why": why,
                "lost_range": [low, ceiling - 1],
            }
        return self._system_event(Kind.FAULT, Severity.MAJOR, "buffer_recovered", text, detail)

    def _unknown_continuity(
        self,
        lane: Lane,
        why: str | None = None,
        held: list[int] | None = None,
        cause: str | None = None,
    ) -> Event:
        detail: dict[str, Any] = {"buffer": "recovered", "lane": lane.value}
        if why is None:
            cause = cause or "the storage cannot record seqs"
            why = (
                f"{cause}; they jump to "
                f"{self._next_seq[lane]}, above every seq handed out before in this boot "
                "(an earlier boot's are not known)"
            )
            detail["jump_to"] = self._next_seq[lane]
        if held:
            # in RAM only, recorded nowhere: after a restart these numbers may come again
            why += f"; seqs {held[0]}..{held[-1]} held in memory may be reused after a restart"
            detail["may_repeat"] = [held[0], held[-1]]
        detail["why"] = why
        text = f"{why}; {lane.value} sequence continuity unknown"
        return self._system_event(Kind.FAULT, Severity.MAJOR, "buffer_recovered", text, detail)

    def _system_event(
        self, kind: Kind, severity: Severity, state: str, text: str, detail: dict[str, Any]
    ) -> Event:
        return system_event(
            kind, severity, state, text, point="buffer", clock_synced=self._clock_synced(),
            detail=detail,
        )  # fmt: skip

    # -- the public, thread-safe surface -------------------------------------

    def submit(self, record: Record) -> Future[Record]:
        """Queue a record; the future resolves with it (seq set) once it is stored."""
        future: Future[Record] = Future()
        if record.seq is not None:
            future.set_exception(BufferError_("record already has a seq; submit it once"))
            return future
        try:
            prepared = [_prepare(record, self.identity, self._carriers)]
        except _UNSTORABLE as exc:  # refused before it could use up a seq
            future.set_exception(BufferError_(f"record cannot be serialised: {exc}"))
            return future
        self._enqueue_group(_Group((record,), prepared, future, True))
        return future

    def submit_many(self, records: Sequence[Record]) -> Future[StoredRecords]:
        """Queue a group of records (one poll's events, a storm): one future for all.

        The future resolves once the transaction holding the whole group is committed
        (synchronous=FULL; or, on a full disk, once the group is held in memory and the
        buffer says it is degraded), to a StoredRecords: the records in order, each with
        its seq. Seqs, lanes, overflow drops, degraded mode and the sidecar behave
        exactly as for the same records submitted one by one at that point; a group is
        never split across transactions. A group with a record that cannot be stored
        (not JSON, a seq already set) is refused whole with GroupRefused, before any
        seq is used: no seq gap for the consumer, and the caller learns which ones.
        Thread-safe; never blocks.
        """
        future: Future[StoredRecords] = Future()
        ident = self.identity
        carriers = self._carriers
        try:
            prepared = [_prepare(r, ident, carriers) for r in records if r.seq is None]
            if len(prepared) != len(records):
                raise ValueError("a record already has a seq")
        except _UNSTORABLE:
            future.set_exception(GroupRefused(_refusals(records, ident)))
            return future
        if not prepared:
            future.set_result(StoredRecords((), []))
            return future
        self._enqueue_group(_Group(records, prepared, future, False))
        return future

    def _enqueue_group(self, group: _Group) -> None:
        with self._cond:
            if self._stopping or self._thread is None:
                assert group.future is not None
                group.future.set_exception(BufferError_("buffer is not running"))
                return
            self._queue.append(group)
            self._cond.notify()

    def ack(self, lane: Lane, seq: int, reader: str | None = None) -> None:
        """The broker has this row (PUBACK): delete it. Never blocks."""
        self.ack_many(lane, [seq], reader)

    def ack_many(self, lane: Lane, seqs: list[int], reader: str | None = None) -> None:
        """`reader` (None: the first) has these rows of one lane: confirmed by its far end,
        or set aside by it. A row is deleted once every reader is done with it; with one
        reader, at once. Never blocks."""
        if not seqs:
            return
        bit = self._bit(reader)
        if self._all == 1:
            with self._held_lock:
                self._acked.update((lane, seq) for seq in seqs)
            self._enqueue(_Acks(lane, seqs))
            return
        with self._held_lock:
            self._confirmed[bit].update((lane, seq) for seq in seqs)
        self._enqueue(_Acks(lane, seqs, bit))

    def _bit(self, reader: str | None) -> int:
        if reader is None:
            return 1
        try:
            return self._bits[reader]
        except KeyError:
            raise ValueError(f"unknown buffer reader {reader!r}: {sorted(self._bits)}") from None

    def _enqueue(self, item: _Group | _Acks) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    def pending(
        self, lane: Lane, after_seq: int = 0, limit: int = 100, reader: str | None = None
    ) -> list[StoredRow]:
        """Rows of a lane with seq > after_seq that `reader` (None: the first) has not
        confirmed or set aside, in seq order."""
        return self._pending(Stream(lane.value, lane, None), after_seq, limit, self._bit(reader))

    def delivered(self, lane: Lane, seq: int) -> bool:
        """Is this row done with by every reader (confirmed by each far end, or set aside),
        i.e. no uplink still waits to deliver it? What "confirmed" means to the light, the
        duties and the self-check: with MQTT and GB/T 26875.3, both. A row a reader's filter
        never wanted counts as done for that reader.

        Never True without proof: an event dropped (the bound) before every reader was
        done with it was not delivered, and a read that failed (or a database not open)
        proves nothing: both answer False, so the light and the failure signal see them as
        unconfirmed."""
        if lane is Lane.EVENT:
            with self._held_lock:
                if any(seq in kept for kept in self._dropped_undelivered):
                    return False
        stream = Stream(lane.value, lane, None)
        # the last reader first: the slower far end (the GB centre's confirm) is the one
        # likely still waiting, and its read stops at this very row (bench_duties)
        for bit in sorted(self._bits.values(), reverse=True):
            failures = self.read_failures
            rows = self._pending(stream, seq - 1, 1, bit)
            if rows and rows[0].seq == seq:
                return False
            if self._reader is None or self.read_failures != failures:
                return False  # unknown: not delivered
        return True

    def next_rows(self, cursor: ReadCursor, limit: int) -> list[StoredRow]:
        """Up to `limit` unacknowledged rows after `cursor`, in delivery order: life-safety
        alarms first, then the rest of the event lane, then telemetry, each in seq order
        (STREAMS). Every uplink reads through this, each with its own cursor, so a fire
        alarm overtakes any backlog on every uplink. The cursor's place is not moved: the
        reader calls cursor.passed(row) for each row it took."""
        batches = self.stored_batches  # before the reads: what they are sure to see
        bit = self._bit(cursor.reader)
        rows: list[StoredRow] = []
        for stream in STREAMS:
            if len(rows) >= limit:
                break
            if cursor.empty_at.get(stream.name) == batches:
                continue  # nothing past the cursor at the last look, and nothing stored since
            failures = self.read_failures
            found = self._pending(stream, cursor.after[stream.name], limit - len(rows), bit)
            # a failed read is no proof of "nothing": look again next time
            empty = not found and failures == self.read_failures
            cursor.empty_at[stream.name] = batches if empty else -1
            rows += found
        return rows

    def _pending(self, stream: Stream, after_seq: int, limit: int, bit: int) -> list[StoredRow]:
        """Unacknowledged rows of one stream with seq > after_seq, in seq order."""
        if self._all != 1:
            return self._pending_for(stream, after_seq, limit, bit)
        lane = stream.lane
        with self._held_lock:
            acked = self._acked
            held = [
                r
                for r in self._held[lane]
                if r.seq > after_seq and (lane, r.seq) not in acked and stream.holds(r)
            ]
            # acked rows still in the file: read that many more (the uplink's cursor is past
            # them while draining, so this is usually zero)
            hidden = sum(1 for a_lane, seq in acked if seq > after_seq and a_lane is lane)
            rows = self._read_rows(stream, after_seq, limit + hidden)
            if hidden:
                rows = [r for r in rows if (lane, r.seq) not in acked]
        merged = sorted({r.seq: r for r in rows + held}.values(), key=lambda r: r.seq)
        return merged[:limit] if held else rows[:limit]

    def _pending_for(self, stream: Stream, after_seq: int, limit: int, bit: int) -> list[StoredRow]:
        """_pending with several readers: what reader `bit` is not done with."""
        lane = stream.lane
        with self._held_lock:
            hide = self._confirmed[bit] | self._acked
            marks = self._held_done
            held = [
                r
                for r in self._held[lane]
                if r.seq > after_seq
                and stream.holds(r)
                and not (r.done | marks.get((lane, r.seq), 0)) & bit
                and (lane, r.seq) not in hide
            ]
            hidden = sum(1 for a_lane, seq in hide if seq > after_seq and a_lane is lane)
            rows = self._read_rows(stream, after_seq, limit + hidden, bit)
            if hidden:
                rows = [r for r in rows if (lane, r.seq) not in hide]
        merged = sorted({r.seq: r for r in rows + held}.values(), key=lambda r: r.seq)
        return merged[:limit]

    def _read_rows(
        self, stream: Stream, after_seq: int, limit: int, bit: int = 0
    ) -> list[StoredRow]:
        if self._reader is None:
            return []
        lane = stream.lane
        with self._read_lock:
            for _ in range(2):
                try:
                    if bit and self._all != 1 and not self._old_file:
                        cur = self._reader.execute(
                            _READER_SQL[stream.life_safety], (lane.value, after_seq, bit, limit)
                        )
                        return [
                            StoredRow(lane, s, t, p, c, 0, d) for s, t, p, c, d in cur.fetchall()
                        ]
                    cur = self._reader.execute(
                        _READ_SQL[stream.life_safety], (lane.value, after_seq, limit)
                    )
                    return [StoredRow(lane, s, t, p, c) for s, t, p, c in cur.fetchall()]
                except sqlite3.Error as exc:
                    if "no such column: done" in str(exc) and not self._old_file:
                        # a file from before several readers that this run cannot migrate
                        # (a read-only card): no reader has marked anything in it
                        self._old_file = True
                        continue
                    self.read_failures += 1
                    log.warning("buffer read failed: %s", exc)
                    return []
        return []

    def stats(self) -> dict[str, Any]:
        """Depth per lane, oldest age, drop counters, degraded flag (for the heartbeat)."""
        with self._held_lock:
            held = {lane: len(rows) for lane, rows in self._held.items()}
            acked = len(self._acked)
        depth = {lane: self._depth[lane] + held[lane] for lane in _LANES}
        oldest = self._oldest_ts()
        in_ram = sum(held.values())
        degraded = self._degraded_reason is not None
        return {
            "event_depth": depth[Lane.EVENT],
            "telemetry_depth": depth[Lane.TELEMETRY],
            "depth": max(0, sum(depth.values()) - acked),
            # held: in RAM because the disk refuses them; volatile: telemetry in RAM
            # waiting for its PUBACK (healthy), committed after SPILL_S without one
            "held": in_ram if degraded else 0,
            "volatile": 0 if degraded else in_ram,
            "oldest_age_s": None if oldest is None else max(0.0, (now_ms() - oldest) / 1000),
            "degraded": self._degraded_reason is not None,
            "degraded_reason": self._degraded_reason,
            "drops": dict(self._drops),
            "next_seq": {lane.value: self._next_seq[lane] for lane in _LANES},
            # per reader: the records it has still to send (confirmed or set aside: not)
            "readers": self._reader_depths(max(0, sum(depth.values()) - acked)),
        }

    def _reader_depths(self, depth: int) -> dict[str, int]:
        if self._all == 1:
            return {self.readers[0].name: depth}
        bits = list(self._bits.items())
        counts = dict(self._stored_per_reader(bits))
        with self._held_lock:
            for name, bit in bits:
                held = sum(
                    1
                    for lane in _LANES
                    for r in self._held[lane]
                    if not (r.done | self._held_done.get((lane, r.seq), 0)) & bit
                )
                counts[name] = max(0, counts[name] + held - len(self._confirmed[bit]))
        return counts

    def _stored_per_reader(self, bits: list[tuple[str, int]]) -> dict[str, int]:
        """Rows in the file each reader is not done with. A scan of the table (26 ms at
        100,000 rows), so it is done again only after a commit changed the file, and on
        a connection of its own: the uplinks' next_rows never wait for it."""
        counting = self._counting
        with counting.lock:
            generation = self.commits
            cached = counting.counted
            if cached is not None and cached[0] == generation and self._reader is not None:
                return cached[1]
            counts = dict.fromkeys(self._bits, 0)
            sums = ", ".join(f"TOTAL((done & {bit}) = 0)" for _, bit in bits)
            # only integers of ours are joined in
            sql = f"SELECT {sums} FROM records"  # noqa: S608
            try:
                row = self._count_connection().execute(sql).fetchone()
            except sqlite3.Error as exc:
                log.warning("buffer: cannot count per reader: %s", exc)
                return counts
            counts = {name: int(n) for (name, _), n in zip(bits, row, strict=True)}
            counting.counted = (generation, counts)
            return counts

    def _count_connection(self) -> sqlite3.Connection:
        counting = self._counting
        if counting.db is None:
            if self._reader is None:
                raise sqlite3.OperationalError("the buffer is not open")
            if self._db is None:  # read-only (a full or read-only card): the reader's
                return self._reader  # (not shared with a writer: next_rows is rare then)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=1")
            counting.db = conn
        return counting.db

    @property
    def degraded(self) -> bool:
        return self._degraded_reason is not None

    def _oldest_ts(self) -> int | None:
        candidates = []
        for lane in _LANES:
            rows = self.pending(lane, 0, 1)
            if rows:
                candidates.append(rows[0].ts_ms)
        return min(candidates) if candidates else None

    # -- the writer thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                self._final_flush()
                return
            try:
                self._process(batch)
            except Exception:  # the writer must survive anything; a fault is logged
                log.exception("buffer writer failed on a batch")
                for item in batch:
                    if type(item) is _Group and item.future and not item.future.done():
                        item.future.set_exception(BufferError_("buffer writer failed"))

    def _next_batch(self) -> list[_Group | _Acks] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self.alive = time.monotonic()
                timeout = self._wake_timeout()
                if timeout is not None and timeout <= 0:
                    return []  # time to retry the disk, spill telemetry or announce drops
                # an idle wake-up only refreshes `alive`: it writes nothing
                self._cond.wait(ALIVE_S if timeout is None else min(timeout, ALIVE_S))
            self.alive = time.monotonic()
            if not self._queue and self._stopping:
                return None
            return self._take(MAX_BATCH)

    def _take(self, limit: int) -> list[_Group | _Acks]:
        """Whole queue items up to about `limit` records (called with _cond held). A group
        is never split: one larger than the limit is a transaction of its own."""
        queue = self._queue
        batch: list[_Group | _Acks] = []
        size = 0
        while queue and size < limit:
            item = queue.popleft()
            batch.append(item)
            size += len(item.prepared) if type(item) is _Group else 1
        return batch

    def _wake_timeout(self) -> float | None:
        """None = no timer due (healthy and idle): only the ALIVE_S tick wakes the writer."""
        now = time.monotonic()
        waits = []
        if self._degraded_reason is not None:
            waits.append(self._last_retry + self._retry_s - now)
        elif self._spill_marks:
            waits.append(self._spill_marks[0][0] + self._spill_s - now)
        if self._tally:
            waits.append(self._last_announce + self._announce_s - now)
        return min(waits) if waits else None

    def _process(self, batch: list[_Group | _Acks]) -> None:
        groups = [i for i in batch if type(i) is _Group]
        acks = [(i.lane, seq) for i in batch if type(i) is _Acks and not i.bit for seq in i.seqs]
        marks = [
            (i.bit, (i.lane, seq)) for i in batch if type(i) is _Acks and i.bit for seq in i.seqs
        ]
        if self._tally and time.monotonic() - self._last_announce >= self._announce_s:
            groups.append(_own(self._drop_announcement(), self.identity))
        if self._unrecorded() and not self._jumped:
            groups += [_own(fault, self.identity) for fault in self._jump_unrecorded()]
        rows, seqs = self._stamp(groups)
        self._reserve(rows)
        victims = self._choose_victims(rows)
        if victims:
            doomed = set(victims)
            incoming = {(r.lane, r.seq) for r in rows}
            rows = [r for r in rows if (r.lane, r.seq) not in doomed]
            victims = [v for v in victims if v not in incoming]
        self._write(rows, acks, victims, marks)
        self._deliver(acks)
        if rows:
            self.stored_batches += 1  # readable now (stored or held), before anyone is told
        # resolved only now: the rows are committed (or held, degraded, and said so)
        for group, group_seqs in zip(groups, seqs, strict=True):
            future = group.future
            if future is None or future.done():
                continue
            if group.single:
                future.set_result(group.records[0].with_seq(group_seqs[0]))
            else:
                future.set_result(StoredRecords(group.records, group_seqs))
        if rows and self.on_stored is not None:
            self.on_stored()

    def _deliver(self, acks: list[Key]) -> None:
        """on_delivered: event-lane rows every reader has now confirmed or set aside (one
        reader: its acks, whether the delete is committed yet or not)."""
        keys, self._delivered_keys = self._delivered_keys, []
        if self.on_delivered is None:
            return
        if self._all == 1:
            keys = acks
        events = sorted(key for key in keys if key[0] is Lane.EVENT)
        if events:
            try:
                self.on_delivered(events)
            except Exception:  # a listener's bug must not stop the writer
                log.exception("buffer: on_delivered failed")

    def _stamp(self, groups: list[_Group]) -> tuple[list[StoredRow], list[list[int]]]:
        """Give each record its seq and its final payload bytes (the seq spliced into the
        bytes the submitter serialised: a record that is not JSON never gets this far,
        so no seq is used up by it and no false gap alarms a consumer). Returns the rows
        and, per group, its records' seqs in group order."""
        rows: list[StoredRow] = []
        seqs: list[list[int]] = []
        next_seq = self._next_seq
        add = rows.append
        new_row = tuple.__new__  # StoredRow(...) without its Python-level __new__: per record
        for group in groups:
            group_seqs = []
            for record, (body, drop_class, rank, aside) in zip(
                group.records, group.prepared, strict=True
            ):
                lane = record.lane
                seq = next_seq[lane]
                next_seq[lane] = seq + 1
                payload = splice_seq(body, seq)
                row = (lane, seq, record.ts_ms, payload, drop_class, rank, aside)
                add(new_row(StoredRow, row))
                group_seqs.append(seq)
            seqs.append(group_seqs)
        return rows, seqs

    def _reserve(self, rows: list[StoredRow]) -> None:
        """Raise the sidecar ceiling before any seq at or above it can reach the disk or
        leave the process. Healthy: a block at a time. Degraded: exactly what was handed
        out, so that a restart names exactly the seqs that died in memory."""
        degraded = self._degraded_reason is not None
        changed = False
        for lane in _LANES:
            mark = self._marks[lane]
            if self._next_seq[lane] > mark.ceiling:
                mark.ceiling = self._next_seq[lane] + (0 if degraded else SEQ_BLOCK)
                mark.exact = degraded
                mark.low = self._lowest_unacked(lane, rows)
                changed = True
        if changed:
            self._write_sidecar()

    def _exact_marks(self) -> None:
        """Degraded from now on: every lane's ceiling is its next seq (lowered from the
        block reserved), and a restart must look at what died in memory (dirty)."""
        for lane in _LANES:
            mark = self._marks[lane]
            mark.ceiling = self._next_seq[lane]
            # rows the failed commit held are not in RAM yet: below the database's next
            # seq everything is on disk, so the loss starts no higher than that
            mark.low = min(self._lowest_unacked(lane, []), self._meta_next[lane] or 1)
            mark.dirty = mark.exact = True
        self._write_sidecar()

    def _lowest_unacked(self, lane: Lane, rows: list[StoredRow]) -> int:
        firsts = [r.seq for r in rows if r.lane is lane][:1]
        with self._held_lock:
            firsts += [r.seq for r in self._held[lane]][:1]
        if self._db is not None and self._depth[lane]:
            with contextlib.suppress(sqlite3.Error):
                (low,) = self._db.execute(
                    "SELECT MIN(seq) FROM records WHERE lane = ?", (lane.value,)
                ).fetchone()
                if low is not None:
                    firsts.append(int(low))
        return min(firsts) if firsts else self._next_seq[lane]

    def _unrecorded(self) -> bool:
        """Does this run hold seqs in RAM that neither file records? Degraded (the
        database refuses rows) with a sidecar that refuses its marks."""
        return self.degraded and self._sidecar is not None and self._sidecar.problem is not None

    def _write_sidecar(self) -> bool:
        if self._sidecar is None:
            return False
        had_problem = self._sidecar.problem
        if self._sidecar.write(self._marks):
            self._jumped = False  # recorded again: a later failure needs a jump of its own
            return True
        if self._sidecar.problem != had_problem:  # said once, not once per batch
            log.error("seq sidecar: %s", self._sidecar.problem)
        return False

    # -- writing: the one transaction per batch ------------------------------------

    def _write(
        self,
        rows: list[StoredRow],
        acks: list[Key],
        victims: list[Key],
        marks: list[tuple[int, Key]] | None = None,
    ) -> None:
        """Commit events, acks and drops in one transaction, with the telemetry that is
        due; hold new telemetry in RAM until its PUBACK; on failure hold rows in RAM."""
        if marks and self._holding():
            marks, finished = self._mark_held(marks)
            acks = acks + finished  # every reader is done with these held rows
            self._delivered_keys += finished
            with self._held_lock:
                self._acked.update(finished)
        if marks:
            self._deferred_marks += marks  # _commit takes them with everything else
        if self._holding():
            victims = [v for v in victims if v not in self._remove_held(victims)]
            acked_held = self._remove_held(acks)
            if acked_held:
                with self._held_lock:
                    self._acked.difference_update(acked_held)
                self._settled(acked_held)
            acks = [key for key in acks if key not in acked_held]
        deletes = self._deferred + acks
        self._deferred = []
        if self._degraded_reason is not None:
            self._hold(rows)
            if time.monotonic() - self._last_retry >= self._retry_s:
                self._retry(deletes, victims)
            else:
                self._commit([], deletes, victims)
            return
        if self._volatile_ok():
            telemetry = [r for r in rows if r.lane is Lane.TELEMETRY]
            with self._held_lock:
                room = MAX_VOLATILE - len(self._held[Lane.TELEMETRY])
            # never more than MAX_VOLATILE readings in RAM only, not even for a moment:
            # a restart's loss announcement counts on it; the rest go to disk now
            keep = telemetry[: max(room, 0)]
            if keep:
                last = keep[-1].seq
                rows = [r for r in rows if r.lane is not Lane.TELEMETRY or r.seq > last]
                self._hold(keep)
                self._spill_marks.append((time.monotonic(), last))
        due = self._due_telemetry()
        if self._commit(rows + due, deletes, victims):
            if due:
                self._remove_held([(r.lane, r.seq) for r in due])
            return
        self._hold(rows)

    def _mark_held(self, marks: list[tuple[int, Key]]) -> tuple[list[tuple[int, Key]], list[Key]]:
        """Several readers: marks on rows held in RAM are kept in RAM (committed with the
        row if it goes to disk). Returns the marks on other rows, and the held rows every
        reader is now done with."""
        with self._held_lock:
            held = {(lane, r.seq): r.done for lane in _LANES for r in self._held[lane]}
            rest: list[tuple[int, Key]] = []
            finished: list[Key] = []
            for bit, key in marks:
                if key not in held:
                    rest.append((bit, key))
                    continue
                done = self._held_done.get(key, held[key]) | bit
                self._held_done[key] = done
                self._confirmed[bit].discard(key)
                if done == self._all:
                    finished.append(key)
                    del self._held_done[key]
        return rest, finished

    def _volatile_ok(self) -> bool:
        """May telemetry wait in RAM? Only while the sidecar can say so: after a power cut
        the next start must know that its seqs went beyond the database's."""
        mark = self._marks[Lane.TELEMETRY]
        if self._sidecar is None or self._sidecar.problem is not None:
            return False  # its ceiling is stale: readings beyond it must reach the database
        if mark.dirty:
            return True
        mark.dirty, mark.exact = True, False
        if self._write_sidecar():
            return True
        mark.dirty = False
        return False

    def _due_telemetry(self) -> list[StoredRow]:
        """Telemetry held longer than spill_s without its PUBACK (or beyond MAX_VOLATILE),
        oldest first: it goes to disk now."""
        limit = time.monotonic() - self._spill_s
        last_due = 0
        while self._spill_marks and self._spill_marks[0][0] <= limit:
            last_due = self._spill_marks.popleft()[1]
        with self._held_lock:
            held = self._held[Lane.TELEMETRY]
            over = len(held) - MAX_VOLATILE
            due: list[StoredRow] = []
            for row in held:
                if row.seq > last_due and len(due) >= over:
                    break
                due.append(row)
        return due

    def _commit(self, rows: list[StoredRow], deletes: list[Key], victims: list[Key]) -> bool:
        """One transaction: insert rows, delete acked and dropped rows, store next seqs;
        with several readers, also the readers' marks (and deferred ones)."""
        marks, self._deferred_marks = self._deferred_marks, []
        if not rows and not deletes and not victims and not marks:
            return True
        db = self._db
        if db is None:  # no database yet (degraded from the start): deletes wait for it
            self._deferred = deletes + victims
            self._deferred_marks = marks
            return False
        if rows and self._held_done:  # held rows going to disk take their readers' marks
            with self._held_lock:
                done = self._held_done
                rows = [r._replace(done=r.done | done.get((r.lane, r.seq), 0)) for r in rows]
        try:
            if db.in_transaction:  # a failed COMMIT on a full disk can leave one open
                db.execute("ROLLBACK")
            # a delete-only commit need not reach the disk now: losing it to a power cut
            # only resends an acked row (at-least-once); the next insert's fsync covers it
            self._set_synchronous(db, "FULL" if rows else "NORMAL")
            db.execute("BEGIN IMMEDIATE")
            gone = _delete(db, deletes + victims)
            if rows:
                _insert(db, rows)
            finished: list[Key] | None = [] if self.on_delivered is not None else None
            if marks:
                for lane, count in _mark(db, marks, self._all, finished).items():
                    gone[lane] = gone.get(lane, 0) + count
            stored = self._lagging(rows)
            _store_meta(db, stored)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            # acks and drops are kept and tried again: a delete lost here would resend/keep a row
            self._deferred = deletes + victims
            self._deferred_marks = marks + self._deferred_marks
            self._enter_degraded(_reason(exc, self.path))
            return False
        self.commits += 1
        if rows:
            self._jumped = False  # recorded by the database: a later failure needs a new jump
        self._delivered_keys += finished or []
        self._meta_next.update(stored)
        self._after_commit(rows, gone, deletes)
        if marks or (rows and self._held_done):
            self._after_marks(rows, marks)
        return True

    def _after_marks(self, rows: list[StoredRow], marks: list[tuple[int, Key]]) -> None:
        """The marks are in the file now (it hides the rows from their readers)."""
        with self._held_lock:
            for bit, key in marks:
                self._confirmed[bit].discard(key)
            for row in rows:
                self._held_done.pop((row.lane, row.seq), None)

    def _set_synchronous(self, db: sqlite3.Connection, mode: str) -> None:
        """Only when it changes: every statement is a GIL round trip for the writer, and
        under a storm the submitting thread holds the GIL for up to the switch interval."""
        if self._synchronous != mode:
            db.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def _lagging(self, rows: list[StoredRow]) -> dict[Lane, int]:
        """Each lane's durable next seq where the database lags it: every seq below it is
        on disk, acknowledged or announced. Telemetry still in RAM (and not in `rows`,
        committed now) keeps its lane's at its oldest such seq."""
        committing = {(r.lane, r.seq) for r in rows} if rows and self._holding() else set()
        values = {}
        for lane in _LANES:
            durable = self._next_seq[lane]
            with self._held_lock:
                for row in self._held[lane]:
                    if (lane, row.seq) not in committing:
                        durable = min(durable, row.seq)
                        break
            if durable != self._meta_next[lane]:
                values[lane] = durable
        return values

    def _after_commit(
        self, rows: list[StoredRow], gone: dict[Lane, int], deletes: list[Key]
    ) -> None:
        for row in rows:
            self._depth[row.lane] += 1
        for lane, count in gone.items():
            self._depth[lane] -= count
        if deletes:
            with self._held_lock:
                self._acked.difference_update(deletes)

    def _final_flush(self) -> None:
        """At close: telemetry still in RAM goes to disk, the database learns every lane's
        next seq, and the sidecar's lanes with nothing left in RAM are clean and exact,
        so the next start continues without a gap or a loss announcement. A buffer still
        degraded leaves its marks exact and dirty: the next start names what died here."""
        if self.degraded:
            self._retry(self._deferred, [])
            with self._cond:
                announced = self._take(MAX_BATCH)  # the restore the retry queued
            if announced:
                self._process(announced)
        if self.degraded:
            return
        if self._tally:
            # drops of the last announce_s: the tally lives in RAM, so they are announced
            # now or never. At the bound, the announcement may pass it by one row until the
            # next store (dropping a row for it would be a drop nobody is told of)
            self._slack = 1
            self._process([_own(self._drop_announcement(), self.identity)])
        self._spill_marks.clear()
        with self._held_lock:
            held = list(self._held[Lane.TELEMETRY])
        if held:
            if not self._commit(held, [], []):
                return
            self._remove_held([(r.lane, r.seq) for r in held])
        if not self._commit_meta():
            return
        for lane in _LANES:
            if not self._held[lane]:
                nxt = self._next_seq[lane]
                self._marks[lane] = LaneMark(ceiling=nxt, low=self._lowest_unacked(lane, []))
        self._write_sidecar()

    def _commit_meta(self) -> bool:
        """Store the next seqs alone, where the database lags them. False if it failed."""
        db = self._db
        if db is None:
            return False
        if not self._lagging([]):
            return True
        try:
            db.execute("BEGIN IMMEDIATE")
            _store_meta(db, self._lagging([]))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            self._enter_degraded(_reason(exc, self.path))
            return False
        self._meta_next.update(self._lagging([]))
        return True

    # -- degraded mode (full disk) ------------------------------------------------

    def _holding(self) -> bool:
        """Rows in RAM? Read without the lock: only this thread adds them."""
        return any(self._held[lane] for lane in _LANES)

    def _hold(self, rows: list[StoredRow]) -> None:
        if not rows:
            return
        with self._held_lock:
            for row in rows:
                self._held[row.lane].append(row)
        self._trim_held()

    def _trim_held(self) -> None:
        """RAM is bounded too: over max_held, drop from memory by the same policy."""
        with self._held_lock:
            rows = [r for lane in _LANES for r in self._held[lane]]
            excess = len(rows) - self._max_held
            if excess <= 0:
                return
            victims = sorted(rows, key=_drop_key)[:excess]
            marks = dict(self._held_done)
        self._remove_held([(r.lane, r.seq) for r in victims])
        for row in victims:
            self._count_drop(row._replace(done=row.done | marks.get((row.lane, row.seq), 0)))

    def _remove_held(self, keys: list[Key]) -> set[Key]:
        """Take these rows out of RAM; returns the ones that were held."""
        if not keys:
            return set()
        wanted = set(keys)
        with self._held_lock:
            hit = {(lane, r.seq) for lane in _LANES for r in self._held[lane]} & wanted
            if hit:
                for lane in _LANES:
                    self._held[lane] = deque(
                        r for r in self._held[lane] if (lane, r.seq) not in hit
                    )
                if self._held_done:  # several readers: their marks leave RAM with the row
                    for key in hit:
                        self._held_done.pop(key, None)
        return hit

    def is_held(self, lane: Lane, seq: int) -> bool:
        """Is this row in RAM only (not on disk, not acknowledged)? Thread-safe."""
        with self._held_lock:
            rows = self._held[lane]
            if not rows or seq < rows[0].seq or seq > rows[-1].seq:
                return False
            i = bisect.bisect_left(rows, seq, key=_seq_of)
            return i < len(rows) and rows[i].seq == seq

    def _settled(self, keys: Iterable[Key]) -> None:
        """Tell on_settled which held events are safe now (on disk or acknowledged)."""
        events = sorted(key for key in keys if key[0] is Lane.EVENT)
        if events and self.on_settled is not None:
            try:
                self.on_settled(events)
            except Exception:  # a listener's bug must not stop the writer
                log.exception("buffer: on_settled failed")

    def _degraded_fault(self, reason: str) -> Event:
        return self._system_event(
            Kind.FAULT,
            Severity.MAJOR,
            "degraded",
            f"buffer degraded: database refuses writes ({reason}); events held in memory",
            {"buffer": "degraded", "reason": reason},
        )

    def _enter_degraded(self, reason: str) -> None:
        if self._degraded_reason is not None:
            return
        self._last_retry = time.monotonic()
        self._degraded_reason = reason
        log.error("buffer degraded, holding new events in memory: %s", reason)
        self._spill_marks.clear()  # held telemetry is retried with everything else
        self._exact_marks()
        self._enqueue(_own(self._degraded_fault(reason), self.identity))

    def _retry(self, deletes: list[Key], victims: list[Key]) -> None:
        """Try to move every held row (and the deferred deletes) into the database."""
        self._last_retry = time.monotonic()
        if self._db is None and not self._reattach():
            self._deferred = deletes + victims
            return
        with self._held_lock:
            rows = sorted((r for lane in _LANES for r in self._held[lane]), key=_seq_of)
        if not self._commit(rows, deletes, victims):
            return
        self._remove_held([(r.lane, r.seq) for r in rows])
        self._settled((r.lane, r.seq) for r in rows)
        self._degraded_reason = None
        for lane in _LANES:
            self._marks[lane].dirty = False
        self._write_sidecar()
        log.warning("buffer recovered: database accepts writes again")
        restore = self._system_event(
            Kind.RESTORE,
            Severity.INFO,
            "normal",
            "buffer recovered: events are stored on disk again",
            {"buffer": "degraded", "restored": True},
        )
        self._enqueue(_own(restore, self.identity))

    def _reattach(self) -> bool:
        """The database could not be opened for writing at start: try again now (without
        waiting for a lock: the writer must stay responsive; it tries again later)."""
        try:
            db, fresh_why = self._open_writable(busy_ms=0)
        except (sqlite3.Error, OSError) as exc:
            log.debug("buffer database still unusable: %s", exc)
            return False
        try:
            self._attach(db)
        except sqlite3.Error as exc:
            log.debug("buffer database still unusable: %s", exc)
            return False
        if fresh_why is not None or self._unresolved:
            self._resolve(fresh_why)
        for lane in _LANES:
            self._next_seq[lane] = max(
                self._next_seq[lane], self._meta_next[lane], self._floor[lane]
            )
        log.warning("buffer database %s opened for writing", self.path)
        return True

    # -- the bound -------------------------------------------------------------------

    def _choose_victims(self, incoming: list[StoredRow]) -> list[Key]:
        """Rows to drop (stored, held or incoming) so that everything fits max_events.

        With several readers the bound is shared, and the class order comes first for
        every reader (telemetry, ordinary, protected, life-safety last: a fire alarm the
        centre never got outlives any reading MQTT has not sent). Within a class a drop is
        judged per reader: while one reader lags (an uplink down), the rows only it still
        needs go first; a record the other readers have not sent is not lost to them for
        its sake. Which reader lost what is said in the drop announcement (detail.lost)."""
        with self._held_lock:
            held_count = sum(len(self._held[lane]) for lane in _LANES)
            excess = sum(self._depth.values()) + held_count + len(incoming) - len(self._acked)
            excess -= self.max_events + self._slack
            if excess <= 0:  # the usual case: no copies of anything
                return []
            marks = dict(self._held_done)
            for bit, keys in self._confirmed.items():
                for key in keys:
                    marks[key] = marks.get(key, 0) | bit
            held = [
                r._replace(done=r.done | marks.get((lane, r.seq), 0))
                for lane in _LANES
                for r in self._held[lane]
            ]
            acked = set(self._acked)
        laggard = self._laggard_bit() if self._all != 1 else 0
        candidates = self._db_candidates(excess + len(acked), acked)
        if laggard:
            candidates += self._db_candidates(excess + len(acked), acked, laggard)
        candidates = [r._replace(done=r.done | marks.get((r.lane, r.seq), 0)) for r in candidates]
        unique = {(r.lane, r.seq): r for r in candidates + held + incoming}

        def order(row: StoredRow) -> tuple[int, int, int, int]:
            # both candidate lists are in _drop_key order, so the first `excess` of this
            # order are among them
            only_laggard = laggard and (row.done | laggard) == self._all
            return (row.drop_class, 0 if only_laggard else 1, -row.rank, row.seq)

        victims = sorted(unique.values(), key=order)[:excess]
        for row in victims:
            self._count_drop(row)
        return [(r.lane, r.seq) for r in victims]

    def _laggard_bit(self) -> int:
        """The reader with the most rows still to send, if one has more than the others
        (0: none); counted at most every LAGGARD_S (a scan of the table)."""
        now = time.monotonic()
        when, bit = self._counting.laggard
        if now - when < LAGGARD_S:
            return bit
        counts = self._reader_depths(0)
        ordered = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        bit = 0
        if len(ordered) > 1 and ordered[0][1] > ordered[1][1]:
            bit = self._bits[ordered[0][0]]
        self._counting.laggard = (now, bit)
        return bit

    def _db_candidates(self, limit: int, acked: set[Key], only: int = 0) -> list[StoredRow]:
        """Rows in drop order; `only`: those every reader but `only` is done with."""
        if self._db is None:
            return []
        where: str = ""
        args: tuple[int, ...] = (limit,)
        if only and not self._old_file:
            where, args = "WHERE (done | ?) = ? AND done != ? ", (only, self._all, self._all, limit)
        columns = "0" if self._old_file else "done"
        try:
            cur = self._db.execute(
                f"SELECT lane, seq, drop_class, rank, ts_ms, {columns} FROM records "  # noqa: S608
                f"{where}ORDER BY drop_class, rank DESC, seq LIMIT ?",
                args,
            )
            rows = cur.fetchall()
        except sqlite3.Error as exc:
            log.warning("buffer: cannot choose rows to drop: %s", exc)
            return []
        return [
            StoredRow(Lane(lane), seq, ts, b"", cls, rank, done)
            for lane, seq, cls, rank, ts, done in rows
            if (Lane(lane), seq) not in acked
        ]

    def _count_drop(self, row: StoredRow) -> None:
        self._drops[row.lane.value] += 1
        if row.drop_class == _LIFE_SAFETY:
            self._drops["alarm"] += 1
        if row.lane is Lane.EVENT and (self._all == 1 or row.done != self._all):
            with self._held_lock:  # delivered() must not call it confirmed
                if (row.lane, row.seq) in self._acked:
                    return  # every reader had it (the delete not committed yet)
                kept = self._dropped_undelivered[0 if row.drop_class == _LIFE_SAFETY else 1]
                kept[row.seq] = None
                if len(kept) > DROPPED_KEPT:
                    del kept[next(iter(kept))]
        lost = [] if self._all == 1 else [n for n, b in self._bits.items() if not row.done & b]
        self._tally.add(row.lane, row.seq, lost)

    def _drop_announcement(self) -> Event:
        dropped = self._tally.detail()
        detail: dict[str, Any] = {"buffer": "drops", "dropped": dropped}
        total = sum(v["count"] for v in dropped.values())
        who = ""
        if self._all != 1:  # several uplinks: which of them lost what
            lost = self._tally.lost_detail()
            detail["lost"] = lost
            per = [f"{r} {sum(v['count'] for v in lanes.values())}" for r, lanes in lost.items()]
            who = f"; not yet sent by {', '.join(per)}" if per else ""
        self._tally = DropTally()
        self._last_announce = time.monotonic()
        log.warning("buffer full: dropped %d records%s", total, who)
        return self._system_event(
            Kind.SYSTEM,
            Severity.WARNING,
            "overflow",
            f"buffer full: {total} records dropped (max_events {self.max_events}){who}",
            detail,
        )


# Reads per Stream.life_safety. The life-safety read names its partial index: left to
# itself SQLite walks the primary key, through the whole backlog, to find a few alarms
# (and it uses the index only for a WHERE spelled as the index's: "drop_class = 3").
# The rest of a lane walks the primary key, skipping at most the alarms in flight.
_READ_COLUMNS: Final = "SELECT seq, ts_ms, payload, drop_class FROM records"
_READ_WHERE: Final = "WHERE lane = ? AND seq > ?"
_READ_SQL: Final = {
    None: f"{_READ_COLUMNS} {_READ_WHERE} ORDER BY seq LIMIT ?",
    True: f"{_READ_COLUMNS} INDEXED BY records_life_safety {_READ_WHERE} "
    f"AND drop_class = {_LIFE_SAFETY} ORDER BY seq LIMIT ?",
    False: f"{_READ_COLUMNS} {_READ_WHERE} AND drop_class != {_LIFE_SAFETY} ORDER BY seq LIMIT ?",
}


# The same reads for one of several readers: the rows it is not done with.
_READER_COLUMNS: Final = "SELECT seq, ts_ms, payload, drop_class, done FROM records"
_READER_WHERE: Final = f"{_READ_WHERE} AND (done & ?) = 0"
_READER_SQL: Final = {
    None: f"{_READER_COLUMNS} {_READER_WHERE} ORDER BY seq LIMIT ?",
    True: f"{_READER_COLUMNS} INDEXED BY records_life_safety {_READER_WHERE} "
    f"AND drop_class = {_LIFE_SAFETY} ORDER BY seq LIMIT ?",
    False: f"{_READER_COLUMNS} {_READER_WHERE} AND drop_class != {_LIFE_SAFETY} "
    "ORDER BY seq LIMIT ?",
}


def _migrate(db: sqlite3.Connection) -> None:
    """A file from before several readers has no `done` column: add it (every row 0)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
    if "done" not in columns:
        db.execute("ALTER TABLE records ADD COLUMN done INTEGER NOT NULL DEFAULT 0")


def _forget_finished(db: sqlite3.Connection, all_bits: int) -> None:
    """Rows every configured reader is done with (a reader was removed from the config
    since they were marked) leave now; a file with none is not written."""
    found = db.execute(
        "SELECT 1 FROM records WHERE done != 0 AND (done & ?) = ? LIMIT 1", (all_bits, all_bits)
    ).fetchone()
    if found:
        db.execute("DELETE FROM records WHERE done != 0 AND (done & ?) = ?", (all_bits, all_bits))


def _mark(
    db: sqlite3.Connection,
    marks: list[tuple[int, Key]],
    all_bits: int,
    finished: list[Key] | None = None,
) -> dict[Lane, int]:
    """Record which readers are done with which rows, and delete the rows every reader is
    done with (one statement per run of consecutive seqs, as _delete). Rows deleted per lane;
    their keys added to `finished` when one is given (on_delivered wants them)."""
    by_bit: dict[int, list[Key]] = {}
    for bit, key in marks:
        by_bit.setdefault(bit, []).append(key)
    gone: dict[Lane, int] = {}
    for bit, keys in by_bit.items():
        for lane, first, last in _runs(keys):
            db.execute(
                "UPDATE records SET done = done | ? WHERE lane = ? AND seq BETWEEN ? AND ?",
                (bit, lane, first, last),
            )
            where = (lane, first, last, all_bits)
            if finished is not None:  # not DELETE ... RETURNING: SQLite < 3.35 (bullseye)
                cur = db.execute(
                    "SELECT seq FROM records WHERE lane = ? AND seq BETWEEN ? AND ? AND done = ?",
                    where,
                )
                finished += [(lane, seq) for (seq,) in cur.fetchall()]
            count = db.execute(
                "DELETE FROM records WHERE lane = ? AND seq BETWEEN ? AND ? AND done = ?", where
            ).rowcount
            if count > 0:
                gone[lane] = gone.get(lane, 0) + count
    return gone


def _insert(db: sqlite3.Connection, rows: list[StoredRow]) -> None:
    """Insert rows with one statement per INSERT_CHUNK rows, its VALUES list padded with
    NULL rows (filtered out) up to a power of two, so that a dozen cached prepared
    statements serve every batch size. One statement, not executemany and not one
    statement per power-of-two piece: each statement is one sqlite3_step, after which
    the writer must win the GIL back from a busy submitting thread (up to the switch
    interval, 5 ms, each time); per row, that wait was most of the cost of a storm."""
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        params: list[Any] = list(chain.from_iterable(chunk))  # StoredRow: a tuple
        params += _PAD * (size - len(chunk))
        db.execute(_insert_sql(size), params)


_PAD: Final = (None,) * 7  # one filtered-out row of the padded VALUES list


@functools.cache
def _insert_sql(rows: int) -> str:
    values = ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    # only placeholders are joined in: no value ever enters the SQL text
    return (
        "INSERT INTO records (lane, seq, ts_ms, payload, drop_class, rank, done) "  # noqa: S608
        f"SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL"
    )


def _delete(db: sqlite3.Connection, keys: list[Key]) -> dict[Lane, int]:
    """Delete rows by key, one statement per run of consecutive seqs (acks arrive in
    order, so a drain deletes a whole window with one statement). Rows deleted per lane."""
    gone: dict[Lane, int] = {}
    for lane, first, last in _runs(keys):
        cur = db.execute(
            "DELETE FROM records WHERE lane = ? AND seq BETWEEN ? AND ?", (lane, first, last)
        )
        if cur.rowcount > 0:
            gone[lane] = gone.get(lane, 0) + cur.rowcount
    return gone


def _runs(keys: list[Key]) -> list[tuple[Lane, int, int]]:
    """Keys grouped into (lane, first seq, last seq) runs of consecutive seqs."""
    runs: list[tuple[Lane, int, int]] = []
    for lane, seq in sorted(set(keys)):
        if runs and runs[-1][0] is lane and runs[-1][2] == seq - 1:
            runs[-1] = (lane, runs[-1][1], seq)
        else:
            runs.append((lane, seq, seq))
    return runs


def _store_meta(db: sqlite3.Connection, next_seqs: dict[Lane, int]) -> None:
    if next_seqs:
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(f"next_seq:{lane.value}", value) for lane, value in next_seqs.items()],
        )


# Buffers written before the life-safety class existed (commit a53c6b8) hold their
# life-safety alarms in _PROTECTED with the drop announcements: moved up once, on the
# first writable open, so they overtake the backlog and are dropped last like new ones.
_MIGRATED: Final = "migrated:life_safety_class"
_LIFE_SAFETY_CATEGORIES: Final = sorted(c.value for c in LIFE_SAFETY)
_MIGRATE_SQL: Final = (
    f"UPDATE records SET drop_class = {_LIFE_SAFETY} "  # noqa: S608 - ints of this module
    f"WHERE lane = ? AND drop_class = {_PROTECTED} "
    "AND json_extract(CAST(payload AS TEXT), '$.kind') = 'alarm' "
    "AND json_extract(CAST(payload AS TEXT), '$.category') IN "
    f"({', '.join('?' * len(_LIFE_SAFETY_CATEGORIES))})"
)


def _migrate_drop_classes(conn: sqlite3.Connection) -> None:
    """Bring an older buffer's rows up to this version's drop classes (once per file; a
    new file is marked at once, as it has nothing to move)."""
    if conn.execute("SELECT 1 FROM meta WHERE key = ?", (_MIGRATED,)).fetchone():
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        moved = conn.execute(_MIGRATE_SQL, (Lane.EVENT.value, *_LIFE_SAFETY_CATEGORIES)).rowcount
        conn.execute("INSERT INTO meta (key, value) VALUES (?, 1)", (_MIGRATED,))
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:  # full, locked, read-only: the next open retries
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        log.warning("buffer: older rows not moved to their drop class yet: %s", exc)
        return
    if moved:
        log.warning("buffer: %d life-safety alarms of an older buffer moved to their class", moved)


def _stored_next(conn: sqlite3.Connection) -> dict[Lane, int]:
    """The next seq per lane as the database has it (1 for a new database)."""
    rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    return {lane: int(rows.get(f"next_seq:{lane.value}", 1)) for lane in _LANES}


def _above_rows(conn: sqlite3.Connection) -> dict[Lane, int]:
    """Per lane, one above the highest seq stored: the meta lags the rows while older
    telemetry waits in RAM, so a restart must not go by the meta alone."""
    query = "SELECT MAX(seq) FROM records WHERE lane = ?"  # the primary key: one lookup
    return {lane: int(conn.execute(query, (lane.value,)).fetchone()[0] or 0) + 1 for lane in _LANES}


def _depths(conn: sqlite3.Connection) -> dict[Lane, int]:
    counts = dict(conn.execute("SELECT lane, COUNT(*) FROM records GROUP BY lane").fetchall())
    return {lane: int(counts.get(lane.value, 0)) for lane in _LANES}


def _reason(exc: BaseException, path: Path) -> str:
    """One line for the log, the fault event and `status`: what went wrong, and what
    the card around the file says."""
    if isinstance(exc, OSError) and exc.strerror:
        said = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        name = getattr(exc, "sqlite_errorname", None)
        said = f"{exc} ({name})" if name else str(exc) or type(exc).__name__
    card = diagnose(path)
    return f"{said}; {card}" if card else said


def _seq_of(row: StoredRow) -> int:
    return row.seq


def _drop_key(row: StoredRow) -> tuple[int, int, int]:
    """Drop order: telemetry, then ordinary events least severe first, protected last;
    oldest first within each."""
    return (row.drop_class, -row.rank, row.seq)
