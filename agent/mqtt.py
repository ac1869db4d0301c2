"""The one module that imports paho-mqtt: a thin, typed wrapper around one connection.

`MqttConnection` is one connection attempt with one fresh paho client (so
paho's own in-memory retry queue can never resend behind the uplink's back),
driven by the caller's thread through `pump()` — no paho thread, so every
callback runs in the thread that owns the connection. TLS always verifies the
server certificate and host name. Credentials come from a file that nobody
but the owner may read.

Every byte from the broker reaches paho through `InboundLimit`, which keeps
each packet within MAX_INCOMING_PACKET: paho reads a whole packet into memory
before any callback, and MQTT 3.1.1 cannot tell the broker our limit, so one
100 MB command would otherwise cost the Pi hundreds of MB.

It must never: retry or queue on its own, skip certificate verification, let
a paho exception escape untranslated (UplinkError is ours), or hold more than
one bounded packet of the broker's in memory.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt_inbound import InboundLimit
from core.errors import UplinkError

log = logging.getLogger(__name__)

# The largest packet we read (its remaining length). Commands are at most 4 KiB
# (agent.feed.MAX_COMMAND_BYTES). MQTT 5 announces it (CONNECT's Maximum-Packet-Size):
# the broker then drops anything bigger for us. MQTT 3.1.1 cannot say it: InboundLimit
# reads a bigger PUBLISH's head and throws its payload away unread (docs/feed.md, 9).
MAX_INCOMING_PACKET: Final = 16 * 1024

# Reason codes of a loss that the last packet we sent may have caused (the broker found
# it malformed or too big, or we could not parse its answer to it). A plain network loss
# is none of these, so it never counts against a row.
MESSAGE_FAULTS: Final = frozenset({0x81, 0x82, 0x95, 0x99})

# How long one attempt waits for the broker's name to resolve. glibc cannot be told to
# give up sooner: with a router whose DNS is down it tries each name server for 5 s,
# twice, for A and AAAA, which is 30 s and more (the lookup then runs on beside us).
RESOLVE_TIMEOUT_S: Final = 10.0
# A lookup running this long is stuck for good (glibc's own worst case is about a
# minute); another one may start beside it, up to MAX_LOOKUPS threads.
HUNG_LOOKUP_S: Final = 120.0
MAX_LOOKUPS: Final = 3

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]  # socket.getaddrinfo's shape


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect; built from UplinkConfig by the uplink."""

    host: str
    port: int
    client_id: str
    mqtt_version: str = "3.1.1"  # or "5"
    keepalive_s: int = 30
    tls: TlsFiles | None = None
    credentials: Credentials | None = None
    # bounds TCP connect and the TLS handshake each (paho applies it to both): well
    # under the 30 s systemd watchdog even when both run to the limit
    connect_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False  # a retained message replayed by the broker (on subscribe)
    # the size of a payload over MAX_INCOMING_PACKET, which was thrown away unread
    # (payload is then empty); None for a message read whole
    too_large: int | None = None


@dataclass
class Callbacks:
    """What the connection reports, always from inside pump()."""

    on_connect: Callable[[bool, str], None]  # (accepted, reason)
    on_disconnect: Callable[[str], None]
    on_puback: Callable[[int, int], None]  # (mid, reason code: < 0x80 means accepted)
    on_message: Callable[[Message], None]


def load_credentials(path: Path) -> Credentials:
    """Read "username\\npassword\\n"; refuse a file that group or others can read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UplinkError(f"{path}: cannot read credentials file: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UplinkError(
            f"{path}: credentials file mode {stat.S_IMODE(mode):04o} lets group/others in; "
            "run chmod 600 on it"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UplinkError(f"{path}: cannot read credentials file: {exc}") from exc
    if len(lines) < 2 or not lines[0]:
        raise UplinkError(f"{path}: expected a username line and a password line")
    return Credentials(lines[0], lines[1])


class _ServerNameContext(ssl.SSLContext):
    """Verifies the broker's certificate against the configured broker name although paho
    connects to an address we resolved (paho hands wrap_socket its own host: that
    address). The name is also the SNI sent to the broker."""

    server_name: str

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(files: TlsFiles, server_name: str) -> ssl.SSLContext:
    """A client context that always verifies the broker's certificate and that it names
    `server_name` (the host in the config, whatever address it resolved to)."""
    try:
        # what this Python's create_default_context sets (3.13 adds VERIFY_X509_STRICT
        # and PARTIAL_CHAIN to verify_flags), on a context that keeps the name
        default = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
        ctx = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.options = default.options
        ctx.verify_flags = default.verify_flags
        ctx.server_name = server_name
        ctx.load_verify_locations(cafile=str(files.ca_file))
        if files.cert_file is not None:
            key = str(files.key_file) if files.key_file is not None else None
            ctx.load_cert_chain(str(files.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"TLS files unusable ({files}): {exc}") from exc
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Resolver:
    """The broker's host name to addresses, each wait bounded, the lookup itself not.

    getaddrinfo cannot be interrupted, so it runs on a short-lived daemon thread and the
    caller waits on its answer in slices, calling back between them (the uplink keeps
    its watchdog liveness fresh there). An answer is used once: by the attempt that
    waited for it, or, when it came after that attempt gave up, by the next one, so a
    name server slower than the bound still gets us connected. A lookup still running
    is waited for again, not started again beside itself, until it is HUNG_LOOKUP_S
    old: then another one starts beside it (a name-service module can hang for good),
    at most MAX_LOOKUPS threads at once. An address literal needs no lookup.
    """

    def __init__(
        self,
        host: str,
        port: int,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
        timeout_s: float = RESOLVE_TIMEOUT_S,
        hung_after_s: float = HUNG_LOOKUP_S,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s  # how long one connection attempt waits for an answer
        self.hung_after_s = hung_after_s
        self._getaddrinfo = getaddrinfo
        self._lookup: Future[list[str]] | None = None  # the answer not used yet
        self._started = 0.0
        self._threads = 0  # lookups running (their threads decrement it)
        self._threads_lock = threading.Lock()
        try:
            self._literal: str | None = str(ipaddress.ip_address(host))
        except ValueError:
            self._literal = None

    def addresses(self, tick: Callable[[], bool], tick_s: float = 1.0) -> list[str] | None:
        """The addresses to try, in the resolver's order. Waits at most timeout_s, calling
        tick() at least every tick_s; tick() returning False stops the wait (-> None).
        Raises UplinkError for a name that does not resolve or no answer in time."""
        if self._literal is not None:
            return [self._literal]
        lookup = self._current()
        deadline = time.monotonic() + self.timeout_s
        while tick():
            left = deadline - time.monotonic()
            if left <= 0:
                raise UplinkError(
                    f"cannot resolve {self.host}: no answer within {self.timeout_s:g} s "
                    "(is the DNS server reachable?)"
                )
            try:
                addresses = lookup.result(min(tick_s, left))
            except TimeoutError:
                continue
            except UplinkError:
                self._lookup = None  # used: the next attempt asks again
                raise
            self._lookup = None
            return addresses
        return None

    def _current(self) -> Future[list[str]]:
        """The lookup whose answer is still to be used, or a new one."""
        lookup = self._lookup
        now = time.monotonic()
        if lookup is not None:
            if lookup.done() or now - self._started < self.hung_after_s:
                return lookup
            with self._threads_lock:
                if self._threads >= MAX_LOOKUPS:
                    return lookup
            log.warning(
                "DNS lookup of %s has not returned in %.0f s; starting another beside it",
                self.host,
                now - self._started,
            )
        lookup = self._lookup = Future()
        self._started = now
        with self._threads_lock:
            self._threads += 1
        threading.Thread(
            target=self._resolve, args=(lookup,), name="uplink-dns", daemon=True
        ).start()
        return lookup

    def _resolve(self, future: Future[list[str]]) -> None:
        try:
            infos = self._getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addresses:
                raise OSError("no address")  # noqa: TRY301 - one message for every failure
            future.set_result(addresses)
        except Exception as exc:  # noqa: BLE001 - the waiter must get every failure
            future.set_exception(UplinkError(f"cannot resolve {self.host}: {exc}"))
        finally:
            with self._threads_lock:
                self._threads -= 1


class _Client(paho.Client):
    """paho's client, reading the broker's bytes through an InboundLimit (paho reads the
    socket in this one method only)."""

    inbound: InboundLimit

    def _sock_recv(self, bufsize: int) -> bytes:
        return self.inbound.recv(bufsize)

    def raw_recv(self, bufsize: int) -> bytes:
        return super()._sock_recv(bufsize)


def _decrypted(sock: Any) -> int:
    """Bytes already decrypted and waiting inside a TLS socket (0 for plain TCP)."""
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


def _protocol(version: str) -> MQTTProtocolVersion:
    if version in ("5", "5.0"):
        return MQTTProtocolVersion.MQTTv5
    if version in ("3.1.1", "311"):
        return MQTTProtocolVersion.MQTTv311
    raise UplinkError(f"unsupported mqtt_version {version!r} (use 3.1.1 or 5)")


class MqttConnection:
    """One connection attempt. Call open(), then pump() until closed."""

    def __init__(
        self,
        endpoint: Endpoint,
        callbacks: Callbacks,
        will: Will | None,
        max_inflight: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._cb = callbacks
        self._v5 = _protocol(endpoint.mqtt_version) is MQTTProtocolVersion.MQTTv5
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            protocol=_protocol(endpoint.mqtt_version),
            clean_session=None if self._v5 else True,
        )
        client.inbound = InboundLimit(client.raw_recv, MAX_INCOMING_PACKET, self._v5)
        client.max_inflight_messages_set(max_inflight)
        client.connect_timeout = endpoint.connect_timeout_s
        if tls is not None:
            client.tls_set_context(tls)
        if endpoint.credentials is not None:
            client.username_pw_set(endpoint.credentials.username, endpoint.credentials.password)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self.closed = False
        # the loss was a protocol fault (MESSAGE_FAULTS), not the network: the uplink may
        # blame the oldest row in flight for it
        self.message_fault = False

    # -- lifecycle -----------------------------------------------------------

    def open(self, address: str | None = None) -> None:
        """TCP (+TLS) connect to `address` (one the broker's name resolved to; default the
        name itself) and send CONNECT; CONNACK arrives through pump()."""
        host = self.endpoint.host
        where = f"{host}:{self.endpoint.port}"
        if address is not None and address != host:
            where = f"{host} ({address}) port {self.endpoint.port}"
        try:
            kwargs: dict[str, Any] = {"keepalive": self.endpoint.keepalive_s}
            if self._v5:
                kwargs["clean_start"] = True
                kwargs["properties"] = _connect_properties()
            rc = self._client.connect(address or host, self.endpoint.port, **kwargs)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.closed = True  # paho stored no socket; a half-made one dies with the traceback
            raise UplinkError(f"connect to {where}: {exc}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.close()
            raise UplinkError(f"connect: {paho.error_string(rc)}")

    def close(self) -> None:
        """Drop the socket without a DISCONNECT packet (the will is then published)."""
        self.closed = True
        # paho has no public "abort": drop without DISCONNECT, and close the socket pair
        # paho made for its own loop (unused here) now, not when the client is collected
        self._client._reset_sockets()

    def disconnect(self) -> None:
        """Clean MQTT DISCONNECT (no will): used on shutdown after the offline status."""
        if not self.closed:
            self._client.disconnect()
            self._flush_writes(1.0)
        self.close()

    def _flush_writes(self, timeout: float) -> None:
        sock = self._client.socket()
        if sock is None:
            return
        while self._client.want_write():
            _, writable, _ = select.select([], [sock], [], timeout)
            if not writable or self._client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # -- the pump: all network work happens here, in the caller's thread ------

    def pump(self, timeout: float, wake_fd: int | None = None) -> bool:
        """Wait up to `timeout` for network or wake-up; process it. Returns False once closed."""
        sock = self._client.socket()
        if self.closed or sock is None:
            self.closed = True
            return False
        readers: list[Any] = [sock] if wake_fd is None else [sock, wake_fd]
        writers = [sock] if self._client.want_write() else []
        try:
            wait = 0.0 if _decrypted(sock) else timeout
            readable, writable, _ = select.select(readers, writers, [], wait)
        except (OSError, ValueError):
            self._lost("socket error")
            return False
        if sock in readable or _decrypted(sock):
            self._check(self._client.loop_read())
            # TLS decrypts a whole record at once: packets after the first one read stay
            # inside the SSL object, where select() cannot see them (a load balancer in
            # front of the broker may put several in one record)
            while not self.closed and _decrypted(sock):
                self._check(self._client.loop_read())
        if not self.closed and (sock in writable or self._client.want_write()):
            self._check(self._client.loop_write())
        if not self.closed:
            self._check(self._client.loop_misc())
        return not self.closed

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not self.closed:
            self.message_fault = rc == MQTTErrorCode.MQTT_ERR_PROTOCOL
            self._lost(self._client.inbound.refused or paho.error_string(rc))

    def _lost(self, reason: str) -> None:
        if not self.closed:
            self.close()
            self._cb.on_disconnect(reason)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Queue a PUBLISH; returns its mid (the PUBACK names it). Raises UplinkError."""
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError) as exc:
            raise UplinkError(f"publish to {topic}: {exc}") from exc
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost(f"publish refused: {paho.error_string(info.rc)}")
            raise UplinkError(f"publish to {topic}: {paho.error_string(info.rc)}")
        return int(info.mid)

    def subscribe(self, topic_filter: str, qos: int) -> None:
        rc, _ = self._client.subscribe(topic_filter, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkError(f"subscribe {topic_filter}: {paho.error_string(rc)}")

    # -- paho callbacks (VERSION2), translated ----------------------------------

    # paho's VERSION2 signatures: (client, userdata, flags, reason code, properties)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._cb.on_connect(not reason.is_failure, str(reason))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not self.closed:
            self.closed = True
            self.message_fault = reason.value in MESSAGE_FAULTS
            self._cb.on_disconnect(str(reason))

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._cb.on_puback(mid, int(reason.value))

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        too_large = self._client.inbound.take_too_large()  # this message's, if it was cut
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return  # not a topic we subscribed to in any meaningful way
        self._cb.on_message(Message(topic, bytes(msg.payload), bool(msg.retain), too_large))


def _connect_properties() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = MAX_INCOMING_PACKET
    return props


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A wake-up channel for pump(): write a byte to the second to interrupt a wait."""
    return socket.socketpair()
