"""The self-check's point under test (review item 7): while `alarmgw selfcheck` has declared
a point, that point's events go out as tests (test: true, GB bit 0 clear, no evacuation
buzzer); another point's alarm stays real, and so does this one's once the window ends.
A real buffer and pipeline; an injectable monotonic clock moves the window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import EventBuffer
from agent.cli import selfcheck
from agent.gb26875.mapping import carries
from agent.pipeline import Pipeline
from agent.rules import LocalRules
from agent.undertest import LEASE_S, PointsUnderTest
from core.events import Category, Event, Identity, Kind, Severity
from tests.parts import HandClock
from tests.waiting import wait_until

IDENT = Identity("site", "gw1")


class Buzzer:
    def __init__(self) -> None:
        self.sounding = False

    def on(self) -> None:
        self.sounding = True

    def off(self) -> None:
        self.sounding = False

    def blink(self, on_s: float, off_s: float) -> None:
        self.sounding = True


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipeline]:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 1000).start()
    pipeline = Pipeline(buffer, IDENT)
    yield pipeline
    buffer.close()


def fire(point: str) -> Event:
    gb = {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 40, "zone": 257, "pos": 0}
    return Event(
        Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", "fap", point,
        detail={"gb": gb | {"status": 0b11}},
    )  # fmt: skip


def stored(pipe: Pipeline, event: Event) -> Event:
    out = pipe.emit(event).result(timeout=10)
    assert isinstance(out, Event)
    return out


def test_the_point_under_test_goes_out_as_a_test_and_another_stays_real(pipe: Pipeline) -> None:
    clock = HandClock(100.0)
    pipe.under_test = PointsUnderTest(clock)
    buzzer = Buzzer()
    pipe.set_rules(LocalRules([("buzzer", "alarm", buzzer)]))
    pipe.under_test.mark("fap", "point3", 30)
    tested = stored(pipe, fire("point3"))
    assert tested.test is True
    assert tested.detail is not None and tested.detail["gb"]["status"] == 0b10  # bit 0: test
    assert not buzzer.sounding  # no evacuation for a detector being checked
    real = stored(pipe, fire("point5"))
    assert real.test is False and real.detail is not None and real.detail["gb"]["status"] == 0b11
    assert buzzer.sounding
    clock.now += 30  # the window is over: point3 is real again
    again = stored(pipe, fire("point3"))
    assert again.test is False


def test_a_poll_group_is_marked_point_by_point(pipe: Pipeline) -> None:
    pipe.under_test.mark("fap", "point3", 30)
    pipe.emit_many([fire("point3"), fire("point4")])
    # the group's stored events, in the recent list once stored
    fires = lambda: [(e.point, e.test) for e in pipe.recent() if e.device == "fap"]  # noqa: E731
    assert wait_until(lambda: len(fires()) == 2)
    assert fires() == [("point3", True), ("point4", False)]


def test_marking_is_one_point_bounded_and_ends_at_zero() -> None:
    clock = HandClock(100.0)
    marks = PointsUnderTest(clock)
    assert marks.mark("fap", "point3", 10**6)["seconds"] == LEASE_S  # renewed while it runs
    marks.mark("fap", "point4", 60)  # the next point of the walk: the previous one ends
    assert marks.now() == [("fap", "point4")]
    marks.mark("fap", "point4", 0)
    assert marks.now() == [] and not marks.active


def test_a_tested_manual_call_point_is_not_sent_to_the_centre_as_a_manual_alarm() -> None:
    marks = PointsUnderTest()
    marks.mark("manual-alarm", "contact", 30)
    pressed = Event(
        Kind.ALARM, Category.MANUAL, Severity.CRITICAL, "pressed", "按下", "manual-alarm",
        "contact", detail={"pin": 22, "gb": {"tf": 24, "flags": 4, "operator": 0}},
    )  # fmt: skip
    assert carries(pressed)
    tested = marks.apply(pressed)
    assert isinstance(tested, Event) and tested.test
    assert tested.detail == {"pin": 22} and not carries(tested)


def test_a_lease_not_renewed_ends_and_start_and_end_are_on_the_feed(pipe: Pipeline) -> None:
    """Review C item 8: a self-check that dies mid-point (nothing renews its lease) leaves
    the point real again within LEASE_S, not after its whole window (main: up to 3600 s),
    and the feed says when a point is under test and when that ended."""
    clock = HandClock(100.0)
    pipe.under_test = PointsUnderTest(clock, announce=pipe._under_test_changed)
    pipe.under_test.mark("fap", "point3", 120)  # the CLI asks for its watch window
    clock.now += LEASE_S - 1
    pipe.under_test.mark("fap", "point3", 120)  # renewed while the CLI runs
    clock.now += LEASE_S - 1
    pipe.under_test.tick()
    assert stored(pipe, fire("point3")).test is True  # still under test: renewed in time
    clock.now += 1  # the CLI died: no renewal
    pipe.under_test.tick()
    assert stored(pipe, fire("point3")).test is False
    said = lambda: [(e.state, (e.detail or {}).get("why")) for e in pipe.recent()  # noqa: E731
                    if e.point == "under_test"]  # fmt: skip
    assert wait_until(lambda: len(said()) == 2)
    assert said() == [("point_under_test", None), ("point_test_ended", "lease expired")]


def test_the_end_of_a_point_under_test_says_why() -> None:
    told: list[tuple[tuple[str, str], bool, str]] = []
    marks = PointsUnderTest(HandClock(0.0), announce=lambda *a: told.append(a))
    marks.mark("fap", "point3", 60)
    marks.mark("fap", "point3", 60)  # a renewal is not a new start
    marks.mark("fap", "point4", 60)
    marks.mark("fap", "point4", 0)
    assert told == [(("fap", "point3"), True, ""), (("fap", "point3"), False, "next point"),
                    (("fap", "point4"), True, ""), (("fap", "point4"), False, "done")]  # fmt: skip


@pytest.mark.slow
def test_a_self_check_left_at_its_prompt_stops_renewing_after_the_points_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A technician who walks away from "trigger it now" must not leave the detector under
    test for ever: the CLI renews the lease only within the point's window (timeout_s), and
    a real fire there is real again once the last lease runs out. Leases scaled to 0.3 s."""
    monkeypatch.setattr(selfcheck, "LEASE_S", 0.3)
    marks = PointsUnderTest()

    class Client:
        def call(self, cmd: str, **kw: object) -> object:
            assert cmd == "selfcheck_testing"
            return marks.mark(str(kw["device"]), str(kw["point"]), float(kw["seconds"]))  # type: ignore[arg-type]

    seen: dict[str, object] = {}

    def ask(prompt: str) -> str:  # the technician is gone: the prompt waits
        assert marks.now() == [("fap", "l1p17")]
        seen["expired"] = wait_until(lambda: marks.now() == [], timeout=10)
        fire = Event(Kind.ALARM, Category.FIRE, Severity.CRITICAL, "fire", "火警", "fap", "l1p17")
        seen["fire_is_test"] = marks.apply(fire).test
        return "s"

    walk = selfcheck.Walk(Client(), watch=None, timeout_s=1.0, ask=ask, script=None, say=str)  # type: ignore[arg-type]
    point = {"id": "fap/l1p17", "name": "点位17", "device": "fap", "point": "l1p17"}
    walk._start("[1/1]", point, {"note": ""})
    walk._testing(point, 0)
    assert seen == {"expired": True, "fire_is_test": False}
