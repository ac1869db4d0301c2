"""What the platform sees across an agent restart (power cut, watchdog, upgrade).

An alarm still present after the restart is not raised twice; one that cleared
while the agent was down gets its restore; a device lost before the restart
and answering after it gets its comm restore. Real processes: simulator, agent,
mosquitto.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from simulator.broker import Mosquitto
from tests.rig import Rig, running_rig
from tests.waiting import wait_until


def _events(rig: Rig, device: str, point: str | None) -> list[tuple[str, str]]:
    with rig.feed.changed:
        return [
            (str(e["kind"]), str(e["state"]))
            for e in rig.feed.events
            if e["device"] == device and e["point"] == point
        ]


def _wait(rig: Rig, device: str, point: str | None, kind: str) -> None:
    found = rig.feed.wait_event(
        lambda e: e["device"] == device and e["point"] == point and e["kind"] == kind, 30
    )
    assert found is not None, f"no {kind} for {device}/{point}\n{rig.agent_log()[-3000:]}"


def test_conditions_survive_a_restart_without_duplicates_or_missing_restores(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with running_rig(tmp_path, broker, play_timeline=False) as rig:
        rig.wait_agent_ready()
        rig.sim_do(do="state", device="fap", point="point3", state="fire")
        rig.sim_do(do="state", device="fap", point="point5", state="fire")
        rig.sim_do(do="silence", device="efd-2")
        _wait(rig, "fap", "point3", "alarm")
        _wait(rig, "fap", "point5", "alarm")
        _wait(rig, "efd-2", None, "comm_loss")
        assert rig.stop_agent() == 0

        # while the agent is down: point3 clears, point5 stays in fire, efd-2 comes back
        rig.sim_do(do="state", device="fap", point="point3", state="normal")
        rig.sim_do(do="revive", device="efd-2")
        rig.start_agent()

        _wait(rig, "fap", "point3", "restore")
        _wait(rig, "efd-2", None, "comm_restore")
        rig.wait_agent_ready()
        # a marker after the first polls: everything the restart caused is in by now
        rig.sim_do(do="state", device="fap", point="point1", state="fire")
        _wait(rig, "fap", "point1", "alarm")

        assert _events(rig, "fap", "point3") == [("alarm", "fire"), ("restore", "normal")]
        assert _events(rig, "fap", "point5") == [("alarm", "fire")]  # not raised twice
        assert [k for k, _ in _events(rig, "efd-2", None)] == ["comm_loss", "comm_restore"]
        with rig.feed.changed:
            seqs = [int(e["seq"]) for e in rig.feed.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # seq continues


_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # holds the write lock: the agent's commits fail
print("locked", flush=True)
sys.stdin.read()
"""


def test_conditions_raised_while_the_buffer_is_degraded_survive_a_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Alarms held in RAM by a degraded buffer are delivered live; once the broker has
    them, the platform knows them, so the alarm memory must too: after a restart a fire
    still present is not raised twice, and one that ended while down gets its restore."""
    with running_rig(tmp_path, broker, play_timeline=False) as rig:
        rig.wait_agent_ready()
        with subprocess.Popen(
            [sys.executable, "-c", _WRITE_LOCK, str(tmp_path / "agent" / "buffer.db")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            assert holder.stdin is not None and holder.stdout is not None
            try:
                assert holder.stdout.readline() == "locked\n"
                rig.sim_do(do="state", device="fap", point="point3", state="fire")
                rig.sim_do(do="state", device="fap", point="point5", state="fire")
                _wait(rig, "gateway", "buffer", "fault")  # degraded: held in RAM
                _wait(rig, "fap", "point3", "alarm")
                _wait(rig, "fap", "point5", "alarm")
                assert wait_until(lambda: _remembered(tmp_path) >= {"point3", "point5"})
                assert rig.stop_agent() == 0
            finally:
                holder.stdin.close()
                holder.wait(10)
        rig.sim_do(do="state", device="fap", point="point3", state="normal")  # while down
        rig.start_agent()
        _wait(rig, "fap", "point3", "restore")
        rig.wait_agent_ready()
        rig.sim_do(do="state", device="fap", point="point1", state="fire")  # a marker
        _wait(rig, "fap", "point1", "alarm")
        assert _events(rig, "fap", "point3") == [("alarm", "fire"), ("restore", "normal")]
        assert _events(rig, "fap", "point5") == [("alarm", "fire")]  # not raised twice


def _remembered(tmp: Path) -> set[str]:
    """Points of the conditions in the agent's alarm memory (read-only, as it is now)."""
    try:
        conn = sqlite3.connect(f"file:{tmp / 'agent' / 'pointstate.db'}?mode=ro", uri=True)
    except sqlite3.Error:
        return set()
    try:
        return {p for (p,) in conn.execute("SELECT point FROM active WHERE device = 'fap'")}
    except sqlite3.Error:
        return set()
    finally:
        conn.close()
