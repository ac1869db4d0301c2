"""SD-card wear: what the agent writes to storage when nothing changes, and per event in
a storm.

The footprint configuration (bench_footprint.py: 32 devices on 4 RS-485 lines at
9600 baud with wire-time emulation, polled every second; their analog points send
periodic telemetry of unchanged values) plus a Modbus TCP panel with 10,000 fire
points (bench/profiles/storm-panel-10k.toml) that stays quiet until the storm.

Idle: once the agent is up and settled, write_bytes of the agent process from
/proc/<pid>/io over the window (10 minutes; smoke 5 s), the uplink healthy. The
agent's own log file is written by the agent here (on a Pi its stderr goes to
the journal, another process): its growth is shown and taken out.
Storm: the panel's points all go into fire at once (625 register writes; smoke
50); write_bytes from the stimulus until every event is delivered and the
buffer is empty, per event delivered.

Baseline (same run): a child process writing each reading through to the
buffer file as every record was before (EventBuffer with spill_s=0: a synced
insert, then the delete after its PUBACK); its write_bytes per reading, times the
readings the agent sent per day. Goal: idle at most 1 MB a day.

    python bench/bench_wear.py [--smoke] [--seconds S]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli.client import ControlClient
from bench.bench_footprint import setup as footprint_setup
from bench.common import GATEWAY, ROOT, SITE, Rig, SimTcp, figure, rig, wait_for

GOAL_BYTES_PER_DAY = 1024 * 1024
SETTLE_S = 30.0  # start-up writes (first events, first checkpoint) are over by then
WORDS_FULL, WORDS_SMOKE = 625, 50
BASELINE_READINGS = 2000

BASELINE_CODE = """
import sys, time
from pathlib import Path
from agent.buffer import EventBuffer
from core.events import Lane
from tests.uplink_helpers import IDENT, reading

def written():
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])

n = int(sys.argv[2])
with EventBuffer(Path(sys.argv[1]), IDENT, 1_000_000, spill_s=0).start() as buf:
    for i in range(50):  # warm up: the file, its WAL and the sidecar exist
        buf.ack(Lane.TELEMETRY, buf.submit(reading(i)).result(5).seq)
    before = written()
    for i in range(n):
        buf.ack(Lane.TELEMETRY, buf.submit(reading(i)).result(5).seq)
    while buf.stats()["telemetry_depth"]:
        time.sleep(0.01)
    buf.submit(reading(0)).result(5)  # its commit carries the last deletes to the disk
    print(written() - before)
"""


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def baseline_bytes_per_reading(readings: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", BASELINE_CODE, str(Path(tmp) / "b.db"), str(readings)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    return int(out.stdout.strip()) / readings


class TelemetryCount:
    """Readings the agent published (each one a record the buffer handled)."""

    def __init__(self, host: str, port: int) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-telemetry")
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe(f"alarmgw/v1/{SITE}/{GATEWAY}/telemetry", qos=1)
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError("telemetry subscriber: no SUBACK within 10 s")

    def _on_message(self, *_: object) -> None:
        with self._lock:
            self.count += 1

    def value(self) -> int:
        with self._lock:
            return self.count

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def idle_window(r: Rig, seconds: float, telemetry: TelemetryCount) -> dict[str, float]:
    pid = r.agent.pid
    log = r.dir / "agent.log"
    w0, l0, t0, n0 = write_bytes(pid), log.stat().st_size, time.monotonic(), telemetry.value()
    wait_for(lambda: r.agent.poll() is not None, seconds, step=1.0)  # runs the window
    if r.agent.poll() is not None:
        raise RuntimeError("agent died\n" + r.agent_log()[-3000:])
    w1, l1, t1, n1 = write_bytes(pid), log.stat().st_size, time.monotonic(), telemetry.value()
    return {"s": t1 - t0, "bytes": w1 - w0, "log": l1 - l0, "readings": n1 - n0}


def storm_bytes(r: Rig, words: int) -> tuple[int, int]:
    """(bytes written, events delivered) from the stimulus until the buffer is empty."""
    agent = ControlClient(r.dir / "agent.sock", timeout_s=10)
    before_events = r.feed.count()
    w0 = write_bytes(r.agent.pid)
    r.control.many(
        [
            {"do": "value", "device": "storm", "point": f"w{n}", "value": 0xFFFF}
            for n in range(1, words + 1)
        ]
    )
    expected = words * 16
    if not r.feed.wait_count(before_events + expected, timeout=300):
        raise RuntimeError("storm events lost\n" + r.agent_log()[-3000:])
    if not wait_for(lambda: agent.call("buffer")["depth"] == 0, 120, step=0.05):
        raise RuntimeError("the buffer never emptied after the storm")
    return write_bytes(r.agent.pid) - w0, r.feed.count() - before_events


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="5 s idle, an 800-event storm")
    p.add_argument("--seconds", type=float, default=600.0, help="the idle window (600)")
    args = p.parse_args(argv)
    seconds = 5.0 if args.smoke else args.seconds
    settle = 2.0 if args.smoke else SETTLE_S
    words = WORDS_SMOKE if args.smoke else WORDS_FULL
    per_reading = baseline_bytes_per_reading(200 if args.smoke else BASELINE_READINGS)
    setup = footprint_setup()
    setup.tcp.append(SimTcp("storm", "storm-panel-10k", fast_poll_s=1.0))
    with tempfile.TemporaryDirectory() as tmp, rig(Path(tmp), setup) as r:
        telemetry = TelemetryCount(r.broker.host, r.broker.port)
        try:
            r.control.call({"do": "state", "device": "l4d1", "point": "point1", "state": "fire"})
            if r.feed.wait_point("point1", 1, timeout=60) is None:
                raise RuntimeError("agent never came up\n" + r.agent_log()[-3000:])
            time.sleep(settle)  # the settling being waited out, not a synchronisation
            idle = idle_window(r, seconds, telemetry)
            storm_written, storm_events = storm_bytes(r, words)
        finally:
            telemetry.close()
    card = idle["bytes"] - idle["log"]  # the log goes to the journal on a Pi
    per_day = card * 86400 / idle["s"]
    readings_per_day = idle["readings"] * 86400 / idle["s"]
    baseline_per_day = readings_per_day * per_reading
    figure(
        "wear_idle",
        devices=32,
        window_s=round(idle["s"], 1),
        written_bytes=idle["bytes"],
        log_bytes=idle["log"],
        readings_sent=idle["readings"],
        bytes_per_day=round(per_day),
        mb_per_day=round(per_day / 1024 / 1024, 3),
    )
    figure(
        "wear_baseline_write_through",
        bytes_per_reading=round(per_reading),
        readings_per_day=round(readings_per_day),
        mb_per_day=round(baseline_per_day / 1024 / 1024, 1),
    )
    figure(
        "wear_storm",
        events=storm_events,
        written_bytes=storm_written,
        bytes_per_event=round(storm_written / max(storm_events, 1)),
    )
    figure(
        "wear_goal",
        goal_mb_per_day=1,
        ratio_to_baseline=round(per_day / baseline_per_day, 5) if baseline_per_day else "n/a",
        met=per_day <= GOAL_BYTES_PER_DAY,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
