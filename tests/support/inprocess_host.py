"""The in-process host of `stubdom.host.inprocess`, in a short temporary directory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from stubdom.host.inprocess import InProcessHost
from stubdom.host.inprocess import inprocess_host as _inprocess_host
from tests.support.daemons import short_tmpdir

__all__ = ["InProcessHost", "inprocess_host"]


@contextlib.asynccontextmanager
async def inprocess_host(prefix: str = "host-") -> AsyncIterator[InProcessHost]:
    async with _inprocess_host(short_tmpdir(prefix)) as host:
        yield host
