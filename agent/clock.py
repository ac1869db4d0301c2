"""Is the system clock synchronised? The Pi has no RTC: until NTP sets the clock,
event timestamps may be years off, so every event says whether it was synced.

The kernel knows: adjtimex(2) returns TIME_ERROR (5) and sets STA_UNSYNC while
no time source disciplines the clock. Rigs without NTP can force an answer
(ClockConfig.source "assume-synced" / "assume-unsynced").

It must never raise or block: any doubt answers False (unsynced).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

TIME_ERROR: Final = 5
STA_UNSYNC: Final = 0x0040


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: we only read `status`; the tail is padding
    # so the kernel's writes stay inside our buffer on every architecture.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    )


def kernel_clock_synced() -> bool:
    """Ask the kernel (read-only adjtimex: modes = 0). False on any doubt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError) as exc:
        log.debug("adjtimex unavailable: %s", exc)
        return False
    if state < 0 or state == TIME_ERROR:
        return False
    return not tx.status & STA_UNSYNC


def clock_synced(source: str = "kernel") -> bool:
    """The answer for a ClockConfig.source; unknown sources answer False."""
    if source == "assume-synced":
        return True
    if source == "assume-unsynced":
        return False
    if source == "kernel":
        return kernel_clock_synced()
    return False


def clock_probe(source: str) -> Callable[[], bool]:
    """A zero-argument callable for the buffer, the uplink and the points."""
    return lambda: clock_synced(source)
