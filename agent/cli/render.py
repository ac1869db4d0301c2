"""Human rendering for `alarmgw` commands that talk to the running agent (and `scan`).

Pure functions: a result dict from the control socket (docs/control-protocol.md)
in, lines of text out, each at most 80 terminal columns with Chinese names
counted as two columns (agent/textwidth.py), so tables line up on an SSH
terminal. `problems()` says which facts of a status make `alarmgw status`
exit 1, so the exit code and the screen never disagree.

This module must never do I/O (no socket, no file, no print; it reads the local
zone once, as libc's localtime does) and never raise on a missing or odd field:
an older or newer agent may answer with fewer or more keys, and the technician
still needs to see the rest.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent.cli.textwidth import fit, width
from agent.clock import local_zone

if TYPE_CHECKING:  # the scan types pull in the serial layer; `status` must not load it
    from drivers.scan import FoundUnit, ProfileMatch, ScanReport, ScanSettings

COLUMNS = 80


def clip(text: str) -> str:
    """One output line, cut to the terminal width (never wrapped mid-table)."""
    return fit(text, COLUMNS).rstrip() if width(text) > COLUMNS else text.rstrip()


def age(seconds: float | None) -> str:
    """A short age: 0.4s, 12s, 5m03s, 2h05m, 3d04h; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    secs = round(seconds)
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    if secs < 86400:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 86400}d{secs % 86400 // 3600:02d}h"


_UTC_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def clock_time(ts_ms: Any) -> str:
    """Local wall-clock time of a timestamp (the technician reads the site's time).

    Date arithmetic and the zone's own data, not libc's localtime: on 32-bit Raspberry
    Pi OS time_t is 32 bits, and localtime refuses every second after 2038-01-19."""
    if not isinstance(ts_ms, int | float):
        return "--:--:--"
    try:
        moment = _UTC_EPOCH + datetime.timedelta(milliseconds=ts_ms)
        return moment.astimezone(_site_zone()).strftime("%H:%M:%S")
    except (OverflowError, ValueError):  # NaN, infinity, outside the years 1..9999
        return "--:--:--"


# the zone libc's localtime would use, without libc's localtime (agent/clock.py)
_site_zone = local_zone


def _get(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = data.get(key, default) if isinstance(data, Mapping) else default
    return default if value is None else value


# --- status ------------------------------------------------------------------------


def problems(status: Mapping[str, Any]) -> list[str]:
    """Why `alarmgw status` exits 1: uplink down or connected but not delivering (the
    broker has acknowledged nothing since the last error), a line down, a device or the
    GPIO in comm fault, a device not polled for longer than its comm-fault window
    (starved: what it reports is stale, whatever its comm state says), an active alarm, a
    degraded buffer, an unsynchronised clock, a duty check waiting for its answer, a
    failed transmission. Empty when all is well."""
    found: list[str] = []
    uplink = _get(status, "uplink", {})
    if not _get(uplink, "connected", False):
        found.append("uplink down")
    elif _get(uplink, "last_error"):
        found.append("uplink not delivering")
    gb = status.get("gb26875")
    if isinstance(gb, Mapping) and (gb.get("link_fault") or not gb.get("connected")):
        found.append("centre link down" if gb.get("link_fault") else "centre not connected")
    down = [ln.get("id", "?") for ln in _get(status, "lines", []) if ln.get("down")]
    if down:
        found.append("line down: " + ", ".join(down))
    devices = _get(status, "devices", [])
    lost = [d.get("id", "?") for d in devices if d.get("comm") == "lost"]
    if lost:
        found.append("comm fault: " + ", ".join(lost))
    starved = [
        f"{d.get('id', '?')} ({age(d.get('last_poll_age_s'))})"
        for d in devices
        if d.get("poll_overdue")
    ]
    if starved:
        found.append("not polled: " + ", ".join(starved))
    alarms = _get(status, "active_alarms", [])
    if alarms:
        found.append(f"{len(alarms)} active alarm{'s' if len(alarms) != 1 else ''}")
    buffer = _get(status, "buffer", {})
    if _get(buffer, "degraded", False):
        found.append(f"buffer degraded ({_get(buffer, 'degraded_reason', '?')})")
    if _get(status, "clock_synced", True) is False:
        found.append("clock not synchronised")
    if _get(status, "duty_check", None):
        found.append("duty check waiting: alarmgw ack")
    if _get(_get(status, "transmission", {}), "failed", []):
        found.append("transmission failed")
    found.extend(duty_problems(_get(status, "duties", {})))
    return found


def _duty_check_lines(status: Mapping[str, Any]) -> list[str]:
    """The duty check waiting (if one is) and the transmission light and failure signal."""
    out = []
    duty = _get(status, "duty_check", None)
    if duty:
        out.append(
            f"duty check from {_get(duty, 'source', '?')}: waiting {age(duty.get('waited_s'))},"
            f" {age(duty.get('left_s'))} left (answer button or `alarmgw ack`)"
        )
    transmission = _get(status, "transmission", {})
    if transmission:
        failed = list(_get(transmission, "failed", []))
        light = _get(transmission, "light", "off")
        out.append(
            f"transmission light {light}" + (f"; FAILED: {', '.join(failed)}" if failed else "")
        )
    return out


def duty_problems(duties: Mapping[str, Any]) -> list[str]:
    """The UITD duties' part of `problems`: the last self-test failed, simulated fire
    transmissions due this month."""
    found = []
    last = _get(duties, "last_selftest", {})
    if last and last.get("ok") is False:
        found.append("self-test failed: " + ", ".join(last.get("failed", [])))
    fires = _get(duties, "simulated_fires", {})
    if fires and fires.get("due"):
        found.append(f"simulated fires due ({fires.get('count')} of {fires.get('required')})")
    return found


def date_time(ts_ms: Any) -> str:
    """Local date and time of a timestamp (as clock_time: no libc localtime)."""
    if not isinstance(ts_ms, int | float):
        return "----------- --:--"
    try:
        moment = _UTC_EPOCH + datetime.timedelta(milliseconds=ts_ms)
        return moment.astimezone(_site_zone()).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, ValueError):
        return "----------- --:--"


def duty_lines(duties: Mapping[str, Any]) -> list[str]:
    """`status`: the last self-test, this month's simulated fires, the last self-check."""
    if not duties:
        return []
    out = []
    last = _get(duties, "last_selftest", {})
    if last:
        verdict = "passed" if last.get("ok") else "FAILED: " + ", ".join(last.get("failed", []))
        when = date_time(last.get("ts_ms"))
        out.append(f"self-test    {when} ({last.get('trigger')}) {verdict}")
    else:
        out.append(f"self-test    not run yet (daily at {_get(duties, 'selftest_time', '?')})")
    fires = _get(duties, "simulated_fires", {})
    if fires.get("month"):
        due = "  DUE: run them" if fires.get("due") else ""
        out.append(
            f"simulated fires {fires['month']}: {fires.get('count')} of {fires.get('required')}"
            f" confirmed, reminder day {fires.get('reminder_day')}{due}"
        )
    elif fires:
        out.append("simulated fires: month unknown until the clock is synchronised")
    check = _get(duties, "last_selfcheck", {})
    if check:
        out.append(
            f"self-check   #{check.get('number')} {date_time(check.get('ts_ms'))} "
            f"{check.get('operator')}: {check.get('passed')} passed, {check.get('failed')} "
            f"failed, {check.get('untested')} untested"
        )
    return out


def _uplink_line(status: Mapping[str, Any]) -> str:
    uplink = _get(status, "uplink", {})
    state = "connected" if _get(uplink, "connected", False) else "DOWN"
    since_ms = uplink.get("since_ms")
    now_ms = _get(status, "now_ms", time.time() * 1000)
    since = ""
    if isinstance(since_ms, int):
        since = f" since {clock_time(since_ms)} ({age((now_ms - since_ms) / 1000)})"
    acked = f"acked {_get(uplink, 'acked', 0)}/{_get(uplink, 'published', 0)}"
    return f"uplink   {state}{since}, {acked}, reconnects {_get(uplink, 'reconnects', 0)}"


def _gb_line(gb: Mapping[str, Any]) -> str:
    """The GB/T 26875.3 uplink to the fire remote-monitoring centre, one line."""
    state = "connected" if _get(gb, "connected", False) else "DOWN"
    if _get(gb, "link_fault", False):
        state = "LINK FAULT"
    return (
        f"centre   {state} {_get(gb, 'centre', '?')}, confirmed {_get(gb, 'confirmed_rows', 0)}"
        f", queued {_get(gb, 'queued_packets', 0)}, resent {_get(gb, 'resent', 0)}"
    )


def _buffer_line(buffer: Mapping[str, Any]) -> str:
    state = (
        "DEGRADED: " + str(_get(buffer, "degraded_reason", "?")) if buffer.get("degraded") else "ok"
    )
    return (
        f"buffer   events {_get(buffer, 'event_depth', 0)}, "
        f"telemetry {_get(buffer, 'telemetry_depth', 0)} queued, "
        f"oldest {age(buffer.get('oldest_age_s'))}, {state}"
    )


def _readers_line(buffer: Mapping[str, Any]) -> str | None:
    """With several uplinks: what each still has to send."""
    readers = _get(buffer, "readers", {})
    if not isinstance(readers, Mapping) or len(readers) < 2:
        return None
    return "         to send " + ", ".join(f"{name} {n}" for name, n in readers.items())


def _drops_line(buffer: Mapping[str, Any]) -> str | None:
    drops = {k: v for k, v in _get(buffer, "drops", {}).items() if v}
    if not drops:
        return None
    return "         dropped " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))


_ID_COLS, _NAME_COLS = 13, 26


def device_header() -> str:
    return clip(
        "  "
        + fit("device", _ID_COLS)
        + " unit comm    last ok  "
        + fit("name", _NAME_COLS)
        + " fails"
    )


def device_row(dev: Mapping[str, Any]) -> str:
    """One device: id, unit (or GPIO pin), comm state, last good poll age, name, failures.
    A device starved of polls shows STALE: what it last reported may be out of date."""
    comm = str(_get(dev, "comm", "?"))
    shown = comm.upper() if comm == "lost" else comm
    if dev.get("poll_overdue") and comm != "lost":
        shown = "STALE"
    state = dev.get("state")
    last = age(dev.get("last_good_age_s")) if dev.get("line") != "gpio" else str(state or "-")
    fails = _get(dev, "failures", {})
    failed = _get(fails, "polls_failed", 0) if isinstance(fails, Mapping) else 0
    reason = f" {dev.get('last_failure')}" if comm == "lost" and dev.get("last_failure") else ""
    cells = (
        fit(str(_get(dev, "id", "?")), _ID_COLS),
        f"{_get(dev, 'unit_id', '-'):>4}",
        fit(shown, 7),
        fit(last, 8),
        fit(str(_get(dev, "name", "")), _NAME_COLS),
        f"{failed}{reason}",
    )
    return clip("  " + " ".join(cells))


def _line_block(line: Mapping[str, Any], devices: list[Mapping[str, Any]]) -> list[str]:
    baud = f" {line['baudrate']}" if line.get("baudrate") else ""
    # the path goes last: a long one is cut, the counts never are
    head = (
        f"line {_get(line, 'id', '?')}  {_get(line, 'online', 0)}/{_get(line, 'devices', 0)}"
        f" online  {_get(line, 'type', '')}{baud} {_get(line, 'where', '')}"
    )
    out = [clip(head)]
    if line.get("down"):
        since_ms = line.get("down_since_ms")
        since = f" since {clock_time(since_ms)}" if isinstance(since_ms, int) else ""
        out.append(clip(f"  DOWN{since}: {line['down']}"))
    return out + [device_row(d) for d in devices if d.get("line") == line.get("id")]


def alarm_row(event: Mapping[str, Any]) -> str:
    where = f"{_get(event, 'device', '?')}/{_get(event, 'point', '-')}"
    return clip(
        f"  {clock_time(event.get('ts_ms'))} {fit(str(_get(event, 'severity', '')), 8)} "
        f"{fit(where, 22)} {_get(event, 'text', '')}"
    )


def render_status(status: Mapping[str, Any]) -> list[str]:
    """One screen: who, uplink, buffer, clock, every line and device, alarms, problems."""
    names = f"{_get(status, 'site_name', '')} {_get(status, 'gateway_name', '')}".strip()
    out = [
        f"{names}  ({_get(status, 'site', '?')}/{_get(status, 'gateway', '?')})",
        f"alarmgw  {_get(status, 'version', '?')}, up {age(status.get('uptime_s'))}, clock "
        + ("synced" if _get(status, "clock_synced", False) else "NOT SYNCED (no NTP yet)"),
        _uplink_line(status),
    ]
    last_error = _get(_get(status, "uplink", {}), "last_error")
    if last_error:  # kept until the broker acknowledges again, connected or not
        out.append(f"         last error: {last_error}")  # clipped to the screen below
    gb = status.get("gb26875")
    if isinstance(gb, Mapping):
        out.append(_gb_line(gb))
    buffer = _get(status, "buffer", {})
    out.append(_buffer_line(buffer))
    readers = _readers_line(buffer)
    if readers:
        out.append(readers)
    drops = _drops_line(buffer)
    if drops:
        out.append(drops)
    devices: list[Mapping[str, Any]] = list(_get(status, "devices", []))
    out.append(device_header())
    for line in _get(status, "lines", []):
        out.extend(_line_block(line, devices))
    contacts = [d for d in devices if d.get("line") == "gpio"]
    if contacts:
        gpio_state = "ok" if _get(status, "gpio", True) else "UNAVAILABLE"
        out.append(f"gpio inputs  {gpio_state}")
        out.extend(device_row(d) for d in contacts)
    alarms = list(_get(status, "active_alarms", []))
    silenced = " (buzzer silenced)" if _get(status, "silenced", False) else ""
    out.append(f"active alarms: {len(alarms) or 'none'}{silenced}")
    out.extend(alarm_row(a) for a in alarms)
    out.extend(_duty_check_lines(status))
    out.extend(duty_lines(_get(status, "duties", {})))
    found = problems(status)
    out.append("PROBLEMS: " + "; ".join(found) if found else "all ok")
    return [clip(text) for text in out]


# --- devices, events, read, buffer, test alarm --------------------------------------


def render_devices(devices: Iterable[Mapping[str, Any]]) -> list[str]:
    rows = list(devices)
    out = [device_header()]
    out.extend(device_row(d) for d in rows)
    lost = [d.get("id", "?") for d in rows if d.get("comm") == "lost"]
    out.append(f"{len(rows)} devices, " + (f"comm fault: {', '.join(lost)}" if lost else "all ok"))
    return [clip(text) for text in out]


def event_row(event: Mapping[str, Any]) -> str:
    """seq, local time, kind, device/point, text; a test event is marked [TEST]."""
    where = f"{_get(event, 'device', '?')}/{_get(event, 'point', '-')}"
    test = "[TEST] " if event.get("test") else ""
    return clip(
        f"{_get(event, 'seq', '?'):>6} {clock_time(event.get('ts_ms'))} "
        f"{fit(str(_get(event, 'kind', '')), 12)} {fit(where, 20)} {test}{_get(event, 'text', '')}"
    )


def render_events(events: Iterable[Mapping[str, Any]]) -> list[str]:
    rows = [event_row(e) for e in events]
    return rows or ["no events yet"]


def _value_text(reading: Mapping[str, Any]) -> str:
    if "error" in reading:
        return f"ERROR {reading['error']}"
    value = reading.get("value")
    unit = reading.get("unit") or ""
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    state = reading.get("state")  # the profile's name for a state code or flag: fire (1)
    return f"{state} ({shown})" if state else f"{shown} {unit}".rstrip()


def render_read(result: Mapping[str, Any]) -> list[str]:
    points: Mapping[str, Any] = _get(result, "points", _get(result, "values", {}))
    out = [f"{_get(result, 'device', '?')}  read at {clock_time(result.get('ts_ms'))}"]
    for point_id, reading in points.items():
        name = str(_get(reading, "name", ""))
        out.append(f"  {fit(point_id, 16)} {fit(name, 20)} {_value_text(reading)}")
    return [clip(text) for text in out]


def render_buffer(buffer: Mapping[str, Any]) -> list[str]:
    out = [_buffer_line(buffer)]
    drops = _drops_line(buffer)
    out.append(drops or "         no drops")
    next_seq = _get(buffer, "next_seq", {})
    if next_seq:
        out.append("         next seq " + ", ".join(f"{k} {v}" for k, v in next_seq.items()))
    if _get(buffer, "held", 0):
        out.append(f"         {buffer['held']} held in memory (disk trouble)")
    return [clip(text) for text in out]


def render_test_alarm(result: Mapping[str, Any]) -> list[str]:
    seq = _get(result, "seq", "?")
    if result.get("acked"):
        verdict = "the broker acknowledged it: check it arrived at the central server"
    else:
        verdict = "NOT acknowledged by the broker yet (uplink down?); it stays queued"
    return [clip(f"test alarm stored as seq {seq}"), clip(verdict)]


# --- scan ----------------------------------------------------------------------------------


def _units_text(units: tuple[int, ...]) -> str:
    if units and list(units) == list(range(units[0], units[-1] + 1)):
        return f"{units[0]}-{units[-1]}" if len(units) > 1 else str(units[0])
    return ",".join(str(u) for u in units)


def scan_header(settings: ScanSettings) -> list[str]:
    bauds = ", ".join(str(b) for b in settings.baudrates)
    frame = f"{settings.bytesize}{settings.parity}{settings.stopbits}"
    return [
        clip(f"scanning {settings.port}"),
        clip(
            f"  {bauds} baud, {frame}, units {_units_text(settings.units)}, "
            f"timeout {settings.timeout_s:g} s"
        ),
    ]


def _match_text(match: ProfileMatch) -> str:
    return f"{match.profile} ({match.plausible}/{match.points} points)"


def _found_row(found: FoundUnit) -> str:
    best = found.best
    if best is not None:
        profile = _match_text(best)
    else:
        tried = sorted(found.candidates, key=lambda m: m.rank, reverse=True)
        near = f" (nearest: {_match_text(tried[0])})" if tried and tried[0].registers_read else ""
        profile = "unknown" + near
    return clip(f"{found.unit:>4} {found.baudrate:>6}  {fit(found.evidence, 18)} {profile}")


def render_scan(report: ScanReport) -> list[str]:
    out = [clip("unit   baud  answered           profile")]
    out.extend(_found_row(f) for f in report.found)
    count = len(report.found)
    out.append(f"{count} unit{'s' if count != 1 else ''} found" if count else "no unit answered")
    out.extend(
        clip(f"garbled answer at unit {n.unit}, {n.baudrate} baud: {n.reason}")
        for n in report.noise
    )
    if report.noise:
        out.append("  (wrong baud or parity, A/B swapped, missing termination or ground?)")
    if not count:
        out.append("check: wiring (A/B), baud and parity, unit ids set on the devices, power")
    return out


def scan_json(settings: ScanSettings, report: ScanReport) -> dict[str, Any]:
    return {
        "port": settings.port,
        "baudrates": list(settings.baudrates),
        "parity": settings.parity,
        "units_probed": len(settings.units),
        "found": [
            {
                "unit": f.unit,
                "baudrate": f.baudrate,
                "evidence": f.evidence,
                "profile": f.best.profile if f.best else None,
                "candidates": [
                    {**asdict(m), "problems": list(m.problems), "matches": m.matches}
                    for m in sorted(f.candidates, key=lambda m: m.rank, reverse=True)
                ],
            }
            for f in report.found
        ],
        "noise": [asdict(n) for n in report.noise],
    }
