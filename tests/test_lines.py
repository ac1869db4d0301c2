"""drivers/line.py: line owners polling real pymodbus servers over ptys and TCP.

Bench session: several units on one virtual RS-485 line, one of them goes
silent or starts garbling its answers; we watch the comm-loss/restore
events, the typed failure counters, and how much line time the live devices
keep. Waits are on conditions with deadlines; the only fixed windows are the
measurement windows of the cycle benchmark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest

from core.errors import FieldTimeout, UnknownPoint, WriteNotAllowed
from drivers.line import MAX_QUEUED_REQUESTS, PROBE_SHARE, CommChange, DevicePoll, Line
from drivers.modbus import RtuLink, TcpLink
from drivers.types import PollClass, ReadRequest, Table
from simulator.pty import PtyPair
from tests.line_helpers import Outputs, device, run, wait_until
from tests.modbus_servers import FaultPlan, register_value, rtu_server, tcp_server


class WatchedRtuLink(RtuLink):
    """A real RtuLink that records when each exchange ran, to check the owner's discipline."""

    def __init__(self, port: str) -> None:
        super().__init__(port, 115200)
        self.in_flight = 0
        self.max_in_flight = 0
        self.spans: list[tuple[float, float]] = []

    async def _exchange(self, unit: int, pdu: bytes, fc: int, timeout_s: float) -> bytes:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        start = time.monotonic()
        try:
            return await super()._exchange(unit, pdu, fc, timeout_s)
        finally:
            self.spans.append((start, time.monotonic()))
            self.in_flight -= 1


def test_several_units_on_one_line_each_polled_correctly(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1, 2, 3]):
            devices = [device("fap", 1), device("efd-1", 2), device("gas-1", 3)]
            line = Line("rs485-1", RtuLink(pty_pair.a, 115200), devices, out)
            async with line:
                await wait_until(
                    lambda: all(
                        len(out.polls(d.device_id, PollClass.FAST)) >= 5
                        and len(out.polls(d.device_id, PollClass.SLOW)) >= 1
                        for d in devices
                    )
                )
            for d in devices:
                for result in out.polls(d.device_id):
                    for block in result.blocks:
                        assert block.request.unit == d.unit
                        if not block.request.table.is_bits:
                            start = block.request.address
                            expect = [
                                register_value(d.unit, start + i) for i in range(len(block.values))
                            ]
                            assert list(block.values) == expect
                    assert abs(result.ts_ms - time.time() * 1000) < 60_000
            assert not any(isinstance(i, CommChange) for i in out.items)
            assert all(row["polls_failed"] == 0 for row in line.stats().values())

    run(bench())


def test_dead_unit_raises_comm_loss_then_restore(
    pty_pair: PtyPair, caplog: pytest.LogCaptureFixture
) -> None:
    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1, 2, 3]) as (_, plan):
            plan.modes[3] = "silent"
            devices = [device("fap", 1), device("efd-1", 2), device("dead", 3)]
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), devices, out) as line:
                await wait_until(lambda: len(out.changes("dead")) == 1)
                lost = out.changes("dead")[0]
                assert (lost.lost, lost.reason, lost.failures) == (True, "timeout", 3)
                stats = line.stats()["dead"]
                assert stats["timeout"] >= 3 * 2  # three polls of two attempts each
                assert stats["lost"] == 1 and stats["polls_ok"] == 0
                assert line.is_lost("dead")
                polls_before = len(out.polls("fap"))
                await wait_until(lambda: len(out.polls("fap")) > polls_before + 20)
                plan.modes[3] = "ok"  # the device is repaired
                await wait_until(lambda: len(out.changes("dead")) == 2)
                restored = out.changes("dead")[1]
                assert restored.lost is False and restored.failures >= 3
                await wait_until(lambda: len(out.polls("dead")) >= 1)
                assert not line.is_lost("dead")
        # logged once when lost and once when back, however many probes failed in between
        records = [r.getMessage() for r in caplog.records if r.name == "drivers.line"]
        dead = [m for m in records if "device dead" in m and r_level(caplog, m) >= logging.WARNING]
        assert len(dead) == 2, dead
        assert "lost after 3 failed polls" in dead[0]
        assert "answers again" in dead[1]
        assert out.changes("fap") == [] and out.changes("efd-1") == []

    caplog.set_level(logging.INFO, logger="drivers.line")
    run(bench())


def r_level(caplog: pytest.LogCaptureFixture, message: str) -> int:
    return next(r.levelno for r in caplog.records if r.getMessage() == message)


def _snapshot(line: Line, device_id: str) -> tuple[int, int, int]:
    row = line.stats()[device_id]
    return row["polls_ok"], row["polls_failed"], row["polls_partial"]


# mode -> (counter it bumps, what a poll of the device then is)
GARBLE_MODES = [
    ("crc", "crc", "failed"),
    ("wrong_unit", "wrong_unit", "failed"),
    ("short", "wrong_length", "partial"),  # the 8-bit discrete read is not shortened
    ("exception", "exception", "partial"),  # an exception answer is no comm failure
    ("garbage", "garbage", "failed"),
    ("silent", "timeout", "failed"),
]


def test_garbled_answers_are_counted_by_type_and_the_poller_survives(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1, 2]) as (_, plan):
            # "bad" has fast polls only: each poll is one holding + one discrete read
            bad = dataclasses.replace(device("bad", 2, comm_fault_after=1000), slow=[])
            devices = [device("good", 1), bad]
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), devices, out) as line:
                for mode, reason, verdict in GARBLE_MODES:
                    plan.modes[2] = mode
                    good_before = len(out.polls("good"))
                    await wait_until(lambda r=reason: line.stats()["bad"].get(r, 0) >= 4)
                    # the mode is in force now: what do the next polls count as?
                    ok0, failed0, partial0 = _snapshot(line, "bad")
                    seen = line.stats()["bad"][reason]
                    await wait_until(lambda r=reason, n=seen: line.stats()["bad"][r] >= n + 6)
                    ok1, failed1, partial1 = _snapshot(line, "bad")
                    if verdict == "failed":
                        assert (ok1 - ok0, failed1 > failed0) == (0, True), mode
                    else:  # answered, some blocks missing: no comm failure
                        assert (failed1 - failed0, ok1 > ok0) == (0, True), mode
                        assert partial1 - partial0 == ok1 - ok0, mode
                    await wait_until(lambda n=good_before: len(out.polls("good")) > n + 3)
                plan.modes[2] = "ok"
                ok_before = line.stats()["bad"]["polls_ok"]
                await wait_until(lambda: line.stats()["bad"]["polls_ok"] > ok_before)
                stats = line.stats()
                assert stats["good"]["polls_failed"] == 0
                assert stats["bad"]["lost"] == 0
                for result in out.polls("bad"):  # nothing damaged passed on
                    for block in result.blocks:
                        if block.request.table is Table.HOLDING:
                            assert block.values == (200, 201, 202, 203)
                        elif block.request.table is Table.DISCRETE:
                            assert block.values == (1, 0, 1, 0, 1, 0, 1, 0)
                    for req, why in result.failed:  # each failed block says why
                        assert req.unit == 2 and why.reason in {"wrong_length", "exception"}

    run(bench())


def test_a_failed_block_does_not_hide_a_fire_in_the_others(pty_pair: PtyPair) -> None:
    """Review r6: register 1000 answers exception 2; the good block must still go out."""

    async def bench() -> None:
        out = Outputs()
        fire_block = ReadRequest(1, Table.HOLDING, 0, 16)
        missing = ReadRequest(1, Table.HOLDING, 1000, 1)  # not in the panel's map
        panel = DevicePoll(
            device_id="fap",
            unit=1,
            fast=[missing, fire_block],  # the bad block first: it must not stop the poll
            slow=[],
            fast_period_s=0.02,
            slow_period_s=1.0,
            timeout_s=0.1,
            retries=2,
            comm_fault_after=1,  # even one failed poll would raise comm loss
            backoff_max_s=1.0,
        )
        link = RtuLink(pty_pair.a, 115200)
        async with rtu_server(pty_pair.b, [1]), Line("rs485-1", link, [panel], out) as line:
            await wait_until(lambda: len(out.polls("fap")) >= 5)
        for result in out.polls("fap"):
            assert [b.request for b in result.blocks] == [fire_block]
            assert result.blocks[0].values == tuple(100 + a for a in range(16))
            assert [(req, str(why)) for req, why in result.failed] == [
                (missing, "illegal data address (2)")
            ]
        assert out.changes("fap") == []
        stats = line.stats()["fap"]
        assert stats["polls_failed"] == 0 and stats["lost"] == 0
        # an illegal address is not retried: one exception answer per poll
        assert 0 <= stats["exception"] - stats["polls_partial"] <= 1

    run(bench())


def test_a_busy_device_is_retried_and_never_declared_lost(pty_pair: PtyPair) -> None:
    """Exception 6 (busy) during an alarm storm proves the device is there."""

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1]) as (_, plan):
            plan.modes[1] = "busy"
            fap = device("fap", 1, retries=1, comm_fault_after=1)
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [fap], out) as line:
                await wait_until(lambda: len(out.polls("fap", PollClass.FAST)) >= 3)
                for result in out.polls("fap"):
                    assert result.blocks == []
                    assert {str(why) for _, why in result.failed} == {"server device busy (6)"}
                # busy is worth asking again: two attempts per request
                stats = line.stats()["fap"]
                assert stats["exception"] >= 2 * 3 * 2
                plan.modes[1] = "ok"
                await wait_until(lambda: bool(out.polls("fap")[-1].blocks))
                assert out.polls("fap")[-1].failed == []
            assert out.changes("fap") == []
            assert line.stats()["fap"]["polls_failed"] == 0

    run(bench())


def test_a_dead_device_is_probed_with_one_request(pty_pair: PtyPair) -> None:
    """A healthy poll reads every block; a failing device's probe stops at the first silence."""

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1]) as (_, plan):
            plan.modes[1] = "silent"
            dead = device("dead", 1, retries=0, comm_fault_after=3, backoff_max_s=0.05)
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [dead], out) as line:
                await wait_until(lambda: len(out.changes("dead")) == 1)
                stats = line.stats()["dead"]
                # 3 failed polls: the first sends both fast requests, the others one each
                assert stats["timeout"] <= 2 + 2 + 1  # (+ one slow probe)
                plan.modes[1] = "ok"
                await wait_until(lambda: len(out.changes("dead")) == 2)
                await wait_until(lambda: len(out.polls("dead", PollClass.FAST)) >= 2)
                assert out.polls("dead", PollClass.FAST)[-1].failed == []
                assert len(out.polls("dead", PollClass.FAST)[-1].blocks) == 2

    run(bench())


def test_the_owner_stays_alive_through_a_long_step_of_timeouts_and_retries(
    pty_pair: PtyPair,
) -> None:
    """A silent device's first poll runs every request with every retry in one step (here
    2 x 6 x 0.2 s = 2.4 s; on site up to minutes with slow settings). The watchdog reads
    `alive`: it must move with each exchange, or a healthy agent is killed for a silent
    panel and restarts before it can ever report the comm loss."""

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1]) as (_, plan):
            plan.modes[1] = "silent"
            slow = device("slow", 1, timeout_s=0.2, retries=5, period_s=5.0)
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [slow], out) as line:
                stalest = 0.0
                start = time.monotonic()
                # the first step ends after its 2 x 6 timeouts
                while line.stats()["slow"].get("timeout", 0) < 12 and time.monotonic() - start < 10:
                    stalest = max(stalest, time.monotonic() - line.alive)
                    await asyncio.sleep(0.01)  # sampling the watchdog's view, not a sync
                assert line.stats()["slow"].get("timeout", 0) >= 12, "the first poll did not end"
                assert time.monotonic() - start >= 2.0, "the step was not long: test is moot"
                assert stalest < 3 * 0.2, f"alive was {stalest:.2f} s old during one step"

    run(bench())


def _live_polls(line: Line) -> int:
    stats = line.stats()
    return stats["a"]["polls_ok"] + stats["b"]["polls_ok"]


async def _measure_live_polls(
    port: str, plan: FaultPlan, *, dead: bool, backoff_max_s: float, window_s: float
) -> tuple[int, float]:
    """Good-device polls completed in a fixed window (after the dead one is declared lost)."""
    plan.modes[3] = "silent" if dead else "ok"
    devices = [
        # live devices on a 10 ms period: the healthy count is set by the period, not by CPU speed
        device("a", 1, period_s=0.01),
        device("b", 2, period_s=0.01),
        device(
            "c",
            3,
            period_s=0.0,
            timeout_s=0.1,
            retries=1,
            comm_fault_after=2,
            backoff_max_s=backoff_max_s,
        ),
    ]
    if not dead:
        devices.pop()
    out = Outputs()
    async with Line("rs485-1", RtuLink(port, 115200), devices, out) as line:
        if dead:
            await wait_until(lambda: len(out.changes("c")) == 1)
            # let the backoff reach its cap: the steady state of a long-dead device
            await wait_until(lambda: line.stats()["c"]["backoff_ms"] >= backoff_max_s * 1000)
        start = _live_polls(line)
        await asyncio.sleep(window_s)  # a measurement window, not a synchronisation
        return _live_polls(line) - start, line.cycle_times.mean_s


def test_a_dead_device_does_not_starve_the_line(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, 2, 3]) as (_, plan):
            window = 1.5
            healthy, cycle_healthy = await _measure_live_polls(
                pty_pair.a, plan, dead=False, backoff_max_s=1.0, window_s=window
            )
            backed_off, cycle_dead = await _measure_live_polls(
                pty_pair.a, plan, dead=True, backoff_max_s=1.0, window_s=window
            )
            # a longer window here: a probe's whole timeout is a burst in a short one
            no_backoff, cycle_nobackoff = await _measure_live_polls(
                pty_pair.a, plan, dead=True, backoff_max_s=0.0, window_s=2 * window
            )
        ratio = backed_off / healthy
        ratio_without = no_backoff / (2 * healthy)
        print(
            f"\nlive-device polls in {window} s: healthy line {healthy}, "
            f"dead device with backoff {backed_off} (ratio {ratio:.2f}), "
            f"without backoff {no_backoff} (ratio {ratio_without:.3f}); "
            f"mean fast cycle {cycle_healthy * 1000:.2f} / {cycle_dead * 1000:.2f} / "
            f"{cycle_nobackoff * 1000:.2f} ms"
        )
        assert healthy > 150  # ideal: 2 devices x 150 periods
        assert ratio >= 0.75
        # with no backoff at all, the probes' share of the line still keeps it for the live
        # devices: 1 - PROBE_SHARE on an idle machine; CI's loaded cores measured 0.43 in a
        # 1.5 s window. Without the share it was below 0.25: the bound sits between.
        assert ratio_without >= 1 - PROBE_SHARE - 0.4

    run(bench())


def test_rtu_and_tcp_lines_run_concurrently_and_a_stuck_one_blocks_nobody(
    pty_pair: PtyPair,
) -> None:
    async def bench() -> None:
        rtu_out, tcp_out = Outputs(), Outputs()
        async with rtu_server(pty_pair.b, [1, 2]), tcp_server([5]) as (_, tcp_plan, port):
            rtu = Line(
                "rs485-1",
                RtuLink(pty_pair.a, 115200),
                [device("fap", 1), device("efd", 2)],
                rtu_out,
                inter_frame_gap_s=0.002,
            )
            tcp = Line(
                "plc",
                TcpLink("127.0.0.1", port),
                [device("ai", 5, timeout_s=1.0, retries=0, comm_fault_after=1)],
                tcp_out,
            )
            async with rtu, tcp:
                await wait_until(lambda: len(tcp_out.polls("ai")) >= 3)
                assert tcp_out.polls("ai")[0].blocks[0].values == (500, 501, 502, 503)
                tcp_plan.delay_s[5] = 3.0  # the TCP device hangs on its next request
                rtu_before = len(rtu_out.polls("fap"))
                await wait_until(lambda: len(tcp_out.changes("ai")) == 1)
                # the RTU line kept polling while the TCP line waited out its 1 s timeout
                assert len(rtu_out.polls("fap")) - rtu_before > 20
                tcp_plan.delay_s[5] = 0.0
                await wait_until(lambda: len(tcp_out.changes("ai")) == 2, timeout_s=15)
            assert rtu_out.changes("fap") == []

    run(bench())


def test_read_now_goes_through_the_owner(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        out = Outputs()
        gap = 0.003
        async with rtu_server(pty_pair.b, [1, 2, 3]) as (_, plan):
            plan.modes[3] = "silent"
            link = WatchedRtuLink(pty_pair.a)
            efd = dataclasses.replace(
                device("efd", 2), writable=frozenset({(Table.HOLDING, 7), (Table.COIL, 3)})
            )
            devices = [device("fap", 1), efd, device("dead", 3, backoff_max_s=0.2)]
            async with Line("rs485-1", link, devices, out, inter_frame_gap_s=gap) as line:
                await wait_until(lambda: len(out.polls("fap")) >= 3)
                reads = [
                    line.read_now("efd", [ReadRequest(2, Table.HOLDING, a, 2)])
                    for a in range(MAX_QUEUED_REQUESTS)
                ]
                answers = await asyncio.gather(*reads)
                for a, answer in enumerate(answers):
                    assert answer.blocks[0].values == (200 + a, 201 + a)
                with pytest.raises(FieldTimeout):
                    await line.read_now("dead", [ReadRequest(3, Table.HOLDING, 0, 1)])
                with pytest.raises(UnknownPoint):
                    await line.read_now("nope", [ReadRequest(9, Table.HOLDING, 0, 1)])
                await line.write_register("efd", 7, 777)
                answer = await line.read_now("efd", [ReadRequest(2, Table.HOLDING, 7, 1)])
                assert answer.blocks[0].values == (777,)
                alive = line.alive
                await wait_until(lambda: line.alive > alive)
            assert link.max_in_flight == 1  # strictly one request at a time on the line
            gaps = [nxt[0] - prev[1] for prev, nxt in zip(link.spans, link.spans[1:], strict=False)]
            print(f"\n{len(link.spans)} exchanges, smallest gap {min(gaps) * 1000:.2f} ms")
            assert min(gaps) >= gap * 0.95

    run(bench())


def test_a_missing_port_loses_its_devices_without_blocking_other_lines(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        gone, live = Outputs(), Outputs()
        async with rtu_server(pty_pair.b, [1]):
            unplugged = Line(
                "rs485-2",
                RtuLink("/dev/alarmgw-unplugged-adapter"),
                [device("x", 1, period_s=0.0, comm_fault_after=2)],
                gone,
            )
            working = Line("rs485-1", RtuLink(pty_pair.a, 115200), [device("fap", 1)], live)
            async with unplugged, working:
                await wait_until(lambda: len(gone.changes("x")) == 1, timeout_s=15)
                assert gone.changes("x")[0].reason == "disconnected"
                polls = len(live.polls("fap"))
                alive = unplugged.alive
                await wait_until(lambda: len(live.polls("fap")) > polls + 20)
                await wait_until(lambda: unplugged.alive > alive)
                # the port is retried at a measured pace, not in a busy loop
                assert unplugged.stats()["x"]["disconnected"] <= 4

    run(bench())


def test_writes_are_refused_unless_declared_writable(pty_pair: PtyPair) -> None:
    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [2]) as (_, plan):
            efd = dataclasses.replace(  # not polled: every request on the wire is ours
                device("efd", 2),
                fast=[],
                slow=[],
                writable=frozenset({(Table.HOLDING, 7), (Table.COIL, 3)}),
            )
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [efd], out) as line:
                refused = [
                    line.write_register("efd", 8, 1),  # not declared
                    line.write_register("efd", 3, 1),  # declared as a coil, not a register
                    line.write_coil("efd", 7, True),  # declared as a register, not a coil
                    line.write_coil("efd", 4, False),
                ]
                for attempt in refused:
                    with pytest.raises(WriteNotAllowed):
                        await attempt
                with pytest.raises(UnknownPoint):
                    await line.write_register("nope", 7, 1)
                before = plan.answered.get(2, 0)
                reads = [ReadRequest(2, Table.HOLDING, 3, 6), ReadRequest(2, Table.COIL, 3, 2)]
                assert (await line.read_now("efd", reads)).blocks[0].values == (
                    203,
                    204,
                    205,
                    206,
                    207,
                    208,
                )
                assert plan.answered[2] == before + 2  # the refused writes never reached the wire
                await line.write_register("efd", 7, 4321)
                await line.write_coil("efd", 3, True)
                blocks = (await line.read_now("efd", reads)).blocks
                assert blocks[0].values == (203, 204, 205, 206, 4321, 208)
                assert blocks[1].values == (1, 1)  # coil 3 was 0

    run(bench())
