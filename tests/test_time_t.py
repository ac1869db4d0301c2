"""Timestamps past 2038 on a 32-bit time_t (32-bit Raspberry Pi OS), caught on any machine.

There, libc's gmtime/localtime/mktime and Python's fromtimestamp refuse every second
after 2038-01-19T03:14:07Z. A gateway installed today is still on site then, and a
timestamp is also a field of a message, which may be odd. So that a 64-bit development
machine catches what only a 32-bit Pi would show:
- no code turns a timestamp into a date through time_t (checked in the source);
- clock_time gives the right local time past 2038 with the time module refusing as a
  32-bit one does, and never raises on any number (CI also runs these tests on a real
  32-bit armhf userland: scripts/test-pi).
"""

from __future__ import annotations

import ast
import datetime
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import clock
from agent.cli import render as cli_render

ROOT = Path(__file__).resolve().parent.parent
TIME_T_MAX = 2**31 - 1  # 2038-01-19T03:14:07Z

# These go through a time_t when given a timestamp (without one they read the clock,
# which no code can avoid); astimezone() without a zone goes through libc's localtime.
THROUGH_TIME_T = {"gmtime", "localtime", "ctime", "mktime", "fromtimestamp", "utcfromtimestamp"}


def time_t_calls(source: str) -> list[tuple[int, str]]:
    """(line, name) of each call in `source` that converts a timestamp through time_t."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        given_args = bool(node.args or node.keywords)
        if (name in THROUGH_TIME_T and given_args) or (name == "astimezone" and not given_args):
            found.append((node.lineno, name))
    return sorted(found)


def test_no_code_turns_a_timestamp_into_a_date_through_time_t() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}()"
        for folder in ("agent", "drivers", "simulator", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != Path(__file__).resolve()  # its oracle below calls localtime in range
        for line, name in time_t_calls(path.read_text())
    ]
    assert not found, (
        "these refuse timestamps after 2038 on a 32-bit time_t (32-bit Raspberry Pi OS); "
        "use date arithmetic (datetime(1970, 1, 1) + timedelta) instead:\n" + "\n".join(found)
    )


def test_the_source_check_sees_each_kind_of_call() -> None:
    source = (
        "time.localtime(t)\ntime.gmtime(t)\ndatetime.datetime.fromtimestamp(t, UTC)\n"
        "date.fromtimestamp(t)\nmktime(tm)\nd.astimezone()\n"
        "time.localtime()\ntime.gmtime()\nd.astimezone(zone)\n"  # the clock now; a zone
    )
    assert [name for _, name in time_t_calls(source)] == [
        "localtime", "gmtime", "fromtimestamp", "fromtimestamp", "mktime", "astimezone"
    ]  # fmt: skip


@pytest.fixture
def time_t_32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time module refuses what a 32-bit time_t cannot hold, as on 32-bit Pi OS."""

    def refusing(real: Callable[..., object]) -> Callable[..., object]:
        def call(secs: float | None = None) -> object:
            if secs is not None and not -(2**31) <= secs <= TIME_T_MAX:
                raise OverflowError("timestamp out of range for platform time_t")
            return real(secs)

        return call

    for name in ("gmtime", "localtime", "ctime"):
        monkeypatch.setattr(time, name, refusing(getattr(time, name)))


def _set_zone(name: str | None) -> None:
    """The site's zone as the technician's shell has it ($TZ; None: /etc/localtime)."""
    if name is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = name
    time.tzset()  # agent.clock.local_zone follows $TZ by itself


@pytest.fixture
def site_zone() -> Iterator[Callable[[str], None]]:
    before = os.environ.get("TZ")
    yield _set_zone
    _set_zone(before)


@pytest.mark.parametrize(
    ("zone", "first_second", "summer_2040"),
    [
        ("UTC", "03:14:08", "12:00:00"),
        ("Asia/Shanghai", "11:14:08", "20:00:00"),
        ("Europe/Berlin", "04:14:08", "14:00:00"),  # summer time past 2038 too
        ("America/New_York", "22:14:08", "08:00:00"),
    ],
)
def test_clock_time_past_2038_on_a_32_bit_time_t(
    time_t_32: None,
    site_zone: Callable[[str], None],
    zone: str,
    first_second: str,
    summer_2040: str,
) -> None:
    site_zone(zone)
    assert cli_render.clock_time((TIME_T_MAX + 1) * 1000) == first_second  # 03:14:08Z
    assert cli_render.clock_time(2_224_756_800_000) == summer_2040  # 2040-07-01T12:00:00Z


@given(
    st.integers(-(2**31) * 1000, TIME_T_MAX * 1000),
    st.sampled_from(["UTC", "Asia/Shanghai", "Europe/Berlin", "America/New_York"]),
)
def test_clock_time_agrees_with_libc_wherever_libc_can_answer(ts_ms: int, zone: str) -> None:
    """Zone data and libc's localtime agree: summer time, historic and current offsets."""
    before = os.environ.get("TZ")
    try:
        _set_zone(zone)
        libc = time.strftime("%H:%M:%S", time.localtime(ts_ms // 1000))
        assert cli_render.clock_time(ts_ms) == libc
    finally:
        _set_zone(before)


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, 1e300, 10**20, -(10**20)])
def test_clock_time_never_raises_on_an_odd_number(odd: float) -> None:
    # on a 64-bit time_t too: localtime refused these with OverflowError or ValueError
    assert cli_render.clock_time(odd) == "--:--:--"


def test_local_time_past_2038_with_a_posix_rule_on_a_32_bit_time_t(
    monkeypatch: pytest.MonkeyPatch, site_zone: Callable[[str], None]
) -> None:
    """TZ=CST-8 (no zone database entry) in 2040 on a 32-bit time_t: libc's localtime() of
    now refuses; the daily self-test's "now" is still Beijing time (review item 10)."""
    site_zone("CST-8")

    def refuses(secs: float | None = None) -> time.struct_time:
        raise OverflowError("timestamp out of range for platform time_t")

    monkeypatch.setattr(time, "localtime", refuses)
    monkeypatch.setattr(time, "time", lambda: 2_224_756_800.0)  # 2040-07-01T12:00:00Z
    now = clock.local_now()
    assert (now.year, now.month, now.day, now.hour) == (2040, 7, 1, 20)
    assert now.utcoffset() == datetime.timedelta(hours=8)


def test_the_local_zone_follows_a_change_of_tz(site_zone: Callable[[str], None]) -> None:
    site_zone("Asia/Shanghai")
    assert clock.local_zone().utcoffset(datetime.datetime(2026, 1, 1)) == datetime.timedelta(
        hours=8
    )
    site_zone("Europe/Berlin")  # set-timezone while the agent runs
    assert clock.local_zone().utcoffset(datetime.datetime(2026, 1, 1)) == datetime.timedelta(
        hours=1
    )
