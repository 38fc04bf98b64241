"""The xenstore proxy's asyncio shell: the application's ``XENSTORED_PATH``.

A unix socket in the domain's scratch directory.  Each connection to it gets its own
connection to the stubdomain's real socket, so the application is the same
unprivileged domain it would be without us (permissions, quotas, relative paths and
watches are xenstored's).  Bytes go both ways as they are; only the application's side
passes through a `RequestGate`, whose `BARRIER` makes the connection wait for
``barrier()`` (the save relay going idle) before the next request goes on.  While it
waits nothing more is read from that connection, so its requests keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from stubdom.minios.gate import BARRIER, RequestGate

log = logging.getLogger(__name__)

CHUNK = 65536


class XenstoreProxy:
    def __init__(
        self,
        path: Path,
        upstream: str,
        held_paths: Collection[str],
        barrier: Callable[[], Awaitable[None]],
    ) -> None:
        self.path = path
        self.upstream = upstream
        self.held_paths = tuple(held_paths)
        self.barrier = barrier
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accepted, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError) as e:
            log.debug("xenstore proxy connection ended: %s", e)
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError as e:
            log.warning("xenstore proxy: cannot reach %s: %s", self.upstream, e)
            return
        down = asyncio.get_running_loop().create_task(_copy(up_reader, writer))
        gate = RequestGate(self.held_paths)
        try:
            while not down.done():
                data = await reader.read(CHUNK)
                if not data:
                    break
                for item in gate.feed(data):
                    if item is BARRIER:
                        await self.barrier()
                    else:
                        up_writer.write(item)
                        await up_writer.drain()
        finally:
            up_writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(down), 5)
            down.cancel()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """xenstored's replies and events to the application, as they are."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
