"""The simulator on its own, as a bench would see it: real ptys, real sockets, real bytes.

Each built-in profile's device model answers reads as its profile says; each
injected fault is visible in the raw bytes at the agent's end of the line;
scenario mistakes name file and key; the CLI drives a running simulator.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from core.errors import ConfigError
from drivers import codec
from drivers.profile import load_profile
from drivers.types import Block, ReadRequest, Table
from simulator.cli import main as sim_cli
from simulator.devices import SimDevice, SimulatorError
from simulator.faults import make_fault
from simulator.pty import PtyPair
from simulator.rtu import crc16, crc_ok, execute, with_crc
from simulator.scenario import load_scenario
from simulator.tcp import TcpDeviceServer
from simulator.wire import RtuLineServer, SerialSettings
from simulator.world import Simulator
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "config" / "profiles"
FC = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}

# --- a minimal RTU master, so the tests do not trust the agent's own client --------------


def rtu_exchange(port: serial.Serial, frame: bytes, expect: int, timeout: float = 0.5) -> bytes:
    """Send `frame`, return what arrives until `expect` bytes or the timeout."""
    port.reset_input_buffer()
    port.write(frame)
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < expect and time.monotonic() < deadline:
        port.timeout = max(0.0, deadline - time.monotonic())
        data += port.read(expect - len(data))
    return data


def read_request(unit: int, table: Table, address: int, count: int) -> bytes:
    return with_crc(struct.pack(">BBHH", unit, FC[table], address, count))


def answer_length(table: Table, count: int) -> int:
    nbytes = (count + 7) // 8 if table.is_bits else 2 * count
    return 5 + nbytes


def read_values(port: serial.Serial, unit: int, table: Table, address: int, count: int) -> tuple:
    answer = rtu_exchange(
        port, read_request(unit, table, address, count), answer_length(table, count)
    )
    assert crc_ok(answer), answer.hex(" ")
    assert answer[0] == unit and answer[1] == FC[table], answer.hex(" ")
    data = answer[3:-2]
    if table.is_bits:
        return tuple((data[i // 8] >> (i % 8)) & 1 for i in range(count))
    return struct.unpack(f">{count}H", data)


@pytest.fixture
def line() -> Iterator[tuple[PtyPair, dict[int, SimDevice], RtuLineServer, serial.Serial]]:
    """One virtual line serving two generic units (1, 2), and the agent's end opened."""
    pair = PtyPair()
    units = {
        1: SimDevice("d1", 1, extents=dict.fromkeys(Table, 20), writable_all=True),
        2: SimDevice("d2", 2, extents=dict.fromkeys(Table, 20), writable_all=True),
    }
    units[1].tables[Table.HOLDING][:4] = [0x1234, 0xABCD, 7, 0]
    server = RtuLineServer("l1", pair.b, units).start()
    port = serial.Serial(pair.a, 9600, timeout=0.5)
    try:
        yield pair, units, server, port
    finally:
        port.close()
        server.close()
        pair.close()


# --- framing -------------------------------------------------------------------------------


def test_crc16_matches_the_modbus_reference_frame() -> None:
    # "01 03 00 00 00 0A C5 CD" is the worked example of the Modbus serial spec's tooling.
    assert with_crc(bytes.fromhex("01030000000A")) == bytes.fromhex("01030000000AC5CD")
    assert crc16(b"") == 0xFFFF


def test_exception_responses_for_bad_function_address_and_count() -> None:
    bank = SimDevice("d", 1, extents=dict.fromkeys(Table, 10))
    assert execute(bank, bytes.fromhex("2B0E0100")) == bytes.fromhex("AB01")
    assert execute(bank, bytes.fromhex("030008 0004".replace(" ", ""))) == bytes.fromhex("8302")
    assert execute(bank, bytes.fromhex("0300000000")) == bytes.fromhex("8303")
    assert execute(bank, bytes.fromhex("03000000")) == bytes.fromhex("8303")  # truncated
    assert execute(bank, bytes.fromhex("0500010F0F")) == bytes.fromhex("8503")  # coil != FF00/0000


# --- device models from the built-in profiles --------------------------------------------

GOLDEN = {
    # profile: (stimuli, literal register expectations from the profile's documented map)
    "fire-panel-gst": (
        [
            ("state", "point3", "fire"),
            ("state", "point4", "fault"),
            ("state", "main_power", "power_fault"),
            ("state", "loop_bus", "bus_fault"),
        ],
        # the high byte is the device type the profile reads as the GB component type (42)
        [(Table.HOLDING, 2, 0x2A01), (Table.HOLDING, 3, 0x2A02), (Table.HOLDING, 1000, 0b101)],
    ),
    "electrical-fire-4ch": (
        [
            ("value", "ch1_leak", 350),
            ("value", "ch3_temp", -12.5),
            ("state", "ch2_device_alarm", "device_alarm"),
            ("state", "ch4_fault", "fault"),
        ],
        [
            (Table.HOLDING, 0, 350),
            (Table.HOLDING, 2, 0x10000 - 125),
            (Table.HOLDING, 4, 0b0010),
            (Table.HOLDING, 5, 0b1000),
        ],
    ),
    "gas-detector": (
        [
            ("value", "concentration", 25.3),
            ("state", "low_alarm", "low_alarm"),
            ("state", "sensor_fault", "fault"),
        ],
        [(Table.HOLDING, 0, 253), (Table.HOLDING, 1, 0b101)],
    ),
    "analog-4-20ma": (
        [("value", "ch1_pressure", 0.6), ("value", "ch2_level", 5.0)],
        [(Table.INPUT, 0, 10000), (Table.INPUT, 1, 20000)],
    ),
}


@pytest.mark.parametrize("profile_id", sorted(GOLDEN))
def test_builtin_profile_device_answers_reads_as_its_profile_says(profile_id: str) -> None:
    profile = load_profile(PROFILES / f"{profile_id}.toml")
    device = SimDevice(profile_id, 7, profile)
    stimuli, registers = GOLDEN[profile_id]
    for kind, point, arg in stimuli:
        if kind == "state":
            device.set_state(point, str(arg))
        else:
            device.set_value(point, float(arg))
    with (
        PtyPair() as pair,
        RtuLineServer("l", pair.b, {7: device}),
        serial.Serial(pair.a, 9600, timeout=0.5) as port,
    ):
        for table, address, expected in registers:
            assert read_values(port, 7, table, address, 1) == (expected,), (table, address)
        # and the agent's decoder reads back every stimulus from the served bytes
        for kind, point, arg in stimuli:
            spec = profile.points[point]
            values = read_values(port, 7, spec.table, spec.address, spec.register_count)
            req = ReadRequest(7, spec.table, spec.address, spec.register_count)
            decoded = codec.decode(spec, Block(req, values))
            if kind == "value":
                assert decoded == pytest.approx(arg, abs=1e-6), point
            else:
                assert codec.encode_state(spec, str(arg)) == codec.encode(spec, decoded), point


def test_states_and_points_that_do_not_exist_are_named() -> None:
    device = SimDevice("fap", 1, load_profile(PROFILES / "fire-panel-gst.toml"))
    with pytest.raises(SimulatorError, match=r"no state 'burning' \(known: normal, fire"):
        device.set_state("point1", "burning")
    with pytest.raises(SimulatorError, match=r"unknown point .*'point99'.*known: .*point1"):
        device.set_state("point99", "fire")


def test_set_bits_share_a_register_without_clobbering_each_other() -> None:
    device = SimDevice("gas", 4, load_profile(PROFILES / "gas-detector.toml"))
    device.set_state("low_alarm", "low_alarm")
    device.set_state("high_alarm", "high_alarm")
    device.set_state("low_alarm", "normal")
    assert device.read(Table.HOLDING, 1, 1) == [0b10]


# --- the line: several units, writes, silence ----------------------------------------------


def test_line_serves_several_units_and_ignores_others(line) -> None:
    _, _units, server, port = line
    assert read_values(port, 1, Table.HOLDING, 0, 3) == (0x1234, 0xABCD, 7)
    assert read_values(port, 2, Table.HOLDING, 0, 1) == (0,)
    assert rtu_exchange(port, read_request(9, Table.HOLDING, 0, 1), 7, timeout=0.2) == b""
    assert server.stats.unknown_unit == 1


def test_write_function_codes_change_what_is_read(line) -> None:
    _, units, _, port = line
    frames = [
        (with_crc(bytes.fromhex("01050003FF00")), bytes.fromhex("01050003FF00")),
        (with_crc(bytes.fromhex("010600050102")), bytes.fromhex("010600050102")),
        (with_crc(bytes.fromhex("010F000A00030105")), bytes.fromhex("010F000A0003")),
        (with_crc(bytes.fromhex("0110000C0002040001FFFF")), bytes.fromhex("0110000C0002")),
    ]
    for frame, echo in frames:
        answer = rtu_exchange(port, frame, 8)
        assert crc_ok(answer), answer.hex(" ")
        assert answer[:-2] == echo
    assert read_values(port, 1, Table.COIL, 0, 13) == (0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1)
    assert read_values(port, 1, Table.HOLDING, 5, 1) == (0x0102,)
    assert read_values(port, 1, Table.HOLDING, 12, 2) == (1, 0xFFFF)
    # broadcast (unit 0) writes every unit and is never answered
    assert rtu_exchange(port, with_crc(bytes.fromhex("000600100042")), 8, timeout=0.2) == b""
    assert units[2].read(Table.HOLDING, 16, 1) == [0x42]


def test_profile_device_refuses_writes_to_read_only_points() -> None:
    device = SimDevice("fap", 1, load_profile(PROFILES / "fire-panel-gst.toml"))
    assert execute(device, bytes.fromhex("0600000001")) == bytes.fromhex("8602")


def test_silenced_device_stops_answering_and_revives(line) -> None:
    _, units, _, port = line
    units[1].silence()
    assert rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 7, timeout=0.2) == b""
    assert read_values(port, 2, Table.HOLDING, 0, 1) == (0,)  # a dead unit does not freeze the line
    units[1].revive()
    assert read_values(port, 1, Table.HOLDING, 0, 1) == (0x1234,)


def test_bad_crc_request_gets_no_answer(line) -> None:
    _, _, server, port = line
    frame = bytearray(read_request(1, Table.HOLDING, 0, 1))
    frame[-1] ^= 0xFF
    assert rtu_exchange(port, bytes(frame), 7, timeout=0.2) == b""
    assert server.stats.bad_crc == 1
    assert read_values(port, 1, Table.HOLDING, 0, 1) == (0x1234,)


# --- faults, each seen in the raw bytes ----------------------------------------------------


def test_fault_crc_damages_the_crc_only(line) -> None:
    _, units, _, port = line
    units[1].faults.set(make_fault("crc"))
    answer = rtu_exchange(port, read_request(1, Table.HOLDING, 0, 2), 9)
    assert len(answer) == 9 and not crc_ok(answer)
    assert answer[:7] == bytes.fromhex("0103041234ABCD")


def test_fault_no_answer_is_silence(line) -> None:
    _, units, _, port = line
    units[1].faults.set(make_fault("no-answer"))
    assert rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 7, timeout=0.3) == b""


def test_fault_delay_answers_late(line) -> None:
    _, units, _, port = line
    units[1].faults.set(make_fault("delay", delay_s=0.25))
    start = time.monotonic()
    answer = rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 7, timeout=1.0)
    assert crc_ok(answer) and time.monotonic() - start >= 0.24


def test_fault_exception_answers_the_code(line) -> None:
    _, units, _, port = line
    units[1].faults.set(make_fault("exception", code=6))
    assert rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 5) == with_crc(
        bytes.fromhex("018306")
    )


def test_fault_garbage_is_not_a_frame(line) -> None:
    _, units, _, port = line
    units[1].faults.set(make_fault("garbage"))
    answer = rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 7)
    assert len(answer) == 7 and not crc_ok(answer)


def test_fault_wrong_unit_is_a_valid_frame_from_another_unit(line) -> None:
    _, units, _, port = line
    units[1].faults.set(make_fault("wrong-unit"))
    answer = rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 7)
    assert crc_ok(answer) and answer[0] == 2 and answer[1:5] == bytes.fromhex("03021234")


def test_line_fault_at_a_rate_hits_about_that_share_and_clears(line) -> None:
    _, _, server, port = line
    server.faults.set(make_fault("crc", rate=0.5))
    bad = sum(
        not crc_ok(rtu_exchange(port, read_request(u, Table.HOLDING, 0, 1), 7)) for u in (1, 2) * 20
    )
    assert 8 <= bad <= 32, bad  # seeded dice: the same count every run
    server.faults.clear()
    assert read_values(port, 2, Table.HOLDING, 0, 1) == (0,)


def test_wire_time_makes_answers_take_as_long_as_at_9600_baud() -> None:
    device = SimDevice("d", 1, extents=dict.fromkeys(Table, 20))
    with PtyPair() as pair, serial.Serial(pair.a, 9600, timeout=1) as port:
        timings = {}
        for wire_time in (False, True):
            with RtuLineServer("l", pair.b, {1: device}, SerialSettings(9600), wire_time):
                times = []
                for _ in range(5):
                    start = time.monotonic()
                    read_values(port, 1, Table.HOLDING, 0, 10)
                    times.append(time.monotonic() - start)
                timings[wire_time] = min(times)
    on_wire = (8 + 25) * 10 / 9600  # request + answer characters, 10 bits each
    assert timings[True] >= on_wire
    assert timings[True] < on_wire + 0.03
    assert timings[False] < on_wire / 2


# --- Modbus TCP ------------------------------------------------------------------------------


def tcp_read(sock: socket.socket, tid: int, unit: int, fc: int, span: tuple[int, int]) -> bytes:
    sock.sendall(struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, *span))
    header = sock.recv(7)
    rtid, _, length, runit = struct.unpack(">HHHB", header)
    assert rtid == tid
    body = b""
    while len(body) < length - 1:
        body += sock.recv(length - 1 - len(body))
    return bytes([runit]) + body


def test_tcp_device_answers_mbap_reads_and_faults() -> None:
    profile = load_profile(PROFILES / "gas-detector.toml")
    device = SimDevice("gas-tcp", 1, profile)
    device.set_value("concentration", 12.0)
    with (
        TcpDeviceServer("gas-tcp", device, 1).start() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock,
    ):
        assert tcp_read(sock, 1, 1, 3, (0, 2)) == bytes.fromhex("01030400780000")
        assert tcp_read(sock, 2, 1, 3, (50, 1)) == bytes.fromhex("018302")
        device.faults.set(make_fault("exception", code=4))
        assert tcp_read(sock, 3, 1, 3, (0, 1)) == bytes.fromhex("018304")
        device.faults.set(make_fault("no-answer"))
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            tcp_read(sock, 4, 1, 3, (0, 1))


# --- scenarios -----------------------------------------------------------------------------

SCENARIO = """
[simulator]
name = "bench"
log = "{run}/stimuli.jsonl"
control = "{run}/control.sock"
gpio_socket = "{run}/gpio.sock"

[[lines]]
id = "rs485-1"
path = "{run}/rs485-1"
baudrate = 19200

  [[lines.devices]]
  id = "fap"
  unit_id = 1
  profile = "fire-panel-gst"

  [[lines.devices]]
  id = "efd-1"
  unit_id = 2
  profile = "electrical-fire-4ch"
  values = {{ ch1_leak = 50 }}

[[inputs]]
id = "manual-alarm"
pin = 22

[[outputs]]
id = "buzzer"
pin = 24

[timeline]
{timeline}
"""

TIMELINE = """
  [[timeline.steps]]
  at = 0.05
  do = "state"
  device = "fap"
  point = "point1"
  state = "fire"

  [[timeline.steps]]
  at = 0.1
  do = "ramp"
  device = "efd-1"
  point = "ch1_leak"
  from = 50
  to = 350
  over = 0.3
  step = 100

  [[timeline.steps]]
  at = 0.2
  do = "press"
  input = "manual-alarm"

  [[timeline.steps]]
  at = 0.25
  do = "fault"
  target = "rs485-1"
  kind = "exception"
  code = 4
"""


def write_scenario(tmp_path: Path, timeline: str = TIMELINE, **replace: str) -> Path:
    run = tmp_path / "run"
    text = SCENARIO.format(run=run, timeline=timeline)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return [(p.file, p.key, p.reason) for p in info.value.problems]


def test_care_home_scenario_matches_the_example_config() -> None:
    scenario = load_scenario(ROOT / "config" / "scenarios" / "care-home.toml")
    from agent.config import load_config

    config = load_config(ROOT / "config" / "scenarios" / "care-home-agent.toml")
    served = {(d.id, d.unit_id, d.profile.id) for line in scenario.lines for d in line.devices}
    assert served == {(d.id, d.unit_id, d.profile) for d in config.devices}
    assert {(i.id, i.pin) for i in scenario.inputs} == {(i.id, i.pin) for i in config.inputs}
    assert {i.id: i.active for i in scenario.inputs} == {i.id: i.active for i in config.inputs}
    assert {(o.id, o.pin) for o in scenario.outputs} == {(o.id, o.pin) for o in config.outputs}
    assert str(scenario.lines[0].path) == config.lines[0].port
    done = {
        (s.action["do"], s.action.get("device") or s.action.get("input")) for s in scenario.steps
    }
    for needed in [
        ("state", "fap"),
        ("value", "efd-1"),
        ("state", "gas-1"),
        ("silence", "efd-2"),
        ("revive", "efd-2"),
        ("press", "exit-door-1"),
        ("release", "exit-door-1"),
        ("press", "manual-alarm"),
        ("release", "manual-alarm"),
        ("value", "ai-1"),
    ]:
        assert needed in done, needed


def test_scenario_errors_name_file_and_key(tmp_path: Path) -> None:
    bad_timeline = (
        TIMELINE.replace('state = "fire"', 'state = "burning"')
        .replace('input = "manual-alarm"', 'input = "manual-alrm"')
        .replace('kind = "exception"', 'kind = "explode"')
    )
    path = write_scenario(
        tmp_path,
        bad_timeline,
        **{
            'profile = "fire-panel-gst"': 'profile = "fire-panel-xyz"',
            "unit_id = 2": "unit_id = 300",
            "ch1_leak = 50": "ch1_leek = 50",
        },
    )
    found = problems(path)
    assert all(file == str(path) for file, _, _ in found)
    keys = {key: reason for _, key, reason in found}
    assert 'unknown profile "fire-panel-xyz"' in keys["lines[0].devices[0].profile"]
    assert "1..247" in keys["lines[0].devices[1].unit_id"]
    assert "ch1_leek" in keys["lines[0].devices[1].values.ch1_leek"]
    assert 'unknown device "fap"' in keys["timeline.steps[0].device"]  # its profile is bad
    assert "manual-alrm" in keys["timeline.steps[2].input"]
    assert "explode" in keys["timeline.steps[3].kind"]


def test_scenario_step_errors(tmp_path: Path) -> None:
    timeline = (
        TIMELINE.replace('state = "fire"', 'state = "burning"')
        .replace("  over = 0.3\n", "")
        .replace('do = "press"', 'do = "push"')
    )
    keys = {key: reason for _, key, reason in problems(write_scenario(tmp_path, timeline))}
    assert "no state 'burning'" in keys["timeline.steps[0].state"]
    assert "missing" in keys["timeline.steps[1].over"]
    assert 'must be one of "state", "value"' in keys["timeline.steps[2].do"]
    assert keys["timeline.steps[2].do"].endswith('got "push"')
    (tmp_path / "broken.toml").write_text("[[lines]\n")
    assert problems(tmp_path / "broken.toml")[0][2].startswith("not valid TOML")


def test_timeline_plays_and_logs_every_stimulus(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path))
    with Simulator(scenario) as sim:
        assert sim.wait_timeline(5)
        fap, efd = sim.devices["fap"], sim.devices["efd-1"]
        assert fap.read(Table.HOLDING, 0, 1) == [0x2A01]  # device type 42 in the high byte
        assert efd.read(Table.HOLDING, 0, 1) == [350]
        assert sim.board.inputs["manual-alarm"].is_active
        with serial.Serial(str(scenario.lines[0].path), 19200, timeout=0.5) as port:
            assert rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 5) == with_crc(
                bytes.fromhex("018304")
            )
    records = [json.loads(x) for x in (tmp_path / "run" / "stimuli.jsonl").read_text().splitlines()]
    stimuli = [r for r in records if r["source"] == "timeline"]
    assert [r["do"] for r in stimuli] == [
        "state",
        "value",
        "value",
        "press",
        "fault",
        "value",
        "value",
    ]
    assert [r["value"] for r in stimuli if r["do"] == "value"] == [50, 150, 250, 350]
    for r in stimuli:
        assert r["mono"] - records[0]["mono"] >= r["at"] - 0.001
        assert abs(r["wall_ms"] / 1000 - time.time()) < 60
    # close() left nothing behind
    assert not scenario.lines[0].path.exists() and not (tmp_path / "run" / "gpio.sock").exists()


def test_looping_timeline_repeats(tmp_path: Path) -> None:
    timeline = """loop = true
period = 0.1
  [[timeline.steps]]
  at = 0.01
  do = "state"
  device = "fap"
  point = "point1"
  state = "fire"
"""
    scenario = load_scenario(write_scenario(tmp_path, timeline))
    log = tmp_path / "run" / "stimuli.jsonl"
    with Simulator(scenario):
        assert wait_until(lambda: log.exists() and log.read_text().count('"timeline"') >= 3)
    ats = [json.loads(x)["mono"] for x in log.read_text().splitlines()[1:4]]
    assert 0.08 < ats[1] - ats[0] < 0.2 and 0.08 < ats[2] - ats[1] < 0.2


# --- the CLI drives a running simulator --------------------------------------------------------


def test_cli_drives_a_running_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_scenario(tmp_path, "")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        control = ["--control", str(run / "control.sock")]
        assert sim_cli([*control, "trigger", "fap", "point2", "fire"]) == 0
        assert sim_cli([*control, "set", "efd-1", "ch1_leak", "420"]) == 0
        assert sim_cli([*control, "press", "manual-alarm"]) == 0
        with serial.Serial(str(run / "rs485-1"), 19200, timeout=0.5) as port:
            assert read_values(port, 1, Table.HOLDING, 0, 2) == (0x2A00, 0x2A01)
            assert read_values(port, 2, Table.HOLDING, 0, 1) == (420,)
            assert sim_cli([*control, "fault", "efd-1", "exception", "--code", "2"]) == 0
            assert rtu_exchange(port, read_request(2, Table.HOLDING, 0, 1), 5)[1:3] == b"\x83\x02"
            assert sim_cli([*control, "fault", "--clear", "efd-1"]) == 0
            assert sim_cli([*control, "silence", "fap"]) == 0
            assert rtu_exchange(port, read_request(1, Table.HOLDING, 0, 1), 7, 0.2) == b""
            assert sim_cli([*control, "revive", "fap"]) == 0
            assert read_values(port, 1, Table.HOLDING, 1, 1) == (0x2A01,)
        capsys.readouterr()
        assert sim_cli([*control, "trigger", "fpa", "point2", "fire"]) == 1
        assert "unknown device 'fpa' (known: efd-1, fap)" in capsys.readouterr().err
        assert sim_cli([*control, "trigger", "fap", "point2", "smoke"]) == 1
        assert "no state 'smoke'" in capsys.readouterr().err
        assert sim_cli([*control, "fault", "fap", "melt"]) == 1
        assert "unknown fault kind 'melt'" in capsys.readouterr().err
        assert sim_cli([*control, "press", "door"]) == 1
        assert "unknown input 'door' (known: manual-alarm)" in capsys.readouterr().err
        assert sim_cli([*control, "state", "--json"]) == 0
        state = json.loads(capsys.readouterr().out)
        assert state["devices"]["fap"]["points"]["point2"]["state"] == "fire"
        assert state["inputs"]["manual-alarm"]["active"] is True
        assert "buzzer" in state["outputs"]
        assert sim_cli([*control, "state"]) == 0
        assert "manual-alarm" in capsys.readouterr().out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert not (run / "rs485-1").exists() and not (run / "control.sock").exists()
    assert sim_cli(["--control", str(run / "control.sock"), "state"]) == 3
    logged = [json.loads(x) for x in (run / "stimuli.jsonl").read_text().splitlines()]
    assert [r["do"] for r in logged if r["source"] == "control"][:3] == ["state", "value", "press"]


def test_cli_run_rejects_a_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_scenario(tmp_path, "", **{"unit_id = 2": "unit_id = 0"})
    assert sim_cli(["run", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}: lines[0].devices[1].unit_id: must be 1..247" in err
    assert path.exists()
