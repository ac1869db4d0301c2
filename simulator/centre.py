"""A city fire remote-monitoring centre stand-in: GB/T 26875.3 over TCP (TLS optional).

It accepts UITDs (the gateway), decodes and logs every packet both ways (one readable line
each on `echo`, and a JSON line each in `log` and `records`), confirms what they send, and on
command denies, drops or delays its confirms, or closes the connection instead; it sends duty
checks (91), clock syncs (90), reads (61-68, 81-88) and initialise (89). It also counts the
information objects it received more than once (at-least-once delivery made visible).

Driven in-process (tests) or over its control socket: JSON lines, one request and one reply
each, like the simulator's (`alarmgw-sim centre ...` is the client):
    {"do": "mode", "mode": "confirm|deny|drop|delay|close", "count": N, "delay": S}
    {"do": "duty-check", "minutes": 10}   {"do": "clock-sync", "time": "2026-01-01 12:00:00"}
    {"do": "initialise"}   {"do": "read", "typeflag": 62, "objects": [[1, 1, 10, 2]]}
    {"do": "disconnect"}   {"do": "state"}
`count` limits a mode to the next N data packets; then the centre confirms again.

It must never let a bad packet or a bad control request take it down, and leaves no thread
or socket behind after close().
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.gb26875.adu import (
    OBJECT_TYPES,
    Adu,
    AduError,
    ComponentAddress,
    DutyCheck,
    InitialiseUitd,
    SyncClock,
    decode_adu,
)
from agent.gb26875.codec import (
    BEIJING_UTC_OFFSET_S,
    BadFrame,
    Command,
    Frame,
    FrameStream,
    GbTime,
    command_name,
    encode_frame,
)
from agent.gb26875.describe import describe_frame, plain_adu
from agent.gb26875.link import READ_TYPEFLAGS
from simulator.listener import SocketServer

MODES = ("confirm", "deny", "drop", "delay", "close")
DEFAULT_ADDRESS = 1


class CentreError(ValueError):
    """A control request the centre cannot carry out (unknown mode, bad read...)."""


@dataclass
class _Peer:
    conn: socket.socket
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    delayed: list[tuple[float, Frame]] = field(default_factory=list)
    closing: bool = False
    uitd: int = 0  # its address, from the frames it sends


class Centre:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        address: int = DEFAULT_ADDRESS,
        log: Path | None = None,
        echo: TextIO | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.address = host, port, address
        self.tls = tls
        self._log_path, self._echo = log, echo
        self._log: TextIO | None = None
        self._lock = threading.Condition()
        self._peers: list[_Peer] = []
        self._serial = 0
        self._mode, self._delay_s = "confirm", 0.0
        self._mode_left: int | None = None
        self._seen: set[bytes] = set()
        self.records: list[dict[str, Any]] = []
        self.counts = {"in": 0, "out": 0, "bad": 0, "duplicates": 0, "connections": 0}
        self._server: SocketServer | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Centre:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(4)
        self.port = sock.getsockname()[1]
        if self._log_path is not None:
            self._log = self._log_path.open("a", encoding="utf-8")
        self._server = SocketServer(sock, self._serve, "centre")
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Centre:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commands ---------------------------------------------------------------------------------

    def set_mode(self, mode: str, count: int | None = None, delay_s: float = 0.0) -> None:
        if mode not in MODES:
            raise CentreError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if count is not None and count < 1:
            raise CentreError("count must be at least 1")
        with self._lock:
            self._mode, self._mode_left, self._delay_s = mode, count, float(delay_s)

    def send(self, command: int, adu: Adu) -> list[int]:
        """Send a request to every connected UITD; the serials used."""
        data = adu.encode()
        serials = []
        for peer in self._connected():
            with self._lock:
                self._serial = (self._serial + 1) & 0xFFFF
                serial = self._serial
            self._transmit(peer, self._frame(serial, command, data, to=peer.uitd))
            serials.append(serial)
        return serials

    def duty_check(self, minutes: int = 10) -> list[int]:
        return self.send(Command.CONTROL, Adu.of(DutyCheck(minutes)))

    def clock_sync(self, when: GbTime | None = None) -> list[int]:
        return self.send(Command.CONTROL, Adu.of(SyncClock(when or self._now())))

    def initialise(self) -> list[int]:
        return self.send(Command.CONTROL, Adu.of(InitialiseUitd()))

    def read(self, typeflag: int, objects: list[list[int]] | None = None) -> list[int]:
        return self.send(Command.REQUEST, read_adu(typeflag, objects or [], self._now()))

    def disconnect(self) -> int:
        peers = self._connected()
        for peer in peers:
            _shut(peer)
        return len(peers)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "port": self.port,
                "address": self.address,
                "mode": self._mode,
                "mode_left": self._mode_left,
                "delay_s": self._delay_s,
                "peers": [p.name for p in self._peers],
                "counts": dict(self.counts),
            }

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
    ) -> bool:
        """True once predicate(records) holds (tests await records instead of sleeping)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self.records), timeout)

    def answer(self, line: str) -> dict[str, Any]:
        """One control request (a JSON line) -> its reply; never raises."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise CentreError("a request is a JSON object")
            return {"ok": True} | self._do(request)
        except (ValueError, TypeError, LookupError) as exc:  # CodecError is a ValueError
            return {"ok": False, "error": str(exc)}

    def _do(self, request: dict[str, Any]) -> dict[str, Any]:
        what = request.get("do")
        if what == "mode":
            self.set_mode(str(request.get("mode")), request.get("count"), request.get("delay", 0.0))
            return {"mode": self.state()["mode"]}
        if what == "state":
            return {"state": self.state()}
        if what == "disconnect":
            return {"closed": self.disconnect()}
        serials: dict[str, Callable[[], list[int]]] = {
            "duty-check": lambda: self.duty_check(int(request.get("minutes", 10))),
            "clock-sync": lambda: self.clock_sync(_label(request.get("time"))),
            "initialise": self.initialise,
            "read": lambda: self.read(int(request["typeflag"]), request.get("objects")),
        }
        if what not in serials:
            raise CentreError(f"unknown request {what!r}")
        sent = serials[what]()
        if not sent:
            raise CentreError("no UITD is connected")
        return {"serials": sent}

    # --- connections ------------------------------------------------------------------------------

    def _connected(self) -> list[_Peer]:
        with self._lock:
            return [p for p in self._peers if not p.closing]

    def _now(self) -> GbTime:
        return GbTime.from_epoch(time.time())

    def _frame(self, serial: int, command: int, adu: bytes = b"", to: int = 0) -> Frame:
        return Frame(serial, command, self.address, to, self._now(), adu, (1, 0))

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            name = "{}:{}".format(*conn.getpeername()[:2])
            if self.tls is None:
                self._session(_Peer(conn, name))
                return
            conn.settimeout(5.0)  # for the handshake
            with self.tls.wrap_socket(conn, server_side=True) as wrapped:
                self._session(_Peer(wrapped, name))

    def _session(self, peer: _Peer) -> None:
        with self._lock:
            self._peers.append(peer)
            self.counts["connections"] += 1
        self._line(f"{peer.name} connected")
        try:
            self._read_loop(peer)
        finally:
            with self._lock:
                self._peers.remove(peer)
                self._lock.notify_all()
            self._line(f"{peer.name} disconnected")

    def _read_loop(self, peer: _Peer) -> None:
        stream = FrameStream()
        while not peer.closing and self._server is not None and not self._server.stopping:
            self._flush_delayed(peer)
            due = min((d for d, _ in peer.delayed), default=time.monotonic() + 0.2)
            peer.conn.settimeout(max(0.001, min(0.2, due - time.monotonic())))
            try:
                data = peer.conn.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            for item in stream.feed(data):
                self._on_item(peer, item)

    def _flush_delayed(self, peer: _Peer) -> None:
        now = time.monotonic()
        due = [f for d, f in peer.delayed if d <= now]
        peer.delayed = [(d, f) for d, f in peer.delayed if d > now]
        for frame in due:
            self._transmit(peer, frame, note="delayed")

    def _transmit(self, peer: _Peer, frame: Frame, note: str = "") -> None:
        with contextlib.suppress(OSError), peer.lock:
            peer.conn.sendall(encode_frame(frame))
        self._record(peer, "out", frame, note)

    def _on_item(self, peer: _Peer, item: Frame | BadFrame) -> None:
        if isinstance(item, BadFrame):
            with self._lock:
                self.counts["bad"] += 1
            self._line(f"{peer.name} <- #{item.serial} bad frame ({item.reason}): denied")
            self._write({"dir": "in", "peer": peer.name, "serial": item.serial, "bad": item.reason})
            self._transmit(peer, self._frame(item.serial, Command.DENY, to=item.source))
            return
        peer.uitd = item.source
        action = self._action(item)
        self._record(peer, "in", item, action)
        reply = {"confirm": Command.CONFIRM, "deny": Command.DENY}
        mode = action.split(" ")[0]
        if mode in reply:
            self._transmit(peer, self._frame(item.serial, reply[mode], to=item.source))
        elif mode == "delay":
            confirm = self._frame(item.serial, Command.CONFIRM, to=item.source)
            peer.delayed.append((time.monotonic() + self._delay_s, confirm))
        elif mode == "close":
            _shut(peer)

    def _action(self, frame: Frame) -> str:
        """What the centre does with a frame from a UITD: only data (command 2) is answered;
        confirms, denies and responses to the centre's own requests are just logged."""
        if frame.command != Command.SEND_DATA:
            return ""
        with self._lock:
            self.counts["duplicates"] += self._count_duplicates(frame.adu)
            mode = self._mode
            if self._mode_left is not None:
                self._mode_left -= 1
                if self._mode_left == 0:
                    self._mode, self._mode_left = "confirm", None
        return f"delay {self._delay_s:g}s" if mode == "delay" else mode

    def _count_duplicates(self, adu: bytes) -> int:
        try:
            decoded = decode_adu(adu)
        except AduError:
            return 0
        if not isinstance(decoded, Adu):
            return 0
        fresh = 0
        for obj in decoded.objects:
            key = bytes((decoded.typeflag,)) + obj.encode()
            fresh += key not in self._seen
            self._seen.add(key)
        return len(decoded.objects) - fresh

    # --- logging ----------------------------------------------------------------------------------

    def _record(self, peer: _Peer, direction: str, frame: Frame, action: str = "") -> None:
        record = {
            "dir": direction,
            "peer": peer.name,
            "serial": frame.serial,
            "command": frame.command,
            "command_name": command_name(frame.command),
            "source": frame.source,
            "destination": frame.destination,
            "version": list(frame.version),
            "label": str(frame.time),
        } | plain_adu(frame.adu)
        if action:
            record["action"] = action
        arrow = "<-" if direction == "in" else "->"
        self._line(
            f"{peer.name} {arrow} {describe_frame(frame)}{f'  [{action}]' if action else ''}"
        )
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        record = {"t": round(time.time(), 3)} | record
        with self._lock:
            self.counts["in" if record.get("dir") == "in" else "out"] += 1
            self.records.append(record)
            if self._log is not None:
                self._log.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._log.flush()
            self._lock.notify_all()

    def _line(self, text: str) -> None:
        if self._echo is not None:
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            with contextlib.suppress(OSError, ValueError):
                print(f"{stamp} {text}", file=self._echo, flush=True)


def _shut(peer: _Peer) -> None:
    peer.closing = True
    with contextlib.suppress(OSError):
        peer.conn.shutdown(socket.SHUT_RDWR)


def _label(text: object) -> GbTime | None:
    """'YYYY-MM-DD HH:MM:SS' Beijing time -> a label; None (= now) when not given."""
    if text is None:
        return None
    moment = datetime.datetime.fromisoformat(str(text))
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(
            seconds=BEIJING_UTC_OFFSET_S
        )
    return GbTime(
        moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year - 2000
    )


def read_adu(typeflag: int, objects: list[list[int]], now: GbTime) -> Adu:
    """The ADU of a read. `objects` are [system type, system address] (61, 65, 66, 68),
    [.., zone, position] (62, 63, 67), [.., records] (64), [records] (84); none for 81-88."""
    if typeflag not in READ_TYPEFLAGS:
        raise CentreError(f"typeflag {typeflag} is not a read (61-68, 81, 84, 85, 86, 88)")
    kind = OBJECT_TYPES[typeflag]
    if typeflag in (62, 63, 67):
        items = [kind(a, b, ComponentAddress(z, p)) for a, b, z, p in objects]  # type: ignore[call-arg]
    elif typeflag == 64:
        items = [kind(a, b, n, now) for a, b, n in objects]  # type: ignore[call-arg]
    elif typeflag == 84:
        items = [kind(n, now) for (n,) in objects or [[10]]]  # type: ignore[call-arg]
    elif typeflag >= 81:
        items = [kind()]
    else:
        items = [kind(*pair) for pair in objects]
    if not items:
        raise CentreError(f"a read of typeflag {typeflag} names at least one system")
    return Adu(typeflag, tuple(items))


# --- control socket ---------------------------------------------------------------------------


class CentreControl:
    """The centre's control socket: JSON lines in, Centre.answer() out."""

    def __init__(self, centre: Centre, path: Path) -> None:
        self.centre, self.path = centre, path
        self._server: SocketServer | None = None

    def start(self) -> CentreControl:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(4)
        self._server = SocketServer(sock, self._serve, "centre-control")
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                reply = json.dumps(self.centre.answer(line), ensure_ascii=False) + "\n"
                conn.sendall(reply.encode())


def request(path: Path, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to a running centre; OSError if none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall((json.dumps(body) + "\n").encode())
        with sock.makefile("r", encoding="utf-8") as replies:
            line = replies.readline()
    if not line:
        raise ConnectionError(f"the centre on {path} closed the connection")
    reply: dict[str, Any] = json.loads(line)
    return reply
