"""The platform's stand-in: what a regional platform sends a gateway, for timelines and
trainees. Today one thing: a duty check (查岗) on `cmd/duty-check` (docs/feed.md section
9), so a scripted scenario can ask and a trainee answer with the gateway's button.

It speaks MQTT as the platform does (QoS 1, never retained) to the broker the scenario's
`[platform]` section names, or to the one `alarmgw-sim run --broker` gives. It connects
for each command and goes away: a stand-in must not hold a session the real platform
would not.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class PlatformError(RuntimeError):
    """The command could not be handed to the broker."""


@dataclass(frozen=True)
class PlatformSpec:
    """Whom to ask, through which broker (the scenario's `[platform]`)."""

    site: str
    gateway: str
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "alarmgw"


class PlatformStandIn:
    def __init__(self, spec: PlatformSpec, broker: tuple[str, int] | None = None) -> None:
        self.spec = spec
        self.broker = broker or (spec.host, spec.port)
        self._ids = itertools.count(1)

    def topic(self, name: str) -> str:
        s = self.spec
        return f"{s.topic_prefix}/v1/{s.site}/{s.gateway}/cmd/{name}"

    def duty_check(self, timeout_s: int | None = None) -> str:
        """Publish a duty check; its request id (the answer's detail.requested_by)."""
        request_id = f"sim-dc-{next(self._ids)}"
        body: dict[str, object] = {"id": request_id}
        if timeout_s is not None:
            body["args"] = {"timeout_s": int(timeout_s)}
        self._publish(self.topic("duty-check"), json.dumps(body).encode())
        return request_id

    def _publish(self, topic: str, payload: bytes) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"alarmgw-sim-{id(self)}")
        try:
            client.connect(*self.broker)
            client.loop_start()
            info = client.publish(topic, payload, qos=1, retain=False)
            info.wait_for_publish(5)
            if not info.is_published():
                raise PlatformError(f"the broker at {self.broker} did not take {topic}")
        except OSError as exc:
            raise PlatformError(f"cannot reach the broker at {self.broker}: {exc}") from exc
        finally:
            client.disconnect()
            client.loop_stop()
