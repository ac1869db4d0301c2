"""The shell scripts CI and developers run: they parse, and shellcheck finds nothing.

(systemd/install.sh is checked the same way, with its dry runs, in test_systemd_unit.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    p
    for p in [*(ROOT / "scripts").iterdir(), ROOT / ".ci" / "run"]
    if p.is_file() and p.read_text().startswith("#!/usr/bin/env bash")
)


def test_the_scripts_are_found() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"test", "demo", "roots", "test-pi", "run"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_parses_and_is_executable(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_nothing() -> None:
    # -x follows `. scripts/setup.sh`, run from the root as the scripts cd there
    result = subprocess.run(
        ["shellcheck", "-x", *(str(p.relative_to(ROOT)) for p in SCRIPTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout
