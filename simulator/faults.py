"""Faults a simulated line or device can be told to show on the wire.

A `FaultSet` holds the faults switched on for one target (a line or a device)
and turns a correct answer into the faulty bytes (or silence, or a late
answer). It never touches a transport itself: the RTU and TCP servers ask it
what to send and when.
"""

from __future__ import annotations

import enum
import random
import threading
from dataclasses import dataclass

from simulator.rtu import with_crc


class FaultKind(enum.StrEnum):
    CRC = "crc"  # answer with a damaged CRC
    DELAY = "delay"  # answer late (delay_s)
    NO_ANSWER = "no-answer"  # stay silent
    EXCEPTION = "exception"  # answer with Modbus exception `code`
    GARBAGE = "garbage"  # answer with random bytes instead of a frame
    WRONG_UNIT = "wrong-unit"  # a well-formed answer from another unit id


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: what, how often (rate 0..1 of requests), and its parameter."""

    kind: FaultKind
    rate: float = 1.0
    delay_s: float = 1.0
    code: int = 4

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind.value, "rate": self.rate}
        if self.kind is FaultKind.DELAY:
            out["delay_s"] = self.delay_s
        if self.kind is FaultKind.EXCEPTION:
            out["code"] = self.code
        return out


def make_fault(kind: str, rate: float = 1.0, delay_s: float = 1.0, code: int = 4) -> Fault:
    """Build a Fault from user input; ValueError names what is wrong and what exists."""
    try:
        fault_kind = FaultKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault kind {kind!r} (known: {known})") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fault rate must be within 0..1, got {rate}")
    if delay_s < 0:
        raise ValueError(f"fault delay must be >= 0 s, got {delay_s}")
    if not 1 <= code <= 255:
        raise ValueError(f"exception code must be 1..255, got {code}")
    return Fault(fault_kind, rate, delay_s, code)


@dataclass(frozen=True, slots=True)
class Answer:
    """What to put on the wire for one request: `frame` (None = silence) after `delay_s`."""

    frame: bytes | None
    delay_s: float = 0.0


class FaultSet:
    """Faults switched on for one target. Thread-safe; seeded so tests can rely on rates."""

    def __init__(self, seed: int = 0) -> None:
        self._faults: dict[FaultKind, Fault] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # noqa: S311 - fault dice, not crypto

    def set(self, fault: Fault) -> None:
        with self._lock:
            self._faults[fault.kind] = fault

    def clear(self, kind: FaultKind | None = None) -> None:
        with self._lock:
            if kind is None:
                self._faults.clear()
            else:
                self._faults.pop(kind, None)

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults.values())

    def _roll(self, kind: FaultKind) -> Fault | None:
        fault = self._faults.get(kind)
        if fault is None or self._rng.random() >= fault.rate:
            return None
        return fault

    def rolled(self) -> dict[FaultKind, Fault]:
        """The faults that strike this request (each rolls its own dice)."""
        with self._lock:
            hits = {}
            for kind in FaultKind:
                fault = self._roll(kind)
                if fault is not None:
                    hits[kind] = fault
            return hits

    def garbage(self, length: int) -> bytes:
        with self._lock:
            return bytes(self._rng.randrange(256) for _ in range(length))


def merge_rolls(*rolls: dict[FaultKind, Fault]) -> dict[FaultKind, Fault]:
    """Device faults override line faults of the same kind."""
    merged: dict[FaultKind, Fault] = {}
    for roll in rolls:
        merged.update(roll)
    return merged


def apply_rtu(
    hits: dict[FaultKind, Fault], unit: int, request_fc: int, pdu: bytes, dice: FaultSet
) -> Answer:
    """Turn the correct response PDU of `unit` into what the faults say goes on the wire."""
    delay = hits[FaultKind.DELAY].delay_s if FaultKind.DELAY in hits else 0.0
    if FaultKind.NO_ANSWER in hits:
        return Answer(None, delay)
    if FaultKind.EXCEPTION in hits:
        pdu = bytes([(request_fc | 0x80) & 0xFF, hits[FaultKind.EXCEPTION].code])
    if FaultKind.WRONG_UNIT in hits:
        unit = unit % 247 + 1
    frame = with_crc(bytes([unit]) + pdu)
    if FaultKind.CRC in hits:
        frame = frame[:-2] + bytes([frame[-2] ^ 0xFF, frame[-1] ^ 0x5A])
    if FaultKind.GARBAGE in hits:
        frame = dice.garbage(len(frame))
    return Answer(frame, delay)
