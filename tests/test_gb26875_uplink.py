"""The GB/T 26875.3 uplink end to end: a real buffer (two readers), GbUplink over real TCP,
the simulated centre (simulator/centre.py) confirming, denying, dropping, delaying, cutting
and restarting; the centre's requests; kill -9 of a process running the uplink."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import EventBuffer, ReadCursor, Reader
from agent.config import GbConfig
from agent.faults import Faults
from agent.gb26875.adu import Adu, UitdState
from agent.gb26875.mapping import carries
from agent.gb26875.uplink import READER, GbUplink, link_settings
from agent.texts import Texts
from core.events import Category, Event, Kind, Record, Severity
from simulator.centre import Centre
from simulator.halfopen import HalfOpenPath
from tests.uplink_helpers import IDENT, Collector, info_event
from tests.waiting import wait_until

pytestmark = pytest.mark.world

BASE = {"tf": 2, "sys_type": 1, "sys_addr": 1, "comp_type": 40, "zone": 1}


def gb_event(
    pos: int,
    kind: Kind = Kind.ALARM,
    category: Category = Category.FIRE,
    gb: dict[str, Any] | None = None,
) -> Event:
    status = {Kind.ALARM: 0b11, Kind.FAULT: 0b101, Kind.RESTORE: 0b1}.get(kind, 1)
    return Event(
        kind,
        category,
        Severity.CRITICAL if kind is Kind.ALARM else Severity.MAJOR,
        kind.value,
        f"{pos}号 {kind.value}",
        "fap",
        f"p{pos}",
        location="一层",
        point_name=f"{pos}号探测器",
        detail={"gb": gb or {**BASE, "pos": pos, "status": status}},
    )


def settings(port: int, **kw: Any) -> GbConfig:
    base = GbConfig(
        host="127.0.0.1",
        port=port,
        uitd_address=0x0379,
        centre_address=1,
        heartbeat_s=1.0,
        confirm_timeout_s=0.3,
        resends=3,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    return dataclasses.replace(base, **kw)


class Emitted:
    """The pipeline's emit for a test: what the uplink and its faults said."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cond = threading.Condition()

    def __call__(self, record: Record) -> None:
        assert isinstance(record, Event)
        with self.cond:
            self.events.append(record)
            self.cond.notify_all()

    def wait_state(self, state: str, timeout: float = 10.0) -> Event | None:
        with self.cond:
            self.cond.wait_for(lambda: any(e.state == state for e in self.events), timeout)
            return next((e for e in self.events if e.state == state), None)


@dataclasses.dataclass
class Rig:
    centre: Centre
    buffer: EventBuffer
    uplink: GbUplink
    emitted: Emitted

    def store(self, *records: Record) -> list[int]:
        return list(self.buffer.submit_many(records).result(10).seqs)

    def positions(self) -> list[int]:
        """Component positions the centre received (typeflag 2 and 3), in arrival order."""
        return [
            obj["component_address"][1]
            for r in list(self.centre.records)
            if r["dir"] == "in" and r.get("typeflag") in (2, 3)
            for obj in r.get("objects", [])
        ]

    def wait_positions(self, wanted: set[int], timeout: float = 15.0) -> bool:
        return self.centre.wait_for(lambda _: wanted <= set(self.positions()), timeout=timeout)

    def gb_depth(self) -> int:
        return len(self.buffer.next_rows(ReadCursor(reader=READER), 100_000))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as r:
        yield r


@contextlib.contextmanager
def make_rig(tmp_path: Path, **cfg: Any) -> Iterator[Rig]:
    readers = ("mqtt", Reader(READER, carries))
    emitted = Emitted()
    faults = Faults(emitted, _texts=Texts("en"))
    with (
        Centre() as centre,
        EventBuffer(tmp_path / "b.db", IDENT, 100_000, readers=readers) as buffer,
    ):
        uplink = GbUplink(
            settings(centre.port, **cfg), buffer, faults=faults, emit=emitted, texts=Texts("en")
        )
        buffer.on_stored = uplink.wake
        uplink.start()
        try:
            yield Rig(centre, buffer, uplink, emitted)
        finally:
            uplink.stop()


def test_alarms_restores_faults_analogs_and_power_faults_reach_the_centre(rig: Rig) -> None:
    analog = {**BASE, "tf": 3, "comp_type": 17, "pos": 4, "analog_type": 128, "value": 420}
    power = {**BASE, "pos": 5, "status": 0x101}  # normal + power fault
    rig.store(
        gb_event(1),
        gb_event(2, Kind.FAULT, Category.POWER),
        gb_event(3, Kind.RESTORE),
        gb_event(4, Kind.ALARM, Category.ELECTRICAL, gb=analog),
        gb_event(5, Kind.FAULT, Category.POWER, gb=power),
        info_event(6),  # no GB coordinates: MQTT only
    )
    assert rig.wait_positions({1, 2, 3, 4, 5})
    assert wait_until(lambda: rig.gb_depth() == 0)
    states = {
        o["component_address"][1]: o
        for r in rig.centre.records
        if r["dir"] == "in"
        for o in r.get("objects", [])
        if "component_address" in o
    }
    assert states[1]["status"] == 0b11 and states[1]["description"] == "一层 1号探测器"
    assert states[4]["type"] == "ComponentAnalog" and states[4]["value"] == 420
    assert states[5]["status"] == 0x101
    # the MQTT reader was never told: everything is still there for it
    assert len(rig.buffer.next_rows(ReadCursor(reader="mqtt"), 100)) == 6
    assert rig.uplink.stats()["confirmed_rows"] == 5


def _unconfirmed_serials(records: list[dict[str, Any]]) -> set[int]:
    """Serials of the UITD's data packets the centre logged and has not confirmed yet."""
    sent = {r["serial"] for r in records if r["dir"] == "in" and r.get("typeflag") == 2}
    return sent - {r["serial"] for r in records if r["dir"] == "out" and r["command"] == 3}


@pytest.mark.parametrize("category", [Category.FIRE, Category.GAS, Category.ELECTRICAL])
def test_a_fire_alarm_overtakes_a_backlog_as_a_priority_packet(
    tmp_path: Path, category: Category
) -> None:
    """Fire (GB 26875.1), and gas and electrical-fire alarms too (review S1). The centre
    holds each confirm 2 s (well inside the 5 s timeout: no resend), and the alarm is
    stored while an ordinary packet waits for its confirm: a priority packet goes at once,
    beside it; without priority it would wait for that confirm."""
    with make_rig(tmp_path, confirm_timeout_s=5.0) as rig:
        rig.centre.set_mode("delay", delay_s=2.0)  # the backlog drains slowly
        backlog = [gb_event(100 + n, Kind.FAULT, Category.POWER) for n in range(300)]
        rig.store(*backlog)
        assert rig.centre.wait_for(lambda rs: bool(_unconfirmed_serials(list(rs))))
        rig.store(gb_event(7, Kind.ALARM, category))
        assert rig.wait_positions({7})
        records = list(rig.centre.records)
        at = next(i for i, r in enumerate(records) if r["dir"] == "in" and 7 in _positions(r))
        assert records[at]["objects"][0]["status"] == 0b11
        waiting = _unconfirmed_serials(records[:at])
        assert waiting, "the fire waited for every ordinary packet's confirm"
        assert 7 not in {p for r in records[:at] for p in _positions(r)}
        assert len(rig.positions()) < 300 + 1  # the backlog was still draining


def _positions(record: dict[str, Any]) -> list[int]:
    return [
        o["component_address"][1] for o in record.get("objects", []) if "component_address" in o
    ]


def test_a_lost_confirm_is_resent_and_the_centre_counts_the_duplicate(rig: Rig) -> None:
    rig.centre.set_mode("drop", count=1)
    rig.store(gb_event(1, Kind.FAULT, Category.POWER))
    assert wait_until(lambda: rig.gb_depth() == 0)
    # at least once more (a loaded machine may resend again before the confirm is read)
    assert rig.positions().count(1) >= 2
    assert rig.centre.counts["duplicates"] >= 1
    assert rig.uplink.stats()["resent"] >= 1


def test_a_delayed_confirm_within_the_timeout_is_not_resent(tmp_path: Path) -> None:
    # the longest timeout the standard allows against a 0.1 s delay: a margin of 100x
    with make_rig(tmp_path, confirm_timeout_s=10.0, heartbeat_s=30.0) as rig:
        rig.centre.set_mode("delay", count=1, delay_s=0.1)
        rig.store(gb_event(1, Kind.FAULT, Category.POWER))
        assert wait_until(lambda: rig.gb_depth() == 0)
        assert rig.positions() == [1]
        assert rig.uplink.stats()["resent"] == 0


def test_a_packet_denied_after_every_resend_is_set_aside_and_announced(rig: Rig) -> None:
    rig.centre.set_mode("deny", count=4)  # the first send and its 3 resends
    seqs = rig.store(gb_event(1, Kind.FAULT, Category.POWER))
    denied = rig.emitted.wait_state("gb_denied")
    assert denied is not None and denied.detail is not None
    assert denied.detail["seqs"] == seqs and denied.kind is Kind.FAULT
    assert wait_until(lambda: rig.gb_depth() == 0)
    rig.store(gb_event(2, Kind.FAULT, Category.POWER))  # the link goes on
    assert rig.wait_positions({2})
    # still there for MQTT: only the centre's copy was set aside
    assert seqs[0] in [r.seq for r in rig.buffer.next_rows(ReadCursor(reader="mqtt"), 10)]


def test_an_alarm_that_cannot_be_mapped_is_a_fault_event_not_only_a_counter(rig: Rig) -> None:
    """Review S2: set aside when read, a fire alarm the centre should have had is said."""
    bad = {**BASE, "pos": 70_000, "status": 3}  # no 16-bit position
    seqs = rig.store(gb_event(1, gb=bad))
    event = rig.emitted.wait_state("gb_unmapped")
    assert event is not None and event.detail is not None and event.kind is Kind.FAULT
    assert event.detail["seqs"] == seqs
    assert wait_until(lambda: rig.gb_depth() == 0)
    assert rig.uplink.stats()["set_aside"] == 1


def test_the_connection_cut_mid_packet_reconnects_and_delivers(rig: Rig) -> None:
    rig.centre.set_mode("close", count=1)
    rig.store(gb_event(1, Kind.FAULT, Category.POWER))
    assert wait_until(lambda: rig.gb_depth() == 0)
    assert rig.centre.counts["connections"] >= 2
    assert 1 in rig.positions()


@pytest.mark.slow
def test_a_dead_centre_is_a_link_fault_with_uitd_bit_5_then_a_restore(tmp_path: Path) -> None:
    emitted = Emitted()
    faults = Faults(emitted, _texts=Texts("en"))
    readers = ("mqtt", Reader(READER, carries))
    with Centre() as centre:
        port = centre.port
        centre.close()  # nobody listens: every connect is refused
        cfg = settings(port, heartbeat_s=0.5, confirm_timeout_s=0.2)
        with EventBuffer(tmp_path / "b.db", IDENT, 1000, readers=readers) as buffer:
            uplink = GbUplink(cfg, buffer, faults=faults, emit=emitted).start()
            try:
                fault = emitted.wait_state("link_fault")
                assert fault is not None and fault.point == "gb26875-link"
                assert uplink.stats()["link_fault"]
                buffer.submit(gb_event(9)).result(5)  # an alarm while the centre is away
                uplink.wake()
                with Centre(port=port) as back:
                    assert back.wait_for(lambda rs: 9 in [p for r in rs for p in _positions(r)])
                    states = back.wait_for(lambda rs: any(_uitd(r) for r in rs), timeout=10)
                    assert states
                    first = next(_uitd(r) for r in back.records if _uitd(r))
                    assert first & 0b100000, "the centre was not told of the link fault"
                    assert emitted.wait_state("normal") is not None  # the restore
                    assert wait_until(lambda: not uplink.stats()["link_fault"])
            finally:
                uplink.stop()
    # with the product's defaults, the link's own detection time is within GB's 100 s
    defaults = GbConfig(host="127.0.0.1", port=port, uitd_address=1, centre_address=1)
    assert link_settings(defaults).fault_detection_s <= 100


def test_a_half_open_path_sends_the_fire_again_on_a_fresh_connection(tmp_path: Path) -> None:
    """Review item 1: a 4G NAT forgets the flow (bytes vanish, no reset). The fire's resend
    goes on a new connection, not three more times into the void before a link fault."""
    readers = ("mqtt", Reader(READER, carries))
    with (
        Centre() as centre,
        HalfOpenPath("127.0.0.1", centre.port) as path,
        EventBuffer(tmp_path / "b.db", IDENT, 1000, readers=readers) as buffer,
    ):
        cfg = settings(path.port, heartbeat_s=30.0)  # no heartbeat finds it first
        uplink = GbUplink(cfg, buffer)
        buffer.on_stored = uplink.wake
        uplink.start()
        try:
            buffer.submit(gb_event(1)).result(5)
            assert centre.wait_for(lambda rs: 1 in [p for r in rs for p in _positions(r)])
            assert wait_until(lambda: uplink.stats()["confirmed_rows"] == 1)
            path.forget()
            buffer.submit(gb_event(7)).result(5)
            assert centre.wait_for(lambda rs: 7 in [p for r in rs for p in _positions(r)])
            stats = uplink.stats()
            assert path.swallowed > 0  # the first send vanished on the forgotten flow
            assert stats["link_faults"] == 0, "the resend waited for a link fault"
            assert stats["connects"] == 2 and stats["resent"] == 1
        finally:
            uplink.stop()


@pytest.mark.slow
def test_a_second_outage_after_a_restore_is_a_fault_again(tmp_path: Path) -> None:
    """Review item 2: after a restore, the next outage raises a fault event again, though
    the running state with bit 5 may not be confirmed yet; and that state goes first."""
    emitted = Emitted()
    faults = Faults(emitted, _texts=Texts("en"))
    readers = ("mqtt", Reader(READER, carries))
    cfg = settings(0, heartbeat_s=0.5, confirm_timeout_s=1.0)
    with Centre() as centre:
        port = centre.port
        centre.close()
        with EventBuffer(tmp_path / "b.db", IDENT, 1000, readers=readers) as buffer:
            uplink = GbUplink(dataclasses.replace(cfg, port=port), buffer, faults=faults,
                              emit=emitted)  # fmt: skip
            buffer.on_stored = uplink.wake
            uplink.start()
            try:
                assert emitted.wait_state("link_fault") is not None
                backlog = [gb_event(100 + n, Kind.FAULT, Category.POWER) for n in range(80)]
                buffer.submit_many(backlog).result(5)
                with Centre(port=port) as back:
                    back.set_mode("delay", delay_s=0.3)  # the backlog drains slowly
                    assert emitted.wait_state("normal") is not None  # the restore
                    arrived = [r for r in list(back.records) if r["dir"] == "in"]
                # the centre is gone again, straight after the restore
                assert _uitd(arrived[0]) & 0b100000, "the running state did not go first"
                second = ["link_fault", "normal", "link_fault"]
                assert wait_until(lambda: [e.state for e in emitted.events] == second)
                assert uplink.stats()["link_fault"]
            finally:
                uplink.stop()


def test_a_restore_between_two_fires_leaves_the_centre_with_the_fire(rig: Rig) -> None:
    """Review item 3: fire, restore, fire on one detector while the centre is away. The fires
    overtake the restore (priority); the centre's last word on the detector must be fire."""
    port = rig.centre.port
    rig.centre.close()
    seqs = rig.store(gb_event(5), gb_event(5, Kind.RESTORE), gb_event(5))
    with Centre(port=port) as back:
        assert wait_until(lambda: rig.gb_depth() == 0)
        statuses = [
            obj["status"]
            for r in list(back.records)
            if r["dir"] == "in" and r.get("typeflag") == 2
            for obj in r["objects"]
        ]
    assert statuses.count(0b1) == 1  # the restore was delivered
    assert statuses[-1] == 0b11, f"the centre is left with {statuses}"
    assert rig.uplink.stats()["confirmed_rows"] == len(seqs)


def test_a_restore_queued_when_the_second_fire_overtakes_it_is_followed_by_the_fire(
    rig: Rig,
) -> None:
    """The same live: the restore waits behind a slow backlog when the second fire goes."""
    rig.centre.set_mode("delay", delay_s=0.05)  # the backlog drains slowly
    rig.store(gb_event(5))
    rig.store(*[gb_event(100 + n, Kind.FAULT, Category.POWER) for n in range(100)])
    rig.store(gb_event(5, Kind.RESTORE))
    rig.store(gb_event(5))
    assert wait_until(lambda: rig.gb_depth() == 0)
    assert rig.centre.wait_for(lambda _: _statuses(rig.centre, 5).count(0b11) >= 3)
    statuses = _statuses(rig.centre, 5)
    assert statuses.count(0b1) == 1
    assert statuses[-1] == 0b11, f"the centre is left with {statuses}"


def test_after_a_restart_the_centre_still_ends_with_the_fire_that_overtook_a_restore(
    rig: Rig,
) -> None:
    """Review C item 1: fire, backlog, restore, fire. The second fire overtakes the restore
    and is confirmed; the uplink restarts before the restore is (the restart forgets what
    went as priority). The fire must still reach the centre after that restore: it is acked
    to the buffer only once the older rows of its detector are confirmed."""
    rig.centre.set_mode("delay", delay_s=0.2)  # the backlog drains slowly: the restore waits
    rig.store(gb_event(5))
    rig.store(*[gb_event(100 + n, Kind.FAULT, Category.POWER) for n in range(100)])
    rig.store(gb_event(5, Kind.RESTORE))
    rig.store(gb_event(5))
    assert wait_until(lambda: rig.uplink.counters.alarms_confirmed >= 2)
    rig.uplink.stop()
    assert 0b1 not in _statuses(rig.centre, 5), "the restore went before the restart"
    rig.centre.set_mode("confirm")
    again = GbUplink(settings(rig.centre.port), rig.buffer, texts=Texts("en"))
    rig.buffer.on_stored = again.wake
    again.start()
    try:
        assert wait_until(lambda: rig.gb_depth() == 0, timeout=30)
        statuses = _statuses(rig.centre, 5)
        assert 0b1 in statuses
        assert statuses[-1] == 0b11, f"the centre is left with {statuses}"
    finally:
        again.stop()


def test_a_fire_ahead_of_a_backlog_of_other_points_is_delivered_at_its_confirm(rig: Rig) -> None:
    """The hold above is per component: a fire whose detector has nothing older queued is
    marked delivered when the centre confirms it, though a backlog of other points still
    drains (the transmission light and its 40 s failure signal read the buffer's acks)."""
    rig.centre.set_mode("delay", delay_s=0.5)
    rig.store(*[gb_event(100 + n, Kind.FAULT, Category.POWER) for n in range(300)])
    rig.store(gb_event(5))
    gb_rows = lambda: rig.buffer.next_rows(ReadCursor(reader=READER), 100_000)  # noqa: E731
    assert wait_until(lambda: not any(r.life_safety for r in gb_rows()))  # acked for "gb"
    # more left than the link holds in flight (4 packets of 22): not held for the backlog
    assert len(gb_rows()) > 150, "the fire waited for the backlog ahead of it"


def _statuses(centre: Centre, pos: int) -> list[int]:
    return [
        obj["status"]
        for r in list(centre.records)
        if r["dir"] == "in" and r.get("typeflag") == 2
        for obj in r["objects"]
        if obj["component_address"][1] == pos
    ]


@pytest.mark.slow
def test_reconnects_after_a_link_fault_queue_the_running_state_once(tmp_path: Path) -> None:
    """Review S3: each reconnect while the fault was out queued another running state; the
    centre got (and confirmed) bit 5 over and over after the link came back."""
    emitted = Emitted()
    faults = Faults(emitted, _texts=Texts("en"))
    readers = ("mqtt", Reader(READER, carries))
    with Centre() as centre:
        port = centre.port
        centre.close()
        with EventBuffer(tmp_path / "b.db", IDENT, 1000, readers=readers) as buffer:
            uplink = GbUplink(settings(port), buffer, faults=faults, emit=emitted).start()
            try:
                assert emitted.wait_state("link_fault") is not None
                with Centre(port=port) as back:
                    back.set_mode("close", count=3)  # three connections cut on arrival
                    assert emitted.wait_state("normal") is not None
                    assert wait_until(lambda: not uplink.stats()["link_fault"])
                    assert wait_until(lambda: uplink.stats()["queued_packets"] == 0)
                    assert back.counts["connections"] >= 4
                    confirmed = [
                        r
                        for r in list(back.records)
                        if _uitd(r) & 0b100000 and r.get("action") == "confirm"
                    ]
                assert len(confirmed) == 1, confirmed
            finally:
                uplink.stop()


def _received(centre: Centre) -> set[int]:
    return {p for r in list(centre.records) if r["dir"] == "in" for p in _positions(r)}


def _uitd(record: dict[str, Any]) -> int:
    if record["dir"] != "in" or record.get("typeflag") != 21:
        return 0
    return int(record["objects"][0]["status"]) | 0x100  # 0x100: "a state was seen"


def test_a_centre_restart_loses_nothing(rig: Rig) -> None:
    rig.store(gb_event(1, Kind.FAULT, Category.POWER))
    assert wait_until(lambda: rig.gb_depth() == 0)
    port = rig.centre.port
    rig.centre.close()
    rig.store(gb_event(2, Kind.FAULT, Category.POWER), gb_event(3))
    with Centre(port=port) as again:
        assert again.wait_for(
            lambda rs: {2, 3} <= {p for r in rs if r["dir"] == "in" for p in _positions(r)},
            timeout=15,
        )
        assert wait_until(lambda: rig.gb_depth() == 0)  # its confirms came back


def test_the_centres_requests_are_answered(tmp_path: Path) -> None:
    duty_calls: list[dict[str, Any]] = []
    emitted = Emitted()
    readers = ("mqtt", Reader(READER, carries))
    with Centre() as centre, EventBuffer(tmp_path / "b.db", IDENT, 1000, readers=readers) as buffer:
        uplink = GbUplink(
            settings(centre.port),
            buffer,
            emit=emitted,
            on_duty_check=lambda **kw: duty_calls.append(kw),
        ).start()
        try:
            # the centre sends to the UITDs it has accepted: wait for its side, not ours
            assert wait_until(lambda: bool(centre.state()["peers"]))
            assert centre.duty_check(minutes=3)
            assert wait_until(lambda: duty_calls == [{"source": "centre", "timeout_s": 180.0}])
            centre.clock_sync()
            sync = emitted.wait_state("gb_clock_sync")
            assert sync is not None and sync.detail is not None
            assert sync.detail["action"] == "not_configured"
            centre.initialise()
            assert emitted.wait_state("gb_initialise") is not None
            assert centre.wait_for(lambda rs: any(r.get("typeflag") == 25 for r in rs))
            centre.read(81)
            assert centre.wait_for(
                lambda rs: any(r["dir"] == "in" and r["command"] == 5 for r in rs)
            )
            centre.read(62, [[1, 1, 1, 2]])  # no answer_read wired: denied
            assert centre.wait_for(
                lambda rs: any(r["dir"] == "in" and r["command"] == 6 for r in rs)
            )
            confirms = [r for r in centre.records if r["dir"] == "in" and r["command"] == 3]
            assert len(confirms) >= 3  # duty check, clock sync, initialise
        finally:
            uplink.stop()


def test_a_stopped_uplink_leaves_no_thread(tmp_path: Path) -> None:
    with (
        Centre() as centre,
        EventBuffer(tmp_path / "b.db", IDENT, 100, readers=("mqtt", "gb")) as b,
    ):
        before = threading.active_count()
        uplink = GbUplink(settings(centre.port), b).start()
        assert wait_until(lambda: uplink.connected)
        uplink.stop()
        assert wait_until(lambda: threading.active_count() == before)
        assert UitdState  # the UITD state type the heartbeat carries
        assert Adu


_CHILD = """
import sys
from pathlib import Path
from agent.buffer import EventBuffer, Reader
from agent.gb26875.mapping import carries
from agent.gb26875.uplink import GbUplink
from agent.uplink import Uplink
from tests.test_gb26875_uplink import gb_event, settings
from tests.uplink_helpers import IDENT, Settings
from core.events import Category, Kind

db, gb_port, mqtt_port, first, count = Path(sys.argv[1]), *map(int, sys.argv[2:6])
buf = EventBuffer(db, IDENT, 100_000, readers=("mqtt", Reader("gb", carries))).start()
gb = GbUplink(settings(gb_port), buf)
mqtt = Uplink(Settings("127.0.0.1", mqtt_port, topic_prefix="gbkill", client_id="gbkill"),
              IDENT, buf, version="test", config_digest="kill")
buf.on_stored = lambda: (gb.wake(), mqtt.wake())
gb.start()
mqtt.start()
for n in range(first, first + count):
    buf.submit(gb_event(n, Kind.FAULT, Category.POWER)).result(10)
    print(n, flush=True)
sys.stdin.read()  # until killed
"""


def _run_and_kill(db: Path, centre: Centre, broker: Any, first: int) -> list[int]:
    """A process with the buffer and both uplinks stores 200 records; SIGKILL after 150."""
    root = Path(__file__).resolve().parent.parent
    args = [str(db), str(centre.port), str(broker.port), str(first), "200"]
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        stored = [int(child.stdout.readline()) for _ in range(150)]
        child.kill()
        child.wait(10)
        return stored + [int(line) for line in child.stdout.read().split()]


@pytest.mark.slow
def test_kill_9_of_the_agent_loses_nothing_on_either_uplink(tmp_path: Path, broker: Any) -> None:
    """kill -9 three times while both uplinks deliver from one buffer (the centre's confirms
    lag, so kills land mid-exchange); then a clean run drains. The centre has every record
    at least once and counted each duplicate; the MQTT feed has every record too."""
    db = tmp_path / "b.db"
    collector = Collector(broker.host, broker.port, "gbkill/#")
    stored: list[int] = []
    try:
        with Centre() as centre:
            centre.set_mode("delay", delay_s=0.05)
            for first in (1, 201, 401):
                stored += _run_and_kill(db, centre, broker, first)
            centre.set_mode("confirm")
            readers = ("mqtt", Reader(READER, carries))
            with EventBuffer(db, IDENT, 100_000, readers=readers) as buffer:
                uplink = GbUplink(settings(centre.port), buffer).start()
                try:
                    got = partial(_received, centre)
                    assert centre.wait_for(lambda _: set(stored) <= got(), timeout=30)
                    assert wait_until(
                        lambda: not buffer.next_rows(ReadCursor(reader=READER), 10), timeout=10
                    )
                    # what MQTT has not confirmed is still there for it: nothing left the
                    # buffer because only the centre had it
                    pending_mqtt = buffer.next_rows(ReadCursor(reader="mqtt"), 100_000)
                finally:
                    uplink.stop()
            received = [p for r in centre.records if r["dir"] == "in" for p in _positions(r)]
            dupes = len(received) - len(set(received))
            assert centre.counts["duplicates"] == dupes  # every duplicate seen and counted
        on_feed = {p["point"] for p in collector.payloads("event")}
        waiting = {int(json.loads(r.payload)["point"][1:]) for r in pending_mqtt}
        assert on_feed, "the MQTT uplink published nothing: the test proves nothing"
        missing = {n for n in stored if f"p{n}" not in on_feed and n not in waiting}
        assert not missing, f"neither published nor still buffered for MQTT: {sorted(missing)[:5]}"
    finally:
        collector.close()


# --- wired into the gateway: one buffer, two uplinks -------------------------------------


def _gateway(tmp_path: Path, centre_port: int, topic: str, broker: tuple[str, int]) -> Any:
    from agent.runtime import Gateway
    from tests.test_runtime import example_config

    cfg = example_config(tmp_path)
    gb = settings(centre_port)
    text = cfg.path.read_text(encoding="utf-8").replace(
        'topic_prefix = "alarmgw"', f'topic_prefix = "{topic}"'
    )
    text += (
        f'\n[gb26875]\nhost = "127.0.0.1"\nport = {centre_port}\nuitd_address = 889\n'
        "centre_address = 1\nreconnect_min_s = 0.05\nreconnect_max_s = 0.2\n"
    )
    cfg.path.write_text(text, encoding="utf-8")
    from agent.config import load_config

    loaded = load_config(cfg.path)
    assert loaded.gb26875 is not None and loaded.gb26875.port == gb.port
    return Gateway(loaded, broker=broker)


@contextlib.contextmanager
def _running(gw: Any) -> Iterator[Any]:
    gw.buffer.start()
    for uplink in gw.uplinks:
        uplink.start()
    try:
        yield gw
    finally:
        for uplink in gw.uplinks:
            uplink.stop()
        gw.buffer.close()
        gw.pointstate.close()


def _mqtt_events(collector: Collector) -> list[str]:
    return [p.get("point") for p in collector.payloads("event")]


def test_the_gateway_feeds_both_uplinks_from_one_buffer_and_one_down_never_stops_the_other(
    tmp_path: Path, shared_broker_url: tuple[str, int], unique_topic: str
) -> None:
    collector = Collector(*shared_broker_url, f"{unique_topic}/#")
    centre = Centre().start()
    port = centre.port
    try:
        gw = _gateway(tmp_path, port, unique_topic, shared_broker_url)
        assert [r.name for r in gw.buffer.readers] == ["mqtt", "gb"]
        assert gw.gb_uplink in gw.uplinks
        with _running(gw):
            gw.emit(gb_event(1))
            assert collector.wait_for(lambda: "p1" in _mqtt_events(collector))
            assert centre.wait_for(lambda rs: 1 in [p for r in rs for p in _positions(r)])
            assert wait_until(lambda: gw.buffer.stats()["event_depth"] == 0)
            assert gw.local_view.status()["gb26875"]["confirmed_rows"] >= 1
            # the centre goes away: MQTT keeps delivering, the GB copy waits
            centre.close()
            gw.emit(gb_event(2))
            assert collector.wait_for(lambda: "p2" in _mqtt_events(collector))
            assert wait_until(lambda: gw.buffer.stats()["readers"] == {"mqtt": 0, "gb": 1})
            with Centre(port=port) as back:
                assert back.wait_for(lambda rs: 2 in [p for r in rs for p in _positions(r)])
                assert wait_until(lambda: gw.buffer.stats()["event_depth"] == 0)
    finally:
        centre.close()
        collector.close()


def test_with_the_broker_down_the_centre_still_gets_everything(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: the broker is down
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with Centre() as centre:
        gw = _gateway(tmp_path, centre.port, "alarmgw-t", ("127.0.0.1", dead))
        with _running(gw):
            gw.emit(gb_event(3))
            gw.emit(gb_event(4, Kind.FAULT, Category.POWER))
            assert centre.wait_for(
                lambda rs: {3, 4} <= {p for r in rs if r["dir"] == "in" for p in _positions(r)}
            )
            assert wait_until(lambda: gw.buffer.stats()["readers"]["gb"] == 0)
            assert gw.buffer.stats()["readers"]["mqtt"] >= 2  # kept for the broker's return


@pytest.mark.parametrize(
    ("set_clock", "ntp", "action"),
    [
        (True, False, "set"),
        (True, True, "kept_by_ntp"),
        (False, False, "not_configured"),
        (True, False, "refused"),  # no CAP_SYS_TIME: said, not raised
    ],
)
def test_a_clock_sync_sets_the_clock_only_when_configured_and_not_kept_by_ntp(
    tmp_path: Path, set_clock: bool, ntp: bool, action: str
) -> None:
    from agent.gb26875.codec import GbTime

    calls: list[float] = []

    def setter(epoch: float) -> None:
        if action == "refused":
            raise PermissionError(1, "Operation not permitted")
        calls.append(epoch)

    emitted = Emitted()
    with (
        Centre() as centre,
        EventBuffer(
            tmp_path / "b.db", IDENT, 100, readers=("mqtt", Reader(READER, carries))
        ) as buffer,
    ):
        seq = buffer.submit(gb_event(1, Kind.FAULT, Category.POWER)).result(5).seq
        uplink = GbUplink(
            settings(centre.port, set_clock=set_clock),
            buffer,
            emit=emitted,
            clock_synced=lambda: ntp,
            set_clock=setter,
        ).start()
        try:
            assert wait_until(lambda: bool(centre.state()["peers"]))
            assert centre.clock_sync(GbTime(0, 0, 12, 5, 12, 26))  # 12:00 Beijing = 04:00 UTC
            sync = emitted.wait_state("gb_clock_sync")
            assert sync is not None and sync.detail is not None
            assert sync.detail["action"] == action
            if action == "refused":
                assert sync.detail["why"] == "Operation not permitted"
            assert calls == ([1_796_443_200] if action == "set" else [])
            # the buffered record keeps its seq: nothing is renumbered
            assert seq in [r.seq for r in buffer.next_rows(ReadCursor(reader="mqtt"), 10)]
        finally:
            uplink.stop()


def test_a_hook_that_raises_is_a_fault_and_a_deny_and_the_link_goes_on(tmp_path: Path) -> None:
    emitted = Emitted()
    faults = Faults(emitted, _texts=Texts("en"))

    def broken_read(adu: Adu) -> Adu | None:
        raise RuntimeError("read hook bug")

    with (
        Centre() as centre,
        EventBuffer(
            tmp_path / "b.db", IDENT, 100, readers=("mqtt", Reader(READER, carries))
        ) as buffer,
    ):
        uplink = GbUplink(
            settings(centre.port), buffer, faults=faults, answer_read=broken_read
        ).start()
        buffer.on_stored = uplink.wake
        try:
            assert wait_until(lambda: bool(centre.state()["peers"]))
            assert centre.read(62, [[1, 1, 1, 2]])
            fault = emitted.wait_state("internal_error")
            assert fault is not None and fault.point == "gb26875-request-62"
            assert centre.wait_for(
                lambda rs: any(r["dir"] == "in" and r["command"] == 6 for r in rs)
            )
            buffer.submit(gb_event(5, Kind.FAULT, Category.POWER)).result(5)
            assert centre.wait_for(lambda rs: 5 in [p for r in rs for p in _positions(r)])
        finally:
            uplink.stop()


def _self_signed(d: Path, *san: str) -> tuple[Path, Path]:
    cert, key = d / "c.pem", d / "c.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=" + ",".join(san),
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
def test_over_tls_records_arrive_and_a_wrong_certificate_is_a_link_fault(tmp_path: Path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path, "IP:127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    (tmp_path / "other").mkdir()
    other, _ = _self_signed(tmp_path / "other", "IP:127.0.0.1")  # a certificate we do not trust
    readers = ("mqtt", Reader(READER, carries))
    with (
        Centre(tls=server) as centre,
        EventBuffer(tmp_path / "b.db", IDENT, 100, readers=readers) as buffer,
    ):
        good = GbUplink(settings(centre.port, ca_file=cert), buffer).start()
        buffer.on_stored = good.wake
        try:
            buffer.submit(gb_event(1)).result(5)
            assert centre.wait_for(lambda rs: 1 in [p for r in rs for p in _positions(r)])
        finally:
            good.stop()
        emitted = Emitted()
        faults = Faults(emitted, _texts=Texts("en"))
        cfg = settings(centre.port, ca_file=other, heartbeat_s=0.3, confirm_timeout_s=0.1)
        wrong = GbUplink(cfg, buffer, faults=faults).start()
        try:
            fault = emitted.wait_state("link_fault")
            assert fault is not None and "CERTIFICATE_VERIFY_FAILED" in (fault.text or "")
        finally:
            wrong.stop()


def test_the_gateway_wires_the_centres_duty_check_reads_and_readings(tmp_path: Path) -> None:
    """In the running gateway the centre's duty check prompts on site and its answer goes
    back as typeflag 24 bit 5; a read of a panel's system state is answered from live state
    (not denied); a reading of a mapped analog point reaches the centre as typeflag 3."""
    from core.events import Reading

    with socket.socket() as probe:  # the broker is down: the centre alone is asserted
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with Centre() as centre:
        gw = _gateway(tmp_path, centre.port, "alarmgw-t", ("127.0.0.1", dead))
        with _running(gw):
            assert wait_until(lambda: bool(centre.state()["peers"]))
            assert centre.duty_check(minutes=1)
            assert wait_until(lambda: gw.duty.waiting is not None)
            assert gw.duty.waiting["source"] == "centre"
            assert gw.duty.answer("cli:test")["answered"] is True
            assert centre.wait_for(
                lambda rs: any(
                    r["dir"] == "in" and r.get("typeflag") == 24 and o.get("flags") == 32
                    for r in rs
                    for o in r.get("objects", [])
                )
            )
            centre.read(61, [[1, 1]])  # the fire panel (system type 1) at system address 1
            assert centre.wait_for(
                lambda rs: any(
                    r["dir"] == "in" and r["command"] == 5 and r.get("typeflag") == 1 for r in rs
                )
            )
            assert not [r for r in centre.records if r["dir"] == "in" and r["command"] == 6]
            gw.emit(Reading("ai-1", "ch2_level", 2.5, "m"))
            assert centre.wait_for(
                lambda rs: any(
                    r["dir"] == "in" and r.get("typeflag") == 3 and o.get("analog_type") == 2
                    for r in rs
                    for o in r.get("objects", [])
                )
            )


@pytest.mark.slow
def test_a_failed_read_of_older_rows_never_lets_a_fire_be_acked_ahead_of_them(
    tmp_path: Path,
) -> None:
    """Review D: a read of the ordinary events that fails returns nothing, which is no proof
    that nothing older is left. A fire that overtook its detector's older restore must stay
    unacked while that restore is unread, so a restart still ends the centre on FIRE. The
    failure is put where SQLite would raise (the stream read of the uplink's thread): a card
    that fails one query and answers the next cannot be made on this machine."""
    failing = threading.Event()
    failing.set()
    readers = ("mqtt", Reader(READER, carries))
    with Centre() as centre, EventBuffer(tmp_path / "b.db", IDENT, 1000, readers=readers) as buf:
        real = buf._read_rows

        def read_rows(stream: Any, after: int, limit: int, bit: int = 0) -> Any:
            on_uplink = threading.current_thread() is not threading.main_thread()
            if failing.is_set() and stream.name == "event" and on_uplink:
                buf.read_failures += 1  # what _read_rows does on a sqlite3.Error
                return []
            return real(stream, after, limit, bit)

        buf._read_rows = read_rows  # type: ignore[method-assign]
        restore, fire = buf.submit_many([gb_event(7, Kind.RESTORE), gb_event(7)]).result(10).seqs
        first = GbUplink(settings(centre.port), buf, emit=Emitted())
        buf.on_stored = first.wake
        first.start()
        try:
            assert centre.wait_for(lambda rs: 7 in [p for r in rs for p in _positions(r)])
            assert wait_until(lambda: first.counters.alarms_held == 1)  # confirmed, held
            pending = sorted(r.seq for r in buf.next_rows(ReadCursor(reader=READER), 10))
            assert pending == [restore, fire]  # the fire is not acked ahead of its restore
        finally:
            first.stop()
        failing.clear()  # the card answers again; the agent restarted
        second = GbUplink(settings(centre.port), buf, emit=Emitted())
        buf.on_stored = second.wake
        second.start()
        try:
            assert wait_until(lambda: not buf.next_rows(ReadCursor(reader=READER), 10))
        finally:
            second.stop()
    words = [
        o["status"]
        for r in centre.records
        if r["dir"] == "in" and r.get("typeflag") == 2
        for o in r.get("objects", [])
        if o.get("component_address", [None, None])[1] == 7
    ]
    assert words and words[-1] & 0b10, [bin(w) for w in words]  # the centre's last word: FIRE
