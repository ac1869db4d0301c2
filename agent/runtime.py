"""`alarmgw run`: wires the gateway's parts together and keeps them alive.

The parts, each in its own module: the event path (agent/pipeline.py: emit, local
rules, buffer, stored listeners), the points thread (agent/field.py), the views the
CLI and the platform ask (agent/views.py), the uplinks, the lines, GPIO, the control
socket and the watchdog. This module builds them from a validated Config, connects
them, starts them in order and stops them in the reverse. It decides nothing about
alarms (agent/points.py and agent/rules.py do) and speaks to no hardware (drivers/ do).

The asyncio loop (main thread) owns the Modbus lines; the buffer writer, each uplink,
the points thread, the GPIO settle timer and the control socket run their own threads
and hand each other plain values.

Adding an uplink or a duty (a part with a thread of its own) is a few lines in
`Gateway.__init__`: build it, append it to `self.uplinks` or `self.duties`; the
buffer wakes every uplink, the watchdog watches every part, `run()` starts and stops
them all (docs/architecture.md).

It must never let a runtime fault stop the agent: a line that cannot open, a GPIO
chip that is missing, a control socket that cannot bind, a buffer or an alarm memory
on a full, read-only or missing card, all become fault events while everything else
keeps running (the buffer then holds records in memory and forwards them live:
agent/buffer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from agent import __version__, sdnotify
from agent.buffer import FIRST_READER, EventBuffer, Reader
from agent.clock import clock_probe
from agent.commands import CommandHandler
from agent.config import GATEWAY_DEVICE_ID, Config, InputConfig, LineConfig, config_digest
from agent.control import ControlServer, ControlSetupError
from agent.duty import UitdDuties
from agent.faults import OUTPUT_FAILED, WatchedOutput
from agent.field import DeviceRuntime, FieldWorker, field_devices
from agent.gb26875 import mapping as gb_mapping
from agent.gb26875.adu import Adu
from agent.gb26875.points import GbPoints
from agent.gb26875.reads import FieldLive, answer_read
from agent.gb26875.uplink import READER as GB_READER
from agent.gb26875.uplink import GbUplink, set_system_clock
from agent.journal import setup_logging
from agent.pipeline import Pipeline
from agent.pointstate import PointStateStore
from agent.rules import (
    LEGACY_GPIO_DEVICE,
    ROLE_DUTY_ANSWER,
    LocalRules,
    contact_event,
    contact_key,
)
from agent.selftest_probes import GatewayProbes
from agent.texts import Msg, Texts
from agent.uitd_duty import UitdDuty
from agent.uitd_records import FILE_NAME as UITD_RECORDS
from agent.uitd_records import UitdRecords
from agent.uplink import Uplink
from agent.views import Actions, DownlinkView, LocalView, Parts, health
from core.errors import AlarmgwError
from core.events import Event, Kind, Lane, Record, Severity, now_ms, system_event
from drivers.gpio import ContactChange, GpioBank
from drivers.line import DevicePoll, Line
from drivers.modbus import ModbusLink, RtuLink, TcpLink
from drivers.plan import plan_polls
from drivers.types import PollClass

log = logging.getLogger("alarmgw")

CLOCK_CHECK_S: Final = 10.0  # also how often outputs that failed are driven again
LOOP_TICK_S: Final = 1.0
ALIVE_MAX_AGE_S: Final = 30.0  # the watchdog's limit for every part


class Running(Protocol):
    """A part with a thread of its own: started, watched by the watchdog, stopped."""

    @property
    def alive(self) -> float: ...  # time.monotonic() of its last sign of life

    def start(self) -> object: ...

    def stop(self) -> None: ...


class UplinkPart(Running, Protocol):
    """An uplink: reads the buffer in delivery order with its own cursor (agent/uplink.py;
    agent/gb26875/uplink.py). The buffer's `on_stored` wakes every one of them."""

    @property
    def connected(self) -> bool: ...

    def wake(self) -> None: ...


class Gateway:
    """The running agent. Build it from a validated Config, then `await run()`."""

    def __init__(self, cfg: Config, *, broker: tuple[str, int] | None = None) -> None:
        self.cfg = cfg
        self.texts = texts = Texts(cfg.site.language)
        self.clock_synced = clock_synced = clock_probe(cfg.clock.source)
        # every point's GB/T 26875.3 coordinates, from the profiles: the field side stamps
        # events with them, the GB reader finds a Reading's component analog through them
        self.gb_points = GbPoints.from_config(cfg.devices, cfg.profiles)
        self.gb_analogs = self.gb_points.analog
        # The buffer's readers: MQTT first (its bit in the file), the GB uplink when configured.
        readers: list[str | Reader] = [FIRST_READER]
        if cfg.gb26875 is not None:
            readers.append(Reader(GB_READER, self._gb_carries))
        self.buffer = EventBuffer(
            cfg.buffer.path,
            cfg.identity,
            cfg.buffer.max_events,
            clock_synced=clock_synced,
            readers=readers,
        )
        self.pipeline = pipeline = Pipeline(
            self.buffer, cfg.identity, clock_synced=clock_synced, texts=texts
        )
        self.faults = pipeline.faults
        self.emit = pipeline.emit
        # What the platform was told is active, across restarts (alarms, faults, comm loss).
        self.pointstate = PointStateStore(cfg.buffer.path.with_name("pointstate.db"))
        self._remembered = self.pointstate.load()
        devices = field_devices(cfg.devices, cfg.profiles, self._remembered, texts, self.gb_points)
        self.field = FieldWorker(devices, self.pointstate, pipeline)
        # the centre's reads (61-63, 81) are answered from these last known values
        self.gb_live = FieldLive(
            self.gb_points, devices, lambda: not self.faults.quiet, contacts=self._contact_levels
        )
        pipeline.listen_stored("pointstate_listener", self.field.stored)
        self.parts = Parts(cfg, self.buffer, pipeline, devices, clock_synced, texts)
        # The UITD duties (agent/duty.py): the duty check, the transmission light's timers
        self.uitd = UitdDuties(
            pipeline.emit, self.buffer, lambda: self.parts.rules, self.faults, cfg.duties,
            texts=texts, clock_synced=clock_synced,
        )  # fmt: skip
        self.duty = self.parts.duty = self.uitd.check
        pipeline.listen_stored("transmission_listener", self.uitd.stored)
        actions = Actions(self.parts, pipeline.emit)
        self.local_view = LocalView(self.parts, actions)
        downlink = DownlinkView(self.parts, actions)
        self.commands = CommandHandler(downlink, cfg.identity, clock_synced)
        uplink_cfg = cfg.uplink
        if broker is not None:
            uplink_cfg = dataclasses.replace(uplink_cfg, host=broker[0], port=broker[1])
        self.uplink = Uplink(
            uplink_cfg,
            cfg.identity,
            self.buffer,
            version=__version__,
            config_digest=config_digest(cfg.path),
            boot_ts_ms=self.parts.boot_ms,
            clock_synced=clock_synced,
            health=lambda: health(devices.values()),
            commands=self.commands.handle,
            on_state=self.faults.guard("uplink_listener", self._uplink_changed),
            faults=self.faults,
            texts=texts,
        )
        self.parts.uplink = self.uplink
        self.uplinks: list[UplinkPart] = [self.uplink]
        # parts with a duty of their own: the duty check's and the transmission light's timers
        self.duty_timers = self.uitd.timers
        self.duties: list[Running] = [self.duty_timers]
        self.gb_uplink = self._add_gb_uplink()
        self.uitd.hand_to(self.uplinks)
        self._add_selftests(actions)  # the daily self-test and the monthly self-check's records
        # The runtime wires the buffer to its readers: every uplink is woken by a store.
        self.buffer.on_stored = self.faults.guard("buffer_listener", self._wake_uplinks)
        self.buffer.on_settled = self.faults.guard("settled_listener", self._settled)
        # every reader confirmed (or set aside) an event: the transmission light looks again
        self.buffer.on_delivered = self.faults.guard("delivered_listener", self._delivered)
        self.lines: dict[str, Line] = self.parts.lines
        self.gpio: GpioBank | None = None
        self.control: ControlServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._loop_alive = time.monotonic()
        self._clock_was_synced: bool | None = None
        self._closing = False
        self._input_cfg = {i.id: i for i in cfg.inputs}
        self.watchdog = sdnotify.Watchdog()

    def _contact_levels(self) -> list[tuple[InputConfig, bool]]:
        """Every GPIO input's config and debounced level now (none before GPIO is open)."""
        gpio = getattr(self, "gpio", None)  # a read may come before GPIO is set up
        if gpio is None:
            return []
        cfgs = {i.id: i for i in self.cfg.inputs}
        return [(cfgs[i], c.is_active) for i, c in gpio.inputs.items() if i in cfgs]

    def _add_gb_uplink(self) -> GbUplink | None:
        """The GB/T 26875.3 uplink when [gb26875] is configured: the second reader of the
        buffer; the centre's duty checks prompt on site, its reads are answered from live
        state."""
        if self.cfg.gb26875 is None:
            return None
        gb_uplink = GbUplink(
            self.cfg.gb26875,
            self.buffer,
            faults=self.faults,
            emit=self.pipeline.emit,
            texts=self.texts,
            analogs=self.gb_analogs,
            clock_synced=self.clock_synced,
            set_clock=set_system_clock,
            on_duty_check=self.duty.request,
            answer_read=self.answer_read,
        )
        self.uplinks.append(gb_uplink)
        self.parts.gb_uplink = gb_uplink
        return gb_uplink

    def answer_read(self, adu: Adu) -> Adu | None:
        """The GB uplink's hook for the centre's reads (docs/gb26875.md, "Mapping tables"): the
        response ADU from live state, or None to deny."""
        return answer_read(adu, self.gb_live)

    def _add_selftests(self, actions: Actions) -> None:
        """The daily self-test, the simulated fire count and the self-check reports
        (agent/uitd_duty.py); its records file lives beside the buffer."""
        records = UitdRecords(self.cfg.buffer.path.with_name(UITD_RECORDS))
        probes = GatewayProbes(
            self.parts, actions, self.faults, records,
            pointstate_problem=lambda: self.pointstate.problem,
            uplinks=lambda: dict(self._running_parts()[: len(self.uplinks)]),
        )  # fmt: skip
        duty = UitdDuty(
            self.cfg.selftests, records, probes, self.emit, self.faults,
            is_confirmed=lambda seq: actions.confirmed(Lane.EVENT, seq),
            synced=self.clock_synced, texts=self.texts,
        )  # fmt: skip
        self.pipeline.listen_stored("uitd_listener", duty.stored)
        self.parts.selftests = duty
        self.duties.append(duty)

    @property
    def field_devices(self) -> dict[str, DeviceRuntime]:
        return self.parts.devices

    @property
    def rules(self) -> LocalRules:
        return self.parts.rules

    def _gb_carries(self, record: Record) -> bool:
        return gb_mapping.carries(record, self.gb_analogs)

    def _wake_uplinks(self) -> None:
        for uplink in self.uplinks:
            uplink.wake()

    def _settled(self, keys: list[tuple[Lane, int]]) -> None:
        self.field.settled(keys)

    def _delivered(self, keys: list[tuple[Lane, int]]) -> None:
        self.duty_timers.wake()  # the transmission light looks again now

    def _running_parts(self) -> list[tuple[str, Running]]:
        """Every part the watchdog watches, by name (the first uplink is "uplink")."""
        named: list[tuple[str, Running]] = [
            (_uplink_name(i, u), u) for i, u in enumerate(self.uplinks)
        ]
        return named + [(f"duty {i}", d) for i, d in enumerate(self.duties)]

    # --- field side ----------------------------------------------------------------------

    def _make_link(self, line: LineConfig) -> ModbusLink:
        if line.type == "tcp":
            return TcpLink(line.host or "127.0.0.1", line.tcp_port or 502)
        return RtuLink(
            line.port or "",
            baudrate=line.baudrate,
            parity=line.parity,
            stopbits=line.stopbits,
            bytesize=line.bytesize,
        )

    def _device_poll(self, dev: DeviceRuntime, line: LineConfig) -> DevicePoll:
        cfg = dev.cfg
        polls = plan_polls(dev.profile, cfg.unit_id, line.max_gap, line.max_block)
        return DevicePoll(
            device_id=cfg.id,
            unit=cfg.unit_id,
            fast=polls[PollClass.FAST],
            slow=polls[PollClass.SLOW],
            fast_period_s=cfg.fast_poll_s,
            slow_period_s=cfg.slow_poll_s,
            timeout_s=cfg.timeout_s or line.timeout_s,
            retries=line.retries if cfg.retries is None else cfg.retries,
            comm_fault_after=cfg.comm_fault_after,
            backoff_max_s=cfg.backoff_max_s,
            # writes stay off unless the site's config made a point writable
            writable=frozenset(
                (spec.table, spec.address) for spec in dev.profile.points.values() if spec.writable
            ),
        )

    def _start_lines(self) -> None:
        self.field.start()
        self.watchdog.register("points", lambda: self.field.alive, max_age_s=ALIVE_MAX_AGE_S)
        for line_cfg in self.cfg.lines:
            on_line = [d for d in self.field_devices.values() if d.cfg.line == line_cfg.id]
            line = Line(
                line_cfg.id,
                self._make_link(line_cfg),
                [self._device_poll(d, line_cfg) for d in on_line],
                self.field.line_output,
                inter_frame_gap_s=line_cfg.inter_frame_gap_ms / 1000.0,
            )
            for dev in on_line:
                dev.line = line
            self.lines[line_cfg.id] = line
            line.start()
            self.watchdog.register(f"line {line_cfg.id}", _alive_of(line), max_age_s=30.0)

    # --- GPIO and local outputs ---------------------------------------------------------

    def _rules_built(self, rules: LocalRules) -> None:
        rules.remember(self._remembered)  # alarms still active from before a restart sound
        self.parts.rules = rules
        self.pipeline.set_rules(rules)
        # fire alarms a previous run stored and an uplink has still to confirm: the light
        self.faults.guard("transmission_resume", self.uitd.resume)()

    def _start_gpio(self) -> None:
        if not self.cfg.inputs and not self.cfg.outputs:
            self._rules_built(LocalRules([], self.texts, self.cfg.duties))
            return
        try:
            self.gpio = GpioBank(self.cfg.inputs, self.cfg.outputs, self._contact_changed)
        except AlarmgwError as exc:  # GpioError, or a ConfigError from a rule
            log.exception("GPIO unavailable")
            self._rules_built(LocalRules([], self.texts, self.cfg.duties))
            self.emit(
                self._system_event(
                    Kind.FAULT,
                    Severity.MINOR,
                    "gpio_unavailable",
                    self.texts(Msg.GPIO_UNAVAILABLE, reason=exc),
                    reason=str(exc),
                )
            )
            return
        self.parts.gpio = self.gpio
        outputs = self.gpio.outputs
        watched = (
            (o.id, o.rule, WatchedOutput(o.id, outputs[o.id], self.faults))
            for o in self.cfg.outputs
        )
        self._rules_built(LocalRules(watched, self.texts, self.cfg.duties))
        self.rules.uplink_changed(self._uplinks_connected())

    def _contact_changed(self, change: ContactChange) -> None:
        """Runs in the GPIO settle thread: nothing may escape, or later edges die too."""
        cfg = self._input_cfg.get(change.input_id)
        if cfg is None:
            return
        reported = self._remembered.get(contact_key(cfg.id), {})
        if cfg.role == ROLE_DUTY_ANSWER:
            if change.active and not change.initial:  # a press, not a button held at boot
                self.duty.answer(f"input:{cfg.id}")
            return  # not an alarm contact: its press is the answer event, nothing more
        if change.initial and not change.active and not reported:
            return  # a contact at rest at boot is not news (unless it was reported active)
        if change.initial and change.active and cfg.active_state in reported:
            return  # reported before a restart and still active: the platform knows
        cause = f"contact-{cfg.id}"
        try:
            self.emit(contact_event(cfg, change, self.clock_synced(), self.texts))
        except Exception as exc:  # noqa: BLE001 - a fault event, and the next edge still comes
            self.faults.failed(cause, exc)
        else:
            self.faults.worked(cause)

    def _uplinks_connected(self) -> bool:
        return all(uplink.connected for uplink in self.uplinks)

    def _uplink_changed(self, connected: bool) -> None:
        self.parts.uplink_since_ms = now_ms()
        log.info("uplink %s", "connected" if connected else "disconnected")
        if self._closing:
            return  # outputs are being released; a blink started now would outlive them
        self.rules.uplink_changed(self._uplinks_connected())

    # --- periodic housekeeping ----------------------------------------------------------

    async def _tick(self) -> None:
        """Keeps the loop's liveness fresh, watches the clock (no RTC on a Pi) and drives
        again an output that failed (its restore comes when it takes the command)."""
        next_check = 0.0
        while True:
            self._loop_alive = time.monotonic()
            self.pipeline.under_test.tick()  # a self-check's lease that ran out: said so
            if self._loop_alive >= next_check:
                next_check = self._loop_alive + CLOCK_CHECK_S
                self._check_clock()
                if OUTPUT_FAILED in self.faults.failing.values():
                    self.rules.reapply()
            await asyncio.sleep(LOOP_TICK_S)

    def _check_clock(self) -> None:
        synced = self.clock_synced()
        if synced == self._clock_was_synced:
            return
        first = self._clock_was_synced is None
        self._clock_was_synced = synced
        if synced and first:
            return
        if synced:
            kind, severity, msg = Kind.RESTORE, Severity.INFO, Msg.CLOCK_SYNCED
        else:
            kind, severity, msg = Kind.FAULT, Severity.WARNING, Msg.CLOCK_UNSYNCED
        self.emit(system_event(
            kind, severity, "clock_unsynced", self.texts(msg), point="clock_unsynced",
            clock_synced=synced,
        ))  # fmt: skip

    def _system_event(
        self, kind: Kind, severity: Severity, state: str, text: str, **detail: Any
    ) -> Event:
        return system_event(
            kind, severity, state, text, point=state, clock_synced=self.clock_synced(),
            detail=detail,
        )  # fmt: skip

    # --- lifetime -----------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = self.parts.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        self.buffer.start()  # on sick storage it starts degraded: it never stops the start
        try:
            self._restore_gateway_conditions()  # first: a fault raised again must come after
            self.field.announce_start_memory()
            self._start_gpio()
            self._start_lines()
            self.uitd.hand_to(self.uplinks)  # again: an uplink added after __init__ too
            for _, part in self._running_parts():
                part.start()
            self._start_control()
            tick = asyncio.create_task(self._tick(), name="tick")
            self._watch()
            sdnotify.ready(
                f"watching {len(self.field_devices)} devices, {len(self.cfg.inputs)} inputs"
            )
            log.info(
                "alarmgw %s running: %d lines, %d devices, %d inputs",
                __version__,
                len(self.lines),
                len(self.field_devices),
                len(self.cfg.inputs),
            )
            await self._stop.wait()
            sdnotify.stopping()
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        finally:
            await self._shutdown()
        return 0

    def _watch(self) -> None:
        watchdog = self.watchdog
        watchdog.register("event loop", lambda: self._loop_alive, max_age_s=ALIVE_MAX_AGE_S)
        watchdog.register("buffer writer", lambda: self.buffer.alive, max_age_s=ALIVE_MAX_AGE_S)
        for name, part in self._running_parts():
            watchdog.register(name, _alive_of(part), max_age_s=ALIVE_MAX_AGE_S)
        watchdog.start()

    def _restore_gateway_conditions(self) -> None:
        """A restart re-evaluates the gateway's own health (clock, GPIO, control socket):
        what was reported before is restored now and raised again if it still holds.
        So are contact conditions remembered under the device "gpio" of versions that
        did not name the input as the device (docs/feed.md): the input raises them
        again under its own id if they still hold."""
        for (device, point), conds in self._remembered.items():
            legacy = device == LEGACY_GPIO_DEVICE and point in self._input_cfg
            if device != GATEWAY_DEVICE_ID and not legacy:
                continue
            for cond in conds.values():
                self.emit(
                    Event(
                        kind=Kind.RESTORE,
                        category=cond.category,
                        severity=Severity.INFO,
                        state="normal",
                        text=self.texts(Msg.RESTART_RECHECK, state=cond.state),
                        device=device,
                        point=point or cond.condition,
                        clock_synced=self.clock_synced(),
                        detail={"restores": cond.condition, "reason": "restart"},
                    )
                )

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _start_control(self) -> None:
        """The local control socket; without it the gateway still watches and reports (a
        fault event says so), only the technician's CLI cannot reach it."""
        try:
            self.control = ControlServer(
                self.cfg.control.socket, self.local_view, self.cfg.control.group, faults=self.faults
            )
            self.control.start()
        except (ControlSetupError, OSError) as exc:
            log.exception("control socket unavailable")
            self.control = None
            self.emit(
                self._system_event(
                    Kind.FAULT,
                    Severity.WARNING,
                    "control_socket",
                    self.texts(Msg.CONTROL_SOCKET_DOWN, reason=exc),
                )
            )

    async def _shutdown(self) -> None:
        self.parts.reads_closed.set()
        self.watchdog.stop()
        if self.control is not None:
            self.control.close()
        for line in self.lines.values():
            with contextlib.suppress(Exception):
                await line.close()
        self.field.stop()  # after the lines: their last results are processed
        for duty in self.duties:
            duty.stop()
        self.duty.stop()  # a duty check still waiting is recorded unanswered
        self._closing = True
        for uplink in self.uplinks:
            uplink.stop()  # says offline (retained) while the buffer is still open
        if self.gpio is not None:
            self.gpio.close()
        self.buffer.close()
        self.field.drain()
        self.pointstate.close()
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)


def _alive_of(part: Line | Running) -> Callable[[], float]:
    return lambda: part.alive


SWITCH_INTERVAL_S = 0.001
GC_THRESHOLDS = (10_000, 10, 10)


def tune_interpreter() -> None:
    """How `alarmgw run` sets up CPython (the benchmarks call this too, to measure the same).

    The line owners wait on the bus, not on the CPU; during an event storm the points,
    buffer and uplink threads are busy, and at Python's default 5 ms switch interval each
    wake-up of a line could wait that long for the interpreter (bench_storm.py).

    The cyclic garbage collector's young generation is collected every 10,000 net
    allocations instead of 700: a storm keeps thousands of records and futures alive
    between the submitter and the buffer's commit, and at 700 the collector walked them
    again and again (per-event submit() ran at 33,000/s, 56,000/s with this; bench_ingest.py).
    Our code makes few reference cycles, so little garbage waits longer for it.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(*GC_THRESHOLDS)


def run(cfg: Config, *, broker: tuple[str, int] | None = None) -> int:
    setup_logging()
    tune_interpreter()
    try:
        gateway = Gateway(cfg, broker=broker)
    except AlarmgwError:
        log.exception("cannot start")
        return 78
    return asyncio.run(gateway.run())


def _uplink_name(index: int, uplink: UplinkPart) -> str:
    if index == 0:
        return "uplink"
    return "gb26875 uplink" if isinstance(uplink, GbUplink) else f"uplink {index}"
