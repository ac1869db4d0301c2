"""`alarmgw` against a running agent: the technician's bench session, command by command.

One rig for the whole module (private mosquitto + `alarmgw-sim run` with no
timeline + `alarmgw run`), started before the first test so the per-test leak
check sees its processes and threads as pre-existing. Tests drive the
simulator by hand and always put it back to rest, and each waits for the
state it needs rather than assuming an order.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import (
    EXIT_BAD_CONFIG,
    EXIT_BUSY,
    EXIT_NO_PERMISSION,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    main,
)
from agent.cli.textwidth import width
from simulator.broker import Mosquitto
from tests.rig import BIN, Rig, running_rig

NAMES = ("福田区第一养老院", "消防控制室网关", "1号火灾报警控制器", "电气火灾监控探测器 A区")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("cli-rig")
    with (
        Mosquitto(tmp / "broker") as broker,
        running_rig(tmp, broker, play_timeline=False, client_id="cli-feed") as running,
    ):
        running.wait_agent_ready()
        yield running


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(rig: Rig, capsys: pytest.CaptureFixture[str]) -> Run:
    """`alarmgw ARGS --socket <the rig's>` in process: (exit code, stdout, stderr)."""

    def run(*args: str, socket: bool = True) -> tuple[int, str, str]:
        argv = [*args, "--socket", str(rig.control_socket)] if socket else list(args)
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _fits(text: str) -> None:
    too_wide = [line for line in text.splitlines() if width(line) > 80]
    assert too_wide == [], f"lines wider than 80 columns: {too_wide}"


def _wait(cli: Run, args: tuple[str, ...], done: Callable[[int, Any], bool], timeout: float = 20):
    """Repeat a --json command until done(code, answer) holds (the agent polls once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        code, out, _ = cli(*args, "--json")
        answer = json.loads(out)
        if done(code, answer) or time.monotonic() > deadline:
            return code, answer
        time.sleep(0.2)  # the next poll cycle is the event we wait for; no hook to await


def _at_rest(cli: Run) -> None:
    code, status = _wait(cli, ("status",), lambda code, _: code == EXIT_OK)
    assert code == EXIT_OK, f"the rig is not at rest: {status}"


# --- status ----------------------------------------------------------------------------


def test_status_one_screen_80_columns_with_chinese_names(cli: Run) -> None:
    _at_rest(cli)
    code, out, _ = cli("status")
    assert code == EXIT_OK
    _fits(out)
    for name in NAMES:
        assert name in out
    lines = out.splitlines()
    assert len(lines) <= 24, "status must fit one screen"
    assert lines[-1] == "all ok"
    assert any(line.startswith("uplink   connected") for line in lines)
    assert any(line.startswith("line rs485-1") and "5/5 online" in line for line in lines)
    # Chinese names line up: the column after the name starts at the same place
    rows = [line for line in lines if line.startswith(("  efd-", "  fap "))]
    ends = {width(line[: line.rindex(" ")]) for line in rows}
    assert len(ends) == 1, rows


def test_status_json_is_the_agents_answer(cli: Run) -> None:
    _at_rest(cli)
    code, out, _ = cli("status", "--json")
    assert code == EXIT_OK
    status = json.loads(out)
    assert (status["site"], status["gateway"]) == ("cn-sz-futian-yl001", "gw1")
    assert status["site_name"] == "福田区第一养老院"
    assert status["uplink"]["connected"] is True
    assert status["buffer"]["degraded"] is False
    assert status["lines"][0]["id"] == "rs485-1"
    field = [d for d in status["devices"] if d["line"] == "rs485-1"]
    assert {d["id"] for d in field} == {"fap", "efd-1", "efd-2", "gas-1", "ai-1"}
    assert all(d["comm"] == "ok" and d["last_good_age_s"] < 10 for d in field)
    assert status["active_alarms"] == []


def test_an_alarm_makes_status_exit_1_until_restored_and_silence_works(cli: Run, rig: Rig) -> None:
    _at_rest(cli)
    rig.sim_do(do="state", device="fap", point="point3", state="fire")
    try:
        code, status = _wait(cli, ("status",), lambda _c, s: bool(s["active_alarms"]))
        assert code == EXIT_PROBLEM
        assert status["active_alarms"][0]["device"] == "fap"
        code, out, _ = cli("status")
        assert code == EXIT_PROBLEM
        _fits(out)
        assert "PROBLEMS: 1 active alarm" in out
        assert "fap/point3" in out

        code, out, _ = cli("silence", "--json")
        assert code == EXIT_OK
        assert json.loads(out) == {"silenced": True, "was_sounding": True}
        code, out, _ = cli("status")
        assert "(buzzer silenced)" in out
    finally:
        rig.sim_do(do="state", device="fap", point="point3", state="normal")
    _at_rest(cli)


def test_comm_fault_shows_in_status_and_devices(cli: Run, rig: Rig) -> None:
    _at_rest(cli)
    rig.sim_do(do="silence", device="efd-2")
    try:
        code, answer = _wait(cli, ("devices",), lambda c, _: c == EXIT_PROBLEM, timeout=30)
        assert code == EXIT_PROBLEM
        lost = [d["id"] for d in answer["devices"] if d["comm"] == "lost"]
        assert lost == ["efd-2"]
        code, out, _ = cli("devices")
        assert code == EXIT_PROBLEM
        _fits(out)
        assert "comm fault: efd-2" in out
        code, out, _ = cli("status")
        assert code == EXIT_PROBLEM
        assert "comm fault: efd-2" in out.splitlines()[-1]
    finally:
        rig.sim_do(do="revive", device="efd-2")
    code, _ = _wait(cli, ("devices",), lambda c, _: c == EXIT_OK, timeout=60)
    assert code == EXIT_OK


# --- devices, read, buffer --------------------------------------------------------------


def test_devices_human_and_json(cli: Run) -> None:
    _at_rest(cli)
    code, out, _ = cli("devices")
    assert code == EXIT_OK
    _fits(out)
    assert "电气火灾监控探测器 B区" in out and "网关手动报警按钮" in out
    assert out.splitlines()[-1] == "10 devices, all ok"  # the duty answer button too
    code, out, _ = cli("devices", "--json")
    devices = json.loads(out)["devices"]
    assert len(devices) == 10
    assert {d["line"] for d in devices} == {"rs485-1", "gpio"}


def test_read_is_live_through_the_agent(cli: Run, rig: Rig) -> None:
    rig.sim_do(do="value", device="efd-1", point="ch2_leak", value=123)
    code, out, _ = cli("read", "efd-1", "ch2_leak", "--json")
    assert code == EXIT_OK
    result = json.loads(out)
    assert result["device"] == "efd-1"
    assert result["points"]["ch2_leak"]["value"] == 123
    assert result["points"]["ch2_leak"]["unit"] == "mA"
    rig.sim_do(do="value", device="efd-1", point="ch2_leak", value=30)
    code, out, _ = cli("read", "efd-1")
    assert code == EXIT_OK
    _fits(out)
    assert "ch2_leak" in out and "30 mA" in out and "ch3_temp" in out


def test_read_unknown_point_is_a_problem_with_a_clear_message(cli: Run) -> None:
    code, out, err = cli("read", "efd-1", "nope")
    assert code == EXIT_PROBLEM
    assert out == ""
    assert "unknown_point" in err and "nope" in err


def test_buffer_human_and_json(cli: Run) -> None:
    code, out, _ = cli("buffer", "--json")
    assert code == EXIT_OK
    buffer = json.loads(out)
    assert buffer["degraded"] is False and "event_depth" in buffer
    code, out, _ = cli("buffer")
    assert code == EXIT_OK
    _fits(out)
    assert out.startswith("buffer   events ")


# --- test alarm and events ------------------------------------------------------------------


def test_test_alarm_reaches_the_broker_and_the_event_list(cli: Run, rig: Rig) -> None:
    code, out, _ = cli("test-alarm", "--json")
    assert code == EXIT_OK
    result = json.loads(out)
    assert result["acked"] is True and result["stored"] is True
    seq = result["seq"]
    arrived = rig.feed.wait_event(lambda e: e["seq"] == seq and e["kind"] == "test", 10)
    assert arrived is not None and arrived["test"] is True
    assert arrived["detail"]["requested_by"].startswith("cli:")  # who asked is on record

    code, out, _ = cli("events", "--since", str(seq - 1), "--json")
    assert code == EXIT_OK
    events = json.loads(out)["events"]
    assert [e["seq"] for e in events][:1] == [seq]
    code, out, _ = cli("events", "--limit", "5")
    assert code == EXIT_OK
    _fits(out)
    row = next(line for line in out.splitlines() if line.startswith(f"{seq:>6} "))
    assert "gateway/test_alarm   [TEST] " in row

    code, out, _ = cli("test-alarm")
    assert code == EXIT_OK
    assert out.startswith(f"test alarm stored as seq {seq + 1}")
    assert "acknowledged" in out


def test_events_follow_streams_until_ctrl_c(rig: Rig) -> None:
    from agent.cli.client import ControlClient

    proc = subprocess.Popen(
        [
            *(str(BIN / "alarmgw"), "events", "--follow", "--json", "--limit", "0"),
            *("--socket", str(rig.control_socket)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        client = ControlClient(rig.control_socket)
        # the follower is subscribed once the agent counts it; until then, re-fire
        seen: dict[str, Any] | None = None
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + 20
        pending = b""
        while seen is None and time.monotonic() < deadline:
            fired = client.call("test_alarm", requested_by="follow-test")["seq"]
            end = time.monotonic() + 2
            while seen is None and time.monotonic() < end:
                chunk = proc.stdout.read() or b""
                pending += chunk
                for line in pending.splitlines():
                    event = json.loads(line)
                    if event.get("seq") == fired:
                        seen = event
                if not chunk:
                    time.sleep(0.05)  # a pipe read with no data: wait for the next line
        assert seen is not None, proc.stderr.read() if proc.stderr else ""
        assert seen["test"] is True and seen["kind"] == "test"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# --- the failure paths ----------------------------------------------------------------------


def test_agent_not_running_exits_69(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["status"], ["devices", "--json"], ["test-alarm"], ["read", "fap"]):
        code = main([*command, "--socket", str(tmp_path / "nobody.sock")])
        out, err = capsys.readouterr()
        assert code == EXIT_NOT_RUNNING, command
        assert out == ""
        assert "not running" in err and "systemctl start alarmgw" in err


def test_agent_not_running_as_a_real_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "alarmgw"), "status", "--socket", str(tmp_path / "x.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == EXIT_NOT_RUNNING
    assert "Traceback" not in done.stderr


def test_bad_config_exits_78_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[control\nsocket = 1\n")
    assert main(["status", "--config", str(broken)]) == EXIT_BAD_CONFIG
    out, _ = capsys.readouterr()
    assert str(broken) in out and "TOML" in out
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[control]\nsocket = 5\n")
    assert main(["events", "--config", str(wrong)]) == EXIT_BAD_CONFIG
    out, _ = capsys.readouterr()
    assert f"{wrong}: control.socket:" in out
    missing = tmp_path / "missing.toml"
    assert main(["status", "--config", str(missing)]) == EXIT_BAD_CONFIG


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested hundreds of levels deep"),
        ("\ufeff[control]\nsocket = 5\n", "control.socket: must be a path"),  # BOM read
    ],
    ids=["nested", "bom"],
)
def test_every_command_reading_a_config_reads_it_as_check_config_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: str
) -> None:
    """status, devices, events, buffer, read, test-alarm, silence: one clean problem
    naming the file, exit 78, never a traceback (RecursionError, UnicodeDecodeError)."""
    bad = tmp_path / "bad.toml"
    bad.write_text(text, encoding="utf-8")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# \xe6\xb6\x88\xe9\x98\xb2 \xff\n[control]\n")
    for command in (["status"], ["devices"], ["events"], ["buffer"], ["read", "fap"],
                    ["test-alarm"], ["silence"]):  # fmt: skip
        assert main([*command, "--config", str(bad)]) == EXIT_BAD_CONFIG, command
        out, _ = capsys.readouterr()
        assert f"{bad}: " in out and said in out, (command, out)
        assert main([*command, "--config", str(latin)]) == EXIT_BAD_CONFIG, command
        out, _ = capsys.readouterr()
        assert "not UTF-8 text (byte 0xff" in out, (command, out)


def test_config_gives_the_socket(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["buffer", "--json", "--config", str(rig.agent_config)])
    out, _ = capsys.readouterr()
    assert code == EXIT_OK
    assert "event_depth" in json.loads(out)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--limit", "lots"]) == EXIT_USAGE
    assert main(["read"]) == EXIT_USAGE
    assert main(["status", "--socket", "a", "--config", "b"]) == EXIT_USAGE
    assert main([]) == EXIT_USAGE
    capsys.readouterr()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any socket")
def test_permission_denied_exits_77(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    path = tmp_path / "locked.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        path.chmod(0o000)
        assert main(["status", "--socket", str(path)]) == EXIT_NO_PERMISSION
    assert "permission" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for code in ("69", "77", "78", "75"):
        assert f"  {code}  " in out


def test_scan_refuses_the_line_the_running_agent_owns(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # told the config, scan asks the agent before touching the port
    code = main(["scan", str(rig.line_path), "--units", "1", "--config", str(rig.agent_config)])
    assert code == EXIT_BUSY
    err = capsys.readouterr().err
    assert "the running agent owns it (line rs485-1)" in err
    assert "sudo systemctl stop alarmgw" in err
    # without the config, the agent's exclusive lock on the port says the same
    assert main(["scan", str(rig.line_path), "--units", "1"]) == EXIT_BUSY
    assert "is busy" in capsys.readouterr().err


def test_buffer_file_reads_a_buffer_offline_and_flags_a_corrupt_one(tmp_path: Path) -> None:
    from agent.buffer import EventBuffer
    from core.events import Category, Event, Identity, Kind, Severity

    db = tmp_path / "buffer.db"
    buf = EventBuffer(db, Identity("site", "gw"), 1000).start()
    try:
        alarm = Event(
            Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "二楼 火警", "fap", "z2"
        )
        buf.submit(alarm).result(timeout=10)
    finally:
        buf.close()
    before = db.read_bytes()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["buffer", "--file", str(db), "--json"])
    assert code == 0
    info = json.loads(out.getvalue())
    assert info["integrity"] == "ok"
    assert info["lanes"]["event"]["depth"] >= 1
    assert info["newest_events"][-1]["text"] == "二楼 火警"
    assert db.read_bytes() == before  # read-only: the file is untouched

    # a payload damaged on disk (what a file set aside as corrupt may hold): shown, no traceback
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(before)
    with sqlite3.connect(damaged) as conn:
        conn.execute("UPDATE records SET payload = x'ff7b2261'")
    conn.close()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["buffer", "--file", str(damaged), "--json"]) == 0
    assert "damaged" in json.loads(out.getvalue())["newest_events"][-1]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["buffer", "--file", str(damaged)]) == 0

    broken = tmp_path / "buffer.db.corrupt"
    broken.write_bytes(before[:4096] + b"\xff" * 8192)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["buffer", "--file", str(broken)]) == 1
