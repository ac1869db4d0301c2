"""The GB/T 26875.3 uplink: a fire alarm to the centre's confirm; a second uplink's footprint.

1. Latency (in-process: a real buffer file with readers mqtt + gb, GbUplink over loopback
   TCP, the simulated centre of simulator/centre.py): a fire alarm submitted to the buffer
   -> the centre's confirm of the packet carrying it (the centre's own send time). p50/p99
   over N fires on an idle link, and behind a 10,000-record backlog of ordinary GB records
   (the centre confirms each packet after 20 ms, so the backlog is still draining while
   the fires are measured). Baseline, same run: a bare Link on its own socket sending the
   same fire packet to the same centre (codec + TCP + the centre, nothing of ours around
   it). Goal: <= 1 s p99 behind the backlog (GB 26875.1 allows 10 s).
2. A half-open path (review item 1): with default settings, the TCP path goes half-open
   (a 4G NAT forgets the flow: bytes vanish, no reset; simulator/halfopen.py) just before a
   fire alarm. Figure: submit -> the centre's confirm, per trial, against the idle link's p50
   of the same run. Goal: <= 10 s (GB 26875.1); before the fix it took ~20 s (three resends
   into the dead flow, a link fault, then a reconnect).
3. Footprint: `alarmgw run` with the bench_footprint setup (32 devices, 4 lines), MQTT only
   and then MQTT + [gb26875] to a simulated centre; RSS and CPU of the agent. Goal: the
   second uplink costs <= +5 MB RSS and <= +1 point of CPU. (Until gb-mapping's profiles put
   detail.gb into the field's events, the GB uplink there carries its heartbeat only.)

    python bench/bench_gb.py [--smoke] [--seconds S] [--fires N] [--half-open-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.buffer import EventBuffer, Reader
from agent.config import GbConfig
from agent.gb26875.adu import Adu, ComponentAddress, ComponentState
from agent.gb26875.codec import GbTime
from agent.gb26875.link import Confirmed, Link, LinkSettings, Packet
from agent.gb26875.mapping import carries
from agent.gb26875.uplink import GbUplink
from bench.bench_footprint import baseline_rss_kb, setup
from bench.common import figure, proc_cpu_s, proc_memory_kb, rig, wait_for
from core.events import Category, Event, Identity, Kind, Severity
from simulator.centre import Centre
from simulator.halfopen import HalfOpenPath

IDENT = Identity("bench", "gw-gb")
GOAL_P99_S = 1.0
GOAL_HALF_OPEN_S = 10.0  # GB 26875.1: a fire alarm to the centre within 10 s
GOAL_RSS_MB = 5.0
GOAL_CPU_PTS = 1.0
BACKLOG = 10_000


def gb_event(pos: int, fire: bool) -> Event:
    kind, category = (Kind.ALARM, Category.FIRE) if fire else (Kind.FAULT, Category.POWER)
    gb = {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 40, "zone": 9, "pos": pos}
    return Event(
        kind,
        category,
        Severity.CRITICAL,
        kind.value,
        f"{pos}",
        "fap",
        f"p{pos}",
        point_name=f"{pos}号",
        detail={"gb": {**gb, "status": 3 if fire else 5}},
    )


def _confirm_time(centre: Centre, pos: int, timeout: float = 30.0) -> float | None:
    """When the centre sent the confirm of the packet that carried position `pos`."""

    def serial_of(records: list[dict]) -> int | None:  # type: ignore[type-arg]
        for r in records:
            if r["dir"] == "in" and any(
                o.get("component_address") == [9, pos] for o in r.get("objects", [])
            ):
                return int(r["serial"])
        return None

    def confirmed(records: list[dict]) -> bool:  # type: ignore[type-arg]
        serial = serial_of(records)
        return serial is not None and any(
            r["dir"] == "out" and r["command"] == 3 and r["serial"] == serial for r in records
        )

    if not centre.wait_for(confirmed, timeout):
        return None
    serial = serial_of(centre.records)
    return next(
        r["t"]
        for r in centre.records
        if r["dir"] == "out" and r["command"] == 3 and r["serial"] == serial
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _gb_config(port: int) -> GbConfig:
    return GbConfig(host="127.0.0.1", port=port, uitd_address=889, centre_address=1)


def uplink_latency(d: Path, fires: int, backlog: int) -> tuple[list[float], int]:
    """Seconds from submit to the centre's confirm for each fire; and the backlog left."""
    with (
        Centre() as centre,
        EventBuffer(
            d / f"gb-{backlog}.db", IDENT, 200_000, readers=("mqtt", Reader("gb", carries))
        ) as buffer,
    ):
        uplink = GbUplink(_gb_config(centre.port), buffer)
        buffer.on_stored = uplink.wake
        uplink.start()
        try:
            wait_for(lambda: uplink.connected, 10)
            if backlog:
                centre.set_mode("delay", delay_s=0.02)
                records = [gb_event(100_000 + n, fire=False) for n in range(backlog)]
                buffer.submit_many(records).result(60)
            out = []
            for n in range(fires):
                t0 = time.time()
                buffer.submit(gb_event(n, fire=True)).result(10)
                at = _confirm_time(centre, n)
                if at is None:
                    raise RuntimeError(f"fire {n} was never confirmed")
                out.append(max(0.0, at - t0))
            left = buffer.stats()["readers"]["gb"]
        finally:
            uplink.stop()
    return out, left


def half_open_latency(d: Path, trials: int) -> list[float]:
    """Seconds from submit to the centre's confirm of a fire stored just after the path to
    the centre went half-open; default settings, one fresh uplink per trial."""
    out = []
    for trial in range(trials):
        with (
            Centre() as centre,
            HalfOpenPath("127.0.0.1", centre.port) as path,
            EventBuffer(
                d / f"half-{trial}.db", IDENT, 1000, readers=("mqtt", Reader("gb", carries))
            ) as buffer,
        ):
            uplink = GbUplink(_gb_config(path.port), buffer)
            buffer.on_stored = uplink.wake
            uplink.start()
            try:
                buffer.submit(gb_event(1, fire=True)).result(10)
                if _confirm_time(centre, 1) is None:
                    raise RuntimeError("the first fire was never confirmed")
                path.forget()
                t0 = time.time()
                buffer.submit(gb_event(2, fire=True)).result(10)
                at = _confirm_time(centre, 2, timeout=60)
                if at is None:
                    raise RuntimeError("the fire after the path went half-open never arrived")
                out.append(max(0.0, at - t0))
            finally:
                uplink.stop()
    return out


def bare_link_latency(fires: int) -> list[float]:
    """The same fire packet over a bare Link and socket: the floor under our uplink."""
    with Centre() as centre:
        link = Link(LinkSettings(uitd_address=889, centre_address=1))
        sock = socket.create_connection(("127.0.0.1", centre.port), timeout=5)
        link.connected()
        out = []
        try:
            for n in range(fires):
                label = GbTime.from_epoch(time.time())
                obj = ComponentState(1, 1, 40, ComponentAddress(9, n), 3, f"{n}号", label)
                t0 = time.time()
                link.submit(Packet(Adu.of(obj).encode(), priority=True))
                sock.sendall(link.data_to_send())
                done = False
                while not done:
                    link.receive(sock.recv(65536))
                    done = any(isinstance(e, Confirmed) for e in link.events())
                    sock.sendall(link.data_to_send())
                out.append(time.time() - t0)
        finally:
            sock.close()
    return out


def footprint(seconds: float, with_gb: bool) -> tuple[float, float]:
    """RSS (MB) and CPU (% of a core) of the footprint agent, with or without GB."""
    with tempfile.TemporaryDirectory() as tmp, Centre() as centre:
        s = setup()
        if with_gb:
            s = dataclasses.replace(
                s,
                extra_config=(
                    f'[gb26875]\nhost = "127.0.0.1"\nport = {centre.port}\n'
                    "uitd_address = 889\ncentre_address = 1\n\n"
                ),
            )
        with rig(Path(tmp), s) as r:
            r.control.call({"do": "state", "device": "l4d1", "point": "point1", "state": "fire"})
            if r.feed.wait_point("point1", 1, timeout=60) is None:
                raise RuntimeError("agent never came up\n" + r.agent_log()[-3000:])
            if with_gb and not centre.wait_for(bool, 60):
                raise RuntimeError("the agent never reached the centre\n" + r.agent_log()[-3000:])
            pid = r.agent.pid
            cpu0, t0 = proc_cpu_s(pid), time.monotonic()
            wait_for(lambda: r.agent.poll() is not None, seconds, step=0.5)
            if r.agent.poll() is not None:
                raise RuntimeError("agent died\n" + r.agent_log()[-3000:])
            cpu1, t1 = proc_cpu_s(pid), time.monotonic()
            rss = proc_memory_kb(pid)["VmRSS"] / 1024
    return rss, 100.0 * (cpu1 - cpu0) / (t1 - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="few fires, small backlog, 5 s windows")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--fires", type=int, default=100)
    p.add_argument("--trials", type=int, default=5, help="half-open trials")
    p.add_argument("--half-open-only", action="store_true", help="only the half-open figure")
    args = p.parse_args(argv)
    fires = 10 if args.smoke else args.fires
    backlog = 1_000 if args.smoke else BACKLOG
    seconds = 5.0 if args.smoke else args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        idle, _ = uplink_latency(Path(tmp), fires, 0)
        half = half_open_latency(Path(tmp), 1 if args.smoke else args.trials)
    figure(
        "gb_fire_half_open_path",
        trials=len(half),
        p50_s=round(_pct(half, 0.5), 2),
        max_s=round(max(half), 2),
        baseline_idle_p50_ms=_ms(_pct(idle, 0.5)),
        goal_s=GOAL_HALF_OPEN_S,
        met=max(half) <= GOAL_HALF_OPEN_S,
    )
    if args.half_open_only:
        return 0
    base = bare_link_latency(fires)
    figure(
        "gb_baseline_bare_link",
        fires=fires,
        p50_ms=_ms(_pct(base, 0.5)),
        p99_ms=_ms(_pct(base, 0.99)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        behind, left = uplink_latency(Path(tmp), fires, backlog)
    for name, values in (("gb_fire_idle", idle), ("gb_fire_behind_backlog", behind)):
        figure(
            name,
            fires=fires,
            backlog=backlog if values is behind else 0,
            p50_ms=_ms(_pct(values, 0.5)),
            p99_ms=_ms(_pct(values, 0.99)),
            ratio_p99_vs_bare=round(_pct(values, 0.99) / max(_pct(base, 0.99), 1e-6), 1),
        )
    figure(
        "gb_fire_goal",
        backlog_left_when_done=left,
        p99_s=round(_pct(behind, 0.99), 3),
        goal_s=GOAL_P99_S,
        met=_pct(behind, 0.99) <= GOAL_P99_S,
    )
    base_kb = baseline_rss_kb()
    rss_mqtt, cpu_mqtt = footprint(seconds, with_gb=False)
    rss_both, cpu_both = footprint(seconds, with_gb=True)
    figure("gb_footprint_baseline_interpreter", rss_mb=round(base_kb / 1024, 1))
    figure("gb_footprint_mqtt_only", rss_mb=round(rss_mqtt, 1), cpu_pct=round(cpu_mqtt, 2))
    figure("gb_footprint_both_uplinks", rss_mb=round(rss_both, 1), cpu_pct=round(cpu_both, 2))
    figure(
        "gb_footprint_goal",
        extra_rss_mb=round(rss_both - rss_mqtt, 1),
        extra_cpu_pts=round(cpu_both - cpu_mqtt, 2),
        rss_met=rss_both - rss_mqtt <= GOAL_RSS_MB,
        cpu_met=cpu_both - cpu_mqtt <= GOAL_CPU_PTS,
    )
    return 0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


if __name__ == "__main__":
    sys.exit(main())
