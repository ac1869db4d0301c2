"""Typed errors for the whole gateway; one root, translated at boundaries.

Never return None for "it failed": raise one of these. Field errors are
counted per device by the line owner; config errors stop start-up (exit 78);
every other runtime fault becomes a fault event, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass


class AlarmgwError(Exception):
    """Root of every error alarmgw raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config or profile file: where, which key, why."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        key = self.key or "(file)"
        return f"{self.file}: {key}: {self.reason}"


class ConfigError(AlarmgwError):
    """A config or profile is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- field side -------------------------------------------------------------


class FieldError(AlarmgwError):
    """A request to a field device failed. `reason` is the counter key."""

    reason = "field"


class FieldTimeout(FieldError):
    reason = "timeout"


class CrcError(FieldError):
    reason = "crc"


class WrongLength(FieldError):
    reason = "wrong_length"


class WrongUnit(FieldError):
    reason = "wrong_unit"


class Garbage(FieldError):
    reason = "garbage"


class Disconnected(FieldError):
    reason = "disconnected"


class ModbusException(FieldError):
    """The device answered with a Modbus exception response."""

    reason = "exception"

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"Modbus exception code {code}")


class WriteNotAllowed(AlarmgwError):
    """A write was asked for a point that is not explicitly writable."""


class UnknownPoint(AlarmgwError):
    """A device or point name that the running config does not have."""


# --- delivery side ----------------------------------------------------------


class BufferError_(AlarmgwError):  # trailing _ : not the builtin BufferError
    """The event buffer could not store or read events."""


class UplinkError(AlarmgwError):
    """The MQTT uplink could not be set up (bad TLS files, unreadable credentials...)."""


class GpioError(AlarmgwError):
    """A GPIO pin could not be opened (no pin factory, pin busy, invalid pin)."""
