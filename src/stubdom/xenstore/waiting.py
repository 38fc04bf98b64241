"""Waiting for a condition on nodes: watch them, look, and look again after each event.

The watches are registered before the first look, so no change can slip between the
look and the wait: whatever the server did after the WATCH either shows in the look or
fires an event that causes another one.  Every look reads afresh, so an event only
says "look again" and any number of them may merge into one look.

`Client.wait_until` is the usual entry.  `WatchGroup` on its own serves watches that
outlive one wait (the toolstack's control channel keeps its watches across commands).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from stubdom.xenstore.errors import (
    ConnectionClosed,
    WaitTimeout,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import pipelined

if TYPE_CHECKING:
    from stubdom.xenstore.client import Client, Watch
    from stubdom.xenstore.protocol import WatchEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


class WatchGroup:
    """Watches on ``paths`` that wake one waiter; ``async with`` registers and removes
    them.

    Events are not queued, only noted: `take` forgets those seen so far (call it
    before the reads of a look are sent), `changed` waits for one after that, and
    `fired` counts them per path for callers that care which node fired.
    `changed_since` says whether a path fired after a given reply (`Reply.seq`): a
    value read, or written by us, is still the node's value until then.  A lost
    connection ends every later `take` and `changed` with its `ConnectionClosed`.
    """

    def __init__(self, client: Client, paths: Sequence[str]) -> None:
        if not paths:
            raise ValueError("a watch group needs at least one path")
        self.client = client
        self.paths = tuple(paths)
        self._watches: list[Watch] = []
        self._fired = dict.fromkeys(self.paths, 0)
        self._last = dict.fromkeys(self.paths, 0)
        #: An event came since the last `take` (an asyncio.Event without its per-wait
        #: loop lookup, a system call on Python 3.11).
        self._changed = False
        self._wakers: list[asyncio.Future[None]] = []
        self._closed: ConnectionClosed | None = None

    @property
    def active(self) -> bool:
        return bool(self._watches)

    def fired(self, path: str) -> int:
        """The events on ``path`` so far, the initial one included."""
        return self._fired[path]

    def changed_since(self, path: str, seq: int) -> bool:
        """Whether an event on ``path`` arrived after the reply numbered ``seq`` (or the
        watches are not registered, or the connection is lost).  A server sends one
        connection's replies and events in the order it made them, so while this is
        False a node read at ``seq`` (or written then, by a server that sends the
        write's own event before its reply) has kept that value as far as anything
        received tells: what a read would show, one round trip sooner."""
        return not self._watches or self._closed is not None or self._last[path] > seq

    async def start(self) -> WatchGroup:
        try:
            for path in self.paths:
                watch = self.client.watch(path, sink=self._sink(path))
                await watch.start()
                self._watches.append(watch)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """UNWATCH each path.  A failed UNWATCH is only logged (the watch is gone here
        either way, and a lost connection took it on the server); a cancellation is
        raised once every UNWATCH has been sent, so none is left behind."""
        watches, self._watches = self._watches, []
        cancelled: asyncio.CancelledError | None = None
        for watch in watches:
            try:
                await watch.stop()
            except (XenStoreError, ConnectionClosed, XenStoreTimeout) as err:
                log.debug("UNWATCH %s failed: %s", watch.path, err)
            except asyncio.CancelledError as err:
                cancelled = cancelled or err
        if cancelled is not None:
            raise cancelled

    async def __aenter__(self) -> WatchGroup:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _sink(self, path: str) -> Callable[[WatchEvent | ConnectionClosed], None]:
        def sink(event: WatchEvent | ConnectionClosed) -> None:
            if isinstance(event, ConnectionClosed):
                self._closed = event
            else:
                self._fired[path] += 1
                self._last[path] = event.seq
            self._changed = True
            if self._wakers:
                wakers, self._wakers = self._wakers, []
                for fut in wakers:
                    if not fut.done():
                        fut.set_result(None)

        return sink

    async def _wait(self) -> None:
        """Until an event comes (at once if one came since the last `take`)."""
        if self._changed:
            return
        fut = self.client._loop.create_future()
        self._wakers.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self._wakers:
                self._wakers.remove(fut)
            raise

    def take(self) -> None:
        """Forget the events so far: a look whose reads are sent after this sees what
        they announced."""
        self._raise_closed()
        self._changed = False

    async def changed(self) -> None:
        """Return once an event came after the last `take` (at once if one did)."""
        await self._wait()
        self._raise_closed()

    async def changed_after(self, seen: Mapping[str, int]) -> None:
        """Return once an event on one of ``seen``'s paths arrived after the reply
        numbered ``seen[path]`` (at once if one did): a look that read each path at
        that reply has nothing to look at again until then -- not even the events its
        own writes fired, or those that came before its reads were answered."""
        self._raise_closed()
        while not any(self._last[path] > seq for path, seq in seen.items()):
            self._changed = False
            await self._wait()
            self._raise_closed()

    def _raise_closed(self) -> None:
        if self._closed is not None:
            raise ConnectionClosed(str(self._closed)) from self._closed

    async def until(self, look: Callable[[], Awaitable[T | None]], timeout: float | None) -> T:
        """``await look()`` now and after each event until it returns something other
        than None, and return that; `WaitTimeout` after ``timeout`` seconds (None: no
        limit).  What ``look`` raises ends the wait."""
        if not self.active:
            raise RuntimeError(f"watches on {', '.join(self.paths)} are not registered")
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while True:
                    self.take()
                    found = await look()
                    if found is not None:
                        return found
                    await self.changed()
        except TimeoutError:
            if not deadline.expired():
                raise  # a request timed out, not the wait
            raise WaitTimeout(
                f"xenstore: {', '.join(self.paths)}: "
                f"the awaited condition did not hold within {timeout:g} s"
            ) from None


async def wait_until(
    client: Client,
    paths: Sequence[str],
    check: Callable[[tuple[str | None, ...]], T | None],
    timeout: float | None,
) -> T:
    """`Client.wait_until` for several paths: ``check`` gets their values in order."""
    last: tuple[str | None, ...] | None = None

    async def look() -> T | None:
        nonlocal last
        last = await pipelined(*(client.read_text(p) for p in paths))
        return check(last)

    async with WatchGroup(client, paths) as group:
        try:
            return await group.until(look, timeout)
        except WaitTimeout as err:
            err.last = last
            raise
