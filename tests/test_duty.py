"""The duty check (查岗): its prompt on real gpiozero outputs (MockFactory pins), its hold
and 10-minute timeout on an injectable clock, a new check restarting it, the answer
button through the pin factory, and `alarmgw ack` through the control socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from agent.cli.main import main
from agent.cli.output import EXIT_OK, EXIT_PROBLEM
from agent.duty import DutyCheck
from agent.gb26875.mapping import carries
from agent.rules import DutyPromptRule, LocalRules
from agent.runtime import Gateway
from core.events import Category, Event, Identity, Kind, Lane, Record, Severity
from drivers.gpio import Output
from tests.parts import HandClock
from tests.parts import OutputCfg as Out
from tests.test_runtime import ROOT, example_config
from tests.test_schemas import assert_valid
from tests.waiting import wait_until

IDENT = Identity("cn-sz-futian-yl001", "gw1")
WALL_MS = 1_796_040_818_123


@dataclass
class Bench:
    duty: DutyCheck
    clock: HandClock
    sounder: Output
    led: Output
    events: list[Event]


@pytest.fixture
def bench(factory: MockFactory) -> Iterator[Bench]:
    sounder = Output(Out("duty-sounder", 12, "buzzer"), pin_factory=factory)
    led = Output(Out("duty-led", 13, "led"), pin_factory=factory)
    prompt = DutyPromptRule([sounder, led])
    events: list[Event] = []
    clock = HandClock()

    def emit(record: Record) -> None:
        assert isinstance(record, Event)
        events.append(record)

    duty = DutyCheck(emit, lambda: prompt, monotonic=clock, wall_ms=lambda: WALL_MS)
    yield Bench(duty, clock, sounder, led, events)
    sounder.close()
    led.close()


def payload(event: Event, seq: int = 7) -> dict[str, Any]:
    return event.with_seq(seq).to_payload(IDENT)


def test_the_prompt_is_held_until_the_answer_which_records_the_response_time(
    bench: Bench,
) -> None:
    started = bench.duty.request("centre", None)
    assert started == {"started": True, "timeout_s": 600.0, "restarted": False}
    assert (bench.sounder.mode, bench.led.mode) == ("blink", "blink")
    bench.clock.now += 42.25
    bench.duty.tick()
    assert bench.sounder.mode == "blink"  # still waiting
    answered = bench.duty.answer("input:duty-answer")
    assert answered == {"answered": True, "response_s": 42.2, "source": "centre"}
    assert (bench.sounder.mode, bench.led.mode) == ("off", "off")
    [event] = bench.events
    assert (event.kind, event.device, event.point, event.state) == (
        Kind.STATE,
        "gateway",
        "duty_check",
        "answered",
    )
    assert (event.value, event.unit) == (42.2, "s")
    assert event.detail == {
        "source": "centre",
        "requested_by": "centre",
        "requested_ms": WALL_MS,
        "timeout_s": 600.0,
        "response_s": 42.2,
        "answered_by": "input:duty-answer",
        # the GB contract: UITD operation, bit 5 = duty-check answer
        "gb": {"tf": 24, "flags": 32, "operator": 0},
    }
    assert "查岗已应答" in event.text
    assert_valid("event", payload(event))


def test_an_unanswered_prompt_is_held_ten_minutes_then_recorded_without_gb(
    bench: Bench,
) -> None:
    bench.duty.request("platform", None, "cmd:dc-1")
    bench.clock.now += 599.9
    bench.duty.tick()
    assert bench.sounder.mode == "blink" and bench.events == []
    assert bench.duty.waiting is not None and bench.duty.waiting["left_s"] == 0.1
    bench.clock.now += 0.1
    bench.duty.tick()
    assert (bench.sounder.mode, bench.led.mode) == ("off", "off")
    [event] = bench.events
    assert (event.state, event.severity.value, event.value) == ("unanswered", "warning", None)
    assert event.detail == {
        "source": "platform",
        "requested_by": "cmd:dc-1",
        "requested_ms": WALL_MS,
        "timeout_s": 600.0,
        "ended": "timeout",
        "waited_s": 600.0,
    }
    assert_valid("event", payload(event))
    assert bench.duty.waiting is None
    assert bench.duty.answer("cli:root") == {"answered": False, "response_s": None}
    assert len(bench.events) == 1  # a late answer answers nothing


def test_a_new_duty_check_restarts_the_prompt_and_ends_the_old_one_unanswered(
    bench: Bench,
) -> None:
    bench.duty.request("centre", None)
    bench.clock.now += 500
    again = bench.duty.request("platform", None, "cmd:dc-2")
    assert again["restarted"] is True
    [old] = bench.events
    assert old.state == "unanswered" and old.detail is not None
    assert (old.detail["ended"], old.detail["source"], old.detail["waited_s"]) == (
        "superseded",
        "centre",
        500.0,
    )
    assert bench.sounder.mode == "blink"
    bench.clock.now += 500  # 1000 s after the first, 500 after the second
    bench.duty.tick()
    assert bench.sounder.mode == "blink" and len(bench.events) == 1
    bench.clock.now += 100
    bench.duty.tick()
    assert bench.sounder.mode == "off"
    assert [(e.state, e.detail["ended"]) for e in bench.events if e.detail] == [
        ("unanswered", "superseded"),
        ("unanswered", "timeout"),
    ]


def test_the_centres_timeout_is_used_within_bounds_and_none_means_the_configured_one(
    bench: Bench,
) -> None:
    assert bench.duty.request("centre", 300)["timeout_s"] == 300.0
    assert bench.duty.request("centre", 0)["timeout_s"] == 10.0
    assert bench.duty.request("centre", 10**6)["timeout_s"] == 3600.0
    bench.duty.timeout_s = 120.0
    assert bench.duty.request("centre", None)["timeout_s"] == 120.0


class Pattern:
    """A working output that keeps what it was told last: its on/off pattern."""

    def __init__(self) -> None:
        self.pattern: tuple[str, float, float] = ("off", 0.0, 0.0)

    def on(self) -> None:
        self.pattern = ("on", 0.0, 0.0)

    def off(self) -> None:
        self.pattern = ("off", 0.0, 0.0)

    def blink(self, on_s: float, off_s: float) -> None:
        self.pattern = ("blink", on_s, off_s)


def test_the_prompt_is_an_intermittent_pattern_unlike_the_alarm_and_the_failure_signal() -> None:
    """On the site's one sounder a person must tell "someone check in" from "fire" and
    from "transmission failed": three patterns, each different."""
    alarm, prompt, failed = Pattern(), Pattern(), Pattern()
    rules = LocalRules(
        [
            ("buzzer", "alarm", alarm),
            ("duty", "duty-prompt", prompt),
            ("failed", "transmission-failed", failed),
        ]
    )
    rules.uplink_changed(True)
    rules.duty_prompt.show(True)
    assert prompt.pattern[0] == "blink" and alarm.pattern[0] == "off"
    fire = Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", "fap", "p3")
    rules.on_event(fire)
    link_fault = Event(
        Kind.FAULT, Category.SYSTEM, Severity.MAJOR, "link_fault", "centre link lost",
        "gateway", "gb_link", detail={"gb": {"tf": 21, "status": 1 << 5}},
    )  # fmt: skip
    rules.on_event(link_fault)
    patterns = {alarm.pattern, prompt.pattern, failed.pattern}
    assert len(patterns) == 3 and ("off", 0.0, 0.0) not in patterns
    assert prompt.pattern[0] == "blink" and prompt.pattern[1] != prompt.pattern[2]
    rules.silence()  # silencing the alarm buzzer leaves the duty prompt alone
    assert prompt.pattern[0] == "blink"


def test_only_a_centres_duty_check_is_answered_to_the_centre(bench: Bench) -> None:
    """A duty check the platform asked for is answered on the feed only: detail["gb"]
    (the GB reader's ticket to the centre) is on the centre's alone (review item 6)."""
    bench.duty.request("platform", None, "cmd:dc-1")
    bench.duty.answer("cli:root")
    bench.duty.request("centre", None)
    bench.duty.answer("cli:root")
    platform, centre = bench.events
    assert platform.detail is not None and "gb" not in platform.detail
    assert not carries(platform)
    assert centre.detail is not None and centre.detail["gb"] == {
        "tf": 24,
        "flags": 32,
        "operator": 0,
    }
    assert carries(centre)


class HeldPrompt:
    """A prompt whose first drive is held until released: a slow output at a bad moment."""

    def __init__(self) -> None:
        self.shown: list[bool] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def show(self, showing: bool) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        self.shown.append(showing)


def test_an_answer_racing_the_prompts_drive_leaves_it_dark() -> None:
    """A request drives the prompt on; an answer lands while that drive is still under
    way: the prompt ends dark, as nothing waits (review item 9)."""
    prompt = HeldPrompt()
    duty = DutyCheck(lambda r: None, lambda: prompt)
    asking = threading.Thread(target=duty.request, args=("centre",))
    asking.start()
    assert prompt.entered.wait(30)
    answering = threading.Thread(target=duty.answer, args=("cli:root",))
    answering.start()
    assert wait_until(lambda: duty.waiting is None)  # the answer is in; its drive follows
    prompt.release.set()
    asking.join(30)
    answering.join(30)
    assert duty.waiting is None and prompt.shown[-1] is False


# --- in the running gateway -------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(example_config(tmp_path))
    gw.buffer.start()
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield gw
    finally:
        if gw.control is not None:
            gw.control.close()
        if gw.gpio is not None:
            gw.gpio.close()
        gw.uplink.stop()  # never started here; this releases its wake-up socket pair
        gw.buffer.close()
        gw.pointstate.close()
        Device.pin_factory = None
        factory.close()


def stored(gw: Gateway, point: str) -> list[dict[str, Any]]:
    """The events of `point` in the gateway's buffer (stored, not yet sent)."""
    rows = gw.buffer.pending(Lane.EVENT, 0, 100)
    return [e for e in (json.loads(bytes(r.payload)) for r in rows) if e["point"] == point]


def test_the_answer_button_through_the_pin_factory_answers_and_is_no_contact(
    gateway: Gateway,
) -> None:
    gateway._start_gpio()
    factory = Device.pin_factory
    assert isinstance(factory, MockFactory)
    button, sounder, led = factory.pin(5), factory.pin(12), factory.pin(13)
    button.drive_low()  # pressed with no duty check waiting: nothing to answer
    button.drive_high()
    gateway.duty.request("platform", None, "cmd:dc-9")
    assert gateway.rules.duty_prompt.showing
    assert wait_until(lambda: len(sounder.states) > 2 and len(led.states) > 2)  # flashing
    button.drive_low()  # pressed: the contact settles after its 20 ms debounce
    assert wait_until(lambda: bool(stored(gateway, "duty_check")))
    [answer] = stored(gateway, "duty_check")
    assert (answer["state"], answer["detail"]["answered_by"]) == ("answered", "input:duty-answer")
    assert "gb" not in answer["detail"]  # the platform asked: not an answer for the centre
    assert not gateway.rules.duty_prompt.showing
    assert not sounder.state and not led.state
    # the button raised no contact event (the tamper, open at rest on a mock pin, did)
    assert [e["device"] for e in stored(gateway, "contact")] == ["tamper"]


@pytest.mark.world
def test_alarmgw_ack_answers_through_the_control_socket(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway._start_gpio()
    gateway._start_control()
    assert gateway.control is not None
    socket = str(gateway.cfg.control.socket)
    assert main(["ack", "--socket", socket]) == EXIT_PROBLEM  # nothing waiting
    assert "no duty check was waiting" in capsys.readouterr().out
    gateway.duty.request("centre", None)
    assert main(["ack", "--socket", socket]) == EXIT_OK
    assert "duty check answered" in capsys.readouterr().out
    assert wait_until(lambda: bool(stored(gateway, "duty_check")))
    [answer] = stored(gateway, "duty_check")
    assert answer["state"] == "answered"
    assert answer["detail"]["answered_by"].startswith("cli:")
    assert not gateway.rules.duty_prompt.showing


def test_an_uplink_that_takes_a_duty_check_hook_gets_the_duty_checks_request(
    gateway: Gateway,
) -> None:
    """The GB uplink (gb-uplink, in parallel) is handed `on_duty_check` by the runtime:
    the centre's typeflag 91 starts the same prompt as the platform's command."""

    class CentreUplink:
        on_duty_check: Any = None

    centre = CentreUplink()
    gateway.uplinks.append(centre)  # type: ignore[arg-type]
    gateway.uitd.hand_to(gateway.uplinks)
    assert centre.on_duty_check == gateway.duty.request
    centre.on_duty_check(source="centre", timeout_s=600.0)
    assert gateway.duty.waiting is not None and gateway.duty.waiting["source"] == "centre"
    gateway.uplinks.remove(centre)  # type: ignore[arg-type]


def test_status_shows_a_waiting_duty_check_and_a_failed_transmission_as_problems() -> None:
    from agent.cli.render import problems, render_status

    status: dict[str, Any] = {
        "uplink": {"connected": True},
        "duty_check": {"source": "centre", "waited_s": 42.0, "left_s": 558.0},
        "transmission": {"light": "blink", "failed": ["unconfirmed:17"]},
    }
    assert problems(status) == ["duty check waiting: alarmgw ack", "transmission failed"]
    text = "\n".join(render_status(status))
    assert "duty check from centre: waiting 42s" in text
    assert "transmission light blink; FAILED: unconfirmed:17" in text
    quiet = {"uplink": {"connected": True}, "duty_check": None, "transmission": {"light": "on"}}
    assert problems(quiet) == []


def test_a_scenarios_duty_check_step_needs_a_platform_to_ask(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from simulator.scenario import load_scenario

    training = load_scenario(ROOT / "config" / "scenarios" / "training.toml")
    assert training.platform is not None and training.platform.gateway == "gw1"
    assert [s.action for s in training.steps if s.action["do"] == "duty-check"] == [
        {"do": "duty-check"}
    ]
    lonely = tmp_path / "lonely.toml"
    lonely.write_text(
        '[[inputs]]\nid = "duty-answer"\npin = 5\n\n'
        '[[timeline.steps]]\nat = 1\ndo = "duty-check"\ntimeout_s = 5\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_scenario(lonely)
    keys = {p.key: p.reason for p in caught.value.problems}
    assert "timeline.steps[0].timeout_s" in keys  # 10..3600
    lonely.write_text('[[timeline.steps]]\nat = 1\ndo = "duty-check"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_scenario(lonely)
    [problem] = caught.value.problems
    assert (problem.key, "[platform]" in problem.reason) == ("timeline.steps[0].do", True)
