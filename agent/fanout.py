"""The event fan-out: each stored event, as its payload, to every local follower.

`alarmgw events --follow` subscribes through the control socket; the pipeline
publishes every event once the buffer has stored it. Each follower gets its own
bounded queue, so a slow follower loses events (and is told how many) instead of
growing memory or slowing the publisher.

It must never block the publisher (the buffer's writer calls it) and never hold
more than `queue_size` events per follower.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any


class EventFanout:
    """A ready-made source of EventSubscriptions: the runtime calls `publish()` with
    each event's payload once the buffer has stored it; each follower gets its own
    bounded queue, so a slow follower loses events (and is told how many) instead
    of growing memory or slowing the publisher."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: set[FanoutSubscription] = set()

    def publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.put(event)

    def subscribe(self) -> FanoutSubscription:
        sub = FanoutSubscription(self._queue_size, self._unsubscribe)
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def _unsubscribe(self, sub: FanoutSubscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)


class FanoutSubscription:
    """One follower's bounded queue; see EventFanout."""

    def __init__(self, size: int, on_close: Callable[[FanoutSubscription], None]) -> None:
        self._items: deque[dict[str, Any]] = deque()
        self._size = size
        self._missed = 0
        self._closed = False
        self._cond = threading.Condition()
        self._on_close = on_close

    def put(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._items) >= self._size:
                self._items.popleft()
                self._missed += 1
            self._items.append(event)
            self._cond.notify()

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout=timeout_s)
            return self._items.popleft() if self._items else None

    def take_missed(self) -> int:
        with self._cond:
            missed, self._missed = self._missed, 0
            return missed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
        self._on_close(self)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            event = self.next_event(timeout_s=1.0)
            if event is not None:
                yield event
            elif self._closed:
                return
