"""Point rules: turn each decoded value of a field point into events and telemetry.

One `PointTracker` per point remembers what the platform was last told and
speaks only on change: state tables and flags raise an alarm/fault/supervisory
event when they enter an abnormal state and a restore when they return to
normal; analog thresholds trip with hysteresis (no chatter at the limit) and an
optional confirmation time; 4-20 mA wire breaks become faults; analog values go
out as telemetry every `telemetry_s`, and sooner when they move more than the
deadband. The first poll after start reports abnormal states (an alarm present
at boot is not missed) but not normal ones.

Time comes only from the `ts_ms` given to `update` (tests drive it; nothing
here sleeps or reads a clock). The gateway has no RTC, so a clock step
backwards restarts a confirmation timer instead of stalling it.

This module must never do I/O and never raise on a value: a state code the
profile does not know is reported as a fault, not dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from agent.errors import FieldError
from agent.events import Category, Event, Kind, Reading, Record, Severity
from drivers.codec import Value, decode, engineering_to_raw_units
from drivers.profile import Direction, PointSpec, Profile, StateSpec, ThresholdSpec
from drivers.types import Block, PollClass

RESTORED = "恢复"  # appended to a threshold's or a wire break's label on restore
WIRE_BREAK_STATE = "wire_break"
WIRE_BREAK_LABEL = "断线"
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
    pending_since: int | None = None


@dataclass(frozen=True, slots=True)
class PointOwner:
    """The device a point belongs to, as it appears in events."""

    device_id: str
    device_name: str
    location: str | None = None


class PointTracker:
    """Event rules of one point. Not thread-safe: one poller owns it."""

    def __init__(
        self, device_id: str, device_name: str, location: str | None, spec: PointSpec
    ) -> None:
        self.owner = PointOwner(device_id, device_name, location)
        self.spec = spec
        self._started = False
        self._stale = False
        self._state: StateSpec | None = None  # state tables and flags: where we are now
        self._thresholds = {tid: _ThresholdState() for tid in spec.thresholds}
        self._wire_broken = False
        self._last_value: Value | None = None
        self._sent_ts: int | None = None
        self._sent_value: Value | None = None
        self._sent_quality: str | None = None

    # --- what the status display asks -------------------------------------------------

    @property
    def value(self) -> Value | None:
        return self._last_value

    @property
    def stale(self) -> bool:
        return self._stale

    @property
    def state(self) -> str:
        """A one-word summary: the state name, active threshold/wire break, or normal."""
        if self._stale:
            return "stale"
        if self._wire_broken:
            return WIRE_BREAK_STATE
        if self._state is not None:
            return self._state.state
        active = [self.spec.thresholds[t].state for t, s in self._thresholds.items() if s.active]
        return ",".join(active) if active else "normal"

    # --- input ------------------------------------------------------------------------

    def update(self, value: Value, ts_ms: int, clock_synced: bool = True) -> list[Record]:
        """Feed one decoded value; returns the events and readings it causes."""
        first = not self._started
        self._started = True
        self._stale = False
        self._last_value = value
        out: list[Record] = []
        if self.spec.states is not None:
            out.extend(self._update_states(int(value), first, ts_ms, clock_synced))
        elif self.spec.flag is not None:
            out.extend(self._update_flag(bool(value), first, ts_ms, clock_synced))
        elif not isinstance(value, bool):
            out.extend(self._update_analog(value, ts_ms, clock_synced))
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
        restores: str | None = None,
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
            detail={"restores": restores} if restores else None,
        )

    def _enter(self, state: StateSpec, value: Value, ts_ms: int, synced: bool) -> Event:
        assert state.kind is not None
        what = _Meaning(state.kind, state.category, state.severity, state.state, state.label)
        return self._event(what, value, ts_ms, synced)

    def _leave(self, old: StateSpec, new: StateSpec, value: Value, ts: int, synced: bool) -> Event:
        # A plain state change (kind "state", e.g. pump running) is not a restore.
        kind = Kind.STATE if old.kind is Kind.STATE else Kind.RESTORE
        # Into a normal state the text names it ("恢复", "清除"); into another abnormal
        # state it says the old condition ended, the next event names the new one.
        label = new.label if new.normal else old.label + RESTORED
        what = _Meaning(kind, old.category, Severity.INFO, new.state, label)
        return self._event(what, value, ts, synced, restores=old.state)

    def _transition(
        self, new: StateSpec, first: bool, value: Value, ts: int, synced: bool
    ) -> list[Record]:
        old = self._state
        self._state = new
        if first or old is None:
            return [] if new.normal else [self._enter(new, value, ts, synced)]
        if old == new:
            return []
        out: list[Record] = []
        if not old.normal:
            # Leaving an abnormal state always says so, even into another abnormal
            # one (fire -> isolated): consumers clear the old condition on restore.
            out.append(self._leave(old, new, value, ts, synced))
        if not new.normal:
            out.append(self._enter(new, value, ts, synced))
        return out

    def _update_states(self, code: int, first: bool, ts: int, synced: bool) -> list[Record]:
        assert self.spec.states is not None
        state = self.spec.states.get(code) or StateSpec(
            state=f"unknown_{code}",
            label=f"未知状态码{code}",
            normal=False,
            kind=Kind.FAULT,
            category=self.spec.category,
            severity=Severity.MINOR,
        )
        return self._transition(state, first, code, ts, synced)

    def _update_flag(self, active: bool, first: bool, ts: int, synced: bool) -> list[Record]:
        flag = self.spec.flag
        assert flag is not None
        if active:
            state = StateSpec(
                flag.active_state, flag.active_label, False, flag.kind, flag.category,
                flag.severity,
            )  # fmt: skip
        else:
            state = StateSpec(
                flag.inactive_state, flag.inactive_label, True, None, flag.category,
                Severity.INFO,
            )  # fmt: skip
        return self._transition(state, first, active, ts, synced)

    # --- analogs ----------------------------------------------------------------------

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
        if broken:
            what = _Meaning(
                Kind.FAULT, spec.category, Severity.MINOR, WIRE_BREAK_STATE, WIRE_BREAK_LABEL
            )
            return [self._event(what, value, ts, synced)]
        what = _Meaning(
            Kind.RESTORE, spec.category, Severity.INFO, "normal", WIRE_BREAK_LABEL + RESTORED
        )
        return [self._event(what, value, ts, synced, restores=WIRE_BREAK_STATE)]

    def _threshold(self, thr: ThresholdSpec, value: float, ts: int, synced: bool) -> Event | None:
        st = self._thresholds[thr.id]
        above = thr.direction is Direction.ABOVE
        if st.active:
            limit = thr.value - thr.hysteresis if above else thr.value + thr.hysteresis
            if (value >= limit) if above else (value <= limit):
                return None  # inside the hysteresis band: still active
            st.active = False
            what = _Meaning(
                Kind.RESTORE, thr.category, Severity.INFO, "normal", thr.label + RESTORED
            )
            return self._event(what, value, ts, synced, restores=thr.state)
        tripped = value >= thr.value if above else value <= thr.value
        if not tripped:
            st.pending_since = None  # the condition dropped out: the timer restarts
            return None
        if st.pending_since is None or ts < st.pending_since:
            st.pending_since = ts  # a clock step backwards restarts, never stalls
        if ts - st.pending_since < thr.confirm_s * 1000:
            return None
        st.active = True
        st.pending_since = None
        what = _Meaning(thr.kind, thr.category, thr.severity, thr.state, thr.label)
        return self._event(what, value, ts, synced)

    def _update_analog(self, value: float | int, ts: int, synced: bool) -> list[Record]:
        out = self._wire_break(value, ts, synced)
        if self._wire_broken:
            # A broken loop reads as "0 MPa": thresholds hold their state until
            # the signal is back, and confirmation restarts then.
            for st in self._thresholds.values():
                st.pending_since = None
            return out
        for thr in self.spec.thresholds.values():
            event = self._threshold(thr, value, ts, synced)
            if event is not None:
                out.append(event)
        return out

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


class DevicePoints:
    """The trackers of every point of one device (its profile with overrides applied):
    decodes a poll's blocks and runs each point's rules. A point that cannot be
    decoded from the blocks raises one fault event, and a restore once it decodes
    again; the other points carry on."""

    def __init__(
        self, device_id: str, device_name: str, location: str | None, profile: Profile
    ) -> None:
        self.owner = PointOwner(device_id, device_name, location)
        self.trackers = {
            pid: PointTracker(device_id, device_name, location, spec)
            for pid, spec in profile.points.items()
        }
        self._undecodable: set[str] = set()

    def update(
        self, poll: PollClass, blocks: Iterable[Block], ts_ms: int, clock_synced: bool = True
    ) -> list[Record]:
        block_list = list(blocks)
        out: list[Record] = []
        for pid, tracker in self.trackers.items():
            if tracker.spec.poll is not poll:
                continue
            try:
                value = decode(tracker.spec, block_list)
            except FieldError as exc:
                out.extend(self._decode_failed(tracker, exc, ts_ms, clock_synced))
                continue
            if pid in self._undecodable:
                self._undecodable.discard(pid)
                out.append(self._decode_event(tracker, ts_ms, clock_synced))
            out.extend(tracker.update(value, ts_ms, clock_synced))
        return out

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
        return Event(
            kind=Kind.FAULT if failed else Kind.RESTORE,
            category=Category.SYSTEM,
            severity=Severity.MINOR if failed else Severity.INFO,
            state="decode_error" if failed else "normal",
            text=f"{self.owner.device_name} {tracker.spec.name} "
            + ("数据无法解析" if failed else "数据恢复"),
            device=self.owner.device_id,
            point=tracker.spec.id,
            ts_ms=ts,
            clock_synced=synced,
            device_name=self.owner.device_name,
            point_name=tracker.spec.name,
            location=self.owner.location,
            detail={"reason": reason} if failed else {"restores": "decode_error"},
        )
