"""Several requests on one connection without waiting for each reply in turn.

xenstored serves a connection's requests one at a time, in the order they arrive, so a
batch of writes issued back to back (`pipelined`) changes the store exactly as the same
writes awaited one by one would -- inside a transaction, even on failure: the first
failure (in issue order) is raised, the transaction is then aborted, and whatever the
later requests did goes with it.  What it saves is one round trip per request.

The order holds because `Client.roundtrip` puts a request on the wire before its first
suspension, and the tasks `asyncio.gather` makes start in argument order.  Outside a
transaction, pipeline only requests that do not depend on one another's success
(reads, or writes whose failure fails the whole operation anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar, overload

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@overload
async def pipelined(a: Awaitable[A], b: Awaitable[B], /) -> tuple[A, B]: ...
@overload
async def pipelined(a: Awaitable[A], b: Awaitable[B], c: Awaitable[C], /) -> tuple[A, B, C]: ...
@overload
async def pipelined(*requests: Awaitable[T]) -> tuple[T, ...]: ...


async def pipelined(*requests: Awaitable[Any]) -> tuple[Any, ...]:
    """Await ``requests`` issued back to back; their results in order.  The first one
    that failed (in issue order) raises, after every one has finished."""
    if len(requests) == 1:
        return (await requests[0],)
    results = await asyncio.gather(*requests, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return tuple(results)
