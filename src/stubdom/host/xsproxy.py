"""dom0's xenstore socket in front of a real daemon's, tracing every packet.

A traced host on cxenstored or oxenstored moves the daemon's socket aside and serves
dom0's path with `TracingProxy`.  Unlike a domain's relay it multiplexes nothing: every
accepted client gets a connection of its own to the daemon, since dom0's connections
are privileged and independent (each has its own watches, transactions and
``req_id``s, and the daemon treats each as it would a client of its own socket).  The
bytes pass unchanged; `stubdom.host.xstrace.ConnTrace` decodes a copy of each
direction.  A request is recorded before it goes up, a reply before it is passed down,
so the trace never shows an answer ahead of its question.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from stubdom.fdio import connect_unix
from stubdom.host.unixserver import ConnectionServer
from stubdom.host.xsrelay import READ_SIZE
from stubdom.host.xstrace import ConnTrace, DomainTrace

log = logging.getLogger(__name__)


class TracingProxy:
    """A unix socket whose every connection is passed through to ``upstream``'s."""

    def __init__(self, path: Path, upstream: Path, trace: DomainTrace) -> None:
        self.path = path
        self.upstream = upstream
        self.trace = trace
        self._listener = ConnectionServer(path, self._serve)

    @classmethod
    async def start(cls, path: Path, upstream: Path, trace: DomainTrace) -> TracingProxy:
        """Listen on ``path`` (mode 0600, as the daemon's own socket: whoever connects is
        dom0); a stale socket there is replaced, any other file refused."""
        proxy = cls(Path(path), Path(upstream), trace)
        await proxy._listener.start()
        log.info("tracing proxy on %s for %s", proxy.path, proxy.upstream)
        return proxy

    async def close(self) -> None:
        """Stop listening and end every connection, both sides."""
        await self._listener.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client: its own connection to the daemon, passed through both ways."""
        try:
            sock = await connect_unix(str(self.upstream))
            up_reader, up_writer = await asyncio.open_unix_connection(sock=sock)
        except OSError as e:  # TimeoutError included
            log.warning("cannot reach xenstored on %s (%s); client refused", self.upstream, e)
            return
        try:
            await _pass_through(reader, writer, up_reader, up_writer, self.trace.connection())
        finally:
            up_writer.close()


async def _pass_through(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    conn: ConnTrace,
) -> None:
    """Both directions until either side closes; then the other is closed too, as the
    daemon drops a connection's state when its client goes."""
    loop = asyncio.get_running_loop()
    pumps = [
        loop.create_task(_pump(reader, up_writer, conn.requests)),
        loop.create_task(_pump(up_reader, writer, conn.replies)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: Callable[[bytes], None]
) -> None:
    """Copy until end of stream; a reader that falls behind holds the source unread."""
    try:
        while data := await source.read(READ_SIZE):
            record(data)
            sink.write(data)
            await sink.drain()
    except ConnectionError as e:
        log.debug("tracing proxy: %s", e)

