"""The optional [gb26875] section: defaults, limits and the rule that keeps a link fault
within 100 s (agent/config_schema.py GB26875)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.gb26875.uplink import link_settings
from tests.test_config import good_text, problems_of, run_cli, write

GB = """
[gb26875]
host = "10.1.2.3"
port = 9000
uitd_address = 0x0379
centre_address = 88888
"""


def test_without_the_section_there_is_no_gb_uplink(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, good_text())).gb26875 is None


def test_the_section_with_its_defaults(tmp_path: Path) -> None:
    gb = load_config(write(tmp_path, good_text() + GB)).gb26875
    assert gb is not None
    assert (gb.host, gb.port, gb.uitd_address, gb.centre_address) == ("10.1.2.3", 9000, 889, 88888)
    assert (gb.heartbeat_s, gb.confirm_timeout_s, gb.resends) == (30.0, 5.0, 3)
    assert gb.set_clock is False and gb.tls is False and gb.minor_version == 0
    # the defaults keep the standard's limits: the link accepts them
    assert link_settings(gb).fault_detection_s == 50.0


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ("confirm_timeout_s = 12", "gb26875.confirm_timeout_s", "10"),
        ("heartbeat_s = 90\nresends = 5", "gb26875.heartbeat_s", "100 s"),
        ("uitd_address = 281474976710656", "gb26875.uitd_address", "281474976710655"),
        ("set_clock = 1", "gb26875.set_clock", "true or false"),
        ('cert_file = "c.pem"\nkey_file = "k.pem"', "gb26875.cert_file", "ca_file"),
        ("hots = 1", "gb26875.hots", "unknown key"),
    ],
)
def test_one_mistake_in_the_section_is_one_problem(
    tmp_path: Path, line: str, key: str, reason: str
) -> None:
    text = good_text() + GB.replace("uitd_address = 0x0379\n", "") + line + "\n"
    if "uitd_address" not in line:
        text += "uitd_address = 889\n"
    problems = problems_of(write(tmp_path, text))
    assert [p.key for p in problems] == [key], problems
    assert reason in problems[0].reason


def test_status_shows_the_centre_link_and_what_each_uplink_has_to_send() -> None:
    from agent.cli.render import problems, render_status

    status = {
        "uplink": {"connected": True},
        "gb26875": {
            "connected": False,
            "link_fault": True,
            "centre": "10.1.2.3:9000",
            "confirmed_rows": 12,
            "queued_packets": 2,
            "resent": 4,
        },
        "buffer": {"event_depth": 5, "readers": {"mqtt": 0, "gb": 5}},
    }
    lines = render_status(status)
    assert any(
        line.startswith("centre   LINK FAULT 10.1.2.3:9000, confirmed 12") for line in lines
    ), lines
    assert any("to send mqtt 0, gb 5" in line for line in lines), lines
    assert "centre link down" in problems(status)
    without = {"uplink": {"connected": True}, "gb26875": None, "buffer": {}}
    assert not any(line.startswith("centre") for line in render_status(without))
    assert problems(without) == []


def test_check_config_summary_names_the_centre(tmp_path: Path) -> None:
    from agent.cli.offline import summary_json, summary_lines

    config = load_config(write(tmp_path, good_text() + GB))
    line = next(line for line in summary_lines(config) if line.startswith("centre"))
    assert line == "centre   10.1.2.3:9000  GB/T 26875.3, no TLS, UITD 889 -> 88888, fault <= 50 s"
    assert summary_json(config)["gb26875"]["uitd_address"] == 889
    plain = load_config(write(tmp_path, good_text(), "plain.toml"))
    assert not any(line.startswith("centre") for line in summary_lines(plain))


FIRE_INPUT = """
[[inputs]]
id = "smoke-9"
name = "9号烟感"
pin = 22
category = "fire"
severity = "critical"
"""


def test_check_config_warns_of_a_fire_input_the_centre_will_not_hear_of(tmp_path: Path) -> None:
    """Review S5: a fire input without [inputs.gb] is MQTT-only; with [gb26875] configured
    check-config says so (a warning: the config is still good)."""
    code, out = run_cli("check-config", str(write(tmp_path, good_text() + FIRE_INPUT + GB)))
    assert code == 0, out
    assert 'warning: inputs[1].gb: "smoke-9" is a fire input without [inputs.gb]' in out
    assert "door-1" not in out.split("warning")[-1]  # a door contact is not life-safety
    code, out = run_cli("check-config", str(write(tmp_path, good_text() + FIRE_INPUT)))
    assert code == 0 and "warning: inputs" not in out  # no centre configured: nothing to say
