"""Seqs are the feed's identity: they are never handed out twice, also when the sidecar
(the file of reserved seq ceilings) cannot be written, and a restart announces only what
may really be lost. Real SQLite files and real read-only mounts (root only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import MAX_VOLATILE, EventBuffer
from core.events import Lane
from tests.mounts import needs_root, read_only_file
from tests.uplink_helpers import IDENT, alarm, reading, wait_until


def open_buffer(path: Path, max_events: int = 100_000, **kw: object) -> EventBuffer:
    return EventBuffer(path, IDENT, max_events, **kw).start()  # type: ignore[arg-type]


def _events(buf: EventBuffer) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in buf.pending(Lane.EVENT, 0, 100_000)]


def _continuity_notes(buf: EventBuffer) -> list[dict[str, Any]]:
    return [e for e in _events(buf) if e["state"] == "buffer_recovered"]


@needs_root
@pytest.mark.world
def test_held_seqs_are_not_reused_when_the_sidecar_could_not_record_them(
    tmp_path: Path,
) -> None:
    """Database writable, sidecar read-only: the database fills up, alarms are held in
    RAM with seqs nothing on the card records, the agent stops. The next start (sidecar
    still read-only, then writable again) must not hand those seqs out again."""
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:  # a sidecar with marks from an earlier, healthy run
        buf.submit(alarm()).result(5)
    with read_only_file(db.with_name("b.db.seq")):
        with open_buffer(db, max_pages=30, retry_s=60) as buf:
            held = [buf.submit(alarm("满" * 2000)).result(5).seq or 0 for _ in range(80)]
            assert buf.degraded
        with open_buffer(db) as buf:  # sidecar still read-only, database writable
            again = [buf.submit(alarm()).result(5).seq or 0 for _ in range(3)]
            notes = _continuity_notes(buf)
        assert min(again) > max(held)
        assert notes, "a restart that cannot vouch for its seqs says so"
    with open_buffer(db) as buf:  # the sidecar is writable again
        later = buf.submit(alarm()).result(5).seq or 0
    assert later > max(again)


@needs_root
@pytest.mark.world
def test_a_sidecar_writable_again_after_the_stop_repeats_no_seq_unannounced(
    tmp_path: Path,
) -> None:
    """The same, but the card is healthy again at the next start: the stale sidecar
    cannot know what the stopped run held. That run jumped its seqs when it saw that
    nothing recorded them, and named the few it held before it saw it."""
    db = tmp_path / "b.db"
    with open_buffer(db) as buf:
        buf.submit(alarm()).result(5)
    with (
        read_only_file(db.with_name("b.db.seq")),
        open_buffer(db, max_pages=30, retry_s=60) as buf,
    ):
        held = [buf.submit(alarm("满" * 2000)).result(5).seq or 0 for _ in range(80)]
        assert buf.degraded
        assert wait_until(lambda: len(_continuity_notes(buf)) >= 4)
        before = _continuity_notes(buf)
    with open_buffer(db) as buf:
        again = [buf.submit(alarm()).result(5).seq or 0 for _ in range(100)]
    repeated = sorted(set(again) & set(held))
    announced = [
        seq
        for note in before
        if "may_repeat" in note["detail"] and note["detail"]["lane"] == "event"
        for seq in range(note["detail"]["may_repeat"][0], note["detail"]["may_repeat"][1] + 1)
    ]
    assert set(repeated) <= set(announced)
    assert len(announced) < 5  # only the batch that met the full database, not all 80


_READINGS_CHILD = """
import sys, time
from pathlib import Path
from agent.buffer import MAX_VOLATILE, EventBuffer
from tests.uplink_helpers import IDENT, reading

buf = EventBuffer(Path(sys.argv[1]), IDENT, 1_000_000, spill_s=600).start()
seqs = [buf.submit(reading(n)).result(10).seq for n in range(5)]  # in RAM, never acked
print(" ".join(map(str, seqs)), flush=True)
time.sleep(600)  # until killed
"""


def _kill_with_readings_in_ram(db: Path) -> list[int]:
    """A child hands out five readings (in RAM, awaiting their PUBACK) and is killed -9;
    returns their seqs."""
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(
        [sys.executable, "-c", _READINGS_CHILD, str(db)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            handed_out = [int(s) for s in child.stdout.readline().split()]
        finally:
            child.kill()
            child.wait(10)
    assert len(handed_out) == 5
    return handed_out


@pytest.mark.world
@pytest.mark.parametrize("sidecar", ["missing", "zero-filled"])
def test_a_database_without_a_readable_sidecar_repeats_no_seq_and_says_so(
    tmp_path: Path, sidecar: str
) -> None:
    """Review C item 6: kill -9 with readings in RAM, then the sidecar is lost (an
    operator removed it, fsck, a power cut left it zero-filled). The database alone
    cannot say which seqs left the process: the restart jumps above them and announces
    continuity unknown on both lanes, instead of handing 1..5 out again silently."""
    db = tmp_path / "b.db"
    handed_out = _kill_with_readings_in_ram(db)
    side = db.with_name("b.db.seq")
    if sidecar == "missing":
        side.unlink()
    else:
        side.write_bytes(bytes(side.stat().st_size))
    with open_buffer(db) as buf:
        again = [buf.submit(reading(9)).result(5).seq or 0 for _ in range(5)]
        notes = _continuity_notes(buf)
    assert min(again) > max(handed_out), f"seqs {handed_out} handed out again: {again}"
    assert {n["detail"]["lane"] for n in notes} == {"event", "telemetry"}
    assert all("sidecar" in n["text"] and "continuity unknown" in n["text"] for n in notes)
    assert all(
        n["detail"]["jump_to"] <= min(again) for n in notes if n["detail"]["lane"] == "telemetry"
    )


def test_a_brand_new_buffer_without_a_sidecar_starts_at_one_unannounced(tmp_path: Path) -> None:
    """No database and no sidecar: nothing was ever handed out, so no jump and no note."""
    with open_buffer(tmp_path / "b.db") as buf:
        assert buf.submit(alarm()).result(5).seq == 1
        assert buf.submit(reading(1)).result(5).seq == 1
        assert _continuity_notes(buf) == []


@pytest.mark.world
def test_a_kill_with_readings_in_ram_announces_at_most_what_ram_could_hold(
    tmp_path: Path,
) -> None:
    """kill -9 with five readings in RAM: the restart closes the reserved block (its seqs
    are never used) but says that at most MAX_VOLATILE of them were handed out, instead
    of announcing ten thousand readings lost."""
    db = tmp_path / "b.db"
    handed_out = _kill_with_readings_in_ram(db)
    with open_buffer(db) as buf:
        notes = [e for e in _continuity_notes(buf) if e["detail"]["lane"] == "telemetry"]
        after = buf.submit(reading(9)).result(5).seq or 0
    assert len(notes) == 1
    detail = notes[0]["detail"]
    low, high = detail["lost_range"]
    assert low <= min(handed_out) and max(handed_out) <= high < after  # closes every one
    assert high - low + 1 > MAX_VOLATILE  # the whole reserved block, as before
    assert detail["at_most"] == MAX_VOLATILE
    assert f"at most {MAX_VOLATILE}" in notes[0]["text"]
