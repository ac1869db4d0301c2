"""What the line tests share: a sink that records a line's output, a device with the
usual two fast blocks and one slow block, and waiting on a condition inside asyncio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from drivers.line import CommChange, DevicePoll, LineOutput, PollResult
from drivers.types import PollClass, ReadRequest, Table

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def device(
    device_id: str,
    unit: int,
    *,
    period_s: float = 0.02,
    timeout_s: float = 0.1,
    retries: int = 1,
    comm_fault_after: int = 3,
    backoff_max_s: float = 1.0,
) -> DevicePoll:
    return DevicePoll(
        device_id=device_id,
        unit=unit,
        fast=[
            ReadRequest(unit, Table.HOLDING, 0, 4),
            ReadRequest(unit, Table.DISCRETE, 0, 8),
        ],
        slow=[ReadRequest(unit, Table.INPUT, 10, 6)],
        fast_period_s=period_s,
        slow_period_s=period_s * 5,
        timeout_s=timeout_s,
        retries=retries,
        comm_fault_after=comm_fault_after,
        backoff_max_s=backoff_max_s,
    )


class Outputs:
    """The line's sink: everything it reported, in order."""

    def __init__(self) -> None:
        self.items: list[LineOutput] = []

    def __call__(self, item: LineOutput) -> None:
        self.items.append(item)

    def polls(self, device_id: str, poll_class: PollClass | None = None) -> list[PollResult]:
        return [
            i
            for i in self.items
            if isinstance(i, PollResult)
            and i.device_id == device_id
            and (poll_class is None or i.poll_class is poll_class)
        ]

    def changes(self, device_id: str) -> list[CommChange]:
        return [i for i in self.items if isinstance(i, CommChange) and i.device_id == device_id]
