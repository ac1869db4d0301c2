"""Run every benchmark, one after another, each in its own process; print every figure.

    python bench/run_all.py            # the full set (several minutes, bounded)
    python bench/run_all.py --smoke    # each bench tiny: ~2 min in all, proves they work
    python bench/run_all.py --record   # also append a dated table to docs/benchmarks.md
    python bench/run_all.py --only storm,bus

It never decides pass/fail by time: a goal missed is a figure (`met=NO`).
It exits non-zero only when a bench broke (crashed, or lost events).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCS, ROOT, machine, parse_figures

BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (full arguments, smoke arguments)
    "latency_gpio": (["bench/bench_latency_gpio.py"], ["bench/bench_latency_gpio.py", "--smoke"]),
    "latency_modbus": (
        ["bench/bench_latency_modbus.py"],
        ["bench/bench_latency_modbus.py", "--smoke", "--periods", "0.2", "--samples", "30"],
    ),
    "drain": (["bench/bench_drain.py", "--count", "20000"], ["bench/bench_drain.py", "--quick"]),
    "ingest": (["bench/bench_ingest.py", "--count", "20000"], ["bench/bench_ingest.py", "--quick"]),
    "storm": (["bench/bench_storm.py"], ["bench/bench_storm.py", "--smoke"]),
    "footprint": (["bench/bench_footprint.py"], ["bench/bench_footprint.py", "--smoke"]),
    "bus": (["bench/bench_bus.py"], ["bench/bench_bus.py", "--smoke"]),
    "backlog": (["bench/bench_backlog.py"], ["bench/bench_backlog.py", "--smoke"]),
    "wear": (["bench/bench_wear.py"], ["bench/bench_wear.py", "--smoke"]),
    "fleet": (["bench/bench_fleet.py"], ["bench/bench_fleet.py", "--smoke"]),
    "faults": (["bench/bench_faults.py"], ["bench/bench_faults.py", "--smoke"]),
    "gbmap": (["bench/bench_gbmap.py"], ["bench/bench_gbmap.py", "--smoke"]),
    "duties": (["bench/bench_duties.py"], ["bench/bench_duties.py", "--smoke"]),
    "selftest": (["bench/bench_selftest.py"], ["bench/bench_selftest.py", "--smoke"]),
    "gb": (["bench/bench_gb.py"], ["bench/bench_gb.py", "--smoke"]),
    "readers": (["bench/bench_readers.py"], ["bench/bench_readers.py", "--smoke"]),
}
# bench_drain.py / bench_ingest.py print one sentence; these turn it into figures
_SENTENCE = {
    "drain": re.compile(r"uplink ([\d,]+)/s.*?paho QoS1 ([\d,]+)/s, ratio (\d+)%"),
    "ingest": re.compile(r"EventBuffer ([\d,]+)/s.*? ([\d,]+)/s, ratio (\d+)%"),
}
_GOALS = {"drain": 70, "ingest": 50}


def _sentence_figures(name: str, out: str) -> dict[str, dict[str, str]]:
    m = _SENTENCE[name].search(out)
    if m is None:
        return {name: {"parsed": "NO"}}
    ours, base, ratio = (g.replace(",", "") for g in m.groups())
    met = "yes" if int(ratio) >= _GOALS[name] else "NO"
    return {
        name: {
            "ours_per_s": ours,
            "baseline_per_s": base,
            "ratio_pct": ratio,
            "goal_pct": str(_GOALS[name]),
            "met": met,
        }
    }


def run_one(name: str, args: list[str]) -> tuple[int, dict[str, dict[str, str]], float]:
    t0 = time.monotonic()
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    took = time.monotonic() - t0
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stdout.write(f"!! {name} exited {proc.returncode}\n{proc.stderr[-3000:]}\n")
    figures = parse_figures(proc.stdout)
    if name in _SENTENCE:
        sentence = _sentence_figures(name, proc.stdout)
        figures.update(sentence)
        for fig, vals in sentence.items():  # the same FIGURE lines the other benches print
            print(f"FIGURE {fig} " + " ".join(f"{k}={v}" for k, v in vals.items()), flush=True)
    for line in proc.stdout.splitlines():
        if not line.startswith("FIGURE ") and name in _SENTENCE and "ratio" in line:
            figures.setdefault(f"{name}_line", {})["text"] = line.replace(" ", "_")
    return proc.returncode, figures, took


def record(mode: str, results: dict[str, dict[str, dict[str, str]]]) -> None:
    rows = [
        f"| {bench} | {fig} | " + " ".join(f"{k}={v}" for k, v in vals.items()) + " |"
        for bench, figs in results.items()
        for fig, vals in figs.items()
        if not fig.endswith("_line")
    ]
    text = (
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} — run_all {mode}\n\n"
        f"Machine: {machine()}\n\n| bench | figure | values |\n| --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )
    with DOCS.open("a", encoding="utf-8") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    p.add_argument("--only", default="", help="comma-separated bench names")
    args = p.parse_args(argv)
    names = [n for n in BENCHES if not args.only or n in args.only.split(",")]
    print(f"machine: {machine()}", flush=True)
    results: dict[str, dict[str, dict[str, str]]] = {}
    broken = []
    for name in names:
        full, smoke = BENCHES[name]
        print(f"== {name}", flush=True)
        rc, figures, took = run_one(name, smoke if args.smoke else full)
        print(f"   ({took:.1f} s)", flush=True)
        results[name] = figures
        if rc != 0:
            broken.append(name)
    if args.record:
        record("--smoke" if args.smoke else "full", results)
    if broken:
        print(f"BROKEN: {', '.join(broken)}")
        return 1
    print("all benches ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
