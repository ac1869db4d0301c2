"""`alarmgw-sim`: run a scenario, or drive a running simulator by hand (a training rig).

    alarmgw-sim run SCENARIO [--control SOCK] [--log FILE] [--gpio SOCK] [--no-timeline] [--loop]
                             [--broker HOST:PORT]
    alarmgw-sim trigger DEVICE POINT STATE      alarmgw-sim set DEVICE POINT VALUE
    alarmgw-sim press INPUT | release INPUT     alarmgw-sim silence DEVICE | revive DEVICE
    alarmgw-sim fault TARGET KIND [--rate R] [--delay S] [--code C]
    alarmgw-sim fault --clear TARGET [KIND]     alarmgw-sim state [--json]
    alarmgw-sim centre serve|mode|duty-check|clock-sync|initialise|read|disconnect|state

Exit codes: 0 done; 1 the simulator refused (unknown device, point, state...);
2 usage; 3 no simulator running; 78 the scenario file is invalid.
It must never leave ptys, links or sockets behind when `run` stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from simulator.centre import DEFAULT_ADDRESS, MODES, Centre, CentreControl, request
from simulator.scenario import RUN_DIR

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_CONFIG = 1, 2, 3, 78


def _default_control() -> str:
    return os.environ.get("ALARMGW_SIM_CONTROL", str(RUN_DIR / "control.sock"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alarmgw-sim", description="alarmgw hardware simulator")
    p.add_argument(
        "--control",
        default=None,
        help="control socket (default: the scenario's, "
        "or $ALARMGW_SIM_CONTROL, or /tmp/alarmgw-sim/control.sock)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="bring up a scenario until SIGINT/SIGTERM")
    run.add_argument("scenario", type=Path)
    run.add_argument("--log", type=Path, help="stimulus log (JSON lines)")
    run.add_argument("--gpio", type=Path, help="GPIO socket for the pin factory")
    run.add_argument("--no-timeline", action="store_true", help="do not play the timeline")
    run.add_argument("--loop", action="store_true", help="repeat the timeline every period")
    run.add_argument(
        "--broker",
        type=_host_port,
        metavar="HOST:PORT",
        help="the broker the platform's stand-in publishes to (default: the scenario's)",
    )
    for name, args, text in (
        ("trigger", ("device", "point", "state"), "put a point into a state"),
        ("set", ("device", "point", "value"), "give an analog point a value"),
        ("press", ("input",), "activate a contact (press, open the door...)"),
        ("release", ("input",), "deactivate a contact"),
        ("silence", ("device",), "make a device stop answering"),
        ("revive", ("device",), "make a silenced device answer again"),
        ("alarm", ("device", "point"), "put a point (or an input's contact) into its alarm"),
        ("clear-alarm", ("device", "point"), "bring it back to normal"),
    ):
        sp = sub.add_parser(name, help=text)
        for arg in args:
            sp.add_argument(arg)
    duty = sub.add_parser("duty-check", help="ask the gateway for a duty check, as the platform")
    duty.add_argument("--timeout-s", type=int, metavar="S", help="10..3600 (default the gateway's)")
    pulse = sub.add_parser(
        "pulse",
        help="alarm, hold, then clear-alarm: what a technician does to a detector during "
        "the monthly self-check (`alarmgw selfcheck --script` runs it per point)",
    )
    pulse.add_argument("device", help="a device, or an input (with point `contact`)")
    pulse.add_argument("point")
    pulse.add_argument(
        "--hold",
        type=float,
        default=5.0,
        help="seconds in alarm (5): longer than the point's confirm_s plus one poll",
    )
    fault = sub.add_parser("fault", help="inject (or --clear) a fault on a device or line")
    fault.add_argument("--clear", action="store_true")
    fault.add_argument("target")
    fault.add_argument("kind", nargs="?")
    fault.add_argument("--rate", type=float, default=1.0)
    fault.add_argument("--delay", type=float, default=1.0)
    fault.add_argument("--code", type=int, default=4)
    state = sub.add_parser("state", help="print the whole simulated state")
    state.add_argument("--json", action="store_true")
    _centre_parser(sub)
    return p


# subcommand -> (action, the argparse names that become request fields)
_SIMPLE = {
    "trigger": ("state", ("device", "point", "state")),
    "set": ("value", ("device", "point", "value")),
    "press": ("press", ("input",)),
    "release": ("release", ("input",)),
    "silence": ("silence", ("device",)),
    "revive": ("revive", ("device",)),
    "alarm": ("alarm", ("device", "point")),
    "clear-alarm": ("clear-alarm", ("device", "point")),
}


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.cmd in _SIMPLE:
        do, names = _SIMPLE[args.cmd]
        return {"do": do, **{n: getattr(args, n) for n in names}}
    if args.cmd == "duty-check":
        req: dict[str, Any] = {"do": "duty-check"}
        return {**req, "timeout_s": args.timeout_s} if args.timeout_s else req
    if args.cmd == "fault":
        if args.clear:
            req = {"do": "clear-fault", "target": args.target}
            return {**req, "kind": args.kind} if args.kind else req
        return {
            "do": "fault",
            "target": args.target,
            "kind": args.kind,
            "rate": args.rate,
            "delay": args.delay,
            "code": args.code,
        }
    return {"do": "get-state"}


def _print_state(state: dict[str, Any]) -> None:
    print(f"scenario {state['scenario']}  up {state['uptime_s']:.0f} s")
    for line_id, line in state["lines"].items():
        faults = ", ".join(f["kind"] for f in line["faults"]) or "-"
        print(f"line {line_id}  {line['path']}  requests {line['requests']}  faults {faults}")
    for dev_id, dev in state["devices"].items():
        flags = " SILENT" if dev["silenced"] else ""
        faults = ", ".join(f["kind"] for f in dev["faults"]) or "-"
        print(f"  {dev_id:<10} unit {dev['unit_id']:<3} {dev['profile']}{flags}  faults {faults}")
        for point, setting in dev["points"].items():
            shown = setting["state"] if setting["state"] is not None else setting["value"]
            print(f"      {point:<20} {shown}")
    for in_id, inp in state["inputs"].items():
        print(
            f"input  {in_id:<14} pin {inp['pin']:<3} {'ACTIVE' if inp['active'] else 'idle':<6}"
            f" level {inp['level']}"
        )
    for out_id, out in state["outputs"].items():
        print(
            f"output {out_id:<14} pin {out['pin']:<3} state {out['state']}  "
            f"changes {out['changes']}"
        )


def _drive(args: argparse.Namespace) -> int:
    from simulator.control import SimulatorUnreachable, call  # noqa: PLC0415 - keeps run lean

    if args.cmd == "pulse":
        return _pulse(args)
    if args.cmd == "fault" and not args.clear and not args.kind:
        print("alarmgw-sim fault: KIND is required (or use --clear)", file=sys.stderr)
        return EXIT_USAGE
    try:
        reply = call(Path(args.control or _default_control()), _request(args))
    except SimulatorUnreachable as exc:
        print(f"alarmgw-sim: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"alarmgw-sim: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.cmd == "state":
        if args.json:
            print(json.dumps(reply["state"], ensure_ascii=False, indent=1))
        else:
            _print_state(reply["state"])
    return 0


def _pulse(args: argparse.Namespace) -> int:
    from simulator.control import SimulatorUnreachable, call  # noqa: PLC0415

    path = Path(args.control or _default_control())
    target = {"device": args.device, "point": args.point}
    try:
        reply = call(path, {"do": "alarm", **target})
        if reply.get("ok"):
            time.sleep(args.hold)  # a person holding the test button or the test gas
            reply = call(path, {"do": "clear-alarm", **target})
    except SimulatorUnreachable as exc:
        print(f"alarmgw-sim: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"alarmgw-sim: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def _run(args: argparse.Namespace) -> int:
    from simulator.control import ControlServer  # noqa: PLC0415
    from simulator.scenario import load_scenario  # noqa: PLC0415
    from simulator.world import Simulator  # noqa: PLC0415

    try:
        scenario = load_scenario(args.scenario)
    except ConfigError as exc:
        print(f"alarmgw-sim: invalid scenario:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.loop:
        scenario = dataclasses.replace(scenario, loop=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    control_path = Path(args.control) if args.control else scenario.control
    sim = Simulator(
        scenario,
        log=args.log,
        gpio_socket=args.gpio,
        run_timeline=not args.no_timeline,
        broker=args.broker,
    )
    with sim:
        control = ControlServer(sim, control_path).start()
        try:
            for line_id, line in sim.state()["lines"].items():
                print(f"line {line_id} at {line['path']}", flush=True)
            for dev_id, tcp in sim.tcp.items():
                print(f"tcp {dev_id} at 127.0.0.1:{tcp.port}", flush=True)
            print(f"gpio at {sim.gpio_socket}", flush=True)
            print(f"control at {control_path}", flush=True)
            print("ready", flush=True)
            stop.wait()
        finally:
            control.close()
    print("stopped", flush=True)
    return 0


# --- `alarmgw-sim centre`: the GB/T 26875.3 monitoring-centre stand-in (simulator/centre.py) ---


def _centre_parser(sub: Any) -> None:
    p = sub.add_parser("centre", help="a GB/T 26875.3 monitoring-centre stand-in")
    p.add_argument(
        "--socket",
        type=Path,
        help="its control socket (default $ALARMGW_CENTRE_CONTROL or /tmp/alarmgw-sim/centre.sock)",
    )
    csub = p.add_subparsers(dest="centre_cmd", required=True)
    serve = csub.add_parser("serve", help="listen for UITDs until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7533)
    serve.add_argument("--address", type=lambda v: int(v, 0), default=DEFAULT_ADDRESS)
    serve.add_argument("--log", type=Path, help="append every packet as a JSON line")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain")
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--quiet", action="store_true", help="no readable line per packet")
    mode = csub.add_parser("mode", help="how to answer the next data packets")
    mode.add_argument("mode", choices=MODES)
    mode.add_argument("--count", type=int, help="only the next N packets, then confirm again")
    mode.add_argument("--delay", type=float, default=2.0, help="seconds, for mode delay")
    duty = csub.add_parser("duty-check", help="send a duty check (91)")
    duty.add_argument("--minutes", type=int, default=10)
    clock = csub.add_parser("clock-sync", help="send a clock sync (90)")
    clock.add_argument("--time", help="'YYYY-MM-DD HH:MM:SS' Beijing time (default: now)")
    csub.add_parser("initialise", help="send initialise (89)")
    read = csub.add_parser("read", help="send a read (61-68, 81-88)")
    read.add_argument("typeflag", type=int)
    read.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="N:N[:N:N]",
        help="system type:address[:zone:position] or [:records]; repeatable",
    )
    csub.add_parser("disconnect", help="close every UITD connection")
    state = csub.add_parser("state", help="mode, connected UITDs and counters")
    state.add_argument("--json", action="store_true")


def _centre(args: argparse.Namespace) -> int:
    path = args.socket or Path(os.environ.get("ALARMGW_CENTRE_CONTROL", RUN_DIR / "centre.sock"))
    if args.centre_cmd == "serve":
        return _centre_serve(args, path)
    body: dict[str, Any] = {"do": args.centre_cmd}
    if args.centre_cmd == "mode":
        body |= {"mode": args.mode, "count": args.count, "delay": args.delay}
    elif args.centre_cmd == "duty-check":
        body["minutes"] = args.minutes
    elif args.centre_cmd == "clock-sync":
        body["time"] = args.time
    elif args.centre_cmd == "read":
        try:
            objects = [[int(v, 0) for v in o.split(":")] for o in args.object]
        except ValueError:
            print(f"alarmgw-sim centre read: bad --object {args.object}", file=sys.stderr)
            return EXIT_USAGE
        body |= {"typeflag": args.typeflag, "objects": objects}
    try:
        reply = request(path, body)
    except OSError as exc:
        print(
            f"alarmgw-sim centre: no centre on {path} ({exc}); "
            "start one with `alarmgw-sim centre serve`",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    if not reply.pop("ok", False):
        print(f"alarmgw-sim centre: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    if args.centre_cmd == "state" and not args.json:
        st = reply["state"]
        peers = ", ".join(st["peers"]) or "-"
        print(f"centre {st['address']} port {st['port']}  mode {st['mode']}  UITDs {peers}")
        print("  ".join(f"{k} {v}" for k, v in st["counts"].items()))
    else:
        print(json.dumps(reply, ensure_ascii=False))
    return 0


def _centre_serve(args: argparse.Namespace, path: Path) -> int:
    tls = None
    if args.tls_cert or args.tls_key:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError, TypeError) as exc:
            print(f"alarmgw-sim centre: TLS certificate or key unusable: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    echo = None if args.quiet else sys.stdout
    with Centre(args.host, args.port, args.address, args.log, echo, tls) as centre:
        control = CentreControl(centre, path).start()
        try:
            print(f"centre at {args.host}:{centre.port}", flush=True)
            print(f"control at {path}", flush=True)
            print("ready", flush=True)
            stop.wait()
        finally:
            control.close()
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.cmd == "run":
        return _run(args)
    if args.cmd == "centre":
        return _centre(args)
    return _drive(args)


if __name__ == "__main__":
    sys.exit(main())
