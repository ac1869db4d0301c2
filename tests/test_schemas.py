"""The written feed contract (docs/schemas, docs/asyncapi.yaml) against the code.

Every payload the gateway builds is validated with the published JSON Schemas
(format checking on), every key it emits must be declared there, the command
parser must accept exactly what the command schemas accept, and the schemas
must reject what is wrong — so a drift on either side fails here.
"""

from __future__ import annotations

import json
import math
import re
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agent import feed
from agent.feed import (
    MAX_COMMAND_BYTES,
    BadCommand,
    Command,
    CommandName,
    ErrorCode,
    Leaf,
    parse_command,
    result_payload,
)
from core.events import (
    Category,
    Event,
    Identity,
    Kind,
    Reading,
    Severity,
    dumps,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMAS = DOCS / "schemas"
# what the feed carries; profile.schema.json describes a file (tests/test_checks.py)
FEED_SCHEMAS = sorted(set(SCHEMAS.glob("*.schema.json")) - {SCHEMAS / "profile.schema.json"})
IDENT = Identity("cn-sz-futian-yl001", "gw1", "福田区第一养老院", "消防控制室网关")
TS = 1_795_000_000_123  # 2026-11-18T...Z, a plausible detection time


@cache
def schema(name: str) -> dict[str, Any]:
    with (SCHEMAS / f"{name}.schema.json").open(encoding="utf-8") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def undeclared(payload: dict[str, Any], node: dict[str, Any], path: str = "") -> list[str]:
    """Keys the payload has that the schema does not declare (schemas stay open to
    consumers for additive changes; the producer must still declare all it sends)."""
    declared = node.get("properties", {})
    if node.get("additionalProperties") not in (None, False):
        return []  # an open map by design (drops counters)
    missing = []
    for key, value in payload.items():
        if key not in declared:
            missing.append(path + key)
        elif isinstance(value, dict) and "properties" in declared[key]:
            missing += undeclared(value, declared[key], f"{path}{key}.")
    return missing


def assert_valid(name: str, payload: dict[str, Any]) -> None:
    errors = [e.message for e in validator(name).iter_errors(payload)]
    assert errors == [], errors
    assert undeclared(payload, schema(name)) == []
    assert json.loads(dumps(payload)) == payload  # survives the wire as built


def assert_invalid(name: str, payload: dict[str, Any]) -> None:
    assert not validator(name).is_valid(payload)


def an_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "kind": Kind.ALARM,
        "category": Category.FIRE,
        "severity": Severity.CRITICAL,
        "state": "fire",
        "text": "1号火灾报警控制器 3层 东走廊 感烟探测器 火警",
        "device": "fap",
        "point": "zone_3",
        "ts_ms": TS,
        "clock_synced": True,
    }
    fields.update(overrides)
    return Event(**fields).with_seq(41)


# --- the schemas themselves ----------------------------------------------------


def test_every_schema_is_valid_draft_2020_12() -> None:
    assert len(FEED_SCHEMAS) >= 10
    for path in FEED_SCHEMAS:
        Draft202012Validator.check_schema(schema(path.name.removesuffix(".schema.json")))


# --- events ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_event_of_every_kind_and_category_matches_schema(kind: Kind) -> None:
    for category in Category:
        event = an_event(kind=kind, category=category, test=kind is Kind.TEST)
        assert_valid("event", event.to_payload(IDENT))


@pytest.mark.parametrize("severity", list(Severity))
def test_event_values_and_severities_match_schema(severity: Severity) -> None:
    for value, unit in [(412, "mA"), (0.35, "MPa"), (True, None), ("open", None), (None, None)]:
        event = an_event(severity=severity, value=value, unit=unit)
        assert_valid("event", event.to_payload(IDENT))


def test_event_with_every_optional_field_matches_schema() -> None:
    event = an_event(
        kind=Kind.ALARM,
        category=Category.ELECTRICAL,
        severity=Severity.MAJOR,
        state="alarm",
        value=412,
        unit="mA",
        device="efd-1",
        point="ch1_leak",
        device_name="电气火灾监控探测器 A区",
        point_name="厨房回路剩余电流",
        location="一楼配电间",
        detail={"threshold": 400},
        clock_synced=False,
    )
    payload = event.to_payload(IDENT)
    assert {"device_name", "point_name", "location", "detail"} <= payload.keys()
    assert_valid("event", payload)


def test_gateway_event_without_point_matches_schema() -> None:
    event = an_event(
        kind=Kind.COMM_LOSS,
        category=Category.COMM,
        severity=Severity.MINOR,
        state="no_answer",
        device="gas-1",
        point=None,
        text="厨房可燃气体探测器 通讯故障",
    )
    assert_valid("event", event.to_payload(IDENT))


def a_buffer_event(kind: Kind, state: str, detail: dict[str, Any] | None) -> Event:
    """Shaped like agent.buffer's announcements (device gateway, point buffer)."""
    return an_event(
        kind=kind,
        category=Category.SYSTEM,
        severity=Severity.WARNING,
        state=state,
        device="gateway",
        point="buffer",
        text="buffer full: 120 records dropped (max_events 200000)",
        detail=detail,
    )


OVERFLOW = {
    "buffer": "drops",
    "dropped": {
        "telemetry": {"count": 118, "ranges": [[1001, 1117], [1119, 1119]]},
        "event": {"count": 2, "ranges": [[1830, 1830], [1832, 1832]]},
    },
}
RECOVERED = {
    "buffer": "recovered",
    "lane": "event",
    "why": "database was corrupt",
    "lost_range": [1840, 1841],
}


def test_buffer_announcements_match_schema() -> None:
    assert_valid("event", a_buffer_event(Kind.SYSTEM, "overflow", OVERFLOW).to_payload(IDENT))
    for detail in (RECOVERED, {"buffer": "recovered", "lane": "telemetry", "why": "no sidecar"}):
        event = a_buffer_event(Kind.FAULT, "buffer_recovered", detail)
        assert_valid("event", event.to_payload(IDENT))


BAD_ANNOUNCEMENTS = [
    ("overflow", None),
    ("overflow", {"buffer": "drops"}),
    ("overflow", {"buffer": "drops", "dropped": {}}),
    ("overflow", {"buffer": "drops", "dropped": {"alarm": {"count": 1, "ranges": []}}}),
    ("overflow", {"buffer": "drops", "dropped": {"event": {"count": 1, "ranges": [[5]]}}}),
    ("buffer_recovered", None),
    ("buffer_recovered", {"buffer": "recovered", "lane": "event"}),
    ("buffer_recovered", {**RECOVERED, "lost_range": [1840]}),
]


def test_buffer_announcements_without_their_detail_are_rejected() -> None:
    for state, detail in BAD_ANNOUNCEMENTS:
        payload = a_buffer_event(Kind.SYSTEM, state, detail).to_payload(IDENT)
        assert not validator("event").is_valid(payload), (state, detail)


def test_test_kind_must_carry_the_test_flag() -> None:
    assert_invalid("event", an_event(kind=Kind.TEST, test=False).to_payload(IDENT))


EVENT_BREAKERS = [
    ("missing seq", lambda p: p.pop("seq")),
    ("seq zero", lambda p: p.update(seq=0)),
    ("seq as string", lambda p: p.update(seq="41")),
    ("unknown kind", lambda p: p.update(kind="fire_alarm")),
    ("unknown category", lambda p: p.update(category="smoke")),
    ("unknown severity", lambda p: p.update(severity="high")),
    ("ts without ms", lambda p: p.update(ts="2026-11-18T10:13:20Z")),
    ("ts not a date", lambda p: p.update(ts="2026-13-45T10:13:20.123Z")),
    ("id not a uuid", lambda p: p.update(id="not-a-uuid")),
    ("missing clock_synced", lambda p: p.pop("clock_synced")),
    ("point missing (must be null)", lambda p: p.pop("point")),
    ("empty state", lambda p: p.update(state="")),
    ("site with a slash", lambda p: p.update(site="a/b")),
    ("wrong version", lambda p: p.update(v=2)),
    ("value is an object", lambda p: p.update(value={"mA": 1})),
]


def test_event_schema_rejects_wrong_payloads() -> None:
    for name, change in EVENT_BREAKERS:
        payload = an_event().to_payload(IDENT)
        change(payload)
        assert not validator("event").is_valid(payload), name


def test_an_undeclared_key_is_caught() -> None:
    payload = an_event().to_payload(IDENT)
    payload["resident_name"] = "张三"  # also exactly what GB 38600 forbids
    assert undeclared(payload, schema("event")) == ["resident_name"]


def test_chinese_text_stays_as_is_on_the_wire() -> None:
    payload = an_event(device_name="1号火灾报警控制器", location="一楼消防控制室").to_payload(IDENT)
    wire = dumps(payload)
    assert "1号火灾报警控制器".encode() in wire
    assert b"\\u" not in wire
    assert json.loads(wire.decode("utf-8")) == payload


# --- telemetry ------------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["good", "stale", "bad"])
@pytest.mark.parametrize(("value", "unit"), [(0.42, "MPa"), (23, "%LEL"), (-1.5, "°C"), (7, None)])
def test_reading_matches_schema(quality: str, value: float, unit: str | None) -> None:
    reading = Reading("ai-1", "pressure", value, unit, ts_ms=TS, quality=quality).with_seq(7)
    assert_valid("telemetry", reading.to_payload(IDENT))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_reading_that_is_not_a_number_goes_out_as_null_and_bad_by_the_schema(
    value: float,
) -> None:
    """A float32 register can hold NaN or infinity; JSON cannot: null, quality bad."""
    payload = Reading("ai-1", "pressure", value, "MPa", ts_ms=TS).with_seq(7).to_payload(IDENT)
    assert (payload["value"], payload["quality"]) == (None, "bad")
    assert_valid("telemetry", payload)


TELEMETRY_BREAKERS = [
    lambda p: p.pop("seq"),
    lambda p: p.update(quality="ok"),
    lambda p: p.update(value=True),
    lambda p: p.update(value="0.42"),
    lambda p: p.update(point=None),
]


def test_telemetry_schema_rejects_wrong_payloads() -> None:
    for number, change in enumerate(TELEMETRY_BREAKERS):
        payload = Reading("ai-1", "pressure", 0.42, "MPa", ts_ms=TS).with_seq(7).to_payload(IDENT)
        change(payload)
        assert not validator("telemetry").is_valid(payload), number


# --- status -----------------------------------------------------------------------------


def test_online_and_offline_status_match_schema() -> None:
    online = feed.status_payload(IDENT, True, "0.1.0", TS - 5000, "sha256:0123abcd", TS)
    offline = feed.status_payload(IDENT, False, "0.1.0", TS - 5000, "sha256:0123abcd", TS)
    will = feed.will_payload(IDENT, "0.1.0", TS - 5000, "sha256:0123abcd", TS)
    for payload in (online, offline, will):
        assert_valid("status", payload)
    assert (online["state"], "reason" in online) == ("online", False)
    assert (offline["state"], offline["reason"]) == ("offline", "shutdown")
    assert (will["state"], will["reason"]) == ("offline", "connection_lost")
    assert online["site_name"] == "福田区第一养老院"


def test_status_schema_rejects_reason_on_online_and_missing_reason_on_offline() -> None:
    online = feed.status_payload(IDENT, True, "0.1.0", TS, "d", TS)
    assert_invalid("status", {**online, "reason": "shutdown"})
    offline = feed.status_payload(IDENT, False, "0.1.0", TS, "d", TS)
    del offline["reason"]
    assert_invalid("status", offline)
    assert_invalid("status", {**online, "state": "up"})


def test_status_without_display_names_matches_schema() -> None:
    payload = feed.status_payload(Identity("s1", "gw1"), True, "0.1.0", TS, "d", TS)
    assert "site_name" not in payload
    assert_valid("status", payload)


# --- heartbeat --------------------------------------------------------------------------


def a_heartbeat(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "ident": IDENT,
        "ts_ms": TS,
        "clock_synced": False,
        "uptime_s": 3600.25,
        "version": "0.1.0",
        "buffer": {
            "event_depth": 3,
            "telemetry_depth": 120,
            "oldest_age_s": 42.5,
            "degraded": False,
        },
        "devices": {"total": 5, "online": 4, "comm_fault": ["gas-1"]},
        "drops": {"event": 0, "telemetry": 12},
        "uplink": {"reconnects": 2, "published": 1500, "acked": 1497},
    }
    args.update(overrides)
    return feed.heartbeat_payload(**args)


def test_heartbeat_matches_schema() -> None:
    assert_valid("heartbeat", a_heartbeat())
    assert_valid("heartbeat", a_heartbeat(interval_s=30))


def test_heartbeat_with_empty_buffer_and_extra_drop_counter_matches_schema() -> None:
    payload = a_heartbeat(
        buffer={"event_depth": 0, "telemetry_depth": 0, "oldest_age_s": None, "degraded": True},
        drops={"event": 0, "telemetry": 0, "corrupt": 2},
        devices={"total": 2, "online": 0, "comm_fault": ["efd-2", "efd-1"]},
    )
    assert_valid("heartbeat", payload)
    assert payload["devices"]["comm_fault"] == ["efd-1", "efd-2"]
    assert payload["drops"]["corrupt"] == 2


def test_heartbeat_builder_refuses_missing_inner_keys() -> None:
    with pytest.raises(KeyError):
        a_heartbeat(buffer={"event_depth": 0})


HEARTBEAT_BREAKERS = [
    lambda p: p["buffer"].pop("oldest_age_s"),
    lambda p: p["buffer"].update(event_depth=-1),
    lambda p: p["devices"].update(comm_fault="gas-1"),
    lambda p: p["drops"].update(corrupt="2"),
    lambda p: p.pop("uplink"),
    lambda p: p.update(heartbeat_s=30) or p.pop("clock_synced"),
]


def test_heartbeat_schema_rejects_wrong_payloads() -> None:
    for number, change in enumerate(HEARTBEAT_BREAKERS):
        payload = a_heartbeat()
        change(payload)
        assert not validator("heartbeat").is_valid(payload), number


# --- commands: the parser and the command schemas must agree ---------------------------

ACCEPTED = [
    ("ping", {"id": "p1"}),
    ("ping", {"id": "3f1c9a52-4f0e-4a59-9d7c-0c9a3e2b7d11", "v": 1, "args": {}}),
    ("status", {"id": "st:1", "expires_ms": TS}),
    ("read", {"id": "r1", "args": {"device": "efd-1"}}),
    ("read", {"id": "r2", "args": {"device": "efd-1", "point": "ch1_leak"}}),
    ("test-alarm", {"id": "t1"}),
    ("test-alarm", {"id": "t2", "args": {"note": "月度模拟火警传输测试"}}),
    ("silence", {"id": "s1", "from": "platform-7"}),  # unknown top-level keys are ignored
    ("duty-check", {"id": "d1"}),
    ("duty-check", {"id": "d2", "args": {"timeout_s": 600}}),
]

REJECTED_BY_BOTH = [
    ("ping", {}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": ""}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": 17}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "a b"}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "x" * 65}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "p", "v": 2}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "p", "v": True}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "p", "expires_ms": "soon"}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "p", "expires_ms": 1.5}, ErrorCode.BAD_REQUEST),
    ("ping", {"id": "p", "args": {"x": 1}}, ErrorCode.BAD_ARGS),
    ("ping", {"id": "p", "args": []}, ErrorCode.BAD_ARGS),
    ("ping", {"id": "p", "args": None}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r"}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r", "args": {"point": "ch1_leak"}}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r", "args": {"device": 3}}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r", "args": {"device": True}}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r", "args": {"device": "../etc"}}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r", "args": {"device": "efd-1", "point": None}}, ErrorCode.BAD_ARGS),
    ("read", {"id": "r", "args": {"device": "efd-1", "write": 1}}, ErrorCode.BAD_ARGS),
    ("test-alarm", {"id": "t", "args": {"note": 5}}, ErrorCode.BAD_ARGS),
    ("test-alarm", {"id": "t", "args": {"note": "x" * 201}}, ErrorCode.BAD_ARGS),
    ("test-alarm", {"id": "t", "args": {"note": "line\nbreak"}}, ErrorCode.BAD_ARGS),
    ("silence", {"id": "s", "args": {"output": "buzzer"}}, ErrorCode.BAD_ARGS),
    ("duty-check", {"id": "d", "args": {"timeout_s": 5}}, ErrorCode.BAD_ARGS),
    ("duty-check", {"id": "d", "args": {"timeout_s": 3601}}, ErrorCode.BAD_ARGS),
    ("duty-check", {"id": "d", "args": {"timeout_s": 60.5}}, ErrorCode.BAD_ARGS),
    ("duty-check", {"id": "d", "args": {"timeout_s": True}}, ErrorCode.BAD_ARGS),
    ("duty-check", {"id": "d", "args": {"minutes": 10}}, ErrorCode.BAD_ARGS),
]


def test_accepted_commands_match_their_schemas() -> None:
    for name, body in ACCEPTED:
        command = parse_command(name, json.dumps(body, ensure_ascii=False).encode())
        assert validator(f"cmd-{name}").is_valid(body), body
        assert command == Command(
            CommandName(name), body["id"], body.get("args", {}), body.get("expires_ms")
        )


def test_rejected_commands_are_rejected_by_their_schemas_too() -> None:
    for name, body, code in REJECTED_BY_BOTH:
        with pytest.raises(BadCommand) as caught:
            parse_command(name, json.dumps(body).encode())
        assert caught.value.code == code, body
        assert not validator(f"cmd-{name}").is_valid(body), body
        if code is ErrorCode.BAD_ARGS:  # the envelope was fine: the answer carries the id
            assert caught.value.request_id == body["id"], body


@pytest.mark.parametrize("name", [c.value for c in CommandName])
def test_schema_examples_are_accepted_by_the_parser(name: str) -> None:
    for example in schema(f"cmd-{name}")["examples"]:
        assert validator(f"cmd-{name}").is_valid(example)
        parse_command(name, json.dumps(example, ensure_ascii=False).encode())


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab_-1./ 火", max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([c.value for c in CommandName]),
    args=st.dictionaries(
        st.sampled_from(["device", "point", "note", "timeout_s", "x"]), JSON_SCALARS, max_size=3
    ),
)
def test_parser_and_schema_agree_on_any_args(name: str, args: dict[str, Any]) -> None:
    body = {"id": "h1", "args": args}
    schema_ok = validator(f"cmd-{name}").is_valid(body)
    try:
        parse_command(name, json.dumps(body).encode())
    except BadCommand as exc:
        assert exc.code == ErrorCode.BAD_ARGS
        assert not schema_ok, body
    else:
        assert schema_ok, body


MALFORMED = [
    (b"\xff\xfe{}", ErrorCode.BAD_JSON),
    (b"{", ErrorCode.BAD_JSON),
    (b"", ErrorCode.BAD_JSON),
    (b"[]", ErrorCode.BAD_JSON),
    (b'"ping"', ErrorCode.BAD_JSON),
    (b'{"id": "a", "x": NaN}', ErrorCode.BAD_JSON),
    (b'{"id": "a", "id": "b"}', ErrorCode.BAD_JSON),
    (b"[" * 100_000, ErrorCode.TOO_LARGE),
    (b"[" * 4000, ErrorCode.BAD_JSON),
    (b'{"id": "a", "pad": "' + b"x" * MAX_COMMAND_BYTES + b'"}', ErrorCode.TOO_LARGE),
]


def test_malformed_bytes_give_typed_errors() -> None:
    for raw, code in MALFORMED:
        with pytest.raises(BadCommand) as caught:
            parse_command("ping", raw)
        assert (caught.value.code, caught.value.request_id) == (code, None), raw[:40]


def test_unknown_command_carries_the_request_id() -> None:
    with pytest.raises(BadCommand) as caught:
        parse_command("reboot", b'{"id": "x9"}')
    assert (caught.value.code, caught.value.request_id) == (ErrorCode.UNKNOWN_COMMAND, "x9")


def test_a_retained_command_is_refused_with_its_id() -> None:
    with pytest.raises(BadCommand) as caught:
        parse_command("test-alarm", b'{"id": "t1"}', retained=True)
    assert (caught.value.code, caught.value.request_id) == (ErrorCode.BAD_REQUEST, "t1")


def test_a_message_of_exactly_the_limit_is_accepted() -> None:
    head, tail = b'{"id": "a", "pad": "', b'"}'
    raw = head + b"x" * (MAX_COMMAND_BYTES - len(head) - len(tail)) + tail
    assert len(raw) == MAX_COMMAND_BYTES
    assert parse_command("ping", raw).request_id == "a"


def test_expiry_needs_a_synced_clock() -> None:
    command = parse_command("test-alarm", b'{"id": "t", "expires_ms": 1000}')
    assert feed.is_expired(command, 1001, clock_synced=True)
    assert not feed.is_expired(command, 1000, clock_synced=True)
    assert not feed.is_expired(command, 1001, clock_synced=False)
    assert not feed.is_expired(parse_command("ping", b'{"id": "p"}'), 10**13, True)


# --- command results -----------------------------------------------------------------

OK_RESULTS = [
    ("ping", {"pong": True, "uptime_s": 12.5}),
    (
        "status",
        {
            "version": "0.1.0",
            "uptime_s": 5.0,
            "clock_synced": True,
            "buffer": {"event_depth": 0},
            "devices": {"total": 5},
        },
    ),
    (
        "read",
        {
            "device": "efd-1",
            "points": [
                {
                    "point": "ch1_leak",
                    "name": "厨房回路剩余电流",
                    "value": 412,
                    "unit": "mA",
                    "state": "alarm",
                    "quality": "good",
                    "ts_ms": TS,
                },
                {"point": "ch2_temp", "value": float("nan"), "unit": "°C", "quality": "bad"},
            ],
        },
    ),
    ("test-alarm", {"event_id": "3f1c9a52-4f0e-4a59-9d7c-0c9a3e2b7d11", "seq": 42}),
    ("silence", {"silenced": ["buzzer"]}),
    ("duty-check", {"started": True, "timeout_s": 600.0, "restarted": False}),
]


@pytest.mark.parametrize(("command", "result"), OK_RESULTS)
def test_ok_result_matches_schema(command: str, result: dict[str, Any]) -> None:
    payload = result_payload(IDENT, "req-1", command, True, result, None, TS)
    assert_valid("cmd-result", payload)
    assert (payload["id"], payload["ok"], payload["error"]) == ("req-1", True, None)


def test_non_finite_numbers_in_a_result_become_null() -> None:
    payload = result_payload(IDENT, "r", "read", True, OK_RESULTS[2][1], None, TS)
    assert payload["result"]["points"][1]["value"] is None
    assert math.isnan(OK_RESULTS[2][1]["points"][1]["value"])  # the caller's dict untouched


@pytest.mark.parametrize(("command", "result"), OK_RESULTS)
def test_ok_result_without_its_required_fields_is_rejected(
    command: str, result: dict[str, Any]
) -> None:
    payload = result_payload(IDENT, "req-1", command, True, {"unrelated": 1}, None, TS)
    assert_invalid("cmd-result", payload)


def test_error_results_match_schema() -> None:
    with pytest.raises(BadCommand) as caught:
        parse_command("ping", b"not json")
    from_parse = result_payload(IDENT, None, "ping", False, None, caught.value, TS)
    assert_valid("cmd-result", from_parse)
    assert from_parse["error"]["code"] == "bad_json"
    runtime = result_payload(
        IDENT, "r7", "read", False, None, {"code": "unknown_device", "message": "no gas-9"}, TS
    )
    assert_valid("cmd-result", runtime)
    unknown = result_payload(
        IDENT,
        "u1",
        "x" * 100,
        False,
        None,
        feed.CommandError(ErrorCode.UNKNOWN_COMMAND, "unknown command", "u1"),
        TS,
    )
    assert_valid("cmd-result", unknown)


def test_result_schema_rejects_inconsistent_answers() -> None:
    ok = result_payload(IDENT, "r", "ping", True, {"pong": True}, None, TS)
    assert_invalid("cmd-result", {**ok, "error": {"code": "busy", "message": "m"}})
    assert_invalid("cmd-result", {**ok, "ok": False})  # not ok, yet no error
    assert_invalid("cmd-result", {**ok, "error": {"code": "Bad Code", "message": "m"}})
    no_id = dict(ok)
    del no_id["id"]
    assert_invalid("cmd-result", no_id)


def test_result_builder_refuses_ok_with_error_and_error_without_one() -> None:
    with pytest.raises(ValueError, match="ok=True"):
        result_payload(IDENT, "r", "ping", True, None, {"code": "busy", "message": "m"}, TS)
    with pytest.raises(ValueError, match="ok=True"):
        result_payload(IDENT, "r", "ping", False, None, None, TS)


# --- topics ------------------------------------------------------------------------------


def test_topics_follow_the_contract() -> None:
    assert feed.topic("alarmgw", IDENT, Leaf.EVENT) == "alarmgw/v1/cn-sz-futian-yl001/gw1/event"
    assert feed.command_filter("alarmgw", IDENT) == "alarmgw/v1/cn-sz-futian-yl001/gw1/cmd/+"
    received = "alarmgw/v1/cn-sz-futian-yl001/gw1/cmd/test-alarm"
    assert feed.command_name_of("alarmgw", IDENT, received) == "test-alarm"
    assert feed.command_name_of("alarmgw", IDENT, "alarmgw/v1/other/gw1/cmd/ping") is None
    assert feed.command_name_of("alarmgw", IDENT, received + "/x") is None
    for bad in ("", "/event", "event/", "cmd//read"):
        with pytest.raises(ValueError, match="bad topic leaf"):
            feed.topic("alarmgw", IDENT, bad)


def test_qos_and_retain_cover_every_leaf() -> None:
    assert set(feed.QOS) == set(feed.RETAIN) == set(Leaf)
    assert [leaf for leaf in Leaf if feed.RETAIN[leaf]] == [Leaf.STATUS]
    assert feed.QOS[Leaf.EVENT] == feed.QOS[Leaf.TELEMETRY] == feed.QOS[Leaf.CMD_RESULT] == 1


# --- the AsyncAPI document -----------------------------------------------------------


@cache
def asyncapi() -> dict[str, Any]:
    with (DOCS / "asyncapi.yaml").open(encoding="utf-8") as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


def resolve_local(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_references_exist_and_cover_every_schema() -> None:
    doc = asyncapi()
    assert doc["asyncapi"].startswith("3.")
    all_refs = refs(doc)
    files = {r for r in all_refs if not r.startswith("#")}
    for ref in files:
        assert (DOCS / ref).is_file(), ref
    assert {(DOCS / r).resolve() for r in files} == set(FEED_SCHEMAS)
    for ref in (r for r in all_refs if r.startswith("#")):
        assert resolve_local(doc, ref) is not None, ref


def test_asyncapi_qos_and_retain_match_the_code() -> None:
    operations = asyncapi()["operations"]
    by_leaf: dict[str, dict[str, Any]] = {}
    for operation in operations.values():
        channel = resolve_local(asyncapi(), operation["channel"]["$ref"])
        leaf = channel["address"].split("{gateway}/", 1)[1]
        by_leaf[leaf] = operation["bindings"]["mqtt"]
    for leaf in Leaf:
        assert by_leaf[leaf.value]["qos"] == feed.QOS[leaf], leaf
        assert by_leaf[leaf.value].get("retain", False) == feed.RETAIN[leaf], leaf
    assert by_leaf["cmd/{name}"]["qos"] == feed.COMMAND_QOS


def test_the_alarms_the_contract_says_overtake_are_the_ones_the_buffer_sends_first(
    tmp_path: Path,
) -> None:
    """asyncapi.yaml names the overtaking alarms (x-alarmgw-overtaking); a real buffer's
    delivery order must put exactly those first, for every kind and category."""
    from agent.buffer import EventBuffer, ReadCursor

    said = asyncapi()["operations"]["sendEvent"]["x-alarmgw-overtaking"]
    kinds = schema("event")["properties"]["kind"]["enum"]
    categories = schema("event")["properties"]["category"]["enum"]
    assert said["kind"] in kinds and set(said["category"]) <= set(categories)
    combos = [(k, c) for k in kinds for c in categories]
    with EventBuffer(tmp_path / "b.db", IDENT, 1000) as buffer:
        for kind, category in combos:
            event = Event(Kind(kind), Category(category), Severity.MAJOR, "s", "t", "d", "p",
                          test=kind == "test")  # fmt: skip
            buffer.submit(event).result(5)
        rows = buffer.next_rows(ReadCursor(), len(combos))
    first = [combos[r.seq - 1] for r in rows if r.life_safety]
    expected = [(k, c) for k, c in combos if k == said["kind"] and c in said["category"]]
    assert first == expected
    assert [combos[r.seq - 1] for r in rows[: len(expected)]] == expected


def test_docs_examples_match_the_schemas() -> None:
    """Every ```json block in docs/feed.md that names its schema must validate."""
    text = (DOCS / "feed.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- schema: ([a-z-]+) -->\s*```json\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    for name, body in blocks:
        payload = json.loads(body)
        errors = [e.message for e in validator(name).iter_errors(payload)]
        assert errors == [], (name, errors)
        if not name.startswith("cmd-") or name == "cmd-result":
            assert undeclared(payload, schema(name)) == [], name


# --- the real buffer's bytes ---------------------------------------------------------


def test_payloads_stored_by_the_real_buffer_match_the_schemas(tmp_path: Path) -> None:
    """Overflow a real SQLite buffer: the stored rows and its announcement must validate."""
    from agent.buffer import EventBuffer
    from core.events import Lane

    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, max_events=5).start()
    try:
        futures = [buffer.submit(Reading("ai-1", "level", 1.5 + n, "m")) for n in range(12)]
        futures.append(buffer.submit(an_event()))
        for future in futures:
            future.exception(timeout=10)  # stored or dropped: either way settled
        deadline = time.monotonic() + 10
        announced: list[dict[str, Any]] = []
        while not announced and time.monotonic() < deadline:
            rows = buffer.pending(Lane.EVENT)
            announced = [
                p for p in (json.loads(r.payload) for r in rows) if p["state"] == "overflow"
            ]
            if not announced:
                time.sleep(0.05)  # polling the writer thread's result with a deadline
        assert announced, "the buffer dropped records without announcing it"
        for lane in Lane:
            for row in buffer.pending(lane, limit=1000):
                assert_valid(lane.value, json.loads(row.payload))
        stats = buffer.stats()
    finally:
        buffer.close()
    payload = a_heartbeat(buffer=stats, drops=stats["drops"])
    assert_valid("heartbeat", payload)
    assert payload["drops"]["telemetry"] >= 1


# --- detail.gb (feed 1.3): the GB/T 26875.3 coordinates of an event ---------------------

GOLDEN = Path(__file__).resolve().parent / "golden"


def _golden_gb() -> list[dict[str, Any]]:
    found = []
    for path in sorted(GOLDEN.glob("*.json")):
        for step in json.loads(path.read_text(encoding="utf-8"))["steps"]:
            found += [r["detail"]["gb"] for r in step["records"] if "gb" in r.get("detail", {})]
    return found


def test_every_golden_events_gb_detail_matches_the_schema() -> None:
    shapes = _golden_gb()
    assert {gb["tf"] for gb in shapes} == {1, 2}  # the field side's two shapes
    for gb in shapes:
        assert_valid("event", an_event(detail={"restores": "fire", "gb": gb}).to_payload(IDENT))


@pytest.mark.parametrize(
    "gb",
    [
        {"tf": 3, "sys_type": 0, "sys_addr": 2, "comp_type": 17, "zone": 0, "pos": 1,
         "analog_type": 128, "value": -5},
        {"tf": 21, "status": 1},
        {"tf": 24, "flags": 32, "operator": 0},
    ],
)  # fmt: skip
def test_the_other_gb_shapes_match_the_schema(gb: dict[str, Any]) -> None:
    assert_valid("event", an_event(detail={"gb": gb}).to_payload(IDENT))


@pytest.mark.parametrize(
    "gb",
    [
        {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 1, "zone": 0, "status": 1},
        {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 1, "zone": 0, "pos": 0,
         "status": 70000},
        {"tf": 1, "sys_type": 1, "sys_addr": 1, "status": 1, "comp_type": 1},
        {"tf": 9, "status": 1},
        {"tf": 3, "sys_type": 0, "sys_addr": 2, "comp_type": 17, "zone": 0, "pos": 1,
         "analog_type": 128, "value": 40000},
    ],
)  # fmt: skip
def test_a_wrong_gb_detail_is_rejected(gb: dict[str, Any]) -> None:
    assert not validator("event").is_valid(an_event(detail={"gb": gb}).to_payload(IDENT))
