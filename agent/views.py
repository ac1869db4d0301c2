"""What the running gateway shows and does when asked: status, devices, events, a live
read, a test alarm, silence — for the local control socket (agent/control.py) and for
the platform's downlink commands (agent/commands.py).

Each view is built from the gateway's parts (`Parts`: the devices, the lines, the
buffer, the uplink, the rules...) and reads them; none of them starts anything, so
each can be built and checked on parts that were never started
(tests/test_views.py). The two askers get their own shape: `LocalView` answers as
docs/control-protocol.md says, `DownlinkView` as docs/schemas/cmd-result says.

A view must never change what the gateway does, except those that are asked to: a
test alarm (through the same emit() as every event), silencing the buzzer, and starting
or answering a duty check (agent/duty.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from agent import __version__
from agent.buffer import EventBuffer
from agent.config import GATEWAY_DEVICE_ID, Config, InputConfig, LineConfig
from agent.duty import DutyCheck
from agent.field import DeviceRuntime
from agent.gb26875.tables import UitdOperationFlags
from agent.pipeline import Pipeline
from agent.points import value_state
from agent.rules import LocalRules
from agent.selfcheck import check_points, parse_report
from agent.texts import CHINESE, Msg, Texts
from core.errors import AlarmgwError, FieldError, FieldTimeout, UnknownPoint
from core.events import Category, Event, Identity, Kind, Lane, Record, Severity, now_ms
from drivers.codec import decode, why_unread
from drivers.gpio import GpioBank
from drivers.line import Line, ReadOutcome
from drivers.plan import plan_polls
from drivers.profile import PointSpec
from drivers.types import PollClass

READ_TIMEOUT_S: Final = 10.0
READ_CHECK_S: Final = 0.1  # how often a waiting read looks whether its caller is still there
TEST_ALARM_ACK_WAIT_S: Final = 10.0
STORE_WAIT_S: Final = 10.0
# GB/T 26875.3 UITD operation (typeflag 24), bit 6 "test": a simulated fire transmission
GB_TEST_OPERATION: Final = {"tf": 24, "flags": int(UitdOperationFlags.TEST), "operator": 0}


class StatsSource(Protocol):
    """What the views read of the GB/T 26875.3 uplink (agent.gb26875.uplink.GbUplink)."""

    def stats(self) -> dict[str, Any]: ...


class UplinkState(Protocol):
    """What the views read of the uplink (agent.uplink.Uplink)."""

    def stats(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...


class SelfTests(Protocol):
    """What the views ask of the UITD duties (agent.uitd_duty.UitdDuty)."""

    def summary(self) -> dict[str, Any]: ...
    def run_selftest(self, trigger: str) -> Any: ...
    def store_report(self, report: dict[str, Any]) -> dict[str, Any]: ...
    def reports(self, limit: int) -> list[dict[str, Any]]: ...


@dataclass
class Parts:
    """The running gateway's parts, as the views see them. The runtime fills in the
    late ones (lines, gpio, rules, uplink) as it starts them."""

    cfg: Config
    buffer: EventBuffer
    pipeline: Pipeline
    devices: dict[str, DeviceRuntime]
    clock_synced: Callable[[], bool]
    texts: Texts = CHINESE
    boot_ms: int = field(default_factory=now_ms)
    boot_mono: float = field(default_factory=time.monotonic)
    uplink: UplinkState | None = None
    gb_uplink: StatsSource | None = None  # the GB/T 26875.3 uplink, when configured
    uplink_since_ms: int | None = None  # when the uplink last connected or dropped
    lines: dict[str, Line] = field(default_factory=dict)
    gpio: GpioBank | None = None
    rules: LocalRules = field(default_factory=lambda: LocalRules([]))
    duty: DutyCheck | None = None  # the duty check (agent/duty.py)
    loop: asyncio.AbstractEventLoop | None = None  # the field loop, once it runs
    reads_closed: threading.Event = field(default_factory=threading.Event)  # stopping
    selftests: SelfTests | None = None  # the self-test and self-check duties (uitd_duty.py)

    def uptime_s(self) -> float:
        return time.monotonic() - self.boot_mono


# --- the pieces, each a function of parts -------------------------------------------------


def health(devices: Iterable[DeviceRuntime]) -> dict[str, Any]:
    """The heartbeat's `devices` summary."""
    devs = list(devices)
    lost = sorted(d.cfg.id for d in devs if d.lost)
    return {"total": len(devs), "online": len(devs) - len(lost), "comm_fault": lost}


def device_rows(
    devices: Iterable[DeviceRuntime], inputs: Iterable[InputConfig], gpio: GpioBank | None
) -> list[dict[str, Any]]:
    """Every field device with its comm state and polling, then every GPIO contact."""
    out = [_device_row(dev) for dev in devices]
    for contact in inputs:
        state = None
        if gpio is not None and contact.id in gpio.inputs:
            active = gpio.inputs[contact.id].is_active
            state = contact.active_state if active else contact.inactive_state
        out.append(
            {
                "id": contact.id,
                "name": contact.name,
                "location": f"GPIO{contact.pin}",
                "line": "gpio",
                "unit_id": contact.pin,
                "profile": contact.category.value,
                "comm": "ok" if gpio is not None else "lost",
                "state": state,
            }
        )
    return out


def _device_row(dev: DeviceRuntime) -> dict[str, Any]:
    stats = dev.line.stats().get(dev.cfg.id, {}) if dev.line else {}
    timing = dev.line.polling(dev.cfg.id) if dev.line else None
    return {
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


def line_summary(
    line: LineConfig, runner: Line | None, devices: list[dict[str, Any]]
) -> dict[str, Any]:
    """One line of `status`: where it is and how many of its devices answer."""
    on_line = [d for d in devices if d["line"] == line.id]
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


def status(parts: Parts) -> dict[str, Any]:
    """Everything `alarmgw status` shows on one screen (docs/control-protocol.md)."""
    ident = parts.cfg.identity
    devices = device_rows(parts.devices.values(), parts.cfg.inputs, parts.gpio)
    uplink = parts.uplink.stats() if parts.uplink is not None else {}
    return {
        "site": ident.site,
        "gateway": ident.gateway,
        "site_name": ident.site_name,
        "gateway_name": ident.gateway_name,
        "version": __version__,
        "now_ms": now_ms(),
        "boot_ms": parts.boot_ms,
        "uptime_s": round(parts.uptime_s(), 1),
        "clock_synced": parts.clock_synced(),
        # since_ms: when the uplink last changed state (None until it first did)
        "uplink": {**uplink, "since_ms": parts.uplink_since_ms},
        "gb26875": parts.gb_uplink.stats() if parts.gb_uplink is not None else None,
        "buffer": parts.buffer.stats(),
        "lines": [
            line_summary(line, parts.lines.get(line.id), devices) for line in parts.cfg.lines
        ],
        "gpio": parts.gpio is not None,
        "devices": devices,
        "active_alarms": [
            a.to_payload(ident) if a.seq is not None else _unsent(a)
            for a in parts.rules.active_alarms()
        ],
        "silenced": parts.rules.alarm.silenced,
        "duty_check": parts.duty.waiting if parts.duty is not None else None,
        "transmission": {
            "light": parts.rules.transmission.light,
            "failed": parts.rules.transmission.failed,
        },
        "duties": parts.selftests.summary() if parts.selftests is not None else None,
    }


def _unsent(event: Event) -> dict[str, Any]:
    return {"id": event.id, "device": event.device, "point": event.point, "text": event.text}


def recent_page(
    events: list[Event], identity: Identity, since_seq: int | None, limit: int
) -> list[dict[str, Any]]:
    """Oldest first: after since_seq the next `limit` (so a reader can page forward),
    else the latest `limit`; limit 0 gives none (follow without a backlog)."""
    if since_seq is not None:
        events = [e for e in events if (e.seq or 0) > since_seq][:limit]
    else:
        events = events[-limit:] if limit > 0 else []
    return [e.to_payload(identity) for e in events]


def read_values(device: str, wanted: Iterable[PointSpec], outcome: ReadOutcome) -> dict[str, Any]:
    """What a live read found, point by point: a value (with the profile's state for
    it), or why it could not be read."""
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


def make_test_alarm(
    identity: Identity,
    requested_by: str,
    note: str | None,
    *,
    synced: bool,
    texts: Texts = CHINESE,
) -> Event:
    """A simulated fire transmission (GB 26875: at least two a month): category fire so
    the platform routes it like the real thing, test=true so nobody is dispatched.
    `note` (the platform's, e.g. "monthly transmission test") goes in the detail."""
    who = identity.gateway_name or identity.gateway
    return Event(
        kind=Kind.TEST,
        category=Category.FIRE,
        severity=Severity.INFO,
        state="test",
        text=texts(Msg.TEST_ALARM, who=who, requested_by=requested_by),
        device=GATEWAY_DEVICE_ID,
        point="test_alarm",
        test=True,
        clock_synced=synced,
        detail={"requested_by": requested_by}
        | ({"note": note} if note else {})
        | {"gb": dict(GB_TEST_OPERATION)},  # to the centre too: a UITD test operation
    )


def downlink_points(local: Mapping[str, Any]) -> dict[str, Any]:
    """A live read shaped for cmd-result (a list of points, each with its quality)."""
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


# --- the actions: a live read and a test alarm ----------------------------------------------


class Actions:
    """The two things a caller may make the gateway do besides silencing: read a device
    now (through its line's owner task) and raise a test alarm (through emit)."""

    def __init__(self, parts: Parts, emit: Callable[[Record], Any]) -> None:
        self.parts = parts
        self._emit = emit

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Read a device's points now, through its line (between due polls). Raises
        UnknownPoint, a FieldError, or LineBusy when the line cannot take it now. If
        `gave_up()` turns true while the read waits (the CLI went away), the read is
        dropped from the line's queue instead of being run for nobody."""
        loop = self.parts.loop
        if loop is None:
            raise AlarmgwError("the agent is not running its field loop")
        fut = asyncio.run_coroutine_threadsafe(self._read(device, point), loop)
        deadline = time.monotonic() + READ_TIMEOUT_S + 1
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                return fut.result(min(left, READ_CHECK_S))
            except TimeoutError as exc:
                if fut.done():  # the read itself ran out of time (asyncio.timeout in _read)
                    raise _no_answer(device) from exc
                if self.parts.reads_closed.is_set():  # the loop may never run it now
                    fut.cancel()
                    raise AlarmgwError("the agent is stopping") from exc
                if gave_up is not None and gave_up():
                    fut.cancel()
                    raise FieldTimeout(f"device {device!r}: the caller stopped waiting") from exc
                if left <= 0:  # a field answer that never came, not an agent bug
                    fut.cancel()
                    raise _no_answer(device) from exc

    async def _read(self, device: str, point: str | None) -> dict[str, Any]:
        devices = self.parts.devices
        dev = devices.get(device)
        if dev is None or dev.line is None:
            raise UnknownPoint(f"unknown device {device!r}; devices: {sorted(devices)}")
        specs = dev.profile.points
        if point is not None and point not in specs:
            raise UnknownPoint(f"device {device!r} has no point {point!r}; points: {sorted(specs)}")
        wanted = [specs[point]] if point is not None else list(specs.values())
        line_cfg = next(ln for ln in self.parts.cfg.lines if ln.id == dev.cfg.line)
        sub = dataclasses.replace(dev.profile, points={s.id: s for s in wanted})
        polls = plan_polls(sub, dev.cfg.unit_id, line_cfg.max_gap, line_cfg.max_block)
        requests = polls[PollClass.FAST] + polls[PollClass.SLOW]
        async with asyncio.timeout(READ_TIMEOUT_S):  # wait_for can lose a cancel on 3.11
            outcome = await dev.line.read_now(device, requests)
        return read_values(device, wanted, outcome)

    def test_alarm(self, requested_by: str, note: str | None = None) -> Event:
        """A test-flagged alarm end to end; returns once it is stored durably."""
        parts = self.parts
        event = make_test_alarm(
            parts.cfg.identity, requested_by, note, synced=parts.clock_synced(), texts=parts.texts
        )
        stored = self._emit(event).result(timeout=STORE_WAIT_S)
        if not isinstance(stored, Event):
            raise AlarmgwError("the buffer answered a test alarm with a reading")
        return stored

    def confirmed(self, lane: Lane, seq: int) -> bool:
        """The row is acknowledged by every uplink (gone from the buffer)."""
        return bool(self.parts.buffer.delivered(lane, seq))

    def acked(self, lane: Lane, seq: int, timeout: float) -> bool:
        """Wait until the row is acknowledged (gone from the buffer); False at timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.confirmed(lane, seq):
                return True
            time.sleep(0.05)  # the buffer has no per-row ack notification to await
        return False


def _no_answer(device: str) -> FieldTimeout:
    return FieldTimeout(f"device {device!r}: no answer within {READ_TIMEOUT_S:g} s")


# --- the two askers -------------------------------------------------------------------------


class LocalView:
    """The local control socket's view of the gateway (agent.control.ControlTarget)."""

    def __init__(self, parts: Parts, actions: Actions) -> None:
        self.parts = parts
        self.actions = actions

    def status(self) -> dict[str, Any]:
        return status(self.parts)

    def devices(self) -> list[dict[str, Any]]:
        parts = self.parts
        return device_rows(parts.devices.values(), parts.cfg.inputs, parts.gpio)

    def events(self, since_seq: int | None, limit: int) -> list[dict[str, Any]]:
        parts = self.parts
        return recent_page(parts.pipeline.recent(), parts.cfg.identity, since_seq, limit)

    def subscribe_events(self) -> Any:
        return self.parts.pipeline.followers.subscribe()

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        return self.actions.read_point(device, point, gave_up)

    def test_alarm(self, requested_by: str) -> dict[str, Any]:
        stored = self.actions.test_alarm(requested_by)
        acked = self.actions.acked(Lane.EVENT, stored.seq or 0, TEST_ALARM_ACK_WAIT_S)
        return {"seq": stored.seq, "id": stored.id, "stored": True, "acked": acked}

    def silence(self) -> dict[str, Any]:
        return {"silenced": True, "was_sounding": self.parts.rules.silence()}

    def ack(self, answered_by: str) -> dict[str, Any]:
        """`alarmgw ack`: answer the duty check waiting (answered false if none was)."""
        if self.parts.duty is None:
            return {"answered": False, "response_s": None}
        return self.parts.duty.answer(answered_by)

    def buffer(self) -> dict[str, Any]:
        return self.parts.buffer.stats()

    # the UITD duties (agent/uitd_duty.py): self-test, monthly self-check

    def _duties(self) -> SelfTests:
        if self.parts.selftests is None:
            raise AlarmgwError("the self-test duties are not running")
        return self.parts.selftests

    def selftest(self, requested_by: str) -> dict[str, Any]:
        result: dict[str, Any] = self._duties().run_selftest(requested_by).as_dict()
        return result

    def selfcheck_points(self) -> dict[str, Any]:
        return {
            "points": check_points(self.parts.cfg),
            "point_timeout_s": self.parts.cfg.selftests.point_timeout_s,
        }

    def selfcheck_testing(self, device: str, point: str, seconds: float) -> dict[str, Any]:
        """The self-check declares the point it is testing now, for `seconds` (0: done):
        that point's events are tests meanwhile (agent/undertest.py). Only a point of the
        self-check's list; bounded by the walk's own timeout."""
        listed = {(p["device"], p["point"]) for p in check_points(self.parts.cfg)}
        if (device, point) not in listed:
            raise UnknownPoint(f"{device}/{point} is not a point of the self-check")
        return self.parts.pipeline.under_test.mark(device, point, seconds)

    def selfcheck_report(self, report: dict[str, Any], handed_in_by: str) -> dict[str, Any]:
        parsed = parse_report(report) | {"handed_in_by": handed_in_by}
        return self._duties().store_report(parsed)

    def selfcheck_reports(self, limit: int) -> dict[str, Any]:
        return {"reports": self._duties().reports(limit)}


class DownlinkView:
    """The downlink's view of the gateway (agent.commands.GatewayControl): results
    shaped as docs/schemas/cmd-result says."""

    def __init__(self, parts: Parts, actions: Actions) -> None:
        self.parts = parts
        self.actions = actions

    def uptime_s(self) -> float:
        return self.parts.uptime_s()

    def status(self) -> dict[str, Any]:
        """The heartbeat's health summary, taken now (not the local CLI's status)."""
        if self.parts.uplink is None:
            raise AlarmgwError("no uplink")
        return self.parts.uplink.health()

    def read_point(self, device: str, point: str | None) -> dict[str, Any]:
        return downlink_points(self.actions.read_point(device, point))

    def test_alarm(self, requested_by: str, note: str | None = None) -> Event:
        return self.actions.test_alarm(requested_by, note)

    def silence(self) -> dict[str, Any]:
        rules = self.parts.rules
        sounding = {
            "alarm": rules.alarm.silence(),
            "transmission-failed": rules.transmission.silence(),
        }
        return {"silenced": [o.id for o in self.parts.cfg.outputs if sounding.get(o.rule)]}

    def duty_check(self, requested_by: str, timeout_s: float | None) -> dict[str, Any]:
        """The platform's duty check: the prompt starts (again); the answer is an event."""
        if self.parts.duty is None:
            raise AlarmgwError("no duty check on this gateway")
        return self.parts.duty.request("platform", timeout_s, requested_by)
