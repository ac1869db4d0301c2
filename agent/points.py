"""Point rules: turn each decoded value of a field point into events and telemetry.

One `PointTracker` per point remembers what the platform was last told and
speaks only on change: state tables and flags raise an alarm/fault/supervisory
event when they enter an abnormal state and a restore when they return to
normal; analog thresholds trip with hysteresis (no chatter at the limit) and an
optional confirmation time; 4-20 mA wire breaks become faults; analog values go
out as telemetry every `telemetry_s`, and sooner when they move more than the
deadband. The first poll after start reports abnormal states (an alarm present
at boot is not missed) but not normal ones.

Conditions: every raise names one condition (its `state`), every restore the
one it ends (`detail.restores`); several thresholds of one point are separate
conditions. Only a normal state ends the conditions of a state table: a fire
that turns into a fault stays an active fire (a burnt detector reports fault)
until the panel says normal, and then each condition gets its own restore.
Conditions remembered from before a restart (agent.pointstate) seed a tracker:
the first poll does not raise them again, and restores those that cleared.

Detection times come from the `ts_ms` given to `update`; confirmation timers
run on a monotonic clock (`mono_s`, default time.monotonic()) because the Pi
has no RTC and NTP may step the wall clock by hours at any time.

This module must never do I/O and never raise on a value: a state code the
profile does not know is reported as a fault, not dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from agent.pointstate import ActiveCondition, PointKey
from agent.texts import CHINESE, Msg, Texts
from core.errors import FieldError
from core.events import Category, Event, Kind, Reading, Record, Severity
from drivers.codec import Value, decode, engineering_to_raw_units, why_unread
from drivers.profile import Direction, PointSpec, Profile, StateSpec, ThresholdSpec
from drivers.types import Block, PollClass, ReadRequest

WIRE_BREAK_STATE = "wire_break"
DECODE_ERROR_STATE = "decode_error"
# A broken loop clears only 1 % of the raw span above fault_below, so a current
# hovering at 3.8 mA cannot chatter between fault and restore.
WIRE_BREAK_HYSTERESIS = 0.01


def _fmt(value: Value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class _Meaning(NamedTuple):
    """What an event says, apart from where, when and which value."""

    kind: Kind
    category: Category
    severity: Severity
    state: str
    label: str


@dataclass(slots=True)
class _ThresholdState:
    active: bool = False
    pending_since: float | None = None  # monotonic seconds, never the wall clock


@dataclass(frozen=True, slots=True)
class PointOwner:
    """The device a point belongs to, as it appears in events."""

    device_id: str
    device_name: str
    location: str | None = None


def _orphan_restore(
    owner: PointOwner,
    point: str,
    point_name: str,
    cond: ActiveCondition,
    ts: int,
    synced: bool,
    texts: Texts,
) -> Event:
    """The restore of a remembered condition the profile no longer has (a point or a
    threshold removed while the agent was down): it cannot be observed any more."""
    return Event(
        kind=Kind.RESTORE,
        category=cond.category,
        severity=Severity.INFO,
        state="normal",
        text=f"{owner.device_name} {point_name} {texts(Msg.RESTORED_LABEL, label=cond.state)}",
        device=owner.device_id,
        point=point,
        ts_ms=ts,
        clock_synced=synced,
        device_name=owner.device_name,
        point_name=point_name,
        location=owner.location,
        detail={"restores": cond.condition, "reason": "no longer in the profile"},
    )


def state_of_code(spec: PointSpec, code: int, texts: Texts = CHINESE) -> StateSpec:
    """The state-table entry for a code; a code the profile does not list is a fault."""
    assert spec.states is not None
    return spec.states.get(code) or StateSpec(
        state=f"unknown_{code}",
        label=texts(Msg.UNKNOWN_CODE, code=code),
        normal=False,
        kind=Kind.FAULT,
        category=spec.category,
        severity=Severity.MINOR,
    )


def value_state(spec: PointSpec, value: Value) -> str | None:
    """The state the profile gives a value read now (state tables and flags), for a live
    read; None for analog points, whose state depends on hysteresis and confirm time."""
    if spec.states is not None and isinstance(value, int):
        return state_of_code(spec, value).state
    if spec.flag is not None:
        return spec.flag.active_state if value else spec.flag.inactive_state
    return None


class PointTracker:
    """Event rules of one point. Not thread-safe: one poller owns it.

    `remembered`: the conditions of this point the platform was told are active
    before a restart (agent.pointstate), by condition."""

    def __init__(
        self,
        device_id: str,
        device_name: str,
        location: str | None,
        spec: PointSpec,
        remembered: Mapping[str, ActiveCondition] | None = None,
        texts: Texts = CHINESE,
    ) -> None:
        self.owner = PointOwner(device_id, device_name, location)
        self.spec = spec
        self._texts = texts
        self._started = False
        self._stale = False
        self._state: StateSpec | None = None  # state tables and flags: where we are now
        # State tables and flags: the conditions raised and not yet ended by a normal
        # state, in the order raised (a fire stays active through a fault).
        self._held: dict[str, StateSpec] = {}
        self._thresholds = {tid: _ThresholdState() for tid in spec.thresholds}
        self._wire_broken = False
        self._orphans: list[ActiveCondition] = []  # remembered, but unknown to this spec
        self._last_value: Value | None = None
        self._sent_ts: int | None = None
        self._sent_value: Value | None = None
        self._sent_quality: str | None = None
        # in the order raised, as they would be held had the agent not restarted
        for cond in sorted((remembered or {}).values(), key=lambda c: c.since_ms):
            self._remember(cond)

    def _remember(self, cond: ActiveCondition) -> None:
        spec = self.spec
        by_state = {thr.state: tid for tid, thr in spec.thresholds.items()}
        if spec.states is not None or spec.flag is not None:
            self._held[cond.condition] = self._state_spec_of(cond)
        elif cond.condition == WIRE_BREAK_STATE and spec.fault_below is not None:
            self._wire_broken = True
        elif cond.condition in by_state:
            self._thresholds[by_state[cond.condition]].active = True
        else:
            self._orphans.append(cond)

    def _state_spec_of(self, cond: ActiveCondition) -> StateSpec:
        known = list((self.spec.states or {}).values())
        if self.spec.flag is not None:
            known.append(self._flag_state(active=True))
        for state in known:
            if state.state == cond.condition and not state.normal:
                return state
        # e.g. unknown_77, or a code the profile lost: what the event said is enough
        return StateSpec(cond.state, cond.state, False, cond.kind, cond.category, cond.severity)

    # --- what the status display asks -------------------------------------------------

    @property
    def value(self) -> Value | None:
        return self._last_value

    @property
    def stale(self) -> bool:
        return self._stale

    @property
    def state(self) -> str:
        """A one-word summary: the state name (and other held conditions), active
        thresholds, wire break, or normal."""
        if self._stale:
            return "stale"
        if self._wire_broken:
            return WIRE_BREAK_STATE
        if self._state is not None:
            if self._state.normal:
                return self._state.state
            others = [c for c in self._held if c != self._state.state]
            return ",".join([self._state.state, *others])
        active = [self.spec.thresholds[t].state for t, s in self._thresholds.items() if s.active]
        return ",".join(active) if active else "normal"

    def conditions(self) -> list[tuple[str, Kind]]:
        """Every condition active now, with its kind (for a status word such as GB/T
        26875.3's): held states, the current abnormal state, active thresholds, a wire break."""
        out = [(c.state, c.kind) for c in self._held.values() if c.kind is not None]
        now = self._state
        if (
            now is not None
            and not now.normal
            and now.kind is not None
            and now.state not in self._held
        ):
            out.append((now.state, now.kind))
        out += [
            (self.spec.thresholds[tid].state, self.spec.thresholds[tid].kind)
            for tid, st in self._thresholds.items()
            if st.active
        ]
        if self._wire_broken:
            out.append((WIRE_BREAK_STATE, Kind.FAULT))
        return out

    # --- input ------------------------------------------------------------------------

    def update(
        self, value: Value, ts_ms: int, clock_synced: bool = True, mono_s: float | None = None
    ) -> list[Record]:
        """Feed one decoded value; returns the events and readings it causes.
        `ts_ms` is the reported detection time; `mono_s` (default time.monotonic())
        times confirmations, so a wall-clock step can neither confirm nor stall one."""
        mono = time.monotonic() if mono_s is None else mono_s
        first = not self._started
        self._started = True
        self._stale = False
        self._last_value = value
        out: list[Record] = []
        if first:
            owner, spec = self.owner, self.spec
            out.extend(
                _orphan_restore(owner, spec.id, spec.name, c, ts_ms, clock_synced, self._texts)
                for c in self._orphans
            )
            self._orphans = []
        if self.spec.states is not None:
            out.extend(self._update_states(int(value), first, ts_ms, clock_synced))
        elif self.spec.flag is not None:
            out.extend(self._update_flag(bool(value), first, ts_ms, clock_synced))
        elif not isinstance(value, bool):
            out.extend(self._update_analog(value, ts_ms, clock_synced, mono))
        reading = self._telemetry(value, ts_ms, clock_synced)
        if reading is not None:
            out.append(reading)
        return out

    def mark_stale(self) -> None:
        """The device stopped answering: no events (the line reports comm loss), no
        telemetry until the next value, which is then sent at once. Known states are
        kept, so a condition that persists through the outage is not re-announced."""
        self._stale = True
        self._sent_ts = None
        for st in self._thresholds.values():
            st.pending_since = None  # a confirmation needs continuous observation

    # --- events -----------------------------------------------------------------------

    def _event(
        self, what: _Meaning, value: Value, ts_ms: int, clock_synced: bool, *,
        detail: dict[str, str] | None = None,
    ) -> Event:  # fmt: skip
        spec = self.spec
        text = f"{self.owner.device_name} {spec.name} {what.label}"
        analog = spec.states is None and spec.flag is None
        if analog:
            text += f" {_fmt(value)}" + (f" {spec.unit}" if spec.unit else "")
        return Event(
            kind=what.kind,
            category=what.category,
            severity=what.severity,
            state=what.state,
            text=text,
            device=self.owner.device_id,
            point=spec.id,
            value=value,
            unit=spec.unit if analog else None,
            ts_ms=ts_ms,
            clock_synced=clock_synced,
            device_name=self.owner.device_name,
            point_name=spec.name,
            location=self.owner.location,
            detail=detail,
        )

    def _enter(
        self, state: StateSpec, previous: StateSpec | None, value: Value, ts: int, synced: bool
    ) -> Event:
        assert state.kind is not None
        what = _Meaning(state.kind, state.category, state.severity, state.state, state.label)
        detail = {"previous": previous.state} if previous is not None else None
        return self._event(what, value, ts, synced, detail=detail)

    def _end_held(self, new: StateSpec, value: Value, ts: int, synced: bool) -> list[Record]:
        """A normal state ends every held condition, each with its own restore. One
        condition: the text names the new state ("恢复", "清除"); several: each says
        which condition ended ("火警恢复", "故障恢复")."""
        several = len(self._held) > 1
        out: list[Record] = []
        for cond in self._held.values():
            label = self._restored(cond.label) if several else new.label
            what = _Meaning(Kind.RESTORE, cond.category, Severity.INFO, new.state, label)
            out.append(self._event(what, value, ts, synced, detail={"restores": cond.state}))
        self._held.clear()
        return out

    def _transition(
        self, new: StateSpec, first: bool, value: Value, ts: int, synced: bool
    ) -> list[Record]:
        old = self._state
        self._state = new
        if not first and old == new:
            return []
        if new.normal:
            out = self._end_held(new, value, ts, synced)
            if old is not None and old.kind is Kind.STATE:
                # A plain state change (e.g. pump running -> stopped) is not a restore.
                what = _Meaning(Kind.STATE, old.category, Severity.INFO, new.state, new.label)
                out.append(self._event(what, value, ts, synced, detail={"restores": old.state}))
            return out
        if first and new.state in self._held:
            return []  # reported before the restart, and still so: not again
        if new.kind is not Kind.STATE:
            self._held[new.state] = new
        # Abnormal -> abnormal (fire -> fault) ends nothing: only a normal state does.
        previous = old if old is not None and not old.normal else None
        return [self._enter(new, previous, value, ts, synced)]

    def _update_states(self, code: int, first: bool, ts: int, synced: bool) -> list[Record]:
        state = state_of_code(self.spec, code, self._texts)
        return self._transition(state, first, code, ts, synced)

    def _flag_state(self, *, active: bool) -> StateSpec:
        flag = self.spec.flag
        assert flag is not None
        if active:
            return StateSpec(
                flag.active_state, flag.active_label, False, flag.kind, flag.category,
                flag.severity,
            )  # fmt: skip
        return StateSpec(
            flag.inactive_state, flag.inactive_label, True, None, flag.category, Severity.INFO
        )

    def _update_flag(self, active: bool, first: bool, ts: int, synced: bool) -> list[Record]:
        return self._transition(self._flag_state(active=active), first, active, ts, synced)

    # --- analogs ----------------------------------------------------------------------

    def _analog_state(self) -> str:
        """Where an analog point rests: its most severe active threshold, or normal."""
        active = [t for tid, t in self.spec.thresholds.items() if self._thresholds[tid].active]
        return min(active, key=lambda t: t.severity.rank).state if active else "normal"

    def _wire_break(self, value: float | int, ts: int, synced: bool) -> list[Record]:
        spec = self.spec
        if spec.fault_below is None or spec.raw_range is None:
            return []
        raw = engineering_to_raw_units(spec, value)
        span = abs(spec.raw_range[1] - spec.raw_range[0])
        if self._wire_broken:
            broken = raw < spec.fault_below + WIRE_BREAK_HYSTERESIS * span
        else:
            broken = raw < spec.fault_below
        if broken == self._wire_broken:
            return []
        self._wire_broken = broken
        wire_break = self._texts(Msg.WIRE_BREAK)
        if broken:
            what = _Meaning(Kind.FAULT, spec.category, Severity.MINOR, WIRE_BREAK_STATE, wire_break)
            return [self._event(what, value, ts, synced)]
        label = self._restored(wire_break)
        what = _Meaning(Kind.RESTORE, spec.category, Severity.INFO, self._analog_state(), label)
        return [self._event(what, value, ts, synced, detail={"restores": WIRE_BREAK_STATE})]

    def _threshold_step(self, thr: ThresholdSpec, value: float, mono: float) -> bool | None:
        """True when the threshold trips now, False when it clears now, else None."""
        st = self._thresholds[thr.id]
        above = thr.direction is Direction.ABOVE
        if st.active:
            limit = thr.value - thr.hysteresis if above else thr.value + thr.hysteresis
            if (value >= limit) if above else (value <= limit):
                return None  # inside the hysteresis band: still active
            st.active = False
            return False
        tripped = value >= thr.value if above else value <= thr.value
        if not tripped:
            st.pending_since = None  # the condition dropped out: the timer restarts
            return None
        if st.pending_since is None or mono < st.pending_since:
            st.pending_since = mono
        if mono - st.pending_since < thr.confirm_s:
            return None
        st.active = True
        st.pending_since = None
        return True

    def _update_analog(
        self, value: float | int, ts: int, synced: bool, mono: float
    ) -> list[Record]:
        out = self._wire_break(value, ts, synced)
        if self._wire_broken:
            # A broken loop reads as "0 MPa": thresholds hold their state until
            # the signal is back, and confirmation restarts then.
            for st in self._thresholds.values():
                st.pending_since = None
            return out
        # Decide every threshold first: a restore names the state the point rests in
        # after this poll (high -> low restores "high" into "low_alarm", not "normal").
        steps = [
            (thr, self._threshold_step(thr, value, mono)) for thr in self.spec.thresholds.values()
        ]
        for thr, tripped in steps:
            if tripped is True:
                what = _Meaning(thr.kind, thr.category, thr.severity, thr.state, thr.label)
                out.append(self._event(what, value, ts, synced))
            elif tripped is False:
                label = self._restored(thr.label)
                what = _Meaning(
                    Kind.RESTORE, thr.category, Severity.INFO, self._analog_state(), label
                )
                out.append(self._event(what, value, ts, synced, detail={"restores": thr.state}))
        return out

    def _restored(self, label: str) -> str:
        return self._texts(Msg.RESTORED_LABEL, label=label)

    # --- telemetry --------------------------------------------------------------------

    def _telemetry(self, value: Value, ts: int, synced: bool) -> Reading | None:
        spec = self.spec
        if spec.telemetry_s is None:
            return None
        quality = "bad" if self._wire_broken else "good"
        due = (
            self._sent_ts is None
            or ts < self._sent_ts  # the clock stepped back: send rather than go quiet
            or ts - self._sent_ts >= spec.telemetry_s * 1000
            or quality != self._sent_quality
        )
        moved = (
            spec.deadband is not None
            and self._sent_value is not None
            and abs(float(value) - float(self._sent_value)) > spec.deadband
        )
        if not (due or moved):
            return None
        self._sent_ts, self._sent_value, self._sent_quality = ts, value, quality
        return Reading(
            device=self.owner.device_id,
            point=spec.id,
            value=value,
            unit=spec.unit,
            ts_ms=ts,
            clock_synced=synced,
            quality=quality,
        )


class GbStamp(Protocol):
    """Adds GB/T 26875.3 coordinates to a poll's events (agent/gb26875/points.py)."""

    def stamp(
        self, points: DevicePoints, poll: PollClass, blocks: list[Block], records: list[Record]
    ) -> list[Record]: ...


class DevicePoints:
    """The trackers of every point of one device (its profile with overrides applied):
    decodes a poll's blocks and runs each point's rules. A point that cannot be
    decoded from the blocks raises one fault event, and a restore once it decodes
    again; the other points carry on.

    `remembered`: PointStateStore.load() (every device's; this one picks its own).
    `gb`: what adds each event's GB/T 26875.3 coordinates (agent/gb26875/points.py)."""

    def __init__(
        self,
        device_id: str,
        device_name: str,
        location: str | None,
        profile: Profile,
        remembered: Mapping[PointKey, Mapping[str, ActiveCondition]] | None = None,
        *,
        texts: Texts = CHINESE,
        gb: GbStamp | None = None,
    ) -> None:
        self.owner = PointOwner(device_id, device_name, location)
        self._gb = gb
        self._texts = texts
        self._undecodable: set[str] = set()
        self.trackers: dict[str, PointTracker] = {}
        mine = {p: c for (d, p), c in (remembered or {}).items() if d == device_id}
        for pid, spec in profile.points.items():
            conds = dict(mine.get(pid, {}))
            if conds.pop(DECODE_ERROR_STATE, None) is not None:
                self._undecodable.add(pid)  # reported before: restored when it decodes
            self.trackers[pid] = PointTracker(device_id, device_name, location, spec, conds, texts)
        # Points removed from the profile (or disabled) while conditions were active:
        # they will never be polled, so their restores go out with the first poll.
        self._orphans = [
            (pid, cond)
            for pid, conds in mine.items()
            if pid is not None and pid not in profile.points
            for cond in conds.values()
        ]

    def update(
        self,
        poll: PollClass,
        blocks: Iterable[Block],
        ts_ms: int,
        clock_synced: bool = True,
        mono_s: float | None = None,
        failed: Iterable[tuple[ReadRequest, FieldError]] = (),
    ) -> list[Record]:
        """`failed`: the poll's requests that got no block, with why (a decode fault then
        names the device's own answer, e.g. "illegal data address (2)")."""
        mono = time.monotonic() if mono_s is None else mono_s
        block_list = list(blocks)
        failed_list = list(failed)
        out: list[Record] = [
            _orphan_restore(self.owner, pid, pid, cond, ts_ms, clock_synced, self._texts)
            for pid, cond in self._orphans
        ]
        self._orphans = []
        for pid, tracker in self.trackers.items():
            if tracker.spec.poll is not poll:
                continue
            try:
                value = decode(tracker.spec, block_list)
            except FieldError as exc:
                why = why_unread(tracker.spec, failed_list) or exc
                out.extend(self._decode_failed(tracker, why, ts_ms, clock_synced))
                continue
            if pid in self._undecodable:
                self._undecodable.discard(pid)
                out.append(self._decode_event(tracker, ts_ms, clock_synced))
            out.extend(tracker.update(value, ts_ms, clock_synced, mono))
        return out if self._gb is None else self._gb.stamp(self, poll, block_list, out)

    def undecodable(self, point_id: str) -> bool:
        """Whether the point could not be decoded at its last poll (a fault until it can)."""
        return point_id in self._undecodable

    def mark_stale(self) -> None:
        for tracker in self.trackers.values():
            tracker.mark_stale()

    def _decode_failed(
        self, tracker: PointTracker, exc: FieldError, ts: int, synced: bool
    ) -> list[Record]:
        if tracker.spec.id in self._undecodable:
            return []
        self._undecodable.add(tracker.spec.id)
        return [self._decode_event(tracker, ts, synced, reason=str(exc))]

    def _decode_event(
        self, tracker: PointTracker, ts: int, synced: bool, *, reason: str | None = None
    ) -> Event:
        """A fault (with the reason) when a point stops decoding, a restore without."""
        failed = reason is not None
        msg = Msg.DECODE_FAILED if failed else Msg.DECODE_RESTORED
        return Event(
            kind=Kind.FAULT if failed else Kind.RESTORE,
            category=Category.SYSTEM,
            severity=Severity.MINOR if failed else Severity.INFO,
            state=DECODE_ERROR_STATE if failed else "normal",
            text=self._texts(msg, device=self.owner.device_name, point=tracker.spec.name),
            device=self.owner.device_id,
            point=tracker.spec.id,
            ts_ms=ts,
            clock_synced=synced,
            device_name=self.owner.device_name,
            point_name=tracker.spec.name,
            location=self.owner.location,
            detail={"reason": reason} if failed else {"restores": DECODE_ERROR_STATE},
        )
