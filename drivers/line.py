"""The owner of one Modbus line: the only task that ever talks on it.

One `Line` per RS-485 line (and per Modbus TCP endpoint) runs as one asyncio
task. It polls its devices' read requests strictly one at a time, keeps the
inter-frame gap between the end of one exchange and the next request, applies
each device's timeout and retries, counts every failure by its typed reason,
raises comm-loss after `comm_fault_after` consecutive failed polls and
comm-restore on the first good one, and probes a lost device at a backoff that
doubles up to `backoff_max_s` (5 s by default), so that a device that answers
again is back in normal polling within seconds, however long it was silent.

One failed request never throws away a poll: every request of a healthy
device's poll is sent, the blocks that came back are handed on (with the
failed requests listed, so their points can raise a decode fault that names
the reason, e.g. "illegal data address (2)"). A Modbus exception answer proves
the device is there: it never counts toward comm loss, except a gateway's
exceptions 10 and 11, which say the device behind it did not answer. A poll
fails only when no request got any valid answer. A device that failed its last
poll is probed more cheaply: the poll stops at its first unanswered request,
and the request tried first rotates so that a device that stays silent on one
block still shows it is back through the others.

The link itself has a state shared by every device on it: when the port or
endpoint fails `LINK_DOWN_AFTER` times in a row (USB adapter unplugged, TCP
endpoint refusing or black-holing connects), the line is down and every device
on it is reported lost at once, instead of each paying its own timeouts; the
line then tries to reopen the link every second and probes every device the
moment it opens. A bus that falls silent behind a working port (cable cut, or
a Modbus TCP gateway whose RS-485 side is silent) is found the same way: two
devices in a row silent with no answer between make the line ask the
SILENT_CONFIRM devices that answered most recently, once each; if none answers,
all are lost now, with the link's own reason (`bus_silent`, `gateway_silent`):
the time this takes does not grow with the number of devices on the line.

Who gets the line, when several things want it: due polls of devices that
answer come first. Probes of lost devices and live requests (`read_now`,
`write_register`, `write_coil`) use the idle time between polls, and may go
ahead of a due poll only within a share of the line (`PROBE_SHARE`,
`REQUEST_SHARE`), so neither dead devices nor a flood of reads can starve the
polls that carry alarms. Live requests wait in a bounded queue: a full queue,
or a request that could not be started before its caller's deadline, is
answered with `LineBusy`; a request whose caller gave up is dropped, not run.
Nothing else may open the port.

It must never decide what a value means (points do that), never publish, and
never let an error end its loop: every failure is counted, logged once while
it persists, and the line keeps polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.errors import (
    Disconnected,
    FieldError,
    FieldTimeout,
    GatewayNoAnswer,
    LineBusy,
    ModbusException,
    UnknownPoint,
    WriteNotAllowed,
)
from core.events import now_ms
from drivers.modbus import ModbusLink
from drivers.types import Block, PollClass, ReadRequest, Table

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_IDLE_WAIT_S = 0.5  # the loop wakes at least this often so `alive` keeps moving
REOPEN_DELAY_S = 1.0  # a port that failed to open is not retried sooner (no busy loop)
# exception codes that mean "ask again later" (acknowledge, server busy): worth a retry;
# any other exception (illegal address...) will not change on a retry
RETRY_EXCEPTION_CODES = frozenset({5, 6})
# failed link attempts in a row (port gone, connect refused or timed out) that take the whole
# line down; attempts are REOPEN_DELAY_S apart, so a line is down ~1 s after it first failed
LINK_DOWN_AFTER = 2
# the share of a busy line that probes of lost devices, and separately live requests, may
# take ahead of due polls (they also get all the idle time between polls); the credit
# behind a share is capped at SHARE_BURST_S, so a due poll waits at most that plus one probe
# or request for them
PROBE_SHARE = 0.25
REQUEST_SHARE = 0.25
SHARE_BURST_S = 0.25
# live requests waiting per line; one more is answered LineBusy at once
MAX_QUEUED_REQUESTS = 4
# how long a live request may wait in the queue before it is dropped as busy
REQUEST_WAIT_S = 5.0
# what an answered exchange costs, roughly, in the estimate of whether a probe or a request
# fits before the next due poll (a silent one costs its timeout)
ANSWER_ALLOWANCE_S = 0.05
MIN_IDLE_WAIT_S = 0.001  # never spin
# A probe of a lost device that goes ahead of a due poll (a busy line) waits
# PROBE_WAIT_FACTOR times the device's slowest answer (at least PROBE_WAIT_MIN_S, at most its
# timeout), not its whole timeout: such probes share PROBE_SHARE of the line, so what a
# silent probe costs sets how often each lost device is asked (8 lost devices at a 0.5 s
# timeout: every 16 s, past the 5 s backoff cap). Every FULL_PROBE_EVERY-th one waits the
# whole timeout, so a device that comes back slower than it was is still seen; a probe in
# the line's free time always does.
PROBE_WAIT_FACTOR = 3.0
PROBE_WAIT_MIN_S = 0.1
FULL_PROBE_EVERY = 4
# after two devices in a row went silent, how many others (those that answered last) are
# asked once before the whole bus counts as silent: a fixed number, so that finding a cut
# cable takes as long on a line of 30 devices as on one of 3
SILENT_CONFIRM = 2


# a request that got no usable block, and the typed reason
Failure = tuple[ReadRequest, FieldError]
# no answer at all from the device (a gateway's "no answer" included)
SILENCE = (FieldTimeout, GatewayNoAnswer)


@dataclass(frozen=True)
class DevicePoll:
    """What the line polls for one device, per poll class, and how patiently."""

    device_id: str
    unit: int
    fast: list[ReadRequest]
    slow: list[ReadRequest]
    fast_period_s: float
    slow_period_s: float
    timeout_s: float
    retries: int
    comm_fault_after: int
    backoff_max_s: float
    # (table, address) pairs that may be written; anything else raises WriteNotAllowed
    writable: frozenset[tuple[Table, int]] = frozenset()

    @property
    def polled(self) -> bool:
        return bool(self.fast or self.slow)

    @property
    def period_s(self) -> float:
        """The shortest period the device is polled at."""
        periods = [self.fast_period_s] if self.fast else []
        periods += [self.slow_period_s] if self.slow else []
        return min(periods, default=self.fast_period_s)

    @property
    def comm_fault_window_s(self) -> float:
        """About how long a device that stops answering takes to be reported lost:
        `comm_fault_after` polls, each a period plus every attempt timing out. A device
        that has not been polled for longer than this is starved (`status` says so)."""
        attempts = 1 + max(0, self.retries)
        return self.comm_fault_after * (self.period_s + attempts * self.timeout_s)


@dataclass(frozen=True)
class PollResult:
    """One poll of one device at `ts_ms` (UTC ms): the blocks read, and what failed.

    `failed` lists each request that got no usable block, with its typed error
    (a ModbusException "illegal data address (2)", a FieldTimeout...; a request
    skipped after a silence carries that silence); points in those blocks
    cannot be decoded this time, and codec.why_unread says why.
    """

    device_id: str
    poll_class: PollClass
    blocks: list[Block]
    ts_ms: int
    failed: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class CommChange:
    """A device stopped answering (`lost`) or answers again; `reason` is the last failure."""

    device_id: str
    lost: bool
    reason: str
    failures: int
    ts_ms: int


LineOutput = PollResult | CommChange
Sink = Callable[[LineOutput], None]


@dataclass
class CycleTimes:
    """Busy time of the line for one full fast cycle (every polled device once)."""

    last_s: float = 0.0
    total_s: float = 0.0
    count: int = 0

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0

    def add(self, seconds: float) -> None:
        self.last_s = seconds
        self.total_s += seconds
        self.count += 1


@dataclass
class DeviceState:
    """The line's bookkeeping for one device."""

    poll: DevicePoll
    next_due: dict[PollClass, float]
    consecutive_failures: int = 0
    lost: bool = False
    backoff_s: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    polls_ok: int = 0
    polls_failed: int = 0
    polls_partial: int = 0  # counted in polls_ok too: some request of the poll failed
    probe_start: int = 0  # where a failing device's next probe starts (rotates)
    slowest_answer_s: float = 0.0  # the longest a good answer of this device has taken
    probe_wait_s: float = math.inf  # how long its next probe waits (set when it is chosen)
    probes: int = 0  # probes since it was lost
    last_polled: float = field(default_factory=time.monotonic)  # end of its last poll or probe

    def requests(self, poll_class: PollClass) -> list[ReadRequest]:
        return self.poll.fast if poll_class is PollClass.FAST else self.poll.slow

    def period(self, poll_class: PollClass) -> float:
        if poll_class is PollClass.FAST:
            return self.poll.fast_period_s
        return self.poll.slow_period_s


@dataclass(frozen=True)
class PollTiming:
    """When a device was last polled (or probed), and whether that is overdue."""

    age_s: float
    window_s: float  # its comm-fault window, plus its probe backoff while it is lost
    overdue: bool  # not polled for longer than window_s (and the line is not down)


@dataclass(frozen=True)
class LineDown:
    """The line's link is gone: why, and since when (UTC ms)."""

    reason: str
    since_ms: int


@dataclass
class _Request:
    """A job for the owner loop from outside (live read, write), with its answer."""

    run: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]
    deadline: float  # monotonic: not started by then, it is dropped as busy
    wait_s: float
    cost_s: float  # about how long it may keep the line (all its attempts timing out)


@dataclass
class ReadOutcome:
    """What a poll's (or a live read's) requests brought back."""

    blocks: list[Block] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    answered: bool = False  # some request got a block or a Modbus exception answer
    last_error: FieldError | None = None


class _ShareBudget:
    """Line time one kind of work may take ahead of due polls: it earns `share` of every
    second, banked up to `burst_s`, and pays for the time it ran while a poll was due (in
    the line's idle time it runs free). Over any busy stretch it takes at most `share`."""

    def __init__(self, share: float, burst_s: float) -> None:
        self.share = share
        self.burst_s = burst_s
        self._credit = 0.0
        self._stamp = time.monotonic()

    def _earn(self, now: float) -> None:
        self._credit = min(self.burst_s, self._credit + (now - self._stamp) * self.share)
        self._stamp = now

    def available(self, now: float) -> bool:
        self._earn(now)
        return self._credit > 0

    def spend(self, seconds: float, now: float) -> None:
        self._earn(now)
        self._credit -= seconds

    def refill_s(self, now: float) -> float:
        """Seconds until the credit is positive again (0 if it is)."""
        self._earn(now)
        return max(0.0, -self._credit / self.share)


def _device_answered(exc: FieldError) -> bool:
    """An exception answer proves the device is there, unless a gateway sent it for it."""
    return isinstance(exc, ModbusException) and not isinstance(exc, GatewayNoAnswer)


def _worth_retrying(exc: FieldError) -> bool:
    """Retry silence and damage; of exception answers only "busy, ask again". A link that
    is gone is not retried here: the line's own reconnect (paced, shared) deals with it."""
    if isinstance(exc, Disconnected):
        return False
    return not isinstance(exc, ModbusException) or exc.code in RETRY_EXCEPTION_CODES


class Line:
    """The single owner of one Modbus link; start() it, then close() it."""

    def __init__(
        self,
        line_id: str,
        link: ModbusLink,
        devices: list[DevicePoll],
        sink: Sink,
        *,
        inter_frame_gap_s: float = 0.0,
    ) -> None:
        self.line_id = line_id
        self.link = link
        self._sink = sink
        self._gap_s = inter_frame_gap_s
        now = time.monotonic()
        self._devices = {
            d.device_id: DeviceState(d, {PollClass.FAST: now, PollClass.SLOW: now}) for d in devices
        }
        self._requests: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_exchange_end = 0.0
        self._last_open_failure = -REOPEN_DELAY_S
        self._link_failures = 0  # failed link attempts in a row, on any device's behalf
        self._silent: set[str] = set()  # devices gone silent with no answer on the line since
        self._down: LineDown | None = None
        self._probes = _ShareBudget(PROBE_SHARE, SHARE_BURST_S)
        self._chores = _ShareBudget(REQUEST_SHARE, SHARE_BURST_S)
        self._round: set[str] = set()
        self._round_busy_s = 0.0
        self.cycle_times = CycleTimes()
        self.alive = now  # monotonic time of the loop's last iteration (watchdog input)

    # --- lifetime ---------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"line-{self.line_id}")

    async def close(self) -> None:
        """Stop polling, fail queued requests, and release the port."""
        task, self._task = self._task, None
        self._stopping = True  # belt and braces: the loop also ends if a cancel gets lost
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_requests(Disconnected(f"line {self.line_id} closed"))
        await self.link.close()

    async def __aenter__(self) -> Line:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- public queries ---------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per device: failed attempts by reason, polls_ok/failed/partial, lost, backoff_ms.

        "exception" counts Modbus exception answers: they are not comm failures
        ("gateway_no_answer", a gateway's exception 10 or 11, is one).
        """
        out: dict[str, dict[str, int]] = {}
        for device_id, st in self._devices.items():
            row = dict(st.failures)
            row.update(
                polls_ok=st.polls_ok,
                polls_failed=st.polls_failed,
                polls_partial=st.polls_partial,
                lost=int(st.lost),
                backoff_ms=round(st.backoff_s * 1000),
            )
            out[device_id] = row
        return out

    def is_lost(self, device_id: str) -> bool:
        return self._state(device_id).lost

    @property
    def down(self) -> LineDown | None:
        """Why and since when the line's link is gone; None while it works."""
        return self._down

    def polling(self, device_id: str) -> PollTiming:
        """How long ago the device was last polled, and whether that is overdue: a device
        starved of polls (by requests, probes, or a bug) is shown, not silently stale."""
        st = self._state(device_id)
        age = time.monotonic() - st.last_polled
        window = st.poll.comm_fault_window_s + (st.backoff_s if st.lost else 0.0)
        overdue = st.poll.polled and self._down is None and age > window
        return PollTiming(age, window, overdue)

    # --- live requests through the owner ---------------------------------

    async def read_now(
        self,
        device_id: str,
        requests: list[ReadRequest],
        timeout_s: float | None = None,
        *,
        wait_s: float = REQUEST_WAIT_S,
    ) -> ReadOutcome:
        """Read now, between polls: the blocks that came back and the requests that failed
        (with why). Raises the FieldError when the device gave no answer at all, LineBusy
        when the line's queue is full or it could not start within `wait_s`, UnknownPoint."""
        st = self._state(device_id)
        timeout = st.poll.timeout_s if timeout_s is None else timeout_s

        async def run() -> ReadOutcome:
            outcome = await self._read_in_order(st, requests, timeout, stop_at_silence=True)
            if outcome.last_error is not None and not outcome.answered:
                raise outcome.last_error
            return outcome

        attempts = 1 if st.lost else 1 + max(0, st.poll.retries)
        cost = attempts * timeout + max(0, len(requests) - 1) * ANSWER_ALLOWANCE_S
        return await self._submit(run, wait_s, cost)

    async def write_register(self, device_id: str, address: int, value: int) -> None:
        """FC06 through the owner; WriteNotAllowed unless the register is declared writable."""
        await self._write(
            device_id,
            Table.HOLDING,
            address,
            lambda unit, timeout_s: self.link.write_register(unit, address, value, timeout_s),
        )

    async def write_coil(self, device_id: str, address: int, value: bool) -> None:
        """FC05 through the owner; WriteNotAllowed unless the coil is declared writable."""
        await self._write(
            device_id,
            Table.COIL,
            address,
            lambda unit, timeout_s: self.link.write_coil(unit, address, value, timeout_s),
        )

    async def _write(
        self,
        device_id: str,
        table: Table,
        address: int,
        call: Callable[[int, float], Awaitable[None]],
    ) -> None:
        """Run `call(unit, timeout_s)` through the owner, if (table, address) is writable."""
        st = self._writable_state(device_id, table, address)

        async def run() -> None:
            await self._paced(lambda: call(st.poll.unit, st.poll.timeout_s))

        await self._submit(run, REQUEST_WAIT_S, st.poll.timeout_s)

    async def _submit(self, run: Callable[[], Awaitable[T]], wait_s: float, cost_s: float) -> T:
        if self._task is None or self._task.done():
            raise Disconnected(f"line {self.line_id} is not running")
        if self._down is not None:  # nobody can answer: say so now, not after a timeout
            raise Disconnected(f"line {self.line_id} is down: {self._down.reason}")
        self._forget_abandoned()
        if len(self._requests) >= MAX_QUEUED_REQUESTS:
            raise LineBusy(
                f"line {self.line_id} is busy: {len(self._requests)} requests already waiting;"
                " try again in a moment"
            )
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._requests.append(_Request(run, future, time.monotonic() + wait_s, wait_s, cost_s))
        self._wakeup.set()
        # a caller that gives up (cancelled, timed out) cancels `future`: it is then dropped
        return await future

    def _forget_abandoned(self) -> None:
        """Requests whose callers gave up no longer hold a place in the queue."""
        if any(req.future.done() for req in self._requests):
            self._requests = deque(req for req in self._requests if not req.future.done())

    def _expire_requests(self, now: float) -> None:
        """Drop what nobody waits for; answer busy what could not start in time."""
        self._forget_abandoned()
        for req in [r for r in self._requests if r.deadline <= now]:
            self._requests.remove(req)
            req.future.set_exception(
                LineBusy(
                    f"line {self.line_id} is busy: the request waited {req.wait_s:g} s behind"
                    " due polls and was dropped; try again"
                )
            )

    def _fail_requests(self, exc: Exception) -> None:
        while self._requests:
            req = self._requests.popleft()
            if not req.future.done():
                req.future.set_exception(exc)

    def _writable_state(self, device_id: str, table: Table, address: int) -> DeviceState:
        """The device, if (table, address) is explicitly writable on it: a second line of
        defence behind the point config, so no code path can write what nobody declared."""
        st = self._state(device_id)
        if (table, address) not in st.poll.writable:
            raise WriteNotAllowed(
                f"{table} {address} on device {device_id!r} is not declared writable"
            )
        return st

    def _state(self, device_id: str) -> DeviceState:
        try:
            return self._devices[device_id]
        except KeyError:
            raise UnknownPoint(f"no device {device_id!r} on line {self.line_id}") from None

    # --- the owner loop ---------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self.alive = time.monotonic()
            try:
                await self._step()
                await asyncio.sleep(0)  # fairness: never hold the event loop for two polls
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not silence a fire panel: log it and keep polling
                log.exception("line %s: unexpected error in the poll loop", self.line_id)
                await asyncio.sleep(MAX_IDLE_WAIT_S)

    async def _step(self) -> None:
        """One thing: a due probe, else a queued request, if it fits in the time before the
        next poll is due or its share allows; else a due poll; else wait."""
        self._wakeup.clear()  # before looking at the queue: a request queued from now wakes us
        now = time.monotonic()
        self._expire_requests(now)
        broken = await self.link.check_idle()
        if broken is not None:  # hung up or closed while idle: a failed attempt, seen now
            self._last_open_failure = now
            self._link_failed(broken)
        if self._down is not None or (self._link_failures and not self.link.is_open):
            await self._reconnect(now)
            return
        poll = self._next_due(lost=False)
        free_s = poll[2] - now if poll is not None else math.inf  # line time before it is due
        waits = [free_s, MAX_IDLE_WAIT_S]
        probe = self._next_due(lost=True)
        if probe is not None and probe[2] > now:
            waits.append(probe[2] - now)
        elif probe is not None:
            st = probe[0]
            # in the line's free time a probe waits the whole timeout; ahead of a due poll,
            # on the probes' share, it waits what this device's answers have needed
            st.probe_wait_s = st.poll.timeout_s
            if self._probe_cost_s(st) > free_s:
                st.probe_wait_s = self._short_probe_wait_s(st)
            if self._may_go(self._probes, self._probe_cost_s(st), free_s, now):
                await self._ahead_of(free_s, self._probes, self._poll(st, probe[1]))
                return
            waits.append(self._probes.refill_s(now))
        if self._requests:
            req = self._requests[0]
            if self._may_go(self._chores, req.cost_s, free_s, now):
                self._requests.popleft()
                await self._ahead_of(free_s, self._chores, self._serve(req))
                return
            waits.append(self._chores.refill_s(now))
        if poll is not None and free_s <= 0:
            await self._poll(poll[0], poll[1])
            return
        await self._idle(max(MIN_IDLE_WAIT_S, min(waits)))

    @staticmethod
    def _may_go(budget: _ShareBudget, cost_s: float, free_s: float, now: float) -> bool:
        """Work that fits before the next due poll runs free; other work needs credit."""
        return cost_s <= free_s or budget.available(now)

    async def _ahead_of(self, free_s: float, budget: _ShareBudget, work: Awaitable[None]) -> None:
        """Run `work`; the time it kept a due poll waiting comes out of `budget`."""
        started = time.monotonic()
        try:
            await work
        finally:
            done = time.monotonic()
            budget.spend(max(0.0, done - started - max(0.0, free_s)), done)

    def _probe_cost_s(self, st: DeviceState) -> float:
        """About how long a probe of a lost device takes: one attempt, and it stops at its
        first silence (a device that answers answers quickly)."""
        requests = max(1, len(st.poll.fast or st.poll.slow))
        return st.probe_wait_s + (requests - 1) * ANSWER_ALLOWANCE_S

    async def _idle(self, seconds: float) -> None:
        """Wait for the next due poll or probe, or for credit, or for a new request."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: it can eat a cancel (3.11)
                await self._wakeup.wait()

    async def _serve(self, req: _Request) -> None:
        if req.future.done():  # the caller gave up (cancelled) while queued
            return
        try:
            result = await req.run()
        except Exception as exc:
            if not req.future.done():
                req.future.set_exception(exc)
            if not isinstance(exc, FieldError):
                raise  # a bug, not a field failure: the loop logs it; the caller has its answer
        else:
            if not req.future.done():
                req.future.set_result(result)

    def _next_due(self, *, lost: bool) -> tuple[DeviceState, PollClass, float] | None:
        """The earliest due poll among devices that answer (or, `lost`, the earliest probe)."""
        best: tuple[DeviceState, PollClass, float] | None = None
        for st in self._devices.values():
            if st.lost is not lost:
                continue
            for poll_class in (PollClass.FAST, PollClass.SLOW):
                if not st.requests(poll_class):
                    continue
                when = st.next_due[poll_class]
                if best is None or when < best[2]:
                    best = (st, poll_class, when)
        return best

    # --- the link, shared by every device on the line ---------------------

    def _link_failed(self, exc: Disconnected) -> None:
        self._link_failures += 1
        if self._down is None and self._link_failures >= LINK_DOWN_AFTER:
            self._line_down(exc)

    def _line_down(self, exc: Disconnected) -> None:
        """Every device on the line is lost with it, now: one report each, no timeouts."""
        self._down = LineDown(str(exc), now_ms())
        log.warning(
            "line %s down after %d failed attempts: %s; its devices are reported lost",
            self.line_id,
            self._link_failures,
            exc,
        )
        for st in self._devices.values():
            if not st.lost:
                st.lost = True
                self._sink(
                    CommChange(st.poll.device_id, True, exc.reason, self._link_failures, now_ms())
                )
        self._fail_requests(Disconnected(f"line {self.line_id} is down: {exc}"))

    async def _reconnect(self, now: float) -> None:
        """While the link is failing or down: try it every REOPEN_DELAY_S, on the line's
        own clock (not at the next poll, which may be seconds away); once the line is down
        and the link opens again, probe every device at once (each reports its own restore
        when it answers)."""
        wait = self._last_open_failure + REOPEN_DELAY_S - now
        if wait > 0:
            await self._idle(min(wait, MAX_IDLE_WAIT_S))
            return
        self.alive = now
        try:
            await self.link.connect()
        except Disconnected as exc:
            self._last_open_failure = time.monotonic()
            if self._down is None:
                self._link_failed(exc)
            else:
                self._down = LineDown(str(exc), self._down.since_ms)
            return
        if self._down is None:
            return  # reopened before the line was declared down: polls go on
        log.warning("line %s: its link opens again; probing its devices", self.line_id)
        self._down = None
        opened = time.monotonic()
        for st in self._devices.values():
            st.backoff_s = 0.0
            st.next_due = {PollClass.FAST: opened, PollClass.SLOW: opened}

    # --- one poll ---------------------------------------------------------

    async def _poll(self, st: DeviceState, poll_class: PollClass) -> None:
        started = time.monotonic()
        period = st.period(poll_class)
        due = st.next_due[poll_class] + period
        # a line that fell behind skips the missed slots instead of bursting to catch up
        st.next_due[poll_class] = due if due > started else started + period
        outcome = await self._read_all(st, st.requests(poll_class))
        st.last_polled = time.monotonic()
        if outcome.answered:
            self._poll_succeeded(st, poll_class, outcome.blocks, outcome.failed)
        else:
            assert outcome.last_error is not None
            was_lost = st.lost
            self._poll_failed(st, poll_class, outcome.last_error)
            if isinstance(outcome.last_error, SILENCE) and not was_lost:
                self._silent.add(st.poll.device_id)
                if len(self._silent) >= 2:
                    await self._check_line_silent()
        if poll_class is PollClass.FAST:
            self._account_cycle(st.poll.device_id, time.monotonic() - started)

    async def _check_line_silent(self) -> None:
        """Two devices in a row went silent and nothing on the line answered since: ask every
        other device once. If none answers, the bus itself is silent (cable cut, adapter dead,
        A/B swapped, bus unpowered): every device on it is reported lost now, instead of each
        after its own comm_fault_after polls (a slow-polled module took 15 s and more)."""
        others = [
            st
            for st in self._devices.values()
            if not st.lost and st.poll.polled and st.poll.device_id not in self._silent
        ]
        if not others:
            return  # nobody left to ask (two devices): each counts its own polls
        # the likeliest to answer first: those that answered last (a device failing on its
        # own answered long ago, or not at all)
        others.sort(key=lambda st: (st.consecutive_failures > 0, -st.last_polled))
        for st in others[:SILENT_CONFIRM]:
            if not await self._silent_once(st):
                return  # it answered, or the link broke (the line handles that): not the bus
            self._silent.add(st.poll.device_id)
        reason = self.link.silent_bus_reason
        log.warning(
            "line %s: no device answers (%d in a row, none since): %s; its devices are"
            " reported lost",
            self.line_id,
            len(self._silent),
            reason,
        )
        for st in self._devices.values():
            if not st.lost and st.poll.polled:
                st.lost = True
                st.consecutive_failures = failures = max(1, st.consecutive_failures)
                self._sink(CommChange(st.poll.device_id, True, reason, failures, now_ms()))
                self._back_off(st)
        self._silent.clear()

    async def _silent_once(self, st: DeviceState) -> bool:
        """Ask the device's first block once, no retry: True if it stayed silent."""
        request = (st.poll.fast or st.poll.slow)[0]
        try:
            await self._paced(lambda: self.link.read(request, st.poll.timeout_s))
        except FieldError as exc:
            st.failures[exc.reason] += 1
            return isinstance(exc, SILENCE)
        return False

    async def _read_all(self, st: DeviceState, requests: list[ReadRequest]) -> ReadOutcome:
        """Send every request of a poll; a failing device's probe stops at its first silence."""
        probing = st.consecutive_failures > 0 or st.lost
        start = st.probe_start % len(requests) if probing and requests else 0
        if probing:  # the next probe starts one request further on
            st.probe_start = start + 1
        order = requests[start:] + requests[:start]
        timeout_s = min(st.probe_wait_s, st.poll.timeout_s) if st.lost else st.poll.timeout_s
        if st.lost:
            st.probes += 1
        return await self._read_in_order(st, order, timeout_s, stop_at_silence=probing)

    @staticmethod
    def _short_probe_wait_s(st: DeviceState) -> float:
        """How long a probe that goes ahead of a due poll waits (see PROBE_WAIT_FACTOR)."""
        if not st.slowest_answer_s or st.probes % FULL_PROBE_EVERY == FULL_PROBE_EVERY - 1:
            return st.poll.timeout_s
        waits = max(PROBE_WAIT_MIN_S, PROBE_WAIT_FACTOR * st.slowest_answer_s)
        return min(st.poll.timeout_s, waits)

    async def _read_in_order(
        self, st: DeviceState, order: list[ReadRequest], timeout_s: float, *, stop_at_silence: bool
    ) -> ReadOutcome:
        """Each request in turn; a gone link, or (if `stop_at_silence`) a silence before any
        answer, skips the rest: no timeout per request on a device that is not there."""
        outcome = ReadOutcome()
        for i, req in enumerate(order):
            try:
                outcome.blocks.append(await self._exchange_with_retries(st, req, timeout_s))
                outcome.answered = True
            except FieldError as exc:
                outcome.failed.append((req, exc))
                if _device_answered(exc):
                    outcome.answered = True
                    continue
                outcome.last_error = exc
                if isinstance(exc, Disconnected) or (stop_at_silence and not outcome.answered):
                    outcome.failed.extend((r, exc) for r in order[i + 1 :])  # skipped
                    break
        return outcome

    async def _exchange_with_retries(
        self, st: DeviceState, req: ReadRequest, timeout_s: float
    ) -> Block:
        # a lost device gets one attempt per probe: retries would only multiply the time it steals
        attempts = 1 if st.lost else 1 + max(0, st.poll.retries)
        for attempt in range(attempts):
            try:
                return await self._paced(lambda: self._timed_read(st, req, timeout_s))
            except FieldError as exc:
                st.failures[exc.reason] += 1
                log.debug(
                    "line %s device %s: %s (attempt %d/%d): %s",
                    self.line_id,
                    st.poll.device_id,
                    exc.reason,
                    attempt + 1,
                    attempts,
                    exc,
                )
                if attempt + 1 == attempts or not _worth_retrying(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _timed_read(self, st: DeviceState, req: ReadRequest, timeout_s: float) -> Block:
        """One read, noting how long a good answer took (what a probe may wait)."""
        started = time.monotonic()
        block = await self.link.read(req, timeout_s)
        st.slowest_answer_s = max(st.slowest_answer_s, time.monotonic() - started)
        return block

    async def _paced(self, exchange: Callable[[], Awaitable[T]]) -> T:
        """Run one exchange after the inter-frame gap since the previous one ended."""
        ready_at = self._last_exchange_end + self._gap_s
        if not self.link.is_open:
            ready_at = max(ready_at, self._last_open_failure + REOPEN_DELAY_S)
        wait = ready_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # wire timing / reopen pacing, not a synchronisation
        # `alive` moves with every exchange, not only with every poll step: a silent device
        # with long timeouts and retries makes one step last far longer than the watchdog
        # allows, and the loop is not hung for that (an exchange is bounded by timeout_s)
        self.alive = time.monotonic()
        try:
            result = await exchange()
        except Disconnected as exc:
            if not self.link.is_open:
                self._last_open_failure = time.monotonic()
            self._link_failed(exc)
            raise
        except FieldError as exc:
            self._link_failures = 0  # the link carried the exchange; the device failed it
            if not isinstance(exc, SILENCE):
                self._silent.clear()  # something on the bus answered, if badly
            raise
        finally:
            self._last_exchange_end = self.alive = time.monotonic()
        self._link_failures = 0
        self._silent.clear()
        return result

    def _poll_succeeded(
        self,
        st: DeviceState,
        poll_class: PollClass,
        blocks: list[Block],
        failed: list[Failure],
    ) -> None:
        st.polls_ok += 1
        st.polls_partial += bool(failed)
        st.probe_start = 0
        st.probes = 0
        if st.lost:
            st.lost = False
            log.warning(
                "line %s device %s answers again after %d failed polls",
                self.line_id,
                st.poll.device_id,
                st.consecutive_failures,
            )
            self._sink(
                CommChange(st.poll.device_id, False, "restored", st.consecutive_failures, now_ms())
            )
            now = time.monotonic()
            st.next_due = {PollClass.FAST: now, PollClass.SLOW: now}
        st.consecutive_failures = 0
        st.backoff_s = 0.0
        self._sink(PollResult(st.poll.device_id, poll_class, blocks, now_ms(), failed))

    def _poll_failed(self, st: DeviceState, poll_class: PollClass, exc: FieldError) -> None:
        st.polls_failed += 1
        st.consecutive_failures += 1
        if not st.lost:  # a failing device is asked again soon, even one polled slowly
            soon = time.monotonic() + st.poll.fast_period_s
            st.next_due[poll_class] = min(st.next_due[poll_class], soon)
        if not st.lost and st.consecutive_failures >= st.poll.comm_fault_after:
            st.lost = True
            log.warning(
                "line %s device %s lost after %d failed polls: %s: %s",
                self.line_id,
                st.poll.device_id,
                st.consecutive_failures,
                exc.reason,
                exc,
            )
            self._sink(
                CommChange(st.poll.device_id, True, exc.reason, st.consecutive_failures, now_ms())
            )
        if st.lost:
            self._back_off(st)

    def _back_off(self, st: DeviceState) -> None:
        """Probe a lost device ever more rarely (doubling, capped at backoff_max_s: 5 s by
        default, so that its return is seen within seconds); probes only take the line's
        idle time and their share of it, so the others keep the line."""
        base = max(st.poll.fast_period_s, st.poll.timeout_s)
        st.backoff_s = min(st.poll.backoff_max_s, st.backoff_s * 2 if st.backoff_s else base)
        probe_at = time.monotonic() + st.backoff_s
        for poll_class in st.next_due:
            st.next_due[poll_class] = max(st.next_due[poll_class], probe_at)

    def _account_cycle(self, device_id: str, busy_s: float) -> None:
        """A fast cycle ends when a device comes round again; its length is the busy time."""
        if device_id in self._round:
            self.cycle_times.add(self._round_busy_s)
            self._round.clear()
            self._round_busy_s = 0.0
        self._round.add(device_id)
        self._round_busy_s += busy_s
