"""The real agent under a systemd-like supervisor: READY and WATCHDOG datagrams arrive
on a real NOTIFY_SOCKET while the agent runs on the simulator, and STOPPING on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from simulator.broker import Mosquitto
from tests.rig import running_rig


def _collect(sock: socket.socket, until: set[str], timeout: float) -> list[str]:
    """Datagrams received until every message in `until` was seen (or the deadline)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not until <= {m for d in seen for m in d.splitlines()}:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return seen


def test_agent_notifies_ready_pings_the_watchdog_and_says_stopping(
    tmp_path: Path, broker: Mosquitto
) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
        with running_rig(tmp_path, broker, play_timeline=False, extra_env=env) as rig:
            first = _collect(notify, {"READY=1"}, timeout=30)
            assert any("READY=1" in d for d in first), rig.agent_log()[-2000:]
            # a 1 s watchdog is pinged every 0.5 s while every loop is alive: three pings
            # in a row show the pinger runs, not just a one-off at start-up
            pings = 0
            for _ in range(3):
                got = _collect(notify, {"WATCHDOG=1"}, timeout=10)
                pings += any("WATCHDOG=1" in d for d in got)
            assert pings == 3, rig.agent_log()[-2000:]
            assert rig.agent is not None
            rig.agent.send_signal(signal.SIGTERM)
            last = _collect(notify, {"STOPPING=1"}, timeout=15)
            assert any("STOPPING=1" in d for d in last)
            assert rig.agent.wait(timeout=15) == 0
