"""Is the system clock synchronised? The Pi has no RTC: until NTP sets the clock,
event timestamps may be years off, so every event says whether it was synced.

The kernel knows: adjtimex(2) returns TIME_ERROR (5) and sets STA_UNSYNC while
no time source disciplines the clock. Rigs without NTP can force an answer
(ClockConfig.source "assume-synced" / "assume-unsynced").

It must never raise or block: any doubt answers False (unsynced).
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import logging
import os
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

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


class KernelClock(NamedTuple):
    """adjtimex(2)'s answer: the clock state it returned and timex.status."""

    state: int
    status: int


def _load_adjtimex() -> Any | None:
    """libc's adjtimex, looked up once at import. Never ctypes.util.find_library:
    it runs `/sbin/ldconfig -p` (a fork+exec) each time, and the probe is called
    for every poll result and every event. CDLL(None) is the running process,
    which already has libc mapped. None when unavailable (never raises)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError) as exc:
        log.warning("adjtimex unavailable, the clock will count as unsynchronised: %s", exc)
        return None
    func.argtypes = (ctypes.POINTER(_Timex),)
    func.restype = ctypes.c_int
    return func


_ADJTIMEX: Final = _load_adjtimex()


def read_kernel_clock() -> KernelClock | None:
    """One read-only adjtimex call (modes = 0); None when it cannot be asked."""
    if _ADJTIMEX is None:
        return None
    tx = _Timex()  # zeroed: modes = 0 asks without changing anything
    try:
        state = int(_ADJTIMEX(ctypes.byref(tx)))
    except (OSError, ctypes.ArgumentError) as exc:
        log.debug("adjtimex failed: %s", exc)
        return None
    return KernelClock(state=state, status=int(tx.status))


def is_synced(answer: KernelClock | None) -> bool:
    """The kernel's verdict: synced unless the call failed, the state is TIME_ERROR
    or STA_UNSYNC is set (a seccomp-denied call returns -1 with EPERM)."""
    if answer is None or answer.state < 0 or answer.state == TIME_ERROR:
        return False
    return not answer.status & STA_UNSYNC


def kernel_clock_synced() -> bool:
    """Ask the kernel. False on any doubt; never raises, never forks."""
    return is_synced(read_kernel_clock())


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


# --- local time, for what happens "daily" or "per month" (agent/uitd_duty.py) -----------

_UTC_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
LOCALTIME: Final = Path("/etc/localtime")


def local_zone() -> datetime.tzinfo:
    """The zone libc's localtime would use ($TZ, else /etc/localtime), as zoneinfo data:
    libc's localtime refuses every second after 2038 on a 32-bit time_t. Looked up again
    when $TZ or /etc/localtime changes (`timedatectl set-timezone` on a running gateway);
    the zone data itself is read once per change."""
    name = os.environ.get("TZ")
    try:
        if name is None:
            stat = LOCALTIME.stat()
            return _zone_file(stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return _zone_named(name.removeprefix(":"))
    except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
        return _libc_offset()


@functools.lru_cache(maxsize=4)
def _zone_file(inode: int, mtime_ns: int, size: int) -> datetime.tzinfo:
    """/etc/localtime's zone, as it is with this inode, mtime and size."""
    with LOCALTIME.open("rb") as data:
        return zoneinfo.ZoneInfo.from_file(data)


@functools.lru_cache(maxsize=8)
def _zone_named(name: str) -> datetime.tzinfo:
    return zoneinfo.ZoneInfo(name)


def _libc_offset() -> datetime.tzinfo:
    """No zone database, or a POSIX rule such as TZ=CST-8: the offset libc applies now; on
    a 32-bit time_t past 2038 libc cannot say, so the rule's standard offset (time.timezone,
    set by tzset, no time_t involved): right for every zone without summer time, China's."""
    try:
        offset = time.localtime().tm_gmtoff
    except (OverflowError, OSError, ValueError):
        offset = -time.timezone
    return datetime.timezone(datetime.timedelta(seconds=offset))


def local_now() -> datetime.datetime:
    """Now, in the gateway's local time zone, by date arithmetic (no time_t)."""
    return (_UTC_EPOCH + datetime.timedelta(seconds=time.time())).astimezone(local_zone())
