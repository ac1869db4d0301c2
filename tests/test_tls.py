"""TLS against a real mosquitto with a test CA made here by the openssl CLI: the uplink
connects and verifies; it refuses a server certificate from another CA and a wrong host."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import EventBuffer
from agent.mqtt import Callbacks, Endpoint, MqttConnection, Resolver, TlsFiles, tls_context
from agent.uplink import Uplink
from simulator.broker import BrokerTls, Mosquitto
from tests.uplink_helpers import IDENT, Collector, Settings, alarm, running, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return cert, key


def issue(d: Path, ca: tuple[Path, Path], name: str, host: str | None) -> tuple[Path, Path]:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{host}\n" if host else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        str(cert),
        "-extfile",
        str(ext),
    )
    key.chmod(0o644)  # mosquitto drops to its own user and must read its key
    return cert, key


@pytest.fixture(scope="module")
def pki() -> Iterator[dict[str, Path]]:
    # outside pytest's 0700 tmp tree: mosquitto drops to its own user and must read these
    with tempfile.TemporaryDirectory(prefix="alarmgw-pki-") as name:
        d = Path(name)
        d.chmod(0o755)
        yield _make_pki(d)


def _make_pki(d: Path) -> dict[str, Path]:
    ca = make_ca(d, "test-ca")
    other = make_ca(d, "other-ca")
    server = issue(d, ca, "server", "localhost")
    rogue = issue(d, other, "rogue", "localhost")
    client = issue(d, ca, "gw1", None)
    return {
        "ca": ca[0],
        "other_ca": other[0],
        "server": server[0],
        "server_key": server[1],
        "rogue": rogue[0],
        "rogue_key": rogue[1],
        "client": client[0],
        "client_key": client[1],
    }


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Mosquitto]:
    tls = BrokerTls(pki["ca"], pki["server"], pki["server_key"], require_certificate=True)
    with Mosquitto(tmp_path / "broker", tls=tls) as b:
        yield b


def _uplink(
    tmp_path: Path,
    b: Mosquitto,
    host: str,
    ca: Path,
    pki: dict[str, Path],
    resolver: Resolver | None = None,
) -> tuple[EventBuffer, Uplink]:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 100)
    settings = Settings(
        host,
        b.port,
        ca_file=ca,
        cert_file=pki["client"],
        key_file=pki["client_key"],
        reconnect_min_s=0.1,
        reconnect_max_s=0.2,
    )
    uplink = Uplink(settings, IDENT, buffer, version="t", config_digest="d", resolver=resolver)
    return buffer, uplink


@pytest.mark.slow
def test_tls_connects_verifies_and_delivers(
    tmp_path: Path, tls_broker: Mosquitto, pki: dict[str, Path]
) -> None:
    """The uplink resolves "localhost" itself and connects to the address; the certificate
    (it names localhost only, not 127.0.0.1) must still be checked against the name."""
    asked: list[str] = []

    def recording(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        return socket.getaddrinfo(host, port, **kw)

    resolver = Resolver("localhost", tls_broker.port, recording)
    buffer, uplink = _uplink(tmp_path, tls_broker, "localhost", pki["ca"], pki, resolver)
    with running(buffer, uplink):
        buffer.submit(alarm()).result(5)
        assert wait_until(lambda: uplink.counters.acked == 1, timeout=15)
        assert uplink.connected
    assert asked == ["localhost"]


def test_tls_checks_the_configured_name_not_what_it_resolved_to(
    tmp_path: Path, tls_broker: Mosquitto, pki: dict[str, Path]
) -> None:
    """A name that resolves to the broker's address but that its certificate does not
    name (a hijacked DNS answer, a wrong host in the config) is refused."""

    def to_localhost(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        return socket.getaddrinfo("127.0.0.1", port, **kw)

    resolver = Resolver("broker.elsewhere.test", tls_broker.port, to_localhost)
    buffer, uplink = _uplink(
        tmp_path, tls_broker, "broker.elsewhere.test", pki["ca"], pki, resolver
    )
    with running(buffer, uplink):
        buffer.submit(alarm()).result(5)
        assert wait_until(lambda: uplink.counters.failed_attempts >= 2, timeout=15)
        assert uplink.counters.connects == 0
        assert "broker.elsewhere.test" in (uplink.last_error or "")
        assert "certificate" in (uplink.last_error or "").lower()


@pytest.mark.parametrize("case", ["other-ca", "wrong-host"])
def test_tls_refuses_a_foreign_certificate_or_a_wrong_host_name(
    tmp_path: Path, tls_broker: Mosquitto, pki: dict[str, Path], case: str
) -> None:
    ca = pki["other_ca"] if case == "other-ca" else pki["ca"]
    host = "localhost" if case == "other-ca" else "127.0.0.1"  # the cert names localhost only
    buffer, uplink = _uplink(tmp_path, tls_broker, host, ca, pki)
    with running(buffer, uplink):
        buffer.submit(alarm()).result(5)
        assert wait_until(lambda: uplink.counters.failed_attempts >= 3, timeout=15)
        assert uplink.counters.connects == 0
        assert uplink.counters.published == 0
        assert buffer.stats()["event_depth"] == 1  # kept for a broker we can trust


def test_the_context_verifies_as_strictly_as_this_pythons_default(pki: dict[str, Path]) -> None:
    """The context is our own class (it keeps the configured name for paho); it must not
    lose what ssl.create_default_context sets on this Python (3.13 adds strict X.509
    checks to verify_flags), nor host-name checking."""
    import ssl

    from agent.mqtt import TlsFiles, tls_context

    ours = tls_context(TlsFiles(pki["ca"]), "localhost")
    default = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    assert ours.verify_flags == default.verify_flags
    assert ours.options == default.options
    assert ours.verify_mode == ssl.CERT_REQUIRED and ours.check_hostname
    assert ours.minimum_version >= ssl.TLSVersion.TLSv1_2


# --- a TLS terminator in front of the broker re-records the stream -------------------------


class RecordingProxy:
    """A TLS terminator in front of a plain broker, as a platform's load balancer is: it
    re-cuts the broker's byte stream into TLS records of its own. Broker bytes are held
    until release(), then go out in one record: two MQTT packets in one record, which
    mosquitto's own TLS never sends (one record per packet) but a balancer may."""

    def __init__(self, ctx: ssl.SSLContext, broker: tuple[str, int]) -> None:
        self._ctx = ctx
        self._broker = broker
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.hold = False
        self.held = bytearray()
        self._lock = threading.Lock()
        self._client: ssl.SSLSocket | None = None
        self._upstream: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            raw, _ = self._listener.accept()
            self._client = self._ctx.wrap_socket(raw, server_side=True)
            self._upstream = socket.create_connection(self._broker)
            self._start(self._to_broker)
            self._start(self._to_client)

    def _to_broker(self) -> None:
        assert self._client is not None and self._upstream is not None
        with contextlib.suppress(OSError):
            while data := self._client.recv(65536):
                self._upstream.sendall(data)

    def _to_client(self) -> None:
        assert self._client is not None and self._upstream is not None
        with contextlib.suppress(OSError):
            while data := self._upstream.recv(65536):
                with self._lock:
                    if self.hold:
                        self.held += data
                        continue
                self._client.sendall(data)

    def release(self) -> None:
        """Send what was held as one TLS record, and stop holding."""
        assert self._client is not None
        with self._lock:
            self.hold = False
            data, self.held = bytes(self.held), bytearray()
            self._client.sendall(data)  # under 16 KiB: one record

    def close(self) -> None:
        for sock in (self._listener, self._client, self._upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(5)


@pytest.mark.world
def test_a_packet_left_inside_the_tls_layer_is_read_without_another_socket_event(
    pki: dict[str, Path], shared_broker_url: tuple[str, int], unique_topic: str
) -> None:
    """Two commands reach the gateway in one TLS record: after the socket woke pump()
    once, both are handled, not the second only when some later byte arrives."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    proxy = RecordingProxy(server_ctx, shared_broker_url)
    got: list[bytes] = []
    connected: list[bool] = []
    callbacks = Callbacks(
        on_connect=lambda ok, _reason: connected.append(ok),
        on_disconnect=lambda _reason: None,
        on_puback=lambda _mid, _rc: None,
        on_message=lambda message: got.append(message.payload),
    )
    endpoint = Endpoint("localhost", proxy.port, f"{unique_topic}-gw", tls=TlsFiles(pki["ca"]))
    conn = MqttConnection(endpoint, callbacks, None, 10, tls_context(endpoint.tls, "localhost"))  # type: ignore[arg-type]
    feed = Collector(*shared_broker_url, f"{unique_topic}/nothing")  # the platform's side
    try:
        conn.open()
        assert pump_until(conn, lambda: bool(connected))
        conn.subscribe(f"{unique_topic}/cmd/#", 1)
        # a subscription is live once a message on it comes back (the SUBACK is not
        # awaited: a probe sent before the broker took the SUBSCRIBE is not delivered)
        for _ in range(50):
            feed.publish(f"{unique_topic}/cmd/probe", b"probe")
            if pump_until(conn, lambda: bool(got), tries=10):
                break
        assert got and set(got) == {b"probe"}
        got.clear()
        proxy.hold = True
        for name in ("ping", "status"):
            feed.publish(f"{unique_topic}/cmd/{name}", name.encode())
        assert wait_until(lambda: proxy.held.count(b"cmd/") == 2)
        proxy.release()
        while b"ping" not in got:  # pumped until the record arrives and is decrypted
            assert conn.pump(5)
        # the same pump handled the packet behind it in that record (a late duplicate
        # probe may come too: not the point here)
        assert [g for g in got if g != b"probe"] == [b"ping", b"status"]
    finally:
        feed.close()
        conn.close()
        proxy.close()


def pump_until(conn: MqttConnection, done: Callable[[], bool], tries: int = 100) -> bool:
    for _ in range(tries):
        if done():
            return True
        conn.pump(0.1)
    return done()
