"""The gateway's self-test (GB 26875.1: daily): inputs, outputs, storage and link.

Each item says what was checked, whether it passed and why. What is checked, and what
is deliberately not done:
- inputs: each GPIO input can be read now; each Modbus device answers a live read
  through its line's owner task (the same path as `alarmgw read`, which keeps due
  polls first); a device already in comm loss fails without a read.
- outputs: nothing is actuated. A buzzer is an evacuation signal and a relay may start
  a pump, so a self-test that sounded them would be a false alarm in a care home at
  night. Each output is read back instead: its GPIO line is open, it is in the state
  its rule last drove, and it has no `output_failed` fault outstanding.
- storage: the buffer is not degraded, the alarm memory is being saved, the card has
  room, and a record written to the UITD records file reads back the same.
- link: each uplink is connected (an uplink drops a connection whose broker stops
  acknowledging, so connected also means confirmed within its PUBACK deadline).

The result is one event (`point: selftest`, detail per item, GB typeflag 24 bit 4) and
each failed item is a gateway fault (`point: selftest-<part>-<id>`) restored by the
first self-test that passes it again (agent/uitd_duty.py raises them).

It must never raise: a check that blows up is a failed item with the reason.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from agent.faults import OUTPUT_FAILED
from agent.gb26875.tables import UitdOperationFlags
from agent.texts import Msg, Texts
from core.events import Event, Kind, Severity, now_ms, system_event

# GB/T 26875.3 UITD operation (typeflag 24) with the self-test bit; operator 0: the gateway
GB_SELF_TEST: Final = {"tf": 24, "flags": int(UitdOperationFlags.SELF_TEST), "operator": 0}
MIN_FREE_BYTES: Final = 1024 * 1024  # less room than this on the card fails the storage item
PROBE_KEY: Final = "selftest_probe"
PARTS: Final = ("input", "output", "storage", "link")
_NOT_ID: Final = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Item:
    """One thing the self-test checked."""

    part: str  # "input" | "output" | "storage" | "link"
    id: str  # the input, device, output, store or uplink checked
    ok: bool
    detail: str  # what was seen, or why it failed

    @property
    def cause(self) -> str:
        """The point of this item's fault event (an id: "uplink 1" becomes "uplink_1")."""
        return _NOT_ID.sub("_", f"selftest-{self.part}-{self.id}")[:64]

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.part, "id": self.id, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Result:
    trigger: str  # "daily", or who asked ("cli:root")
    items: list[Item]
    ts_ms: int = field(default_factory=now_ms)

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    @property
    def failed(self) -> list[Item]:
        return [item for item in self.items if not item.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "ts_ms": self.ts_ms,
            "ok": self.ok,
            "items": [item.as_dict() for item in self.items],
        }


class Probes(Protocol):
    """What the self-test reads of the running gateway (agent/uitd_duty.py builds it)."""

    def gpio_inputs(self) -> dict[str, Callable[[], bool]]:
        """Configured input id -> read its level now (missing: GPIO unavailable)."""
        ...

    def input_ids(self) -> list[str]: ...

    def devices(self) -> dict[str, bool]:
        """Modbus device id -> in comm loss now."""
        ...

    def live_read(self, device: str) -> None:
        """Read the device now through its line; raises when it does not answer."""
        ...

    def outputs(self) -> dict[str, tuple[str, bool] | None]:
        """Configured output id -> (what it was last told: on, off or blink; its pin's
        level read back now), or None when its GPIO line is not open."""
        ...

    def failing(self) -> dict[str, str]:
        """The gateway faults outstanding, cause -> state (agent.faults.Faults)."""
        ...

    def buffer_degraded(self) -> str | None: ...

    def pointstate_problem(self) -> str | None: ...

    def storage_dir(self) -> Path: ...

    def records_probe(self, token: str) -> str:
        """Write `token` to the records file and read it back."""
        ...

    def uplinks(self) -> dict[str, bool]:
        """Uplink name -> connected."""
        ...


def run(probes: Probes, trigger: str, *, alive: Callable[[], None] = lambda: None) -> Result:
    """Every item, in the order a technician reads them; `alive()` between items (a
    live read may take seconds: the duty's watchdog must see it still works)."""
    items: list[Item] = []
    for check in (_inputs, _outputs, _storage, _links):
        for item in _guarded(check, probes):
            items.append(item)
            alive()
    return Result(trigger, items)


def _guarded(check: Callable[[Probes], Iterable[Item]], probes: Probes) -> Iterable[Item]:
    part = check.__name__.strip("_").rstrip("s")
    try:
        yield from check(probes)
    except Exception as exc:  # noqa: BLE001 - a check that blows up is a failed item
        yield Item(part, "selftest", False, f"the check itself failed: {_why(exc)}")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _inputs(probes: Probes) -> Iterable[Item]:
    readers = probes.gpio_inputs()
    for input_id in probes.input_ids():
        read = readers.get(input_id)
        if read is None:
            yield Item("input", input_id, False, "GPIO unavailable")
            continue
        try:
            level = read()
        except Exception as exc:  # noqa: BLE001 - a failed item, not a crash
            yield Item("input", input_id, False, f"cannot be read: {_why(exc)}")
        else:
            yield Item("input", input_id, True, "active" if level else "inactive")
    for device, lost in probes.devices().items():
        if lost:
            yield Item("input", device, False, "in comm loss: not answering")
            continue
        try:
            probes.live_read(device)
        except Exception as exc:  # noqa: BLE001 - a failed item, not a crash
            yield Item("input", device, False, f"live read failed: {_why(exc)}")
        else:
            yield Item("input", device, True, "answered a live read")


def _outputs(probes: Probes) -> Iterable[Item]:
    failing = probes.failing()
    for output_id, state in probes.outputs().items():
        if state is None:
            yield Item("output", output_id, False, "GPIO unavailable")
            continue
        mode, level = state
        shown = f"told {mode}, pin {'on' if level else 'off'}"
        if failing.get(f"output-{output_id}"[:64]) == OUTPUT_FAILED:
            yield Item("output", output_id, False, f"cannot be driven (output_failed); {shown}")
        elif mode != "blink" and level != (mode == "on"):
            yield Item("output", output_id, False, f"pin does not follow: {shown}")
        else:
            yield Item("output", output_id, True, f"{shown} (read back, not actuated)")


def _storage(probes: Probes) -> Iterable[Item]:
    degraded = probes.buffer_degraded()
    yield Item("storage", "buffer", degraded is None, degraded or "on disk")
    problem = probes.pointstate_problem()
    yield Item("storage", "pointstate", problem is None, problem or "saved")
    try:
        st = os.statvfs(probes.storage_dir())
        free = st.f_bavail * st.f_frsize
    except OSError as exc:
        yield Item("storage", "space", False, f"cannot be measured: {_why(exc)}")
    else:
        room = f"{free // 1024} KiB free"
        yield Item("storage", "space", free >= MIN_FREE_BYTES, room)
    token = secrets.token_hex(8)
    try:
        back = probes.records_probe(token)
    except Exception as exc:  # noqa: BLE001 - a failed item, not a crash
        yield Item("storage", "write", False, f"write/read failed: {_why(exc)}")
    else:
        same = back == token
        yield Item("storage", "write", same, "written and read back" if same else "read back wrong")


def _links(probes: Probes) -> Iterable[Item]:
    for name, connected in probes.uplinks().items():
        yield Item("link", name, connected, "connected" if connected else "not connected")


def result_event(result: Result, texts: Texts, *, synced: bool) -> Event:
    """The self-test record for the feed (and the centre: UITD operation bit 4)."""
    failed = result.failed
    names = ", ".join(f"{i.part} {i.id}" for i in failed)
    if failed:
        text = texts(Msg.SELFTEST_FAILED, count=len(failed), items=names)
    else:
        text = texts(Msg.SELFTEST_PASSED, count=len(result.items))
    return system_event(
        Kind.SYSTEM,
        Severity.MINOR if failed else Severity.INFO,
        "selftest_passed" if result.ok else "selftest_failed",
        text,
        point="selftest",
        clock_synced=synced,
        detail={"selftest": result.as_dict(), "gb": dict(GB_SELF_TEST)},
    )
