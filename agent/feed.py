"""The MQTT feed's topics and the payloads that are not events: status, heartbeat,
downlink commands and their results.

Written to match docs/feed.md and docs/schemas/ (the contract comes first;
tests/test_schemas.py validates everything built here against those schemas).
Event and telemetry payloads are built by core.events; this module only adds
the rest of the feed.

This module must never do I/O, never read the clock and never raise on a bad
downlink message except with BadCommand: every malformed command becomes a
typed error that the caller answers with an error result.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from core.errors import AlarmgwError
from core.events import FEED_VERSION, Identity, iso_ms, topic_root

# --- topics -----------------------------------------------------------------


class Leaf(enum.StrEnum):
    """The last part of a topic under <prefix>/v1/<site>/<gateway>/."""

    STATUS = "status"
    EVENT = "event"  # same value as Lane.EVENT
    TELEMETRY = "telemetry"  # same value as Lane.TELEMETRY
    HEARTBEAT = "heartbeat"
    CMD_RESULT = "cmd-result"


# QoS and retain per leaf (docs/feed.md, "Topics"). Heartbeats are QoS 0: a
# heartbeat only means something now; QoS 0 keeps them out of paho's unbounded
# offline queue and out of the in-flight window that alarms need.
QOS: Final[Mapping[Leaf, int]] = {
    Leaf.STATUS: 1,
    Leaf.EVENT: 1,
    Leaf.TELEMETRY: 1,
    Leaf.HEARTBEAT: 0,
    Leaf.CMD_RESULT: 1,
}
RETAIN: Final[Mapping[Leaf, bool]] = {
    Leaf.STATUS: True,
    Leaf.EVENT: False,
    Leaf.TELEMETRY: False,
    Leaf.HEARTBEAT: False,
    Leaf.CMD_RESULT: False,
}
COMMAND_QOS: Final = 1  # the gateway subscribes to cmd/+ with QoS 1

CMD_LEVEL: Final = "cmd"


def topic(prefix: str, ident: Identity, leaf: str) -> str:
    """`<prefix>/v1/<site>/<gateway>/<leaf>`; leaf may have levels ("cmd/read", "cmd/+")."""
    if not leaf or leaf.startswith("/") or leaf.endswith("/") or "//" in leaf:
        raise ValueError(f"bad topic leaf {leaf!r}")
    return f"{topic_root(prefix, ident)}/{leaf}"


def command_filter(prefix: str, ident: Identity) -> str:
    """The subscription that receives every command addressed to this gateway."""
    return topic(prefix, ident, f"{CMD_LEVEL}/+")


def command_name_of(prefix: str, ident: Identity, received_topic: str) -> str | None:
    """The command name in a received cmd topic, or None if it is not one of ours."""
    head = topic(prefix, ident, CMD_LEVEL) + "/"
    if not received_topic.startswith(head):
        return None
    name = received_topic[len(head) :]
    return name if name and "/" not in name else None


# --- status (retained; the offline one is also the last will) ----------------


class OfflineReason(enum.StrEnum):
    SHUTDOWN = "shutdown"  # the agent stopped cleanly and said so itself
    CONNECTION_LOST = "connection_lost"  # the broker published our last will


def status_payload(
    ident: Identity,
    online: bool,
    version: str,
    boot_ts_ms: int,
    config_digest: str,
    ts_ms: int,
) -> dict[str, Any]:
    """The retained status. `online=False` is the clean-shutdown message; use
    `will_payload` for the last will registered at connect time."""
    reason = None if online else OfflineReason.SHUTDOWN
    return _status(ident, version, boot_ts_ms, config_digest, ts_ms, reason)


def will_payload(
    ident: Identity, version: str, boot_ts_ms: int, config_digest: str, ts_ms: int
) -> dict[str, Any]:
    """The offline status the broker publishes for us when the connection dies.

    `ts_ms` is when the will was registered (connect time): the broker does not
    stamp it, so consumers take the receipt time as the time of the loss.
    """
    return _status(ident, version, boot_ts_ms, config_digest, ts_ms, OfflineReason.CONNECTION_LOST)


def _status(
    ident: Identity,
    version: str,
    boot_ts_ms: int,
    config_digest: str,
    ts_ms: int,
    reason: OfflineReason | None,
) -> dict[str, Any]:
    """Online without a reason; offline with the reason it says why."""
    payload: dict[str, Any] = {
        "v": FEED_VERSION,
        "state": "online" if reason is None else "offline",
        "ts": iso_ms(ts_ms),
        "ts_ms": ts_ms,
        "site": ident.site,
        "gateway": ident.gateway,
        "version": version,
        "boot_ts": iso_ms(boot_ts_ms),
        "boot_ts_ms": boot_ts_ms,
        "config_digest": config_digest,
    }
    if reason is not None:
        payload["reason"] = reason.value
    _add_names(payload, ident)
    return payload


def _add_names(payload: dict[str, Any], ident: Identity) -> None:
    if ident.site_name:
        payload["site_name"] = ident.site_name
    if ident.gateway_name:
        payload["gateway_name"] = ident.gateway_name


# --- heartbeat ---------------------------------------------------------------


# The health summary inside a heartbeat; the `status` command answers with these keys.
HEALTH_KEYS: Final = ("version", "uptime_s", "clock_synced", "buffer", "devices", "drops", "uplink")


def heartbeat_payload(
    ident: Identity,
    ts_ms: int,
    clock_synced: bool,
    uptime_s: float,
    version: str,
    buffer: Mapping[str, Any],
    devices: Mapping[str, Any],
    drops: Mapping[str, Any],
    uplink: Mapping[str, Any],
    *,
    interval_s: float | None = None,
) -> dict[str, Any]:
    """The periodic health summary.

    Inner shapes (missing keys raise KeyError: a caller bug, caught by tests):
    buffer  {event_depth: int, telemetry_depth: int, oldest_age_s: float|None, degraded: bool}
    devices {total: int, online: int, comm_fault: [device ids]}
    drops   {event: int, telemetry: int, <other counters>: int}  (since agent start)
    uplink  {reconnects: int, published: int, acked: int}          (since agent start)
            + optional puback_timeouts: int, last_error: str | None
    """
    payload: dict[str, Any] = {
        "v": FEED_VERSION,
        "ts": iso_ms(ts_ms),
        "ts_ms": ts_ms,
        "clock_synced": bool(clock_synced),
        "site": ident.site,
        "gateway": ident.gateway,
        "version": version,
        "uptime_s": round(float(uptime_s), 3),
        "buffer": _buffer_health(buffer),
        "devices": _device_health(devices),
        "drops": _drop_counts(drops),
        "uplink": _uplink_health(uplink),
    }
    if interval_s is not None:
        payload["interval_s"] = float(interval_s)
    return payload


def _buffer_health(buffer: Mapping[str, Any]) -> dict[str, Any]:
    oldest = buffer["oldest_age_s"]
    return {
        "event_depth": int(buffer["event_depth"]),
        "telemetry_depth": int(buffer["telemetry_depth"]),
        "oldest_age_s": None if oldest is None else round(max(0.0, float(oldest)), 3),
        "degraded": bool(buffer["degraded"]),
    }


def _device_health(devices: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "total": int(devices["total"]),
        "online": int(devices["online"]),
        "comm_fault": sorted(str(d) for d in devices["comm_fault"]),
    }


def _uplink_health(uplink: Mapping[str, Any]) -> dict[str, Any]:
    health: dict[str, Any] = {k: int(uplink[k]) for k in ("reconnects", "published", "acked")}
    if "puback_timeouts" in uplink:
        health["puback_timeouts"] = int(uplink["puback_timeouts"])
    if "last_error" in uplink:
        why = uplink["last_error"]
        health["last_error"] = None if why is None else str(why)[:MAX_ERROR_CHARS]
    return health


def _drop_counts(drops: Mapping[str, Any]) -> dict[str, int]:
    counts = {"event": int(drops["event"]), "telemetry": int(drops["telemetry"])}
    counts.update({str(k): int(v) for k, v in drops.items() if k not in counts})
    return counts


# --- downlink commands -------------------------------------------------------

MAX_COMMAND_BYTES: Final = 4096
MAX_ERROR_CHARS: Final = 200  # error messages in results and the heartbeat are clipped here
MAX_NOTE_CHARS: Final = 200

_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_FIELD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class CommandName(enum.StrEnum):
    PING = "ping"
    STATUS = "status"
    READ = "read"
    TEST_ALARM = "test-alarm"
    SILENCE = "silence"
    DUTY_CHECK = "duty-check"


class ErrorCode(enum.StrEnum):
    """Error codes in cmd-result. Additive within v1: consumers must accept unknown codes."""

    TOO_LARGE = "too_large"  # payload over MAX_COMMAND_BYTES
    BAD_JSON = "bad_json"  # not UTF-8 JSON, or not a JSON object
    BAD_REQUEST = "bad_request"  # envelope wrong: id missing/invalid, wrong v, bad expires_ms
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGS = "bad_args"  # args missing, of the wrong type, or not known to the command
    EXPIRED = "expired"  # expires_ms passed before the gateway could act
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_POINT = "unknown_point"
    FIELD_ERROR = "field_error"  # the device did not answer / answered an exception
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"  # over the gateway's command rate: not acted on
    INTERNAL = "internal"


class CommandError(AlarmgwError):
    """A command that is answered with ok=false. `request_id` is None when unknown."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        self.code = str(code)
        self.message = message
        self.request_id = request_id
        super().__init__(f"{self.code}: {message}")


class BadCommand(CommandError):
    """A downlink message that cannot be accepted as a command (raised by parse_command)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A validated downlink command. `args` holds only keys the command knows."""

    name: CommandName
    request_id: str
    args: dict[str, Any] = field(default_factory=dict)
    expires_ms: int | None = None  # UTC ms; None = no deadline


# The args each command takes: key -> (required, checker that returns a problem or None).
_ArgCheck = tuple[bool, Callable[[Any], str | None]]


def _check_id(value: Any) -> str | None:
    if not isinstance(value, str) or not _FIELD_ID.fullmatch(value):
        return "must be an id string of 1-64 characters [A-Za-z0-9_-]"
    return None


def _check_note(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_NOTE_CHARS:
        return f"must be a string of at most {MAX_NOTE_CHARS} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain control characters"
    return None


def _check_timeout(value: Any) -> str | None:
    if type(value) is not int or not MIN_DUTY_TIMEOUT_S <= value <= MAX_DUTY_TIMEOUT_S:
        return f"must be an integer {MIN_DUTY_TIMEOUT_S}..{MAX_DUTY_TIMEOUT_S} (seconds)"
    return None


MIN_DUTY_TIMEOUT_S: Final = 10
MAX_DUTY_TIMEOUT_S: Final = 3600

_ARGS: Final[Mapping[CommandName, Mapping[str, _ArgCheck]]] = {
    CommandName.PING: {},
    CommandName.STATUS: {},
    CommandName.READ: {"device": (True, _check_id), "point": (False, _check_id)},
    CommandName.TEST_ALARM: {"note": (False, _check_note)},
    CommandName.SILENCE: {},
    CommandName.DUTY_CHECK: {"timeout_s": (False, _check_timeout)},
}


_COMMAND_NAMES: Final = frozenset(c.value for c in CommandName)


def parse_command(name: str, raw: bytes, *, retained: bool = False) -> Command:
    """Validate one downlink message from topic cmd/<name>; raise BadCommand if it is wrong.

    Order of checks: size, JSON, envelope (so later errors can carry the request
    id), retain flag, command name, args. A retained command would fire again on
    every reconnect, so one delivered with the retain flag is refused.
    """
    if len(raw) > MAX_COMMAND_BYTES:
        raise too_large(len(raw))
    body = _decode_object(raw)
    request_id = _request_id(body)
    expires_ms = _expires_ms(body, request_id)
    if retained:
        raise BadCommand(ErrorCode.BAD_REQUEST, "commands must not be retained", request_id)
    if name not in _COMMAND_NAMES:
        raise BadCommand(ErrorCode.UNKNOWN_COMMAND, f"unknown command {name[:64]!r}", request_id)
    command = CommandName(name)
    args = _args(command, body.get("args", {}), request_id)
    return Command(command, request_id, args, expires_ms)


def too_large(size: int) -> BadCommand:
    """The refusal of a command payload of `size` bytes (over MAX_COMMAND_BYTES)."""
    return BadCommand(ErrorCode.TOO_LARGE, f"{size} bytes > {MAX_COMMAND_BYTES}")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _decode_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadCommand(ErrorCode.BAD_JSON, f"not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadCommand(ErrorCode.BAD_JSON, "the payload must be a JSON object")
    return body


def _request_id(body: Mapping[str, Any]) -> str:
    request_id = body.get("id")
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise BadCommand(
            ErrorCode.BAD_REQUEST, "id must be a string of 1-64 characters [A-Za-z0-9._:-]"
        )
    version = body.get("v", FEED_VERSION)
    if type(version) is not int or version != FEED_VERSION:
        raise BadCommand(ErrorCode.BAD_REQUEST, f"v must be {FEED_VERSION}", request_id)
    return request_id


def _expires_ms(body: Mapping[str, Any], request_id: str) -> int | None:
    expires = body.get("expires_ms")
    if expires is None:
        return None
    if type(expires) is not int or expires <= 0:
        raise BadCommand(
            ErrorCode.BAD_REQUEST, "expires_ms must be a positive integer (UTC ms)", request_id
        )
    return expires


def _args(command: CommandName, raw_args: Any, request_id: str) -> dict[str, Any]:
    if not isinstance(raw_args, dict):
        raise BadCommand(ErrorCode.BAD_ARGS, "args must be a JSON object", request_id)
    spec = _ARGS[command]
    unknown = sorted(set(raw_args) - set(spec))
    if unknown:
        raise BadCommand(
            ErrorCode.BAD_ARGS, f"{command} does not take {', '.join(unknown)}", request_id
        )
    for key, (required, check) in spec.items():
        if key not in raw_args:
            if required:
                raise BadCommand(ErrorCode.BAD_ARGS, f"{command} needs {key}", request_id)
            continue
        problem = check(raw_args[key])
        if problem is not None:
            raise BadCommand(ErrorCode.BAD_ARGS, f"{key} {problem}", request_id)
    return dict(raw_args)


def is_expired(command: Command, now_ms: int, clock_synced: bool) -> bool:
    """True if the command's deadline has passed. An unsynced clock cannot tell, so
    it never expires a command (a test alarm late is better than a patrol refused)."""
    return command.expires_ms is not None and clock_synced and now_ms > command.expires_ms


# --- command results ----------------------------------------------------------


def result_payload(
    ident: Identity,
    request_id: str | None,
    command: str,
    ok: bool,
    result: Mapping[str, Any] | None,
    error: CommandError | Mapping[str, str] | None,
    ts_ms: int,
) -> dict[str, Any]:
    """The answer on cmd-result. ok=True needs error=None; ok=False needs an error
    (a CommandError or {"code", "message"}). Raises ValueError on that misuse."""
    if ok == (error is not None):
        raise ValueError("ok=True goes with error=None, ok=False with an error")
    return {
        "v": FEED_VERSION,
        "id": request_id,
        "command": command[:64],
        "ok": bool(ok),
        "result": _json_safe(dict(result)) if result is not None else None,
        "error": _error_object(error) if error is not None else None,
        "ts": iso_ms(ts_ms),
        "ts_ms": ts_ms,
        "site": ident.site,
        "gateway": ident.gateway,
    }


def _error_object(error: CommandError | Mapping[str, str]) -> dict[str, str]:
    if isinstance(error, CommandError):
        return {"code": error.code, "message": error.message}
    return {"code": str(error["code"]), "message": str(error["message"])}


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: a non-finite float read from a device becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
