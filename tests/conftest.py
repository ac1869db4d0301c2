"""Shared fixtures: real brokers, real pseudo-terminals, and a leak check on every test.

The leak check fails a test that leaves behind threads, child processes or
open file descriptors — a gateway that runs for years cannot leak any of them.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import gc
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import settings

from simulator.broker import Mosquitto
from simulator.pty import PtyPair

# the `world` marker: which tests are pure unit tests, and a check that keeps it true
pytest_plugins = ["tests.purity"]

SHARED_BROKER = ("127.0.0.1", 1883)
THREAD_GRACE_S = 5.0  # how long the leak check waits for a new thread to end

# CI replays the same examples every run (a red CI is then always the code's doing, and
# reproducible); a developer's run draws new ones, which is where new failures are
# found, and prints the blob to replay one with @reproduce_failure.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def _open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used, already closed
        # pytest's own capture files and /dev/null are not ours to judge
        if target.startswith("/dev/null"):
            continue
        fds.add(fd)
    return fds


def _children() -> set[int]:
    """Live child processes of this process (from /proc/self/task/*/children)."""
    kids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            kids.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    return kids


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """gpiozero's MockFactory: the Pi's GPIO chip, the one thing that cannot exist here
    (a module of the alarmgw-sim factory's tests gives `factory` its own meaning)."""
    f = MockFactory()
    yield f
    f.close()


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves threads, asyncio tasks, child processes or file
    descriptors behind."""
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    kids_before = _children()
    leaked_tasks: list[str] = []
    cancel_all = asyncio.runners._cancel_all_tasks

    def cancel_all_noting_leaks(loop: asyncio.AbstractEventLoop) -> None:
        # asyncio.run() cancels whatever is still pending when the main coroutine returns,
        # silently: a task still running then is a task the code under test forgot.
        leaked_tasks.extend(
            f"{t.get_name()} ({getattr(t.get_coro(), '__qualname__', '?')})"
            for t in asyncio.all_tasks(loop)
            if not t.done()
        )
        cancel_all(loop)

    asyncio.runners._cancel_all_tasks = cancel_all_noting_leaks
    try:
        yield
    finally:
        asyncio.runners._cancel_all_tasks = cancel_all
    if request.node.get_closest_marker("leaks_ok"):
        return
    leaked_threads = [t for t in threading.enumerate() if t not in threads_before]
    for t in leaked_threads:
        t.join(timeout=THREAD_GRACE_S)  # a thread shutting down gets its chance to finish
    leaked_threads = [t.name for t in leaked_threads if t.is_alive()]
    new_fds = _open_fds() - fds_before
    if new_fds:  # an fd held only by garbage is not a leak: collect it, then judge. A full
        gc.collect()  # collection costs ~50 ms a test, so only when there is an fd to judge
        new_fds = _open_fds() - fds_before
    leaked_fds = {}
    for fd in new_fds:
        try:
            leaked_fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    leaked_kids = _children() - kids_before
    problems = []
    if leaked_tasks:
        problems.append(f"asyncio tasks left pending: {leaked_tasks}")
    if leaked_threads:
        problems.append(f"threads left running: {leaked_threads}")
    if leaked_kids:
        problems.append(f"child processes left running: {sorted(leaked_kids)}")
    if leaked_fds:
        problems.append(f"file descriptors left open: {leaked_fds}")
    if problems:
        pytest.fail("resource leak: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private mosquitto on a free port that the test may stop, kill and restart."""
    b = Mosquitto(tmp_path_factory.mktemp("broker"))
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def shared_broker_url() -> tuple[str, int]:
    """The machine's own mosquitto; use only with `unique_topic` and never stop it."""
    return SHARED_BROKER


@pytest.fixture
def unique_topic() -> str:
    """A topic prefix no other test (or run) uses, for tests on the shared broker."""
    return f"alarmgw-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    """Two linked pseudo-terminal paths (`.a`, `.b`): a virtual RS-485 cable."""
    pair = PtyPair()
    try:
        yield pair
    finally:
        pair.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaks_ok: skip the resource leak check (explain why)")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
