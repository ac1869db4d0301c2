"""GB mapping cost in the points thread: what adding detail["gb"] to every event costs.

The points thread turns each poll into events (agent/points.py DevicePoints.update); with a
GB/T 26875.3 mapping it also reads the component-type fields and stamps every event with its
coordinates and status word (agent/gb26875/points.py). Two cases, each timed in the same run
with and without the mapping (the baseline is the same profile with its [gb] taken out):

- storm: 10,000 fire points (bench/profiles/storm-panel-10k.toml, each bit point mapped to its
  own component) go into fire and back, 10,000 events per poll;
- idle: a GST-style panel of 1,920 loop points (8 loops x 240) whose component type is the
  register's high byte, polled with nothing changing: the cost of reading the fields alone.

Figure: time per poll with the mapping / without. Goal: storm within 1.5x, idle within 2x
(the idle poll of a big panel stays well under a millisecond per hundred points either way).

    python bench/bench_gbmap.py [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.gb26875.points import GbDevice
from agent.points import DevicePoints
from bench.common import figure
from drivers.plan import plan_device
from drivers.profile import Profile, load_profile
from drivers.types import Block, PollClass

HERE = Path(__file__).resolve().parent
STORM = HERE / "profiles" / "storm-panel-10k.toml"
STORM_GB = """
[gb]
system_type = 1
component_type = 42
loop = "address / 64 + 1"
point = "(address % 64) * 16 + bit + 1"
"""
GST_PANEL = """
[profile]
name = "GST panel, 8 loops"
category = "fire"

[gb]
system_type = 1
component_type = { byte = "high", default = 25 }
loop = "address / 240 + 1"
point = "address % 240 + 1"
address = "loop * 256 + point"

[state_tables.gst]
0 = { state = "normal", normal = true }
1 = { state = "fire", kind = "alarm", severity = "critical" }
2 = { state = "fault", kind = "fault", severity = "minor" }

[[points]]
id = "p{n}"
name = "点{n}"
repeat = 1920
stride = 1
table = "holding"
address = 0
type = "u8lo"
states = "gst"
"""


def _without_gb(text: str) -> str:
    """The same profile with its [gb] table taken out (the baseline)."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[gb]"
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _load(d: Path, name: str, text: str) -> Profile:
    path = d / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return load_profile(path)


def _blocks(profile: Profile, registers: dict[int, int]) -> list[Block]:
    return [
        Block(req, tuple(registers.get(a, 0) for a in range(req.address, req.address + req.count)))
        for req in plan_device(profile, 1, PollClass.FAST, max_gap=8)
    ]


def _points(profile: Profile, mapped: bool) -> DevicePoints:
    gb = GbDevice("d", 1, 1, profile) if mapped else None
    return DevicePoints("d", "panel", None, profile, gb=gb)


def _run(
    profile: Profile, mapped: bool, images: list[list[Block]], polls: int
) -> tuple[float, int]:
    """Seconds per poll, events per poll (after a first poll that is not timed)."""
    points = _points(profile, mapped)
    points.update(PollClass.FAST, images[0], 0, True, 0.0)
    events = 0
    start = time.perf_counter()
    for i in range(polls):
        records = points.update(PollClass.FAST, images[(i + 1) % len(images)], i + 1, True, i + 1.0)
        events += len(records)
    return (time.perf_counter() - start) / polls, events // polls


def _case(name: str, mapped: Profile, plain: Profile, images: list[list[Block]], polls: int,
          goal: float) -> None:  # fmt: skip
    base = min(_run(plain, False, images, polls)[0] for _ in range(3))
    ours, events = _run(mapped, True, images, polls)
    ours = min([ours] + [_run(mapped, True, images, polls)[0] for _ in range(2)])
    ratio = ours / base
    figure(f"gbmap_{name}_baseline", ms_per_poll=base * 1000, events_per_poll=events)
    figure(f"gbmap_{name}", ms_per_poll=ours * 1000, ratio=ratio, goal=goal, met=ratio <= goal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="few polls: a check, not a figure")
    args = parser.parse_args()
    polls = 2 if args.smoke else 10
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        storm_text = STORM.read_text(encoding="utf-8") + STORM_GB
        storm, storm_plain = (
            _load(d, "storm", storm_text),
            _load(d, "storm-plain", _without_gb(storm_text)),
        )
        fire = dict.fromkeys(range(625), 65535)
        _case("storm", storm, storm_plain, [_blocks(storm, {}), _blocks(storm, fire)], polls, 1.5)
        gst, gst_plain = _load(d, "gst", GST_PANEL), _load(d, "gst-plain", _without_gb(GST_PANEL))
        idle = _blocks(gst, dict.fromkeys(range(1920), 10752))
        _case("idle", gst, gst_plain, [idle], polls * 10, 2.0)


if __name__ == "__main__":
    main()
