"""The asyncio client's requests in flight and their deadlines.

A `Call` is the requests of one `Client.roundtrips`: their replies are awaited with one
future for them all, set once the last one is in.  Its timeout is not a context manager
and a task cancellation per request: the calls sent with the same timeout expire in
the order they were sent (their deadlines are the loop's clock plus that timeout), so
`Deadlines` keeps them in that order under a single timer armed for the oldest one --
a request costs a deque append, and the timer fires about once per timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque

from stubdom.xenstore.protocol import Reply, Request


class Call:
    """The requests of one round trip and their replies so far (None: not yet in); the
    client's reader fills them in and completes the future with the last one."""

    __slots__ = ("deadline", "future", "left", "replies", "requests", "timer")

    def __init__(self, future: asyncio.Future[list[Reply]], count: int) -> None:
        #: Set to the replies once the last is in, or to what ends the call.
        self.future = future
        self.requests: list[Request] = []
        self.replies: list[Reply | None] = [None] * count
        #: Replies still awaited.
        self.left = count
        #: The loop time at which the call times out (None: never).
        self.deadline: float | None = None
        #: The call's own timer, when its timeout is not the client's (`Deadlines`).
        self.timer: asyncio.TimerHandle | None = None

    def expire(self) -> None:
        """The deadline passed: the caller gets a TimeoutError (its own to name)."""
        if not self.future.done():
            self.future.set_exception(TimeoutError())


class Deadlines:
    """The calls made with one timeout (``limit`` seconds), oldest first, under one
    timer armed for the oldest unfinished one."""

    __slots__ = ("_calls", "_loop", "_timer", "limit")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        self._loop = loop
        self.limit = limit
        self._calls: deque[Call] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, call: Call) -> None:
        deadline = call.deadline = self._loop.time() + self.limit
        self._calls.append(call)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def finished(self) -> None:
        """A call has finished: forget the finished ones at the head (a call behind an
        unfinished one waits for it; calls usually finish in order)."""
        calls = self._calls
        while calls and calls[0].future.done():
            calls.popleft()

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        calls = self._calls
        while calls:
            call = calls[0]
            if not call.future.done():
                assert call.deadline is not None
                if call.deadline > now:
                    self._timer = self._loop.call_at(call.deadline, self._expire)
                    return
                call.expire()
            calls.popleft()

    def cancel(self) -> None:
        """The connection is gone for good: no call is left to time out."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._calls.clear()
