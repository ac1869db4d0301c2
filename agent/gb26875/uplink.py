"""GbUplink: the second uplink, GB/T 26875.3 over TCP (optionally TLS) to the city's fire
remote-monitoring centre, from the same durable buffer as MQTT.

One thread owns the socket and a Link (agent/gb26875/link.py, the sans-IO state machine:
serials, confirms, resends, heartbeat, priority). It reads the buffer as reader "gb" in the
buffer's delivery order (life-safety alarms first), packs rows into packets
(agent/gb26875/mapping.py) and acks a row, as reader "gb", only when the centre confirmed the
packet that carried it: at-least-once, duplicates possible after a crash (the centre counts
them). Rows the centre cannot be told about were set aside at store time (the buffer's
Reader predicate); what still cannot be mapped when read is set aside here, counted.

Link behaviour (docs/gb26875.md, "Link behaviour"):
- resends per the link; after them a link fault: UITD status bit 5 in its running state, a
  fault event on the MQTT feed (agent/faults.py, once until the link works again), and a
  reconnect with the shared backoff (agent/backoff.py). A centre that cannot be reached at
  all is a link fault once the link's own detection time (heartbeat + resends) has passed;
  with defaults within 100 s (GB 26875.1).
- a packet the centre denies after every resend is set aside for the centre (the MQTT feed
  still gets its rows) and announced with a fault event naming the seqs;
- the centre's requests (89 initialise, 90 clock sync, 91 duty check, reads) are answered by
  agent/gb26875/requests.py on this thread.

It must never block the buffer or another uplink, lose a row (a row leaves the buffer for
"gb" only when confirmed or set aside and said so), or stop on what the centre sends.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agent.backoff import Backoff
from agent.buffer import EventBuffer, ReadCursor, StoredRow
from agent.config import GbConfig
from agent.faults import Faults
from agent.gb26875.adu import (
    Adu,
    UitdState,
    pack,
)
from agent.gb26875.codec import GbTime
from agent.gb26875.laststate import ComponentKey, HeldAlarms, LatestStates
from agent.gb26875.link import (
    REAL_CLOCK,
    Confirmed,
    Failed,
    Link,
    LinkClock,
    LinkFault,
    LinkRestored,
    LinkSettings,
    Notice,
    Packet,
    RequestReceived,
    Stale,
)
from agent.gb26875.mapping import AnalogLookup, Batch, Mapped, batches, map_row
from agent.gb26875.requests import (
    CentreRequests,
    ClockSetter,
    DutyHook,
    Hooks,
    ReadHook,
)
from agent.gb26875.tables import UitdStatus
from agent.mqtt import Resolver
from agent.texts import CHINESE, Msg, Texts
from core.errors import AlarmgwError
from core.events import Event, Kind, Lane, Record, Severity, system_event

log = logging.getLogger("alarmgw.gb26875")

READER: Final = "gb"  # this uplink's name as a reader of the buffer
FAULT_CAUSE: Final = "gb26875-link"  # the point of its link-fault event
READ_ROWS: Final = 200  # rows read per fill
MAX_QUEUED: Final = 4  # ordinary packets handed to the link ahead of its confirms
LOOK_BEHIND_ROWS: Final = 5000  # rows read past the cursor for a held alarm's component
PRUNE_S: Final = 1.0  # how often the rows holding an alarm are looked for in the buffer
TICK_S: Final = 0.5  # the loop wakes at least this often (alive, timers)
CONNECT_TIMEOUT_S: Final = 5.0


def link_settings(cfg: GbConfig) -> LinkSettings:
    """The link's settings from the config (LinkSettingsError for limits it breaks)."""
    return LinkSettings(
        uitd_address=cfg.uitd_address,
        centre_address=cfg.centre_address,
        version_minor=cfg.minor_version,
        confirm_timeout_s=cfg.confirm_timeout_s,
        resends=cfg.resends,
        heartbeat_s=cfg.heartbeat_s,
    )


@dataclass
class GbCounters:
    rows_confirmed: int = 0
    packets_confirmed: int = 0
    set_aside: int = 0  # read but not for the centre (no coordinates left to map)
    denied_rows: int = 0  # denied after every resend: set aside and announced
    drop_announcements: int = 0  # the buffer's drop announcements this reader was given
    connects: int = 0
    link_faults: int = 0
    restated: int = 0  # later states sent again after a stale one (_restate)
    alarms_confirmed: int = 0  # rows of priority packets the centre confirmed
    alarms_held: int = 0  # of them, acked only after their component's older rows (HeldAlarms)


@dataclass(frozen=True)
class Restated:
    """A restate packet's tag: the states sent again, for the components `keys`."""

    adu: Adu
    keys: frozenset[ComponentKey]


class GbUplink:
    """The GB/T 26875.3 uplink: start(), stop(), wake(), alive, connected, stats()."""

    def __init__(
        self,
        cfg: GbConfig,
        buffer: EventBuffer,
        *,
        faults: Faults | None = None,
        emit: Callable[[Record], object] | None = None,
        texts: Texts = CHINESE,
        analogs: AnalogLookup | None = None,
        on_duty_check: DutyHook | None = None,
        answer_read: ReadHook | None = None,
        clock_synced: Callable[[], bool] = lambda: True,
        set_clock: ClockSetter | None = None,
        clock: LinkClock = REAL_CLOCK,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.link = Link(link_settings(cfg), clock)
        self.counters = GbCounters()
        self._faults = faults
        self._emit = emit
        self._texts = texts
        self._analogs = analogs
        self._clock_synced = clock_synced
        self._clock = clock
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        self._resolver = Resolver(cfg.host, cfg.port)  # a name lookup never stalls the thread
        self._requests = CentreRequests(
            self.link,
            cfg,
            Hooks(on_duty_check, answer_read, set_clock, clock_synced),
            running_state=self._running_state,
            resend_state=self._submit_state,
            announce=self._announce,
            faults=faults,
            texts=texts,
        )
        self._cursor = ReadCursor(reader=READER)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._faulted = False  # a link fault is out on the feed, not yet restored
        self._link_fault_bit = False  # UITD bit 5: set until the centre confirmed a state with it
        self._state: Packet | None = None  # the running state queued for the centre, if any
        self._reconnect_now = False  # the link found the connection stale: no backoff
        self._down_since = clock.monotonic()
        self._last_error: str | None = None
        self._queued = 0  # link.queued as the thread last saw it (stats() runs elsewhere)
        self._latest = LatestStates()  # per component, the latest priority state sent
        self._held = HeldAlarms()  # confirmed priority rows acked only after older ones
        self._next_prune = 0.0
        self.alive = time.monotonic()

    # --- the UplinkPart surface ---------------------------------------------------------------

    def start(self) -> GbUplink:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gb-uplink", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def wake(self) -> None:
        """Something was stored: look at the buffer now (any thread, never blocks)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    @property
    def connected(self) -> bool:
        return self._sock is not None and self.link.up

    def stats(self) -> dict[str, Any]:
        c, lc = self.counters, self.link.counters
        return {
            "centre": f"{self.cfg.host}:{self.cfg.port}",
            "connected": self.connected,
            "link_fault": self._faulted,
            "last_error": self._last_error,
            "queued_packets": self._queued,  # the link is the thread's: read its copy
            "sent": lc.sent,
            "resent": lc.resent,
            "confirmed_rows": c.rows_confirmed,
            "set_aside": c.set_aside,
            "denied_rows": c.denied_rows,
            "link_faults": c.link_faults,
            "connects": c.connects,
            "requests": dict(self._requests.counts),
        }

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.alive = time.monotonic()
            try:
                sock = self._connect()
            except (OSError, AlarmgwError) as exc:  # AlarmgwError: the name does not resolve
                self._last_error = f"connect: {exc}"
                log.debug("gb26875: cannot connect to %s:%s: %s", self.cfg.host, self.cfg.port, exc)
                sock = None
            useful = False
            if sock is not None:
                useful = self._session(sock)
            self._check_down()
            if self._stop.is_set():
                break
            if self._reconnect_now:  # a resend waits for the fresh connection
                self._reconnect_now = False
                continue
            self._idle(self._backoff.next_delay(start_over=useful))

    def _idle(self, seconds: float) -> None:
        """Wait out a backoff while still taking rows (alarms queue for the next connection)
        and noticing a link that has been down too long."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self.alive = time.monotonic()
            self._fill()
            self._check_down()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wait([], min(left, TICK_S))

    def _connect(self) -> socket.socket:
        cfg = self.cfg
        addresses = self._resolver.addresses(self._tick)
        if not addresses:
            raise ConnectionAbortedError("stopping")
        raw = _first_connection(addresses, cfg.port)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not cfg.tls:
                return raw
            context = ssl.create_default_context(cafile=str(cfg.ca_file))
            if cfg.cert_file is not None:
                context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file or cfg.cert_file))
            return context.wrap_socket(raw, server_hostname=cfg.host)
        except (OSError, ssl.SSLError):
            raw.close()
            raise

    def _tick(self) -> bool:
        self.alive = time.monotonic()
        return not self._stop.is_set()

    def _session(self, sock: socket.socket) -> bool:
        """One connection's life. True if the centre confirmed anything (the backoff starts
        over), False if it went nowhere."""
        self._sock = sock
        self.counters.connects += 1
        confirmed_before = self.link.counters.confirmed
        sock.settimeout(self.cfg.confirm_timeout_s)  # a send that blocks this long: gone
        self.link.uitd_status = self._uitd_status()
        if self._link_fault_bit:  # tell the centre first what its link went through
            self._submit_state(first=True)
        self.link.connected()
        log.info("gb26875: connected to %s:%s", self.cfg.host, self.cfg.port)
        try:
            while not self._stop.is_set() and self.link.up:
                self.alive = time.monotonic()
                self._fill()
                self._flush(sock)
                readable = self._wait([sock], self._timeout())
                if readable and not self._read(sock):
                    break
                self.link.handle_timers()
                self._handle_events()
                self._flush(sock)
        except (OSError, ssl.SSLError) as exc:
            self._last_error = f"connection: {exc}"
            log.warning("gb26875: connection lost: %s", exc)
        finally:
            self._sock = None
            if self.link.up:
                self.link.disconnected()
            with contextlib.suppress(OSError):
                sock.close()
            self._handle_events()
        return self.link.counters.confirmed > confirmed_before

    def _timeout(self) -> float:
        deadline = self.link.next_deadline()
        if deadline is None:
            return TICK_S
        return max(0.0, min(TICK_S, deadline - self._clock.monotonic()))

    def _wait(self, socks: list[socket.socket], timeout: float) -> bool:
        """Until a socket is readable, a wake-up or the timeout. True: socks[0] readable."""
        if socks and isinstance(socks[0], ssl.SSLSocket) and socks[0].pending():
            return True  # decrypted bytes already waiting: select would not see them
        ready, _, _ = select.select([*socks, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
        return bool(socks) and socks[0] in ready

    def _read(self, sock: socket.socket) -> bool:
        """Take what the centre sent (the socket is readable); False when it closed."""
        answers = self.link.counters.answers
        data = sock.recv(65536)
        if not data:
            self._last_error = "the centre closed the connection"
            log.warning("gb26875: the centre closed the connection")
            return False
        self.link.receive(data)
        if self.link.counters.answers != answers:
            self._down_since = self._clock.monotonic()  # the centre answers: the link works
        self._handle_events()
        return True

    def _flush(self, sock: socket.socket) -> None:
        data = self.link.data_to_send()
        if data:
            sock.sendall(data)

    # --- rows -> packets ----------------------------------------------------------------------

    def _fill(self) -> None:
        """Hand the link what the buffer has for the centre, in delivery order: every
        life-safety alarm at once, other rows while fewer than MAX_QUEUED ordinary packets
        wait. A row not taken now is read again next time (its cursor is not moved)."""
        while True:
            failures = self.buffer.read_failures
            rows = self.buffer.next_rows(self._cursor, READ_ROWS)
            # a stream whose read failed returns nothing: no proof that nothing older is left
            complete = self.buffer.read_failures == failures
            if not rows:
                if complete:
                    self._held.caught_up()
                self._release()
                return
            mapped: list[Mapped] = []
            aside: list[StoredRow] = []
            full = False
            for row in rows:
                if not row.life_safety and self.link.queued + len(mapped) // 22 >= MAX_QUEUED:
                    full = True
                    break
                item = map_row(row, self._analogs)
                if item is None:
                    aside.append(row)
                else:
                    mapped.append(item)
                self._cursor.passed(row)
            self._set_aside(aside)
            self._latest.remember(mapped)
            self._held.read(mapped)
            for batch in batches(mapped):
                self.link.submit(Packet(batch.adu.encode(), batch.priority, batch))
            self._queued = self.link.queued
            if full or len(rows) < READ_ROWS:
                if not full and complete:
                    self._held.caught_up()
                self._held.passed(self._cursor.after)
                self._look_behind()
                self._release()
                return

    def _restate(self, batch: Batch) -> None:
        """A stale state confirmed after a later priority state of its component: that
        state goes again (agent/gb26875/laststate.py), a priority packet acking no row."""
        later = self._latest.later_than(batch)
        keys = list(later)
        at = 0
        for adu in pack(later.values()):
            n = len(adu.objects)
            tag = Restated(adu, frozenset(keys[at : at + n]))
            at += n
            self.counters.restated += n
            self._held.restating(set(tag.keys), +1)  # its alarm rows wait for this confirm
            self.link.submit(Packet(adu.encode(), True, tag))

    def _look_behind(self) -> None:
        """A fire read ahead of a backlog waits only for the older rows of its own
        component, not for the whole backlog: read the rows between the cursor and it now
        (once per such fire, at most LOOK_BEHIND_ROWS) and note those of its component.
        Past that bound it waits for the cursor (HeldAlarms.passed)."""
        unread = self._held.unread()
        for lane in {row.lane for row in unread}:
            upto = max(row.seq for row in unread if row.lane is lane)
            after = self._cursor.after.get(lane.value, 0)
            if upto - after > LOOK_BEHIND_ROWS:
                continue
            failures = self.buffer.read_failures
            rows = self.buffer.pending(lane, after, max(1, upto - after), READER)
            if self.buffer.read_failures != failures:
                continue  # a failed read is no proof of "nothing older": the cursor decides
            older = [
                item
                for row in rows
                if not row.life_safety and row.seq < upto
                for item in [map_row(row, self._analogs)]
                if item is not None
            ]
            self._held.looked_behind(lane, upto, older)

    def _release(self) -> None:
        """Ack the held alarm rows whose component's older rows are all confirmed (or left
        the buffer otherwise: an overflow drops ordinary rows, which are never confirmed)."""
        now = self._clock.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_S
            for lane, seq in self._held.blocking():
                failures = self.buffer.read_failures
                rows = self.buffer.pending(lane, seq - 1, 1, READER)
                if self.buffer.read_failures == failures and (not rows or rows[0].seq != seq):
                    self._held.gone(lane, seq)
        rows = self._held.releasable()
        if rows:
            self._ack(rows)

    def _set_aside(self, rows: list[StoredRow]) -> None:
        alarms = [r for r in rows if r.life_safety]
        if alarms:  # an alarm the centre should have had: never only a counter
            lanes = sorted({r.lane.value for r in alarms})
            seqs = [r.seq for r in alarms]
            text = self._texts(
                Msg.GB_UNMAPPED, lane="/".join(lanes), seqs=", ".join(map(str, seqs[:20]))
            )
            log.error("gb26875: %s", text)
            detail = {"uplink": "gb26875", "lanes": lanes, "seqs": seqs}
            self._announce(Kind.FAULT, Severity.MAJOR, Msg.GB_UNMAPPED.value, text, detail)
        for row in rows:
            if b'"buffer":"drops"' in row.payload:
                self.counters.drop_announcements += 1
                log.warning("gb26875: the buffer dropped records (seq %d announces it)", row.seq)
        self.counters.set_aside += len(rows)
        self._ack(rows)

    def _ack(self, rows: list[StoredRow] | tuple[StoredRow, ...]) -> None:
        by_lane: dict[Lane, list[int]] = {}
        for row in rows:
            by_lane.setdefault(row.lane, []).append(row.seq)
        for lane, seqs in by_lane.items():
            self.buffer.ack_many(lane, seqs, READER)

    # --- what the link says -------------------------------------------------------------------

    def _handle_events(self) -> None:
        self._queued = self.link.queued
        for event in self.link.events():
            if isinstance(event, Confirmed):
                self._confirmed(event.packet)
            elif isinstance(event, Failed):
                self._failed(event)
            elif isinstance(event, LinkFault):
                self._link_fault(event.reason)
            elif isinstance(event, Stale):
                self._last_error = event.reason
                self._reconnect_now = True
                log.warning("gb26875: %s", event.reason)
            elif isinstance(event, LinkRestored):
                self._link_works()
            elif isinstance(event, RequestReceived):
                self._requests.handle(event.request)
            elif isinstance(event, Notice):
                log.info("gb26875: %s: %s", event.kind, event.text)

    def _confirmed(self, packet: Packet) -> None:
        self._link_works()
        batch = packet.tag
        if isinstance(batch, Batch):
            self.counters.packets_confirmed += 1
            self.counters.rows_confirmed += len(batch.rows)
            if batch.priority:
                free = self._held.confirmed(batch.rows)
                self.counters.alarms_confirmed += len(batch.rows)
                self.counters.alarms_held += len(batch.rows) - len(free)
                self._ack(free)
            else:
                self._ack(batch.rows)
                self._held.done(batch.rows, batch.adu.objects)
                self._restate(batch)
            self._held.passed(self._cursor.after)
            self._release()
        elif isinstance(batch, Restated):
            self._held.restating(set(batch.keys), -1)
            self._release()
        elif packet is self._state:
            self._state = None
            if self._link_fault_bit and not self._faulted:
                self._link_fault_bit = False  # the centre has the state with bit 5: clear it
                self.link.uitd_status = self._uitd_status()

    def _failed(self, event: Failed) -> None:
        batch = event.packet.tag
        if event.reason == "timeout":
            # the connection is being dropped: the packet goes again first on the next one
            self.link.resubmit(event.packet)
            return
        if event.packet is self._state:
            self._state = None  # denied: the next reconnect or heartbeat says it again
        if isinstance(batch, Restated):  # a state sent again: nothing of the buffer's
            self._held.restating(set(batch.keys), -1)
            self._release()
            return
        if not isinstance(batch, Batch):
            return
        rows = batch.rows
        self.counters.denied_rows += len(rows)
        self._ack(rows)
        if batch.priority:
            self._held.forget(rows)
        else:
            self._held.done(rows, batch.adu.objects)
            self._release()
        seqs = ", ".join(str(r.seq) for r in rows[:20])
        lane = "/".join(sorted({r.lane.value for r in rows}))  # a packet may carry both
        text = self._texts(Msg.GB_DENIED, lane=lane, seqs=seqs, sends=self.cfg.resends + 1)
        log.error("gb26875: %s", text)
        by_lane: dict[str, list[int]] = {}
        for r in rows:
            by_lane.setdefault(r.lane.value, []).append(r.seq)
        detail = {"uplink": "gb26875", "lane": lane, "seqs": [r.seq for r in rows],
                  "by_lane": by_lane}  # fmt: skip
        self._announce(Kind.FAULT, Severity.MAJOR, "gb_denied", text, detail)

    def _link_fault(self, reason: str) -> None:
        self.counters.link_faults += 1
        self._last_error = reason
        log.error("gb26875: link fault: %s", reason)
        self._raise_fault(reason)

    def _raise_fault(self, reason: str) -> None:
        if not self._faulted:
            self._faulted = True
            self._link_fault_bit = True
            self.link.uitd_status = self._uitd_status()
        if self._faults is not None:
            self._faults.link_failed(FAULT_CAUSE, reason)

    def _link_works(self) -> None:
        """The restore on the feed; a next outage is a new fault (bit 5 stays until the
        centre confirmed the state that carries it)."""
        self._down_since = self._clock.monotonic()
        self._faulted = False
        if self._faults is not None:
            self._faults.worked(FAULT_CAUSE)

    def _check_down(self) -> None:
        """No answer from the centre for longer than the link would take to notice a dead
        one (heartbeat + resends), and no connection now: a link fault too (a centre that
        refuses or drops every connection never lets the link itself time out)."""
        if self.connected:
            return
        limit = self.link.settings.fault_detection_s
        if not self._faulted and self._clock.monotonic() - self._down_since >= limit:
            self.counters.link_faults += 1
            self._raise_fault(self._last_error or "no connection to the centre")

    def _uitd_status(self) -> int:
        status = int(UitdStatus.NORMAL)
        if self._link_fault_bit:
            status |= int(UitdStatus.LINK_FAULT)
        return status

    def _now_label(self) -> GbTime:
        return GbTime.from_epoch(self._clock.time(), self.link.settings.utc_offset_s)

    def _running_state(self) -> Adu:
        return Adu.of(UitdState(self._uitd_status() & 0xFF, self._now_label()))

    def _submit_state(self, first: bool = False) -> None:
        """Queue the running state; `first`: ahead of the ordinary packets (after a link
        fault). One at a time: a state already queued is not queued again."""
        if self._state is not None and first:
            return  # already queued (a reconnect after another reconnect): it goes as it is
        self._state = Packet(self._running_state().encode(), tag="state")
        (self.link.resubmit if first else self.link.submit)(self._state)

    def _announce(
        self, kind: Kind, severity: Severity, state: str, text: str, detail: dict[str, Any]
    ) -> None:
        if self._emit is None:
            return
        event: Event = system_event(
            kind,
            severity,
            state,
            text,
            point="gb26875",
            clock_synced=self._clock_synced(),
            detail=detail,
        )
        try:
            self._emit(event)
        except Exception:
            log.exception("gb26875: could not emit %s", state)


def _first_connection(addresses: list[str], port: int) -> socket.socket:
    error: OSError = ConnectionError("no address")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            error = exc
    raise error


def set_system_clock(epoch_s: float) -> None:
    """Set CLOCK_REALTIME (needs CAP_SYS_TIME; OSError otherwise)."""
    time.clock_settime(time.CLOCK_REALTIME, epoch_s)
