"""LatestStates: keep the centre's last word on each component the latest one.

A fire alarm leaves as a priority packet, ahead of older ordinary records (the buffer reads
life-safety rows first, the link sends priority packets at once). GB/T 26875.3 carries no
sequence number and its time labels have 1 s steps, so a restore stored between two fire
alarms of one detector would reach the centre last and leave it showing the detector
normal while it is in alarm. The GB uplink tells LatestStates what it sends as priority
(`remember`) and, when the centre confirmed an ordinary packet, asks for the later priority
states that packet's older states would otherwise have the last word over (`later_than`):
those go again, as a repeat of what the centre already holds.

Memory only, bounded (MAX_REMEMBERED components, the oldest forgotten first); it must never
do I/O or raise on what it is given.
"""

from __future__ import annotations

from typing import Final

from agent.gb26875.adu import AduObject, ComponentState
from agent.gb26875.mapping import Batch, Mapped
from core.events import Lane

MAX_REMEMBERED: Final = 4096  # components whose latest priority state is kept

ComponentKey = tuple[int, int, int, int, int]  # system type/address, component type, zone, pos


class LatestStates:
    """Per component, the latest state sent as a priority packet: (lane, seq, object)."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._sent: dict[ComponentKey, tuple[Lane, int, AduObject]] = {}

    def remember(self, mapped: list[Mapped]) -> None:
        for item in mapped:
            key = component_key(item.obj)
            if key is None or not item.priority:
                continue
            lane, seq = item.row.lane, item.row.seq
            known = self._sent.get(key)
            if known is None or known[0] is not lane or known[1] < seq:
                self._sent.pop(key, None)  # re-inserted last: the oldest is forgotten first
                self._sent[key] = (lane, seq, item.obj)
                if len(self._sent) > self._limit:
                    del self._sent[next(iter(self._sent))]

    def later_than(self, batch: Batch) -> list[AduObject]:
        """The later priority states of the components whose older state `batch` carried."""
        later: dict[ComponentKey, AduObject] = {}
        for row, obj in zip(batch.rows, batch.adu.objects, strict=False):
            key = component_key(obj)
            known = self._sent.get(key) if key is not None else None
            if key and known and known[0] is row.lane and known[1] > row.seq:
                later[key] = known[2]
        return list(later.values())


def component_key(obj: AduObject) -> ComponentKey | None:
    if not isinstance(obj, ComponentState):
        return None
    address = obj.component_address
    return (obj.system_type, obj.system_address, obj.component_type, address.zone, address.position)
