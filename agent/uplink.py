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

A row the broker keeps refusing is probed alone, then set aside and announced
(agent/refusals.py). The waits between attempts are agent/backoff.py's.

Also: the retained online status (and the offline last will), the periodic
heartbeat, and downlink commands (agent/downlink.py: run on a worker thread,
answered on cmd-result).

It must never: ack a row before the broker's PUBACK (except a refused row set
aside, which is announced), send rows out of next_rows' order, let a command or
a broker fault stop the thread, or block the buffer's writer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from agent import feed
from agent.backoff import Backoff
from agent.buffer import EventBuffer, ReadCursor
from agent.downlink import CommandFn, Downlink
from agent.faults import FaultReport
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
from agent.refusals import ROW_REFUSALS, Refusals, RowKey
from agent.texts import CHINESE, Texts
from core.errors import UplinkError
from core.events import Identity, Lane, dumps, now_ms

log = logging.getLogger(__name__)

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
# A row bigger than this is set aside without being sent: no broker we deliver to takes
# it for sure (many cap messages at 64-128 KiB), and trying would stall the lane first.
MAX_ROW_BYTES: Final = 64 * 1024

SESSION: Final = "uplink_session"  # the fault cause of a bug in a connection's session

HealthFn = Callable[[], Mapping[str, Any]]


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
        self._downlink = Downlink(commands, identity, self.wake) if commands else None
        # rows the broker refuses: only the connection thread touches them
        self._refusals = Refusals(buffer, clock_synced, texts, self._count_set_aside)

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
        if self._downlink is not None:
            self._downlink.start()
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
        if self._downlink is not None:
            self._downlink.stop(timeout)
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
            self._refusals.blame_loss(session.inflight)
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
        if self._refusals.probe is not None:
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
                self._refusals.set_aside(key, f"{len(row.payload)} bytes, too large")
                self._want_fill = True
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
        self._refusals.check_probe()
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
            if reason in ROW_REFUSALS and self._refusals.strike(
                row, f"refused, reason 0x{reason:02x}"
            ):
                self._want_fill = True
                return  # set aside: the lane goes on without a reconnect
            session.conn.close()
            return
        session.acked[row[0]].append(row[1])
        session.acked_any = True
        self.counters.acked += 1
        self._refusals.forgive(row)
        self._want_fill = True

    def _on_message(self, message: Message) -> None:
        name = feed.command_name_of(self.settings.topic_prefix, self.identity, message.topic)
        if name is None or self._downlink is None:
            return
        self.counters.commands += 1
        self._downlink.received(name, message.payload, message.retain, message.too_large)

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

    def _count_set_aside(self) -> None:
        self.counters.set_aside += 1

    def _publish_results(self, session: _Session) -> None:
        if self._downlink is None:
            return
        leaf = feed.Leaf.CMD_RESULT
        while (result := self._downlink.take_result()) is not None:
            try:
                mid = session.conn.publish(self._topics[leaf], dumps(result), feed.QOS[leaf])
            except UplinkError as exc:
                log.warning("uplink: command result not sent: %s", exc)
                return
            session.control_mids.add(mid)

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
