"""The uplink on a bench: real mosquitto over TCP, real SQLite files, a subscriber standing
in for the central server. Broker outages, restarts in flight, lanes, status, heartbeat."""

from __future__ import annotations

import bisect
import contextlib
import json
import random
import socket
import stat
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.backoff import Backoff, backoff_delay
from agent.buffer import EventBuffer
from agent.config import UPLINK
from agent.uplink import MAX_ROW_BYTES, Uplink
from core.errors import UplinkError
from simulator.broker import Mosquitto
from tests.uplink_helpers import (
    IDENT,
    Collector,
    PersistentMosquitto,
    Settings,
    alarm,
    info_event,
    reading,
    running,
    wait_until,
)

ROOT = "alarmgw/v1/site-t/gw-t"


@pytest.fixture
def pbroker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = PersistentMosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.close()


def make(tmp_path: Path, b: Mosquitto, **kw: object) -> tuple[EventBuffer, Uplink]:
    max_events = int(kw.pop("max_events", 100_000))  # type: ignore[call-overload]
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, max_events)
    settings = Settings(b.host, b.port, **kw)  # type: ignore[arg-type]
    uplink = Uplink(settings, IDENT, buffer, version="9.9.9", config_digest="sha256:abc")
    buffer.on_stored = uplink.wake  # as agent/runtime.py wires them
    return buffer, uplink


def first_seen(seqs: list[int]) -> list[int]:
    """Seqs in order of first arrival (the consumer drops redeliveries)."""
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def test_events_and_telemetry_arrive_in_order_and_rows_go_after_puback(
    tmp_path: Path, broker: Mosquitto
) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/#")
    buffer, uplink = make(tmp_path, broker, heartbeat_s=0.2)
    try:
        with running(buffer, uplink):
            futures = [buffer.submit(alarm()) for _ in range(3)]
            futures += [buffer.submit(reading(i)) for i in range(200)]
            futures += [buffer.submit(info_event(i)) for i in range(100)]
            assert [f.result(5).seq for f in futures[:3]] == [1, 2, 3]
            assert col.wait_for(lambda: len(col.seqs("event")) >= 103)
            assert col.wait_for(lambda: len(col.seqs("telemetry")) >= 200)
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
            assert col.wait_for(
                lambda: any(p["buffer"]["event_depth"] == 0 for p in col.payloads("heartbeat"))
            )
            assert uplink.connected
            counters = uplink.stats()
        assert col.seqs("event") == list(range(1, 104))
        assert col.seqs("telemetry") == list(range(1, 201))
        first = col.payloads("event")[0]
        assert first["text"] == "1号楼 火警"
        assert first["ts_ms"] == futures[0].result().ts_ms  # detection time kept
        assert counters["published"] == counters["acked"] == 303
        beat = col.payloads("heartbeat")[-1]
        assert beat["version"] == "9.9.9"
        states = [p["state"] for p in col.payloads("status")]
        assert states[0] == "online"
        assert states[-1] == "offline"  # clean stop says so itself
        assert col.payloads("status")[-1]["reason"] == "shutdown"
    finally:
        col.close()


def test_mqtt5_delivers_and_acks(tmp_path: Path, broker: Mosquitto) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/event")
    buffer, uplink = make(tmp_path, broker, mqtt_version="5")
    try:
        with running(buffer, uplink):
            for _ in range(20):
                buffer.submit(alarm())
            assert col.wait_for(lambda: len(col.seqs("event")) >= 20)
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
        assert col.seqs("event") == list(range(1, 21))
    finally:
        col.close()


def test_broker_down_for_a_while_then_everything_arrives_in_order_alarms_first(
    tmp_path: Path, pbroker: Mosquitto
) -> None:
    col = Collector(pbroker.host, pbroker.port, f"{ROOT}/+")
    states: list[bool] = []
    buffer, uplink = make(tmp_path, pbroker)
    uplink.on_state = states.append
    try:
        with running(buffer, uplink):
            assert wait_until(lambda: uplink.connected)
            buffer.submit(alarm()).result(5)
            assert col.wait_for(lambda: col.seqs("event") == [1])
            pbroker.stop()
            assert wait_until(lambda: not uplink.connected)
            futures = [buffer.submit(info_event(i)) for i in range(300)]
            futures += [buffer.submit(reading(i)) for i in range(300)]
            futures.append(buffer.submit(alarm()))
            for f in futures:
                f.result(5)  # durable while the broker is away
            assert buffer.stats()["event_depth"] == 301
            pbroker.start()
            assert col.wait_for(lambda: len(set(col.seqs("event"))) >= 302, timeout=30)
            assert col.wait_for(lambda: len(set(col.seqs("telemetry"))) >= 300, timeout=30)
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
        # the fire raised during the outage overtook the 300 older events
        assert first_seen(col.seqs("event")) == [1, 302, *range(2, 302)]
        assert first_seen(col.seqs("telemetry")) == list(range(1, 301))
        assert states[:3] == [True, False, True]
        assert uplink.counters.reconnects >= 1
    finally:
        col.close()


def test_broker_restarted_while_messages_are_in_flight(tmp_path: Path, pbroker: Mosquitto) -> None:
    col = Collector(pbroker.host, pbroker.port, f"{ROOT}/event")
    buffer, uplink = make(tmp_path, pbroker)
    total = 5000
    try:
        with running(buffer, uplink):
            assert wait_until(lambda: uplink.connected)
            for i in range(total):
                buffer.submit(info_event(i))
            # restart while the drain is under way: some rows are in flight, unacked
            assert col.wait_for(lambda: len(col.messages) >= 300)
            pbroker.restart()
            assert col.wait_for(lambda: len(set(col.seqs("event"))) >= total, timeout=40)
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
        seqs = col.seqs("event")
        assert first_seen(seqs) == list(range(1, total + 1))
        print(f"in-flight restart: {len(seqs) - total} duplicates of {total}")
        assert uplink.counters.reconnects >= 1
    finally:
        col.close()


def test_alarms_are_not_stuck_behind_a_telemetry_backlog(tmp_path: Path, broker: Mosquitto) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/+")
    buffer, uplink = make(tmp_path, broker, inflight_window=20)
    try:
        buffer.start()
        futures = [buffer.submit(reading(i)) for i in range(3000)]
        futures += [buffer.submit(alarm()) for _ in range(5)]
        for f in futures:
            f.result(10)
        uplink.start()
        try:
            assert col.wait_for(lambda: len(col.seqs("telemetry")) >= 3000, timeout=30)
        finally:
            uplink.stop()
        data = [t.rsplit("/", 1)[1] for t, _ in col.messages if not t.endswith("status")]
        assert data[:5] == ["event"] * 5  # the alarms went first, 3000 readings after
    finally:
        buffer.close()
        col.close()


def test_tiny_buffer_overflows_telemetry_first_alarms_survive_and_it_is_announced(
    tmp_path: Path, broker: Mosquitto
) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/+")
    buffer, uplink = make(tmp_path, broker, max_events=20)
    try:
        buffer.start()
        for f in [buffer.submit(alarm()) for _ in range(5)]:
            f.result(5)
        for f in [buffer.submit(reading(i)) for i in range(30)]:
            f.result(5)
        for f in [buffer.submit(info_event(i)) for i in range(20)]:
            f.result(5)
        assert wait_until(lambda: buffer.stats()["drops"]["event"] >= 5)
        uplink.start()
        try:
            assert col.wait_for(lambda: announced_total(col) >= 36, timeout=15)
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
        finally:
            uplink.stop()
        events = col.payloads("event")
        fire = [p for p in events if p["category"] == "fire"]
        assert [p["seq"] for p in fire] == [1, 2, 3, 4, 5]  # every alarm survived
        assert col.payloads("telemetry") == []  # all 30 readings went before any event
        drops = buffer.stats()["drops"]
        assert drops["telemetry"] == 30
        assert drops["alarm"] == 0
        assert announced_total(col) == drops["telemetry"] + drops["event"]  # loss is never silent
        announced = [p for p in events if p["state"] == "overflow"]
        detail = announced[0]["detail"]["dropped"]
        assert detail["telemetry"]["ranges"][0][0] == 1  # oldest first
        kept_doors = [p["value"] for p in events if p["category"] == "door"]
        assert kept_doors == list(range(20 - len(kept_doors), 20))  # the oldest went first
    finally:
        buffer.close()
        col.close()


def announced_total(col: Collector) -> int:
    return sum(
        lane["count"]
        for p in col.payloads("event")
        if p["state"] == "overflow"
        for lane in p["detail"]["dropped"].values()
    )


def test_full_disk_keeps_live_events_flowing_raises_a_fault_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/event")
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, 100_000, max_pages=40, retry_s=0.2)
    uplink = Uplink(
        Settings(broker.host, broker.port), IDENT, buffer, version="t", config_digest="d"
    )
    buffer.on_stored = uplink.wake  # as agent/runtime.py wires them
    big = "满" * 1500  # ~4.5 kB per event: the 40-page (160 kB) file fills quickly
    try:
        buffer.start()
        futures = [buffer.submit(info_event(i)) for i in range(100)]
        stored = [f.result(5) for f in futures]  # every submit is accepted...
        futures = [buffer.submit(_big(i, big)) for i in range(60)]
        stored += [f.result(5) for f in futures]
        assert buffer.degraded  # ...though the file is full
        assert buffer.stats()["held"] > 0
        uplink.start()
        try:
            assert col.wait_for(
                lambda: any(p.get("detail", {}).get("restored") for p in col.payloads("event")),
                timeout=30,
            )
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
        finally:
            uplink.stop()
        got = col.payloads("event")
        seqs = first_seen([p["seq"] for p in got])
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, in order
        assert {r.seq for r in stored} <= set(seqs)  # nothing accepted was lost
        degraded = [p for p in got if p["state"] == "degraded"]
        assert degraded and degraded[0]["kind"] == "fault"
        assert not buffer.degraded
    finally:
        buffer.close()
        col.close()


def _big(i: int, text: str) -> object:
    e = info_event(i)
    return type(e)(e.kind, e.category, e.severity, e.state, text, e.device, e.point, i)


def test_credentials_readable_by_others_are_refused(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("gw1\nsecret\n")
    creds.chmod(0o644)
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 10)
    with pytest.raises(UplinkError) as err:
        Uplink(
            Settings("127.0.0.1", 1, credentials_file=creds),
            IDENT,
            buffer,
            version="t",
            config_digest="d",
        )
    assert str(creds) in str(err.value)
    assert "0644" in str(err.value)
    creds.chmod(stat.S_IRUSR | stat.S_IWUSR)
    up = Uplink(
        Settings("127.0.0.1", 1, credentials_file=creds),
        IDENT,
        buffer,
        version="t",
        config_digest="d",
    )
    up.stop()


def test_backoff_is_fully_jittered_from_the_first_reconnect() -> None:
    rng = random.Random(7).random
    first = [backoff_delay(1, 1.0, 60.0, rng) for _ in range(4000)]
    # uniform below 2 * min_s: no clamp pinning half of a fleet to exactly min_s
    assert 0.1 <= min(first) < 0.2 and 1.9 < max(first) <= 2.0
    assert 0.45 < sum(d < 1.0 for d in first) / len(first) < 0.55
    assert sum(d == 1.0 for d in first) == 0
    assert 0.95 < statistics.fmean(first) < 1.05
    assert len({round(d, 2) for d in first}) > 150  # spread, not a handful of values
    late = [backoff_delay(12, 1.0, 60.0, rng) for _ in range(4000)]
    # at the ceiling: between half of it and all of it (the fleet is spread by then)
    assert 30.0 <= min(late) < 31.0 and 59.0 < max(late) <= 60.0
    assert 43.0 < statistics.fmean(late) < 47.0
    assert backoff_delay(3, 1.0, 60.0, lambda: 0.0) == 0.1  # floor: never a busy loop
    assert backoff_delay(30, 1.0, 60.0, lambda: 0.0) == 30.0
    assert backoff_delay(3, 0.05, 60.0, lambda: 0.0) == 0.05  # a tiny min_s lowers it
    assert backoff_delay(3, 1.0, 60.0, lambda: 0.5) == 4.0


def test_with_default_settings_a_fleet_is_back_within_8_s_of_a_broker_restart_unhurried() -> None:
    """The uplink's own reconnect schedule (Backoff) with the config's defaults, played in
    virtual time for 2,000 gateways that lose the broker at the same instant: each is
    back within 8 s of the broker's return, whatever the outage (the 10 s alarm promise
    leaves the rest for connecting and sending), and no second brings back more than
    30 % of the fleet (the old defaults brought back 54 % in one second after a quick
    restart, and took up to 60 s after a long outage). bench/bench_fleet.py measures
    the same against a real mosquitto."""
    min_s, max_s = UPLINK["reconnect_min_s"].default, UPLINK["reconnect_max_s"].default
    rng = random.Random(11).random
    fleet = 2000
    for outage_s in (0.2, 3.0, 20.0, 600.0):
        back = []
        for _ in range(fleet):
            backoff = Backoff(min_s, max_s, rng)
            t = backoff.next_delay(start_over=True)  # the connection lost had worked
            while t < outage_s:  # each attempt while the broker is down is refused
                t += backoff.next_delay(start_over=False)
            back.append(t - outage_s)
        back.sort()
        busiest = max(bisect.bisect_right(back, t + 1.0) - i for i, t in enumerate(back))
        assert back[-1] <= 8.0, f"outage {outage_s} s: last gateway back after {back[-1]:.1f} s"
        assert busiest / fleet <= 0.30, f"outage {outage_s} s: {busiest} back in one second"


class SmallMosquitto(Mosquitto):
    """Refuses messages over 900 bytes: MQTT 5 clients get a PUBACK with reason 0x95
    (which paho cannot even parse: the connection dies on it)."""

    def _write_conf(self) -> None:
        super()._write_conf()
        self.conf_path.write_text(self.conf_path.read_text() + "message_size_limit 900\n")


class DenyEventsMosquitto(Mosquitto):
    """Lets the gateway publish its status but not its events (a broker ACL mistake)."""

    def _write_conf(self) -> None:
        super()._write_conf()
        acl = self.workdir / "acl"
        acl.write_text(f"topic readwrite {ROOT}/status\ntopic read {ROOT}/#\n")
        acl.chmod(0o644)
        conf = self.conf_path.read_text() + f"acl_file {acl}\nuser root\n"  # root: tmp is 0700
        self.conf_path.write_text(conf)


def test_a_row_the_broker_refuses_is_set_aside_announced_and_alarms_behind_it_go(
    tmp_path: Path,
) -> None:
    with SmallMosquitto(tmp_path / "broker") as b:
        col = Collector(b.host, b.port, f"{ROOT}/event")
        buffer, uplink = make(tmp_path, b, mqtt_version="5")
        try:
            buffer.start()
            buffer.submit(alarm("火警 " * 300)).result(5)  # seq 1: ~2 kB, over the limit
            for i in range(3):
                buffer.submit(alarm(f"fire {i}")).result(5)
            uplink.start()
            try:
                assert col.wait_for(lambda: {2, 3, 4, 5} <= set(col.seqs("event")), timeout=15)
                assert wait_until(lambda: buffer.stats()["depth"] == 0)
            finally:
                uplink.stop()
        finally:
            buffer.close()
            col.close()
    got = col.payloads("event")
    assert 1 not in col.seqs("event")
    assert [p["text"] for p in got if p["kind"] == "alarm"][:3] == ["fire 0", "fire 1", "fire 2"]
    fault = next(p for p in got if p["state"] == "set_aside")
    assert fault["kind"] == "fault" and fault["severity"] == "major"
    assert fault["detail"]["lane"] == "event" and fault["detail"]["seq"] == 1  # never silent
    assert len(json.dumps(fault).encode()) < 900  # the announcement itself gets through
    _validate("event", fault)
    counters = uplink.stats()
    assert counters["set_aside"] == 1
    # one connect per refusal (the first in a window, then alone), then one that works;
    # not 85 reconnects in 6 s
    assert counters["connects"] <= 5


def test_a_row_over_the_size_limit_is_set_aside_without_sending_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/event")
    buffer, uplink = make(tmp_path, broker)
    try:
        with running(buffer, uplink):
            buffer.submit(alarm("x" * (MAX_ROW_BYTES + 10))).result(5)
            buffer.submit(alarm("fire after it")).result(5)
            assert col.wait_for(lambda: {2, 3} <= set(col.seqs("event")))
            assert wait_until(lambda: buffer.stats()["depth"] == 0)
        assert col.seqs("event") == [2, 3]
        # which of the two got seq 2 depends on whether the uplink read row 1 before the
        # second submit: the fault and the alarm after it both arrive, either way
        texts = [p["text"] for p in col.payloads("event")]
        assert "fire after it" in texts
        fault = next(p for p in col.payloads("event") if p["state"] == "set_aside")
        assert fault["detail"]["seq"] == 1
        assert uplink.counters.set_aside == 1
    finally:
        col.close()


def test_a_broker_refusing_every_row_gets_a_growing_backoff_and_nothing_is_set_aside(
    tmp_path: Path,
) -> None:
    with DenyEventsMosquitto(tmp_path / "broker") as b:
        buffer = EventBuffer(tmp_path / "buffer.db", IDENT, 1000)
        settings = Settings(b.host, b.port, mqtt_version="5", reconnect_max_s=5.0)
        uplink = Uplink(
            settings, IDENT, buffer, version="t", config_digest="d", rng=random.Random(3).random
        )
        with running(buffer, uplink):
            buffer.submit(alarm()).result(5)
            assert wait_until(lambda: uplink.counters.rejected >= 1)
            started = time.monotonic()
            connects = uplink.counters.connects
            assert wait_until(lambda: time.monotonic() - started > 3.0, timeout=4)
            reconnects = uplink.counters.connects - connects
            assert buffer.stats()["event_depth"] == 1  # not authorized: kept, not set aside
        # a CONNACK is no proof the session works: without growth this is ~40 in 3 s
        assert 1 <= reconnects <= 10
        assert uplink.counters.set_aside == 0


def test_pending_rows_go_out_even_when_the_buffer_never_wakes_the_uplink(
    tmp_path: Path, broker: Mosquitto
) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/event")
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, 1000)
    buffer.on_stored = lambda: None  # a wake-up that never comes (or a read that failed)
    uplink = Uplink(
        Settings(broker.host, broker.port), IDENT, buffer, version="t", config_digest="d"
    )
    try:
        with running(buffer, uplink):
            assert wait_until(lambda: uplink.connected)
            assert wait_until(lambda: uplink.counters.heartbeats >= 1)
            buffer.submit(alarm()).result(5)
            assert col.wait_for(lambda: col.seqs("event") == [1], timeout=5)
    finally:
        col.close()


def test_connect_attempts_are_bounded_well_under_the_watchdog(tmp_path: Path) -> None:
    buffer = EventBuffer(tmp_path / "b.db", IDENT, 10)
    uplink = Uplink(Settings("127.0.0.1", 1), IDENT, buffer, version="t", config_digest="d")
    # TCP connect and TLS handshake are each bounded by it: twice is still far from 30 s
    assert uplink._endpoint.connect_timeout_s * 2 <= 10.0
    uplink.stop()


def test_a_broker_gone_silent_is_noticed_within_two_keepalives_and_nothing_is_lost(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A black-holed link (the broker stops answering, no FIN, no RST) must be noticed by
    the gateway itself, idle too: GB 26875.1 wants a local link fault within 100 s, and
    at the default keepalive_s = 30 paho gives up after at most 2 x 30 s without a byte
    from the broker (a PINGREQ after one silent keepalive, the close after the next).
    (With a record in flight the PUBACK deadline notices sooner: test_uplink_acks.py.)
    What is stored meanwhile goes out once the broker answers again."""
    keepalive = 5
    buffer, uplink = make(tmp_path, broker, keepalive_s=keepalive)
    col = Collector(broker.host, broker.port, f"{ROOT}/event")
    try:
        with running(buffer, uplink):
            first = buffer.submit(alarm("before")).result(5)
            assert col.wait_for(lambda: col.seqs("event") == [first.seq])
            assert wait_until(lambda: uplink.last_error is None)  # nothing awaits a PUBACK
            broker.freeze()
            try:
                # the deadline is the behaviour under test: 100 s at keepalive 30 is 3.3
                # keepalives; paho needs 2 (measured here: 10.0 s at keepalive 5)
                noticed = wait_until(lambda: not uplink.connected, timeout=3 * keepalive)
                assert noticed, "a silent broker was not noticed within three keepalives"
                assert "connection lost" in (uplink.last_error or "")
                meanwhile = buffer.submit(alarm("during")).result(5)
            finally:
                broker.thaw()
            assert col.wait_for(lambda: meanwhile.seq in col.seqs("event"), timeout=30)
            assert wait_until(lambda: uplink.connected)
    finally:
        col.close()


def test_a_peer_that_hangs_up_before_connack_is_a_failed_attempt_with_its_reason(
    tmp_path: Path,
) -> None:
    """A port-forward or proxy with nothing behind it accepts TCP, then closes: each such
    attempt is counted and `status` says what happened (it used to say nothing)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        stop = threading.Event()

        def hang_up() -> None:
            server.settimeout(0.1)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn, _ = server.accept()
                    conn.close()

        acceptor = threading.Thread(target=hang_up)
        acceptor.start()
        buffer = EventBuffer(tmp_path / "b.db", IDENT, 10)
        uplink = Uplink(Settings("127.0.0.1", port), IDENT, buffer, version="t", config_digest="d")
        try:
            with running(buffer, uplink):
                assert wait_until(lambda: uplink.counters.failed_attempts >= 3)
                assert (uplink.last_error or "").startswith("connection closed before CONNACK")
                assert uplink.counters.connects == 0
        finally:
            stop.set()
            acceptor.join()


def _validate(schema: str, payload: dict[str, object]) -> None:
    root = Path(__file__).resolve().parent.parent / "docs" / "schemas"
    doc = json.loads((root / f"{schema}.schema.json").read_text())
    jsonschema.validate(payload, doc)


def drained(beat: dict[str, Any]) -> bool:
    """A heartbeat saying all 100 kept records went out and the buffer is empty."""
    buf = beat["buffer"]
    return beat["uplink"]["acked"] == 100 and buf["event_depth"] == buf["telemetry_depth"] == 0


def test_status_is_retained_and_heartbeat_reports_the_buffer(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer, uplink = make(tmp_path, broker, heartbeat_s=0.1, max_events=100)
    beats = Collector(broker.host, broker.port, f"{ROOT}/heartbeat")
    try:
        buffer.start()
        # a backlog over max_events before the uplink starts: the buffer drops readings
        for future in [buffer.submit(info_event(i)) for i in range(5)]:
            future.result(5)
        for future in [buffer.submit(reading(i)) for i in range(125)]:
            future.result(5)
        assert buffer.stats()["drops"]["telemetry"] >= 30
        with running(buffer, uplink):
            assert beats.wait_for(lambda: any(map(drained, beats.payloads("heartbeat"))))
            col = Collector(broker.host, broker.port, f"{ROOT}/status")  # subscribes late
            try:
                assert col.wait_for(lambda: len(col.payloads("status")) >= 1)
                status = col.payloads("status")[0]
                assert status["state"] == "online"
                assert status["config_digest"] == "sha256:abc"
            finally:
                col.close()
        heartbeats = beats.payloads("heartbeat")
        drops = buffer.stats()["drops"]
    finally:
        beats.close()
    for beat in heartbeats:
        _validate("heartbeat", beat)
        assert beat["interval_s"] == 0.1
        assert beat["drops"] == drops  # the buffer's drops since start (its announcement too)
        assert beat["version"] == "9.9.9"
    # the buffer's depth as it drains: never more than what was kept, empty at the end
    depths = [(b["buffer"]["event_depth"], b["buffer"]["telemetry_depth"]) for b in heartbeats]
    assert all(e + t <= 100 for e, t in depths), depths
    done = next(b for b in heartbeats if drained(b))
    assert done["buffer"]["oldest_age_s"] is None and done["buffer"]["degraded"] is False
    assert done["uplink"]["published"] >= 100


def test_the_connection_loop_stays_alive_connected_idle_and_in_backoff(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer, uplink = make(tmp_path, broker, reconnect_min_s=4.0, reconnect_max_s=4.0)
    with running(buffer, uplink):
        assert wait_until(lambda: uplink.connected)
        before = uplink.alive
        assert wait_until(lambda: uplink.alive > before + 1.0, timeout=5)  # idle, connected
        broker.stop()
        assert wait_until(lambda: not uplink.connected)
        before = uplink.alive
        # inside a 4 s backoff wait the loop still ticks about every second
        assert wait_until(lambda: uplink.alive > before + 1.0, timeout=3)
