"""The `world` marker stays true: an unmarked test that reaches out of the process fails,
so `pytest -m "not world"` (the pure unit tests CI runs on emulated armhf) selects only
tests that run in the process alone."""

from __future__ import annotations

import pytest

CONFTEST = 'pytest_plugins = ["tests.purity"]\n'

TESTS = """
import socket
import subprocess
import sys
import threading

import pytest


def test_files_and_threads_are_pure(tmp_path):
    t = threading.Thread(target=(tmp_path / "f").write_text, args=("x",))
    t.start()
    t.join()


def test_starts_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_opens_a_socket():
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(f"\\0alarmgw-purity-{id(s)}")  # abstract: nothing left on disk


@pytest.mark.world
def test_marked_may_start_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def test_an_unmarked_test_that_reaches_out_fails_and_says_how_to_mark_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_starts_a_process is not marked `world` but starts a process*"
            "Mark it @pytest.mark.world*",
            "*test_opens_a_socket is not marked `world` but opens a socket*",
        ]
    )


def test_not_world_selects_the_pure_tests_and_a_world_fixture_marks_its_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        CONFTEST + "import pytest\n\n@pytest.fixture\ndef broker():\n    return None\n"
    )
    pytester.makepyfile(test_inner=TESTS + "\n\ndef test_uses_a_broker(broker):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "not world")
    result.assert_outcomes(passed=3, errors=2, deselected=2)
