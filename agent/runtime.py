"""`alarmgw run`: wires field, points, events, buffer and uplink into one running gateway.

The asyncio loop (main thread) owns the Modbus lines; the buffer writer, the
MQTT uplink, the GPIO settle timer and the control socket run their own
threads and hand each other plain values. This module decides nothing about
alarms (agent/points.py and agent/rules.py do) and speaks to no hardware
(drivers/ do); it only connects them and keeps them alive.

It must never let a runtime fault stop the agent: a line that cannot open, a
GPIO chip that is missing, a control socket that cannot bind, a buffer or an
alarm memory on a full, read-only or missing card, all become fault events
while everything else keeps running (the buffer then holds records in memory
and forwards them live: agent/buffer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import queue
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from agent import __version__, sdnotify
from agent.buffer import MAX_HELD, EventBuffer, GroupRefused, Key, StoredRecords
from agent.clock import clock_probe
from agent.commands import CommandHandler
from agent.config import GATEWAY_DEVICE_ID, Config, DeviceConfig, LineConfig, config_digest
from agent.control import ControlServer, ControlSetupError, EventFanout, EventSubscription
from agent.journal import setup_logging
from agent.points import DevicePoints, value_state
from agent.pointstate import COMM, PointStateStore
from agent.rules import GPIO_DEVICE, LocalRules, contact_event
from agent.uplink import Uplink
from core.errors import AlarmgwError, FieldError, FieldTimeout, UnknownPoint
from core.events import Category, Event, Kind, Lane, Record, Severity, now_ms, system_event
from drivers.codec import decode, why_unread
from drivers.gpio import ContactChange, GpioBank
from drivers.line import CommChange, DevicePoll, Line, PollResult
from drivers.modbus import ModbusLink, RtuLink, TcpLink
from drivers.plan import plan_polls
from drivers.profile import Profile, apply_overrides
from drivers.types import PollClass

log = logging.getLogger("alarmgw")

POINTS_IDLE_S = 1.0  # the points thread wakes at least this often (watchdog liveness)
RECENT_EVENTS = 500  # kept in memory for `alarmgw events` (the buffer holds what is unsent)
CLOCK_CHECK_S = 10.0
LOOP_TICK_S = 1.0
READ_TIMEOUT_S = 10.0
READ_CHECK_S = 0.1  # how often a waiting read looks whether its caller is still there
TEST_ALARM_ACK_WAIT_S = 10.0


@dataclass
class DeviceRuntime:
    """One field device as the gateway runs it."""

    cfg: DeviceConfig
    profile: Profile
    points: DevicePoints
    line: Line | None = None
    lost: bool = False
    last_good_ms: int | None = None
    last_failure: str = ""
    # reported lost before a restart and not restored yet: the first good poll restores it
    remembered_lost: bool = False


def _system_event(
    kind: Kind, severity: Severity, state: str, text: str, *, synced: bool, **detail: Any
) -> Event:
    return system_event(
        kind, severity, state, text, point=state, clock_synced=synced, detail=detail
    )


class Gateway:
    """The running agent. Build it from a validated Config, then `await run()`."""

    def __init__(self, cfg: Config, *, broker: tuple[str, int] | None = None) -> None:
        self.cfg = cfg
        self.clock_synced = clock_probe(cfg.clock.source)
        self.boot_ms = now_ms()
        self._boot_mono = time.monotonic()
        self.buffer = EventBuffer(
            cfg.buffer.path, cfg.identity, cfg.buffer.max_events, clock_synced=self.clock_synced
        )
        uplink_cfg = cfg.uplink
        if broker is not None:
            uplink_cfg = dataclasses.replace(uplink_cfg, host=broker[0], port=broker[1])
        self.commands = CommandHandler(_CommandAdapter(self), cfg.identity, self.clock_synced)
        self.uplink = Uplink(
            uplink_cfg,
            cfg.identity,
            self.buffer,
            version=__version__,
            config_digest=config_digest(cfg.path),
            boot_ts_ms=self.boot_ms,
            clock_synced=self.clock_synced,
            health=self.health,
            commands=self.commands.handle,
            on_state=self._uplink_changed,
        )
        # What the platform was told is active, across restarts (alarms, faults, comm loss).
        self.pointstate = PointStateStore(cfg.buffer.path.with_name("pointstate.db"))
        self._remembered = self.pointstate.load()
        self._pointstate_problem: str | None = None  # as last announced
        # events held in RAM by a degraded buffer, recorded in the point state once safe
        self._unsettled: OrderedDict[Key, Event] = OrderedDict()
        self._unsettled_lock = threading.Lock()
        self.buffer.on_settled = self._settled
        self.field_devices: dict[str, DeviceRuntime] = {}
        for dev in cfg.devices:
            profile = apply_overrides(cfg.profiles[dev.profile], dev.points)
            points = DevicePoints(dev.id, dev.name, dev.location, profile, self._remembered)
            runtime = DeviceRuntime(dev, profile, points)
            runtime.remembered_lost = COMM in self._remembered.get((dev.id, None), {})
            self.field_devices[dev.id] = runtime
        self.lines: dict[str, Line] = {}
        self.gpio: GpioBank | None = None
        self.rules = LocalRules([])
        self.control: ControlServer | None = None
        self.fanout = EventFanout()
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)  # serialised on demand
        self._recent_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._loop_alive = time.monotonic()
        self._clock_was_synced: bool | None = None
        self._closing = False
        self._reads_closed = threading.Event()  # stopping: a waiting live read gives up now
        self._uplink_since_ms: int | None = None  # when the uplink last connected or dropped
        self._rules_lock = threading.Lock()
        self._field_queue: queue.SimpleQueue[PollResult | CommChange | Event | None] = (
            queue.SimpleQueue()
        )
        self._points_alive = time.monotonic()
        self._points_thread = threading.Thread(
            target=self._points_worker, name="points", daemon=True
        )
        self._rules_ready = False
        self._early_events: list[Event] = []
        self._input_cfg = {i.id: i for i in cfg.inputs}
        self.watchdog = sdnotify.Watchdog()

    # --- event path: everything that happens goes through emit() ---------------------

    def emit(self, record: Record) -> Future[Record]:
        """Hand a record to local rules (at once) and to the buffer (durably). Thread-safe."""
        if isinstance(record, Event):
            self._to_rules(record)
        future = self.buffer.submit(record)
        future.add_done_callback(self._stored)
        return future

    def emit_many(self, records: list[Record]) -> None:
        """One poll's records: to local rules at once, to the buffer as one group (one
        durable commit, consecutive seqs). Called from the points thread."""
        if not records:
            return
        for record in records:
            if isinstance(record, Event):
                self._to_rules(record)
        self.buffer.submit_many(records).add_done_callback(
            lambda future: self._group_stored(records, future)
        )

    def _group_stored(self, records: list[Record], future: Future[StoredRecords]) -> None:
        exc = future.exception()
        if isinstance(exc, GroupRefused):
            # one unstorable record must not cost the others of its poll
            for i, record in enumerate(records):
                if i not in exc.bad:
                    self.buffer.submit(record).add_done_callback(self._stored)
            log.error("records refused by the buffer: %s", exc)
            return
        if exc is not None:
            log.error("a group of %d records could not be buffered: %s", len(records), exc)
            return
        stored = future.result()
        for i, record in enumerate(records):
            if isinstance(record, Event):
                self._after_store(stored[i])

    def _to_rules(self, event: Event) -> None:
        with self._rules_lock:
            if not self._rules_ready:
                # GPIO reports its levels while the outputs' rules are still being built:
                # keep those events and replay them, so an alarm held at boot sounds.
                self._early_events.append(event)
                return
            try:
                self.rules.on_event(event)
            except Exception:  # a broken output must not stop the event itself
                log.exception("local rules failed on event %s", event.id)

    def _rules_built(self, rules: LocalRules) -> None:
        rules.remember(self._remembered)  # alarms still active from before a restart sound
        with self._rules_lock:
            self.rules = rules
            self._rules_ready = True
            early, self._early_events = self._early_events, []
        for event in early:
            self._to_rules(event)

    def _stored(self, future: Future[Record]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("event could not be buffered: %s", exc)
            return
        self._after_store(future.result())

    def _after_store(self, record: Record) -> None:
        """A record is queued: remember its condition once it is safe, show it locally,
        log it."""
        if not isinstance(record, Event):
            return
        self._when_safe(record)
        with self._recent_lock:
            self.recent.append(record)
        if self.fanout.subscriber_count():  # serialised only for a technician following
            self.fanout.publish(record.to_payload(self.cfg.identity))
        log.info(
            "event seq=%s %s %s/%s %s",
            record.seq,
            record.kind.value,
            record.device,
            record.point,
            record.text,
            extra={"device": record.device, "seq": record.seq},
        )

    def _when_safe(self, event: Event) -> None:
        """Record the event's condition in the point state once it is on disk or delivered:
        one held in RAM by a degraded buffer would die with a restart, and its condition
        must then be raised again; once it reaches the disk or the broker, it counts."""
        key: Key = (Lane.EVENT, event.seq or 0)
        with self._unsettled_lock:
            self._unsettled[key] = event
            while len(self._unsettled) > MAX_HELD:  # dropped from RAM: never settles
                self._unsettled.popitem(last=False)
        if not self.buffer.is_held(*key):  # registered first: a settle cannot slip between
            self._settled([key])

    def _settled(self, keys: list[Key]) -> None:
        """The buffer says these events are safe now (called from its writer, too)."""
        with self._unsettled_lock:
            safe = [e for e in (self._unsettled.pop(key, None) for key in keys) if e]
        for event in safe:
            self._field_queue.put(event)

    # --- field side ----------------------------------------------------------------------

    def _line_output(self, out: PollResult | CommChange) -> None:
        """Called by a line's owner task: hand off at once, so a storm of point changes
        is turned into events on the points thread while every line keeps polling."""
        self._field_queue.put(out)

    def _points_worker(self) -> None:
        """The one owner of every device's point trackers (field results -> events) and of
        the point-state store (stored events -> what the platform was told)."""
        while True:
            self._points_alive = time.monotonic()
            try:
                item = self._field_queue.get(timeout=POINTS_IDLE_S)
            except queue.Empty:
                continue
            if not self._process_queued(item):
                return

    def _process_queued(self, first: PollResult | CommChange | Event | None) -> bool:
        """Handle `first` and everything queued behind it, strictly in queue order; stored
        events that come together are recorded in one transaction. False: told to stop."""
        reported: list[Event] = []
        item = first
        while True:
            self._points_alive = time.monotonic()
            if isinstance(item, Event):
                reported.append(item)
            else:
                self._record_reported(reported)
                reported = []
                if item is None:
                    return False
                try:
                    self._field_result(item)
                except Exception:  # one bad result must not stop every later one
                    log.exception("device %s: result could not be processed", item.device_id)
            try:
                item = self._field_queue.get_nowait()
            except queue.Empty:
                self._record_reported(reported)
                self._keep_pointstate()
                return True

    def _record_reported(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            self.pointstate.record(events)
        except Exception:  # the store logs its own trouble; it must never stop the points
            log.exception("point state could not record %d events", len(events))
        self._announce_pointstate()

    def _keep_pointstate(self) -> None:
        """A point state that lags its file tries the file again (at most every few
        seconds, in the store; a no-op when it is up to date)."""
        try:
            self.pointstate.maintain()
        except Exception:
            log.exception("point state could not be written")
        self._announce_pointstate()

    def _announce_pointstate(self) -> None:
        """A fault while the alarm memory cannot be written, its restore once it can."""
        problem = self.pointstate.problem
        if problem == self._pointstate_problem:
            return
        was, self._pointstate_problem = self._pointstate_problem, problem
        synced = self.clock_synced()
        if problem is not None and was is None:
            self.emit(
                _system_event(
                    Kind.FAULT,
                    Severity.MAJOR,
                    "pointstate",
                    f"报警记忆无法保存（{problem}）：重启后报警可能重复上报，恢复可能缺失",
                    synced=synced,
                    reason=problem,
                )
            )
        elif problem is None:
            self.emit(
                _system_event(
                    Kind.RESTORE, Severity.INFO, "pointstate", "报警记忆恢复保存", synced=synced
                )
            )

    def _drain_reported(self) -> None:
        """At shutdown: events stored after the points thread stopped are still recorded."""
        with contextlib.suppress(queue.Empty):
            self._process_queued(self._field_queue.get_nowait())

    def _field_result(self, out: PollResult | CommChange) -> None:
        dev = self.field_devices.get(out.device_id)
        if dev is None:
            return
        synced = self.clock_synced()
        records: list[Record] = []
        if isinstance(out, PollResult):
            dev.last_good_ms = out.ts_ms
            if dev.remembered_lost:  # lost before a restart, answering now
                dev.remembered_lost = False
                records.append(self._comm_event(dev, _answering(out), synced))
            records += dev.points.update(
                out.poll_class, out.blocks, out.ts_ms, synced, failed=out.failed
            )
        elif out.lost and dev.remembered_lost:
            dev.remembered_lost = False  # still lost: the platform knows already
            dev.lost = True
            dev.last_failure = out.reason
            dev.points.mark_stale()
        else:
            records.append(self._comm_event(dev, out, synced))
        self.emit_many(records)

    def _comm_event(self, dev: DeviceRuntime, change: CommChange, synced: bool) -> Event:
        dev.lost = change.lost
        dev.last_failure = change.reason
        if change.lost:
            dev.points.mark_stale()
            kind, severity, state = Kind.COMM_LOSS, Severity.MINOR, "lost"
            text = f"{dev.cfg.name} 通信故障（{change.reason}，连续{change.failures}次）"
        else:
            kind, severity, state = Kind.COMM_RESTORE, Severity.INFO, "online"
            text = f"{dev.cfg.name} 通信恢复"
        return Event(
            kind=kind,
            category=Category.COMM,
            severity=severity,
            state=state,
            text=text,
            device=dev.cfg.id,
            ts_ms=change.ts_ms,
            clock_synced=synced,
            device_name=dev.cfg.name,
            location=dev.cfg.location,
            detail={"reason": change.reason, "failures": change.failures},
        )

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
        self._points_thread.start()
        self.watchdog.register("points", lambda: self._points_alive, max_age_s=30.0)
        for line_cfg in self.cfg.lines:
            on_line = [d for d in self.field_devices.values() if d.cfg.line == line_cfg.id]
            line = Line(
                line_cfg.id,
                self._make_link(line_cfg),
                [self._device_poll(d, line_cfg) for d in on_line],
                self._line_output,
                inter_frame_gap_s=line_cfg.inter_frame_gap_ms / 1000.0,
            )
            for dev in on_line:
                dev.line = line
            self.lines[line_cfg.id] = line
            line.start()
            self.watchdog.register(f"line {line_cfg.id}", _alive_of(line), max_age_s=30.0)

    # --- GPIO and local outputs ---------------------------------------------------------

    def _start_gpio(self) -> None:
        if not self.cfg.inputs and not self.cfg.outputs:
            self._rules_built(LocalRules([]))
            return
        try:
            self.gpio = GpioBank(self.cfg.inputs, self.cfg.outputs, self._contact_changed)
        except AlarmgwError as exc:  # GpioError, or a ConfigError from a rule
            log.exception("GPIO unavailable")
            self._rules_built(LocalRules([]))
            self.emit(
                _system_event(
                    Kind.FAULT,
                    Severity.MINOR,
                    "gpio_unavailable",
                    f"网关GPIO不可用：{exc}",
                    synced=self.clock_synced(),
                    reason=str(exc),
                )
            )
            return
        self._rules_built(
            LocalRules((o.id, o.rule, self.gpio.outputs[o.id]) for o in self.cfg.outputs)
        )
        self.rules.uplink_changed(self.uplink.connected)

    def _contact_changed(self, change: ContactChange) -> None:
        cfg = self._input_cfg.get(change.input_id)
        if cfg is None:
            return
        reported = self._remembered.get((GPIO_DEVICE, cfg.id), {})
        if change.initial and not change.active and not reported:
            return  # a contact at rest at boot is not news (unless it was reported active)
        if change.initial and change.active and cfg.active_state in reported:
            return  # reported before a restart and still active: the platform knows
        try:  # runs in the GPIO settle thread: nothing may escape, or later edges die too
            self.emit(contact_event(cfg, change, self.clock_synced()))
        except Exception:
            log.exception("contact %s: change could not be turned into an event", cfg.id)

    def _uplink_changed(self, connected: bool) -> None:
        self._uplink_since_ms = now_ms()
        log.info("uplink %s", "connected" if connected else "disconnected")
        if self._closing:
            return  # outputs are being released; a blink started now would outlive them
        try:
            self.rules.uplink_changed(connected)
        except Exception:
            log.exception("local rules failed on an uplink change")

    # --- periodic housekeeping ----------------------------------------------------------

    async def _tick(self) -> None:
        """Keeps the loop's liveness fresh and watches the clock (no RTC on a Pi)."""
        next_clock = 0.0
        while True:
            self._loop_alive = time.monotonic()
            if self._loop_alive >= next_clock:
                next_clock = self._loop_alive + CLOCK_CHECK_S
                self._check_clock()
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
            event = _system_event(
                Kind.RESTORE, Severity.INFO, "clock_unsynced", "网关时钟已同步", synced=True
            )
        else:
            event = _system_event(
                Kind.FAULT,
                Severity.WARNING,
                "clock_unsynced",
                "网关时钟未同步（无RTC，等待NTP）：事件时间可能不准",
                synced=False,
            )
        self.emit(event)

    # --- GatewayControl (downlink commands) and ControlTarget (local CLI) ---------------

    def health(self) -> dict[str, Any]:
        """The heartbeat's `devices` summary."""
        lost = sorted(d.cfg.id for d in self.field_devices.values() if d.lost)
        return {
            "total": len(self.field_devices),
            "online": len(self.field_devices) - len(lost),
            "comm_fault": lost,
        }

    def uptime_s(self) -> float:
        return time.monotonic() - self._boot_mono

    def status(self) -> dict[str, Any]:
        """Everything `alarmgw status` shows on one screen (docs/control-protocol.md)."""
        ident = self.cfg.identity
        devices = self.devices_list()
        return {
            "site": ident.site,
            "gateway": ident.gateway,
            "site_name": ident.site_name,
            "gateway_name": ident.gateway_name,
            "version": __version__,
            "now_ms": now_ms(),
            "boot_ms": self.boot_ms,
            "uptime_s": round(self.uptime_s(), 1),
            "clock_synced": self.clock_synced(),
            # since_ms: when the uplink last changed state (None until it first did)
            "uplink": {
                **self.uplink.stats(),
                "since_ms": self._uplink_since_ms,
            },
            "buffer": self.buffer.stats(),
            "lines": [self._line_summary(line, devices) for line in self.cfg.lines],
            "gpio": self.gpio is not None,
            "devices": devices,
            "active_alarms": [
                a.to_payload(ident) if a.seq is not None else _unsent(a)
                for a in self.rules.active_alarms()
            ],
            "silenced": self.rules.alarm.silenced,
        }

    def _line_summary(self, line: LineConfig, devices: list[dict[str, Any]]) -> dict[str, Any]:
        """One line of `status`: where it is and how many of its devices answer."""
        on_line = [d for d in devices if d["line"] == line.id]
        runner = self.lines.get(line.id)
        where = f"{line.host}:{line.tcp_port}" if line.type == "tcp" else (line.port or "")
        down = runner.down if runner else None
        return {
            "id": line.id,
            "type": line.type,
            "where": where,
            "baudrate": line.baudrate if line.type == "rtu" else None,
            "devices": len(on_line),
            "online": sum(1 for d in on_line if d["comm"] == "ok"),
            "lost": sorted(d["id"] for d in on_line if d["comm"] == "lost"),
            "cycle_s": round(runner.cycle_times.last_s, 4) if runner else None,
            "cycle_mean_s": round(runner.cycle_times.mean_s, 4) if runner else None,
            # the port or endpoint is gone: every device on it is lost with it
            "down": down.reason if down else None,
            "down_since_ms": down.since_ms if down else None,
        }

    def devices_list(self) -> list[dict[str, Any]]:
        out = []
        for dev in self.field_devices.values():
            stats = dev.line.stats().get(dev.cfg.id, {}) if dev.line else {}
            timing = dev.line.polling(dev.cfg.id) if dev.line else None
            out.append(
                {
                    "id": dev.cfg.id,
                    "name": dev.cfg.name,
                    "location": dev.cfg.location,
                    "line": dev.cfg.line,
                    "unit_id": dev.cfg.unit_id,
                    "profile": dev.cfg.profile,
                    "comm": "lost" if dev.lost else ("ok" if dev.last_good_ms else "unknown"),
                    "last_good_ms": dev.last_good_ms,
                    # computed here so the CLI needs no clock of its own
                    "last_good_age_s": (
                        None
                        if dev.last_good_ms is None
                        else round(max(0, now_ms() - dev.last_good_ms) / 1000, 1)
                    ),
                    "last_failure": dev.last_failure,
                    "failures": stats,
                    # starved of polls (by live reads, probes or a bug) for longer than its
                    # comm-fault window: `status` flags it, whatever `comm` says
                    "last_poll_age_s": round(timing.age_s, 1) if timing else None,
                    "comm_fault_window_s": round(timing.window_s, 1) if timing else None,
                    "poll_overdue": timing.overdue if timing else False,
                }
            )
        for contact in self.cfg.inputs:
            state = None
            if self.gpio is not None and contact.id in self.gpio.inputs:
                active = self.gpio.inputs[contact.id].is_active
                state = contact.active_state if active else contact.inactive_state
            out.append(
                {
                    "id": contact.id,
                    "name": contact.name,
                    "location": f"GPIO{contact.pin}",
                    "line": "gpio",
                    "unit_id": contact.pin,
                    "profile": contact.category.value,
                    "comm": "ok" if self.gpio is not None else "lost",
                    "state": state,
                }
            )
        return out

    def events(self, since_seq: int | None, limit: int) -> list[dict[str, Any]]:
        """Oldest first: after since_seq the next `limit` (so a reader can page forward),
        else the latest `limit`; limit 0 gives none (follow without a backlog)."""
        with self._recent_lock:
            items = list(self.recent)
        if since_seq is not None:
            items = [e for e in items if (e.seq or 0) > since_seq][:limit]
        else:
            items = items[-limit:] if limit > 0 else []
        return [e.to_payload(self.cfg.identity) for e in items]

    def subscribe_events(self) -> EventSubscription:
        return self.fanout.subscribe()

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Read a device's points now, through its line (between due polls). Raises
        UnknownPoint, a FieldError, or LineBusy when the line cannot take it now. If
        `gave_up()` turns true while the read waits (the CLI went away), the read is
        dropped from the line's queue instead of being run for nobody."""
        if self._loop is None:
            raise AlarmgwError("the agent is not running its field loop")
        fut = asyncio.run_coroutine_threadsafe(self._read(device, point), self._loop)
        deadline = time.monotonic() + READ_TIMEOUT_S + 1
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                return fut.result(min(left, READ_CHECK_S))
            except TimeoutError as exc:
                if fut.done():  # the read itself ran out of time (asyncio.timeout in _read)
                    raise FieldTimeout(
                        f"device {device!r}: no answer within {READ_TIMEOUT_S:g} s"
                    ) from exc
                if self._reads_closed.is_set():  # the loop may never run it now
                    fut.cancel()
                    raise AlarmgwError("the agent is stopping") from exc
                if gave_up is not None and gave_up():
                    fut.cancel()
                    raise FieldTimeout(f"device {device!r}: the caller stopped waiting") from exc
                if left <= 0:  # a field answer that never came, not an agent bug
                    fut.cancel()
                    raise FieldTimeout(
                        f"device {device!r}: no answer within {READ_TIMEOUT_S:g} s"
                    ) from exc

    async def _read(self, device: str, point: str | None) -> dict[str, Any]:
        dev = self.field_devices.get(device)
        if dev is None or dev.line is None:
            raise UnknownPoint(f"unknown device {device!r}; devices: {sorted(self.field_devices)}")
        specs = dev.profile.points
        if point is not None and point not in specs:
            raise UnknownPoint(f"device {device!r} has no point {point!r}; points: {sorted(specs)}")
        wanted = [specs[point]] if point is not None else list(specs.values())
        line_cfg = next(ln for ln in self.cfg.lines if ln.id == dev.cfg.line)
        sub = dataclasses.replace(dev.profile, points={s.id: s for s in wanted})
        polls = plan_polls(sub, dev.cfg.unit_id, line_cfg.max_gap, line_cfg.max_block)
        requests = polls[PollClass.FAST] + polls[PollClass.SLOW]
        async with asyncio.timeout(READ_TIMEOUT_S):  # wait_for can lose a cancel on 3.11
            outcome = await dev.line.read_now(device, requests)

        values: dict[str, Any] = {}
        for spec in wanted:
            try:
                value = decode(spec, outcome.blocks)
            except FieldError as exc:
                why = why_unread(spec, outcome.failed) or exc
                values[spec.id] = {"error": str(why), "name": spec.name}
                continue
            values[spec.id] = {"value": value, "unit": spec.unit, "name": spec.name}
            state = value_state(spec, value)
            if state is not None:
                values[spec.id]["state"] = state
        return {"device": device, "ts_ms": now_ms(), "points": values}

    def test_alarm(self, requested_by: str, note: str | None = None) -> Event:
        """A test-flagged alarm end to end; returns once it is stored durably. `note` (the
        platform's, e.g. "monthly transmission test") is carried in the event's detail."""
        who = self.cfg.identity.gateway_name or self.cfg.identity.gateway
        # A simulated fire transmission (GB 26875: at least two a month): category fire so
        # the platform routes it like the real thing, test=true so nobody is dispatched.
        event = Event(
            kind=Kind.TEST,
            category=Category.FIRE,
            severity=Severity.INFO,
            state="test",
            text=f"{who} 测试火警（{requested_by}）",
            device=GATEWAY_DEVICE_ID,
            point="test_alarm",
            test=True,
            clock_synced=self.clock_synced(),
            detail={"requested_by": requested_by} | ({"note": note} if note else {}),
        )
        stored = self.emit(event).result(timeout=10)
        if not isinstance(stored, Event):
            raise AlarmgwError("the buffer answered a test alarm with a reading")
        return stored

    def test_alarm_report(self, requested_by: str) -> dict[str, Any]:
        stored = self.test_alarm(requested_by)
        acked = self._wait_acked(Lane.EVENT, stored.seq or 0, TEST_ALARM_ACK_WAIT_S)
        return {"seq": stored.seq, "id": stored.id, "stored": True, "acked": acked}

    def _wait_acked(self, lane: Lane, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(r.seq == seq for r in self.buffer.pending(lane, seq - 1, 1)):
                return True
            time.sleep(0.05)  # the buffer has no per-row ack notification to await
        return False

    def silence(self) -> dict[str, Any]:
        was_sounding = self.rules.silence()
        return {"silenced": True, "was_sounding": was_sounding}

    def buffer_info(self) -> dict[str, Any]:
        return self.buffer.stats()

    # --- lifetime -----------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        self.buffer.start()  # on sick storage it starts degraded: it never stops the start
        try:
            self._restore_gateway_conditions()  # first: a fault raised again must come after
            self._announce_start_memory()
            self._start_gpio()
            self._start_lines()
            self.uplink.start()
            self._start_control()
            tick = asyncio.create_task(self._tick(), name="tick")
            self.watchdog.register("event loop", lambda: self._loop_alive, max_age_s=30.0)
            self.watchdog.register("buffer writer", lambda: self.buffer.alive, max_age_s=30.0)
            self.watchdog.register("uplink", lambda: self.uplink.alive, max_age_s=30.0)
            self.watchdog.start()
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

    def _announce_start_memory(self) -> None:
        """The alarm memory could not be read at start: say what that means."""
        if not self.pointstate.remembered_at_start:
            self.emit(
                _system_event(
                    Kind.SYSTEM,
                    Severity.MAJOR,
                    "pointstate_unread",
                    "报警记忆无法读取：重启前的报警若仍存在将再次上报，"
                    "停机期间已恢复的报警可能收不到恢复",
                    synced=self.clock_synced(),
                    reason=self.pointstate.problem or "damaged, moved aside",
                )
            )
        self._announce_pointstate()

    def _restore_gateway_conditions(self) -> None:
        """A restart re-evaluates the gateway's own health (clock, GPIO, control socket):
        what was reported before is restored now and raised again if it still holds."""
        for (device, point), conds in self._remembered.items():
            if device != GATEWAY_DEVICE_ID:
                continue
            for cond in conds.values():
                self.emit(
                    system_event(
                        Kind.RESTORE,
                        Severity.INFO,
                        "normal",
                        f"网关重启，重新检测：{cond.state}",
                        point=point or cond.condition,
                        clock_synced=self.clock_synced(),
                        category=cond.category,
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
                self.cfg.control.socket, _ControlAdapter(self), self.cfg.control.group
            )
            self.control.start()
        except (ControlSetupError, OSError) as exc:
            log.exception("control socket unavailable")
            self.control = None
            self.emit(
                _system_event(
                    Kind.FAULT,
                    Severity.WARNING,
                    "control_socket",
                    f"本地控制接口不可用：{exc}",
                    synced=self.clock_synced(),
                )
            )

    async def _shutdown(self) -> None:
        self._reads_closed.set()
        self.watchdog.stop()
        if self.control is not None:
            self.control.close()
        for line in self.lines.values():
            with contextlib.suppress(Exception):
                await line.close()
        if self._points_thread.is_alive():
            self._field_queue.put(None)  # after the lines: their last results are processed
            self._points_thread.join(timeout=10)
        self._closing = True
        self.uplink.stop()  # says offline (retained) while the buffer is still open
        if self.gpio is not None:
            self.gpio.close()
        self.buffer.close()
        self._drain_reported()
        self.pointstate.close()
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)


def _answering(result: PollResult) -> CommChange:
    return CommChange(result.device_id, lost=False, reason="", failures=0, ts_ms=result.ts_ms)


def _alive_of(line: Line) -> Callable[[], float]:
    return lambda: line.alive


def _unsent(event: Event) -> dict[str, Any]:
    return {"id": event.id, "device": event.device, "point": event.point, "text": event.text}


class _CommandAdapter:
    """The downlink's view of the gateway: results shaped as docs/schemas/cmd-result says."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def uptime_s(self) -> float:
        return self.gw.uptime_s()

    def status(self) -> dict[str, Any]:
        """The heartbeat's health summary, taken now (not the local CLI's status)."""
        return self.gw.uplink.health()

    def read_point(self, device: str, point: str | None) -> dict[str, Any]:
        local = self.gw.read_point(device, point)
        points = []
        for point_id, reading in local["points"].items():
            failed = "error" in reading
            points.append(
                {
                    "point": point_id,
                    "name": reading.get("name", ""),
                    "value": None if failed else reading["value"],
                    "unit": reading.get("unit"),
                    "state": reading.get("state"),
                    "quality": "bad" if failed else "good",
                    "ts_ms": local["ts_ms"],
                }
            )
        return {"device": local["device"], "points": points}

    def test_alarm(self, requested_by: str, note: str | None = None) -> Event:
        return self.gw.test_alarm(requested_by, note)

    def silence(self) -> dict[str, Any]:
        sounding = self.gw.silence()["was_sounding"]
        buzzers = [o.id for o in self.gw.cfg.outputs if o.rule == "alarm"]
        return {"silenced": buzzers if sounding else []}


class _ControlAdapter:
    """The local control socket's view of the gateway (names differ from the downlink's)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def status(self) -> dict[str, Any]:
        return self.gw.status()

    def devices(self) -> list[dict[str, Any]]:
        return self.gw.devices_list()

    def events(self, since_seq: int | None, limit: int) -> list[dict[str, Any]]:
        return self.gw.events(since_seq, limit)

    def subscribe_events(self) -> EventSubscription:
        return self.gw.subscribe_events()

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        return self.gw.read_point(device, point, gave_up)

    def test_alarm(self, requested_by: str) -> dict[str, Any]:
        return self.gw.test_alarm_report(requested_by)

    def silence(self) -> dict[str, Any]:
        return self.gw.silence()

    def buffer(self) -> dict[str, Any]:
        return self.gw.buffer_info()


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
