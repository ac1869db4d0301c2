"""`alarmgw`: the technician's command on the gateway, and the service's entry point.

Subcommands (more arrive as their modules land):
  check-config FILE [--json] [--plan]   check a config offline; print every problem
  run --config FILE                     start the agent (what the systemd unit runs)

Exit codes mean something to scripts and to systemd:
  0   ok
  1   a problem was found (e.g. a part of the agent is not installed)
  2   usage error (bad arguments)
  69  the agent is not running (EX_UNAVAILABLE: no control socket to talk to)
  78  bad config (EX_CONFIG): every problem is printed as `FILE: key.path: reason`

Output fits an 80-column SSH terminal (Chinese names count two columns);
`--json` gives the same facts to scripts. This module must never open a serial
port, a socket or a GPIO pin for an offline check, and never print a traceback
for a bad config file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from agent import __version__
from agent.config import Config, DeviceConfig, LineConfig, config_digest, load_config
from agent.errors import ConfigError, ConfigProblem
from agent.events import topic_root
from agent.textwidth import fit, width

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 69
EXIT_BAD_CONFIG = 78

COLUMNS = 80


def _optional_module(name: str) -> ModuleType | None:
    """A module written by another part of the project, or None while it does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the module exists but lacks a dependency: a real bug, show it
        return None


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
    plan = _optional_module("drivers.plan")
    render: Callable[[Config], str] | None = getattr(plan, "render_plan", None)
    if render is None:
        return "request plan not available yet"
    return render(config)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        _print_problems(args.file, exc.problems, args.json)
        return EXIT_BAD_CONFIG
    if args.json:
        result = summary_json(config)
        if args.plan:
            result["plan"] = _plan_text(config)
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return EXIT_OK
    for text in summary_lines(config):
        print(text)
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


# --- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alarmgw", description="Care-home safety gateway agent.")
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
    return parser


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
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
