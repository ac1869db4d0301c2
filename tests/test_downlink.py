"""Downlink commands against the running agent on the simulator, over the real broker:
each answer on cmd-result carries the request id and matches docs/schemas/cmd-result."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from simulator.broker import Mosquitto
from tests.rig import Rig, running_rig
from tests.test_schemas import validator

ROOT_TOPIC = "alarmgw/v1/cn-sz-futian-yl001/gw1"


class Platform:
    """The central server's side: publishes commands, collects their results."""

    def __init__(self, broker: Mosquitto) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="platform")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{ROOT_TOPIC}/cmd-result", qos=1)
        assert subscribed.wait(5)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        with self.changed:
            self.results[str(payload.get("id"))] = payload
            self.changed.notify_all()

    def call(self, name: str, **args: Any) -> dict[str, Any]:
        request_id = f"t-{uuid.uuid4().hex[:12]}"
        body = {"id": request_id, "args": args} if args else {"id": request_id}
        self.client.publish(f"{ROOT_TOPIC}/cmd/{name}", json.dumps(body), qos=1)
        with self.changed:
            assert self.changed.wait_for(lambda: request_id in self.results, timeout=20)
            return self.results[request_id]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        del self.client  # paho closes its internal socket pair when the client is freed


@pytest.fixture
def rig_and_platform(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Rig, Platform]]:
    with running_rig(tmp_path, broker, play_timeline=False) as rig:
        rig.wait_agent_ready()
        platform = Platform(broker)
        try:
            yield rig, platform
        finally:
            platform.close()


@pytest.mark.slow
def test_read_silence_and_errors_answer_by_the_schema(
    rig_and_platform: tuple[Rig, Platform],
) -> None:
    rig, platform = rig_and_platform
    rig.sim_do(do="value", device="efd-1", point="ch2_leak", value=123)
    check = validator("cmd-result")

    read = platform.call("read", device="efd-1", point="ch2_leak")
    check.validate(read)
    assert read["ok"] is True
    [reading] = read["result"]["points"]
    assert (reading["point"], reading["value"], reading["unit"]) == ("ch2_leak", 123, "mA")

    rig.sim_do(do="state", device="fap", point="point3", state="fire")
    assert rig.feed.wait_event(lambda e: e["point"] == "point3" and e["kind"] == "alarm", 20)
    panel = platform.call("read", device="fap", point="point3")
    check.validate(panel)
    [point3] = panel["result"]["points"]
    assert point3["state"] == "fire"  # the profile's name for the code read now
    silence = platform.call("silence")
    check.validate(silence)
    assert silence["result"]["silenced"] == ["buzzer"]

    unknown = platform.call("read", device="no-such-device")
    check.validate(unknown)
    assert unknown["ok"] is False and unknown["error"]["code"] == "unknown_device"

    ping = platform.call("ping")
    check.validate(ping)
    assert ping["result"]["pong"] is True and ping["result"]["uptime_s"] > 0

    status = platform.call("status")  # the heartbeat's health summary, by its schema
    check.validate(status)
    heartbeat = validator("heartbeat")
    assert set(status["result"]) <= set(heartbeat.schema["properties"])
    assert status["result"]["devices"]["total"] >= 1

    test = platform.call("test-alarm", note="月度模拟火警传输测试")
    check.validate(test)
    event = rig.feed.wait_event(lambda e: e.get("id") == test["result"]["event_id"], 20)
    assert event is not None and event["test"] is True
    assert event["detail"]["note"] == "月度模拟火警传输测试"
