"""The owner of one Modbus line: the only task that ever talks on it.

One `Line` per RS-485 line (and per Modbus TCP endpoint) runs as one asyncio
task. It polls its devices' read requests strictly one at a time, keeps the
inter-frame gap between the end of one exchange and the next request, applies
each device's timeout and retries, counts every failure by its typed reason,
raises comm-loss after `comm_fault_after` consecutive failed polls and
comm-restore on the first good one, and backs a lost device off exponentially
so that a dead device cannot starve the live ones.

One failed request never throws away a poll: every request of a healthy
device's poll is sent, the blocks that came back are handed on (with the
failed requests listed, so their points can raise a decode fault). A Modbus
exception answer proves the device is there: it never counts toward comm
loss. A poll fails only when no request got any valid answer. A device that
failed its last poll is probed more cheaply: the poll stops at its first
unanswered request, and the request tried first rotates so that a device that
stays silent on one block still shows it is back through the others. Live reads and writes
(`read_now`, `write_register`, `write_coil`) go through the same owner queue:
nothing else may open the port.

It must never decide what a value means (points do that), never publish, and
never let an error end its loop: every failure is counted, logged once while
it persists, and the line keeps polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.errors import Disconnected, FieldError, ModbusException, UnknownPoint, WriteNotAllowed
from agent.events import now_ms
from drivers.modbus import ModbusLink
from drivers.types import Block, PollClass, ReadRequest, Table

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_IDLE_WAIT_S = 0.5  # the loop wakes at least this often so `alive` keeps moving
REOPEN_DELAY_S = 1.0  # a port that failed to open is not retried sooner (no busy loop)
# exception codes that mean "ask again later" (acknowledge, server busy): worth a retry;
# any other exception (illegal address...) will not change on a retry
RETRY_EXCEPTION_CODES = frozenset({5, 6})


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


@dataclass(frozen=True)
class PollResult:
    """One poll of one device at `ts_ms` (UTC ms): the blocks read, and what failed.

    `failed` lists each request that got no usable block, with the failure
    reason and message ("timeout: ...", "exception: Modbus exception code 2");
    points in those blocks cannot be decoded this time.
    """

    device_id: str
    poll_class: PollClass
    blocks: list[Block]
    ts_ms: int
    failed: list[tuple[ReadRequest, str]] = field(default_factory=list)


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

    def requests(self, poll_class: PollClass) -> list[ReadRequest]:
        return self.poll.fast if poll_class is PollClass.FAST else self.poll.slow

    def period(self, poll_class: PollClass) -> float:
        if poll_class is PollClass.FAST:
            return self.poll.fast_period_s
        return self.poll.slow_period_s


@dataclass
class _Command:
    """A job for the owner loop from outside (live read, write), with its answer."""

    run: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]


@dataclass
class _PollOutcome:
    """What one poll's requests brought back."""

    blocks: list[Block] = field(default_factory=list)
    failed: list[tuple[ReadRequest, str]] = field(default_factory=list)
    answered: bool = False  # some request got a block or a Modbus exception answer
    last_error: FieldError | None = None


def _worth_retrying(exc: FieldError) -> bool:
    """Retry silence and damage; of exception answers only "busy, ask again"."""
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
        self._commands: asyncio.Queue[_Command] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_exchange_end = 0.0
        self._last_open_failure = -REOPEN_DELAY_S
        self._round: set[str] = set()
        self._round_busy_s = 0.0
        self.cycle_times = CycleTimes()
        self.alive = now  # monotonic time of the loop's last iteration (watchdog input)

    # --- lifetime ---------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"line-{self.line_id}")

    async def close(self) -> None:
        """Stop polling, fail queued commands, and release the port."""
        task, self._task = self._task, None
        self._stopping = True  # belt and braces: the loop also ends if a cancel gets lost
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._commands.empty():
            cmd = self._commands.get_nowait()
            if not cmd.future.done():
                cmd.future.set_exception(Disconnected(f"line {self.line_id} closed"))
        await self.link.close()

    async def __aenter__(self) -> Line:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- public queries ---------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per device: failed attempts by reason, polls_ok/failed/partial, lost, backoff_ms.

        "exception" counts Modbus exception answers: they are not comm failures.
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

    # --- live requests through the owner ---------------------------------

    async def read_now(
        self, device_id: str, requests: list[ReadRequest], timeout_s: float | None = None
    ) -> list[Block]:
        """Read now, queued behind the current exchange; raises a FieldError or UnknownPoint."""
        st = self._state(device_id)
        timeout = st.poll.timeout_s if timeout_s is None else timeout_s

        async def run() -> list[Block]:
            return [await self._exchange_with_retries(st, req, timeout) for req in requests]

        return await self._submit(run)

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

        await self._submit(run)

    async def _submit(self, run: Callable[[], Awaitable[T]]) -> T:
        if self._task is None or self._task.done():
            raise Disconnected(f"line {self.line_id} is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._commands.put_nowait(_Command(run, future))
        self._wakeup.set()
        return await future

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
        if not self._commands.empty():
            await self._serve(self._commands.get_nowait())
            return
        due = self._next_due()
        if due is None:
            await self._idle(MAX_IDLE_WAIT_S)
            return
        st, poll_class, when = due
        wait = when - time.monotonic()
        if wait > 0:
            await self._idle(min(wait, MAX_IDLE_WAIT_S))
            return
        await self._poll(st, poll_class)

    async def _idle(self, seconds: float) -> None:
        """Wait for the next due poll, but wake at once for a queued command."""
        self._wakeup.clear()
        if self._commands.empty():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):  # not wait_for: it can eat a cancel (3.11)
                    await self._wakeup.wait()

    async def _serve(self, cmd: _Command) -> None:
        if cmd.future.done():  # the caller gave up (cancelled) while queued
            return
        try:
            result = await cmd.run()
        except Exception as exc:
            if not cmd.future.done():
                cmd.future.set_exception(exc)
            if not isinstance(exc, FieldError):
                raise  # a bug, not a field failure: the loop logs it; the caller has its answer
        else:
            if not cmd.future.done():
                cmd.future.set_result(result)

    def _next_due(self) -> tuple[DeviceState, PollClass, float] | None:
        best: tuple[DeviceState, PollClass, float] | None = None
        for st in self._devices.values():
            for poll_class in (PollClass.FAST, PollClass.SLOW):
                if not st.requests(poll_class):
                    continue
                when = st.next_due[poll_class]
                if best is None or when < best[2]:
                    best = (st, poll_class, when)
        return best

    # --- one poll ---------------------------------------------------------

    async def _poll(self, st: DeviceState, poll_class: PollClass) -> None:
        started = time.monotonic()
        period = st.period(poll_class)
        due = st.next_due[poll_class] + period
        # a line that fell behind skips the missed slots instead of bursting to catch up
        st.next_due[poll_class] = due if due > started else started + period
        outcome = await self._read_all(st, st.requests(poll_class))
        if outcome.answered:
            self._poll_succeeded(st, poll_class, outcome.blocks, outcome.failed)
        else:
            assert outcome.last_error is not None
            self._poll_failed(st, outcome.last_error)
        if poll_class is PollClass.FAST:
            self._account_cycle(st.poll.device_id, time.monotonic() - started)

    async def _read_all(self, st: DeviceState, requests: list[ReadRequest]) -> _PollOutcome:
        """Send every request of a poll; a failing device's probe stops at its first silence."""
        outcome = _PollOutcome()
        probing = st.consecutive_failures > 0 or st.lost
        start = st.probe_start % len(requests) if probing and requests else 0
        if probing:  # the next probe starts one request further on
            st.probe_start = start + 1
        order = requests[start:] + requests[:start]
        for i, req in enumerate(order):
            try:
                outcome.blocks.append(await self._exchange_with_retries(st, req, st.poll.timeout_s))
                outcome.answered = True
            except ModbusException as exc:  # an answer: the device is there
                outcome.answered = True
                outcome.failed.append((req, f"{exc.reason}: {exc}"))
            except FieldError as exc:
                outcome.failed.append((req, f"{exc.reason}: {exc}"))
                outcome.last_error = exc
                if isinstance(exc, Disconnected) or (probing and not outcome.answered):
                    # port gone, or still silent: no timeout per request on it
                    outcome.failed.extend((r, f"skipped: {exc.reason}") for r in order[i + 1 :])
                    break
        return outcome

    async def _exchange_with_retries(
        self, st: DeviceState, req: ReadRequest, timeout_s: float
    ) -> Block:
        # a lost device gets one attempt per probe: retries would only multiply the time it steals
        attempts = 1 if st.lost else 1 + max(0, st.poll.retries)
        for attempt in range(attempts):
            try:
                return await self._paced(lambda: self.link.read(req, timeout_s))
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
            return await exchange()
        except Disconnected:
            if not self.link.is_open:
                self._last_open_failure = time.monotonic()
            raise
        finally:
            self._last_exchange_end = self.alive = time.monotonic()

    def _poll_succeeded(
        self,
        st: DeviceState,
        poll_class: PollClass,
        blocks: list[Block],
        failed: list[tuple[ReadRequest, str]],
    ) -> None:
        st.polls_ok += 1
        st.polls_partial += bool(failed)
        st.probe_start = 0
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

    def _poll_failed(self, st: DeviceState, exc: FieldError) -> None:
        st.polls_failed += 1
        st.consecutive_failures += 1
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
        """Probe a lost device ever more rarely (doubling, capped) so the others keep the line."""
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
