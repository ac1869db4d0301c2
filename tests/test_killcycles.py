"""Power-cut bench: kill -9 the agent at random instants during a burst, restart it, again
and again. The consumer, de-duplicating by seq, must see every seq from the first to the
last with no gap, and every seq the agent called durable."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from simulator.broker import Mosquitto
from tests.uplink_helpers import Collector

CYCLES = 20
ROOT = "killtest/v1/site-t/gw-t"


def _start(db: Path, broker: Mosquitto, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.uplink_helpers",
            "agent",
            "--db",
            str(db),
            "--port",
            str(broker.port),
            "--prefix",
            "killtest",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _durable_seqs(output: str) -> set[int]:
    seqs = set()
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "stored" and parts[1].isdigit():
            seqs.add(int(parts[1]))
    return seqs


def test_kill_9_at_random_instants_loses_no_sequence_number(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    db = tmp_path / "buffer.db"
    col = Collector(broker.host, broker.port, f"{ROOT}/event")
    durable: set[int] = set()
    try:
        for _ in range(CYCLES):
            proc = _start(db, broker)
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
                time.sleep(rng.uniform(0.05, 0.8))  # the random instant of the power cut
            finally:
                proc.kill()
                out, _ = proc.communicate(timeout=10)
            durable |= _durable_seqs(out)
        proc = _start(db, broker, "--drain")
        out, _ = proc.communicate(timeout=90)
        assert "drained" in out, out
        with sqlite3.connect(db) as conn:
            (last,) = conn.execute("SELECT value FROM meta WHERE key = 'next_seq:event'").fetchone()
        conn.close()
        last -= 1
        assert col.wait_for(lambda: len(set(col.seqs("event"))) >= last, timeout=30)
        seqs = col.seqs("event")
    finally:
        col.close()
    unique = set(seqs)
    duplicates = len(seqs) - len(unique)
    print(
        f"kill -9 x{CYCLES} (seed {seed}): {last} events, {duplicates} duplicates, "
        f"{len(durable)} reported durable"
    )
    assert last > CYCLES * 50  # the bursts really ran
    missing = sorted(set(range(1, last + 1)) - unique)
    assert not missing, f"seed {seed}: gap at {missing[:20]}"
    assert max(unique) == last
    assert durable <= unique
