"""Layer (c) of the config check: the whole config hangs together.

Duplicate ids, references between tables (a device's line, its profile), shared
resources (serial ports, TCP endpoints, unit ids, GPIO pins), the profiles the devices
name and the point overrides they give (judged by drivers/profile.py, the one place
overrides are judged). Each check reads the values that passed layers (a) and (b)
(agent/config_schema.py) and adds problems; none raises.

It must never open a serial port, a socket or a GPIO pin.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config_schema import Checked, is_pyserial_url
from core.checks import Problems
from core.errors import ConfigError
from core.events import GATEWAY_DEVICE, LIFE_SAFETY, Category
from drivers.profile import Profile, check_overrides, load_profile

if TYPE_CHECKING:  # agent.config imports this module
    from agent.config import Config

GATEWAY_DEVICE_ID = GATEWAY_DEVICE  # the `device` of gateway-internal events
BUILTIN_PROFILE_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"
SYSTEM_PROFILE_DIR = Path("/usr/share/alarmgw/profiles")
# The Pi's own UART pins: a line on the built-in serial port owns them.
PI_UART_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")
PI_UART_PINS = (14, 15)


def _first_use(
    items: list[dict[str, Any]], where: str, key: str, identity: Callable[[dict[str, Any]], Any]
) -> Iterable[tuple[str, dict[str, Any], str]]:
    """Yield (key path, item, earlier owner) for each item whose `identity` was seen before."""
    seen: dict[Any, str] = {}
    for i, item in enumerate(items):
        value = identity(item)
        if value is None:
            continue
        label = f"{where}[{i}]" + (f" ({item['id']})" if "id" in item else "")
        if value in seen:
            yield f"{where}[{i}].{key}", item, seen[value]
        else:
            seen[value] = label


def check_duplicate_ids(checked: Checked, out: Problems) -> None:
    for name in ("lines", "outputs"):
        for key, item, earlier in _first_use(checked.arrays[name], name, "id", _get("id")):
            out.add(key, f'duplicate id "{item["id"]}" (also {earlier})')
    # Devices and inputs share one namespace: both appear as `device` in the feed.
    feed_sources = [("devices", d) for d in checked.arrays["devices"]]
    feed_sources += [("inputs", d) for d in checked.arrays["inputs"]]
    seen: dict[str, str] = {}
    counters = {"devices": 0, "inputs": 0}
    for name, item in feed_sources:
        here = f"{name}[{counters[name]}]"
        counters[name] += 1
        ident = item.get("id")
        if ident is None:
            continue
        if ident == GATEWAY_DEVICE_ID:
            out.add(f"{here}.id", f'"{ident}" is reserved for the gateway\'s own events')
        elif ident in seen:
            out.add(
                f"{here}.id",
                f'duplicate id "{ident}" (also {seen[ident]}; '
                "devices and inputs share one id space in the feed)",
            )
        else:
            seen[ident] = here


def _get(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda item: item.get(key)


def _serial_device(line: dict[str, Any]) -> str | None:
    port = line.get("port")
    if line.get("type") != "rtu" or not isinstance(port, str):
        return None
    # /dev/serial/by-id/... and /dev/ttyUSB0 can be the same adapter
    return port if is_pyserial_url(port) else os.path.realpath(port)


def _tcp_endpoint(line: dict[str, Any]) -> tuple[str, int] | None:
    if line.get("type") != "tcp" or "host" not in line:
        return None
    return (line["host"].lower(), line.get("port", 502))


def check_lines(checked: Checked, out: Problems) -> None:
    lines = checked.arrays["lines"]
    for key, _, earlier in _first_use(lines, "lines", "port", _serial_device):
        out.add(key, f"serial port already used by {earlier}: one line owns a port")
    for key, _, earlier in _first_use(lines, "lines", "host", _tcp_endpoint):
        out.add(key, f"same host and port as {earlier}: put both devices on one line")


def check_devices(checked: Checked, out: Problems) -> None:
    lines = {line["id"]: line for line in checked.arrays["lines"] if "id" in line}
    used_units: dict[tuple[str, int], str] = {}
    gb_addresses: dict[int, str] = {}
    for i, device in enumerate(checked.arrays["devices"]):
        here = f"devices[{i}]"
        gb_address = device.get("gb_system_address", i + 1)  # the default: its position
        if gb_address in gb_addresses:
            out.add(
                f"{here}.gb_system_address",
                f"GB system address {gb_address} is already {gb_addresses[gb_address]}'s: the "
                "centre could not tell their points apart",
            )
        gb_addresses.setdefault(gb_address, f"{here} ({device.get('id', '?')})")
        line_id = device.get("line")
        if line_id is None:
            continue
        line = lines.get(line_id)
        if line is None:
            known = ", ".join(lines) or "none defined"
            out.add(f"{here}.line", f'no line with id "{line_id}" (lines: {known})')
            continue
        unit = device.get("unit_id")
        if unit is None:
            continue
        if line.get("type") == "rtu" and not 1 <= unit <= 247:
            out.add(
                f"{here}.unit_id", f"must be 1..247 on an rtu line (0 is broadcast), got {unit}"
            )
        owner = used_units.get((line_id, unit))
        if owner:
            out.add(
                f"{here}.unit_id", f'unit id {unit} is already used by {owner} on line "{line_id}"'
            )
        else:
            used_units[(line_id, unit)] = f"{here} ({device.get('id', '?')})"


def check_pins(checked: Checked, out: Problems) -> None:
    owners: dict[int, str] = {}
    uart_line = next(
        (line["id"] for line in checked.arrays["lines"] if line.get("port") in PI_UART_PORTS), None
    )
    if uart_line is not None:
        for uart_pin in PI_UART_PINS:
            owners[uart_pin] = f'the Pi UART of line "{uart_line}"'
    for name in ("inputs", "outputs"):
        for i, item in enumerate(checked.arrays[name]):
            pin = item.get("pin")
            if pin is None:
                continue
            if pin in owners:
                out.add(f"{name}[{i}].pin", f"BCM pin {pin} is already used by {owners[pin]}")
            else:
                owners[pin] = f"{name}[{i}] ({item.get('id', '?')})"


def check_something_to_watch(checked: Checked, out: Problems) -> None:
    if not checked.arrays["devices"] and not checked.arrays["inputs"]:
        out.add("devices", "nothing to watch: the config has no [[devices]] and no [[inputs]]")


def profile_dirs(extra: list[str], config_dir: Path) -> list[Path]:
    """Where profiles are looked up, first match wins: the config's dirs, built-in, system."""
    return [*(config_dir / d for d in extra), BUILTIN_PROFILE_DIR, SYSTEM_PROFILE_DIR]


def find_profile(profile_id: str, dirs: Iterable[Path]) -> Path | None:
    for directory in dirs:
        candidate = directory / f"{profile_id}.toml"
        if candidate.is_file():
            return candidate
    return None


def available_profiles(dirs: Iterable[Path]) -> list[str]:
    found: set[str] = set()
    for directory in dirs:
        if directory.is_dir():
            found.update(p.stem for p in directory.glob("*.toml"))
    return sorted(found)


def load_profiles(checked: Checked, config_dir: Path, out: Problems) -> dict[str, Profile]:
    """Find and load every profile a device names; problems go on `devices[i].profile`."""
    extra = checked.sections["profiles"].get("dirs", [])
    for i, directory in enumerate(extra):
        if not (config_dir / directory).is_dir():
            out.add(f"profiles.dirs[{i}]", f"directory not found: {config_dir / directory}")
    dirs = profile_dirs(extra, config_dir)
    profiles: dict[str, Profile] = {}
    failed: set[str] = set()
    for i, device in enumerate(checked.arrays["devices"]):
        profile_id = device.get("profile")
        if profile_id is None or profile_id in profiles or profile_id in failed:
            continue
        path = find_profile(profile_id, dirs)
        if path is None:
            failed.add(profile_id)
            known = ", ".join(available_profiles(dirs)) or "none"
            out.add(f"devices[{i}].profile", f'unknown profile "{profile_id}" (available: {known})')
        else:
            try:
                profiles[profile_id] = load_profile(path)
            except ConfigError as exc:
                failed.add(profile_id)
                out.add(f"devices[{i}].profile", f'profile "{profile_id}" is invalid, see below')
                out.extend(exc.problems)
    return profiles


def check_device_overrides(
    checked: Checked, profiles: Mapping[str, Profile], out: Problems
) -> None:
    """Point overrides must name points and thresholds the device's profile has, and
    leave every threshold able to trip and clear."""
    for i, device in enumerate(checked.arrays["devices"]):
        profile = profiles.get(device.get("profile", ""))
        if profile is not None:  # else: an unknown or invalid profile, already reported
            check_overrides(profile, device.get("points", {}), f"devices[{i}].points", out)


def check_selfcheck_points(
    checked: Checked, profiles: Mapping[str, Profile], out: Problems
) -> None:
    """Each `[selfcheck] points` entry names an input, or a point of a device's profile."""
    points = checked.sections["selfcheck"].get("points")
    if points is None:
        return
    inputs = {i.get("id") for i in checked.arrays["inputs"]}
    devices = {d.get("id"): profiles.get(d.get("profile", "")) for d in checked.arrays["devices"]}
    for n, entry in enumerate(points):
        device, _, point = entry.partition("/")
        key = f"selfcheck.points[{n}]"
        if not point:
            if device not in inputs:
                out.add(key, f'no input "{device}" (a device point is written "device/point")')
        elif device not in devices:
            out.add(key, f'no device "{device}"')
        else:
            profile = devices[device]
            if profile is not None and point not in profile.points:
                out.add(key, f'device "{device}" has no point "{point}"')


def check_control_group(checked: Checked, out: Problems) -> None:
    """The control socket's group must exist on this machine (the agent would start
    without its socket otherwise: the CLI could not reach it)."""
    group = checked.sections["control"].get("group")
    if group is None:
        return
    try:
        grp.getgrnam(group)
    except KeyError:
        out.add("control.group", f'group "{group}" does not exist on this machine')


def gb_unsent_inputs(config: Config) -> list[tuple[str, str]]:
    """Warnings (not refusals) for check-config: with a [gb26875] uplink, a fire, gas or
    electrical-fire input without [inputs.gb] is not for the centre (MQTT only). The manual
    alarm button needs none: it goes as the UITD's own manual alarm (points.contact_gb)."""
    if config.gb26875 is None:
        return []
    out = []
    for i, item in enumerate(config.inputs):
        if item.role == "duty_answer" or item.gb is not None:
            continue
        if item.category in LIFE_SAFETY and item.category is not Category.MANUAL:
            out.append((
                f"inputs[{i}].gb",
                f'"{item.id}" is a {item.category.value} input without [inputs.gb]: '
                "its events go to the MQTT feed only, not to the fire monitoring centre",
            ))  # fmt: skip
    return out


WHOLE_CONFIG_CHECKS: tuple[Callable[[Checked, Problems], None], ...] = (
    check_duplicate_ids,
    check_lines,
    check_devices,
    check_pins,
    check_something_to_watch,
    check_control_group,
)
