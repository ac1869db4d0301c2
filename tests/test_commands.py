"""Downlink commands: every input gets a result, nothing raises, and a test alarm goes
end to end through the buffer and the broker."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffer import EventBuffer
from agent.commands import (
    COMMAND_RATE,
    DUTY_CHECK_RATE,
    RECENT_REQUESTS,
    TEST_ALARM_RATE,
    CommandHandler,
)
from agent.mqtt import MAX_INCOMING_PACKET
from agent.uplink import Uplink
from core.errors import FieldTimeout, UnknownPoint
from core.events import Category, Event, Kind, Severity
from simulator.broker import Mosquitto
from tests.parts import HandClock
from tests.test_schemas import validator
from tests.uplink_helpers import IDENT, Collector, Settings, running, wait_until

ROOT = "alarmgw/v1/site-t/gw-t"


class FakeGateway:
    """A working GatewayControl: one device with one point, a buzzer, and a buffer."""

    def __init__(self, buffer: EventBuffer | None = None) -> None:
        self.buffer = buffer
        self.silenced = 0
        self.test_alarms = 0
        self.duty_checks: list[tuple[str, float | None]] = []

    def uptime_s(self) -> float:
        return 12.5

    def status(self) -> dict[str, Any]:  # the heartbeat's health summary, as the runtime's
        return {
            "version": "t",
            "uptime_s": 12.5,
            "clock_synced": True,
            "buffer": {"event_depth": 0, "telemetry_depth": 0, "oldest_age_s": None},
            "devices": {"total": 1, "online": 1, "comm_fault": []},
            "drops": {"event": 0, "telemetry": 0},
            "uplink": {"reconnects": 0, "published": 0, "acked": 0},
        }

    def read_point(self, device: str, point: str | None) -> dict[str, Any]:
        if device == "slow":
            raise FieldTimeout("no answer from unit 9")
        if device != "efd-1":
            raise UnknownPoint(f"no device {device!r}")
        if point not in (None, "ch1_leak"):
            raise UnknownPoint(f"no point {point!r} on {device}")
        points = [
            {"point": "ch1_leak", "value": 123.0, "unit": "mA", "quality": "good"},
            {"point": "nan", "value": float("nan"), "quality": "good"},  # not JSON: null
        ]
        return {"device": device, "points": points}

    def test_alarm(self, requested_by: str, note: str | None = None) -> Event:
        self.test_alarms += 1
        event = Event(
            Kind.TEST,
            Category.MANUAL,
            Severity.INFO,
            "test",
            f"测试报警 {requested_by}",
            "gateway",
            test=True,
            detail={"requested_by": requested_by} | ({"note": note} if note else {}),
        )
        if self.buffer is None:
            return event.with_seq(1)
        return self.buffer.submit(event).result(5)  # type: ignore[return-value]

    def silence(self) -> dict[str, Any]:
        self.silenced += 1
        return {"silenced": True}

    def duty_check(self, requested_by: str, timeout_s: float | None) -> dict[str, Any]:
        self.duty_checks.append((requested_by, timeout_s))
        return {"started": True, "timeout_s": timeout_s or 600.0, "restarted": False}


def cmd(**body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def test_each_command_and_each_kind_of_bad_input_gets_a_result() -> None:
    h = CommandHandler(FakeGateway(), IDENT)
    check = validator("cmd-result")
    ok = h.handle("ping", cmd(id="r1"))
    check.validate(ok)
    assert ok["ok"] and ok["id"] == "r1" and ok["result"] == {"pong": True, "uptime_s": 12.5}
    read = h.handle("read", cmd(id="r2", args={"device": "efd-1", "point": "ch1_leak"}))
    check.validate(read)
    assert read["ok"] and read["result"]["points"][1]["value"] is None
    status = h.handle("status", cmd(id="r9"))
    check.validate(status)
    assert status["ok"] and status["result"]["devices"]["total"] == 1
    cases = {
        ("read", cmd(id="r3", args={"device": "nope"})): "unknown_device",
        ("read", cmd(id="r4", args={"device": "efd-1", "point": "x"})): "unknown_point",
        ("read", cmd(id="r5", args={"device": "slow"})): "field_error",
        ("read", cmd(id="r6", args={"device": 7})): "bad_args",
        ("reboot", cmd(id="r7")): "unknown_command",
        ("ping", b"{not json"): "bad_json",
        ("ping", b"\xff\xfe"): "bad_json",
        ("ping", b"x" * 10_000): "too_large",
        ("ping", cmd(v=1)): "bad_request",
        ("ping", cmd(id="r8", expires_ms=1)): "expired",
    }
    for (name, raw), code in cases.items():
        result = h.handle(name, raw)
        check.validate(result)
        assert result["ok"] is False and result["error"]["code"] == code, (name, raw, result)
    assert h.errors["bad_json"] == 2
    assert h.handle("silence", cmd(id="s"))["ok"]
    duty = h.handle("duty-check", cmd(id="dc-1", args={"timeout_s": 300}))
    check.validate(duty)
    assert duty["result"] == {"started": True, "timeout_s": 300, "restarted": False}
    assert h.control.duty_checks == [("cmd:dc-1", 300)]  # type: ignore[attr-defined]


class ExplodingGateway(FakeGateway):
    def status(self) -> dict[str, Any]:
        raise RuntimeError("bug in the runtime")


def test_a_control_method_that_raises_becomes_an_internal_error() -> None:
    h = CommandHandler(ExplodingGateway(), IDENT)
    result = h.handle("status", cmd(id="x"))
    assert result["ok"] is False and result["error"]["code"] == "internal"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.sampled_from(["ping", "status", "read", "test-alarm", "silence"]) | st.text(max_size=30)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=70) | st.integers(),
        "v": st.integers(-1, 3) | st.text(max_size=2),
        "args": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "device": json_values | st.just("efd-1"),
                "point": json_values,
                "note": json_values,
            },
        ),
        "expires_ms": st.integers() | st.none() | st.floats(),
    },
)


@settings(max_examples=400, deadline=None)
@given(name=names, body=envelopes | json_values)
def test_fuzzed_json_commands_always_get_a_result(name: str, body: Any) -> None:
    h = CommandHandler(FakeGateway(), IDENT)
    raw = json.dumps(body, allow_nan=True).encode()
    result = h.handle(name, raw)
    assert isinstance(result["ok"], bool)
    assert result["ok"] == (result["error"] is None)
    json.dumps(result, allow_nan=False)  # the result itself is valid JSON


@settings(max_examples=300, deadline=None)
@given(name=names, raw=st.binary(max_size=5000))
def test_fuzzed_bytes_always_get_a_result(name: str, raw: bytes) -> None:
    result = CommandHandler(FakeGateway(), IDENT).handle(name, raw)
    assert result["ok"] in (True, False)


def test_test_alarm_goes_end_to_end_and_results_carry_the_request_id(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 1000)
    gateway = FakeGateway(buffer)
    handler = CommandHandler(gateway, IDENT)
    uplink = Uplink(
        Settings(broker.host, broker.port),
        IDENT,
        buffer,
        version="t",
        config_digest="d",
        commands=handler.handle,
    )
    col = Collector(broker.host, broker.port, f"{ROOT}/#")
    try:
        with running(buffer, uplink):
            assert col.wait_for(lambda: col.count("status") >= 1)
            col.publish(f"{ROOT}/cmd/test-alarm", cmd(id="t-1", args={"note": "月度测试"}))
            col.publish(f"{ROOT}/cmd/nonsense", b"\x00garbage")
            col.publish(f"{ROOT}/cmd/silence", cmd(id="t-2"))
            assert col.wait_for(lambda: col.count("cmd-result") >= 3)
            assert col.wait_for(lambda: col.count("event") >= 1)
        results = {r["command"]: r for r in col.payloads("cmd-result")}
        assert results["test-alarm"]["ok"] and results["test-alarm"]["id"] == "t-1"
        assert results["nonsense"]["ok"] is False
        assert results["silence"]["ok"] and gateway.silenced == 1
        event = col.payloads("event")[0]
        assert event["test"] is True and event["kind"] == "test"
        assert event["detail"] == {"requested_by": "cmd:t-1", "note": "月度测试"}
        assert results["test-alarm"]["result"]["seq"] == event["seq"]
    finally:
        col.close()


def test_a_repeated_request_id_is_answered_again_without_acting_again() -> None:
    gateway = FakeGateway()
    h = CommandHandler(gateway, IDENT, monotonic=itertools.count(0, 60).__next__)  # unhurried
    first = h.handle("test-alarm", cmd(id="ta-1"))
    again = h.handle("test-alarm", cmd(id="ta-1"))
    assert first["ok"] and again == first
    assert gateway.test_alarms == 1 and h.repeats == 1
    assert h.handle("silence", cmd(id="ta-1"))["ok"]  # another command, another request
    assert gateway.silenced == 1
    for i in range(RECENT_REQUESTS):  # memory is bounded: the oldest is forgotten
        h.handle("ping", cmd(id=f"p-{i}"))
    assert h.handle("test-alarm", cmd(id="ta-1"))["ok"]
    assert gateway.test_alarms == 2
    bad = h.handle("read", cmd(id="rd-1", args={"device": 7}))
    assert bad["error"]["code"] == "bad_args"  # refused unparsed: nothing remembered
    assert h.handle("read", cmd(id="rd-1", args={"device": "efd-1"}))["ok"]


def test_a_retained_command_is_refused_and_never_acts() -> None:
    gateway = FakeGateway()
    h = CommandHandler(gateway, IDENT)
    result = h.handle("test-alarm", cmd(id="ta-9"), retained=True)
    assert result["ok"] is False and result["error"]["code"] == "bad_request"
    assert result["id"] == "ta-9" and gateway.test_alarms == 0
    assert h.handle("test-alarm", cmd(id="ta-9"))["ok"]  # the refusal was not remembered
    assert gateway.test_alarms == 1


def _uplink(broker: Mosquitto, buffer: EventBuffer, handler: CommandHandler, **kw: Any) -> Uplink:
    return Uplink(
        Settings(broker.host, broker.port, **kw),
        IDENT,
        buffer,
        version="t",
        config_digest="d",
        commands=handler.handle,
    )


def test_a_retained_command_does_not_fire_on_each_connect_nor_a_repeat_twice(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 1000)
    gateway = FakeGateway(buffer)
    handler = CommandHandler(gateway, IDENT)
    col = Collector(broker.host, broker.port, f"{ROOT}/cmd-result")
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sender.connect(broker.host, broker.port)
    sender.loop_start()
    try:
        topic = f"{ROOT}/cmd/test-alarm"
        sender.publish(topic, cmd(id="ta-r"), qos=1, retain=True).wait_for_publish(5)
        buffer.start()
        try:
            for connects in (1, 2):  # the broker replays the retained command each time
                uplink = _uplink(broker, buffer, handler).start()
                try:
                    assert col.wait_for(lambda n=connects: col.count("cmd-result") >= n)  # type: ignore[misc]
                finally:
                    uplink.stop()
            uplink = _uplink(broker, buffer, handler).start()
            try:
                assert wait_until(lambda: uplink.connected)
                for _ in range(2):  # QoS 1 redelivery: the same request id twice
                    sender.publish(topic, cmd(id="ta-2"), qos=1).wait_for_publish(5)
                assert col.wait_for(lambda: col.count("cmd-result") >= 5)
            finally:
                uplink.stop()
        finally:
            buffer.close()
        results = col.payloads("cmd-result")
        retained = [r for r in results if r["id"] == "ta-r"]
        assert [r["error"]["code"] for r in retained] == ["bad_request"] * 3
        repeated = [r for r in results if r["id"] == "ta-2"]
        assert len(repeated) == 2 and repeated[0] == repeated[1] and repeated[0]["ok"]
        assert gateway.test_alarms == 1  # the retained one never, the repeated one once
    finally:
        sender.publish(f"{ROOT}/cmd/test-alarm", b"", qos=1, retain=True).wait_for_publish(5)
        sender.disconnect()
        sender.loop_stop()
        col.close()


def test_mqtt5_the_broker_never_hands_the_gateway_a_huge_command(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 1000)
    handler = CommandHandler(FakeGateway(buffer), IDENT)
    uplink = _uplink(broker, buffer, handler, mqtt_version="5")
    col = Collector(broker.host, broker.port, f"{ROOT}/#")
    try:
        with running(buffer, uplink):
            assert col.wait_for(lambda: col.count("status") >= 1)
            col.publish(f"{ROOT}/cmd/ping", cmd(id="huge", pad="x" * (MAX_INCOMING_PACKET + 1)))
            col.publish(f"{ROOT}/cmd/ping", cmd(id="small"))
            assert col.wait_for(lambda: col.count("cmd-result") >= 1)
            assert wait_until(lambda: handler.handled >= 1)
        assert [r["id"] for r in col.payloads("cmd-result")] == ["small"]
        assert handler.handled == 1  # the huge one never reached the Pi
    finally:
        col.close()


def test_test_alarms_past_the_rate_limit_get_an_error_result_and_make_no_event() -> None:
    gateway = FakeGateway()
    clock = HandClock()
    h = CommandHandler(gateway, IDENT, monotonic=clock)
    check = validator("cmd-result")
    results = [h.handle("test-alarm", cmd(id=f"ta-{i}")) for i in range(1000)]
    ok = [r for r in results if r["ok"]]
    limited = [r for r in results if not r["ok"]]
    assert len(ok) == TEST_ALARM_RATE.burst == gateway.test_alarms
    assert {r["error"]["code"] for r in limited} == {"rate_limited"}
    check.validate(limited[0])
    assert limited[0]["id"] == f"ta-{TEST_ALARM_RATE.burst}"  # the caller can tell which
    assert "test alarms" in limited[0]["error"]["message"]
    # a refused request is not remembered: sent again once the bucket refilled, it acts
    clock.now += 1 / TEST_ALARM_RATE.per_s
    again = h.handle("test-alarm", cmd(id=limited[0]["id"]))
    assert again["ok"] and gateway.test_alarms == TEST_ALARM_RATE.burst + 1
    # the test-alarm limit does not hold other commands back
    assert h.handle("ping", cmd(id="p-after"))["ok"]


def test_duty_checks_past_their_rate_limit_are_refused_and_restart_nothing() -> None:
    gateway = FakeGateway()
    clock = HandClock()
    h = CommandHandler(gateway, IDENT, monotonic=clock)
    results = [h.handle("duty-check", cmd(id=f"dc-{i}")) for i in range(100)]
    assert sum(r["ok"] for r in results) == DUTY_CHECK_RATE.burst == len(gateway.duty_checks)
    refused = results[DUTY_CHECK_RATE.burst]
    assert (
        refused["error"]["code"] == "rate_limited" and "duty checks" in refused["error"]["message"]
    )
    clock.now += 1 / DUTY_CHECK_RATE.per_s  # one more after its interval
    assert h.handle("duty-check", cmd(id="dc-later"))["ok"]
    assert h.handle("ping", cmd(id="p-after"))["ok"]  # other commands are not held back


def test_every_command_is_rate_limited_and_repeats_and_refusals_cost_nothing() -> None:
    gateway = FakeGateway()
    clock = HandClock()
    h = CommandHandler(gateway, IDENT, monotonic=clock)
    first = h.handle("silence", cmd(id="s-0"))
    for _ in range(100):  # QoS 1 redeliveries of one request: answered from memory
        assert h.handle("silence", cmd(id="s-0")) == first
    for i in range(100):  # malformed: refused before acting
        assert h.handle("read", cmd(id=f"bad-{i}", args={"device": 7}))["ok"] is False
    results = [h.handle("silence", cmd(id=f"s-{i}")) for i in range(1, 1000)]
    assert sum(r["ok"] for r in results) == COMMAND_RATE.burst - 1  # s-0 took one
    assert gateway.silenced == COMMAND_RATE.burst
    assert h.errors["rate_limited"] == 1000 - COMMAND_RATE.burst
    clock.now += 2.0  # the bucket refills at its rate, no faster
    results = [h.handle("ping", cmd(id=f"p-{i}")) for i in range(200)]
    assert sum(r["ok"] for r in results) == int(2.0 * COMMAND_RATE.per_s)
    clock.now += 3600.0  # and never beyond its burst
    results = [h.handle("ping", cmd(id=f"q-{i}")) for i in range(200)]
    assert sum(r["ok"] for r in results) == COMMAND_RATE.burst


def test_a_test_alarm_flood_over_the_broker_is_cut_at_the_limit(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 100_000)
    gateway = FakeGateway(buffer)
    handler = CommandHandler(gateway, IDENT)
    uplink = _uplink(broker, buffer, handler)
    col = Collector(broker.host, broker.port, f"{ROOT}/#")
    flood = 300
    try:
        with running(buffer, uplink):
            assert col.wait_for(lambda: col.count("status") >= 1)
            for i in range(flood):
                col.publish(f"{ROOT}/cmd/test-alarm", cmd(id=f"flood-{i}"))
            assert wait_until(lambda: uplink.counters.commands >= flood, timeout=30)
            handled_all_before(col)
            assert col.wait_for(lambda: col.count("event") >= gateway.test_alarms)
        events = [e for e in col.payloads("event") if e["kind"] == "test"]
        assert gateway.test_alarms <= TEST_ALARM_RATE.burst + 1  # + what refilled meanwhile
        assert len(events) == gateway.test_alarms
        codes = {r["error"]["code"] for r in col.payloads("cmd-result") if not r["ok"]}
        assert "rate_limited" in codes
    finally:
        col.close()


def handled_all_before(col: Collector) -> None:
    """Wait until every command sent so far went through the handler: one worker answers
    them in order, so a ping it answers (not the uplink's own `busy`) comes after them."""
    for n in range(200):
        sentinel = f"sentinel-{n}"
        col.publish(f"{ROOT}/cmd/ping", cmd(id=sentinel))
        assert col.wait_for(lambda s=sentinel: _result(col, s) is not None)  # type: ignore[misc]
        answer = _result(col, sentinel)
        assert answer is not None
        if answer["ok"] or answer["error"]["code"] != "busy":
            return
    raise AssertionError("the command worker never caught up")


def _result(col: Collector, request_id: str) -> dict[str, Any] | None:
    return next((r for r in col.payloads("cmd-result") if r["id"] == request_id), None)


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_a_100_mb_command_over_mqtt311_costs_bounded_memory_and_gets_too_large(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """MQTT 3.1.1 cannot tell the broker our size limit: the agent must not read a huge
    command into memory (it took one to 355 MB RSS, over the unit's MemoryMax=200M)."""
    args = ["agent", "--db", str(tmp_path / "b.db"), "--port", str(broker.port), "--commands"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "tests.uplink_helpers", *args, "--prefix", "alarmgw"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    col = Collector(broker.host, broker.port, f"{ROOT}/#")
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == b"ready"
        assert col.wait_for(lambda: col.count("status") >= 1)
        before_kb = _vm_kb(agent.pid, "VmHWM")
        huge = 100 * 1024 * 1024
        col.publish(f"{ROOT}/cmd/ping", b"{" + b" " * (huge - 2) + b"}")
        col.publish(f"{ROOT}/cmd/ping", cmd(id="after-it"))
        assert col.wait_for(lambda: col.count("cmd-result") >= 2, timeout=60)
        peak_kb = _vm_kb(agent.pid, "VmHWM")
    finally:
        col.close()
        stop_child(agent)
    first, second = col.payloads("cmd-result")
    assert first["ok"] is False and first["error"]["code"] == "too_large"
    assert first["error"]["message"] == f"{huge} bytes > 4096"
    validator("cmd-result").validate(first)
    assert second["ok"] and second["id"] == "after-it"  # the connection is still good
    print(f"agent peak RSS {before_kb / 1024:.0f} MB before, {peak_kb / 1024:.0f} MB after")
    assert peak_kb - before_kb < 16 * 1024  # read in 64 KiB chunks: no copy of it
    assert peak_kb < 100 * 1024  # well under MemoryMax=200M


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (it then stops its uplink and exits), reap it, close its pipes."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
