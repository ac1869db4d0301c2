"""`alarmgw scan` on the bench: the simulator's RS-485 pty, no agent running.

The simulator serves the care-home line (units 1..5, four profiles) on a real
pseudo-terminal; scan opens it like /dev/ttyUSB0, finds the units and names
their profiles. A second process holding the port makes scan say "busy" and
how to stop the agent. The plausibility rules are also pinned with literal
register values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import EXIT_BUSY, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, main
from agent.cli.textwidth import width
from agent.config import BUILTIN_PROFILE_DIR
from drivers.profile import load_profile
from drivers.scan import judge, parse_units, profile_reads
from drivers.types import Block
from simulator.control import call as sim_call
from tests.rig import rig_env, start_simulator, stop_process, write_scenario

EXPECTED = {
    1: "fire-panel-gst",
    2: "electrical-fire-4ch",
    3: "electrical-fire-4ch",
    4: "gas-detector",
    5: "analog-4-20ma",
}


class Sim:
    def __init__(self, tmp: Path) -> None:
        self.line = str(tmp / "sim" / "rs485-1")
        self.control = tmp / "sim" / "control.sock"

    def do(self, **request: object) -> None:
        reply = sim_call(self.control, request)
        assert reply.get("ok"), reply


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """`alarmgw-sim run` on the care-home scenario, timeline off; started once per module."""
    tmp = tmp_path_factory.mktemp("scan-sim")
    (tmp / "sim").mkdir()
    (tmp / "agent").mkdir()
    proc = start_simulator(tmp, write_scenario(tmp, None), rig_env(tmp), timeline=False)
    try:
        yield Sim(tmp)
    finally:
        stop_process(proc)


def _scan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["scan", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.world
def test_scan_finds_the_units_and_matches_their_profiles(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _scan(capsys, sim.line, "--units", "1-7", "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    found = {f["unit"]: f["profile"] for f in report["found"]}
    assert found == EXPECTED
    evidence = {f["unit"]: f["evidence"] for f in report["found"]}
    # the 4-20 mA module has input registers only: its FC03 exception proves it is there
    assert evidence == {
        1: "FC03 data",
        2: "FC03 data",
        3: "FC03 data",
        4: "FC03 data",
        5: "FC03 exception 2",
    }
    assert all(f["baudrate"] == 9600 for f in report["found"])
    assert report["noise"] == []
    panel = next(f for f in report["found"] if f["unit"] == 1)
    ranked = [c["profile"] for c in panel["candidates"]]
    assert ranked[0] == "fire-panel-gst" and len(ranked) == 4


@pytest.mark.world
def test_scan_human_output_fits_80_columns(sim: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _scan(capsys, sim.line, "--units", "1-6", "--baud", "9600,19200")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert all(width(line) <= 80 for line in lines), lines
    assert lines[0] == f"scanning {sim.line}"
    assert lines[1] == "  9600, 19200 baud, 8N1, units 1-6, timeout 0.1 s"
    assert "10 units found" in lines  # a pty ignores the baud: both rates answer
    gas = [line for line in lines if line.split()[:2] == ["4", "9600"]]
    assert gas and "gas-detector (4/4 points)" in gas[0]


@pytest.mark.world
def test_a_garbled_unit_is_reported_as_noise(sim: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    sim.do(do="fault", target="efd-2", kind="crc", rate=1.0, delay=1.0, code=4)
    try:
        code, out, _ = _scan(capsys, sim.line, "--units", "2-3", "--json")
    finally:
        sim.do(do="clear-fault", target="efd-2")
    assert code == EXIT_OK
    report = json.loads(out)
    assert [f["unit"] for f in report["found"]] == [2]
    assert [n["unit"] for n in report["noise"]][:1] == [3]
    assert "crc" in report["noise"][0]["reason"]


@pytest.mark.world
def test_an_exception_answer_proves_a_unit_exists(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.do(do="fault", target="gas-1", kind="exception", rate=1.0, delay=1.0, code=2)
    try:
        code, out, _ = _scan(capsys, sim.line, "--units", "4", "--json")
    finally:
        sim.do(do="clear-fault", target="gas-1")
    assert code == EXIT_OK
    (unit,) = json.loads(out)["found"]
    assert unit["evidence"] == "FC03 exception 2"
    assert unit["profile"] is None  # every profile read fails: "unknown"


@pytest.mark.world
def test_no_unit_answering_is_a_problem(sim: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _scan(capsys, sim.line, "--units", "100-101")
    assert code == EXIT_PROBLEM
    assert "no unit answered" in out


@pytest.mark.world
def test_a_port_held_by_another_process_is_busy(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import serial, sys; p = serial.Serial(sys.argv[1], exclusive=True); "
            "print('held', flush=True); sys.stdin.read()",
            sim.line,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        code, out, err = _scan(capsys, sim.line, "--units", "1")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert code == EXIT_BUSY
    assert "busy" in err and "sudo systemctl stop alarmgw" in err
    assert "found" not in out and "answered" not in out  # nothing probed, no verdict


def test_a_missing_port_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _scan(capsys, str(tmp_path / "ttyUSB9"), "--units", "1")
    assert code == EXIT_PROBLEM
    assert "ttyUSB9" in err
    assert _scan(capsys, "/dev/null", "--units", "0-300")[0] == EXIT_USAGE
    assert _scan(capsys, "/dev/null", "--baud", "1234")[0] == EXIT_USAGE


# --- plausibility, with literal register values -------------------------------------------


def _profile(name: str):  # type: ignore[no-untyped-def]
    return load_profile(BUILTIN_PROFILE_DIR / f"{name}.toml")


def _blocks(profile_name: str, registers: dict[int, int]) -> tuple[object, list[Block]]:
    profile = _profile(profile_name)
    blocks = [
        Block(req, tuple(registers.get(req.address + i, 0) for i in range(req.count)))
        for req in profile_reads(profile, 1)
    ]
    return profile, blocks


def test_gas_profile_rejects_an_electrical_detectors_registers() -> None:
    # electrical-fire detector: leak 50 mA, 30 mA, temps 26.5/25.0 (x10) — register 1 is 30
    profile, blocks = _blocks("gas-detector", {0: 50, 1: 30})
    match = judge(profile, blocks)  # type: ignore[arg-type]
    assert not match.matches
    assert any("undefined bits 0x0018" in p for p in match.problems)


def test_gas_profile_accepts_a_gas_detector_in_alarm() -> None:
    profile, blocks = _blocks("gas-detector", {0: 253, 1: 0b011})
    match = judge(profile, blocks)  # type: ignore[arg-type]
    assert match.matches and match.plausible == match.points == 4


def test_panel_state_codes_outside_the_table_are_implausible() -> None:
    profile, blocks = _blocks("fire-panel-gst", {0: 1, 3: 77})
    match = judge(profile, blocks)  # type: ignore[arg-type]
    assert not match.matches
    assert match.problems == ("point4: code 77 not in its state table",)


def test_analog_range_and_wire_break() -> None:
    profile, blocks = _blocks("analog-4-20ma", {0: 12000, 1: 0})  # 0 uA: a wire break
    assert judge(profile, blocks).matches  # type: ignore[arg-type]
    profile, blocks = _blocks("analog-4-20ma", {0: 60000, 1: 12000})
    match = judge(profile, blocks)  # type: ignore[arg-type]
    assert not match.matches and "ch1_pressure" in match.problems[0]


def test_parse_units() -> None:
    assert parse_units("1-3,7,2") == (1, 2, 3, 7)
    with pytest.raises(ValueError, match=r"1\.\.247"):
        parse_units("0-5")
