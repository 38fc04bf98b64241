"""The host daemon's local API: the `Hypervisor` interface over a unix socket.

Only the host daemon holds the hypervisor (domains are its child processes), so every
other ``stubdom`` command reaches it through this API.  It is JSON lines: one request
per line, ``{"id": 1, "op": "pause", "args": {"domid": 3}}``, answered by one line,
``{"id": 1, "ok": null}`` or ``{"id": 1, "error": {"type": "NoSuchDomain", "message":
"...", "errno": "ESRCH", "domid": 3}}``.  A connection's requests are answered in order.

Layers: the request messages (frozen dataclasses, one per op, each knowing how to
encode its arguments and decode its result) and the sans-IO codec (`encode_request`,
`decode_request`, `encode_ok`, `encode_error`, `decode_reply`) are in
`stubdom.host.apicodec` and re-exported here; this module holds the asyncio shells:
`ApiServer` dispatching to a `Hypervisor`, and `RemoteHypervisor`, the `Hypervisor` a
client holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from stubdom.host.apicodec import (
    MAX_LINE,
    REQUESTS,
    ApiProtocolError,
    BadRequestLine,
    BuildHvm,
    BuildPv,
    CreateDomain,
    Destroy,
    ErrorInfo,
    Find,
    GetDomainInfo,
    HostError,
    HostNotRunning,
    HostStatus,
    ListDomains,
    Pause,
    Ping,
    RemoteError,
    Rename,
    Reply,
    Request,
    SetMaxMem,
    SetMaxVcpus,
    SetMemoryTarget,
    SetTarget,
    Shutdown,
    ShutdownDomain,
    Status,
    Unpause,
    _HypervisorCall,
    decode_reply,
    decode_request,
    encode_error,
    encode_ok,
    encode_request,
    lost_during,
    unreachable,
)
from stubdom.host.dom0 import dom0_info
from stubdom.host.hypervisor import (
    DomainConfig,
    DomainInfo,
    Hypervisor,
    HypervisorError,
    ShutdownReason,
)

log = logging.getLogger(__name__)

R = TypeVar("R")


# -- the server ------------------------------------------------------------------


class ApiServer:
    """Serve a `Hypervisor` on a unix socket; `Shutdown` calls ``on_shutdown``.

    Connections are independent; each one's requests are handled one at a time, in
    order, so a client sees its own operations take effect in the order it sent them.
    """

    def __init__(
        self,
        hypervisor: Hypervisor,
        socket_path: str | os.PathLike[str],
        *,
        xenstored_socket: str = "",
        xenstored: str = "ours",
        run_dir: str = "",
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.socket_path = Path(socket_path)
        self.xenstored_socket = xenstored_socket
        self.xenstored = xenstored
        self.run_dir = run_dir
        self.on_shutdown = on_shutdown
        self.started = time.monotonic()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._connection, path=os.fspath(self.socket_path), limit=MAX_LINE
        )
        self.started = time.monotonic()
        log.info("local API listening on %s", self.socket_path)

    async def close(self) -> None:
        """Stop listening, drop the connections, and remove the socket."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE: the stream cannot be resynchronised
                    writer.write(encode_error(None, ErrorInfo("BadRequest", "request too long")))
                    break
                if not line:
                    break
                reply, stop = await self.handle_line(line)
                writer.write(reply)
                await writer.drain()
                if stop and self.on_shutdown is not None:
                    self.on_shutdown()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() drops the connection; ending normally keeps asyncio's stream
            # callback (which asks the task for its exception) from logging an error.
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def handle_line(self, line: bytes) -> tuple[bytes, bool]:
        """The reply to one request line, and whether the request asked to stop the host."""
        try:
            req_id, req = decode_request(line)
        except BadRequestLine as e:
            log.warning("bad request: %s", e)
            return encode_error(e.req_id, ErrorInfo.from_exception(e)), False
        try:
            result = await self.execute(req)
        except HypervisorError as e:
            log.info("%s: %s", req.op, e)
            return encode_error(req_id, ErrorInfo.from_exception(e)), False
        except Exception as e:
            log.exception("%s failed", req.op)
            return encode_error(req_id, ErrorInfo.from_exception(e)), False
        return encode_ok(req_id, req, result), isinstance(req, Shutdown)

    async def execute(self, req: Request[Any]) -> Any:
        log.debug("request %s", req)
        if isinstance(req, _HypervisorCall):
            return await req.call(self.hypervisor)
        if isinstance(req, Status):
            return await self.status()
        if isinstance(req, Ping | Shutdown):
            return None
        raise ApiProtocolError(f"op {req.op!r} is not served here")

    async def status(self) -> HostStatus:
        domains = list(await self.hypervisor.list_domains())
        dom0 = next((d for d in domains if d.domid == 0), None) or dom0_info()
        return HostStatus(
            pid=os.getpid(),
            uptime=time.monotonic() - self.started,
            run_dir=self.run_dir,
            xenstored_socket=self.xenstored_socket,
            domains=sum(1 for d in domains if d.domid != 0),
            dom0=dom0,
            xenstored=self.xenstored,
        )


# -- the client --------------------------------------------------------------------


class RemoteHypervisor(Hypervisor):
    """The hypervisor of a running host daemon, reached through its API socket.

    Errors come back as the server raised them (`NoSuchDomain`, `DomainExists`,
    `HypervisorError`, with the server's message); trouble reaching the daemon is a
    `HostError` (`HostNotRunning` when nothing listens).
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.where = where
        self._ids = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, run_dir: str | os.PathLike[str]) -> RemoteHypervisor:
        """Connect to the daemon of the run directory ``run_dir``."""
        socket_path = Path(run_dir) / "host.sock"
        try:
            reader, writer = await asyncio.open_unix_connection(
                os.fspath(socket_path), limit=MAX_LINE
            )
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise HostNotRunning(run_dir) from None
        except OSError as e:
            raise unreachable(socket_path, e) from None
        return cls(reader, writer, str(run_dir))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> RemoteHypervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, req: Request[R]) -> R:
        """Send one request and return its decoded result, or raise its error."""
        async with self._lock:
            self._ids += 1
            req_id = self._ids
            lost = lost_during(self.where, req.op)
            try:
                self._writer.write(encode_request(req_id, req))
                await self._writer.drain()
                while True:
                    line = await self._reader.readline()
                    if not line:
                        raise lost
                    reply = decode_reply(line)
                    # An earlier call cancelled after sending leaves its reply behind.
                    if reply.id is None or reply.id >= req_id:
                        break
            except ConnectionError:
                raise lost from None
            except ValueError:
                raise ApiProtocolError(f"{req.op}: reply longer than {MAX_LINE} bytes") from None
        if reply.error is not None:
            raise reply.error.to_exception()
        if reply.id != req_id:
            raise ApiProtocolError(f"{req.op}: reply for request {reply.id}, expected {req_id}")
        return req.decode_result(reply.result)

    # -- host operations

    async def ping(self) -> None:
        await self.call(Ping())

    async def status(self) -> HostStatus:
        return await self.call(Status())

    async def shutdown_host(self) -> None:
        """Ask the daemon to stop; it answers, then destroys every domain and exits."""
        await self.call(Shutdown())

    # -- the Hypervisor interface

    async def create_domain(self, config: DomainConfig) -> int:
        return await self.call(CreateDomain(config))

    async def set_max_mem(self, domid: int, memkb: int) -> None:
        await self.call(SetMaxMem(domid, memkb))

    async def set_max_vcpus(self, domid: int, vcpus: int) -> None:
        await self.call(SetMaxVcpus(domid, vcpus))

    async def build_pv(
        self, domid: int, kernel: str, cmdline: str = "", env: dict[str, str] | None = None
    ) -> None:
        await self.call(BuildPv(domid, kernel, cmdline, env))

    async def build_hvm(self, domid: int, target_memkb: int, vcpus: int) -> None:
        await self.call(BuildHvm(domid, target_memkb, vcpus))

    async def set_memory_target(self, domid: int, memkb: int) -> None:
        await self.call(SetMemoryTarget(domid, memkb))

    async def rename(self, domid: int, name: str) -> None:
        await self.call(Rename(domid, name))

    async def set_target(self, domid: int, target: int) -> None:
        await self.call(SetTarget(domid, target))

    async def pause(self, domid: int) -> None:
        await self.call(Pause(domid))

    async def unpause(self, domid: int) -> None:
        await self.call(Unpause(domid))

    async def shutdown(self, domid: int, reason: ShutdownReason) -> None:
        await self.call(ShutdownDomain(domid, reason))

    async def destroy(self, domid: int) -> None:
        await self.call(Destroy(domid))

    async def list_domains(self) -> Sequence[DomainInfo]:
        return await self.call(ListDomains())

    async def domain_info(self, domid: int) -> DomainInfo:
        return await self.call(GetDomainInfo(domid))

    async def find(self, name: str) -> DomainInfo:
        return await self.call(Find(name))


__all__ = [
    "MAX_LINE",
    "REQUESTS",
    "ApiProtocolError",
    "ApiServer",
    "BadRequestLine",
    "BuildHvm",
    "BuildPv",
    "CreateDomain",
    "Destroy",
    "ErrorInfo",
    "Find",
    "GetDomainInfo",
    "HostError",
    "HostNotRunning",
    "HostStatus",
    "ListDomains",
    "Pause",
    "Ping",
    "RemoteError",
    "RemoteHypervisor",
    "Rename",
    "Reply",
    "Request",
    "SetMaxMem",
    "SetMaxVcpus",
    "SetMemoryTarget",
    "SetTarget",
    "Shutdown",
    "ShutdownDomain",
    "Status",
    "Unpause",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_ok",
    "encode_request",
]
