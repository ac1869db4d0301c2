"""The two markers that sort the tests, kept true as tests are added (a pytest plugin).

`world` — where a test runs. A pure unit test runs inside the test process alone: it
starts no process and opens no socket and no pseudo-terminal (files, threads and SQLite
are fine). Every other test is marked `world`: by a fixture that reaches out
(WORLD_FIXTURES), by its module (WORLD_MODULES), or by hand with @pytest.mark.world.
`pytest -m "not world"` selects the pure unit tests; CI runs them on an emulated 32-bit
ARM userland (scripts/test-pi --unit), where every process and every timing costs five
to ten times more.

`slow` — how long a test takes: a second or more, because it starts agents, brokers or
simulators, waits out real timeouts (a device's, a lock's, a spill period) or fuzzes at
length. By its module (SLOW_MODULES) or by hand with @pytest.mark.slow. `pytest -m "not
slow"` is the developers' fast lane (README: under a minute); the full suite, which CI
runs, includes them. The two axes are independent: a quick socket test is `world` and
not `slow`; a pure test that waits for a lock is `slow` and not `world`. At the end of a
run, unmarked tests that took a second or more are listed, to be marked or made faster.

So that the `world` selection cannot drift, an audit hook watches every test that is not
marked `world`, on every run: one that starts a process or opens a socket or a
pseudo-terminal fails, saying what it did and how to mark it. A module-scoped fixture
reaches out while the first test that uses it runs; in a full run that may be a `world`
test, so the run of the pure tests alone (CI, on armhf) is where a test sharing it is
caught.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

# fixtures (tests/conftest.py) that bring a broker or a pseudo-terminal with them
WORLD_FIXTURES = frozenset({"broker", "shared_broker_url", "unique_topic", "pty_pair"})

# modules whose tests reach out almost throughout (a module of mostly pure tests marks its
# few others by hand instead)
WORLD_MODULES = frozenset(
    {
        "test_bench_smoke",
        "test_cli",
        "test_commands",
        "test_control",
        "test_downlink",
        "test_end_to_end",
        "test_gb26875_centre",
        "test_harness",
        "test_journal",
        "test_killcycles",
        "test_line_faults",
        "test_lines",
        "test_modbus",
        "test_pinfactory",
        "test_purity",
        "test_restart",
        "test_scripts",
        "test_service",
        "test_simulator",
        "test_systemd_boot",
        "test_systemd_unit",
        "test_tls",
        "test_uplink",
        "test_uplink_dns",
    }
)

# modules whose tests start agents, brokers, simulators or wait out real timeouts almost
# throughout (a module of mostly quick tests marks its few slow ones by hand instead)
SLOW_MODULES = frozenset(
    {
        "test_bench_smoke",
        "test_cli",
        "test_commands",
        "test_end_to_end",
        "test_killcycles",
        "test_line_faults",
        "test_lines",
        "test_polls_first",
        "test_restart",
        "test_runtime",
        "test_scan",
        "test_service",
        "test_storage",
        "test_systemd_boot",
        "test_uplink",
        "test_uplink_acks",
        "test_uplink_dns",
    }
)
SLOW_S = 1.0  # an unmarked test taking this long is listed at the end of the run

_PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec", "os.system"}
)
_SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto"})

_watched: list[str] = []  # what the current unmarked test did (the first few things)
_watching = False


def _reaching_out(event: str, args: tuple[Any, ...]) -> str | None:
    if event in _PROCESS_EVENTS:
        what = args[1] if event == "subprocess.Popen" and len(args) > 1 else args[:1]
        return f"starts a process ({event} {what!r})"
    if event in _SOCKET_EVENTS:
        return f"opens a socket ({event} {args[1:2]!r})"
    path = args[0] if event == "open" else None
    if isinstance(path, str) and path.startswith(("/dev/pts/", "/dev/ptmx")):
        return f"opens a pseudo-terminal ({args[0]})"
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching and len(_watched) < 5:
        what = _reaching_out(event, args)
        if what is not None:
            _watched.append(what)


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if hasattr(item, "module") else ""


def is_world(item: pytest.Item) -> bool:
    module = _module(item)
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(
        item.get_closest_marker("world") or module in WORLD_MODULES or fixtures & WORLD_FIXTURES
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: takes a second or more (agents, brokers, real timeouts): left out of the "
        "fast lane, pytest -m 'not slow' (tests/purity.py)",
    )
    config.addinivalue_line(
        "markers",
        "world: starts a process or opens a socket or pseudo-terminal: not a pure unit test "
        "(tests/purity.py)",
    )
    # audit hooks cannot be removed: one per process, even when pytester runs pytest again
    if not getattr(sys, "_alarmgw_purity_hook", False):
        sys.addaudithook(_audit)
        sys._alarmgw_purity_hook = True  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_world(item) and not item.get_closest_marker("world"):
            item.add_marker(pytest.mark.world)
        if _module(item) in SLOW_MODULES and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


_unmarked_slow: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slow" not in report.keywords:
        _unmarked_slow[report.nodeid] = _unmarked_slow.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    slow = sorted((s, n) for n, s in _unmarked_slow.items() if s >= SLOW_S)
    if slow:
        terminalreporter.write_sep("-", f"not marked slow, but took {SLOW_S:g} s or more")
        for seconds, nodeid in reversed(slow):
            terminalreporter.write_line(f"{seconds:6.2f}s {nodeid}  (tests/purity.py)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _watching  # noqa: PLW0603 - the audit hook is process-wide; so is this flag
    _watched.clear()
    _watching = item.get_closest_marker("world") is None
    try:
        return (yield)
    finally:
        _watching = False


@pytest.fixture(autouse=True)
def purity_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an unmarked test that reached out of the process (see the module docstring)."""
    yield
    if _watching and _watched:
        pytest.fail(
            f"{request.node.nodeid} is not marked `world` but "
            + "; ".join(_watched)
            + ": pure unit tests (pytest -m 'not world', run on emulated armhf in CI) stay in "
            "the process. Mark it @pytest.mark.world (tests/purity.py says why).",
            pytrace=False,
        )
