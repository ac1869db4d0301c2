"""Local output rules, and what a GPIO contact change means as an event.

These rules must keep working with no network at all: the buzzer sounds for
a fire, gas, electrical-fire or manual alarm whether or not the platform ever
hears of it, and the status LED tells a passer-by that the uplink is down.

- `AlarmRule`: any active (not yet restored) life-safety alarm sounds the
  buzzer until someone silences it or every such alarm is restored; a NEW
  alarm after silencing sounds it again. Alarms are kept per condition
  (device, point, condition — see agent.pointstate.condition_of): a gas
  detector's high alarm restoring leaves its low alarm sounding, and a fire
  that turns into a fault is still a fire until its own restore comes.
- `UplinkLedRule`: LED steady while the uplink is connected, blinking while
  it is not (including before the first connection).
- `DutyPromptRule`: the duty check's intermittent sound and light (agent/duty.py
  decides when it shows).
- `TransmissionRule` (agent/transmission.py): the transmission light (blinking while a
  fire or manual alarm is being sent, steady once confirmed, held after) and the
  transmission-failed signal.
- `contact_event`: a debounced contact change -> an Event for the buffer. The input is
  the event's device (docs/feed.md: inputs and field devices share one id space) and
  its one point is `contact`.

Rules drive anything with on()/off()/blink() (drivers.gpio.Output in the
agent); they never touch pins themselves and never do I/O beyond that. They
are called from several threads (points, contacts, the uplink, commands), so
each holds a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from agent.gb26875.points import contact_gb
from agent.pointstate import ActiveCondition, PointKey, condition_of
from agent.texts import CHINESE, Msg, Texts
from agent.transmission import Settings, TransmissionRule, TransmissionSettings
from core.errors import ConfigError, ConfigProblem
from core.events import LIFE_SAFETY, Category, Event, Kind, Severity

if TYPE_CHECKING:
    from drivers.gpio import ContactChange

CONTACT_POINT = "contact"  # the `point` of every contact event; the input id is the device
# Versions before feed 1.2 sent every contact as device "gpio", point = the input id: the
# alarm memory may still hold conditions under that key (agent.runtime restores them).
LEGACY_GPIO_DEVICE = "gpio"

RULE_ALARM = "alarm"
RULE_UPLINK_DOWN_BLINK = "uplink-down-blink"
RULE_DUTY_PROMPT = "duty-prompt"  # agent/duty.py: the duty check's sound and light
RULE_TRANSMISSION_LIGHT = "transmission-light"  # agent/transmission.py
RULE_TRANSMISSION_FAILED = "transmission-failed"  # agent/transmission.py
RULE_NONE = "none"  # an output no rule drives (a relay driven by commands later)
KNOWN_RULES = frozenset(
    {
        RULE_ALARM,
        RULE_UPLINK_DOWN_BLINK,
        RULE_DUTY_PROMPT,
        RULE_TRANSMISSION_LIGHT,
        RULE_TRANSMISSION_FAILED,
        RULE_NONE,
    }
)
# The duty check's prompt: a short chirp every two seconds, unlike the alarm buzzer's
# steady tone and the failure signal's rapid beeps (agent/transmission.py).
DUTY_PROMPT_BLINK = (0.5, 1.5)

# The manual call point's place in GB/T 26875.3 is agent.gb26875.points.contact_gb's: the
# UITD's manual alarm (typeflag 24, bit 2), or the input's own [inputs.gb] component.
ROLE_MANUAL_CALL_POINT = "manual_call_point"
ROLE_DUTY_ANSWER = "duty_answer"

_KIND_WORD = {
    Kind.ALARM: Msg.WORD_ALARM,
    Kind.FAULT: Msg.WORD_FAULT,
    Kind.SUPERVISORY: Msg.WORD_SUPERVISORY,
    Kind.RESTORE: Msg.WORD_RESTORE,
}


class Switchable(Protocol):
    """An output a rule can drive."""

    def on(self) -> None: ...
    def off(self) -> None: ...
    def blink(self, on_s: float, off_s: float) -> None: ...


class ContactSpec(Protocol):
    """What contact_event needs from an input's config (agent.config.InputConfig fits)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def pin(self) -> int: ...
    @property
    def kind(self) -> str: ...  # "state" | "alarm" | "fault" | "supervisory"
    @property
    def category(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def active_state(self) -> str: ...
    @property
    def inactive_state(self) -> str: ...
    @property
    def role(self) -> str: ...  # "contact" | "manual_call_point" | "duty_answer"


# (device, point, condition): a RESTORE clears the key of the condition it names
AlarmKey = tuple[str, str | None, str | None]


class AlarmRule:
    """Buzzer on while a life-safety alarm is active and not silenced."""

    def __init__(self, buzzers: Sequence[Switchable], texts: Texts = CHINESE) -> None:
        self._buzzers = list(buzzers)
        self._texts = texts
        self._lock = threading.Lock()
        self._active: dict[AlarmKey, Event] = {}
        self._silenced = False
        self._apply_locked()

    def on_event(self, event: Event) -> None:
        """Feed every event; only alarms and restores change anything."""
        if event.test:
            return  # a test transmission must not sound an evacuation buzzer
        key = (event.device, event.point, condition_of(event))
        with self._lock:
            if event.kind is Kind.ALARM:
                is_new = key not in self._active
                self._active[key] = event
                if is_new and event.category in LIFE_SAFETY:
                    self._silenced = False  # a new alarm (also after all clear) sounds again
            elif event.kind is Kind.RESTORE:
                self._restore_locked(key)
            else:
                return  # a fault after a fire (fire -> fault) leaves the fire sounding
            self._apply_locked()

    def _restore_locked(self, key: AlarmKey) -> None:
        device, point, condition = key
        if condition is not None:
            self._active.pop(key, None)
            return
        # A restore that does not say what it restores ends every alarm of its point.
        for active in [k for k in self._active if k[:2] == (device, point)]:
            del self._active[active]

    def remember(self, remembered: Mapping[PointKey, Mapping[str, ActiveCondition]]) -> None:
        """Alarms reported before a restart (PointStateStore.load()): the point rules
        will not raise them again, so they must sound from here. A silence before
        the restart is forgotten: an alarm still active after a power cut sounds."""
        with self._lock:
            for (device, point), conds in remembered.items():
                for cond in conds.values():
                    if cond.kind is not Kind.ALARM:
                        continue
                    key = (device, point, cond.condition)
                    remembered_alarm = _remembered_alarm(device, point, cond, self._texts)
                    self._active.setdefault(key, remembered_alarm)
            self._apply_locked()

    def reapply(self) -> None:
        """Drive the buzzers again as they should be (an output that failed is retried)."""
        with self._lock:
            self._apply_locked()

    def silence(self) -> bool:
        """Turn the buzzer off until a new alarm; True if it was sounding."""
        with self._lock:
            was_sounding = self._should_sound_locked()
            self._silenced = True
            self._apply_locked()
            return was_sounding

    @property
    def sounding(self) -> bool:
        with self._lock:
            return self._should_sound_locked()

    @property
    def silenced(self) -> bool:
        with self._lock:
            return self._silenced and self._any_sounding_locked()

    def active_alarms(self) -> list[Event]:
        """Every active alarm (any category), most severe first, then oldest first."""
        with self._lock:
            alarms = list(self._active.values())
        return sorted(alarms, key=lambda e: (e.severity.rank, e.ts_ms))

    def _any_sounding_locked(self) -> bool:
        # any(), not a list: in a storm this runs once per event over every active alarm
        return any(e.category in LIFE_SAFETY for e in self._active.values())

    def _should_sound_locked(self) -> bool:
        return not self._silenced and self._any_sounding_locked()

    def _apply_locked(self) -> None:
        sound = self._should_sound_locked()
        for buzzer in self._buzzers:
            if sound:
                buzzer.on()
            else:
                buzzer.off()


def _remembered_alarm(device: str, point: str | None, cond: ActiveCondition, texts: Texts) -> Event:
    """Stands for the alarm event the agent sent before it restarted."""
    return Event(
        kind=Kind.ALARM,
        category=cond.category,
        severity=cond.severity,
        state=cond.state,
        text=texts(Msg.REMEMBERED_ALARM, device=device, point=point or "", state=cond.state),
        device=device,
        point=point,
        ts_ms=cond.since_ms,
        detail={"remembered": True},
    )


class UplinkLedRule:
    """LED steady while the uplink is connected, blinking while it is down."""

    def __init__(
        self, leds: Sequence[Switchable], *, blink_on_s: float = 0.5, blink_off_s: float = 0.5
    ) -> None:
        self._leds = list(leds)
        self._blink = (blink_on_s, blink_off_s)
        self._lock = threading.Lock()
        self._connected = False
        self._apply_locked()  # down until told otherwise: we have not connected yet

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def uplink_changed(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected
            self._apply_locked()

    def reapply(self) -> None:
        with self._lock:
            self._apply_locked()

    def _apply_locked(self) -> None:
        for led in self._leds:
            if self._connected:
                led.on()
            else:
                led.blink(*self._blink)


class DutyPromptRule:
    """The duty check's prompt (agent/duty.py decides when): an intermittent chirp and
    flash on its own outputs while a check waits for its answer, off otherwise."""

    def __init__(self, outputs: Sequence[Switchable]) -> None:
        self._outputs = list(outputs)
        self._lock = threading.Lock()
        self._showing = False
        self._apply_locked()

    @property
    def showing(self) -> bool:
        with self._lock:
            return self._showing

    def show(self, showing: bool) -> None:
        with self._lock:
            self._showing = showing
            self._apply_locked()

    def reapply(self) -> None:
        with self._lock:
            self._apply_locked()

    def _apply_locked(self) -> None:
        for output in self._outputs:
            if self._showing:
                output.blink(*DUTY_PROMPT_BLINK)
            else:
                output.off()


class LocalRules:
    """All local rules for a gateway's outputs, fed events and uplink changes."""

    def __init__(
        self,
        rule_outputs: Iterable[tuple[str, str, Switchable]],
        texts: Texts = CHINESE,
        duties: Settings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rule_outputs`: (output id, rule name, output) for every configured output;
        `duties` the transmission light's settings (the standard's by default)."""
        by_rule: dict[str, list[Switchable]] = {rule: [] for rule in KNOWN_RULES}
        for output_id, rule, output in rule_outputs:
            if rule not in KNOWN_RULES:
                raise ConfigError(
                    [ConfigProblem("", f"outputs.{output_id}.rule", f"unknown rule {rule!r}")]
                )
            by_rule[rule].append(output)
        for output in by_rule[RULE_NONE]:
            output.off()
        self.alarm = AlarmRule(by_rule[RULE_ALARM], texts)
        self.uplink_led = UplinkLedRule(by_rule[RULE_UPLINK_DOWN_BLINK])
        self.duty_prompt = DutyPromptRule(by_rule[RULE_DUTY_PROMPT])
        self.transmission = TransmissionRule(
            by_rule[RULE_TRANSMISSION_LIGHT],
            by_rule[RULE_TRANSMISSION_FAILED],
            duties or TransmissionSettings(),
            monotonic,
        )

    def on_event(self, event: Event) -> None:
        self.alarm.on_event(event)
        self.transmission.on_event(event)

    def uplink_changed(self, connected: bool) -> None:
        self.uplink_led.uplink_changed(connected)
        self.transmission.uplink_changed(connected)

    def remember(self, remembered: Mapping[PointKey, Mapping[str, ActiveCondition]]) -> None:
        self.alarm.remember(remembered)

    def silence(self) -> bool:
        """Silence the alarm buzzer and the transmission-failed signal (each until a new
        alarm or a new failure); True if either was sounding."""
        alarm = self.alarm.silence()
        failure = self.transmission.silence()
        return alarm or failure

    def reapply(self) -> None:
        """Drive every output again as its rule says (one that failed is retried)."""
        self.alarm.reapply()
        self.uplink_led.reapply()
        self.duty_prompt.reapply()
        self.transmission.reapply()

    def active_alarms(self) -> list[Event]:
        return self.alarm.active_alarms()


def contact_key(input_id: str) -> PointKey:
    """Where the alarm memory keeps an input's conditions."""
    return (input_id, CONTACT_POINT)


def contact_event(
    cfg: ContactSpec, change: ContactChange, clock_synced: bool, texts: Texts = CHINESE
) -> Event:
    """The event a debounced contact change raises.

    kind "alarm"/"fault"/"supervisory" inputs (a sprinkler flow switch is
    supervisory) raise ALARM/FAULT/SUPERVISORY when active and RESTORE (with
    `detail.restores` = the active state) when inactive; kind "state" inputs
    raise STATE both ways. The input's severity applies to the active side; a
    restore or return to the inactive state is INFO.
    """
    kind = _contact_kind(Kind(cfg.kind), change.active)
    state = cfg.active_state if change.active else cfg.inactive_state
    severity = Severity(cfg.severity) if change.active else Severity.INFO
    word = _KIND_WORD.get(kind)
    detail: dict[str, object] = {"pin": cfg.pin}
    if change.initial:
        detail["initial"] = True
    if kind is Kind.RESTORE:
        detail["restores"] = cfg.active_state
    gb = contact_gb(cfg, change.active)
    if gb is not None:
        detail["gb"] = gb
    if word is None:
        text = texts(Msg.CONTACT, name=cfg.name, state=state)
    else:
        text = texts(Msg.CONTACT_KIND, name=cfg.name, state=state, word=texts(word))
    # the input is the device (it shares the devices' id space), its one point the contact
    return Event(
        kind, Category(cfg.category), severity, state, text, cfg.id, CONTACT_POINT,
        value=change.active,
        ts_ms=change.ts_ms,
        clock_synced=clock_synced,
        device_name=cfg.name,
        point_name=cfg.name,
        detail=detail,
    )  # fmt: skip


def _contact_kind(configured: Kind, active: bool) -> Kind:
    if configured in (Kind.ALARM, Kind.FAULT, Kind.SUPERVISORY):
        return configured if active else Kind.RESTORE
    if configured is Kind.STATE:
        return Kind.STATE
    raise ConfigError(
        [
            ConfigProblem(
                "", "inputs.kind", f"a contact input cannot be of kind {configured.value!r}"
            )
        ]
    )
