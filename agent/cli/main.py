"""`alarmgw`: the technician's command on the gateway, and the service's entry point.

Offline (no agent needed):
  check-config FILE [--json] [--plan]   check a config; print every problem
  scan PORT [--baud 9600,19200] [--units 1-247] [--parity N] [--timeout 0.1]
                                        probe an RS-485 line for Modbus units (agent stopped)
  run --config FILE                     start the agent (what the systemd unit runs)
Talking to the running agent over its control socket (--socket PATH, or the
[control] socket of --config FILE, default /run/alarmgw/control.sock):
  status | devices | events [--since SEQ] [--limit N] [--follow] | read DEVICE [POINT]
  test-alarm | silence | ack | buffer   (--json on every one: the raw answer as JSON)
  selftest                              the self-test now (inputs, outputs, storage, link)
  selfcheck [--operator NAME] [--script FILE] [--show [latest|list]]
                                        the monthly self-check, guided or scripted

Exit codes mean something to scripts and to systemd:
  0   ok
  1   a problem was found: `status` shows the uplink down, a device in comm
      fault, an active alarm, a degraded buffer, an unsynchronised clock, the
      last self-test failed or simulated fire transmissions due (the last line
      says which); `devices` shows a device in comm fault; `buffer`
      is degraded; `test-alarm` was stored but not acknowledged by the broker;
      `ack` found no duty check waiting;
      `selftest` found an item failing; `selfcheck` has a failed point or an
      unconfirmed simulated fire;
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
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from agent import __version__
from agent.cli.client import DEFAULT_SOCKET
from agent.cli.live import (
    agent_command,
    run_ack,
    run_buffer,
    run_devices,
    run_events,
    run_read,
    run_silence,
    run_status,
    run_test_alarm,
)
from agent.cli.offline import cmd_buffer_file, cmd_check_config, cmd_scan
from agent.cli.output import EXIT_BAD_CONFIG, EXIT_CUT_SHORT, EXIT_USAGE, print_problems
from agent.cli.selfcheck import add_commands as add_duty_commands
from agent.config import load_config
from core.errors import ConfigError

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
        print_problems(path, exc.problems, as_json=False)
        return EXIT_BAD_CONFIG
    from agent import runtime  # noqa: PLC0415 - the offline commands need none of it

    return int(runtime.run(config, broker=args.broker))


# --- argument parsing ----------------------------------------------------------------------


def buffer_handler(
    online: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """`buffer` asks the agent; `buffer --file DB` reads a file offline instead."""

    def handler(args: argparse.Namespace) -> int:
        return online(args) if args.file is None else cmd_buffer_file(args)

    return handler


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
    add_duty_commands(sub, _agent_options, agent_command)
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
        ("ack", "answer the duty check (查岗) the gateway is prompting for", run_ack),
        ("buffer", "buffer depth per lane, oldest age, drops", run_buffer),
    )
    for name, text, run in simple:
        parser = sub.add_parser(name, help=text, description=text)
        _agent_options(parser)
        parser.set_defaults(handler=agent_command(run))
        if name == "buffer":
            parser.add_argument(
                "--file",
                metavar="DB",
                help="read a buffer file offline instead (agent stopped, or a corrupt one "
                "it moved aside); never writes to it",
            )
            parser.set_defaults(handler=buffer_handler(agent_command(run)))
    events = sub.add_parser("events", help="recent events; --follow streams new ones")
    _agent_options(events)
    events.add_argument("--since", type=int, metavar="SEQ", help="events after this seq")
    events.add_argument("--limit", type=_limit, default=20, metavar="N", help="at most N (20)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing until Ctrl-C")
    events.set_defaults(handler=agent_command(run_events))
    read = sub.add_parser("read", help="read a device's points now, through the agent")
    _agent_options(read)
    read.add_argument("device", metavar="DEVICE")
    read.add_argument("point", metavar="POINT", nargs="?")
    read.set_defaults(handler=agent_command(run_read))


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
