"""Small stand-ins the tests share: a clock moved by hand, an output's config entry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HandClock:
    """A monotonic clock the test moves by hand (`clock.now += 300`)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class OutputCfg:
    """The [[outputs]] keys drivers.gpio.Output reads."""

    id: str
    pin: int
    type: str
    active: str = "high"
