"""The UITD side of the link to the monitoring centre, as a sans-IO state machine.

No sockets, no threads, no clock of its own: the owner (one thread, the uplink) feeds it and
drains it, with a clock it injects (tests use a fake one):

    link.connected()                       # the TCP connection is up
    link.submit(Packet(adu, priority=True, tag=rows))
    sock.sendall(link.data_to_send())
    ... wait for bytes or until link.next_deadline() ...
    link.receive(chunk) / link.handle_timers()
    for event in link.events(): ...        # Confirmed, Failed, LinkFault, RequestReceived...
    sock.sendall(link.data_to_send())

What it does, per GB/T 26875.3 (choices and reasons in docs/gb26875.md, "Link behaviour"):
- send/confirm for every packet: a new serial per new packet (1, 2, ... wrapping at 65535),
  the same serial on a resend; only a confirm or deny carrying an in-flight serial counts;
- resend after `confirm_timeout_s` (at most 10 s) or at once on a deny, `resends` times; then
  Failed(packet): after timeouts that is also a LinkFault, and the link stops sending until
  the owner reconnects and calls connected() again. Failed hands the packet back: the link
  never drops or retries it on its own after that, the owner decides;
- a resend goes on a fresh connection when nothing at all came back on this one since the
  packet was sent (a 4G NAT that forgot the flow swallows bytes without a reset): Stale, the
  link goes down, and every packet in flight keeps its count of sends for the next
  connection, so a fire alarm still reaches a live centre within one timeout plus a
  reconnect, and "timeout, resends, then failure" still counts every send; the resend keeps
  its serial there. Once per silence: until bytes come back, later resends stay on the
  fresh connection (a centre slower than the timeout still gets its late confirms counted),
  and while the centre's last answer came after the timeout (a slow centre, not a dead
  path) the next silence gets one resend on the connection before a fresh one;
- a dead link is a LinkFault at the latest heartbeat_s + (resends + 1) x confirm_timeout_s
  after the centre last answered, the fresh connections' time to connect included;
- priority packets (fire and manual alarms) go before every other queued packet, and are sent
  at once even while an ordinary packet waits for its confirm; ordinary packets go one at a
  time (stop-and-wait);
- a heartbeat when no packet of ours has been confirmed for `heartbeat_s`: the UITD's own
  running state (typeflag 21, from `uitd_status`) by default, or an empty send-data packet.
  A dead link is therefore detected within heartbeat_s + (resends + 1) x confirm_timeout_s,
  which the settings keep at or under 100 s;
- the centre's requests (reads 61-68/81-88 under command 4; initialise 89, clock sync 90 and
  duty check 91 under command 1, or 4 as one codec sends them; user-defined typeflags) become
  RequestReceived events that the owner answers with respond(), confirm() or deny(). Frames
  that fail a check, unknown commands and ADUs that do not decode are denied here. A request
  repeated within 60 s (same serial, command and ADU) gets the same answer again and is not
  raised twice: an initialise whose confirm was lost does not run twice. The memory is per
  connection: a restarted centre numbers its requests from 1 again.

It must never block, sleep, read the system clock or raise on what the centre sends.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent.gb26875.adu import (
    USER_DEFINED,
    Adu,
    AduError,
    RawAdu,
    UitdState,
    decode_adu,
)
from agent.gb26875.codec import (
    BEIJING_UTC_OFFSET_S,
    MAX_ADU,
    BadFrame,
    CodecError,
    Command,
    Frame,
    FrameStream,
    GbTime,
    command_name,
    encode_frame,
)
from agent.gb26875.tables import UitdStatus
from core.errors import AlarmgwError

MAX_CONFIRM_TIMEOUT_S = 10.0  # GB/T 26875.3 6.5: "超时时间不宜大于 10 s"
MAX_FAULT_DETECTION_S = 100.0  # GB 26875.1: a link fault is signalled within 100 s
REPEAT_WINDOW_S = 60.0

READ_TYPEFLAGS = frozenset((*range(61, 69), 81, 84, 85, 86, 88))
CONTROL_TYPEFLAGS = frozenset((89, 90, 91))


class LinkClock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...  # Unix time, for the time labels


class _RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


REAL_CLOCK: LinkClock = _RealClock()


class LinkSettingsError(AlarmgwError, ValueError):
    """Link settings that break the standard's limits."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    uitd_address: int
    centre_address: int
    version_minor: int = 0  # the user-defined byte of the version; the major is always 1
    confirm_timeout_s: float = 5.0  # one lost packet still arrives within the 10 s promise
    resends: int = 3
    heartbeat_s: float = 30.0  # the description's 20-30 s
    heartbeat: Literal["state", "empty"] = "state"
    utc_offset_s: int = BEIJING_UTC_OFFSET_S

    def __post_init__(self) -> None:
        if not 0 < self.confirm_timeout_s <= MAX_CONFIRM_TIMEOUT_S:
            raise LinkSettingsError(
                f"confirm timeout {self.confirm_timeout_s} s is outside (0, 10] s"
            )
        if not 0 <= self.resends <= 10:
            raise LinkSettingsError(f"resends {self.resends} is outside 0..10")
        if self.heartbeat_s <= 0:
            raise LinkSettingsError(f"heartbeat period {self.heartbeat_s} s is not positive")
        if self.fault_detection_s > MAX_FAULT_DETECTION_S:
            raise LinkSettingsError(
                f"heartbeat {self.heartbeat_s} s + {self.resends + 1} x {self.confirm_timeout_s} s"
                f" = {self.fault_detection_s} s: a link fault must be found within 100 s"
            )
        if self.heartbeat not in ("state", "empty"):
            raise LinkSettingsError(f"heartbeat {self.heartbeat!r} is not 'state' or 'empty'")

    @property
    def fault_detection_s(self) -> float:
        """The longest a dead link goes unnoticed."""
        return self.heartbeat_s + (self.resends + 1) * self.confirm_timeout_s


@dataclass(eq=False)
class Packet:
    """One ADU to send and have confirmed; `tag` is the owner's (buffer rows, say)."""

    adu: bytes
    priority: bool = False
    tag: Any = None
    command: int = Command.SEND_DATA

    def __post_init__(self) -> None:
        if len(self.adu) > MAX_ADU:
            raise CodecError(f"ADU of {len(self.adu)} bytes is over the limit of {MAX_ADU}")


@dataclass(frozen=True, slots=True)
class Request:
    """A request from the centre, for the owner to answer with respond/confirm/deny."""

    frame: Frame
    adu: Adu | RawAdu

    @property
    def serial(self) -> int:
        return self.frame.serial

    @property
    def command(self) -> int:
        return self.frame.command

    @property
    def typeflag(self) -> int | None:
        return self.adu.typeflag


@dataclass(frozen=True, slots=True)
class Confirmed:
    packet: Packet


@dataclass(frozen=True, slots=True)
class Failed:
    """Not confirmed after every resend: the packet is the owner's again."""

    packet: Packet
    reason: Literal["timeout", "denied"]


@dataclass(frozen=True, slots=True)
class LinkFault:
    """The centre stopped confirming: reconnect (with backoff), then call connected()."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stale:
    """A confirm is overdue and nothing came back on this connection since the packet was
    sent: reconnect at once (no backoff), then call connected(); the resend goes there."""

    reason: str


@dataclass(frozen=True, slots=True)
class LinkRestored:
    """The first confirm after a link fault."""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a log line and a counter, nothing to act on: a frame that failed a
    check (denied), an unmatched confirm, a rejected or repeated request..."""

    kind: str
    text: str


LinkEvent = Confirmed | Failed | LinkFault | Stale | LinkRestored | RequestReceived | Notice


@dataclass(eq=False)
class _InFlight:
    packet: Packet
    serial: int
    sends: int = 0
    deadline: float = 0.0
    sent_at: float = 0.0
    first_at: float = -1.0  # its first send on this connection


@dataclass
class _Seen:
    """A request recently received, and the answer given to it (command, ADU) if any."""

    at: float
    answer: tuple[int, bytes] | None = None


@dataclass
class LinkCounters:
    sent: int = 0
    resent: int = 0
    confirmed: int = 0
    denied: int = 0
    failed: int = 0
    faults: int = 0
    stale: int = 0  # fresh connections for a resend: nothing came back on the old one
    bad_frames: int = 0
    requests: int = 0
    answers: int = 0  # confirms and denies of an in-flight serial, heartbeats included


class Link:
    """See the module docstring. Not thread-safe: one owner calls everything."""

    def __init__(self, settings: LinkSettings, clock: LinkClock = REAL_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.uitd_status = int(UitdStatus.NORMAL)  # what the heartbeat reports
        self.counters = LinkCounters()
        self._up = False
        self._faulted = False
        self._serial = 0
        self._priority: deque[Packet] = deque()
        self._ordinary: deque[Packet] = deque()
        self._in_flight: dict[int, _InFlight] = {}
        self._heartbeat: Packet | None = None
        self._last_confirmed = 0.0
        self._outbox: list[Frame] = []
        self._events: list[LinkEvent] = []
        self._stream = FrameStream()
        self._seen: dict[tuple[int, int, bytes], _Seen] = {}
        self._last_rx = float("-inf")  # when bytes last came from the centre (monotonic)
        # sends made on a connection found stale, and the serial: a resend keeps its serial
        # on the fresh connection too (GB/T 26875.3), so the centre can tell it is one packet
        self._carried: dict[Packet, tuple[int, int]] = {}
        self._carried_heartbeat = 0  # the sends of a heartbeat in flight then
        # the centre's last answer came later than the timeout: a live centre that is slow,
        # so the next silence gets one resend on this connection before a fresh one
        self._late = False
        # the centre's last answer (or the connection that started waiting for one): a dead
        # link is a fault by this + fault_detection_s, fresh connections for silences and
        # the time they took to connect included (GB 26875.1: within 100 s)
        self._heard = 0.0
        self._freshening = False  # down for a fresh connection (Stale): _heard carries over
        # a fresh connection was tried for a silence, and nothing has come back since: the
        # centre may just be slower than the timeout, so resend on this one (its late
        # confirm still counts) rather than reconnect for every send
        self._tried_fresh = False

    # --- owner's side -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    @property
    def faulted(self) -> bool:
        """A link fault was raised and no confirm has come since."""
        return self._faulted

    @property
    def queued(self) -> int:
        """Packets submitted and not yet confirmed or failed (in flight included)."""
        ours = sum(1 for e in self._in_flight.values() if e.packet is not self._heartbeat)
        return len(self._priority) + len(self._ordinary) + ours

    def connected(self) -> None:
        self._stream.reset()
        self._requeue_in_flight()
        self._seen.clear()  # a new connection, maybe a restarted centre: serials start over
        self._up = True
        self._last_rx = float("-inf")
        if not self._freshening:  # a new connection after a fault or a loss: a new wait
            self._heard = self.clock.monotonic()
            self._tried_fresh = False
        self._freshening = False
        self._last_confirmed = self.clock.monotonic()
        self._pump()
        if self._carried_heartbeat:  # beside whatever else goes: its count keeps the 100 s
            self._send_heartbeat(self._carried_heartbeat)
        self._carried_heartbeat = 0

    def disconnected(self) -> None:
        """The connection is gone: what was in flight goes back to the head of its queue."""
        self._stream.reset()
        self._outbox.clear()
        self._requeue_in_flight()
        self._up = False

    def submit(self, packet: Packet) -> None:
        (self._priority if packet.priority else self._ordinary).append(packet)
        self._pump()

    def resubmit(self, packet: Packet) -> None:
        """A packet handed back by Failed, to go again first (ahead of what was queued
        after it), so that a reconnect keeps the owner's order."""
        (self._priority if packet.priority else self._ordinary).appendleft(packet)
        self._pump()

    def receive(self, data: bytes) -> None:
        if not self._up:
            return  # bytes from a connection the link has given up on
        if data:
            self._last_rx = self.clock.monotonic()
            self._tried_fresh = False
        for item in self._stream.feed(data):
            if isinstance(item, BadFrame):
                self._on_bad_frame(item)
            else:
                self._on_frame(item)
        self._pump()

    def handle_timers(self) -> None:
        now = self.clock.monotonic()
        # a packet out of resends first: its failure is due, whatever a stale one beside it says
        resends = self.settings.resends
        due = [e for e in self._in_flight.values() if e.deadline <= now]
        for entry in sorted(due, key=lambda e: (e.sends <= resends, e.deadline)):
            if self._up and entry.serial in self._in_flight:
                self._on_timeout(entry)
        if self._heartbeat_due(now):
            self._send_heartbeat()
        self._pump()

    def next_deadline(self) -> float | None:
        """When handle_timers() next has work (monotonic clock), or None."""
        if not self._up:
            return None
        deadlines = [e.deadline for e in self._in_flight.values()]
        if not self._in_flight and not self._ordinary:
            deadlines.append(self._last_confirmed + self.settings.heartbeat_s)
        return min(deadlines, default=None)

    def data_to_send(self) -> bytes:
        frames, self._outbox = self._outbox, []
        return b"".join(encode_frame(f) for f in frames)

    def events(self) -> list[LinkEvent]:
        events, self._events = self._events, []
        return events

    def respond(self, request: Request, adu: Adu | RawAdu) -> None:
        """Answer a read (command 5) with the data asked for."""
        self._answer(request, Command.RESPONSE, adu.encode())

    def confirm(self, request: Request) -> None:
        self._answer(request, Command.CONFIRM, b"")

    def deny(self, request: Request) -> None:
        self._answer(request, Command.DENY, b"")

    # --- sending ------------------------------------------------------------------------------

    def _frame(self, serial: int, command: int, adu: bytes) -> Frame:
        s = self.settings
        label = GbTime.from_epoch(self.clock.time(), s.utc_offset_s)
        return Frame(
            serial, command, s.uitd_address, s.centre_address, label, adu, (1, s.version_minor)
        )

    def _next_serial(self) -> int:
        while True:
            self._serial = (self._serial + 1) & 0xFFFF
            if self._serial not in self._in_flight:
                return self._serial

    def _transmit(self, entry: _InFlight) -> None:
        packet = entry.packet
        self._outbox.append(self._frame(entry.serial, packet.command, packet.adu))
        entry.sends += 1
        entry.sent_at = self.clock.monotonic()
        if entry.first_at < 0:
            entry.first_at = entry.sent_at
        entry.deadline = min(entry.sent_at + self.settings.confirm_timeout_s, self._fault_by)
        if entry.sends > 1:
            self.counters.resent += 1
        else:
            self.counters.sent += 1

    def _start(self, packet: Packet, sends: int = 0) -> None:
        sends, serial = self._carried.pop(packet, (sends, 0))
        if not serial or serial in self._in_flight:
            serial = self._next_serial()
        entry = _InFlight(packet, serial, sends)
        self._in_flight[entry.serial] = entry
        self._transmit(entry)

    def _pump(self) -> None:
        if not self._up:
            return
        while self._priority:
            self._start(self._priority.popleft())
        if self._ordinary and not self._in_flight:
            self._start(self._ordinary.popleft())

    def _heartbeat_due(self, now: float) -> bool:
        idle = not self._in_flight and not self._priority and not self._ordinary
        return self._up and idle and now >= self._last_confirmed + self.settings.heartbeat_s

    def _send_heartbeat(self, sends: int = 0) -> None:
        adu = b""
        if self.settings.heartbeat == "state":
            label = GbTime.from_epoch(self.clock.time(), self.settings.utc_offset_s)
            adu = Adu.of(UitdState(self.uitd_status & 0xFF, label)).encode()
        self._heartbeat = Packet(adu)
        self._start(self._heartbeat, sends)

    def _requeue_in_flight(self) -> None:
        """Back to the head of their queues, in the order they were first sent."""
        for entry in sorted(self._in_flight.values(), key=lambda e: e.serial, reverse=True):
            if entry.packet is self._heartbeat:
                continue
            queue = self._priority if entry.packet.priority else self._ordinary
            queue.appendleft(entry.packet)
        self._in_flight.clear()
        self._heartbeat = None

    # --- answers to our packets ---------------------------------------------------------------

    @property
    def _fault_by(self) -> float:
        return self._heard + self.settings.fault_detection_s

    def _on_timeout(self, entry: _InFlight) -> None:
        if entry.sends <= self.settings.resends and self.clock.monotonic() < self._fault_by:
            if self._last_rx < entry.sent_at and not self._tried_fresh and not self._late:
                self._stale(entry)
            else:
                self._late = False  # one resend's grace for a slow centre, not two
                self._transmit(entry)
            return
        del self._in_flight[entry.serial]
        what = "heartbeat" if entry.packet is self._heartbeat else "packet"
        if entry.packet is not self._heartbeat:
            self.counters.failed += 1
            self._events.append(Failed(entry.packet, "timeout"))
        self._fault(
            f"no confirm for {what} #{entry.serial} after {entry.sends} sends"
            f" ({self.clock.monotonic() - self._heard:g} s since the centre last answered)"
        )

    def _stale(self, entry: _InFlight) -> None:
        """Resending into a connection that has said nothing since is resending into a
        void: go down keeping every in-flight packet's count of sends for the next one."""
        for other in self._in_flight.values():
            if other.packet is self._heartbeat:
                self._carried_heartbeat = other.sends
            else:
                self._carried[other.packet] = (other.sends, other.serial)
        self.counters.stale += 1
        self._tried_fresh = True
        self._freshening = True
        self._events.append(
            Stale(
                f"no confirm for #{entry.serial} and nothing from the centre in"
                f" {self.settings.confirm_timeout_s:g} s: resending on a fresh connection"
            )
        )
        self.disconnected()

    def _fault(self, reason: str) -> None:
        self.counters.faults += 1
        self._faulted = True
        self._events.append(LinkFault(reason))
        self.disconnected()

    def _on_answer(self, frame: Frame) -> None:
        entry = self._in_flight.get(frame.serial)
        if entry is None:
            self._notice(
                "unmatched", f"{command_name(frame.command)} #{frame.serial} matches nothing"
            )
            return
        self._last_confirmed = self._heard = self.clock.monotonic()
        self._late = self._last_confirmed - entry.first_at > self.settings.confirm_timeout_s
        self.counters.answers += 1
        if self._faulted:
            self._faulted = False
            self._events.append(LinkRestored())
        is_heartbeat = entry.packet is self._heartbeat
        if frame.command == Command.DENY and not is_heartbeat:
            self.counters.denied += 1
            if entry.sends <= self.settings.resends:
                self._transmit(entry)
                return
            del self._in_flight[entry.serial]
            self.counters.failed += 1
            self._events.append(Failed(entry.packet, "denied"))
            return
        del self._in_flight[entry.serial]
        if is_heartbeat:
            self._heartbeat = None
            if frame.command == Command.DENY:
                self._notice("heartbeat-denied", "the centre denies the heartbeat; it is alive")
            return
        self.counters.confirmed += 1
        self._events.append(Confirmed(entry.packet))

    # --- the centre's requests ----------------------------------------------------------------

    def _notice(self, kind: str, text: str) -> None:
        self._events.append(Notice(kind, text))

    def _reply(self, serial: int, command: int, adu: bytes = b"") -> None:
        if self._up:
            self._outbox.append(self._frame(serial, command, adu))

    def _on_bad_frame(self, bad: BadFrame) -> None:
        self.counters.bad_frames += 1
        self._notice("bad-frame", f"{bad.reason} check failed on #{bad.serial}: denied")
        self._reply(bad.serial, Command.DENY)

    def _on_frame(self, frame: Frame) -> None:
        if frame.command in (Command.CONFIRM, Command.DENY):
            self._on_answer(frame)
        elif frame.command in (Command.CONTROL, Command.REQUEST, Command.SEND_DATA):
            self._on_request(frame)
        elif frame.command == Command.RESPONSE:
            self._notice("unmatched", f"response #{frame.serial}: this UITD asks nothing")
        else:
            self._reject(frame, f"unrecognised command {frame.command}")

    def _reject(self, frame: Frame, why: str) -> None:
        self._notice("rejected", f"{command_name(frame.command)} #{frame.serial}: {why}: denied")
        self._reply(frame.serial, Command.DENY)

    def _on_request(self, frame: Frame) -> None:
        now = self.clock.monotonic()
        self._seen = {k: v for k, v in self._seen.items() if now - v.at < REPEAT_WINDOW_S}
        key = (frame.serial, frame.command, frame.adu)
        seen = self._seen.get(key)
        if seen is not None:
            if seen.answer is not None:
                self._reply(frame.serial, *seen.answer)
            self._notice("repeat", f"{command_name(frame.command)} #{frame.serial} again")
            return
        try:
            adu = decode_adu(frame.adu)
        except AduError as exc:
            self._reject(frame, str(exc))
            return
        why = _unacceptable(frame.command, adu)
        if why:
            self._reject(frame, why)
            return
        self._seen[key] = _Seen(now)
        self.counters.requests += 1
        self._events.append(RequestReceived(Request(frame, adu)))

    def _answer(self, request: Request, command: int, adu: bytes) -> None:
        frame = request.frame
        seen = self._seen.get((frame.serial, frame.command, frame.adu))
        if seen is not None:
            seen.answer = (command, adu)
        self._reply(frame.serial, command, adu)


def _unacceptable(command: int, adu: Adu | RawAdu) -> str:
    """Why a request cannot be taken as it is, or ''."""
    typeflag = adu.typeflag
    if typeflag in USER_DEFINED:
        return ""
    if isinstance(adu, RawAdu):
        return f"typeflag {typeflag} is reserved or unknown" if adu.data else "empty ADU"
    if command == Command.REQUEST and typeflag in READ_TYPEFLAGS | CONTROL_TYPEFLAGS:
        return ""
    if command == Command.CONTROL and typeflag in CONTROL_TYPEFLAGS:
        return ""
    return f"typeflag {typeflag} is not a request under {command_name(command)}"
