"""Uplink: delivers the buffer to the broker, and nothing is acknowledged before PUBACK.

One thread owns the MQTT connection. Each connection attempt uses a fresh
client (agent.mqtt), so everything unacknowledged is resent from the durable
buffer after a reconnect, never from paho's memory. Pending rows leave in the
buffer's delivery order (EventBuffer.next_rows: life-safety alarms first, then
the rest of the event lane, then telemetry, each in seq order), with at most
`inflight_window` unacknowledged; each PUBACK deletes its row (buffer.ack).
Reconnects back off exponentially with full jitter up to reconnect_max_s, then
wait between half of it and all of it, so a thousand gateways do not all come
back in the same second after a broker restart, yet each is back within
reconnect_max_s of it (8 s by default: the 10 s alarm promise; figures in
bench/bench_fleet.py). The backoff starts over only after a session proved
itself (a row acknowledged, or up STABLE_S) or was dropped on the PUBACK
deadline below.

A broker that keeps the connection but stops acknowledging (no PUBACK for
PUBACK_TIMEOUT_S while something waits for one) is dropped like a lost
connection: everything unacknowledged is resent on the next one, and
`last_error` says why until the broker acknowledges again.

A row the broker refuses (too big, malformed: it answers with a failure or drops
the connection) would otherwise go first again on every reconnect and hold the
lane forever. After the first refusal that row is sent alone (probe), so a later
refusal is surely its own; after SET_ASIDE_AFTER refusals it is set aside: deleted
from the buffer and announced by a small SYSTEM fault event naming its lane and
seq (loss is never silent), and the lane moves on. A network loss never counts
against a row.

Also: the retained online status (and the offline last will), the periodic
heartbeat, and downlink commands (run on a worker thread, answered on
cmd-result).

It must never: ack a row before the broker's PUBACK (except a refused row set
aside, which is announced), send rows out of next_rows' order, let a command or
a broker fault stop the thread, or block the buffer's writer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from agent import feed
from agent.buffer import EventBuffer, ReadCursor
from agent.mqtt import (
    Callbacks,
    Endpoint,
    Message,
    MqttConnection,
    Resolver,
    TlsFiles,
    Will,
    load_credentials,
    tls_context,
)
from agent.texts import CHINESE, Msg, Texts
from core.errors import UplinkError
from core.events import Identity, Kind, Lane, Severity, dumps, now_ms, system_event

log = logging.getLogger(__name__)

COMMAND_QUEUE: Final = 8  # commands waiting for the worker; more are answered "busy"
RESULT_QUEUE: Final = 64  # results waiting for a connection; older ones are dropped
CONTROL_INFLIGHT: Final = 16  # room in paho's window for status/cmd-result beside the rows
OFFLINE_FLUSH_S: Final = 2.0  # how long a clean shutdown waits for the offline status PUBACK
ALIVE_S: Final = 1.0  # the connection loop iterates at least this often
REFILL_S: Final = 1.0  # look at the buffer at least this often while connected
STABLE_S: Final = 30.0  # a session up this long (or one PUBACKed row) resets the backoff
# No PUBACK for this long while one is awaited: the connection is dropped and everything
# unacknowledged resent on a new one. Counted from the last PUBACK (or the first publish
# after one), so a slow link that still acknowledges is never cut; 5 s plus the first
# backoff (at most 2 x reconnect_min_s) keeps an alarm published into a dead connection
# (a NAT that forgot us, a load balancer's hung backend) within the 10 s promise.
PUBACK_TIMEOUT_S: Final = 5.0
BACKOFF_FLOOR_S: Final = 0.1  # no reconnect sooner than this (capped by reconnect_min_s)
SET_ASIDE_AFTER: Final = 3  # refusals of one row before it is set aside
MAX_STRIKES: Final = 64  # rows with refusals remembered (bounded: the Pi has 1 GB)
# A row bigger than this is set aside without being sent: no broker we deliver to takes
# it for sure (many cap messages at 64-128 KiB), and trying would stall the lane first.
MAX_ROW_BYTES: Final = 64 * 1024
# PUBACK reason codes that speak about the message itself, not the topic or the client
# (0x87 not authorized would refuse every row alike: setting them aside would drain the
# buffer, so such a refusal only reconnects, with a growing backoff)
ROW_REFUSALS: Final = frozenset({0x95, 0x99})  # packet too large, payload format invalid

SESSION: Final = "uplink_session"  # the fault cause of a bug in a connection's session

HealthFn = Callable[[], Mapping[str, Any]]
RowKey = tuple[Lane, int]


class FaultReport(Protocol):
    """Where a failure that is not the broker's becomes a fault event (agent.faults.Faults)."""

    def failed(self, cause: str, exc: BaseException, *, what: str = "") -> None: ...
    def worked(self, cause: str) -> None: ...


class CommandFn(Protocol):
    """Answers one downlink message (agent.commands.CommandHandler.handle); never raises."""

    def __call__(self, name: str, raw: bytes, retained: bool = False) -> Mapping[str, Any]: ...


class UplinkSettings(Protocol):
    """The fields of agent.config.UplinkConfig the uplink reads."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def ca_file(self) -> Path | str | None: ...
    @property
    def cert_file(self) -> Path | str | None: ...
    @property
    def key_file(self) -> Path | str | None: ...
    @property
    def credentials_file(self) -> Path | str | None: ...
    @property
    def topic_prefix(self) -> str: ...
    @property
    def mqtt_version(self) -> str: ...
    @property
    def keepalive_s(self) -> int | float: ...
    @property
    def heartbeat_s(self) -> float: ...
    @property
    def inflight_window(self) -> int: ...
    @property
    def reconnect_min_s(self) -> float: ...
    @property
    def reconnect_max_s(self) -> float: ...
    @property
    def client_id(self) -> str | None: ...


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter: uniform below min(max_s, min_s * 2**attempt),
    and once that ceiling is max_s, uniform between max_s / 2 and max_s.

    `attempt` is 1 for the first reconnect after a loss. The climb is jittered over its
    whole range (no clamp to min_s, which would bring a fleet back in lockstep after a
    broker restart); by the time the ceiling is reached the fleet's attempts are spread,
    and the raised lower bound then halves the rate of attempts against a broker that is
    down and flattens the peak when it returns, while max_s still bounds the wait. A small
    floor keeps a broken broker from being hammered.
    """
    ceiling = min(max_s, min_s * float(2 ** min(max(attempt, 0), 30)))
    low = ceiling / 2 if ceiling >= max_s else 0.0
    floor = min(BACKOFF_FLOOR_S, min_s)
    return max(floor, low + rng() * (ceiling - low))


class Backoff:
    """The waits between connection attempts: backoff_delay over a count of attempts
    that starts over when the session that ended says so (Uplink._session)."""

    def __init__(self, min_s: float, max_s: float, rng: Callable[[], float]) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng
        self.attempt = 0

    def next_delay(self, start_over: bool) -> float:
        """The wait after a session ended. A session that reached CONNACK but did nothing
        useful (a refused row, a broker that drops us at once) must not start the count
        over: that was the 85-reconnects-in-6-s loop."""
        self.attempt = 1 if start_over else min(self.attempt + 1, 30)
        return backoff_delay(self.attempt, self.min_s, self.max_s, self._rng)


@dataclass
class UplinkCounters:
    published: int = 0
    acked: int = 0
    rejected: int = 0  # PUBACK with a failure reason (MQTT 5)
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    set_aside: int = 0  # rows deleted unsent after repeated refusals (each announced)
    puback_timeouts: int = 0  # connections dropped because the broker stopped acknowledging
    commands: int = 0
    heartbeats: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Session:
    """State of one connection: what is in flight, where each lane's cursor is."""

    conn: MqttConnection = field(init=False)
    connected: bool = False
    connected_at: float = 0.0
    acked_any: bool = False  # a row PUBACKed: the link and the lane work
    next_refill: float = 0.0
    inflight: dict[int, RowKey] = field(default_factory=dict)  # in publish order
    cursor: ReadCursor = field(default_factory=ReadCursor)  # what this connection has sent
    next_heartbeat: float = 0.0
    offline_mid: int | None = None
    # QoS 1 publishes that are not rows (the online status, command results): their
    # PUBACKs count for the deadline like the rows' do
    control_mids: set[int] = field(default_factory=set)
    # since when a PUBACK has been awaited without one arriving (None: nothing awaited)
    waiting_since: float | None = None
    # PUBACKed seqs not yet handed to the buffer: one buffer.ack_many per lane per pump,
    # so a window of PUBACKs read in one go wakes the buffer's writer once, not 50 times
    acked: dict[Lane, list[int]] = field(default_factory=lambda: {lane: [] for lane in Lane})

    def awaiting(self) -> bool:
        return bool(self.inflight or self.control_mids)

    def proved(self) -> bool:
        """Connected and useful: a row went through, or it stayed up STABLE_S."""
        if not self.connected:
            return False
        return self.acked_any or time.monotonic() - self.connected_at >= STABLE_S


class Uplink:
    """Owns the MQTT connection on its own thread. start(), then stop() on shutdown."""

    def __init__(
        self,
        settings: UplinkSettings,
        identity: Identity,
        buffer: EventBuffer,
        *,
        version: str,
        config_digest: str,
        boot_ts_ms: int | None = None,
        clock_synced: Callable[[], bool] = lambda: True,
        health: HealthFn | None = None,
        commands: CommandFn | None = None,
        on_state: Callable[[bool], None] | None = None,
        rng: Callable[[], float] = random.random,
        resolver: Resolver | None = None,
        faults: FaultReport | None = None,
        texts: Texts = CHINESE,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.buffer = buffer
        self.version = version
        self.config_digest = config_digest
        self.boot_ts_ms = boot_ts_ms if boot_ts_ms is not None else now_ms()
        self._clock_synced = clock_synced
        self._health = health
        self._commands = commands
        self.on_state = on_state
        self._rng = rng
        self._faults = faults
        self._texts = texts
        self.counters = UplinkCounters()
        self._endpoint = self._make_endpoint(settings)  # raises UplinkError: refuse to start
        endpoint = self._endpoint
        self._tls = tls_context(endpoint.tls, endpoint.host) if endpoint.tls else None
        self._resolver = resolver or Resolver(endpoint.host, endpoint.port)
        self.last_error: str | None = None  # why the last attempt failed (cleared on connect)
        self._topics = {
            leaf: feed.topic(settings.topic_prefix, identity, leaf) for leaf in feed.Leaf
        }
        self._lane_topics = {lane: self._topics[feed.Leaf(lane.value)] for lane in Lane}
        self._started = time.monotonic()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._want_fill = True
        self._connected = False
        self._thread: threading.Thread | None = None
        # time.monotonic() of the connection loop's last iteration (the loop turns at least
        # every ALIVE_S, connected or not): the systemd watchdog reads it
        self.alive = time.monotonic()
        self._cmd_queue: queue.Queue[tuple[str, bytes, bool] | None] = queue.Queue(COMMAND_QUEUE)
        self._cmd_thread: threading.Thread | None = None
        self._results: deque[dict[str, Any]] = deque(maxlen=RESULT_QUEUE)
        self._results_lock = threading.Lock()
        # refusals per row, and the row being probed (sent alone until it is acked);
        # both only touched by the connection thread
        self._strikes: dict[RowKey, int] = {}
        self._probe: RowKey | None = None

    @staticmethod
    def _make_endpoint(settings: UplinkSettings) -> Endpoint:
        creds = None
        if settings.credentials_file:
            creds = load_credentials(Path(settings.credentials_file))
        tls = None
        if settings.ca_file:
            tls = TlsFiles(
                Path(settings.ca_file),
                Path(settings.cert_file) if settings.cert_file else None,
                Path(settings.key_file) if settings.key_file else None,
            )
        elif settings.cert_file or settings.key_file:
            raise UplinkError("cert_file/key_file need ca_file: TLS always verifies the broker")
        return Endpoint(
            host=settings.host,
            port=int(settings.port),
            client_id=settings.client_id or "",
            mqtt_version=str(settings.mqtt_version),
            keepalive_s=int(settings.keepalive_s),
            tls=tls,
            credentials=creds,
        )

    # -- public surface --------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> Uplink:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()
        if self._commands is not None:
            self._cmd_thread = threading.Thread(
                target=self._command_worker, name="uplink-commands", daemon=True
            )
            self._cmd_thread.start()
        return self

    def wake(self) -> None:
        """New rows are stored (called from the buffer's writer): look at the buffer now."""
        self._want_fill = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def stop(self, timeout: float = 10.0) -> None:
        """Say offline (retained), disconnect cleanly, join threads, close the wake pipe."""
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._cmd_thread is not None:
            with contextlib.suppress(queue.Full):
                self._cmd_queue.put(None, timeout=timeout)
            self._cmd_thread.join(timeout)
            self._cmd_thread = None
        self._wake_r.close()
        self._wake_w.close()

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "last_error": self.last_error,
            **self.counters.as_dict(),
        }

    # -- the connection thread -------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng)
        while not self._stopping.is_set():
            try:
                start_over = self._session()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a bug in a session
                self._trouble(f"internal error: {type(exc).__name__}: {exc}")
                if self._faults is not None:
                    self._faults.failed(SESSION, exc)
                start_over = False
            else:
                if start_over and self._faults is not None:
                    self._faults.worked(SESSION)
            self._set_connected(False)
            if self._stopping.is_set():
                return
            self._wait_alive(backoff.next_delay(start_over))

    def _wait_alive(self, delay: float) -> None:
        """Wait out a backoff delay (or until stopped), refreshing `alive` meanwhile."""
        until = time.monotonic() + delay
        while not self._stopping.is_set():
            self.alive = now = time.monotonic()
            if now >= until:
                return
            self._stopping.wait(min(ALIVE_S, until - now))

    def _session(self) -> bool:
        """One connection attempt, pumped until it ends. True if the backoff may start
        over: the session proved itself, or it was dropped on the PUBACK deadline (which
        already spaced it PUBACK_TIMEOUT_S from the last attempt, so it needs no growing
        wait against a loop; a prompt new connection is what gets round a lost path,
        and what delivers soon after a stalled broker recovers)."""
        session = _Session()
        stalled = False
        try:
            conn = self._open(session)
        except UplinkError as exc:
            self._attempt_failed(str(exc))  # str: a record must not pin a socket
            return False
        finally:
            self.alive = time.monotonic()
        if conn is None:  # stopping
            return False
        session.conn = conn
        deadline = time.monotonic() + self._endpoint.connect_timeout_s
        while not self._stopping.is_set():
            self.alive = time.monotonic()
            pumped = session.conn.pump(self._pump_timeout(session), self._wake_r.fileno())
            self._hand_over_acks(session)  # PUBACKs read before a loss still count
            if not pumped:
                break
            self._drain_wake()
            if not session.connected:
                if time.monotonic() > deadline:
                    self._attempt_failed(
                        f"no CONNACK within {self._endpoint.connect_timeout_s:.0f} s"
                    )
                    session.conn.close()
                    break
                continue
            self._serve(session)
            if self._puback_overdue(session):
                stalled = True
                break
        if self._stopping.is_set():
            self._say_offline(session)
            self._hand_over_acks(session)
        elif session.connected and session.conn.message_fault:
            self._blame_loss(session)
        session.conn.close()
        return stalled or session.proved()

    def _open(self, session: _Session) -> MqttConnection | None:
        """Resolve the broker's name (bounded), then connect to its addresses in turn, each
        with a fresh client, until one takes (TCP and TLS are bounded by the endpoint's
        connect_timeout_s each). None if stopped meanwhile; UplinkError if all failed."""
        addresses = self._resolve()
        failures = []
        for address in addresses or ():
            if self._stopping.is_set():
                return None
            conn = MqttConnection(
                self._endpoint,
                self._callbacks(session),
                self._will(),
                self.settings.inflight_window + CONTROL_INFLIGHT,
                self._tls,
            )
            self.alive = time.monotonic()  # open() blocks: TCP, TLS (each bounded)
            try:
                conn.open(address)
            except UplinkError as exc:
                failures.append(str(exc))
                continue
            return conn
        if addresses is None:
            return None
        raise UplinkError("; ".join(failures))

    def _resolve(self) -> list[str] | None:
        """The broker's addresses (the wait is bounded and keeps `alive` fresh: a dead
        name server must not look like a hung agent to the watchdog). None if stopped."""
        return self._resolver.addresses(self._tick, ALIVE_S)

    def _tick(self) -> bool:
        self.alive = time.monotonic()
        return not self._stopping.is_set()

    def _hand_over_acks(self, session: _Session) -> None:
        for lane, seqs in session.acked.items():
            if seqs:
                session.acked[lane] = []
                self.buffer.ack_many(lane, seqs)

    def _pump_timeout(self, session: _Session) -> float:
        if not session.connected:
            return 0.5
        until_heartbeat = session.next_heartbeat - time.monotonic()
        return max(0.0, min(1.0, until_heartbeat))  # <=1 s so keepalive pings stay on time

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _serve(self, session: _Session) -> None:
        """Work while connected: rows into the window, heartbeat, command results."""
        now = time.monotonic()
        if now >= session.next_refill:
            # a wake-up can be missed (a failed buffer read looks like "nothing
            # pending"): a periodic look keeps a pending alarm from waiting for traffic
            session.next_refill = now + REFILL_S
            self._want_fill = True
        if self._want_fill:
            self._want_fill = False
            self._fill(session)
        if time.monotonic() >= session.next_heartbeat:
            self._heartbeat(session)
        self._publish_results(session)
        if session.waiting_since is None and session.awaiting():
            session.waiting_since = time.monotonic()

    def _puback_overdue(self, session: _Session) -> bool:
        """Drop a connection on which the broker has stopped acknowledging. True if so."""
        since = session.waiting_since
        if since is None or time.monotonic() - since < PUBACK_TIMEOUT_S:
            return False
        self.counters.puback_timeouts += 1
        self._trouble(
            f"no PUBACK from the broker for {PUBACK_TIMEOUT_S:.0f} s: it keeps the connection "
            "but does not acknowledge; reconnecting, unacknowledged records are sent again"
        )
        session.conn.close()
        return True

    def _fill(self, session: _Session) -> None:
        room = self.settings.inflight_window - len(session.inflight)
        if self._probe is not None:
            room = min(room, 1 - len(session.inflight))  # the suspect row goes alone
        if room <= 0 or session.conn.closed:
            return
        publish = session.conn.publish
        inflight = session.inflight
        cursor = session.cursor
        topics = self._lane_topics
        # the buffer's delivery order: life-safety alarms, the event lane, telemetry
        for row in self.buffer.next_rows(cursor, room):
            key = (row.lane, row.seq)
            if len(row.payload) > MAX_ROW_BYTES:
                cursor.passed(row)
                self._set_aside(key, f"{len(row.payload)} bytes, too large")
                continue
            try:
                mid = publish(topics[row.lane], row.payload, 1)
            except UplinkError as exc:
                log.warning("uplink: %s", str(exc))  # str: a record must not pin a socket
                return
            inflight[mid] = key
            cursor.passed(row)
            self.counters.published += 1

    # -- connection callbacks (run inside pump, in this thread) ---------------------

    def _callbacks(self, session: _Session) -> Callbacks:
        return Callbacks(
            on_connect=functools.partial(self._on_connect, session),
            on_disconnect=functools.partial(self._on_disconnect, session),
            on_puback=functools.partial(self._on_puback, session),
            on_message=self._on_message,
        )

    def _on_connect(self, session: _Session, accepted: bool, reason: str) -> None:
        if not accepted:
            self._attempt_failed(f"broker refused the connection: {reason}")
            session.conn.close()
            return
        session.connected = True
        session.connected_at = time.monotonic()
        # last_error stays until the broker acknowledges something: a broker that takes
        # the connection but never a message must not look healthy (_on_puback clears it)
        self._check_probe()
        if self.counters.connects:
            self.counters.reconnects += 1
        self.counters.connects += 1
        log.info("uplink: connected to %s:%s", self._endpoint.host, self._endpoint.port)
        try:
            session.conn.subscribe(
                feed.command_filter(self.settings.topic_prefix, self.identity), feed.COMMAND_QOS
            )
            session.control_mids.add(self._publish_status(session, online=True))
        except UplinkError as exc:
            log.warning("uplink: %s", str(exc))  # str: a record must not pin a socket
            session.conn.close()
            return
        session.next_heartbeat = time.monotonic()
        self._want_fill = True
        self._set_connected(True)

    def _on_disconnect(self, session: _Session, reason: str) -> None:
        if self._stopping.is_set():
            return
        if session.connected:
            self._trouble(f"connection lost: {reason}")
        else:  # TCP (and TLS) went through, then the broker or a proxy hung up
            self._attempt_failed(f"connection closed before CONNACK: {reason}")

    def _on_puback(self, session: _Session, mid: int, reason: int) -> None:
        if mid == session.offline_mid:
            session.offline_mid = None
            return
        row = session.inflight.pop(mid, None)
        session.control_mids.discard(mid)
        # an answer, accepted or not: the broker is acknowledging
        session.waiting_since = time.monotonic() if session.awaiting() else None
        if reason < 0x80:
            self.last_error = None
        if row is None:
            return  # status, cmd-result: nothing to delete
        if reason >= 0x80:
            # the broker refused it (MQTT 5): keep the row, resend from the buffer after a
            # reconnect; the lane must not move on past it, unless the refusal is about
            # the row itself and keeps coming (then it is set aside)
            self.counters.rejected += 1
            self._trouble(f"broker refused {row[0].value} seq {row[1]} (reason 0x{reason:02x})")
            if reason in ROW_REFUSALS and self._strike(row, f"refused, reason 0x{reason:02x}"):
                return  # set aside: the lane goes on without a reconnect
            session.conn.close()
            return
        session.acked[row[0]].append(row[1])
        session.acked_any = True
        self.counters.acked += 1
        if self._strikes:
            self._strikes.pop(row, None)  # it went through: its refusals are forgiven
        if self._probe == row:
            self._probe = None
        self._want_fill = True

    # -- rows the broker keeps refusing ----------------------------------------------

    def _blame_loss(self, session: _Session) -> None:
        """The broker dropped us over a protocol fault: blame the oldest row in flight,
        but only once unless it was alone in flight (then it is surely the one)."""
        if not session.inflight:
            return
        row = next(iter(session.inflight.values()))
        if row in self._strikes and len(session.inflight) > 1:
            return
        self._strike(row, "the broker dropped the connection on it")

    def _strike(self, row: RowKey, why: str) -> bool:
        """Count one refusal of a row; set it aside at SET_ASIDE_AFTER. True if set aside."""
        count = self._strikes.pop(row, 0) + 1
        if count >= SET_ASIDE_AFTER:
            self._set_aside(row, f"{why} ({count} times)")
            return True
        self._strikes[row] = count  # re-inserted last: the oldest entry goes first below
        while len(self._strikes) > MAX_STRIKES:
            del self._strikes[next(iter(self._strikes))]
        self._probe = row
        log.warning("uplink: %s seq %d: %s; sending it alone next", row[0].value, row[1], why)
        return False

    def _check_probe(self) -> None:
        """Forget the probe if its row is no longer pending (acked, dropped). Not "no longer
        the head of its lane": a life-safety alarm is sent before older rows, and a refused
        one must still be probed and set aside, or it would hold every reconnect."""
        if self._probe is None:
            return
        lane, seq = self._probe
        still = self.buffer.pending(lane, seq - 1, 1)
        if not still or still[0].seq != seq:
            self._strikes.pop(self._probe, None)
            self._probe = None

    def _set_aside(self, row: RowKey, why: str) -> None:
        """Delete a row the broker will never take, and say so with a small fault event."""
        lane, seq = row
        self._strikes.pop(row, None)
        if self._probe == row:
            self._probe = None
        self.counters.set_aside += 1
        log.error("uplink: %s seq %d set aside unsent: %s", lane.value, seq, why)
        self.buffer.ack_many(lane, [seq])
        fault = system_event(
            Kind.FAULT,
            Severity.MAJOR,
            "set_aside",
            self._texts(Msg.SET_ASIDE, lane=lane.value, seq=seq, why=why),
            point="uplink",
            clock_synced=self._clock_synced(),
            detail={"uplink": "set_aside", "lane": lane.value, "seq": seq, "why": why},
        )
        self.buffer.submit(fault).add_done_callback(_log_refusal)
        self._want_fill = True

    def _on_message(self, message: Message) -> None:
        name = feed.command_name_of(self.settings.topic_prefix, self.identity, message.topic)
        if name is None or self._commands is None:
            return
        self.counters.commands += 1
        if message.too_large is not None:  # its payload was thrown away unread (agent.mqtt)
            bad = feed.too_large(message.too_large)
            self._queue_result(self._error_result(name, bad.code, bad.message))
            return
        try:
            self._cmd_queue.put_nowait((name, message.payload, message.retain))
        except queue.Full:
            self._queue_result(self._busy_result(name, message.payload, message.retain))

    # -- what the uplink publishes besides rows ------------------------------------

    def _will(self) -> Will:
        payload = feed.will_payload(
            self.identity, self.version, self.boot_ts_ms, self.config_digest, now_ms()
        )
        return Will(self._topics[feed.Leaf.STATUS], dumps(payload), 1, True)

    def _publish_status(self, session: _Session, online: bool) -> int:
        payload = feed.status_payload(
            self.identity, online, self.version, self.boot_ts_ms, self.config_digest, now_ms()
        )
        leaf = feed.Leaf.STATUS
        return session.conn.publish(
            self._topics[leaf], dumps(payload), feed.QOS[leaf], feed.RETAIN[leaf]
        )

    def _say_offline(self, session: _Session) -> None:
        """Clean shutdown: retained offline status, wait briefly for its PUBACK, DISCONNECT."""
        if not session.connected or session.conn.closed:
            return
        try:
            session.offline_mid = self._publish_status(session, online=False)
        except UplinkError:
            return
        deadline = time.monotonic() + OFFLINE_FLUSH_S
        while session.offline_mid is not None and time.monotonic() < deadline:
            if not session.conn.pump(0.1):
                return
        session.conn.disconnect()

    def _heartbeat(self, session: _Session) -> None:
        session.next_heartbeat = time.monotonic() + self.settings.heartbeat_s
        leaf = feed.Leaf.HEARTBEAT
        try:
            payload = self._heartbeat_payload()
            session.conn.publish(self._topics[leaf], dumps(payload), feed.QOS[leaf])
        except (UplinkError, KeyError, TypeError, ValueError) as exc:
            log.warning("uplink: heartbeat not sent: %s", exc)
            return
        self.counters.heartbeats += 1

    def health(self) -> dict[str, Any]:
        """The heartbeat's health summary taken now (the `status` command's answer)."""
        payload = self._heartbeat_payload()
        return {key: payload[key] for key in feed.HEALTH_KEYS}

    def _heartbeat_payload(self) -> dict[str, Any]:
        stats = self.buffer.stats()
        devices = dict(self._health()) if self._health else {}
        devices = {"total": 0, "online": 0, "comm_fault": [], **devices}
        return feed.heartbeat_payload(
            self.identity,
            now_ms(),
            self._clock_synced(),
            time.monotonic() - self._started,
            self.version,
            stats,
            devices,
            stats["drops"],
            {**self.counters.as_dict(), "last_error": self.last_error},
            interval_s=self.settings.heartbeat_s,
        )

    # -- downlink commands ----------------------------------------------------------

    def _command_worker(self) -> None:
        """Commands may wait on the field or the buffer: never in the connection thread."""
        assert self._commands is not None
        while True:
            item = self._cmd_queue.get()
            if item is None:
                return
            name, raw, retained = item
            try:
                result = dict(self._commands(name, raw, retained=retained))
            except Exception as exc:  # the handler promises not to raise; belt and braces
                log.exception("command handler raised")
                result = self._error_result(name, feed.ErrorCode.INTERNAL, str(exc))
            self._queue_result(result)

    def _queue_result(self, result: dict[str, Any]) -> None:
        with self._results_lock:
            self._results.append(result)
        self.wake()

    def _publish_results(self, session: _Session) -> None:
        leaf = feed.Leaf.CMD_RESULT
        while True:
            with self._results_lock:
                if not self._results:
                    return
                result = self._results.popleft()
            try:
                mid = session.conn.publish(self._topics[leaf], dumps(result), feed.QOS[leaf])
            except UplinkError as exc:
                log.warning("uplink: command result not sent: %s", exc)
                return
            session.control_mids.add(mid)

    def _busy_result(self, name: str, raw: bytes, retained: bool) -> dict[str, Any]:
        request_id = None
        with contextlib.suppress(feed.BadCommand):
            request_id = feed.parse_command(name, raw, retained=retained).request_id
        return self._error_result(name, feed.ErrorCode.BUSY, "too many commands queued", request_id)

    def _error_result(
        self, name: str, code: str, message: str, request_id: str | None = None
    ) -> dict[str, Any]:
        return feed.result_payload(
            self.identity,
            request_id,
            name,
            False,
            None,
            {"code": code, "message": message},
            now_ms(),
        )

    def _attempt_failed(self, why: str) -> None:
        """A connection attempt ended before the broker accepted us (each path ends the
        attempt, so it is counted once)."""
        self.counters.failed_attempts += 1
        self._trouble(why)

    def _trouble(self, why: str) -> None:
        """Log why the link is down and keep it for `alarmgw status` (last_error)."""
        log.warning("uplink: %s", why)
        self.last_error = why

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if self.on_state is not None:
            try:
                self.on_state(connected)
            except Exception:  # a broken LED rule must not take the uplink down
                log.exception("uplink on_state callback raised")


def _log_refusal(future: Future[Any]) -> None:
    """The set-aside fault could not be stored: the log is the last place to say so."""
    exc = future.exception()
    if exc is not None:
        log.error("uplink: set-aside fault event not stored: %s", exc)
