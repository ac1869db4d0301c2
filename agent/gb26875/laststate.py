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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agent.buffer import StoredRow
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

    def later_than(self, batch: Batch) -> dict[ComponentKey, AduObject]:
        """The later priority states, per component, of the components whose older state
        `batch` carried. A component's newest row in the batch is the one that counts: a
        restore after the sent fire in the same batch is the last word itself."""
        newest: dict[ComponentKey, StoredRow] = {}
        for row, obj in zip(batch.rows, batch.adu.objects, strict=False):
            key = component_key(obj)
            if key is not None and (key not in newest or newest[key].seq < row.seq):
                newest[key] = row
        later: dict[ComponentKey, AduObject] = {}
        for key, row in newest.items():
            known = self._sent.get(key)
            if known and known[0] is row.lane and known[1] > row.seq:
                later[key] = known[2]
        return later


@dataclass
class _Hold:
    row: StoredRow
    key: ComponentKey
    confirmed: bool = False  # the centre confirmed the priority packet that carried it
    older_read: bool = False  # every row stored before it has been read (and mapped)


class HeldAlarms:
    """Priority rows the centre confirmed but the buffer is not told of yet (the durable
    half of the last word). A fire overtakes an older restore of its detector; were the
    fire acked at its confirm, a restart before the restore's confirm would leave only the
    restore for the centre (its last word NORMAL while the detector is in alarm: the
    LatestStates above are memory only). So a priority row is acked only once every older
    row of its component is confirmed and any restate of it is too: after a restart it is
    read again, goes again, and the restore that follows it is restated over.

    `read` what _fill mapped, `caught_up` when a fill read all there was, `passed` with the
    cursor, `confirmed`/`done` at confirms, `restating`/`restated` around a restate packet;
    `releasable` pops the rows to ack. Memory bounded by the rows read and not acked."""

    def __init__(self) -> None:
        self._holds: dict[tuple[Lane, int], _Hold] = {}
        self._unconfirmed: dict[ComponentKey, set[tuple[Lane, int]]] = {}  # ordinary, in flight
        self._restating: dict[ComponentKey, int] = {}  # restate packets in flight

    def __len__(self) -> int:
        return len(self._holds)

    def read(self, mapped: list[Mapped]) -> None:
        for item in mapped:
            key = component_key(item.obj)
            if key is None:
                continue
            if item.priority:
                self._holds[(item.row.lane, item.row.seq)] = _Hold(item.row, key)
            else:
                self._unconfirmed.setdefault(key, set()).add((item.row.lane, item.row.seq))

    def unread(self) -> list[StoredRow]:
        """The held alarms some older row of which may not be read yet."""
        return [h.row for h in self._holds.values() if not h.older_read]

    def looked_behind(self, lane: Lane, upto: int, older: list[Mapped]) -> None:
        """Every row of `lane` before `upto` not read yet was looked at: `older` are those
        that map. They are waited for as if sent; the alarms of `lane` before `upto` no
        longer wait for the cursor."""
        for item in older:
            key = component_key(item.obj)
            if key is not None and not item.priority:
                self._unconfirmed.setdefault(key, set()).add((item.row.lane, item.row.seq))
        for (hold_lane, seq), hold in self._holds.items():
            if hold_lane is lane and seq <= upto:
                hold.older_read = True

    def caught_up(self) -> None:
        """A fill read everything stored: no older row of any held alarm is left unread."""
        for hold in self._holds.values():
            hold.older_read = True

    def passed(self, after: dict[str, int]) -> None:
        """The cursor's place per stream: the ordinary rows of a lane before it are read."""
        for (lane, seq), hold in self._holds.items():
            if after.get(lane.value, 0) > seq:
                hold.older_read = True

    def confirmed(self, rows: tuple[StoredRow, ...]) -> list[StoredRow]:
        """A priority packet confirmed: its rows that are not held (ack them now)."""
        free = []
        for row in rows:
            hold = self._holds.get((row.lane, row.seq))
            if hold is None:
                free.append(row)
            else:
                hold.confirmed = True
        return free

    def done(self, rows: Sequence[StoredRow], objects: Sequence[AduObject]) -> None:
        """Ordinary rows confirmed or set aside: no longer older rows in flight."""
        for row, obj in zip(rows, objects, strict=False):
            key = component_key(obj)
            seqs = self._unconfirmed.get(key) if key is not None else None
            if seqs is not None and key is not None:
                seqs.discard((row.lane, row.seq))
                if not seqs:
                    del self._unconfirmed[key]

    def forget(self, rows: tuple[StoredRow, ...]) -> None:
        """Priority rows set aside (denied): no longer held."""
        for row in rows:
            self._holds.pop((row.lane, row.seq), None)

    def restating(self, keys: set[ComponentKey], step: int) -> None:
        for key in keys:
            left = self._restating.get(key, 0) + step
            if left > 0:
                self._restating[key] = left
            else:
                self._restating.pop(key, None)

    def blocking(self) -> list[tuple[Lane, int]]:
        """The older rows that alone keep a confirmed alarm held (the owner checks that the
        buffer still has them: a row dropped by an overflow is never confirmed)."""
        out: set[tuple[Lane, int]] = set()
        for hold in self._holds.values():
            if hold.confirmed and hold.older_read and not self._restating.get(hold.key):
                lane, seq = hold.row.lane, hold.row.seq
                out.update(o for o in self._unconfirmed.get(hold.key, ()) if o[0] is lane
                           and o[1] < seq)  # fmt: skip
        return sorted(out)

    def gone(self, lane: Lane, seq: int) -> None:
        """This older row left the buffer without a confirm (dropped): no longer waited for."""
        for key, seqs in list(self._unconfirmed.items()):
            seqs.discard((lane, seq))
            if not seqs:
                del self._unconfirmed[key]

    def releasable(self) -> list[StoredRow]:
        out = []
        for at, hold in list(self._holds.items()):
            if not (hold.confirmed and hold.older_read) or self._restating.get(hold.key):
                continue
            older = self._unconfirmed.get(hold.key, ())
            if any(lane is hold.row.lane and seq < hold.row.seq for lane, seq in older):
                continue
            del self._holds[at]
            out.append(hold.row)
        return out


def component_key(obj: AduObject) -> ComponentKey | None:
    if not isinstance(obj, ComponentState):
        return None
    address = obj.component_address
    return (obj.system_type, obj.system_address, obj.component_type, address.zone, address.position)
