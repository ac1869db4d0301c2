"""`alarmgw`: the technician's command on the gateway, and the service's entry point.

Offline (no agent needed):
  check-config FILE [--json] [--plan]   check a config; print every problem
  scan PORT [--baud 9600,19200] [--units 1-247] [--parity N] [--timeout 0.1]
                                        probe an RS-485 line for Modbus units (agent stopped)
  run --config FILE                     start the agent (what the systemd unit runs)
Talking to the running agent over its control socket (--socket PATH, or the
[control] socket of --config FILE, default /run/alarmgw/control.sock):
  status | devices | events [--since SEQ] [--limit N] [--follow] | read DEVICE [POINT]
  test-alarm | silence | buffer         (--json on every one: the raw answer as JSON)

Exit codes mean something to scripts and to systemd:
  0   ok
  1   a problem was found: `status` shows the uplink down, a device in comm
      fault, an active alarm, a degraded buffer or an unsynchronised clock (the
      last line says which); `devices` shows a device in comm fault; `buffer`
      is degraded; `test-alarm` was stored but not acknowledged by the broker;
      `read` failed (unknown point, device not answering); `scan` found no unit
      or could not open the port; the agent answered with an error
  2   usage error (bad arguments)
  69  the agent is not running (EX_UNAVAILABLE: no control socket to talk to)
  75  `scan`: the serial port is busy — the running agent holds it (EX_TEMPFAIL)
  77  permission denied on the control socket or serial port (EX_NOPERM):
      use sudo or join the service group
  78  bad config (EX_CONFIG): every problem is printed as `FILE: key.path: reason`;
      for check-config this includes storage the service could not use
  141 the output was cut short: its reader went away (`alarmgw ... | head`)

Output fits an 80-column SSH terminal (Chinese names count two columns);
`--json` gives the same facts to scripts. This module must never open a serial
port for anything but `scan` (a live `read` goes through the agent, which owns
the line), never a GPIO pin, and never print a traceback for a bad config file
or an agent that is not running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__, cli_render
from agent.config import Config, DeviceConfig, LineConfig, config_digest, load_config
from agent.control import (
    DEFAULT_SOCKET,
    AgentNotRunning,
    ControlAccessDenied,
    ControlClient,
    ControlError,
)
from agent.storage_check import check_storage
from agent.textwidth import fit, width
from agent.watch import render_payload
from core.errors import BufferError_, ConfigError, ConfigProblem
from core.events import topic_root

TEST_ALARM_TIMEOUT_S = 30.0  # > the agent's 10 s to store + 10 s to see the PUBACK

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 69
EXIT_BUSY = 75
EXIT_NO_PERMISSION = 77
EXIT_BAD_CONFIG = 78
EXIT_CUT_SHORT = 141  # as a shell reports a command killed by SIGPIPE

COLUMNS = 80


def _line(text: str) -> str:
    """One output line, cut to the terminal width (never wrapped mid-table)."""
    return fit(text, COLUMNS).rstrip() if width(text) > COLUMNS else text


# --- check-config ----------------------------------------------------------------------


def _print_problems(path: str, problems: list[ConfigProblem], as_json: bool) -> None:
    if as_json:
        listed = [{"file": p.file, "key": p.key, "reason": p.reason} for p in problems]
        print(json.dumps({"ok": False, "file": path, "problems": listed}, ensure_ascii=False))
        return
    for problem in problems:
        print(problem)  # FILE: key.path: reason — not cut: the reason is the point
    count = len(problems)
    print(f"{count} problem{'s' if count != 1 else ''} in {path}")


def _line_summary(line: LineConfig) -> str:
    if line.type == "tcp":
        return f"line {line.id}: tcp {line.host}:{line.tcp_port}, timeout {line.timeout_s:g} s"
    frame = f"{line.bytesize}{line.parity}{line.stopbits}"
    return (
        f"line {line.id}: rtu {line.port} {line.baudrate} {frame}, "
        f"gap {line.inter_frame_gap_ms:.2f} ms, timeout {line.timeout_s:g} s"
    )


_DEVICE_COLUMNS = ((16, "id"), (4, "unit"), (20, "profile"))


def _device_row(device: DeviceConfig) -> str:
    name_cols = COLUMNS - 2 - sum(cols + 1 for cols, _ in _DEVICE_COLUMNS)
    cells = (
        fit(device.id, 16),
        f"{device.unit_id:>4}",
        fit(device.profile, 20),
        fit(device.name, name_cols),
    )
    return ("  " + " ".join(cells)).rstrip()


def _device_header() -> str:
    return "  " + fit("id", 16) + " unit " + fit("profile", 20) + " name"


def summary_lines(config: Config) -> list[str]:
    """The human summary of a valid config, each line at most 80 columns."""
    ident, up = config.identity, config.uplink
    tls = "TLS" if up.tls else "no TLS"
    out = [
        f"{config.path}: OK (digest {config_digest(config.path)})",
        f"gateway  {ident.site}/{ident.gateway}  {ident.site_name} {ident.gateway_name}".rstrip(),
        f"uplink   {up.host}:{up.port}  MQTT {up.mqtt_version}, {tls}, client {up.client_id}",
        f"topics   {topic_root(up.topic_prefix, ident)}/...",
        f"buffer   {config.buffer.path} (at most {config.buffer.max_events} events)",
    ]
    for line in config.lines:
        out.append(_line_summary(line))
        devices = [d for d in config.devices if d.line == line.id]
        out.append(_device_header() if devices else "  (no devices)")
        out.extend(_device_row(d) for d in devices)
    out.extend(f"input  {i.id} pin {i.pin} {i.kind}/{i.category}  {i.name}" for i in config.inputs)
    out.extend(
        f"output {o.id} pin {o.pin} {o.type} rule {o.rule}  {o.name}" for o in config.outputs
    )
    return [_line(text) for text in out]


def summary_json(config: Config) -> dict[str, Any]:
    ident, up = config.identity, config.uplink
    return {
        "ok": True,
        "file": str(config.path),
        "digest": config_digest(config.path),
        "identity": {
            "site": ident.site,
            "gateway": ident.gateway,
            "site_name": ident.site_name,
            "gateway_name": ident.gateway_name,
        },
        "uplink": {
            "host": up.host,
            "port": up.port,
            "tls": up.tls,
            "mqtt_version": up.mqtt_version,
            "client_id": up.client_id,
            "topic_root": topic_root(up.topic_prefix, ident),
        },
        "buffer": {"path": str(config.buffer.path), "max_events": config.buffer.max_events},
        "lines": [
            {
                "id": line.id,
                "type": line.type,
                "port": line.port,
                "host": line.host,
                "tcp_port": line.tcp_port,
                "baudrate": line.baudrate,
                "inter_frame_gap_ms": line.inter_frame_gap_ms,
                "devices": [
                    {"id": d.id, "unit_id": d.unit_id, "profile": d.profile, "name": d.name}
                    for d in config.devices
                    if d.line == line.id
                ],
            }
            for line in config.lines
        ],
        "inputs": [{"id": i.id, "pin": i.pin, "name": i.name} for i in config.inputs],
        "outputs": [
            {"id": o.id, "pin": o.pin, "rule": o.rule, "name": o.name} for o in config.outputs
        ],
    }


def _plan_text(config: Config) -> str:
    from drivers.plan import render_plan  # noqa: PLC0415 - only --plan needs the planner

    return render_plan(config)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        _print_problems(args.file, exc.problems, args.json)
        return EXIT_BAD_CONFIG
    storage = check_storage(config)  # as the service will see it (check-config only)
    if storage.problems:
        problems = [ConfigProblem(args.file, key, reason) for key, reason in storage.problems]
        _print_problems(args.file, problems, args.json)
        return EXIT_BAD_CONFIG
    warnings = [{"key": key, "reason": reason} for key, reason in storage.warnings]
    if args.json:
        result = summary_json(config)
        result["warnings"] = warnings
        if args.plan:
            result["plan"] = _plan_text(config)
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return EXIT_OK
    for text in summary_lines(config):
        print(text)
    for warning in warnings:
        print(f"{args.file}: warning: {warning['key']}: {warning['reason']}")
    if args.plan:
        print(_plan_text(config))
    return EXIT_OK


# --- run ---------------------------------------------------------------------------------


def _broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def cmd_run(args: argparse.Namespace) -> int:
    path = args.config_file or args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems, as_json=False)
        return EXIT_BAD_CONFIG
    from agent import runtime  # noqa: PLC0415 - the offline commands need none of it

    return int(runtime.run(config, broker=args.broker))


# --- talking to the running agent ------------------------------------------------------


def _socket_from_config(path: str) -> Path:
    """The [control] socket of a config file; ConfigError naming file and key.

    Only this key is read: a technician half-way through editing another
    section must still be able to see what the running agent says."""
    try:
        with Path(path).open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "", f"cannot read: {exc.strerror}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(path, "", f"not valid TOML: {exc}")]) from exc
    control = raw.get("control", {})
    socket_path = control.get("socket", str(DEFAULT_SOCKET)) if isinstance(control, dict) else None
    if not isinstance(socket_path, str) or not socket_path:
        raise ConfigError([ConfigProblem(path, "control.socket", "must be a path (a string)")])
    # relative paths are relative to the config file, as the agent reads them
    return Path(path).resolve().parent / socket_path


def _client(args: argparse.Namespace) -> ControlClient:
    if args.socket:
        return ControlClient(Path(args.socket))
    if args.config:
        return ControlClient(_socket_from_config(args.config))
    return ControlClient(DEFAULT_SOCKET)


def _emit(args: argparse.Namespace, result: Any, lines: Iterable[str]) -> None:
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for text in lines:
            print(text)


def _error(text: str) -> None:
    print(f"alarmgw: {text}", file=sys.stderr)  # not cut: the reason is the point


def _agent_command(
    run: Callable[[argparse.Namespace, ControlClient], int],
) -> Callable[[argparse.Namespace], int]:
    """Wrap a command that needs the agent: every failure becomes a documented exit code."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args, _client(args))
        except ConfigError as exc:
            _print_problems(args.config, exc.problems, as_json=False)
            return EXIT_BAD_CONFIG
        except AgentNotRunning as exc:
            _error(f"the agent is not running ({exc})\nstart it: sudo systemctl start alarmgw")
            return EXIT_NOT_RUNNING
        except ControlAccessDenied as exc:
            _error(str(exc))
            return EXIT_NO_PERMISSION
        except ControlError as exc:
            _error(f"the agent answered: {exc.code}: {exc.message}")
            return EXIT_PROBLEM

    return handler


def _buffer_handler(
    online: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return online(args) if args.file is None else cmd_buffer_file(args)

    return handler


def cmd_buffer_file(args: argparse.Namespace) -> int:
    """`alarmgw buffer --file DB`: what a buffer file holds, read-only, without the agent."""
    # imported here: sqlite-utils (and click under it) costs ~14 MB that `alarmgw run`,
    # which shares this entry point, must not carry on a 1 GB Pi
    from agent import buffer_file  # noqa: PLC0415

    try:
        info = buffer_file.inspect(Path(args.file))
    except BufferError_ as exc:
        _error(str(exc))
        return EXIT_PROBLEM
    lines = [f"buffer file {info['file']}  (integrity: {info['integrity']})"]
    for lane in ("event", "telemetry"):
        row = info["lanes"].get(lane)
        if row is None:
            lines.append(f"  {lane:<9} empty")
            continue
        lines.append(
            f"  {lane:<9} {row['depth']} queued, seq {row['first_seq']}..{row['last_seq']}, "
            f"oldest {row['oldest_age_s']} s"
        )
    if info["meta"]:
        lines.append("  next seq " + ", ".join(f"{k}={v}" for k, v in info["meta"].items()))
    lines += [
        "  "
        + (
            f"DAMAGED payload ({event['damaged']}): {event.get('raw', '')}"
            if "damaged" in event
            else render_payload("event", event)
        )
        for event in info["newest_events"]
    ]
    _emit(args, info, [cli_render.clip(text) for text in lines])
    healthy = info["integrity"] == "ok"
    return EXIT_OK if healthy else EXIT_PROBLEM


def run_status(args: argparse.Namespace, client: ControlClient) -> int:
    status = client.call("status")
    _emit(args, status, cli_render.render_status(status))
    return EXIT_PROBLEM if cli_render.problems(status) else EXIT_OK


def run_devices(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("devices")
    devices = result.get("devices", [])
    _emit(args, result, cli_render.render_devices(devices))
    return EXIT_PROBLEM if any(d.get("comm") == "lost" for d in devices) else EXIT_OK


def run_events(args: argparse.Namespace, client: ControlClient) -> int:
    request: dict[str, Any] = {"limit": args.limit}
    if args.since is not None:
        request["since_seq"] = args.since
    if not args.follow:
        result = client.call("events", **request)
        _emit(args, result, cli_render.render_events(result.get("events", [])))
        return EXIT_OK
    stream = client.stream("events", follow=True, **request)
    try:
        _follow(args, stream)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends
    finally:
        close = getattr(stream, "close", None)  # a generator: closing it closes the socket
        if close is not None:
            close()
    return EXIT_OK


def _follow(args: argparse.Namespace, stream: Iterable[dict[str, Any]]) -> None:
    """Print the backlog, then each event as it is stored, one line (or JSON object) each."""
    for message in stream:
        if "result" in message:
            items = message["result"].get("events", [])
        elif "event" in message:
            items = [message["event"]]
        else:
            items = []
            notice = message.get("notice", {})
            # 80 columns: the events are buffered and delivered; only this screen missed them
            missed = notice.get("missed")
            text = f"(missed {missed} here; all are buffered for the platform; see `events`)"
            print(json.dumps(message, ensure_ascii=False) if args.json else text, flush=True)
        for event in items:
            text = (
                json.dumps(event, ensure_ascii=False) if args.json else cli_render.event_row(event)
            )
            print(text, flush=True)


def run_read(args: argparse.Namespace, client: ControlClient) -> int:
    request = {"device": args.device}
    if args.point:
        request["point"] = args.point
    result = client.call("read", **request)
    _emit(args, result, cli_render.render_read(result))
    points = result.get("points", {})
    return EXIT_PROBLEM if any("error" in v for v in points.values()) else EXIT_OK


def run_test_alarm(args: argparse.Namespace, client: ControlClient) -> int:
    # the agent may take 10 s to store it and 10 s more to hear the broker's PUBACK; giving
    # up sooner would report a failure for an alarm that went, and invite a second one
    client.timeout_s = max(client.timeout_s, TEST_ALARM_TIMEOUT_S)
    result = client.call("test_alarm", requested_by="cli")
    _emit(args, result, cli_render.render_test_alarm(result))
    return EXIT_OK if result.get("acked") else EXIT_PROBLEM


def run_silence(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("silence")
    was = "it was sounding" if result.get("was_sounding") else "it was not sounding"
    _emit(args, result, [f"local buzzer silenced until the next new alarm ({was})"])
    return EXIT_OK


def run_buffer(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("buffer")
    _emit(args, result, cli_render.render_buffer(result))
    return EXIT_PROBLEM if result.get("degraded") else EXIT_OK


# --- scan (offline) ------------------------------------------------------------------------


def _scan_profiles(config_path: str | None) -> dict[str, Any]:
    """Built-in and system profiles, then the site's own (from --config) on top."""
    from agent.config import BUILTIN_PROFILE_DIR, SYSTEM_PROFILE_DIR  # noqa: PLC0415
    from drivers.profile import find_profiles, load_profile  # noqa: PLC0415

    profiles: dict[str, Any] = {}
    for profile_id, path in find_profiles([BUILTIN_PROFILE_DIR, SYSTEM_PROFILE_DIR]).items():
        try:
            profiles[profile_id] = load_profile(path)
        except ConfigError as exc:
            _error(f"skipping profile {profile_id}: {exc.problems[0]}")
    if config_path:
        profiles.update(load_config(config_path).profiles)
    return profiles


def _agent_owning(port: str, config_path: str | None) -> str | None:
    """'line ID' if the running agent's config has this port and the agent answers."""
    if not config_path:
        return None
    try:
        config = load_config(config_path)
        owned = [
            line.id
            for line in config.lines
            if line.port and Path(line.port).resolve() == Path(port).resolve()
        ]
        if owned:
            ControlClient(config.control.socket, timeout_s=2).call("ping")
            return f"line {owned[0]}"
    except (ConfigError, AgentNotRunning, ControlAccessDenied, ControlError):
        return None
    return None


def _busy_message(port: str, owner: str | None) -> str:
    who = f"the running agent owns it ({owner})" if owner else "another process holds it"
    return (
        f"{port} is busy: {who}.\n"
        "Stop the agent first:  sudo systemctl stop alarmgw\n"
        "and start it again when done:  sudo systemctl start alarmgw"
    )


def _progress(baudrate: int, unit: int, total: int) -> None:
    print(f"\r  {baudrate} baud: unit {unit:>3} of {total}  ", end="", file=sys.stderr, flush=True)


def cmd_scan(args: argparse.Namespace) -> int:
    from drivers import scan  # noqa: PLC0415 - only this command needs the serial layer

    try:
        settings = scan.ScanSettings(
            port=args.port,
            baudrates=scan.parse_baudrates(args.baud),
            units=scan.parse_units(args.units),
            parity=args.parity,
            timeout_s=args.timeout,
        )
        profiles = _scan_profiles(args.config)
    except ValueError as exc:
        _error(f"scan: {exc}")
        return EXIT_USAGE
    except ConfigError as exc:
        _print_problems(args.config, exc.problems, as_json=False)
        return EXIT_BAD_CONFIG
    owner = _agent_owning(args.port, args.config)
    if owner is not None:
        _error(_busy_message(args.port, owner))
        return EXIT_BUSY
    if not args.json:
        for text in cli_render.scan_header(settings):
            print(text, flush=True)
    progress = _progress if sys.stderr.isatty() and not args.json else None
    try:
        report = scan.scan(settings, profiles, progress)
    except scan.PortBusy:
        _error(_busy_message(args.port, None))
        return EXIT_BUSY
    except scan.PortUnavailable as exc:
        _error(f"scan: {exc}")
        return EXIT_NO_PERMISSION if "Permission denied" in str(exc) else EXIT_PROBLEM
    finally:
        if progress is not None:
            print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)
    _emit(args, cli_render.scan_json(settings, report), cli_render.render_scan(report))
    return EXIT_OK if report.found else EXIT_PROBLEM


# --- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarmgw",
        description="Care-home safety gateway agent.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alarmgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check-config", help="check a config file offline")
    check.add_argument(
        "file", metavar="FILE", help="the config file, e.g. /etc/alarmgw/alarmgw.toml"
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--plan", action="store_true", help="also show the Modbus request plan")
    check.set_defaults(handler=cmd_check_config)

    run = sub.add_parser("run", help="run the agent (as the systemd service does)")
    run.add_argument("config_file", nargs="?", metavar="FILE", help="the config file")
    run.add_argument(
        "--config",
        default="/etc/alarmgw/alarmgw.toml",
        metavar="FILE",
        help="the config file (default %(default)s)",
    )
    run.add_argument(
        "--broker",
        type=_broker,
        metavar="HOST:PORT",
        help="override the config's broker (commissioning, demos)",
    )
    run.set_defaults(handler=cmd_run)
    _add_agent_commands(sub)
    _add_scan(sub)
    return parser


_EPILOG = """exit codes:
  0   ok
  1   a problem found: status shows the uplink down, a device in comm fault,
      an active alarm, a degraded buffer or an unsynchronised clock; a test
      alarm not acknowledged by the broker; a failed read; scan found nothing
  2   usage error
  69  the agent is not running (no control socket answers)
  75  scan: the serial port is busy (stop the agent: sudo systemctl stop alarmgw)
  77  permission denied (use sudo or join the service group)
  78  bad config (each problem as FILE: key: reason)
  141 the output was cut short (its reader went away, e.g. | head)
"""


def _agent_options(parser: argparse.ArgumentParser, *, reads: bool = True) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", metavar="PATH", help=f"control socket (default {DEFAULT_SOCKET})"
    )
    where.add_argument("--config", metavar="FILE", help="take the socket from this config file")
    if reads:
        parser.add_argument("--json", action="store_true", help="the raw answer as JSON")
    else:
        parser.set_defaults(json=False)


def _add_agent_commands(sub: Any) -> None:
    simple = (
        ("status", "one screen: uplink, buffer, lines, devices, alarms", run_status),
        ("devices", "every device with its comm state and last good poll", run_devices),
        ("test-alarm", "fire a test-flagged alarm end to end", run_test_alarm),
        ("silence", "silence the local buzzer until the next new alarm", run_silence),
        ("buffer", "buffer depth per lane, oldest age, drops", run_buffer),
    )
    for name, text, run in simple:
        parser = sub.add_parser(name, help=text, description=text)
        _agent_options(parser)
        parser.set_defaults(handler=_agent_command(run))
        if name == "buffer":
            parser.add_argument(
                "--file",
                metavar="DB",
                help="read a buffer file offline instead (agent stopped, or a corrupt one "
                "it moved aside); never writes to it",
            )
            parser.set_defaults(handler=_buffer_handler(_agent_command(run)))
    events = sub.add_parser("events", help="recent events; --follow streams new ones")
    _agent_options(events)
    events.add_argument("--since", type=int, metavar="SEQ", help="events after this seq")
    events.add_argument("--limit", type=_limit, default=20, metavar="N", help="at most N (20)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing until Ctrl-C")
    events.set_defaults(handler=_agent_command(run_events))
    read = sub.add_parser("read", help="read a device's points now, through the agent")
    _agent_options(read)
    read.add_argument("device", metavar="DEVICE")
    read.add_argument("point", metavar="POINT", nargs="?")
    read.set_defaults(handler=_agent_command(run_read))


def _limit(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected 0..1000, got {text!r}")
    return int(text)


def _add_scan(sub: Any) -> None:
    scan = sub.add_parser(
        "scan",
        help="probe a serial line for Modbus units (offline: the agent must be stopped)",
    )
    scan.add_argument("port", metavar="PORT", help="e.g. /dev/ttyUSB0")
    scan.add_argument("--baud", default="9600", help="comma-separated baud rates (9600)")
    scan.add_argument("--units", default="1-247", help="unit ids, e.g. 1-247 or 1,3,5-8")
    scan.add_argument("--parity", default="N", choices=("N", "E", "O"))
    scan.add_argument("--timeout", type=float, default=0.1, help="seconds per probe (0.1)")
    scan.add_argument("--config", metavar="FILE", help="also try the site's own profiles")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.set_defaults(handler=cmd_scan)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # `alarmgw check-config FILE | head`: the reader has all it wanted. Point stdout
        # at /dev/null so the interpreter's final flush cannot raise the same again.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_CUT_SHORT


if __name__ == "__main__":
    sys.exit(main())
