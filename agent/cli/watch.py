"""Readable one-line rendering of feed messages, for `alarmgw watch` and the demo.

Pure formatting: it never subscribes or publishes by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent.cli.textwidth import fit

_MARK = {
    "alarm": "ALARM",
    "fault": "FAULT",
    "supervisory": "SUPERV",
    "restore": "restore",
    "state": "state",
    "comm_loss": "COMM-LOSS",
    "comm_restore": "comm-ok",
    "test": "TEST",
    "system": "system",
}


def _clock(payload: dict[str, Any]) -> str:
    ts = str(payload.get("ts", ""))
    hhmmss = ts[11:23] if len(ts) >= 23 else ts
    return hhmmss + ("" if payload.get("clock_synced", True) else "?")


def render(leaf: str, raw: bytes) -> str:
    """One line (at most 80 columns for events) for a message on topic leaf `leaf`."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # [[[[... too
        return f"{leaf}: (not JSON, {len(raw)} bytes)"
    if not isinstance(payload, dict):
        return f"{leaf}: {payload!r}"
    return render_payload(leaf, payload)


def render_payload(leaf: str, payload: dict[str, Any]) -> str:
    """`render` for a payload already parsed (a buffer file's rows)."""
    renderer = _RENDERERS.get(leaf)
    if renderer is None:
        return f"{leaf}: {json.dumps(payload, ensure_ascii=False)}"
    return renderer(payload)


def _render_telemetry(p: dict[str, Any]) -> str:
    unit = p.get("unit") or ""
    return (
        f"{_clock(p)} t#{p.get('seq')} {p.get('device')}.{p.get('point')} = "
        f"{p.get('value')} {unit} [{p.get('quality', '')}]"
    )


def _render_status(p: dict[str, Any]) -> str:
    state = str(p.get("state", "?")).upper()
    reason = f" ({p['reason']})" if p.get("reason") else ""
    who = p.get("gateway_name") or p.get("gateway", "")
    return f"status: {state}{reason} {who} v{p.get('version', '')}"


def _render_heartbeat(p: dict[str, Any]) -> str:
    buf = p.get("buffer", {})
    dev = p.get("devices", {})
    return (
        f"heartbeat: devices {dev.get('online')}/{dev.get('total')} online, "
        f"queued {buf.get('event_depth')}+{buf.get('telemetry_depth')}, "
        f"clock {'synced' if p.get('clock_synced') else 'UNSYNCED'}"
    )


def _render_event(p: dict[str, Any]) -> str:
    mark = _MARK.get(str(p.get("kind")), str(p.get("kind")))
    if p.get("test"):
        mark = "TEST " + mark if mark != "TEST" else mark
    value = p.get("value")
    unit = p.get("unit") or ""
    shown = f" ({value}{unit})" if value is not None and not isinstance(value, bool) else ""
    head = f"{_clock(p)} #{p.get('seq')!s:<5} {fit(mark, 9)} {fit(str(p.get('category')), 10)} "
    return head + fit(f"{p.get('text', '')}{shown}", 80 - len(head) - 1).rstrip()


def _render_result(p: dict[str, Any]) -> str:
    error = p.get("error")
    error = error if isinstance(error, dict) else {}
    outcome = "ok" if p.get("ok") else f"ERROR {error.get('code')}: {error.get('message')}"
    shown = json.dumps(p.get("result"), ensure_ascii=False) if p.get("ok") else ""
    return fit(f"cmd-result: {p.get('command')} {p.get('id')} {outcome} {shown}", 79).rstrip()


_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "event": _render_event,
    "cmd-result": _render_result,
    "telemetry": _render_telemetry,
    "status": _render_status,
    "heartbeat": _render_heartbeat,
}
