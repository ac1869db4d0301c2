"""Downlink commands: every input gets a result, nothing raises, and a test alarm goes
end to end through the buffer and the broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffer import EventBuffer
from agent.commands import RECENT_REQUESTS, CommandHandler
from agent.errors import FieldTimeout, UnknownPoint
from agent.events import Category, Event, Kind, Severity
from agent.mqtt import MAX_INCOMING_PACKET
from agent.uplink import Uplink
from simulator.broker import Mosquitto
from tests.test_schemas import validator
from tests.uplink_helpers import IDENT, Collector, Settings, running, wait_until

ROOT = "alarmgw/v1/site-t/gw-t"


class FakeGateway:
    """A working GatewayControl: one device with one point, a buzzer, and a buffer."""

    def __init__(self, buffer: EventBuffer | None = None) -> None:
        self.buffer = buffer
        self.silenced = 0
        self.test_alarms = 0

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
    h = CommandHandler(gateway, IDENT)
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
