"""The local control socket: how the technician's CLI sees the running agent.

A Unix stream socket (default /run/alarmgw/control.sock, mode 0660, owned by
the service group) speaking JSON lines; docs/control-protocol.md is the
contract. Each client gets its own thread, so a slow read on a dead RS-485
device or a test alarm waiting for the broker never blocks another client,
and nothing here waits on the broker. This module owns the socket, its
permissions and the client threads; agent/control_protocol.py reads and answers
one client's requests; the CLI's side is agent/cli/client.py.

This module must never let a client crash the server or the agent, nor keep
more than MAX_CLIENTS threads, nor outlive close() by more than CLOSE_GRACE_S.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

from agent.control_protocol import (
    ClientSession,
    ControlTarget,
    _error,
    _peer_of,
    encode_line,
)
from agent.faults import FaultReport
from core.errors import AlarmgwError

log = logging.getLogger(__name__)

MAX_CLIENTS = 8  # the Pi has 1 GB; a technician needs two or three at most
CLOSE_GRACE_S = 1.0  # how long close() lets client threads finish before cutting them off
_IDLE_TIMEOUT_S = 300.0  # a client that says nothing for this long is dropped
ACCEPT = "control_accept"  # the fault causes of this module (the events' point)
CLIENT = "control_client"


class ControlSetupError(AlarmgwError):
    """The control socket could not be created (bad group, path held by another agent...)."""


class ControlServer:
    """Serves `target` on a Unix socket at `path` until `close()`.

    `group` (a name) owns the socket with mode 0660; None keeps the process's
    own group (under systemd, the service's group).
    """

    def __init__(
        self,
        path: Path,
        target: ControlTarget,
        group: str | None = None,
        max_clients: int = MAX_CLIENTS,
        idle_timeout_s: float = _IDLE_TIMEOUT_S,
        faults: FaultReport | None = None,
    ) -> None:
        self.path = Path(path)
        self._target = target
        self._faults = faults  # a failing accept or client handler becomes a fault event
        self._gid = _group_id(group)
        self._max_clients = max_clients
        self._idle_timeout_s = idle_timeout_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[threading.Thread, socket.socket] = {}
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    # lifecycle

    def start(self) -> None:
        self._listener = self._bind()
        self._acceptor = threading.Thread(target=self._accept_loop, name="control-accept")
        self._acceptor.start()
        log.info("control socket listening on %s", self.path)

    def close(self) -> None:
        """Stop accepting, end every client (streams get an `end`), join all threads."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with self._lock:
            clients = list(self._clients.items())
        for _, conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # wakes a recv(); a stream sees _stopping
        # a follower gets its "end" line; a client that does not read its answers (its
        # thread stuck in sendall) is cut off after CLOSE_GRACE_S, not after its timeout:
        # the agent's shutdown must fit systemd's TimeoutStopSec
        deadline = time.monotonic() + CLOSE_GRACE_S
        for thread, _ in clients:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread, conn in clients:
            if thread.is_alive():
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread, _ in clients:
            thread.join()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client_count(self) -> int:
        with self._lock:
            return sum(1 for t in self._clients if t.is_alive())

    # socket set-up

    def _bind(self) -> socket.socket:
        self._clear_stale_socket()
        # Bind under a temporary name, set owner and mode, then rename into place:
        # the socket is never reachable with looser permissions than 0660.
        temp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(temp))
            if self._gid is not None:
                os.chown(temp, -1, self._gid)
            temp.chmod(0o660)
            sock.listen(16)
            temp.rename(self.path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                temp.unlink()
            raise ControlSetupError(f"cannot create control socket {self.path}: {exc}") from exc
        return sock

    def _clear_stale_socket(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlSetupError(f"{self.path} exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # left behind by an agent that was killed
            return
        finally:
            probe.close()
        raise ControlSetupError(f"another agent is already serving {self.path}")

    # accepting

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                self._failed(ACCEPT, exc)
                self._stopping.wait(0.5)  # e.g. EMFILE: do not spin
                continue
            self._worked(ACCEPT)
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._serve_client, args=(conn,), name="control-client")
        with self._lock:
            self._clients = {t: c for t, c in self._clients.items() if t.is_alive()}
            busy = len(self._clients) >= self._max_clients
            if not busy:
                self._clients[thread] = conn
        if busy:
            self._refuse_busy(conn)
        else:
            thread.start()

    def _refuse_busy(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sendall(encode_line(_error(None, "busy", "too many control clients")))

    # one client

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            with conn:
                peer = _peer_of(conn)
                session = ClientSession(
                    conn, peer, self._target, self._stopping, self._idle_timeout_s
                )
                session.run()
        except Exception as exc:  # noqa: BLE001 - one client's trouble, not the server's
            self._failed(CLIENT, exc)
        else:
            self._worked(CLIENT)
        # The thread stays in _clients until the next admission prunes it, so that
        # close() can join every thread it ever started.

    def _failed(self, cause: str, exc: Exception) -> None:
        if self._faults is None:
            log.error("%s failed", cause, exc_info=exc)
        else:
            self._faults.failed(cause, exc)

    def _worked(self, cause: str) -> None:
        if self._faults is not None:
            self._faults.worked(cause)


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSetupError(f"control socket group {group!r} does not exist") from None
