"""The clock probe: adjtimex(2) semantics, and cheap enough to call per event.

The kernel's answer is cross-checked against a tiny C program compiled against
the system's own <sys/timex.h>, so a wrong struct layout (status read from the
wrong offset) fails here rather than on a Pi.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import clock
from agent.clock import STA_UNSYNC, TIME_ERROR, KernelClock, clock_probe, is_synced

TIME_OK = 0
TIME_INS = 1  # leap second pending: still synchronised

# --- adjtimex semantics -------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "synced"),
    [
        (KernelClock(TIME_OK, 0), True),
        (KernelClock(TIME_INS, 0x2001), True),  # STA_PLL|STA_NANO, no UNSYNC
        (KernelClock(TIME_OK, STA_UNSYNC), False),
        (KernelClock(TIME_OK, STA_UNSYNC | 0x2000), False),
        (KernelClock(TIME_ERROR, 0), False),
        (KernelClock(-1, 0), False),  # a denied call (seccomp EPERM)
        (None, False),  # libc or adjtimex unavailable
    ],
)
def test_the_verdict_follows_adjtimex(answer: KernelClock | None, synced: bool) -> None:
    assert is_synced(answer) is synced


def test_forced_sources_and_unknown_ones() -> None:
    assert clock_probe("assume-synced")() is True
    assert clock_probe("assume-unsynced")() is False
    assert clock_probe("gps")() is False


def test_no_adjtimex_answers_unsynced_without_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "_ADJTIMEX", None)
    assert clock.read_kernel_clock() is None
    assert clock_probe("kernel")() is False


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the reference adjtimex reader")
    out = tmp_path_factory.mktemp("timex")
    src = out / "timex.c"
    src.write_text(
        "#include <stdio.h>\n#include <sys/timex.h>\n"
        "int main(void) { struct timex t = {0}; int s = adjtimex(&t);\n"
        '  printf("%d %d\\n", s, t.status); return 0; }\n'
    )
    subprocess.run([cc, "-o", str(out / "timex"), str(src)], check=True, timeout=60)
    return out / "timex"


@pytest.mark.world
def test_the_kernel_answer_matches_glibcs_own_struct_timex(c_reader: Path) -> None:
    ours = clock.read_kernel_clock()
    assert ours is not None, "adjtimex must be callable on this Linux host"
    result = subprocess.run([str(c_reader)], capture_output=True, text=True, timeout=10, check=True)
    state, status = (int(x) for x in result.stdout.split())
    # The flags that matter are stable between two reads a few ms apart.
    assert ours.status & STA_UNSYNC == status & STA_UNSYNC
    assert (ours.state == TIME_ERROR) == (state == TIME_ERROR)
    expected = state != TIME_ERROR and not status & STA_UNSYNC
    assert clock_probe("kernel")() is expected


# --- cost ---------------------------------------------------------------------

_spawned: list[str] = []
_armed = threading.Event()


def _count_spawns(event: str, args: tuple[object, ...]) -> None:
    # Audit hooks cannot be removed, so this one does nothing unless armed.
    if _armed.is_set() and event in ("subprocess.Popen", "os.fork", "os.posix_spawn", "os.exec"):
        _spawned.append(event)


sys.addaudithook(_count_spawns)


@pytest.fixture
def spawn_counter() -> Iterator[list[str]]:
    _spawned.clear()
    _armed.set()
    try:
        yield _spawned
    finally:
        _armed.clear()


@pytest.mark.world
def test_the_counter_sees_a_spawn(spawn_counter: list[str]) -> None:
    # Proves the check below can fail: find_library("c") forks ldconfig.
    import ctypes.util

    ctypes.util.find_library("c")
    assert spawn_counter


def test_a_thousand_probes_spawn_no_process(spawn_counter: list[str]) -> None:
    probe = clock_probe("kernel")
    answers = [probe() for _ in range(1000)]
    assert spawn_counter == []
    assert all(isinstance(a, bool) for a in answers)


def test_probes_never_look_up_or_load_a_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import ctypes.util

    loads: list[object] = []
    monkeypatch.setattr(ctypes.util, "find_library", loads.append)
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: loads.append(a))
    probe = clock_probe("kernel")
    for _ in range(100):
        probe()
    assert loads == []  # libc's adjtimex was bound once, at import
    assert clock.read_kernel_clock() is not None  # and still answers
