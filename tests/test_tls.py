"""TLS against a real mosquitto with a test CA made here by the openssl CLI: the uplink
connects and verifies; it refuses a server certificate from another CA and a wrong host."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import EventBuffer
from agent.mqtt import Resolver
from agent.uplink import Uplink
from simulator.broker import BrokerTls, Mosquitto
from tests.uplink_helpers import IDENT, Settings, alarm, running, wait_until

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
