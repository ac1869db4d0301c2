"""The real agent on a sick SD card: it always starts watching.

A size-limited tmpfs stands in for the card (tests run as root): filled to the
last block, or remounted read-only, before `alarmgw run` starts on it. The
agent must come up, deliver a fire alarm live, show the fault to the platform
and to `status`, and go back to durable mode without loss once the card is
fine again. Real processes: simulator, agent, mosquitto.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.cli.client import ControlClient
from simulator.broker import Mosquitto
from tests.mounts import fill, needs_root, remount, tmpfs
from tests.rig import Rig, running_rig
from tests.waiting import wait_until

pytestmark = needs_root


@contextmanager
def rig_on_card(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Rig, Path]]:
    """The care-home rig with the agent's buffer (and point state) on a 4 MB card."""
    with (
        tmpfs(tmp_path / "card") as card,
        running_rig(tmp_path, broker, play_timeline=False, agent=False) as rig,
    ):
        text = rig.agent_config.read_text(encoding="utf-8")
        rig.agent_config.write_text(
            text.replace(str(tmp_path / "agent" / "buffer.db"), str(card / "buffer.db")),
            encoding="utf-8",
        )
        try:
            yield rig, card
        finally:
            rig.stop_agent()  # before the card is unmounted


def _event(rig: Rig, **want: Any) -> dict[str, Any] | None:
    return rig.feed.wait_event(lambda e: all(e.get(k) == v for k, v in want.items()), 30)


def _kinds(rig: Rig, device: str, point: str) -> list[str]:
    with rig.feed.changed:
        return [e["kind"] for e in rig.feed.events if (e["device"], e["point"]) == (device, point)]


def _buffer_status(rig: Rig) -> dict[str, Any]:
    return dict(ControlClient(rig.control_socket, timeout_s=5).call("status")["buffer"])


def test_a_restart_on_a_full_card_keeps_watching_and_recovers(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with rig_on_card(tmp_path, broker) as (rig, card):
        rig.start_agent()
        rig.wait_agent_ready()
        assert rig.stop_agent() == 0
        filler = fill(card)
        rig.start_agent()  # the old agent stopped here with "disk I/O error", exit 1
        rig.wait_agent_ready()
        assert _event(rig, device="gateway", point="buffer", state="degraded") is not None
        assert _buffer_status(rig)["degraded"] is True
        rig.sim_do(do="state", device="fap", point="point3", state="fire")
        fire = _event(rig, device="fap", point="point3", kind="alarm")
        assert fire is not None, rig.agent_log()[-3000:]
        filler.unlink()  # room again: back to durable mode
        assert _event(rig, device="gateway", point="buffer", kind="restore") is not None
        assert wait_until(lambda: _buffer_status(rig)["degraded"] is False, timeout=20)
        assert rig.stop_agent() == 0
        rig.start_agent()  # nothing held was lost: no loss to announce at this start
        rig.wait_agent_ready()
        rig.sim_do(do="state", device="fap", point="point1", state="fire")
        assert _event(rig, device="fap", point="point1", kind="alarm") is not None
        with rig.feed.changed:
            states = [e["state"] for e in rig.feed.events if e["point"] == "buffer"]
        assert "buffer_recovered" not in states
        assert _kinds(rig, "fap", "point3") == ["alarm"]  # remembered, not raised again
        assert "Traceback" not in rig.agent_log()


def test_a_restart_on_a_read_only_card_remembers_and_keeps_watching(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with rig_on_card(tmp_path, broker) as (rig, card):
        rig.start_agent()
        rig.wait_agent_ready()
        rig.sim_do(do="state", device="fap", point="point5", state="fire")
        assert _event(rig, device="fap", point="point5", kind="alarm") is not None
        assert rig.stop_agent() == 0
        remount(card, "ro")
        try:
            rig.start_agent()  # the old agent died here with a traceback from pointstate.py
            rig.wait_agent_ready()
            assert _buffer_status(rig)["degraded"] is True
            rig.sim_do(do="state", device="fap", point="point3", state="fire")
            assert _event(rig, device="fap", point="point3", kind="alarm") is not None
            # the alarm memory was read from the read-only card: point5 is not raised twice
            assert _kinds(rig, "fap", "point5") == ["alarm"]
            assert rig.stop_agent() == 0
        finally:
            remount(card, "rw")
        assert "Traceback" not in rig.agent_log()
