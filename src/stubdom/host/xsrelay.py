"""A domain's xenstore socket for many programs on its one upstream connection.

On real Xen a domain reaches xenstored through one ring, and its kernel shares it among
every program (Linux's xenbus device, Mini-OS's xenbus).  The simulated host gives each
domain process ``XENSTORED_PATH``; with cxenstored/oxenstored behind a ring that path
must be a socket accepting many connections that all go out on the one ring.
`DomainRelay` is that socket: every decision is `stubdom.xenstore.mux.Mux`'s, this shell
only moves bytes.

The upstream connection is made at `DomainRelay.start` (so a relay that cannot reach
xenstore fails there).  If it is lost, every client is disconnected (its transactions
and watches died with the connection) and the loss is logged; the next client to
connect makes a new upstream connection with the same factory, and if that fails the
client is refused (closed at once).  `upstream_losses` counts the losses.

With a trace (`stubdom.host.xstrace`), every client is a connection of its own in it,
of the relay's domain, recorded as the client saw it: its own ``req_id``s and tokens,
and the answers the mux made for it.  The mux's clean-up after a client went is not
the client's, so it is not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from stubdom.fdio import remove_stale_socket
from stubdom.host.unixserver import ConnectionServer
from stubdom.host.xstrace import ConnTrace, DomainTrace
from stubdom.wire.packet import Packet, encode
from stubdom.xenstore.errors import ConnectionClosed
from stubdom.xenstore.mux import Action as MuxAction
from stubdom.xenstore.mux import CloseUpstream, Deliver, Disconnect, Mux, Upstream
from stubdom.xenstore.transport import Transport

log = logging.getLogger(__name__)

#: Bytes read from a client at a time.
READ_SIZE = 64 * 1024

UpstreamFactory = Callable[[], Awaitable[Transport]]


class DomainRelay:
    """A unix socket whose every connection is relayed onto one upstream connection."""

    def __init__(
        self,
        path: Path,
        upstream: UpstreamFactory,
        description: str,
        trace: DomainTrace | None = None,
    ) -> None:
        self.path = path
        self.description = description
        #: How often the upstream connection was lost.
        self.upstream_losses = 0
        self._factory = upstream
        self._mux = Mux()
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._trace = trace
        self._traces: dict[int, ConnTrace] = {}
        self._upstream: Transport | None = None
        self._upstream_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._listener = ConnectionServer(self.path, self._serve_client)

    @classmethod
    async def start(
        cls,
        path: Path,
        upstream: UpstreamFactory,
        description: str,
        trace: DomainTrace | None = None,
    ) -> DomainRelay:
        """Connect upstream, then listen on ``path``, mode 0600 like the daemon's main
        socket: whoever can connect speaks as the domain, so only the host's user may."""
        relay = cls(Path(path), upstream, description, trace)
        remove_stale_socket(relay.path)  # before anything is connected
        await relay._connect_upstream()
        try:
            await relay._listener.start()
        except BaseException:
            await relay.close()
            raise
        log.info("%s: relaying %s onto %s", description, path, relay._describe_upstream())
        return relay

    async def close(self) -> None:
        """Stop listening, disconnect every client and the upstream connection."""
        self._listener.closing = True
        for writer in list(self._writers.values()):
            writer.close()
        self._writers.clear()
        await self._listener.stop()
        self._drop_upstream()

    # -- upstream -------------------------------------------------------------------

    def _describe_upstream(self) -> str:
        return self._upstream.description if self._upstream is not None else "nothing"

    async def _connect_upstream(self) -> Transport:
        async with self._connecting:
            if self._upstream is not None:
                return self._upstream
            transport = await self._factory()
            self._upstream = transport
            self._upstream_task = asyncio.get_running_loop().create_task(
                self._run_upstream(transport), name=f"xsrelay upstream {self.description}"
            )
            return transport

    async def _run_upstream(self, transport: Transport) -> None:
        reason = "end of stream"
        try:
            await transport.run(self._from_upstream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
        if self._upstream is transport:
            self._lose_upstream(reason)

    def _from_upstream(self, data: bytes) -> None:
        self._apply(self._mux.upstream_bytes(data))

    def _lose_upstream(self, reason: str) -> None:
        """Every client goes with the connection; the next one connects anew."""
        if self._upstream is None:
            return
        self.upstream_losses += 1
        if not self._listener.closing:
            log.warning(
                "%s: upstream %s lost (%s, loss %d); %d clients disconnected",
                self.description,
                self._upstream.description,
                reason,
                self.upstream_losses,
                self._mux.clients,
            )
        self._drop_upstream()
        self._apply(self._mux.upstream_lost(reason))

    def _drop_upstream(self) -> None:
        transport, self._upstream = self._upstream, None
        task, self._upstream_task = self._upstream_task, None
        if transport is not None:
            transport.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # -- clients --------------------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream = await self._connect_upstream()
        except Exception as exc:  # whatever the factory raises, this client is refused
            log.warning("%s: cannot reach xenstore (%s); client refused", self.description, exc)
            return
        cid = self._mux.open_client()
        self._writers[cid] = writer
        trace = self._trace.connection() if self._trace is not None else None
        if trace is not None:
            self._traces[cid] = trace
        try:
            while cid in self._writers and (data := await reader.read(READ_SIZE)):
                if trace is not None:
                    trace.requests(data)
                self._apply(self._mux.client_bytes(cid, data))
                # Flow control: a client is not read while the daemon is behind, nor
                # while it leaves its own replies unread.
                if self._upstream is upstream:
                    await upstream.drain()
                await writer.drain()
        except (ConnectionError, ConnectionClosed) as exc:
            log.debug("%s: client %d: %s", self.description, cid, exc)
        finally:
            self._traces.pop(cid, None)
            if self._writers.pop(cid, None) is not None:
                self._apply(self._mux.client_closed(cid))

    # -- carrying out the mux's decisions ----------------------------------------------

    def _apply(self, actions: list[MuxAction]) -> None:
        for action in actions:
            if isinstance(action, Upstream):
                self._send_upstream(encode(action.packet))
            elif isinstance(action, Deliver):
                writer = self._writers.get(action.client)
                if writer is not None and not writer.is_closing():
                    self._traced(action.client, action.packet)
                    writer.write(encode(action.packet))
            elif isinstance(action, Disconnect):
                writer = self._writers.pop(action.client, None)
                log.debug(
                    "%s: client %d disconnected: %s", self.description, action.client, action.reason
                )
                if writer is not None:
                    writer.close()
            elif isinstance(action, CloseUpstream):
                self._lose_upstream(action.reason)

    def _traced(self, client: int, packet: Packet) -> None:
        trace = self._traces.get(client)
        if trace is not None:
            trace.reply(packet)

    def _send_upstream(self, message: bytes) -> None:
        if self._upstream is None:
            return
        try:
            self._upstream.write(message)
        except ConnectionClosed as exc:
            self._lose_upstream(str(exc))


__all__ = ["DomainRelay", "UpstreamFactory"]
