"""The monthly self-check: which points a technician walks through, and what a report
handed to the agent must look like (pure: no I/O).

The walk itself is the CLI's (agent/cli/selfcheck.py): it watches the live events on the
control socket while each detector or button is triggered; the agent stores the report
and sends it (agent/uitd_duty.py). A report from the control socket is a client's input:
`parse_report` bounds and checks every field, and a bad one is refused with a reason
naming the field, never stored half.
"""

from __future__ import annotations

from typing import Any, Final

from agent.config import Config
from core.errors import AlarmgwError
from core.events import Kind

RESULTS: Final = ("passed", "failed", "untested")
MAX_POINTS: Final = 500
MAX_SIMULATED: Final = 10
MAX_TEXT: Final = 200


class BadReport(AlarmgwError):
    """A self-check report that does not have the documented shape."""


def check_points(cfg: Config) -> list[dict[str, Any]]:
    """The points of the self-check, in config order: `[selfcheck] points`, or every input
    of kind alarm and every device point whose profile can raise an alarm. Each with the
    device and point its events carry (a GPIO input's point is `contact`)."""
    inputs = {i.id: i for i in cfg.inputs}
    devices = {d.id: d for d in cfg.devices}
    wanted = cfg.selftests.check_points
    if wanted is None:
        ids = [i.id for i in cfg.inputs if i.kind == Kind.ALARM.value]
        for dev in cfg.devices:
            profile = cfg.profiles.get(dev.profile)
            if profile is None:
                continue
            ids += [f"{dev.id}/{p.id}" for p in profile.points.values() if _can_alarm(p)]
    else:
        ids = list(wanted)
    out = []
    for entry in ids:
        device, _, point = entry.partition("/")
        if not point:
            contact = inputs[device]
            out.append({"id": entry, "device": device, "point": "contact", "name": contact.name})
            continue
        dev = devices[device]
        spec = cfg.profiles[dev.profile].points[point]
        override = dev.points.get(point)
        name = override.name if override is not None and override.name else spec.name
        if override is not None and not override.enabled:
            continue
        out.append({"id": entry, "device": device, "point": point, "name": f"{dev.name} {name}"})
    return out


def _can_alarm(spec: Any) -> bool:
    if spec.states and any(s.kind is Kind.ALARM for s in spec.states.values()):
        return True
    if spec.flag is not None and spec.flag.kind is Kind.ALARM:
        return True
    return any(t.kind is Kind.ALARM for t in spec.thresholds.values())


def _text(raw: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(raw, str) or len(raw) > MAX_TEXT or (not empty and not raw.strip()):
        raise BadReport(f"{where}: must be a string of at most {MAX_TEXT} characters")
    return raw


def _int_or_none(raw: Any, where: str) -> int | None:
    if raw is None or (isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0):
        return raw
    raise BadReport(f"{where}: must be a non-negative integer or null")


def parse_report(raw: Any) -> dict[str, Any]:
    """The report as the agent stores it; BadReport naming the field otherwise."""
    if not isinstance(raw, dict):
        raise BadReport("report: must be an object")
    extra = set(raw) - {"operator", "started_ms", "points", "simulated"}
    if extra:
        raise BadReport(f"report: unknown fields {sorted(extra)}")
    points, simulated = raw.get("points"), raw.get("simulated", [])
    if not isinstance(points, list) or len(points) > MAX_POINTS:
        raise BadReport(f"report.points: must be a list of at most {MAX_POINTS}")
    if not isinstance(simulated, list) or len(simulated) > MAX_SIMULATED:
        raise BadReport(f"report.simulated: must be a list of at most {MAX_SIMULATED}")
    return {
        "operator": _text(raw.get("operator"), "report.operator"),
        "started_ms": _int_or_none(raw.get("started_ms"), "report.started_ms"),
        "points": [_point(p, f"report.points[{n}]") for n, p in enumerate(points)],
        "simulated": [_simulated(s, f"report.simulated[{n}]") for n, s in enumerate(simulated)],
    }


def _point(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadReport(f"{where}: must be an object")
    result = raw.get("result")
    if result not in RESULTS:
        raise BadReport(f"{where}.result: must be one of {', '.join(RESULTS)}")
    return {
        "id": _text(raw.get("id"), f"{where}.id"),
        "name": _text(raw.get("name", ""), f"{where}.name", empty=True),
        "result": result,
        "alarm_seq": _int_or_none(raw.get("alarm_seq"), f"{where}.alarm_seq"),
        "restore_seq": _int_or_none(raw.get("restore_seq"), f"{where}.restore_seq"),
        "note": _text(raw.get("note", ""), f"{where}.note", empty=True),
    }


def _simulated(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("confirmed"), bool):
        raise BadReport(f"{where}: must be an object with confirmed true or false")
    return {
        "seq": _int_or_none(raw.get("seq"), f"{where}.seq"),
        "id": _text(raw.get("id", ""), f"{where}.id", empty=True),
        "confirmed": raw["confirmed"],
    }
