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


# The exception codes of the Modbus Application Protocol Specification V1.1b3, section 7
# (the same names as pymodbus's ExcCodes, pymodbus/constants.py, repository pymodbus-dev/pymodbus).
MODBUS_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusException(FieldError):
    """The device answered with a Modbus exception response; the message names the code,
    e.g. "illegal data address (2)", so a fault event tells the technician what to fix."""

    reason = "exception"

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        name = MODBUS_EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(message or f"{name} ({code})")


class GatewayNoAnswer(ModbusException):
    """Exception 10 or 11 from a Modbus gateway: the device behind it did not answer (or
    cannot be reached). Unlike other exceptions, it counts toward the device's comm loss."""

    reason = "gateway_no_answer"


def modbus_exception(code: int) -> ModbusException:
    """The typed error for an exception answer with `code`."""
    return GatewayNoAnswer(code) if code in (10, 11) else ModbusException(code)


class LineBusy(AlarmgwError):
    """A live read or write was refused or dropped because its line's queue is full, or the
    line could not get to it before the caller's deadline: due polls come first. Try again
    later; the control socket and the MQTT `read` result both say `busy`."""


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
