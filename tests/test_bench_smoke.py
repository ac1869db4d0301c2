"""The benchmarks still work: `bench/run_all.py --smoke` runs every bench and prints every figure.

Not a timed test: it checks that each figure is present and sane (counts
complete, nothing lost, no duplicates, ratios positive), never a wall-clock
threshold: a slow machine is not a failure, a lost event is.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import parse_figures

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_FIGURES = {
    "gbmap_storm_baseline",
    "gbmap_storm",
    "gbmap_idle_baseline",
    "gbmap_idle",
    "gpio_baseline_paho",
    "gpio_alarm_latency",
    "gpio_all_edges_latency",
    "gpio_latency_goal",
    "modbus_baseline_paho_P200ms",
    "modbus_latency_P200ms",
    "modbus_latency_goal_P200ms",
    "storm_delivery",
    "storm_timing",
    "storm_other_line_idle_cycle",
    "storm_other_line_storm_cycle",
    "storm_other_line_goal",
    "footprint_baseline_interpreter",
    "footprint_agent",
    "footprint_goal",
    "bus_theory_9600",
    "bus_measured_9600",
    "bus_goal_9600",
    "backlog_broker_back_4g_fire",
    "backlog_during_drain_4g_fire",
    "backlog_broker_back_loopback_goal",
    "fleet_now_restart",
    "fleet_old_restart",
    "fleet_goal",
    "uplink_broker_outage",
    "uplink_no_puback_noticed",
    "uplink_no_puback_recovered",
    "uplink_flood_fire",
    "uplink_flood_commands",
    "bus_dead_3_9600",
    "bus_dead_3_probe_gap",
    "duties_baseline_acked_by_mqtt",
    "duties_tick_16_acked_by_mqtt",
    "duties_tick_16_acked_by_gb",
    "duties_tick_100_unbounded_acked_by_gb",
    "duties_stored_fire",
    "selftest_duration",
    "selftest_panel_cycle",
    "selftest_writes",
    "gb_baseline_bare_link",
    "gb_fire_half_open_path",
    "readers_count_baseline_bare_scan",
    "readers_stats_after_a_commit",
    "readers_stats_no_commit_between",
    "readers_next_rows_alone",
    "readers_next_rows_counting",
    "readers_store_at_bound_ratio",
    "gb_fire_idle",
    "gb_fire_behind_backlog",
    "gb_fire_goal",
    "gb_footprint_mqtt_only",
    "gb_footprint_both_uplinks",
    "gb_footprint_goal",
}
# the field-side fault scenarios of bench_faults.py: each event must have arrived
FAULT_FIGURES = {
    "faults_panel_back",
    "faults_rs485_lost",
    "faults_rs485_restored",
    "faults_rs485_cut",
    "faults_rs485_mended",
    "faults_rs485_cut_many",
    "faults_rs485_cut_many_mended",
    "faults_tcp_serial_silent",
    "faults_tcp_serial_silent_back",
    "faults_tcp_gone",
    "faults_tcp_gone_back",
    "faults_tcp_blackhole",
    "faults_tcp_blackhole_back",
    "faults_parallel_reads",
    "faults_read_flood",
    "faults_read_flood_after",
}


def _positive(value: str) -> bool:
    number = float(value)
    return math.isfinite(number) and number > 0


@pytest.fixture(scope="module")
def smoke_output() -> str:
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,  # a guard against a hung bench, not a figure (GB added ~45 s)
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_smoke_run_prints_every_figure_and_loses_nothing(smoke_output: str) -> None:
    figures = parse_figures(smoke_output)
    assert set(figures) >= EXPECTED_FIGURES | FAULT_FIGURES, (
        EXPECTED_FIGURES | FAULT_FIGURES
    ) - set(figures)
    for name in FAULT_FIGURES:  # a stimulus whose event never came is a broken bench
        assert figures[name]["missed"] == "0", (name, figures[name])
        assert 0 < float(figures[name]["max_ms"]) < 60_000

    # latency: every alarm was matched to its event; percentiles ordered and positive
    assert figures["gpio_alarm_latency"]["n"] == "50"
    assert figures["gpio_all_edges_latency"]["n"] == "100"
    assert figures["modbus_latency_P200ms"]["n"] == "30"
    for name in ("gpio_alarm_latency", "modbus_latency_P200ms", "gpio_baseline_paho"):
        f = figures[name]
        assert _positive(f["p50_ms"]) and float(f["p50_ms"]) <= float(f["p99_ms"])
        assert float(f["p99_ms"]) <= float(f["max_ms"])
    # a Modbus change cannot be seen before it happened, nor (sanely) after several periods
    assert 0 < float(figures["modbus_latency_P200ms"]["max_ms"]) < 5 * 200

    # storm: all 10,000 events delivered exactly once each, no gap in seq
    storm = figures["storm_delivery"]
    assert storm["expected"] == "10000"
    assert storm["delivered"] == "10000"
    assert storm["duplicates"] == "0" and storm["gaps"] == "0"
    assert storm["out_of_order_points"] == "0" and storm["complete"] == "yes"
    assert _positive(figures["storm_other_line_goal"]["mean_ratio"])
    assert int(figures["storm_other_line_idle_cycle"]["n"]) > 0

    # footprint: the agent was measured while it polled
    agent = figures["footprint_agent"]
    assert agent["devices"] == "32" and int(agent["requests_served"]) > 32
    assert _positive(agent["rss_mb"]) and float(agent["hwm_mb"]) >= float(agent["rss_mb"])
    assert float(agent["cpu_pct"]) >= 0

    # bus: measured against a real theoretical figure, and it cannot beat the wire
    assert int(figures["bus_measured_9600"]["n"]) > 3
    assert float(figures["bus_goal_9600"]["ratio"]) >= 1.0
    assert int(figures["bus_dead_3_9600"]["n"]) > 3  # the live devices kept being polled

    # a fire behind a backlog: measured against the same trial's in-order drain
    for name in ("backlog_broker_back_4g_fire", "backlog_during_drain_4g_fire"):
        assert figures[name]["n"] == "1" and _positive(figures[name]["max_ms"])
        assert _positive(figures[name.replace("_fire", "_in_order_baseline")]["max_ms"])
    # fleet: every gateway came back and every alarm stored in the outage arrived
    for name in ("fleet_now_restart", "fleet_old_restart"):
        fleet = figures[name]
        assert fleet["complete"] == "yes" and fleet["delivered"] == fleet["gateways"]
        assert int(fleet["peak_per_s"]) > 0
    # uplink faults: each fire arrived; the flood made no more test events than the limit
    for name in ("uplink_broker_outage", "uplink_no_puback_noticed", "uplink_flood_fire"):
        assert int(figures[name]["n"]) >= 1 and _positive(figures[name]["max_s"])
    flood = figures["uplink_flood_commands"]
    assert int(flood["sent"]) > 0 and 0 < int(flood["test_events"]) <= 6

    # the two benches of the uplink/buffer work ran and reported a rate against a baseline
    for name in ("drain", "ingest"):
        assert name in figures and figures[name].get("parsed") != "NO", smoke_output[-3000:]
        assert _positive(figures[name]["ours_per_s"])
        assert _positive(figures[name]["baseline_per_s"])


def test_smoke_gb_mapping_bench_stamped_every_storm_event(smoke_output: str) -> None:
    figures = parse_figures(smoke_output)
    assert figures["gbmap_storm_baseline"]["events_per_poll"] == "10000"
    assert figures["gbmap_idle_baseline"]["events_per_poll"] == "0"
    for name in ("gbmap_storm", "gbmap_idle"):
        assert _positive(figures[name]["ratio"]) and _positive(figures[name]["ms_per_poll"])
    # GB/T 26875.3: every fire confirmed by the centre, on both links; both footprints taken
    for name in ("gb_fire_idle", "gb_fire_behind_backlog", "gb_baseline_bare_link"):
        f = figures[name]
        assert f["fires"] == "10" and float(f["p50_ms"]) <= float(f["p99_ms"]), (name, f)
    assert figures["gb_fire_behind_backlog"]["backlog"] == "1000"
    for name in ("gb_footprint_mqtt_only", "gb_footprint_both_uplinks"):
        assert _positive(figures[name]["rss_mb"]) and float(figures[name]["cpu_pct"]) >= 0


def test_smoke_readers_bench_dropped_only_what_it_stored_over_the_bound(smoke_output: str) -> None:
    figures = parse_figures(smoke_output)
    # GB/T 26875.3 over a half-open path: the fire reached the centre
    assert _positive(figures["gb_fire_half_open_path"]["max_s"])
    for name in ("readers_store_at_bound_one_reader", "readers_store_at_bound_gb_down"):
        # 500 stored over the bound, + 1 a second for each drop announcement
        assert int(figures[name]["drops"]) >= 500, figures[name]
    for name in ("readers_stats_after_a_commit", "readers_stats_no_commit_between"):
        assert figures[name]["rows"] == "5000"
    assert _positive(figures["readers_store_at_bound_ratio"]["gb_down_vs_one_reader"])
