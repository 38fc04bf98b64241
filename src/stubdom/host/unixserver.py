"""A private unix socket whose connections end with it.

The domain relays and dom0's tracing proxy listen the same way: mode 0600 (whoever can
connect speaks as a domain, or as dom0), a stale socket of an earlier run replaced and
any other file refused, and `stop` ending every connection it accepted before the
socket goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from stubdom.fdio import remove_stale_socket

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ConnectionServer:
    """Listen on ``path`` and run ``handle`` for each connection until `stop`."""

    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        self._handle = handle
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    async def start(self) -> None:
        remove_stale_socket(self.path)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop listening, cancel every connection's handler, remove the socket."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.closing:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            # `stop` ends the connection: asyncio's server would log a handler that
            # ends cancelled as an error, so it ends here.
            if not self.closing:
                raise
        finally:
            self._tasks.discard(task)
            writer.close()
