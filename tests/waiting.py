"""Waiting with a deadline for state that has no event to await (a thread's counter, a
file another process writes): poll it, and fail with the condition's last answer."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.01) -> bool:
    """True as soon as predicate() holds; its last answer once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
