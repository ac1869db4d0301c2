"""The running simulated world: lines, TCP devices, GPIO, timeline, stimulus log.

`Simulator(scenario).start()` brings up what a scenario describes; `apply()`
is the one door every stimulus goes through (timeline, control socket, tests),
so every stimulus is logged as a JSON line with wall-clock ms and monotonic
time, and stimulus-to-feed latency can be measured. `close()` frees every
pty, socket, link and thread it made.

It must never leave a stale symlink or socket behind, and a bad stimulus must
never stop it: `apply` raises SimulatorError and the world carries on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import IO, Any

from core.events import Kind
from drivers.profile import PointSpec
from drivers.types import Direction
from simulator.devices import SimDevice, SimulatorError, unknown
from simulator.faults import FaultSet, make_fault
from simulator.gpio_server import GpioBoard, GpioServer, SimInput, SimOutput, wall_ms
from simulator.platform import PlatformError, PlatformStandIn
from simulator.pty import PtyPair
from simulator.scenario import DeviceSpec, Scenario
from simulator.tcp import TcpDeviceServer
from simulator.wire import RtuLineServer, SerialSettings

log = logging.getLogger(__name__)


def build_device(spec: DeviceSpec) -> SimDevice:
    device = SimDevice(spec.id, spec.unit_id, spec.profile, writable_all=spec.writable_all)
    for point, state in spec.states.items():
        device.set_state(point, state)
    for point, value in spec.values.items():
        device.set_value(point, value)
    device.settings.clear()  # initial conditions are not stimuli
    return device


class StimulusLog:
    """Append-only JSON lines, flushed per record so a reader sees each as it happens."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        stamped = {"wall_ms": wall_ms(), "mono": time.monotonic(), **record}
        if self._file is not None:
            with self._lock:
                self._file.write(json.dumps(stamped, ensure_ascii=False) + "\n")
                self._file.flush()
        return stamped

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class Simulator:
    """Everything a scenario describes, running. Use start()/close() or `with`."""

    def __init__(
        self,
        scenario: Scenario,
        log: Path | None = None,
        gpio_socket: Path | None = None,
        run_timeline: bool = True,
        broker: tuple[str, int] | None = None,
    ) -> None:
        self.scenario = scenario
        # the platform's stand-in, for duty-check steps (simulator/platform.py)
        self.platform = (
            PlatformStandIn(scenario.platform, broker) if scenario.platform is not None else None
        )
        self.devices: dict[str, SimDevice] = {}
        self.device_line: dict[str, str] = {}
        self.line_faults: dict[str, FaultSet] = {}
        self.lines: dict[str, RtuLineServer] = {}
        self.tcp: dict[str, TcpDeviceServer] = {}
        self._ptys: list[PtyPair] = []
        self._before_alarm: dict[tuple[str, str], str | float] = {}  # restored by clear-alarm
        self.board = GpioBoard(
            [SimInput(i.id, i.pin, i.active, i.rail, i.initially_active) for i in scenario.inputs],
            [SimOutput(o.id, o.pin) for o in scenario.outputs],
        )
        self.gpio_socket = gpio_socket or scenario.gpio_socket
        self._gpio: GpioServer | None = None
        self.log = StimulusLog(log or scenario.log)
        self._run_timeline = run_timeline
        self._stop = threading.Event()
        self._timeline: threading.Thread | None = None
        self.started_mono = 0.0
        self.timeline_errors: list[str] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Simulator:
        try:
            self._start_lines()
            for tcp_spec in self.scenario.tcp_devices:
                device = build_device(tcp_spec.device)
                self.devices[device.id] = device
                server = TcpDeviceServer(device.id, device, device.unit_id, tcp_spec.port)
                self.tcp[device.id] = server.start()
            self._gpio = GpioServer(self.board, self.gpio_socket).start()
        except Exception:
            self.close()
            raise
        self.started_mono = time.monotonic()
        self.log.write({"source": "simulator", "do": "start", "scenario": str(self.scenario.path)})
        if self._run_timeline and self.scenario.steps:
            self._timeline = threading.Thread(target=self._play, name="sim-timeline", daemon=True)
            self._timeline.start()
        return self

    def _start_lines(self) -> None:
        for line in self.scenario.lines:
            units = {}
            for spec in line.devices:
                device = build_device(spec)
                self.devices[device.id] = device
                self.device_line[device.id] = line.id
                units[device.unit_id] = device
            line.path.parent.mkdir(parents=True, exist_ok=True)
            pair = PtyPair(link_a=line.path)
            self._ptys.append(pair)
            faults = FaultSet(seed=len(self.line_faults) + 1000)
            self.line_faults[line.id] = faults
            settings = SerialSettings(line.baudrate, line.parity, line.stopbits)
            server = RtuLineServer(line.id, pair.b, units, settings, line.wire_time, faults)
            self.lines[line.id] = server.start()

    def close(self) -> None:
        self._stop.set()
        if self._timeline is not None:
            self._timeline.join(timeout=5)
            self._timeline = None
        for server in self.lines.values():
            server.close()
        for tcp in self.tcp.values():
            tcp.close()
        for pair in self._ptys:
            pair.close()
        self._ptys.clear()
        if self._gpio is not None:
            self._gpio.close()
            self._gpio = None
        self.log.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_timeline(self, timeout: float | None = None) -> bool:
        """Wait for a one-shot timeline to finish; True if it has."""
        if self._timeline is None:
            return True
        self._timeline.join(timeout)
        return not self._timeline.is_alive()

    # -- the timeline ----------------------------------------------------------

    def _play(self) -> None:
        t0 = self.started_mono
        while not self._stop.is_set():
            for step in self.scenario.steps:
                if self._stop.wait(max(0.0, t0 + step.at - time.monotonic())):
                    return
                try:
                    self.apply(step.action, source="timeline", at=step.at)
                except SimulatorError as exc:  # checked at load; a clash with live driving
                    self.timeline_errors.append(str(exc))
                    log.warning("timeline step at %ss: %s", step.at, exc)
            if not self.scenario.loop:
                return
            t0 += self.scenario.period

    # -- stimuli ---------------------------------------------------------------

    def device(self, device_id: str) -> SimDevice:
        if device_id not in self.devices:
            raise unknown("device", device_id, list(self.devices))
        return self.devices[device_id]

    def _fault_target(self, target: str) -> FaultSet:
        if target in self.line_faults:
            return self.line_faults[target]
        if target in self.devices:
            return self.devices[target].faults
        raise unknown("device or line", target, [*self.devices, *self.line_faults])

    def apply(self, action: dict[str, Any], source: str = "api", **extra: Any) -> dict[str, Any]:
        """Carry out one stimulus and log it; returns the logged record."""
        do = action.get("do")
        try:
            self._dispatch(str(do), action)
        except KeyError as exc:
            raise SimulatorError(f"action {do!r} needs {exc}") from None
        except SimulatorError:
            raise
        except ValueError as exc:  # a bad fault kind or rate from the control socket
            raise SimulatorError(str(exc)) from None
        return self.log.write({"source": source, **action, **extra})

    def _dispatch(self, do: str, a: dict[str, Any]) -> None:
        if do == "state":
            self.device(a["device"]).set_state(str(a["point"]), str(a["state"]))
        elif do == "value":
            self.device(a["device"]).set_value(str(a["point"]), _number(a["value"]))
        elif do == "silence":
            self.device(a["device"]).silence()
        elif do == "revive":
            self.device(a["device"]).revive()
        elif do in ("alarm", "clear-alarm"):
            self._alarm(str(a["device"]), str(a["point"]), active=do == "alarm")
        elif do in ("press", "release"):
            self.board.set_input(str(a["input"]), do == "press")
        elif do == "fault":
            fault = make_fault(
                str(a["kind"]),
                float(a.get("rate", 1.0)),
                float(a.get("delay", 1.0)),
                int(a.get("code", 4)),
            )
            self._fault_target(str(a["target"])).set(fault)
        elif do == "duty-check":
            self._duty_check(a.get("timeout_s"))
        elif do == "clear-fault":
            kind = a.get("kind")
            self._fault_target(str(a["target"])).clear(make_fault(str(kind)).kind if kind else None)
        else:
            raise SimulatorError(f"unknown action {do!r}")

    def _duty_check(self, timeout_s: Any) -> None:
        if self.platform is None:
            raise SimulatorError("no [platform] in the scenario: nobody to ask for a duty check")
        try:
            self.platform.duty_check(None if timeout_s is None else int(timeout_s))
        except PlatformError as exc:
            raise SimulatorError(str(exc)) from None

    def _alarm(self, device: str, point: str, *, active: bool) -> None:
        """Put a point into its alarm (or back to normal): a GPIO input (point `contact`)
        is pressed or released; a device point gets its profile's alarm state, flag or a
        value past its alarm threshold, and back its value from before."""
        if device in self.board.inputs and point == "contact":
            self.board.set_input(device, active)
            return
        dev = self.device(device)
        spec = dev.point(point)
        key = (device, point)
        if not active and key in self._before_alarm:
            before = self._before_alarm.pop(key)
            if isinstance(before, str):
                dev.set_state(point, before)
            else:
                dev.set_value(point, before)
            return
        stimulus = alarm_stimulus(spec, active=active)
        if active:
            setting = dev.settings.get(point)
            if setting is not None:
                was = setting.state if setting.state else setting.value
                if was is not None:
                    self._before_alarm[key] = was
        if isinstance(stimulus, str):
            dev.set_state(point, stimulus)
        else:
            dev.set_value(point, stimulus)

    def state(self) -> dict[str, Any]:
        """The whole simulated world, as plain data (what `alarmgw-sim state` prints)."""
        lines = {
            line_id: {
                "path": str(self._ptys[i].a) if i < len(self._ptys) else None,
                "faults": [f.describe() for f in self.line_faults[line_id].active()],
                "requests": server.stats.requests,
                "answered": server.stats.answered,
                "bad_crc": server.stats.bad_crc,
                "devices": [d for d, ln in self.device_line.items() if ln == line_id],
            }
            for i, (line_id, server) in enumerate(self.lines.items())
        }
        tcp = {d: {"port": s.port, "requests": s.requests} for d, s in self.tcp.items()}
        devices = {d: dev.snapshot() for d, dev in self.devices.items()}
        return {
            "scenario": str(self.scenario.path),
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "lines": lines,
            "tcp": tcp,
            "devices": devices,
            **self.board.snapshot(),
        }


def alarm_stimulus(spec: PointSpec, *, active: bool) -> str | float:
    """The state name (or the value) that puts `spec` into its alarm, or out of it."""
    if spec.states:
        for code_spec in spec.states.values():
            if (code_spec.kind is Kind.ALARM) if active else code_spec.normal:
                return code_spec.state
    if spec.flag is not None and spec.flag.kind is Kind.ALARM:
        return 1.0 if active else 0.0
    for threshold in spec.thresholds.values():
        if threshold.kind is not Kind.ALARM:
            continue
        # well past the profile's value: a site may have raised it (a device's override),
        # which the simulator does not know; within the point's range when it has one
        step = max(threshold.hysteresis, abs(threshold.value) / 2) or 1.0
        sign = 1 if threshold.direction is Direction.ABOVE else -1
        value = threshold.value + sign * (step if active else -2 * step)
        if spec.eng_range is not None:
            value = min(max(value, spec.eng_range[0]), spec.eng_range[1])
        return value
    raise SimulatorError(f"point {spec.id!r} has no alarm to trigger")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SimulatorError(f"not a number: {value!r}") from None
