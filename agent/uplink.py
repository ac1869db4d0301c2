"""Uplink: delivers the buffer to the broker, and nothing is acknowledged before PUBACK.

One thread owns the MQTT connection. Each connection attempt uses a fresh
client (agent.mqtt), so everything unacknowledged is resent from the durable
buffer after a reconnect, never from paho's memory. Pending rows leave events
lane first, then telemetry, each lane in seq order, with at most
`inflight_window` unacknowledged; each PUBACK deletes its row (buffer.ack).
Reconnects back off exponentially with full jitter, so a thousand gateways do
not all come back in the same second after a broker restart.

Also: the retained online status (and the offline last will), the periodic
heartbeat, and downlink commands (run on a worker thread, answered on
cmd-result).

It must never: ack a row before the broker's PUBACK, reorder a lane, let a
command or a broker fault stop the thread, or block the buffer's writer.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from agent import feed
from agent.buffer import EventBuffer
from agent.errors import UplinkError
from agent.events import Identity, Lane, dumps, now_ms
from agent.mqtt import (
    Callbacks,
    Endpoint,
    Message,
    MqttConnection,
    TlsFiles,
    Will,
    load_credentials,
    tls_context,
)

log = logging.getLogger(__name__)

COMMAND_QUEUE: Final = 8  # commands waiting for the worker; more are answered "busy"
RESULT_QUEUE: Final = 64  # results waiting for a connection; older ones are dropped
CONTROL_INFLIGHT: Final = 16  # room in paho's window for status/cmd-result beside the rows
OFFLINE_FLUSH_S: Final = 2.0  # how long a clean shutdown waits for the offline status PUBACK
ALIVE_S: Final = 1.0  # the connection loop iterates at least this often

HealthFn = Callable[[], Mapping[str, Any]]
CommandFn = Callable[[str, bytes], Mapping[str, Any]]


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
    """Exponential backoff with full jitter, never under min_s nor over max_s."""
    ceiling = min(max_s, min_s * float(2 ** min(attempt, 30)))
    return max(min_s, rng() * ceiling)


@dataclass
class UplinkCounters:
    published: int = 0
    acked: int = 0
    rejected: int = 0  # PUBACK with a failure reason (MQTT 5)
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    commands: int = 0
    heartbeats: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Session:
    """State of one connection: what is in flight, where each lane's cursor is."""

    conn: MqttConnection = field(init=False)
    connected: bool = False
    inflight: dict[int, tuple[Lane, int]] = field(default_factory=dict)
    cursor: dict[Lane, int] = field(default_factory=lambda: dict.fromkeys(Lane, 0))
    next_heartbeat: float = 0.0
    offline_mid: int | None = None
    # PUBACKed seqs not yet handed to the buffer: one buffer.ack_many per lane per pump,
    # so a window of PUBACKs read in one go wakes the buffer's writer once, not 50 times
    acked: dict[Lane, list[int]] = field(default_factory=lambda: {lane: [] for lane in Lane})


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
        self.counters = UplinkCounters()
        self._endpoint = self._make_endpoint(settings)  # raises UplinkError: refuse to start
        self._tls = tls_context(self._endpoint.tls) if self._endpoint.tls else None
        self._topics = {
            leaf: feed.topic(settings.topic_prefix, identity, leaf) for leaf in feed.Leaf
        }
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
        self._cmd_queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(COMMAND_QUEUE)
        self._cmd_thread: threading.Thread | None = None
        self._results: deque[dict[str, Any]] = deque(maxlen=RESULT_QUEUE)
        self._results_lock = threading.Lock()
        if buffer.on_stored is None:
            buffer.on_stored = self.wake

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
        return {"connected": self._connected, **self.counters.as_dict()}

    # -- the connection thread -------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                reached = self._session()
            except Exception:  # the uplink thread must outlive any bug in one session
                log.exception("uplink session failed")
                reached = False
            self._set_connected(False)
            if self._stopping.is_set():
                return
            attempt = 0 if reached else attempt + 1
            delay = backoff_delay(
                attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
            )
            self._wait_alive(delay)

    def _wait_alive(self, delay: float) -> None:
        """Wait out a backoff delay (or until stopped), refreshing `alive` meanwhile."""
        until = time.monotonic() + delay
        while not self._stopping.is_set():
            self.alive = now = time.monotonic()
            if now >= until:
                return
            self._stopping.wait(min(ALIVE_S, until - now))

    def _session(self) -> bool:
        """One connection attempt, pumped until it ends. True if it got connected."""
        session = _Session()
        session.conn = MqttConnection(
            self._endpoint,
            self._callbacks(session),
            self._will(),
            self.settings.inflight_window + CONTROL_INFLIGHT,
            self._tls,
        )
        try:
            session.conn.open()
        except UplinkError as exc:
            self.counters.failed_attempts += 1
            log.warning("uplink: %s", str(exc))  # str: a record must not pin a socket
            return False
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
                    log.warning("uplink: no CONNACK within %.0fs", self._endpoint.connect_timeout_s)
                    session.conn.close()
                    break
                continue
            self._serve(session)
        if self._stopping.is_set():
            self._say_offline(session)
            self._hand_over_acks(session)
        session.conn.close()
        return session.connected

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
        if self._want_fill:
            self._want_fill = False
            self._fill(session)
        if time.monotonic() >= session.next_heartbeat:
            self._heartbeat(session)
        self._publish_results(session)

    def _fill(self, session: _Session) -> None:
        room = self.settings.inflight_window - len(session.inflight)
        publish = session.conn.publish
        inflight = session.inflight
        for lane in (Lane.EVENT, Lane.TELEMETRY):
            if room <= 0 or session.conn.closed:
                return
            topic = self._topics[feed.Leaf(lane.value)]
            rows = self.buffer.pending(lane, session.cursor[lane], room)
            for row in rows:
                try:
                    mid = publish(topic, row.payload, 1)
                except UplinkError as exc:
                    log.warning("uplink: %s", str(exc))  # str: a record must not pin a socket
                    return
                inflight[mid] = (lane, row.seq)
                session.cursor[lane] = row.seq
                self.counters.published += 1
            room -= len(rows)

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
            log.warning("uplink: broker refused the connection: %s", reason)
            self.counters.failed_attempts += 1
            session.conn.close()
            return
        session.connected = True
        if self.counters.connects:
            self.counters.reconnects += 1
        self.counters.connects += 1
        log.info("uplink: connected to %s:%s", self._endpoint.host, self._endpoint.port)
        try:
            session.conn.subscribe(
                feed.command_filter(self.settings.topic_prefix, self.identity), feed.COMMAND_QOS
            )
            self._publish_status(session, online=True)
        except UplinkError as exc:
            log.warning("uplink: %s", str(exc))  # str: a record must not pin a socket
            session.conn.close()
            return
        session.next_heartbeat = time.monotonic()
        self._want_fill = True
        self._set_connected(True)

    def _on_disconnect(self, session: _Session, reason: str) -> None:
        if session.connected and not self._stopping.is_set():
            log.warning("uplink: connection lost: %s", reason)

    def _on_puback(self, session: _Session, mid: int, accepted: bool) -> None:
        if mid == session.offline_mid:
            session.offline_mid = None
            return
        row = session.inflight.pop(mid, None)
        if row is None:
            return  # status, cmd-result: nothing to delete
        if not accepted:
            # the broker refused it (MQTT 5): keep the row, resend from the buffer after a
            # reconnect; the lane must not move on past it
            self.counters.rejected += 1
            log.warning("uplink: broker rejected %s seq %d; reconnecting", *row)
            session.conn.close()
            return
        session.acked[row[0]].append(row[1])
        self.counters.acked += 1
        self._want_fill = True

    def _on_message(self, message: Message) -> None:
        name = feed.command_name_of(self.settings.topic_prefix, self.identity, message.topic)
        if name is None or self._commands is None:
            return
        self.counters.commands += 1
        try:
            self._cmd_queue.put_nowait((name, message.payload))
        except queue.Full:
            self._queue_result(self._busy_result(name, message.payload))

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
            self.counters.as_dict(),
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
            name, raw = item
            try:
                result = dict(self._commands(name, raw))
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
                session.conn.publish(self._topics[leaf], dumps(result), feed.QOS[leaf])
            except UplinkError as exc:
                log.warning("uplink: command result not sent: %s", exc)
                return

    def _busy_result(self, name: str, raw: bytes) -> dict[str, Any]:
        request_id = None
        with contextlib.suppress(feed.BadCommand):
            request_id = feed.parse_command(name, raw).request_id
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

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if self.on_state is not None:
            try:
                self.on_state(connected)
            except Exception:  # a broken LED rule must not take the uplink down
                log.exception("uplink on_state callback raised")
