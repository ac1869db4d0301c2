"""CommandHandler: turns one downlink message into one cmd-result payload, always.

Validation is agent.feed.parse_command's; this module dispatches to the
gateway through the GatewayControl protocol (the runtime implements it) and
wraps every outcome — malformed JSON, wrong types, unknown command, oversized,
expired, retained, a control method raising — into an error result with a code.

QoS 1 may deliver a command twice: the results of the last RECENT_REQUESTS
commands acted on are kept by (name, request id), and a repeat is answered from
there without acting again (docs/feed.md section 9). A retained command is
refused: the broker would replay it on every connect.

Commands are rate-limited per gateway (COMMAND_RATE for all of them,
TEST_ALARM_RATE for test alarms and DUTY_CHECK_RATE for duty checks besides): a
command past the limit is answered `rate_limited` and not acted on, so a flood from a
broken or hostile platform cannot fill the buffer with test fire events or duty-check
records, or keep the field bus busy.

It must never raise out of handle(), never act twice on one request id it
still remembers, never act past a rate limit, and never write to a field
device: none of the commands reachable here asks GatewayControl for a write.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agent import feed
from core.errors import AlarmgwError, FieldError, LineBusy, UnknownPoint
from core.events import Event, Identity, now_ms

log = logging.getLogger(__name__)

RECENT_REQUESTS: Final = 256  # results remembered for repeats (bounded: ~256 small dicts)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `burst` commands at once, then `per_s` a second."""

    burst: int
    per_s: float

    def describe(self, what: str) -> str:
        per_minute = self.per_s * 60
        rate = f"{self.per_s:g} a second" if per_minute > 60 else f"{per_minute:g} a minute"
        return f"at most {self.burst} {what} at once, then {rate}"


# Every command acted on: a platform asks now and then (a patrol ping every 2 h, a few
# reads while someone looks); this much leaves the field bus and the buffer to the alarms.
COMMAND_RATE: Final = RateLimit(burst=20, per_s=5.0)
# Test alarms are durable fire events of the test kind: GB 26875 wants two a month; a
# technician may send a few in a row while commissioning.
TEST_ALARM_RATE: Final = RateLimit(burst=5, per_s=1 / 60)
# Duty checks restart the prompt on site, and each one replaced is an `unanswered` event:
# a centre or platform asks every few hours; a flood must not chirp on or fill the buffer.
DUTY_CHECK_RATE: Final = RateLimit(burst=3, per_s=1 / 30)


class _Bucket:
    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.stamp = now

    def wait_s(self, now: float) -> float:
        """0 if a command may go now, else the seconds until one may."""
        self.tokens = min(self.limit.burst, self.tokens + (now - self.stamp) * self.limit.per_s)
        self.stamp = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.limit.per_s

    def take(self) -> None:
        self.tokens -= 1


class GatewayControl(Protocol):
    """What commands may ask of the running gateway (implemented by the runtime).
    Results are shaped as docs/schemas/cmd-result.schema.json says per command."""

    def uptime_s(self) -> float: ...

    def status(self) -> dict[str, Any]: ...  # the heartbeat's health summary, taken now

    def read_point(self, device: str, point: str | None) -> dict[str, Any]: ...

    # returns once the event is stored; `note` travels in the event's detail
    def test_alarm(self, requested_by: str, note: str | None = None) -> Event: ...

    def silence(self) -> dict[str, Any]: ...

    # starts (or restarts) the duty check's prompt; the answer comes later as an event
    def duty_check(self, requested_by: str, timeout_s: float | None) -> dict[str, Any]: ...


class CommandHandler:
    """Thread-safe; one instance serves the uplink's command worker."""

    def __init__(
        self,
        control: GatewayControl,
        identity: Identity,
        clock_synced: Callable[[], bool] = lambda: True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.control = control
        self.identity = identity
        self._clock_synced = clock_synced
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.errors: Counter[str] = Counter()  # by error code, for status and tests
        self.handled = 0
        self.repeats = 0  # requests answered from memory, not acted on again
        # (name, request id) -> the result given; oldest first. Callers are serialised by
        # the uplink's one command worker, so a repeat never races its original.
        self._recent: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        start = monotonic()
        self._buckets = {
            "commands": _Bucket(COMMAND_RATE, start),
            "test alarms": _Bucket(TEST_ALARM_RATE, start),
            "duty checks": _Bucket(DUTY_CHECK_RATE, start),
        }

    def handle(self, name: str, raw: bytes, retained: bool = False) -> dict[str, Any]:
        """The cmd-result payload for one message on cmd/<name>. Never raises.

        `retained`: the message came with the retain flag (a replay by the broker); it
        is refused, never acted on.
        """
        with self._lock:
            self.handled += 1
        try:
            return self._handle(name, raw, retained)
        except Exception as exc:  # last line of defence: a bug becomes an error result
            log.exception("command %r failed unexpectedly", name[:64])
            return self._error(None, name, feed.ErrorCode.INTERNAL, type(exc).__name__)

    def _handle(self, name: str, raw: bytes, retained: bool) -> dict[str, Any]:
        try:
            command = feed.parse_command(name, raw, retained=retained)
        except feed.BadCommand as bad:
            return self._error(bad.request_id, name, bad.code, bad.message)
        key = (name, command.request_id)
        earlier = self._recall(key)
        if earlier is not None:
            return earlier
        refusal = self._rate_limited(command)
        if refusal is not None:  # not remembered: the same request may be sent again later
            return self._error(command.request_id, name, feed.ErrorCode.RATE_LIMITED, refusal)
        result = self._act(command, name)
        self._remember(key, result)
        return result

    def _rate_limited(self, command: feed.Command) -> str | None:
        """Take this command's tokens; None if it may go, else why not (taking none)."""
        names = ["commands"]
        if command.name is feed.CommandName.TEST_ALARM:
            names.append("test alarms")
        elif command.name is feed.CommandName.DUTY_CHECK:
            names.append("duty checks")
        now = self._monotonic()
        with self._lock:
            for name in names:
                wait = self._buckets[name].wait_s(now)
                if wait > 0:
                    limit = self._buckets[name].limit.describe(name)
                    return f"{limit}; try again in {math.ceil(wait)} s"
            for name in names:
                self._buckets[name].take()
        return None

    def _recall(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self._lock:
            earlier = self._recent.get(key)
            if earlier is None:
                return None
            self._recent.move_to_end(key)
            self.repeats += 1
        log.info("command %s %r repeated: answered from memory", key[0][:64], key[1])
        return dict(earlier)

    def _remember(self, key: tuple[str, str], result: dict[str, Any]) -> None:
        with self._lock:
            self._recent[key] = dict(result)
            while len(self._recent) > RECENT_REQUESTS:
                self._recent.popitem(last=False)

    def _act(self, command: feed.Command, name: str) -> dict[str, Any]:
        """Run a valid command once; its result (ok or error) is what repeats get."""
        if feed.is_expired(command, now_ms(), self._clock_synced()):
            return self._error(command.request_id, name, feed.ErrorCode.EXPIRED, "deadline passed")
        try:
            result = self._dispatch(command)
        except UnknownPoint as exc:
            code = (
                feed.ErrorCode.UNKNOWN_POINT
                if "point" in str(exc)
                else feed.ErrorCode.UNKNOWN_DEVICE
            )
            return self._error(command.request_id, name, code, str(exc))
        except FieldError as exc:
            return self._error(command.request_id, name, feed.ErrorCode.FIELD_ERROR, str(exc))
        except LineBusy as exc:  # the line's queue is full, or it could not get to it in time
            return self._error(command.request_id, name, feed.ErrorCode.BUSY, str(exc))
        except AlarmgwError as exc:
            return self._error(command.request_id, name, feed.ErrorCode.INTERNAL, str(exc))
        return feed.result_payload(
            self.identity, command.request_id, name, True, result, None, now_ms()
        )

    def _dispatch(self, command: feed.Command) -> dict[str, Any]:
        name = command.name
        if name is feed.CommandName.PING:
            return {"pong": True, "uptime_s": round(self.control.uptime_s(), 3)}
        if name is feed.CommandName.STATUS:
            return dict(self.control.status())
        if name is feed.CommandName.READ:
            return dict(self.control.read_point(command.args["device"], command.args.get("point")))
        if name is feed.CommandName.TEST_ALARM:
            note = command.args.get("note")
            event = self.control.test_alarm(f"cmd:{command.request_id}", note)
            return {"event_id": event.id, "seq": event.seq}
        if name is feed.CommandName.DUTY_CHECK:
            timeout = command.args.get("timeout_s")
            return dict(self.control.duty_check(f"cmd:{command.request_id}", timeout))
        return dict(self.control.silence())

    def _error(self, request_id: str | None, name: str, code: str, message: str) -> dict[str, Any]:
        with self._lock:
            self.errors[str(code)] += 1
        error = {"code": str(code), "message": message[: feed.MAX_ERROR_CHARS]}
        return feed.result_payload(self.identity, request_id, name, False, None, error, now_ms())
