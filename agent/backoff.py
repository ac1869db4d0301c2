"""The waits between the uplink's connection attempts: exponential, fully jittered, bounded.

A thousand gateways that lost the same broker must not all come back in the same
second, yet each must be back within `max_s` of the broker's return (8 s by default:
the 10 s alarm promise; figures in bench/bench_fleet.py). Pure arithmetic over a
random source: it never sleeps and never reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

BACKOFF_FLOOR_S: Final = 0.1  # no reconnect sooner than this (capped by reconnect_min_s)


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter: uniform below min(max_s, min_s * 2**attempt),
    and once that ceiling is max_s, uniform between max_s / 2 and max_s.

    `attempt` is 1 for the first reconnect after a loss. The climb is jittered over its
    whole range (no clamp to min_s, which would bring a fleet back in lockstep after a
    broker restart); by the time the ceiling is reached the fleet's attempts are spread,
    and the raised lower bound then halves the rate of attempts against a broker that is
    down and flattens the peak when it returns, while max_s still bounds the wait. A small
    floor keeps a broken broker from being hammered.
    """
    ceiling = min(max_s, min_s * float(2 ** min(max(attempt, 0), 30)))
    low = ceiling / 2 if ceiling >= max_s else 0.0
    floor = min(BACKOFF_FLOOR_S, min_s)
    return max(floor, low + rng() * (ceiling - low))


class Backoff:
    """The waits between connection attempts: backoff_delay over a count of attempts
    that starts over when the session that ended says so (Uplink._session)."""

    def __init__(self, min_s: float, max_s: float, rng: Callable[[], float]) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng
        self.attempt = 0

    def next_delay(self, start_over: bool) -> float:
        """The wait after a session ended. A session that reached CONNACK but did nothing
        useful (a refused row, a broker that drops us at once) must not start the count
        over: that was the 85-reconnects-in-6-s loop."""
        self.attempt = 1 if start_over else min(self.attempt + 1, 30)
        return backoff_delay(self.attempt, self.min_s, self.max_s, self._rng)
