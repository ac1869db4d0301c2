"""The UITD duties on the bench: broker + simulator + agent as real processes. The
self-test passes, then names a device that stopped answering (and its fault reaches the
feed); the scripted monthly self-check triggers each point through the simulator
(`alarmgw-sim pulse`), sees its alarm and restore, sends a simulated fire the broker
confirms, stores the report, sends it, and keeps it across a restart of the agent; the
confirmed simulated fire counts in `status`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli.client import ControlClient, ControlError
from agent.cli.output import EXIT_OK, EXIT_PROBLEM
from agent.cli.textwidth import width
from simulator.broker import Mosquitto
from tests.rig import BIN, Rig, running_rig
from tests.waiting import wait_until

pytestmark = [pytest.mark.world, pytest.mark.slow]

GB_SELF_TEST = {"tf": 24, "flags": 16, "operator": 0}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("uitd-rig")
    with (
        Mosquitto(tmp / "broker") as broker,
        running_rig(tmp, broker, play_timeline=False, client_id="uitd-feed") as running,
    ):
        running.wait_agent_ready()
        yield running


@pytest.fixture
def own_rig(tmp_path: Path) -> Iterator[Rig]:
    """A rig of the test's own: the test restarts its agent."""
    with (
        Mosquitto(tmp_path / "broker") as broker,
        running_rig(tmp_path, broker, play_timeline=False, client_id="uitd-own") as running,
    ):
        running.wait_agent_ready()
        yield running


Run = Callable[..., tuple[int, Any]]


def _cli(rig: Rig, capsys: pytest.CaptureFixture[str]) -> Run:
    """`alarmgw ARGS --json --socket <the rig's>` in process: (exit code, the JSON)."""

    def run(*args: str) -> tuple[int, Any]:
        code = main([*args, "--json", "--socket", str(rig.control_socket)])
        out, err = capsys.readouterr()
        assert out, err
        return code, json.loads(out)

    return run


@pytest.fixture
def cli(rig: Rig, capsys: pytest.CaptureFixture[str]) -> Run:
    return _cli(rig, capsys)


def _failed(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["part"], i["id"]) for i in result["items"] if not i["ok"]]


def test_selftest_passes_then_names_a_device_that_stopped_answering(rig: Rig, cli: Run) -> None:
    code, result = cli("selftest")
    assert (code, _failed(result)) == (EXIT_OK, []), result
    parts = {i["part"] for i in result["items"]}
    assert parts == {"input", "output", "storage", "link"}
    assert ("input", "efd-2") in {(i["part"], i["id"]) for i in result["items"]}
    sent = rig.feed.wait_event(
        lambda e: e["point"] == "selftest" and e["detail"]["selftest"]["ts_ms"] == result["ts_ms"],
        timeout=20,
    )
    assert sent is not None and sent["state"] == "selftest_passed"
    assert sent["detail"]["gb"] == GB_SELF_TEST

    rig.sim_do(do="silence", device="efd-2")
    try:
        code, result = cli("selftest")
    finally:
        rig.sim_do(do="revive", device="efd-2")
    assert (code, _failed(result)) == (EXIT_PROBLEM, [("input", "efd-2")])
    fault = rig.feed.wait_event(
        lambda e: e["point"] == "selftest-input-efd-2" and e["kind"] == "fault", timeout=20
    )
    assert fault is not None and fault["state"] == "selftest_failed"
    assert wait_until(lambda: cli("selftest")[0] == EXIT_OK, timeout=30)
    restore = rig.feed.wait_event(
        lambda e: e["point"] == "selftest-input-efd-2" and e["kind"] == "restore", timeout=20
    )
    assert restore is not None


def _script(rig: Rig, name: str, body: str) -> Path:
    path = rig.tmp / name
    path.write_text(body, encoding="utf-8")
    return path


def _selfcheck(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    """`alarmgw selfcheck` as a technician's shell runs it (a process of its own)."""
    return subprocess.run(
        [str(BIN / "alarmgw"), "selfcheck", *args, "--socket", str(rig.control_socket)],
        capture_output=True,
        text=True,
        env=rig.env,
        timeout=180,
        check=False,
    )


def test_scripted_selfcheck_on_the_simulator_stored_sent_and_kept(
    own_rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig, cli = own_rig, _cli(own_rig, capsys)
    sim = [str(BIN / "alarmgw-sim"), "--control", str(rig.sim_control)]
    script = _script(rig, "check.toml", f"""
operator = "张三"
simulated_fires = 1
only = ["manual-alarm", "tamper", "fap/point3", "efd-1/ch1_leak"]
untested = ["tamper"]
point_timeout_s = 30
trigger_command = {json.dumps([*sim, "alarm", "{device}", "{point}"])}
clear_command = {json.dumps([*sim, "clear-alarm", "{device}", "{point}"])}
""")  # fmt: skip
    done = _selfcheck(rig, "--script", str(script), "--json")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    report = json.loads(done.stdout)  # --json: progress went to stderr
    results = {p["id"]: p["result"] for p in report["points"]}
    assert results == {
        "manual-alarm": "passed",
        "tamper": "untested",
        "fap/point3": "passed",
        "efd-1/ch1_leak": "passed",
    }  # a threshold held past its confirm_s
    assert report["operator"] == "张三"
    # each triggered point was declared under test: its alarm went out as a test (no
    # dispatch, GB bit 0 clear), not as a live fire (review item 7)
    for device, point in (("fap", "point3"), ("manual-alarm", "contact")):
        seen = rig.feed.wait_event(
            lambda e, d=device, p=point: (e["device"], e["point"], e["kind"]) == (d, p, "alarm"),
            timeout=20,
        )
        assert seen is not None and seen["test"] is True, seen
    fire = rig.feed.wait_event(lambda e: (e["device"], e["point"]) == ("fap", "point3"), 20)
    assert fire is not None and not fire["detail"]["gb"]["status"] & 1
    assert [s["confirmed"] for s in report["simulated"]] == [True]
    assert report["summary"]["simulated_confirmed"] == 1
    sent = rig.feed.wait_event(
        lambda e: (
            e["point"] == "selfcheck" and e["detail"]["selfcheck"]["number"] == report["number"]
        ),
        timeout=20,
    )
    assert sent is not None and sent["state"] == "selfcheck_report"

    # the confirmed simulated fire counts this month
    def counted() -> bool:
        return cli("status")[1]["duties"]["simulated_fires"]["count"] >= 1

    assert wait_until(counted, timeout=20)

    # durable: the agent restarts, the report is still there
    rig.stop_agent()
    rig.start_agent()
    rig.wait_agent_ready()
    code, latest = cli("selfcheck", "--show")
    assert (code, latest["number"], latest["operator"]) == (EXIT_OK, report["number"], "张三")
    code, listed = cli("selfcheck", "--show", "list")
    assert report["number"] in [r["number"] for r in listed["reports"]]
    assert cli("status")[1]["duties"]["last_selfcheck"]["number"] == report["number"]


def test_a_point_nobody_triggers_fails_and_the_run_says_so(rig: Rig) -> None:
    script = _script(rig, "idle.toml", """
operator = "李四"
simulated_fires = 0
only = ["fap/point5"]
point_timeout_s = 0.5
""")  # fmt: skip
    done = _selfcheck(rig, "--script", str(script))
    assert done.returncode == EXIT_PROBLEM, done.stdout + done.stderr
    assert "FAILED - no alarm within 0.5 s" in done.stdout
    assert "passed 0 failed 1 untested 0" in done.stdout


def test_a_script_naming_an_unknown_point_is_a_config_error(rig: Rig) -> None:
    script = _script(rig, "bad.toml", 'operator = "x"\nonly = ["fap/nope"]\n')
    done = _selfcheck(rig, "--script", str(script))
    assert done.returncode == 78
    assert 'only[0]: "fap/nope" is not a self-check point here' in done.stderr + done.stdout


def test_guided_selfcheck_asks_the_technician_and_watches_the_points(
    rig: Rig, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The technician's session: asked for a name, each point prompted; they press the
    manual alarm button (the simulator's GPIO, across processes) and Enter, skip the
    tamper switch with `s`."""
    prompts: list[str] = []

    def technician(prompt: str) -> str:
        prompts.append(prompt)
        if prompt.startswith("operator"):
            return "王五"
        if "manual-alarm" in prompt:  # pressed until its alarm is out, then released
            seen = len(rig.feed.events)
            rig.sim_do(do="alarm", device="manual-alarm", point="contact")
            assert rig.feed.wait_event(
                lambda e: e in rig.feed.events[seen:] and e["device"] == "manual-alarm",
                timeout=20,
            )
            rig.sim_do(do="clear-alarm", device="manual-alarm", point="contact")
            return ""
        return "s"

    monkeypatch.setattr("builtins.input", technician)
    code, report = cli("selfcheck", "--simulated", "0", "--timeout", "20")
    points = {p["id"]: p["result"] for p in report["points"]}
    assert points["manual-alarm"] == "passed", report
    assert points["tamper"] == "untested"
    assert set(points.values()) == {"passed", "untested"}
    assert code == EXIT_OK
    assert report["operator"] == "王五"
    assert prompts[0].startswith("operator")
    assert any("manual-alarm" in p and "trigger it now" in p for p in prompts)


def test_a_bad_report_or_argument_is_an_error_answer_and_nothing_is_stored(rig: Rig) -> None:
    client = ControlClient(rig.control_socket)
    before = client.call("selfcheck_reports")["reports"]
    bad = {"operator": "x", "points": [{"id": "fap/point3", "result": "maybe"}]}
    with pytest.raises(ControlError) as refused:
        client.call("selfcheck_report", report=bad)
    assert refused.value.code == "agent_error"
    assert "report.points[0].result" in refused.value.message
    with pytest.raises(ControlError) as extra:
        client.call("selftest", now=True)
    assert extra.value.code == "bad_argument"
    assert client.call("selfcheck_reports")["reports"] == before
    assert client.call("ping")["pong"] is True  # the agent is fine


def test_guided_without_a_keyboard_says_to_use_a_script_and_stores_nothing(rig: Rig) -> None:
    before = ControlClient(rig.control_socket).call("selfcheck_reports")["reports"]
    done = subprocess.run(
        [str(BIN / "alarmgw"), "selfcheck", "--operator", "x", "--socket", str(rig.control_socket)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=rig.env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--script FILE" in done.stderr
    assert "Traceback" not in done.stderr
    assert ControlClient(rig.control_socket).call("selfcheck_reports")["reports"] == before


def test_human_output_fits_80_columns(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    socket = ["--socket", str(rig.control_socket)]
    assert main(["selftest", *socket]) == EXIT_OK
    assert main(["status", *socket]) in (EXIT_OK, EXIT_PROBLEM)
    assert main(["selfcheck", "--show", "list", *socket]) == EXIT_OK
    out = capsys.readouterr().out
    assert "self-test passed" in out and "self-test " in out
    too_wide = [line for line in out.splitlines() if width(line) > 80]
    assert too_wide == []


def test_the_selfcheck_renews_its_point_under_test_and_the_feed_says_so(
    rig: Rig, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review C item 8: the agent holds a point under test for a short lease that the
    running self-check renews (here 2 s, renewed every 0.5 s): a technician who takes
    longer than the lease at the prompt still has the point under test; the feed says
    when it started and when it ended."""
    monkeypatch.setattr("agent.cli.selfcheck.LEASE_S", 1.5)  # the CLI asks for 2 s leases
    seen = len(rig.feed.events)

    def about(state: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: (
            e in rig.feed.events[seen:]
            and (e["point"], e["state"]) == ("under_test", state)
            and e["detail"]["device"] == "manual-alarm"
        )

    def technician(prompt: str) -> str:
        if prompt.startswith("operator"):
            return "赵六"
        if "manual-alarm" not in prompt:
            return "s"
        assert rig.feed.wait_event(about("point_under_test"), timeout=20)
        # three leases long at the prompt: renewed, so it has not ended
        assert rig.feed.wait_event(about("point_test_ended"), timeout=6) is None
        at = len(rig.feed.events)
        rig.sim_do(do="alarm", device="manual-alarm", point="contact")
        alarm = rig.feed.wait_event(
            lambda e: e in rig.feed.events[at:] and e["device"] == "manual-alarm", timeout=20
        )
        assert alarm is not None and alarm["test"] is True
        rig.sim_do(do="clear-alarm", device="manual-alarm", point="contact")
        return ""

    monkeypatch.setattr("builtins.input", technician)
    _, report = cli("selfcheck", "--simulated", "0", "--timeout", "20")
    assert {p["id"]: p["result"] for p in report["points"]}["manual-alarm"] == "passed", report
    ended = rig.feed.wait_event(about("point_test_ended"), timeout=20)
    assert ended is not None and ended["detail"]["why"] in ("done", "next point")
