"""The asyncio shell: domain sockets, flow control, and what a client that never reads costs."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stubdom.wire import Op, Packet, PacketDecoder, encode, join_args
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.quota import Quotas
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = PacketDecoder()
        self.events: list[Packet] = []

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(*await asyncio.open_unix_connection(str(path)))

    def send(self, op: int, *args: str | bytes, raw: bytes | None = None) -> None:
        self.writer.write(encode(Packet(op, raw if raw is not None else join_args(*args))))

    async def reply(self) -> Packet:
        while True:
            for p in self.decoder:
                if p.op == Op.WATCH_EVENT:
                    self.events.append(p)
                else:
                    return p
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed")
            self.decoder.feed(data)

    async def rpc(self, op: int, *args: str | bytes, raw: bytes | None = None) -> Packet:
        self.send(op, *args, raw=raw)
        return await self.reply()


@pytest.fixture
async def server() -> AsyncIterator[XenStoreServer]:
    srv = XenStoreServer(short_tmpdir() / "socket", XenStored(Quotas(memory=200_000)))
    await srv.start()
    yield srv
    await srv.close()


async def test_domain_socket_follows_introduce_and_release(server: XenStoreServer) -> None:
    dom0 = await Raw.open(server.socket_path)
    assert not server.domain_socket(5).exists()
    assert (await dom0.rpc(Op.INTRODUCE, "5", "0", "6")).payload == b"OK\0"
    guest = await Raw.open(server.domain_socket(5))  # usable as soon as the reply came
    r = await guest.rpc(Op.GET_DOMAIN_PATH, "5")
    assert r.payload == b"/local/domain/5\0"
    assert (await guest.rpc(Op.READ, "/tool/xenstored")).payload == b"EACCES\0"
    assert (await dom0.rpc(Op.RELEASE, "5")).payload == b"OK\0"
    assert not server.domain_socket(5).exists()
    assert await guest.reader.read() == b""  # the released domain's connection is closed
    with pytest.raises(OSError):
        await Raw.open(server.domain_socket(5))


async def test_overlong_header_closes_the_connection(server: XenStoreServer) -> None:
    c = await Raw.open(server.socket_path)
    c.writer.write(encode(Packet(Op.READ, b"/tool\0")) + struct.pack("=4I", 2, 0, 0, 5000))
    assert (await c.reply()).op == Op.READ  # what came before is still answered
    assert await c.reader.read() == b""
    assert (await (await Raw.open(server.socket_path)).rpc(Op.READ, "/tool")).op == Op.READ


async def test_guest_that_never_reads_costs_bounded_memory(server: XenStoreServer) -> None:
    dom0 = await Raw.open(server.socket_path)
    for req in (
        ("INTRODUCE", "5", "0", "6"),
        ("MKDIR", "/local/domain/5"),
        ("SET_PERMS", "/local/domain/5", "n5"),
    ):
        assert (await dom0.rpc(Op[req[0]], *req[1:])).op != Op.ERROR
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(server.domain_socket(5)))
    token = b"t" * 2000
    lazy.sendall(encode(Packet(Op.WATCH, b"/local/domain/5\0" + token + b"\0")))
    await dom0.rpc(Op.GET_DOMAIN_PATH, "0")  # the watch is registered once this returns
    long_name = "/local/domain/5/" + "x" * 1500
    for i in range(600):  # ~2 MB of events the guest never reads
        assert (
            await dom0.rpc(Op.WRITE, raw=long_name.encode() + b"\0" + str(i).encode())
        ).op == Op.WRITE
    backlog = sum(c.backlog() for conn, c in server.clients.items() if conn.domid == 5)
    assert 0 < backlog <= 200_000 + 4096
    lazy.close()


async def test_guest_flooding_requests_is_paused_not_buffered(server: XenStoreServer) -> None:
    dom0 = await Raw.open(server.socket_path)
    await dom0.rpc(Op.INTRODUCE, "5", "0", "6")
    await dom0.rpc(Op.WRITE, raw=b"/big\0" + b"v" * 4000)
    await dom0.rpc(Op.SET_PERMS, "/big", "r0")
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood.connect(str(server.domain_socket(5)))
    flood.setblocking(False)
    request = encode(Packet(Op.READ, b"/big\0"))
    sent = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline:  # keep sending until the server stops reading
        try:
            sent += flood.send(request * 64)
        except BlockingIOError:
            await asyncio.sleep(0.05)
            try:
                sent += flood.send(request)
            except BlockingIOError:
                break
        await asyncio.sleep(0)
    backlog = sum(c.backlog() for conn, c in server.clients.items() if conn.domid == 5)
    assert backlog < 4 * 65536  # paused at the high-water mark, not growing with the flood
    # dom0 is still served while the guest is stuck.
    assert (await dom0.rpc(Op.READ, "/big")).payload == b"v" * 4000
    flood.close()
