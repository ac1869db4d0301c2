"""Whole-line faults, and who gets the line: drivers/line.py against real links.

Bench session: an RS-485 adapter unplugged mid-run (its pty pair removed) and
plugged back; a Modbus TCP gateway with ten devices behind it that starts
black-holing connects; a gateway that answers "target failed to respond" for a
dead unit; dead devices and live reads competing with the polls that carry
alarms. Waits are on conditions with deadlines; the only fixed windows are the
measurement windows of the share checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from agent.config import DEVICE
from core.errors import Disconnected, FieldTimeout, LineBusy
from drivers.line import (
    LINK_DOWN_AFTER,
    MAX_QUEUED_REQUESTS,
    PROBE_SHARE,
    REQUEST_SHARE,
    SILENT_CONFIRM,
    Line,
)
from drivers.modbus import RtuLink, TcpLink
from drivers.types import ReadRequest, Table
from simulator.blackhole import BlackHole
from simulator.pty import PtyPair
from tests.line_helpers import Outputs, device, run, wait_until
from tests.modbus_servers import free_tcp_port, rtu_server, tcp_server


def _disconnects(line: Line) -> int:
    return sum(row.get("disconnected", 0) for row in line.stats().values())


def test_an_unplugged_adapter_takes_every_device_down_at_once_and_back(tmp_path: Path) -> None:
    """The pty pair is removed mid-run (the USB adapter unplugged): every device on the
    line is reported lost after LINK_DOWN_AFTER failed attempts in all, not after three
    failed polls each; plugged back, each reports its restore."""
    path = tmp_path / "ttyUSB0"
    units = [1, 2, 3]

    async def bench() -> None:
        out = Outputs()
        devices = [device(f"d{u}", u, period_s=0.05) for u in units]
        line = Line("rs485-1", RtuLink(str(path), 115200), devices, out)
        plugged = PtyPair(link_a=path)
        try:
            async with line:
                async with rtu_server(plugged.b, units):
                    await wait_until(lambda: all(out.polls(d.device_id) for d in devices))
                    plugged.close()  # unplugged: the agent's end hangs up, the path is gone
                    await wait_until(lambda: all(out.changes(d.device_id) for d in devices))
                    assert line.down is not None
                    for d in devices:
                        (lost,) = out.changes(d.device_id)
                        assert (lost.lost, lost.reason) == (True, "disconnected")
                    # one line-wide verdict: no device paid its own comm_fault_after polls
                    assert _disconnects(line) <= LINK_DOWN_AFTER
                    with pytest.raises(Disconnected, match="is down"):  # at once, no timeout
                        await line.read_now("d1", [ReadRequest(1, Table.HOLDING, 0, 1)])
                plugged = PtyPair(link_a=path)  # plugged back in, devices powered all along
                async with rtu_server(plugged.b, units):
                    await wait_until(
                        lambda: all(len(out.changes(d.device_id)) == 2 for d in devices)
                    )
                    assert line.down is None
                    for d in devices:
                        assert out.changes(d.device_id)[1].lost is False
                    polls = len(out.polls("d1"))
                    await wait_until(lambda: len(out.polls("d1")) > polls + 5)
        finally:
            plugged.close()

    run(bench())


def test_a_black_holing_tcp_gateway_takes_its_ten_devices_down_together() -> None:
    """A gateway with ten units starts black-holing connects (a listener that never
    accepts): the ten comm losses come from one line-down after two failed link attempts,
    not from ten devices each paying connect timeout x (1 + retries) x 3 polls."""
    port = free_tcp_port()
    units = list(range(1, 11))

    async def bench() -> None:
        out = Outputs()
        devices = [device(f"d{u}", u, period_s=0.1, timeout_s=0.2) for u in units]
        line = Line("gw", TcpLink("127.0.0.1", port), devices, out)  # default connect timeout
        async with line:
            async with tcp_server(units, port=port):
                await wait_until(lambda: all(out.polls(d.device_id) for d in devices))
                before = _disconnects(line)  # the line may have started before the server
            with BlackHole(port):
                await wait_until(lambda: all(out.changes(d.device_id) for d in devices), 20)
                assert line.down is not None
                assert _disconnects(line) - before <= LINK_DOWN_AFTER
                assert all(out.changes(d.device_id)[0].lost for d in devices)
            async with tcp_server(units, port=port):
                await wait_until(
                    lambda: all(len(out.changes(d.device_id)) == 2 for d in devices), 20
                )
                assert line.down is None

    run(bench())


def test_a_cut_cable_takes_every_device_down_together(pty_pair: PtyPair) -> None:
    """The adapter stays, the bus behind it goes silent (cable cut, A/B swapped, bus power
    off): once two devices in a row are silent, the line asks the others once, and every
    device is reported lost together; a module polled every 2 s does not wait for its own
    three polls (it took comm_fault_after x slow_poll_s)."""

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1, 2, 3, 4]) as (_, plan):
            devices = [device(f"d{u}", u, period_s=0.05) for u in (1, 2, 3)]
            module = dataclasses.replace(device("ai", 4), fast=[], slow_period_s=2.0)
            everyone = [*devices, module]
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), everyone, out) as line:
                await wait_until(lambda: all(out.polls(d.device_id) for d in everyone))
                for unit in (1, 2, 3, 4):
                    plan.modes[unit] = "silent"
                await wait_until(lambda: all(out.changes(d.device_id) for d in everyone))
                for d in everyone:
                    assert out.changes(d.device_id)[0].lost
                    assert out.changes(d.device_id)[0].reason == "bus_silent"
                assert line.stats()["ai"]["polls_failed"] <= 1  # not its own three polls
                for unit in (1, 2, 3, 4):
                    plan.modes[unit] = "ok"
                await wait_until(lambda: all(len(out.changes(d.device_id)) == 2 for d in everyone))

    run(bench())


def _timeouts(line: Line) -> int:
    return sum(row.get("timeout", 0) for row in line.stats().values())


def test_finding_a_cut_cable_asks_a_fixed_number_of_devices_however_many_there_are(
    pty_pair: PtyPair,
) -> None:
    """Twenty devices, the bus goes silent: after two silent devices the line asks
    SILENT_CONFIRM others, not all eighteen (each a timeout: on a long line the cut was
    found after N timeouts, 14 s for 24 detectors with the defaults)."""
    units = list(range(1, 21))

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, units) as (_, plan):
            devices = [device(f"d{u}", u, period_s=0.05) for u in units]
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), devices, out) as line:
                await wait_until(lambda: all(out.polls(d.device_id) for d in devices), 20)
                before = _timeouts(line)
                for unit in units:
                    plan.modes[unit] = "silent"
                await wait_until(lambda: all(out.changes(d.device_id) for d in devices), 20)
                spent = _timeouts(line) - before
        # two devices' first failing polls (2 requests x 2 attempts each), then the others
        # asked; a third device's poll may slip in between: the bound does not grow with N
        assert spent <= 3 * 2 * 2 + SILENT_CONFIRM < 2 * 2 * 2 + len(units) - 2
        assert {out.changes(d.device_id)[0].reason for d in devices} == {"bus_silent"}

    run(bench())


def test_a_tcp_gateway_whose_serial_side_is_silent_is_reported_as_that() -> None:
    """The gateway accepts connections, every device behind it is silent: each device is
    lost as `gateway_silent` (not `disconnected`: the TCP side works, and the line is not
    down), and the connection is not torn down and rebuilt every few requests."""

    async def bench() -> None:
        out = Outputs()
        units = list(range(1, 7))
        devices = [device(f"d{u}", u, period_s=0.05) for u in units]
        async with tcp_server(units) as (_, plan, port):
            line = Line("gw", TcpLink("127.0.0.1", port), devices, out)
            async with line:
                await wait_until(lambda: all(out.polls(d.device_id) for d in devices))
                for unit in units:
                    plan.modes[unit] = "silent"
                await wait_until(lambda: all(out.changes(d.device_id) for d in devices), 20)
                assert line.down is None
                probes = _timeouts(line)
                await wait_until(lambda: _timeouts(line) > probes + 10, 20)  # probing on
                assert _disconnects(line) == 0
        assert {out.changes(d.device_id)[0].reason for d in devices} == {"gateway_silent"}

    run(bench())


def test_two_dead_devices_do_not_take_the_live_ones_with_them(pty_pair: PtyPair) -> None:
    """Two devices silent one after the other make the line ask the rest once: they answer,
    so only the two dead ones are reported, each after its own comm_fault_after polls."""

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1, 2, 3, 4]) as (_, plan):
            plan.modes[3] = plan.modes[4] = "silent"
            devices = [device(f"d{u}", u, period_s=0.05) for u in (1, 2, 3, 4)]
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), devices, out) as line:
                await wait_until(lambda: bool(out.changes("d3") and out.changes("d4")))
                for dead in ("d3", "d4"):
                    assert out.changes(dead)[0].failures == 3
                polls = len(out.polls("d1"))
                await wait_until(lambda: len(out.polls("d1")) > polls + 20)
            assert out.changes("d1") == [] and out.changes("d2") == []
            assert line.stats()["d1"]["polls_failed"] == 0

    run(bench())


def test_an_endpoint_gone_between_polls_is_seen_at_once_not_at_the_next_poll() -> None:
    """An analog module polled every 5 s: its TCP endpoint closes just after a poll. The
    line sees the closed connection while idle and retries the link on its own clock: the
    device is reported lost before its next poll was even due (it took ~10 s)."""
    port = free_tcp_port()

    async def bench() -> None:
        out = Outputs()
        module = dataclasses.replace(device("ai", 1), fast=[], slow_period_s=5.0)
        line = Line("tcp-1", TcpLink("127.0.0.1", port), [module], out)
        try:
            async with tcp_server([1], port=port):
                line.start()
                await wait_until(lambda: bool(out.polls("ai")))
            await wait_until(lambda: bool(out.changes("ai")), 20)
            assert line.down is not None
            # no poll of the module failed: the loss came from the link itself
            assert line.stats()["ai"]["polls_failed"] == 0
        finally:
            await line.close()

    run(bench())


def test_a_unit_a_gateway_cannot_reach_is_lost_like_a_silent_one(pty_pair: PtyPair) -> None:
    """Exception 11 (gateway target device failed to respond) is the gateway's answer, not
    the device's: it counts toward comm loss; other exception answers still do not."""

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1, 2]) as (_, plan):
            plan.modes[2] = "gateway_no_answer"
            devices = [device("live", 1), device("behind", 2)]
            async with Line("gw", RtuLink(pty_pair.a, 115200), devices, out) as line:
                await wait_until(lambda: len(out.changes("behind")) == 1)
                lost = out.changes("behind")[0]
                assert (lost.lost, lost.reason) == (True, "gateway_no_answer")
                assert line.stats()["behind"]["gateway_no_answer"] >= 3
                plan.modes[2] = "ok"
                await wait_until(lambda: len(out.changes("behind")) == 2)
            assert out.changes("live") == []

    run(bench())


def test_the_default_probe_period_keeps_a_returning_device_within_seconds(
    pty_pair: PtyPair,
) -> None:
    """However long a device was silent, it is probed at least every backoff_max_s, whose
    default is what a technician gets: the backoff stops growing there (it went to 30 s)."""
    cap = float(DEVICE["backoff_max_s"].default)

    async def bench() -> None:
        out = Outputs()
        async with rtu_server(pty_pair.b, [1]) as (_, plan):
            plan.modes[1] = "silent"
            dead = device("dead", 1, period_s=1.0, timeout_s=0.05, backoff_max_s=cap)
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [dead], out) as line:
                # backoff doubles from the 1 s period: 1, 2, 4, then the cap
                await wait_until(lambda: line.stats()["dead"]["polls_failed"] >= 6, 30)
                assert line.stats()["dead"]["backoff_ms"] == round(cap * 1000)
                assert line.polling("dead").window_s <= dead.comm_fault_window_s + cap

    assert cap <= 5.0  # a device back is reported within ~cap + one poll: well under 10 s
    run(bench())


WINDOW_S = 3.0  # long beside SHARE_BURST_S: the share, not the burst, sets the figure


async def _live_polls_in_window(line: Line, device_id: str, window_s: float) -> int:
    start = line.stats()[device_id]["polls_ok"]
    await asyncio.sleep(window_s)  # a measurement window, not a synchronisation
    return line.stats()[device_id]["polls_ok"] - start


def test_many_dead_devices_take_at_most_their_share_of_a_busy_line(pty_pair: PtyPair) -> None:
    """Six dead devices always due for a probe, beside a live device polled every 10 ms:
    the probes take at most PROBE_SHARE of the line (today they took nearly all of it)."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, *range(2, 8)]) as (_, plan):
            # a 10 ms period: the healthy count is set by the period, not by CPU speed
            live = device("live", 1, period_s=0.01)
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [live], Outputs()) as line:
                await wait_until(lambda: line.stats()["live"]["polls_ok"] > 10)
                healthy = await _live_polls_in_window(line, "live", WINDOW_S)
            for unit in range(2, 8):
                plan.modes[unit] = "silent"
            dead = [
                device(f"dead{u}", u, timeout_s=0.05, comm_fault_after=1, backoff_max_s=0.01)
                for u in range(2, 8)
            ]
            out = Outputs()
            link = RtuLink(pty_pair.a, 115200)
            async with Line("rs485-1", link, [live, *dead], out) as line:
                await wait_until(lambda: all(out.changes(d.device_id) for d in dead))
                crowded = await _live_polls_in_window(line, "live", WINDOW_S)
                probes = sum(line.stats()[d.device_id]["polls_failed"] for d in dead)
        print(f"\nlive polls in {WINDOW_S} s: alone {healthy}, beside 6 dead {crowded}")
        assert healthy > 200  # ideal: 300 periods
        assert crowded / healthy >= 1 - PROBE_SHARE - 0.1  # slack for scheduling noise
        assert probes > 6  # and the dead were still probed

    run(bench())


def test_lost_devices_that_answered_before_are_probed_cheaply_on_a_busy_line(
    pty_pair: PtyPair,
) -> None:
    """A busy line (a live device always due) and four devices that answered, then fell
    silent: a probe waits a few times their slowest answer, not their whole timeout, so
    within the same PROBE_SHARE each is asked several times as often (at the 0.5 s
    default, eight lost devices were asked every 16 s: past the 5 s backoff cap)."""
    units = [2, 3, 4, 5]

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, *units]) as (_, plan):
            live = device("live", 1, period_s=0.0)
            dead = [
                device(f"d{u}", u, timeout_s=0.3, comm_fault_after=1, backoff_max_s=0.01)
                for u in units
            ]
            out = Outputs()
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [live, *dead], out) as line:
                await wait_until(lambda: all(out.polls(d.device_id) for d in dead))
                for unit in units:
                    plan.modes[unit] = "silent"
                await wait_until(lambda: all(out.changes(d.device_id) for d in dead))
                before = sum(line.stats()[d.device_id]["polls_failed"] for d in dead)
                await asyncio.sleep(2 * WINDOW_S)  # a measurement window, not a synchronisation
                probes = sum(line.stats()[d.device_id]["polls_failed"] for d in dead) - before
        # whole-timeout probes fit PROBE_SHARE x 6 s / 0.3 s = 5 into the window; short ones
        # (0.1 s, every fourth one whole: 0.15 s on average) about twice as many
        full_timeout_probes = PROBE_SHARE * 2 * WINDOW_S / 0.3
        print(f"\nprobes of 4 lost devices in {2 * WINDOW_S} s on a busy line: {probes}")
        assert probes >= 1.5 * full_timeout_probes

    run(bench())


def test_a_device_back_slower_than_it_was_is_still_seen(pty_pair: PtyPair) -> None:
    """On a busy line a short probe would miss an answer slower than before: every
    FULL_PROBE_EVERY-th probe waits the whole timeout, so the device is restored all the
    same (on an idle line every probe does)."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, 2]) as (_, plan):
            live = device("live", 2, period_s=0.0)  # a busy line: probes go on the share
            slow = device("slow", 1, timeout_s=0.5, comm_fault_after=1, backoff_max_s=0.05)
            out = Outputs()
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [live, slow], out) as line:
                await wait_until(lambda: bool(out.polls("slow")))
                plan.modes[1] = "silent"
                await wait_until(lambda: bool(out.changes("slow")))
                plan.delay_s[1] = 0.3  # back, answering 0.3 s late: past a short probe
                plan.modes[1] = "ok"
                missed = line.stats()["slow"]["timeout"]
                await wait_until(lambda: len(out.changes("slow")) == 2, 20)
                assert line.stats()["slow"]["timeout"] > missed  # short probes missed it
        assert not out.changes("slow")[1].lost

    run(bench())


def test_parallel_reads_of_a_dead_device_leave_the_polls_their_share(pty_pair: PtyPair) -> None:
    """Six callers read a dead device in a loop (each read times out): live polls keep at
    least 1 - REQUEST_SHARE of a busy line; a full queue answers LineBusy at once."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1, 2]) as (_, plan):
            plan.modes[2] = "silent"
            live = device("live", 1, period_s=0.01)  # the count is set by the period
            dead = device("dead", 2, timeout_s=0.1, comm_fault_after=1000)
            busy = 0
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [live], Outputs()) as line:
                await wait_until(lambda: line.stats()["live"]["polls_ok"] > 10)
                healthy = await _live_polls_in_window(line, "live", WINDOW_S)
            dead_only = dataclasses.replace(dead, fast=[], slow=[])  # read, never polled
            async with Line(
                "rs485-1", RtuLink(pty_pair.a, 115200), [live, dead_only], Outputs()
            ) as line:

                async def reader() -> None:
                    nonlocal busy
                    while True:
                        try:
                            await line.read_now("dead", [ReadRequest(2, Table.HOLDING, 0, 1)])
                        except LineBusy:
                            busy += 1
                            await asyncio.sleep(0.05)  # a client retrying, not a sync
                        except Disconnected:
                            return
                        except Exception:
                            await asyncio.sleep(0)

                readers = [asyncio.create_task(reader()) for _ in range(6)]
                try:
                    await wait_until(lambda: line.stats()["dead"].get("timeout", 0) > 3)
                    crowded = await _live_polls_in_window(line, "live", WINDOW_S)
                finally:
                    for task in readers:
                        task.cancel()
                    await asyncio.gather(*readers, return_exceptions=True)
        print(f"\nlive polls in {WINDOW_S} s: alone {healthy}, beside 6 readers {crowded}")
        assert crowded / healthy >= 1 - REQUEST_SHARE - 0.1
        assert busy > 0  # six readers, four places: some were told busy

    run(bench())


def test_the_queue_is_bounded_and_a_request_nobody_waits_for_is_never_sent(
    pty_pair: PtyPair,
) -> None:
    async def bench() -> None:
        async with rtu_server(pty_pair.b, [2]) as (_, plan):
            plan.modes[2] = "silent"
            # not polled: every request on the wire is a read of ours (two attempts each)
            dead = dataclasses.replace(device("dead", 2, timeout_s=0.3), fast=[], slow=[])
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [dead], Outputs()) as line:
                req = [ReadRequest(2, Table.HOLDING, 0, 1)]
                first = asyncio.create_task(line.read_now("dead", req))
                await wait_until(lambda: plan.answered.get(2, 0) == 1)  # on the wire
                waiting = [asyncio.create_task(line.read_now("dead", req)) for _ in range(4)]
                await asyncio.sleep(0)  # each queues its request
                with pytest.raises(LineBusy, match="busy"):  # a fifth waiting: refused at once
                    await line.read_now("dead", req)
                for task in waiting:  # their callers give up while they wait
                    task.cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
                with pytest.raises(FieldTimeout):
                    await first
                with pytest.raises(FieldTimeout):  # the next read goes on the wire next
                    await line.read_now("dead", req)
                # two reads of two attempts each: the four abandoned ones were never sent
                assert plan.answered[2] == 4
        assert MAX_QUEUED_REQUESTS == 4

    run(bench())


def test_a_request_that_cannot_start_in_time_is_answered_busy(pty_pair: PtyPair) -> None:
    """Polls of a slow line come first; a read that waited its whole allowance is dropped
    with LineBusy instead of being run for a caller that has given up."""

    async def bench() -> None:
        async with rtu_server(pty_pair.b, [1]):
            live = device("live", 1, period_s=0.0)
            async with Line("rs485-1", RtuLink(pty_pair.a, 115200), [live], Outputs()) as line:
                req = [ReadRequest(1, Table.HOLDING, 0, 1)]
                # a request's credit is spent by the first ones; the rest wait for polls
                results = await asyncio.gather(
                    *(line.read_now("live", req, wait_s=0.0) for _ in range(4)),
                    return_exceptions=True,
                )
        assert any(isinstance(r, LineBusy) for r in results)

    run(bench())


def test_a_device_not_polled_for_its_comm_fault_window_is_overdue() -> None:
    """The line's own view of starvation (status shows it): a line whose owner never ran."""

    async def bench() -> None:
        fast = device("fast", 1, period_s=0.01, timeout_s=0.01, retries=0, comm_fault_after=1)
        line = Line("rs485-1", RtuLink("/dev/alarmgw-never-opened"), [fast], Outputs())
        assert not line.polling("fast").overdue
        await asyncio.sleep(fast.comm_fault_window_s * 2)  # time passing is the stimulus
        timing = line.polling("fast")
        assert timing.overdue and timing.age_s > timing.window_s

    run(bench())
