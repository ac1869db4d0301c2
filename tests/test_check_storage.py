"""`alarmgw check-config` looks at storage as the service will see it, and never prints a
traceback: a buffer directory the service user cannot write, files left behind by a
run as root, a path outside the unit's writable paths, a card short of room, nested
TOML, a closed pipe, a symlinked secret.

The service user is stood in for by `nobody` (on every Linux); directories it must
reach are made under /tmp with mode 0755 (pytest's own tmp_path is closed to it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config_files, storage_check
from agent.cli import EXIT_BAD_CONFIG, EXIT_CUT_SHORT, EXIT_OK
from agent.config import load_config
from agent.storage_check import check_storage, read_unit
from tests.mounts import needs_root, tmpfs
from tests.test_config import good_text, run_cli, write

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "alarmgw.service"
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def as_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == NOBODY.pw_uid:
        pytest.skip("running as nobody")
    monkeypatch.setattr(config_files, "SERVICE_USER", "nobody")


@pytest.fixture
def no_unit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As on a machine where the unit is not installed (this one, normally)."""
    monkeypatch.setattr(storage_check, "UNIT_FILE", tmp_path / "no-such.service")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone can reach (and, unless chowned, only root can write)."""
    path = Path(tempfile.mkdtemp(prefix="alarmgw-check-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config_at(tmp_path: Path, buffer: Path, *extra: str) -> Path:
    text = good_text().replace('path = "buffer.db"', f'path = "{buffer}"')
    return write(tmp_path, "\n".join([text, *extra]))


def check(tmp_path: Path, buffer: Path) -> storage_check.StorageReport:
    return check_storage(load_config(config_at(tmp_path, buffer)))


# --- the service user ----------------------------------------------------------------------


@pytest.mark.usefixtures("as_nobody", "no_unit")
def test_a_buffer_directory_the_service_user_cannot_write_fails_the_check(
    tmp_path: Path, open_dir: Path
) -> None:
    config = config_at(tmp_path, open_dir / "buffer.db")  # root's 0755: sudo could write it
    code, out = run_cli("check-config", str(config))
    assert code == EXIT_BAD_CONFIG, out
    assert "buffer.path: the service runs as nobody and cannot write" in out
    assert f"sudo chown nobody: {open_dir}" in out
    os.chown(open_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    assert run_cli("check-config", str(config))[0] == EXIT_OK


@pytest.mark.usefixtures("as_nobody", "no_unit")
def test_buffer_files_left_by_a_run_as_root_fail_the_check(tmp_path: Path, open_dir: Path) -> None:
    os.chown(open_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    (open_dir / "pointstate.db").write_bytes(b"")  # root's, 0644: `sudo alarmgw run` left it
    problems = check(tmp_path, open_dir / "buffer.db").problems
    assert len(problems) == 1 and "pointstate.db" in problems[0][1]


@pytest.mark.usefixtures("as_nobody", "no_unit")
def test_a_directory_the_service_user_cannot_reach_fails_the_check(tmp_path: Path) -> None:
    problems = check(tmp_path, tmp_path / "state" / "buffer.db").problems  # under 0700 dirs
    assert len(problems) == 1 and "cannot reach" in problems[0][1]


# --- the unit's sandbox --------------------------------------------------------------------


def test_the_installed_units_writable_paths_are_read(tmp_path: Path) -> None:
    sandbox = read_unit(UNIT)
    assert sandbox is not None and sandbox.protect_system == "strict"
    assert "/var/lib/alarmgw" in {str(p) for p in sandbox.writable}
    dropin = tmp_path / "alarmgw.service.d"
    dropin.mkdir()
    shutil.copy(UNIT, tmp_path / "alarmgw.service")
    (dropin / "override.conf").write_text("[Service]\nReadWritePaths=-/data/alarmgw\n")
    edited = read_unit(tmp_path / "alarmgw.service")
    assert edited is not None and "/data/alarmgw" in {str(p) for p in edited.writable}


def test_a_buffer_outside_the_units_writable_paths_fails_the_check(tmp_path: Path) -> None:
    config = load_config(config_at(tmp_path, Path("/opt/alarmgw/buffer.db")))
    problems = check_storage(config, UNIT).problems
    assert len(problems) == 1 and "read-only for the service" in problems[0][1]
    assert "ReadWritePaths=/opt/alarmgw" in problems[0][1]
    default = load_config(config_at(tmp_path, Path("/var/lib/alarmgw/buffer.db")))
    assert check_storage(default, UNIT).problems == []


def test_a_buffer_in_the_services_private_tmp_fails_the_check(tmp_path: Path) -> None:
    config = load_config(config_at(tmp_path, Path("/var/tmp/alarmgw/buffer.db")))
    problems = check_storage(config, UNIT).problems
    assert len(problems) == 1 and "emptied at every restart" in problems[0][1]


@pytest.mark.parametrize("where", ["/run/alarmgw/buffer.db", "/dev/shm/alarmgw/buffer.db"])
def test_a_buffer_in_memory_fails_the_check(tmp_path: Path, where: str) -> None:
    """/run/alarmgw is the unit's RuntimeDirectory, so it is writable, but it lives in
    RAM and systemd empties it at every stop: every queued event would be lost."""
    config = load_config(config_at(tmp_path, Path(where)))
    problems = check_storage(config, UNIT).problems
    assert len(problems) == 1 and "in memory (tmpfs)" in problems[0][1]


# --- room on the card ----------------------------------------------------------------------


@needs_root
@pytest.mark.usefixtures("no_unit")
@pytest.mark.world
def test_a_card_short_of_room_fails_or_warns(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", size="8m") as small:
        code, out = run_cli("check-config", str(config_at(tmp_path, small / "buffer.db")))
        assert code == EXIT_BAD_CONFIG and "only 8.0 MB free" in out
    with tmpfs(tmp_path / "medium", size="40m") as medium:
        config = config_at(tmp_path, medium / "buffer.db", "")
        text = config.read_text().replace("max_events = 1000", "max_events = 100000")
        config.write_text(text)
        code, out = run_cli("check-config", str(config))
        assert code == EXIT_OK, out
        assert "warning: buffer.max_events: a full buffer (100000 records) needs" in out


# --- no traceback, whatever the file or the pipe -------------------------------------------


def _check_config_process(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


@pytest.mark.world
def test_deeply_nested_toml_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000
    result = _check_config_process(write(tmp_path, good_text() + f"\nextra = {deep}\n"))
    assert result.returncode == EXIT_BAD_CONFIG
    assert "nested hundreds of levels deep" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.world
def test_a_deeply_nested_profile_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    text = good_text().replace('dirs = ["', f'dirs = ["{profiles}", "')
    text += '\n[[devices]]\nid = "deep-1"\nline = "bus-a"\nunit_id = 99\nprofile = "deep"\n'
    result = _check_config_process(write(tmp_path, text))
    assert result.returncode == EXIT_BAD_CONFIG, result.stdout
    deep = profiles / "deep.toml"
    assert f"{deep}: (file): not usable: arrays or tables nested hundreds" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.world
def test_check_config_into_a_closed_pipe_ends_quietly() -> None:
    """`alarmgw check-config FILE | head -1`: the reader is gone before the output is
    written (its end of the pipe is closed first, so this does not depend on timing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "check-config", str(REPO / "config/example.toml")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == EXIT_CUT_SHORT


# --- a symlinked secret ----------------------------------------------------------------------


def _with_credentials(tmp_path: Path, creds: Path) -> Path:
    host = '[uplink]\nhost = "127.0.0.1"\n'
    return write(tmp_path, good_text().replace(host, f'{host}credentials_file = "{creds}"\n'))


def test_a_symlinked_credentials_file_is_judged_by_where_it_leads(
    tmp_path: Path, open_dir: Path
) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("gw1\nsecret\n")
    secret.chmod(0o600)
    safe_link = tmp_path / "creds-link"  # in a directory only root can write
    safe_link.symlink_to(secret)
    code, out = run_cli("check-config", str(_with_credentials(tmp_path, safe_link)))
    assert code == EXIT_OK, out
    open_dir.chmod(0o1777)  # like /tmp: anyone could swap the link for their own
    loose_link = open_dir / "creds-link"
    loose_link.symlink_to(secret)
    code, out = run_cli("check-config", str(_with_credentials(tmp_path, loose_link)))
    assert code == EXIT_BAD_CONFIG
    assert "uplink.credentials_file" in out and "which others can write" in out
    os.chown(secret, NOBODY.pw_uid, NOBODY.pw_gid, follow_symlinks=True)  # someone else's
    code, out = run_cli("check-config", str(_with_credentials(tmp_path, safe_link)))
    assert code == EXIT_BAD_CONFIG and "may only be owned by root or alarmgw" in out
