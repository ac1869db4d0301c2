"""A duty check end to end on the rig: the platform publishes cmd/duty-check on a real
mosquitto, `alarmgw run` prompts (through the simulator's pin factory), the simulator
presses the answer button, and the answer arrives on the feed with its response time.
A second request restarts the prompt; `alarmgw ack` answers it. The simulator's own
platform stand-in (a scenario's duty-check step) asks the same way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from simulator.broker import Mosquitto
from tests.rig import BIN, Feed, running_rig

pytestmark = [pytest.mark.world, pytest.mark.slow]

ROOT = "alarmgw/v1/cn-sz-futian-yl001/gw1"


def publish(broker: Mosquitto, name: str, body: dict[str, Any]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"platform-{body['id']}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(f"{ROOT}/cmd/{name}", json.dumps(body), qos=1)
        info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def result_of(feed: Feed, request_id: str, timeout: float = 20) -> dict[str, Any] | None:
    with feed.changed:
        feed.changed.wait_for(
            lambda: any(r["id"] == request_id for r in feed.results), timeout=timeout
        )
        return next((r for r in feed.results if r["id"] == request_id), None)


def duty_events(feed: Feed) -> list[dict[str, Any]]:
    with feed.changed:
        return [e for e in feed.events if e["point"] == "duty_check"]


def test_cmd_duty_check_is_answered_by_the_button_and_by_alarmgw_ack(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with running_rig(tmp_path, broker, play_timeline=False, client_id="duty-feed") as rig:
        rig.wait_agent_ready()
        publish(broker, "duty-check", {"id": "dc-1"})
        first = result_of(rig.feed, "dc-1")
        assert first is not None, rig.agent_log()[-3000:]
        assert first["ok"] and first["result"] == {
            "started": True,
            "timeout_s": 600.0,
            "restarted": False,
        }
        rig.sim_do(do="press", input="duty-answer")
        answered = rig.feed.wait_event(lambda e: e["point"] == "duty_check", timeout=20)
        assert answered is not None, rig.agent_log()[-3000:]
        rig.sim_do(do="release", input="duty-answer")
        assert answered["state"] == "answered"
        assert answered["detail"]["answered_by"] == "input:duty-answer"
        assert answered["detail"]["requested_by"] == "cmd:dc-1"
        assert "gb" not in answered["detail"]  # the platform asked: nothing for the centre
        assert answered["unit"] == "s" and answered["value"] >= 0

        # a second check, restarted by a third: the second ends unanswered (superseded)
        publish(broker, "duty-check", {"id": "dc-2", "args": {"timeout_s": 120}})
        assert result_of(rig.feed, "dc-2") is not None
        publish(broker, "duty-check", {"id": "dc-3"})
        third = result_of(rig.feed, "dc-3")
        assert third is not None and third["result"]["restarted"] is True
        ack = subprocess.run(
            [str(BIN / "alarmgw"), "ack", "--socket", str(rig.control_socket), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ack.returncode == 0, ack.stdout + ack.stderr
        assert json.loads(ack.stdout)["answered"] is True
        assert rig.feed.wait_event(
            lambda e: e["point"] == "duty_check" and e["detail"]["requested_by"] == "cmd:dc-3",
            timeout=20,
        )
        by_request = {e["detail"]["requested_by"]: e for e in duty_events(rig.feed)}
        assert by_request["cmd:dc-2"]["state"] == "unanswered"
        assert by_request["cmd:dc-2"]["detail"]["ended"] == "superseded"
        assert by_request["cmd:dc-3"]["state"] == "answered"
        assert by_request["cmd:dc-3"]["detail"]["answered_by"].startswith("cli:")


def test_the_simulators_duty_check_step_asks_and_its_button_answers(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with running_rig(tmp_path, broker, play_timeline=False, client_id="duty-sim-feed") as rig:
        rig.wait_agent_ready()
        rig.sim_do(do="duty-check", timeout_s=120)  # as a timeline step does
        with rig.feed.changed:
            rig.feed.changed.wait_for(lambda: bool(rig.feed.results), timeout=20)
            [asked] = rig.feed.results
        assert asked["ok"] and asked["id"] == "sim-dc-1", rig.agent_log()[-3000:]
        assert asked["result"]["timeout_s"] == 120
        rig.sim_do(do="press", input="duty-answer")
        answered = rig.feed.wait_event(lambda e: e["point"] == "duty_check", timeout=20)
        assert answered is not None and answered["state"] == "answered"
        assert answered["detail"]["requested_by"] == "cmd:sim-dc-1"
