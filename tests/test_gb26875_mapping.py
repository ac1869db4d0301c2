"""Buffered records -> GB/T 26875.3 objects and packets (agent/gb26875/mapping.py)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from agent.buffer import StoredRow
from agent.gb26875.adu import ComponentAddress, ComponentAnalog, ComponentState, UitdOperation
from agent.gb26875.codec import GbTime
from agent.gb26875.laststate import HeldAlarms, LatestStates
from agent.gb26875.mapping import batches, carries, map_row
from core.events import Category, Event, Kind, Lane, Reading, Severity, splice_seq
from tests.uplink_helpers import IDENT, reading

# 2026-12-05 12:34:56 UTC = 20:34:56 Beijing time
TS_MS = 1_796_474_096_000

GB_FIRE = {"tf": 2, "sys_type": 1, "sys_addr": 0, "comp_type": 40, "zone": 3, "pos": 17}


def _event(category: Category = Category.FIRE, kind: Kind = Kind.ALARM, **kw: Any) -> Event:
    base = Event(
        kind,
        category,
        Severity.CRITICAL,
        "fire",
        "3楼 烟感 火警",
        "fap",
        "l1p17",
        ts_ms=TS_MS,
        location="三号楼三层东侧走廊护理站旁",
        point_name="17号感烟探测器",
        detail={"gb": {**GB_FIRE, "status": 0b11}},
    )
    return dataclasses.replace(base, **kw)


def _row(record: Event | Reading, seq: int = 1) -> StoredRow:
    payload = splice_seq(record.payload_without_seq(IDENT), seq)
    drop_class = 3 if isinstance(record, Event) and record.is_life_safety_alarm else 1
    return StoredRow(record.lane, seq, record.ts_ms, payload, drop_class)


def test_a_fire_alarm_is_a_priority_component_state_in_beijing_time() -> None:
    mapped = map_row(_row(_event()))
    assert mapped is not None and mapped.priority
    obj = mapped.obj
    assert isinstance(obj, ComponentState)
    assert (obj.system_type, obj.system_address, obj.component_type) == (1, 0, 40)
    assert obj.component_address == ComponentAddress(3, 17)
    assert obj.status == 0b11
    assert obj.time == GbTime(56, 34, 20, 5, 12, 26)
    # location + point name, cut to 31 bytes on a character boundary (2 bytes per hanzi)
    assert len(obj.description.encode("gb18030")) <= 31
    assert obj.description == "三号楼三层东侧走廊护理站旁 17号"  # 31 bytes exactly
    assert len(obj.encode()) == 46  # 40-byte object + 6-byte time


def test_life_safety_alarms_are_priority_a_restore_and_a_fault_are_not() -> None:
    for category in (Category.MANUAL, Category.GAS, Category.ELECTRICAL, Category.FIRE):
        mapped = map_row(_row(_event(category)))
        assert mapped is not None and mapped.priority, category  # review S1: gas too
    restore = map_row(_row(_event(kind=Kind.RESTORE)))
    fault = map_row(_row(_event(Category.POWER, kind=Kind.FAULT)))
    assert restore is not None and not restore.priority
    assert fault is not None and not fault.priority


def test_analog_and_uitd_operation_objects() -> None:
    analog = {**GB_FIRE, "tf": 3, "comp_type": 17, "analog_type": 128, "value": -320}
    mapped = map_row(_row(_event(Category.ELECTRICAL, detail={"gb": analog})))
    assert mapped is not None and isinstance(mapped.obj, ComponentAnalog)
    assert (mapped.obj.analog_type, mapped.obj.value) == (128, -320)
    duty = map_row(
        _row(
            _event(
                Category.SYSTEM, Kind.STATE, detail={"gb": {"tf": 24, "flags": 32, "operator": 0}}
            )
        )
    )
    assert duty is not None and duty.obj == UitdOperation(32, 0, GbTime(56, 34, 20, 5, 12, 26))


def test_records_without_or_with_broken_coordinates_are_set_aside() -> None:
    assert map_row(_row(_event(detail=None))) is None
    assert map_row(_row(_event(detail={"gb": {**GB_FIRE, "status": 70000}}))) is None
    assert map_row(_row(_event(detail={"gb": {"tf": 99}}))) is None
    assert map_row(_row(_event(detail={"gb": "2"}))) is None
    assert map_row(_row(reading(1))) is None  # no static mapping given
    bad = StoredRow(Lane.EVENT, 1, 0, b"not json")
    assert map_row(bad) is None


def test_a_reading_is_an_analog_when_the_static_mapping_knows_its_point() -> None:
    def analogs(r: Reading) -> dict[str, Any] | None:
        if r.point != "pressure":
            return None
        return {**GB_FIRE, "tf": 3, "comp_type": 99, "analog_type": 4, "value": round(r.value * 10)}

    assert carries(reading(30), analogs) and not carries(reading(30))
    mapped = map_row(_row(reading(30)), analogs)
    assert mapped is not None and isinstance(mapped.obj, ComponentAnalog)
    assert mapped.obj.value == 3  # 0.30 MPa in 0.1 MPa steps


def test_the_store_time_predicate_follows_the_contract() -> None:
    assert carries(_event())
    assert not carries(_event(detail={"other": 1}))
    assert not carries(reading(1))


def test_packets_respect_the_object_limit_and_split_on_priority() -> None:
    rows = [map_row(_row(_event(kind=Kind.RESTORE), seq)) for seq in range(1, 31)]
    fire = map_row(_row(_event(), 31))
    more = map_row(_row(_event(kind=Kind.RESTORE), 32))
    items = [m for m in [*rows, fire, more] if m is not None]
    out = batches(items)
    assert [len(b.rows) for b in out] == [22, 8, 1, 1]
    assert [b.priority for b in out] == [False, False, True, False]
    assert [r.seq for b in out for r in b.rows] == list(range(1, 33))  # order kept
    assert all(len(b.adu.encode()) <= 1024 for b in out)


def _mapped(kind: Kind, seq: int, pos: int = 17) -> Any:
    status = 0b11 if kind is Kind.ALARM else 0b1
    event = _event(kind=kind, detail={"gb": {**GB_FIRE, "pos": pos, "status": status}})
    mapped = map_row(_row(event, seq))
    assert mapped is not None
    return mapped


def test_a_restore_older_than_a_sent_fire_is_followed_by_that_fire() -> None:
    """agent/gb26875/laststate.py: review item 3 (fire, restore, fire on one detector)."""
    latest = LatestStates()
    first, restore, second = (_mapped(k, s) for k, s in ((Kind.ALARM, 1), (Kind.RESTORE, 2),
                                                         (Kind.ALARM, 3)))  # fmt: skip
    latest.remember([first, second])  # the fires went first, as priority packets
    (batch,) = batches([restore])
    assert list(latest.later_than(batch).values()) == [second.obj]
    other = _mapped(Kind.RESTORE, 4, pos=18)  # another detector's restore: nothing to add
    assert list(latest.later_than(batches([other])[0]).values()) == []
    newer = _mapped(Kind.RESTORE, 5)  # a restore newer than the last fire: it is the last word
    assert list(latest.later_than(batches([newer])[0]).values()) == []


def test_the_latest_states_are_bounded() -> None:
    latest = LatestStates(limit=2)
    fires = [_mapped(Kind.ALARM, 10 + pos, pos=pos) for pos in (1, 2, 3)]
    latest.remember(fires)
    restores = [_mapped(Kind.RESTORE, pos, pos=pos) for pos in (1, 2, 3)]
    (batch,) = batches(restores)
    assert list(latest.later_than(batch).values()) == [
        fires[1].obj,
        fires[2].obj,
    ]  # the oldest forgotten


def _splits(items: list[Any]) -> Iterator[list[list[Any]]]:
    """Every way of cutting `items` into consecutive non-empty runs."""
    if not items:
        yield []
        return
    for n in range(1, len(items) + 1):
        for rest in _splits(items[n:]):
            yield [items[:n], *rest]


def test_the_centre_ends_with_each_components_latest_state_in_every_batching() -> None:
    """Review C item 5: fire/restore sequences of length 2..6 on one detector while the
    centre is away. The fires go first as priority packets, the restores in any cut into
    ordinary packets, each followed by what later_than restates: the centre's last word is
    the detector's latest state (main restated a fire after fire, restore, fire, restore)."""
    for length in range(2, 7):
        for kinds in itertools.product((Kind.ALARM, Kind.RESTORE), repeat=length):
            rows = [_mapped(kind, seq) for seq, kind in enumerate(kinds, start=1)]
            fires = [m for m in rows if m.priority]
            restores = [m for m in rows if not m.priority]
            for cut in _splits(restores):
                latest = LatestStates()
                latest.remember(fires)
                centre = [m.obj for m in fires]
                for run in cut:
                    for batch in batches(run):
                        centre += batch.adu.objects
                        centre += latest.later_than(batch).values()
                assert centre[-1] == rows[-1].obj, (kinds, [len(r) for r in cut])


def test_a_fire_that_overtook_an_older_restore_is_held_until_that_restore_is_done() -> None:
    """agent/gb26875/laststate.py HeldAlarms (review C item 1): the fire's row is acked
    only once the older restore of its detector is confirmed, or left the buffer otherwise
    (an overflow drop: never confirmed); another detector's fire is not held."""
    held = HeldAlarms()
    restore, fire, other = (
        _mapped(Kind.RESTORE, 1),
        _mapped(Kind.ALARM, 2),
        _mapped(Kind.ALARM, 3, pos=18),
    )
    held.read([fire, other, restore])
    held.caught_up()
    assert held.confirmed((fire.row, other.row)) == []
    assert held.releasable() == [other.row]  # nothing older of detector 18
    assert held.blocking() == [(Lane.EVENT, 1)]
    (batch,) = batches([restore])
    held.done(batch.rows, batch.adu.objects)
    assert held.releasable() == [fire.row]
    held.read([_mapped(Kind.RESTORE, 4), _mapped(Kind.ALARM, 5)])
    held.caught_up()
    assert held.confirmed((_mapped(Kind.ALARM, 5).row,)) == [] and held.releasable() == []
    held.gone(Lane.EVENT, 4)  # dropped by an overflow
    assert [r.seq for r in held.releasable()] == [5]
