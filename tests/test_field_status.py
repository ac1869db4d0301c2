"""What the technician and the platform are told about the field side's own trouble: a line
that is down, a device starved of polls, a line too busy for a live read."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import render as cli_render
from agent.commands import CommandHandler
from agent.control import ControlServer
from agent.control_protocol import _error_code
from core.errors import LineBusy
from core.events import Event, Identity


def _status(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "site": "s",
        "gateway": "g",
        "now_ms": 1_700_000_000_000,
        "uplink": {"connected": True},
        "clock_synced": True,
        "buffer": {},
        "lines": [{"id": "rs485-1", "type": "rtu", "where": "/dev/ttyUSB0", "devices": 2}],
        "devices": [
            {"id": "fap", "line": "rs485-1", "comm": "ok", "last_poll_age_s": 0.4},
            {"id": "gas-1", "line": "rs485-1", "comm": "ok", "last_poll_age_s": 0.8},
        ],
        "active_alarms": [],
    }
    status.update(changes)
    return status


def test_all_ok_when_every_device_is_polled_in_time() -> None:
    assert cli_render.problems(_status()) == []
    assert cli_render.render_status(_status())[-1] == "all ok"


def test_a_device_starved_of_polls_is_a_problem_though_its_comm_says_ok() -> None:
    """Six reads on a dead device once kept the fire panel unpolled for 23 s while
    `status` said all ok: now the panel shows STALE and `status` exits 1."""
    status = _status()
    status["devices"][0].update(last_poll_age_s=23.4, poll_overdue=True)
    assert cli_render.problems(status) == ["not polled: fap (23s)"]
    screen = cli_render.render_status(status)
    assert any(row.split()[:3] == ["fap", "-", "STALE"] for row in screen)
    assert screen[-1] == "PROBLEMS: not polled: fap (23s)"


def test_a_line_that_is_down_says_since_when_and_why() -> None:
    status = _status()
    status["lines"][0].update(
        down="cannot open /dev/ttyUSB0: No such file or directory",
        down_since_ms=1_700_000_000_000,
    )
    for dev in status["devices"]:
        dev.update(comm="lost", last_failure="disconnected")
    found = cli_render.problems(status)
    assert found[0] == "line down: rs485-1"
    assert found[1] == "comm fault: fap, gas-1"
    screen = cli_render.render_status(status)
    down = next(row for row in screen if "DOWN" in row)
    assert down.startswith("  DOWN since ") and "No such file" in down
    assert all(len(row) <= 80 for row in screen)


def test_busy_is_its_own_answer_on_the_control_socket() -> None:
    assert _error_code(LineBusy("line rs485-1 is busy: 4 requests already waiting")) == (
        "busy",
        "line rs485-1 is busy: 4 requests already waiting",
    )


class _BusyGateway:
    def uptime_s(self) -> float:
        return 1.0

    def status(self) -> dict[str, Any]:
        return {}

    def read_point(self, device: str, point: str | None) -> dict[str, Any]:
        raise LineBusy("line rs485-1 is busy: 4 requests already waiting; try again")

    def test_alarm(self, requested_by: str, note: str | None = None) -> Event:
        raise AssertionError("not asked")

    def silence(self) -> dict[str, Any]:
        return {}


def test_the_mqtt_read_result_says_busy() -> None:
    handler = CommandHandler(_BusyGateway(), Identity("s", "g"))
    raw = json.dumps({"id": "r1", "args": {"device": "fap"}}).encode()
    result = handler.handle("read", raw)
    assert result["ok"] is False
    assert result["error"]["code"] == "busy"
    assert "line rs485-1 is busy" in result["error"]["message"]


class _WaitingTarget:
    """A control target whose read waits for its line until the caller gives up."""

    def __init__(self) -> None:
        self.gave_up = threading.Event()
        self.waiting = threading.Event()

    def read_point(
        self, device: str, point: str | None, gave_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        assert gave_up is not None
        self.waiting.set()
        while not self.gave_up.wait(0.01):  # what runtime.read_point does between checks
            if gave_up():
                self.gave_up.set()
        raise LineBusy("dropped")


@pytest.mark.world
def test_a_read_whose_client_hung_up_is_told_so_while_it_waits(tmp_path: Path) -> None:
    """`alarmgw read` interrupted (Ctrl-C, its own timeout): the read still waiting for
    the line learns it, so the runtime drops it from the line's queue instead of running
    it for nobody. A client that is still there is not taken for gone."""
    target = _WaitingTarget()
    server = ControlServer(tmp_path / "control.sock", target)  # type: ignore[arg-type]
    server.start()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(tmp_path / "control.sock"))
        conn.sendall(b'{"id": 1, "cmd": "read", "args": {"device": "fap"}}\n')
        assert target.waiting.wait(5)
        assert not target.gave_up.wait(0.3)  # connected: still waiting
        conn.close()
        assert target.gave_up.wait(5)
    finally:
        server.close()
