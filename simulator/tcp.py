"""Modbus TCP devices on loopback ports (MBAP framing), with the same faults as RTU.

One listening socket per simulated device; one thread per accepted client,
so a late answer to one client does not hold up another. It must never bind
anything but a loopback address: the simulator is not a network service.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulator.faults import FaultKind
from simulator.listener import SocketServer
from simulator.rtu import exception_pdu, execute, mbap_frame, parse_mbap
from simulator.wire import ServedUnit

LOOPBACK = "127.0.0.1"


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _no_delay(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out at once


@dataclass
class TcpDeviceServer:
    """Serve one device (`bank`) for `unit_id` on 127.0.0.1:`port` (0 picks a free port);
    `behind` adds units served on the same endpoint, as a Modbus TCP gateway serves the
    RS-485 devices behind it (a silenced one stays silent)."""

    device_id: str
    bank: ServedUnit
    unit_id: int = 1
    port: int = 0
    requests: int = 0
    behind: Mapping[int, ServedUnit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()  # also cuts a DELAY fault short on close
        self._server: SocketServer | None = None

    def start(self) -> TcpDeviceServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        sock.listen(8)
        self.port = sock.getsockname()[1]
        self._server = SocketServer(
            sock, self._serve_client, f"sim-tcp-{self.device_id}", on_accept=_no_delay
        )
        return self

    def __enter__(self) -> TcpDeviceServer:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _serve_client(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                header = _recv_exact(conn, 7)
                if header is None:
                    return
                tid, _pid, length, unit = parse_mbap(header)
                if not 2 <= length <= 254:
                    return  # a framing error on TCP: drop the connection, as devices do
                pdu = _recv_exact(conn, length - 1)
                if pdu is None:
                    return
                self.requests += 1
                answer = self._answer(tid, unit, pdu)
                if answer is not None:
                    conn.sendall(answer)

    def _answer(self, tid: int, unit: int, pdu: bytes) -> bytes | None:
        bank = self.bank if unit in (self.unit_id, 0, 255) else self.behind.get(unit, self.bank)
        if bank.silenced:
            return None
        hits = bank.faults.rolled()
        if FaultKind.DELAY in hits and self._stop.wait(hits[FaultKind.DELAY].delay_s):
            return None
        if FaultKind.NO_ANSWER in hits:
            return None
        if bank is self.bank and unit not in (self.unit_id, 0, 255):
            # A gateway-less TCP device answers "gateway target failed to respond".
            return mbap_frame(tid, unit, exception_pdu(pdu[0], 11))
        response = execute(bank, pdu)
        if FaultKind.EXCEPTION in hits:
            response = exception_pdu(pdu[0], hits[FaultKind.EXCEPTION].code)
        if FaultKind.WRONG_UNIT in hits:
            unit = unit % 247 + 1
        frame = mbap_frame(tid, unit, response)
        if FaultKind.GARBAGE in hits:
            # Garbage with a plausible MBAP length so a client reads it as one bad answer.
            frame = frame[:6] + bank.faults.garbage(len(frame) - 6)
        if FaultKind.CRC in hits:
            # TCP has no CRC: damage the PDU itself (byte count no longer matches).
            frame = frame[:8] + bytes([frame[8] ^ 0xFF]) + frame[9:] if len(frame) > 8 else frame
        return frame
