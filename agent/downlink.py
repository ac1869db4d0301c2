"""Downlink commands on the uplink: queued for one worker thread, each answered on cmd-result.

The connection thread only hands a command over (`received`) and publishes the results
that are waiting (`take_result`); a command that waits on the field or the buffer (a
live read, a test alarm) runs on the `uplink-commands` thread, never in the connection
thread. At most COMMAND_QUEUE commands wait; more are answered `busy` at once. At most
RESULT_QUEUE results wait for a connection; older ones are dropped.

It must never let a command stop the worker: agent.commands.CommandHandler never
raises, and a bug is answered `internal` here all the same.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from agent import feed
from core.events import Identity, now_ms

log = logging.getLogger("agent.uplink")

COMMAND_QUEUE: Final = 8  # commands waiting for the worker; more are answered "busy"
RESULT_QUEUE: Final = 64  # results waiting for a connection; older ones are dropped


class CommandFn(Protocol):
    """Answers one downlink message (agent.commands.CommandHandler.handle); never raises."""

    def __call__(self, name: str, raw: bytes, retained: bool = False) -> Mapping[str, Any]: ...


class Downlink:
    """The commands' queue, worker and results. start(), then stop() on shutdown."""

    def __init__(self, commands: CommandFn, identity: Identity, wake: Callable[[], None]) -> None:
        self._commands = commands
        self.identity = identity
        self._wake = wake  # results are waiting: the connection thread should look
        self._queue: queue.Queue[tuple[str, bytes, bool] | None] = queue.Queue(COMMAND_QUEUE)
        self._thread: threading.Thread | None = None
        self._results: deque[dict[str, Any]] = deque(maxlen=RESULT_QUEUE)
        self._results_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="uplink-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
            self._thread = None

    def received(self, name: str, payload: bytes, retained: bool, too_large: int | None) -> None:
        """A message on cmd/<name> (from the connection thread): queue it, or answer now."""
        if too_large is not None:  # its payload was thrown away unread (agent.mqtt)
            bad = feed.too_large(too_large)
            self._queue_result(self._error_result(name, bad.code, bad.message))
            return
        try:
            self._queue.put_nowait((name, payload, retained))
        except queue.Full:
            self._queue_result(self._busy_result(name, payload, retained))

    def take_result(self) -> dict[str, Any] | None:
        """The oldest result waiting to be published, or None."""
        with self._results_lock:
            return self._results.popleft() if self._results else None

    def _work(self) -> None:
        """Commands may wait on the field or the buffer: never in the connection thread."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, raw, retained = item
            try:
                result = dict(self._commands(name, raw, retained=retained))
            except Exception as exc:  # the handler promises not to raise; belt and braces
                log.exception("command handler raised")
                result = self._error_result(name, feed.ErrorCode.INTERNAL, str(exc))
            self._queue_result(result)

    def _queue_result(self, result: dict[str, Any]) -> None:
        with self._results_lock:
            self._results.append(result)
        self._wake()

    def _busy_result(self, name: str, raw: bytes, retained: bool) -> dict[str, Any]:
        request_id = None
        with contextlib.suppress(feed.BadCommand):
            request_id = feed.parse_command(name, raw, retained=retained).request_id
        return self._error_result(name, feed.ErrorCode.BUSY, "too many commands queued", request_id)

    def _error_result(
        self, name: str, code: str, message: str, request_id: str | None = None
    ) -> dict[str, Any]:
        return feed.result_payload(
            self.identity,
            request_id,
            name,
            False,
            None,
            {"code": code, "message": message},
            now_ms(),
        )
