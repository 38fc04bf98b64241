"""The in-process host of `stubdom.host.inprocess`, in a short temporary directory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from stubdom.host.inprocess import InProcessHost
from stubdom.host.inprocess import inprocess_host as _inprocess_host
from stubdom.host.xslink import Daemon
from tests.support.daemons import need_xenstored, short_tmpdir

__all__ = ["InProcessHost", "inprocess_host"]


@contextlib.asynccontextmanager
async def inprocess_host(
    prefix: str = "host-", xenstored: str = "ours"
) -> AsyncIterator[InProcessHost]:
    """The host on ``xenstored`` (ours, cx or ox; a missing real one skips, or fails in CI)."""
    need_xenstored(xenstored)
    async with _inprocess_host(short_tmpdir(prefix), xenstored=Daemon(xenstored)) as host:
        yield host
