"""Tell systemd how the agent is doing (sd_notify), and keep its watchdog fed
only while the agent's loops are really alive.

The protocol is one AF_UNIX datagram of `KEY=VALUE` lines to the socket named
by $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace), so this
needs no library. `Watchdog` pings WATCHDOG=1 at half the interval systemd
asked for, but only while every registered liveness probe is fresh: a hung
line, uplink or buffer loop stops the pings and systemd restarts the agent.

This module must never raise out of a notification and never ping on behalf
of a loop it cannot see iterate: a ping that hides a hang is worse than none.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# How long a single datagram may block; a stuck systemd must not stall the agent.
_SEND_TIMEOUT_S = 1.0


def _socket_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]  # Linux abstract namespace
    if not address.startswith("/"):
        return None  # systemd also knows vsock addresses; a Pi agent never gets one
    return address


def notify(state: str) -> bool:
    """Send one sd_notify message; True if systemd got it, False otherwise (never raises)."""
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT_S)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", state.split("=", 1)[0], exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Start-up is done: systemd marks the unit active (Type=notify)."""
    message = "READY=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def status(text: str) -> bool:
    """Free text shown by `systemctl status alarmgw`."""
    return notify("STATUS=" + _one_line(text))


def watchdog() -> bool:
    """One keep-alive ping. Prefer `Watchdog`, which pings only while loops are alive."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Shutdown has begun; systemd stops expecting watchdog pings."""
    return notify("STOPPING=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more time in a slow start-up or shutdown (e.g. a long buffer replay)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def watchdog_interval_s() -> float | None:
    """The watchdog interval systemd set for this process, or None when there is none.

    Mirrors sd_watchdog_enabled(): WATCHDOG_USEC must be a positive integer and,
    if WATCHDOG_PID is set, it must name this process (a child must not ping).
    """
    usec_text = os.environ.get("WATCHDOG_USEC", "")
    pid_text = os.environ.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
        if pid_text and int(pid_text) != os.getpid():
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class LivenessProbe:
    """A loop that must keep iterating: `last_alive()` returns time.monotonic() of its
    last iteration; it is stale once that is older than `max_age_s`."""

    name: str
    last_alive: Callable[[], float]
    max_age_s: float


class Watchdog:
    """Pings systemd's watchdog at half the interval while every probe is fresh.

    Register the probes, then `start()`; `stop()` joins the thread. Without a
    watchdog interval (not under systemd, or WatchdogSec unset) `start()` runs
    nothing: there is nobody to ping.
    """

    def __init__(
        self,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        ping: Callable[[], bool] = watchdog,
    ) -> None:
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self._clock = clock
        self._ping = ping
        self._probes: dict[str, LivenessProbe] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported_stale: frozenset[str] = frozenset()
        self.pings_sent = 0

    def register(self, name: str, last_alive: Callable[[], float], max_age_s: float) -> None:
        if max_age_s <= 0:
            raise ValueError(f"probe {name!r}: max_age_s must be positive")
        with self._lock:
            self._probes[name] = LivenessProbe(name, last_alive, max_age_s)

    def unregister(self, name: str) -> None:
        """For a loop that ends on purpose (a line removed); unknown names are ignored."""
        with self._lock:
            self._probes.pop(name, None)

    def stale_probes(self) -> list[str]:
        """Names of probes whose loop has not iterated within its max age."""
        with self._lock:
            probes = list(self._probes.values())
        now = self._clock()
        stale = []
        for probe in probes:
            try:
                age = now - probe.last_alive()
            except Exception:  # a probe that cannot answer is as good as hung
                log.exception("liveness probe %s raised", probe.name)
                stale.append(probe.name)
                continue
            if age > probe.max_age_s:
                stale.append(probe.name)
        return stale

    def tick(self) -> bool:
        """Check every probe and ping if all are fresh; True if a ping went out."""
        stale = self.stale_probes()
        self._report_change(frozenset(stale))
        if stale:
            return False
        sent = self._ping()
        if sent:
            self.pings_sent += 1
        return sent

    def _report_change(self, stale: frozenset[str]) -> None:
        # Log each transition once, not every tick: the journal is on an SD card.
        newly_stale = stale - self._reported_stale
        recovered = self._reported_stale - stale
        if newly_stale:
            log.error(
                "watchdog: not pinging systemd, loop(s) hung: %s", ", ".join(sorted(newly_stale))
            )
        if recovered:
            log.warning("watchdog: loop(s) alive again: %s", ", ".join(sorted(recovered)))
        self._reported_stale = stale

    def start(self) -> None:
        if self.interval_s is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self.interval_s is not None
        # a quarter, not systemd's suggested half: one tick that finds a probe briefly
        # stale (or one lost datagram) then costs 7.5 s of the 30, not all of them
        period = self.interval_s / 4
        while True:
            self.tick()
            if self._stop.wait(period):
                return
