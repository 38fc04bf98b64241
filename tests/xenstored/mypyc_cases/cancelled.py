"""A cancellation thrown through two compiled coroutines, the inner one awaiting while
it unwinds."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Cleanup:
    async def __aenter__(self) -> Cleanup:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.sleep(0.01)


async def inner() -> None:
    async with Cleanup():
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)


async def outer() -> None:
    await inner()
