"""A private mosquitto broker on a free loopback port, for tests, demos and benchmarks.

It can be stopped, killed and restarted on the same port (to play broker
outages), optionally with TLS. It never touches the machine's own broker.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class BrokerError(RuntimeError):
    """mosquitto is missing or did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerError("mosquitto not found: install it (apt-get install -y mosquitto)")


@dataclass(frozen=True)
class BrokerTls:
    """Server-side TLS files; clients must present a cert when require_certificate is set."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


class Mosquitto:
    """One private mosquitto process. Use as a context manager or call start()/close()."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tls: BrokerTls | None = None,
        max_queued: int = 100000,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.max_queued = max_queued
        self.conf_path = self.workdir / f"mosquitto-{self.port}.conf"
        self.log_path = self.workdir / f"mosquitto-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    # -- lifecycle ---------------------------------------------------------

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            f"max_queued_messages {self.max_queued}",
            "max_inflight_messages 0",
        ]
        if self.tls:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        self._write_conf()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_path)],
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for its owner must not stop it first
        )
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                log = self.log_path.read_text(errors="replace")
                self._reap()
                raise BrokerError(f"mosquitto exited at start:\n{log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)  # polling a listening socket: there is no event to await
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout}s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Graceful stop (SIGTERM): clients see a clean disconnect."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Crash (SIGKILL): in-flight messages are lost broker-side."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """Stop answering (SIGSTOP) with every socket left open: a black-holed link, as
        when a 4G modem stalls. No FIN, no RST: only keepalive can notice. kill() and
        close() still work on a frozen broker."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Answer again (SIGCONT) after freeze()."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._reap()

    def _reap(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"
