"""The agent's queue of events to serve: filled by the xenstore client's reader and the
signal handlers, emptied by the one serve loop.

`asyncio.Queue` does this with a bound, task accounting and a fair wake-up of many
getters, none of which one consumer needs, at some fifteen Python calls per item; every
command puts two items on the path of its answer (its event, and the event of the
agent's own rm of it)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class EventQueue(Generic[T]):
    """An unbounded FIFO with a single consumer (`get` is not to be awaited twice at once)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        """The oldest item, once there is one."""
        while not self._items:
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()
