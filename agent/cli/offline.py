"""The `alarmgw` commands that need no running agent: check-config, scan, buffer --file.

check-config reads a config file as the agent would (and the storage as the service
would see it); scan probes a serial line for Modbus units (the agent must be stopped:
it owns the line); buffer --file looks into a buffer file read-only. None of them
writes anything, and none prints a traceback for a bad config file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli import render
from agent.cli.client import AgentNotRunning, ControlAccessDenied, ControlClient, ControlError
from agent.cli.output import (
    EXIT_BAD_CONFIG,
    EXIT_BUSY,
    EXIT_NO_PERMISSION,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    emit,
    error,
    print_problems,
)
from agent.cli.render import COLUMNS
from agent.cli.textwidth import fit
from agent.cli.watch import render_payload
from agent.config import (
    Config,
    DeviceConfig,
    GbConfig,
    InputConfig,
    LineConfig,
    config_digest,
    load_config,
)
from agent.config_checks import gb_unsent_inputs
from agent.storage_check import check_storage
from core.errors import BufferError_, ConfigError, ConfigProblem
from core.events import topic_root


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
    gb = config.gb26875
    if gb is not None:
        out.insert(4, _gb_summary(gb))
    for line in config.lines:
        out.append(_line_summary(line))
        devices = [d for d in config.devices if d.line == line.id]
        out.append(_device_header() if devices else "  (no devices)")
        out.extend(_device_row(d) for d in devices)
    out.extend(f"input  {i.id} pin {i.pin} {_input_role(i)}  {i.name}" for i in config.inputs)
    out.extend(
        f"output {o.id} pin {o.pin} {o.type} rule {o.rule}  {o.name}" for o in config.outputs
    )
    return [render.clip(text) for text in out]


def _gb_summary(gb: GbConfig) -> str:
    """The GB/T 26875.3 uplink in one line: where, who, and the fault detection time."""
    tls = "TLS" if gb.tls else "no TLS"
    detect = gb.heartbeat_s + (gb.resends + 1) * gb.confirm_timeout_s
    return (
        f"centre   {gb.host}:{gb.port}  GB/T 26875.3, {tls}, "
        f"UITD {gb.uitd_address} -> {gb.centre_address}, fault <= {detect:g} s"
    )


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
        "gb26875": None
        if config.gb26875 is None
        else {
            "host": config.gb26875.host,
            "port": config.gb26875.port,
            "tls": config.gb26875.tls,
            "uitd_address": config.gb26875.uitd_address,
            "centre_address": config.gb26875.centre_address,
        },
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
        print_problems(args.file, exc.problems, args.json)
        return EXIT_BAD_CONFIG
    storage = check_storage(config)  # as the service will see it (check-config only)
    if storage.problems:
        problems = [ConfigProblem(args.file, key, reason) for key, reason in storage.problems]
        print_problems(args.file, problems, args.json)
        return EXIT_BAD_CONFIG
    warnings = [
        {"key": key, "reason": reason}
        for key, reason in [*storage.warnings, *gb_unsent_inputs(config)]
    ]
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


def cmd_buffer_file(args: argparse.Namespace) -> int:
    """`alarmgw buffer --file DB`: what a buffer file holds, read-only, without the agent."""
    # imported here: sqlite-utils (and click under it) costs ~14 MB that `alarmgw run`,
    # which shares this entry point, must not carry on a 1 GB Pi
    from agent.cli import buffer_file  # noqa: PLC0415

    try:
        info = buffer_file.inspect(Path(args.file))
    except BufferError_ as exc:
        error(str(exc))
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
    emit(args, info, [render.clip(text) for text in lines])
    healthy = info["integrity"] == "ok"
    return EXIT_OK if healthy else EXIT_PROBLEM


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
            error(f"skipping profile {profile_id}: {exc.problems[0]}")
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
        error(f"scan: {exc}")
        return EXIT_USAGE
    except ConfigError as exc:
        print_problems(args.config, exc.problems, as_json=False)
        return EXIT_BAD_CONFIG
    owner = _agent_owning(args.port, args.config)
    if owner is not None:
        error(_busy_message(args.port, owner))
        return EXIT_BUSY
    if not args.json:
        for text in render.scan_header(settings):
            print(text, flush=True)
    progress = _progress if sys.stderr.isatty() and not args.json else None
    try:
        report = scan.scan(settings, profiles, progress)
    except scan.PortBusy:
        error(_busy_message(args.port, None))
        return EXIT_BUSY
    except scan.PortUnavailable as exc:
        error(f"scan: {exc}")
        return EXIT_NO_PERMISSION if "Permission denied" in str(exc) else EXIT_PROBLEM
    finally:
        if progress is not None:
            print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)
    emit(args, render.scan_json(settings, report), render.render_scan(report))
    return EXIT_OK if report.found else EXIT_PROBLEM


def _input_role(contact: InputConfig) -> str:
    """kind/category of a contact; what the two special inputs are for."""
    if contact.role == "duty_answer":
        return "duty-answer button"
    what = f"{contact.kind}/{contact.category}"
    return f"{what} manual call point" if contact.role == "manual_call_point" else what
