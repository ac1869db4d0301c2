"""Config loading and `alarmgw check-config`: every mistake is named by file, key and reason.

Each bad snippet below is one mistake a technician could make on site; each must
give exactly one problem on the expected key, in one of the three layers
(a: one value, b: keys of one table together, c: the whole config).
"""

from __future__ import annotations

import io
import os
import pwd
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config_files
from agent.cli import EXIT_BAD_CONFIG, EXIT_OK, EXIT_USAGE, main
from agent.cli.textwidth import width
from agent.config import (
    BUILTIN_PROFILE_DIR,
    DutiesConfig,
    config_digest,
    load_config,
)
from core.errors import ConfigError, ConfigProblem
from core.events import Category, Kind, Severity
from drivers.types import inter_frame_gap_ms
from tests.test_tls import make_ca

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.toml"
CONFIGS = Path(__file__).resolve().parent / "configs"
TEST_PROFILES = CONFIGS / "profiles"


def good_text() -> str:
    # The profile dir is absolute so the config can be written anywhere.
    text = (CONFIGS / "good.toml").read_text(encoding="utf-8")
    return text.replace('dirs = ["profiles"]', f'dirs = ["{TEST_PROFILES}"]')


def write(tmp_path: Path, text: str, name: str = "alarmgw.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def mutate(text: str, old: str, new: str) -> str:
    """Replace `old` (which must be there exactly once) or, when `old` is empty, append."""
    if not old:
        return text + "\n" + new + "\n"
    assert text.count(old) == 1, f"{old!r} must occur exactly once in the base config"
    return text.replace(old, new)


def problems_of(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def run_cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(list(argv))
    return code, buf.getvalue()


# --- the good configs ---------------------------------------------------------------


def test_example_config_passes_with_the_expected_structure() -> None:
    config = load_config(EXAMPLE)
    assert config.identity.site == "cn-sz-futian-yl001"
    assert config.identity.site_name == "福田区第一养老院"
    assert config.identity.gateway_name == "消防控制室网关"
    assert [(line.id, line.type, line.port) for line in config.lines] == [
        ("rs485-1", "rtu", "/dev/ttyUSB0")
    ]
    assert config.lines[0].inter_frame_gap_ms == pytest.approx(3.5 * 10 * 1000 / 9600)
    devices = {d.id: d for d in config.devices}
    assert [(d.id, d.unit_id, d.profile) for d in config.devices] == [
        ("fap", 1, "fire-panel-gst"),
        ("efd-1", 2, "electrical-fire-4ch"),
        ("efd-2", 3, "electrical-fire-4ch"),
        ("gas-1", 4, "gas-detector"),
        ("ai-1", 5, "analog-4-20ma"),
    ]
    assert devices["fap"].name == "1号火灾报警控制器"
    assert devices["efd-2"].location == "二楼配电间"
    assert devices["ai-1"].slow_poll_s == 2.0
    assert devices["gas-1"].fast_poll_s == 1.0  # the default
    leak = devices["efd-2"].points["ch1_leak"]
    assert leak.name == "厨房回路剩余电流"
    assert leak.threshold == {"alarm": 400.0}
    assert devices["efd-2"].points["ch4_temp"].enabled is False
    assert set(config.profiles) == {
        "fire-panel-gst",
        "electrical-fire-4ch",
        "gas-detector",
        "analog-4-20ma",
    }
    inputs = {i.id: i for i in config.inputs}
    assert set(inputs) == {"exit-door-1", "fire-pump", "manual-alarm", "tamper", "duty-answer"}
    assert (inputs["manual-alarm"].role, inputs["duty-answer"].role) == (
        "manual_call_point",
        "duty_answer",
    )
    manual = inputs["manual-alarm"]
    assert (manual.kind, manual.category, manual.severity) == (
        Kind.ALARM,
        Category.MANUAL,
        Severity.CRITICAL,
    )
    assert inputs["exit-door-1"].kind is Kind.STATE
    assert inputs["tamper"].active == "high"
    assert [(o.id, o.type, o.rule) for o in config.outputs] == [
        ("buzzer", "buzzer", "alarm"),
        ("status-led", "led", "uplink-down-blink"),
        ("duty-sounder", "buzzer", "duty-prompt"),
        ("duty-led", "led", "duty-prompt"),
        ("transmission-led", "led", "transmission-light"),
        ("failure-sounder", "buzzer", "transmission-failed"),
    ]
    assert config.duties == DutiesConfig(600, 300, 40, 100)
    assert config.buffer.path == Path("/var/lib/alarmgw/buffer.db")
    assert config.buffer.max_events == 200000
    assert config.control.socket == Path("/run/alarmgw/control.sock")
    assert config.clock.source == "kernel"


def test_defaults_are_applied_and_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good_text()))
    up = config.uplink
    assert (up.port, up.tls, up.mqtt_version, up.topic_prefix) == (1883, False, "3.1.1", "alarmgw")
    assert up.client_id == "alarmgw-test-site-gw-t"
    assert (up.heartbeat_s, up.inflight_window, up.reconnect_min_s, up.reconnect_max_s) == (
        30,
        50,
        2,
        8,
    )
    assert config.buffer.path == tmp_path / "buffer.db"
    rtu, tcp = config.lines
    assert (rtu.baudrate, rtu.parity, rtu.stopbits, rtu.bytesize) == (19200, "E", 1, 8)
    assert rtu.inter_frame_gap_ms == pytest.approx(3.5 * 11 * 1000 / 19200)
    assert (rtu.max_gap, rtu.max_block, rtu.retries) == (8, 125, 1)
    assert (tcp.host, tcp.tcp_port, tcp.port, tcp.inter_frame_gap_ms) == (
        "192.0.2.10",
        502,
        None,
        0,
    )
    leak, leak_tcp = config.devices
    assert (leak.fast_poll_s, leak.slow_poll_s, leak.comm_fault_after, leak.backoff_max_s) == (
        1.0,
        5.0,
        3,
        5.0,
    )
    assert (leak.timeout_s, leak.retries) == (None, None)
    assert leak_tcp.unit_id == 255  # allowed on TCP, where gateways often expect 255
    assert leak_tcp.name == "leak-tcp"  # name defaults to the id
    door = config.inputs[0]
    assert (door.pull, door.active, door.debounce_ms, door.kind) == ("up", "low", 50, Kind.STATE)
    assert (door.active_state, door.inactive_state) == ("active", "inactive")
    assert config.control.socket == Path("/run/alarmgw/control.sock")
    assert config.profiles["test-leak-2ch"].points["ch1_leak"].thresholds["alarm"].value == 300


@pytest.mark.world
def test_tls_changes_the_default_port(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    make_ca(tmp_path / "tls", "ca")  # a real CA: check-config loads it as the uplink does
    text = mutate(good_text(), 'host = "127.0.0.1"', 'host = "127.0.0.1"\nca_file = "tls/ca.pem"')
    config = load_config(write(tmp_path, text))
    assert config.uplink.port == 8883
    assert config.uplink.ca_file == tmp_path / "tls" / "ca.pem"


def _with_uplink(tmp_path: Path, line: str) -> Path:
    return write(tmp_path, mutate(good_text(), 'host = "127.0.0.1"', f'host = "127.0.0.1"\n{line}'))


def test_files_the_uplink_opens_at_start_are_checked_as_it_opens_them(tmp_path: Path) -> None:
    """A config that checks OK must not stop the service with exit 78 at start."""
    creds = tmp_path / "credentials"
    creds.write_text("gw1\nsecret\n")
    creds.chmod(0o644)
    problems = problems_of(_with_uplink(tmp_path, 'credentials_file = "credentials"'))
    assert [p.key for p in problems] == ["uplink.credentials_file"]
    assert "chmod 600" in problems[0].reason
    creds.chmod(0o600)
    config = load_config(_with_uplink(tmp_path, 'credentials_file = "credentials"'))
    assert config.uplink.credentials_file == creds

    (tmp_path / "ca.pem").write_text("not a certificate\n")
    problems = problems_of(_with_uplink(tmp_path, 'ca_file = "ca.pem"'))
    assert [p.key for p in problems] == ["uplink.ca_file"]
    missing = problems_of(_with_uplink(tmp_path, 'ca_file = "no-such-ca.pem"'))
    assert [p.key for p in missing] == ["uplink.ca_file"]


def test_a_file_the_service_user_cannot_read_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked with sudo, a root-only 0600 file reads fine; the service would not read it.
    The service user is stood in for by `nobody`, which exists on every Linux."""
    monkeypatch.setattr(config_files, "SERVICE_USER", "nobody")
    creds = tmp_path / "credentials"
    creds.write_text("gw1\nsecret\n")
    creds.chmod(0o600)  # owned by whoever runs the test, not by nobody
    if os.geteuid() == pwd.getpwnam("nobody").pw_uid:
        pytest.skip("running as nobody")
    problems = problems_of(_with_uplink(tmp_path, 'credentials_file = "credentials"'))
    assert [p.key for p in problems] == ["uplink.credentials_file"]
    assert "cannot read" in problems[0].reason and "chown nobody:" in problems[0].reason


def test_a_control_group_that_does_not_exist_is_a_problem(tmp_path: Path) -> None:
    text = good_text() + '\n[control]\ngroup = "no-such-group-x"\n'
    problems = problems_of(write(tmp_path, text))
    assert [p.key for p in problems] == ["control.group"]


@pytest.mark.parametrize(
    ("baud", "frame", "expected"),
    [
        (9600, (8, "N", 1), 3.5 * 10 * 1000 / 9600),
        (9600, (8, "E", 1), 3.5 * 11 * 1000 / 9600),
        (2400, (7, "O", 2), 3.5 * 11 * 1000 / 2400),
        (19200, (8, "N", 1), 1.8229166),
        (38400, (8, "N", 1), 1.75),  # the spec's fixed minimum above 19200 baud
        (115200, (8, "E", 2), 1.75),
    ],
)
def test_inter_frame_gap_is_three_and_a_half_characters(
    baud: int, frame: tuple[int, str, int], expected: float
) -> None:
    bytesize, parity, stopbits = frame
    assert inter_frame_gap_ms(baud, bytesize, parity, stopbits) == pytest.approx(expected)


def test_an_explicit_gap_wins(tmp_path: Path) -> None:
    text = mutate(good_text(), 'parity = "E"', 'parity = "E"\ninter_frame_gap_ms = 5')
    assert load_config(write(tmp_path, text)).lines[0].inter_frame_gap_ms == 5.0


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + good_text().encode("utf-8"))
    assert load_config(path).identity.site_name == "测试养老院"


def test_config_digest_is_16_hex_of_the_file_bytes(tmp_path: Path) -> None:
    a = write(tmp_path, good_text(), "a.toml")
    b = write(tmp_path, good_text() + "\n# a comment changes the digest\n", "b.toml")
    assert len(config_digest(a)) == 16
    assert int(config_digest(a), 16) >= 0
    assert config_digest(a) == config_digest(write(tmp_path, good_text(), "c.toml"))
    assert config_digest(a) != config_digest(b)


# --- one mistake, one problem: layer (a), one value at a time ------------------------------

LAYER_A = [
    ("bad site id", 'site = "test-site"', 'site = "test site"', "identity.site", "id"),
    ("missing gateway", 'gateway = "gw-t"\n', "", "identity.gateway", "missing"),
    ("typo in a key", "baudrate = 19200", "baudrat = 19200", "lines[0].baudrat", "baudrate"),
    ("unknown section", "", '[uplnk]\nhost = "x"', "uplnk", "unknown"),
    ("odd baudrate", "baudrate = 19200", "baudrate = 19201", "lines[0].baudrate", "one of"),
    ("bad parity", 'parity = "E"', 'parity = "X"', "lines[0].parity", "one of"),
    ("bad stopbits", 'parity = "E"', 'parity = "E"\nstopbits = 3', "lines[0].stopbits", "one of"),
    ("bad bytesize", 'parity = "E"', 'parity = "E"\nbytesize = 9', "lines[0].bytesize", "one of"),
    (
        "zero timeout",
        'parity = "E"',
        'parity = "E"\ntimeout_s = 0',
        "lines[0].timeout_s",
        "greater",
    ),
    (
        "port too big",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nport = 70000',
        "uplink.port",
        "1..65535",
    ),
    (
        "port as text",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nport = "1883"',
        "uplink.port",
        "integer",
    ),
    ("unit id out of range", "unit_id = 7", "unit_id = 256", "devices[0].unit_id", "0..255"),
    ("pin beyond BCM 27", "pin = 17", "pin = 28", "inputs[0].pin", "0..27"),
    (
        "debounce too long",
        "pin = 17",
        "pin = 17\ndebounce_ms = 20000",
        "inputs[0].debounce_ms",
        "0..10000",
    ),
    (
        "debounce as bool",
        "pin = 17",
        "pin = 17\ndebounce_ms = true",
        "inputs[0].debounce_ms",
        "integer",
    ),
    ("slash in a device id", 'id = "leak-1"', 'id = "leak/1"', "devices[0].id", "MQTT"),
    ("max_events too small", "max_events = 1000", "max_events = 99", "buffer.max_events", "100"),
    (
        "unknown category",
        'category = "door"',
        'category = "weather"',
        "inputs[0].category",
        "one of",
    ),
    (
        "reserved category",
        'category = "door"',
        'category = "system"',
        "inputs[0].category",
        "one of",
    ),
    ("unknown output rule", 'rule = "alarm"', 'rule = "siren"', "outputs[0].rule", "alarm"),
    ("unknown clock", "", '[clock]\nsource = "gps"', "clock.source", "kernel"),
    (
        "wildcard in prefix",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ntopic_prefix = "a/+/b"',
        "uplink.topic_prefix",
        "wildcards",
    ),
    (
        "threshold as text",
        "threshold.alarm = 400",
        'threshold.alarm = "400"',
        "devices[0].points.ch1_leak.threshold.alarm",
        "number",
    ),
    (
        "typo in an override",
        "threshold.alarm = 400",
        "threshhold.alarm = 400",
        "devices[0].points.ch1_leak.threshhold",
        "threshold",
    ),
    (
        "nan poll period",
        "unit_id = 7",
        "unit_id = 7\nfast_poll_s = nan",
        "devices[0].fast_poll_s",
        "number",
    ),
]
LAYER_A += [
    (
        "heartbeat too fast",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nheartbeat_s = 4',
        "uplink.heartbeat_s",
        "at least 5",
    ),
    (
        "inflight window too big",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ninflight_window = 1001',
        "uplink.inflight_window",
        "1..1000",
    ),
    (
        "mqtt version 4",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nmqtt_version = "4"',
        "uplink.mqtt_version",
        "3.1.1",
    ),
    (
        "mqtt version as a number",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nmqtt_version = 5',
        "uplink.mqtt_version",
        '"5"',
    ),
    (
        "enabled as text",
        "threshold.alarm = 400",
        'threshold.alarm = 400\n  enabled = "no"',
        "devices[0].points.ch1_leak.enabled",
        "true or false",
    ),
]

# --- layer (b): keys of one table together ----------------------------------------------------

LAYER_B = [
    (
        "host on an rtu line",
        'parity = "E"',
        'parity = "E"\nhost = "10.0.0.1"',
        "lines[0].host",
        "tcp",
    ),
    (
        "baudrate on a tcp line",
        'host = "192.0.2.10"',
        'host = "192.0.2.10"\nbaudrate = 9600',
        "lines[1].baudrate",
        "serial option",
    ),
    (
        "parity on a tcp line",
        'host = "192.0.2.10"',
        'host = "192.0.2.10"\nparity = "N"',
        "lines[1].parity",
        "serial option",
    ),
    ("number as rtu port", 'port = "/dev/ttyUSB7"', "port = 502", "lines[0].port", "path"),
    ("rtu port missing", 'port = "/dev/ttyUSB7"\n', "", "lines[0].port", "required"),
    ("relative rtu port", 'port = "/dev/ttyUSB7"', 'port = "ttyUSB7"', "lines[0].port", "absolute"),
    (
        "path as tcp port",
        'host = "192.0.2.10"',
        'host = "192.0.2.10"\nport = "/dev/ttyUSB1"',
        "lines[1].port",
        "TCP port number",
    ),
    ("tcp host missing", 'host = "192.0.2.10"\n', "", "lines[1].host", "required"),
    (
        "gap not below block",
        'parity = "E"',
        'parity = "E"\nmax_gap = 20\nmax_block = 20',
        "lines[0].max_gap",
        "max_block",
    ),
    (
        "cert without key",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nca_file = "ca.pem"\ncert_file = "gw.pem"',
        "uplink.cert_file",
        "key_file",
    ),
    (
        "key without cert",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nca_file = "ca.pem"\nkey_file = "gw.key"',
        "uplink.key_file",
        "cert_file",
    ),
    (
        "client cert without TLS",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ncert_file = "gw.pem"\nkey_file = "gw.key"',
        "uplink.cert_file",
        "ca_file",
    ),
    (
        "reconnect bounds swapped",
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nreconnect_min_s = 10\nreconnect_max_s = 5',
        "uplink.reconnect_max_s",
        "reconnect_min_s",
    ),
    (
        "slow poll faster than fast",
        "unit_id = 7",
        "unit_id = 7\nfast_poll_s = 2\nslow_poll_s = 1",
        "devices[0].slow_poll_s",
        "fast_poll_s",
    ),
    (
        "floating input without active level",
        "pin = 17",
        'pin = 17\npull = "none"',
        "inputs[0].active",
        "required",
    ),
    (
        "same state both ways",
        "pin = 17",
        'pin = 17\nactive_state = "open"\ninactive_state = "open"',
        "inputs[0].inactive_state",
        "differ",
    ),
]

# --- layer (c): the whole config -------------------------------------------------------------

LAYER_C = [
    (
        "duplicate line id",
        "",
        '[[lines]]\nid = "bus-a"\ntype = "tcp"\nhost = "192.0.2.11"',
        "lines[2].id",
        "duplicate",
    ),
    ("duplicate device id", 'id = "leak-tcp"', 'id = "leak-1"', "devices[1].id", "duplicate"),
    (
        "input id equal to a device id",
        'id = "door-1"',
        'id = "leak-1"',
        "inputs[0].id",
        "duplicate",
    ),
    ("device called gateway", 'id = "leak-1"', 'id = "gateway"', "devices[0].id", "reserved"),
    (
        "duplicate output id",
        "",
        '[[outputs]]\nid = "buzzer"\npin = 25\ntype = "led"',
        "outputs[1].id",
        "duplicate",
    ),
    ("device on an unknown line", 'line = "bus-a"', 'line = "bus-b"', "devices[0].line", "bus-a"),
    (
        "same unit id twice on a line",
        "",
        '[[devices]]\nid = "leak-2"\nline = "bus-a"\nunit_id = 7\nprofile = "test-leak-2ch"',
        "devices[2].unit_id",
        "already used",
    ),
    ("broadcast unit on rtu", "unit_id = 7", "unit_id = 0", "devices[0].unit_id", "1..247"),
    ("unit 248 on rtu", "unit_id = 7", "unit_id = 248", "devices[0].unit_id", "1..247"),
    (
        "one serial port, two lines",
        "",
        '[[lines]]\nid = "bus-b"\ntype = "rtu"\nport = "/dev/ttyUSB7"',
        "lines[2].port",
        "already used",
    ),
    (
        "one tcp endpoint, two lines",
        "",
        '[[lines]]\nid = "tcp-2"\ntype = "tcp"\nhost = "192.0.2.10"\nport = 502',
        "lines[2].host",
        "same host",
    ),
    (
        "unknown profile",
        'profile = "test-leak-2ch"\n  [devices',
        'profile = "no-such"\n  [devices',
        "devices[0].profile",
        "unknown profile",
    ),
    ("pin used by input and output", "pin = 24", "pin = 17", "outputs[0].pin", "already used"),
    (
        "override of an unknown point",
        "[devices.points.ch1_leak]",
        "[devices.points.ch3_leak]",
        "devices[0].points.ch3_leak",
        "no point",
    ),
    (
        "override of an unknown threshold",
        "threshold.alarm = 400",
        "threshold.prealarm = 400",
        "devices[0].points.ch1_leak.threshold.prealarm",
        "no threshold",
    ),
    (
        "writable read-only point",
        "threshold.alarm = 400",
        "threshold.alarm = 400\n  [devices.points.fault]\n  writable = true",
        "devices[0].points.fault.writable",
        "read-only",
    ),
    (
        "missing profile dir",
        f'dirs = ["{TEST_PROFILES}"]',
        f'dirs = ["{TEST_PROFILES}", "nope"]',
        "profiles.dirs[1]",
        "not found",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "key", "word"),
    [pytest.param(*case[1:], id=case[0]) for case in LAYER_A + LAYER_B + LAYER_C],
)
def test_one_mistake_gives_one_problem_on_its_key(
    tmp_path: Path, old: str, new: str, key: str, word: str
) -> None:
    path = write(tmp_path, mutate(good_text(), old, new))
    problems = problems_of(path)
    assert [(p.key, p.file) for p in problems] == [(key, str(path))], problems
    assert word in problems[0].reason


def test_a_gpio_pin_of_the_pi_uart_is_taken_by_its_line(tmp_path: Path) -> None:
    text = mutate(good_text(), 'port = "/dev/ttyUSB7"', 'port = "/dev/serial0"')
    text = mutate(text, "pin = 24", "pin = 14")
    problems = problems_of(write(tmp_path, text))
    assert [p.key for p in problems] == ["outputs[0].pin"]
    assert "UART" in problems[0].reason


def test_two_names_for_one_serial_adapter_are_one_port(tmp_path: Path) -> None:
    real = tmp_path / "ttyUSB3"
    real.touch()
    (tmp_path / "by-id").symlink_to(real)
    text = mutate(good_text(), 'port = "/dev/ttyUSB7"', f'port = "{real}"')
    text = mutate(text, "", f'[[lines]]\nid = "bus-b"\ntype = "rtu"\nport = "{tmp_path / "by-id"}"')
    problems = problems_of(write(tmp_path, text))
    assert [p.key for p in problems] == ["lines[2].port"]


def test_a_config_with_nothing_to_watch_is_refused(tmp_path: Path) -> None:
    text = '[identity]\nsite = "s"\ngateway = "g"\n[uplink]\nhost = "localhost"\n'
    problems = problems_of(write(tmp_path, text))
    assert [p.key for p in problems] == ["devices"]
    assert "nothing to watch" in problems[0].reason


def test_missing_sections_are_named(tmp_path: Path) -> None:
    problems = problems_of(
        write(tmp_path, '[[inputs]]\nid = "a"\npin = 4\ncategory = "door"\nseverity = "info"\n')
    )
    assert [p.key for p in problems] == ["identity", "uplink"]


def test_a_broken_profile_is_reported_with_its_own_file_and_key(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    broken = profiles / "test-leak-2ch.toml"  # shadows the good one: config dirs come first
    broken.write_text(
        '[profile]\nname = "x"\ncategory = "electrical"\n[[points]]\nid = "a"\nname = "a"\n'
        'table = "holding"\naddress = 0\ntype = "u17"\n',
        encoding="utf-8",
    )
    text = mutate(good_text(), f'dirs = ["{TEST_PROFILES}"]', 'dirs = ["profiles"]')
    problems = problems_of(write(tmp_path, text))
    assert problems[0].key == "devices[0].profile"
    assert "invalid" in problems[0].reason
    from_profile = [p for p in problems if p.file == str(broken)]
    assert [p.key for p in from_profile] == ["points[0].type"]
    assert len(problems) == 2  # reported once although two devices use it


def test_config_dirs_are_searched_before_the_builtin_profiles(tmp_path: Path) -> None:
    assert (BUILTIN_PROFILE_DIR / "gas-detector.toml").is_file()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "gas-detector.toml").write_bytes(
        (TEST_PROFILES / "test-leak-2ch.toml").read_bytes()
    )
    text = mutate(good_text(), f'dirs = ["{TEST_PROFILES}"]', 'dirs = ["profiles"]')
    text = text.replace('profile = "test-leak-2ch"', 'profile = "gas-detector"')
    config = load_config(write(tmp_path, text))
    assert "ch1_leak" in config.profiles["gas-detector"].points  # the local one, not the built-in


def test_chinese_names_and_locations_are_kept_intact(tmp_path: Path) -> None:
    name = "三楼 护理区 东侧 配电箱 🔥 «test»"
    text = mutate(good_text(), 'name = "配电箱剩余电流"', f'name = "{name}"\nlocation = "三楼"')
    device = load_config(write(tmp_path, text)).devices[0]
    assert (device.name, device.location) == (name, "三楼")


# --- files that are not a config at all --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "word"),
    [
        (b'[identity]\nsite = "a"\ngateway = \n', "line 3, column 11"),
        (b'[identity]\nsite = "a"\n[identity]\n', "TOML"),
        (b'site = "\xff\xfe"\n', "UTF-8"),
        (b"\x00\x01\x02binary", "TOML"),
    ],
    ids=["bad value", "table twice", "not utf-8", "binary"],
)
def test_a_file_that_is_not_toml_gives_one_clear_problem(
    tmp_path: Path, content: bytes, word: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    problems = problems_of(path)
    assert len(problems) == 1
    assert (problems[0].file, problems[0].key) == (str(path), "")
    assert word in problems[0].reason


def test_missing_file_and_directory_give_one_problem_each(tmp_path: Path) -> None:
    assert [p.reason for p in problems_of(tmp_path / "nope.toml")] == ["file not found"]
    assert "directory" in problems_of(tmp_path)[0].reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, good_text())
    path.chmod(0)
    assert "permission denied" in problems_of(path)[0].reason


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda s: s.encode("utf-8")))
def test_any_bytes_give_a_config_error_never_a_crash(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.toml"
        path.write_bytes(content)
        with pytest.raises(ConfigError) as info:
            load_config(path)  # none of these has identity + uplink + something to watch
        assert info.value.problems


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["identity", "uplink", "buffer", "lines", "devices", "inputs", "outputs"]),
    st.one_of(
        st.integers(),
        st.floats(),
        st.booleans(),
        st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),
        st.lists(st.integers(), min_size=1, max_size=3),
    ),
)
def test_any_value_in_place_of_a_table_is_a_problem_not_a_crash(
    section: str, value: object
) -> None:
    import json

    literal = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    literal = {"True": "true", "False": "false", "nan": "nan", "inf": "inf", "-inf": "-inf"}.get(
        literal, literal
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.toml"
        path.write_text(f"{section} = {literal}\n", encoding="utf-8")
        problems = problems_of(path)
        assert any(p.key == section or p.key.startswith(section + "[") for p in problems), problems


# --- the CLI --------------------------------------------------------------------------------

THREE_MISTAKES = [
    ("baudrate = 19200", "baudrat = 19200"),  # (a) a typo
    ('host = "192.0.2.10"', 'host = "192.0.2.10"\nbaudrate = 9600'),  # (b) serial option on tcp
    ('line = "bus-a"', 'line = "bus-b"'),  # (c) unknown line
]


def three_mistakes(tmp_path: Path) -> Path:
    text = good_text()
    for old, new in THREE_MISTAKES:
        text = mutate(text, old, new)
    return write(tmp_path, text)


def test_check_config_prints_each_of_three_problems_and_exits_78(tmp_path: Path) -> None:
    path = three_mistakes(tmp_path)
    code, out = run_cli("check-config", str(path))
    assert code == EXIT_BAD_CONFIG == 78
    lines = out.splitlines()
    assert lines[:3] == [
        f'{path}: lines[0].baudrat: unknown key (did you mean "baudrate"?)',
        f"{path}: lines[1].baudrate: is a serial option; a tcp line has no baudrate, parity, "
        "stopbits or bytesize",
        f'{path}: devices[0].line: no line with id "bus-b" (lines: bus-a, tcp-1)',
    ]
    assert lines[3] == f"3 problems in {path}"
    assert len(lines) == 4


@pytest.mark.world
def test_check_config_as_a_real_command(tmp_path: Path) -> None:
    path = three_mistakes(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78
    assert done.stdout.count(f"{path}: ") == 3
    assert "Traceback" not in done.stderr
    good = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(EXAMPLE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "福田区第一养老院" in good.stdout


def test_check_config_json_lists_the_problems(tmp_path: Path) -> None:
    import json

    code, out = run_cli("check-config", "--json", str(three_mistakes(tmp_path)))
    assert code == 78
    result = json.loads(out)
    assert result["ok"] is False
    assert [p["key"] for p in result["problems"]] == [
        "lines[0].baudrat",
        "lines[1].baudrate",
        "devices[0].line",
    ]


def test_check_config_summary_fits_80_columns_with_chinese_names() -> None:
    code, out = run_cli("check-config", str(EXAMPLE))
    assert code == EXIT_OK
    lines = out.splitlines()
    assert all(width(line) <= 80 for line in lines), [line for line in lines if width(line) > 80]
    assert "cn-sz-futian-yl001/gw1" in out
    assert "127.0.0.1:1883" in out
    assert "/var/lib/alarmgw/buffer.db" in out
    rows = [line for line in lines if "electrical-fire-4ch" in line]
    assert len(rows) == 2
    assert "电气火灾监控探测器 A区" in rows[0]
    # the name column starts at the same terminal column in every device row
    starts = [width(row[: row.index("电")]) for row in rows]
    fap_row = next(line for line in lines if "fire-panel-gst" in line)
    assert starts[0] == starts[1] == width(fap_row[: fap_row.index("1号")])


def test_check_config_json_summary() -> None:
    import json

    code, out = run_cli("check-config", "--json", str(EXAMPLE))
    assert code == 0
    result = json.loads(out)
    assert result["ok"] is True
    assert result["identity"]["site_name"] == "福田区第一养老院"
    devices = result["lines"][0]["devices"]
    assert [d["unit_id"] for d in devices] == [1, 2, 3, 4, 5]
    assert result["digest"] == config_digest(EXAMPLE)


def test_check_config_plan_hook_answers() -> None:
    code, out = run_cli("check-config", "--plan", str(EXAMPLE))
    assert code == 0
    assert "rs485-1" in out.split("output status-led")[-1]  # the plan follows the summary


def test_run_refuses_a_bad_config_with_78(tmp_path: Path) -> None:
    code, out = run_cli("run", "--config", str(three_mistakes(tmp_path)))
    assert code == 78
    assert "3 problems" in out


def test_usage_errors_and_version() -> None:
    assert run_cli()[0] == EXIT_USAGE
    assert run_cli("no-such-command")[0] == EXIT_USAGE
    assert run_cli("check-config")[0] == EXIT_USAGE  # FILE missing
    code, out = run_cli("--version")
    assert code == 0
    assert out.startswith("alarmgw ")
