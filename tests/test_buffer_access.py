"""The buffer started by a service user that cannot look where its file is (a directory
it may not search): "cannot tell" is not "missing". Real files, a real unprivileged
process (root drops to `nobody` in a forked child)."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import EventBuffer
from tests.mounts import needs_root
from tests.uplink_helpers import IDENT, alarm


def _start_as_nobody(db: Path) -> dict[str, Any]:
    """Start a buffer on `db` in a child running as nobody, store an alarm; what it saw."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            nobody = pwd.getpwnam("nobody")
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            buf = EventBuffer(db, IDENT, 1000, retry_s=60).start()
            record = buf.submit(alarm()).result(10)
            seen = {"degraded": buf.degraded, "seq": record.seq, **buf.stats()}
            buf.close()
        except BaseException as exc:  # anything escaping start() is the bug
            seen = {"raised": repr(exc)}
        os.write(write_end, json.dumps(seen).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


@needs_root
@pytest.mark.world
def test_a_buffer_it_cannot_look_at_degrades_and_is_left_alone(tmp_path: Path) -> None:
    """The file and its sidecar exist, in a directory the service user may not search:
    the buffer starts degraded (no PermissionError out of start()), holds the alarm with
    a seq that cannot repeat an earlier one, names the cause, and touches no file."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "buffer.db"
    with EventBuffer(db, IDENT, 1000) as buf:
        last = buf.submit(alarm()).result(5).seq or 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir())
    state.chmod(0o700)  # root's: nobody cannot search it
    seen = _start_as_nobody(db)
    assert "raised" not in seen, seen["raised"]
    assert seen["degraded"] and seen["seq"] > last
    assert "Permission denied" in seen["degraded_reason"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir()) == before
