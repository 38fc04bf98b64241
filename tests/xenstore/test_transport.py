"""Transports: path lookup, and the xenbus-device transport over socketpairs and ptys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import socket
import struct
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, PacketDecoder, encode
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    FdTransport,
    StreamTransport,
    WatchEvent,
    daemon_socket_path,
    domain_dev_path,
    open_transport,
)
from stubdom.xenstore.transport import open_path
from tests.xenstore.fakeserver import FakeServer

GUARD = 10.0


def test_daemon_socket_path_lookup() -> None:
    assert daemon_socket_path({"XENSTORED_PATH": "/x/s", "XENSTORED_RUNDIR": "/r"}) == "/x/s"
    assert daemon_socket_path({"XENSTORED_RUNDIR": "/r"}) == "/r/socket"
    assert daemon_socket_path({}) == "/var/run/xenstored/socket"
    assert daemon_socket_path({"XENSTORED_PATH": ""}) == "/var/run/xenstored/socket"


def test_domain_dev_path_lookup() -> None:
    assert domain_dev_path({"XENSTORED_PATH": "/dev/x"}) == "/dev/x"
    expected = "/dev/xen/xenbus" if os.path.exists("/dev/xen/xenbus") else "/proc/xen/xenbus"
    assert domain_dev_path({"XENSTORED_RUNDIR": "/r"}) == expected


class FdPeer:
    """Lets FakeServer.serve talk over an FdTransport (duck-typed reader and writer)."""

    def __init__(self, t: FdTransport) -> None:
        self.t = t

    async def read(self, n: int) -> bytes:
        try:
            return await self.t.read()
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self.t.write(data)

    def close(self) -> None:
        self.t.close()


@pytest.fixture
def raw_pty() -> Iterator[tuple[int, str]]:
    """A pty in raw mode: (master fd, slave path); the slave plays the xenbus device."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    os.close(slave)
    with contextlib.suppress(OSError):
        os.close(master)


@pytest.fixture
async def pty_server(
    raw_pty: tuple[int, str],
) -> AsyncIterator[tuple[FakeServer, FdTransport, str]]:
    master, path = raw_pty
    fake = FakeServer()
    peer_t = FdTransport(os.dup(master), "pty-master")
    peer = FdPeer(peer_t)
    task = asyncio.create_task(fake.serve(peer, peer))  # type: ignore[arg-type]
    yield fake, peer_t, path
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    peer_t.close()


async def test_socketpair_fd_transport() -> None:
    a, b = socket.socketpair()
    fake = FakeServer()
    reader, writer = await asyncio.open_connection(sock=b)
    fake.serve_socket(reader, writer)
    async with Client(FdTransport(a.detach(), "socketpair")) as c:
        await c.write("/a", b"1")
        assert await c.read("/a") == b"1"
        async with c.watch("/a") as w:
            assert await w.get(GUARD) == WatchEvent("/a", w.token)
            await c.write("/a/b", b"2")
            assert (await w.get(GUARD)).path == "/a/b"
        big = [c.write(f"/many/{i}", b"x" * 3000) for i in range(50)]
        await asyncio.wait_for(asyncio.gather(*big), GUARD)  # more than a socket buffer
        assert len(await c.list("/many")) == 50
    await fake.close()


async def test_fd_transport_writes_one_message_per_syscall() -> None:
    """The Linux xenbus driver drops anything after the first message of a write()."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    loop = asyncio.get_running_loop()
    async with Client(FdTransport(a.detach(), "seqpacket")) as c:
        tasks = [asyncio.create_task(c.read(f"/k{i}")) for i in range(8)]
        records = []
        while len(records) < 8:
            records.append(await asyncio.wait_for(loop.sock_recv(b, 65536), GUARD))
        for rec in records:
            dec = PacketDecoder()
            dec.feed(rec)
            pkts = list(dec)
            assert len(pkts) == 1 and dec.pending_bytes == 0, rec
            pkt = pkts[0]
            assert pkt.op == Op.READ
            reply = Packet(Op.READ, pkt.payload[:-1] + b"!", pkt.req_id)
            await loop.sock_sendall(b, encode(reply))
        results = await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
        assert results == [f"/k{i}!".encode() for i in range(8)]
    b.close()


async def test_char_device_path_opens_fd_transport(
    pty_server: tuple[FakeServer, FdTransport, str],
) -> None:
    """libxenstore get_handle(): a path that is not a socket is opened as the device."""
    fake, _, path = pty_server
    async with await Client.connect(path) as c:
        assert c.description == f"device:{path}"
        await c.write("/dev/x", b"via-pty")
        assert await c.read("/dev/x") == b"via-pty"
        async with c.transaction() as t:
            await t.write("/dev/y", b"1")
        assert fake.store["/dev/y"] == b"1"


async def test_xenstored_path_may_name_a_device(
    pty_server: tuple[FakeServer, FdTransport, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, path = pty_server
    monkeypatch.setenv("XENSTORED_PATH", path)
    t = await open_transport()
    assert isinstance(t, FdTransport)
    t.close()


async def test_close_over_device_fails_pending(
    pty_server: tuple[FakeServer, FdTransport, str],
) -> None:
    fake, peer_t, path = pty_server
    c = await Client.connect(path)
    await c.write("/a", b"1")
    fake.silent_paths.add("/quiet")
    pending = asyncio.create_task(c.read("/quiet"))
    await asyncio.wait_for(fake.wait_requests(2), GUARD)
    peer_t.close()
    await c.close()  # closes the slave side too
    with pytest.raises(ConnectionClosed):
        await pending


async def test_pty_eof_is_connection_closed(raw_pty: tuple[int, str]) -> None:
    master, path = raw_pty
    async with await Client.connect(path) as c:
        pending = asyncio.create_task(c.read("/x"))
        await asyncio.sleep(0)
        os.close(master)  # hang up: reads on the slave give EIO
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pending, GUARD)


async def test_unix_socket_is_stream_transport(server: FakeServer, sock_dir: Path) -> None:
    t = await open_path(str(sock_dir / "socket"))
    assert isinstance(t, StreamTransport)
    t.close()
    await t.wait_closed()


async def test_nothing_to_connect_to(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", str(sock_dir / "missing"))
    with pytest.raises(OSError, match="cannot reach xenstore"):
        await open_transport()
    with pytest.raises(FileNotFoundError):
        await Client.connect(str(sock_dir / "missing"))


async def test_replies_larger_than_a_read_arrive_whole(sock_dir: Path) -> None:
    """The stream transport reads into one buffer it keeps: a reply spanning several
    reads, and the bytes a reader was handed before the buffer was read into again,
    must come out intact."""
    big = bytes(range(256)) * 1000  # 256000 bytes: several 64 KiB reads

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readexactly(16)
                op, req_id, tx_id, size = struct.unpack("=4I", head)
                value = await reader.readexactly(size)
                payload = big if value == b"/big\0" else value
                writer.write(struct.pack("=4I", op, req_id, tx_id, len(payload)) + payload)
        writer.close()

    path = str(sock_dir / "big")
    server = await asyncio.start_unix_server(serve, path=path)
    try:
        async with await Client.connect(path) as c:
            got = await asyncio.wait_for(
                asyncio.gather(c.read("/big"), c.read("/small"), c.read("/big")), GUARD
            )
        assert got == [big, b"/small\0", big]
    finally:
        server.close()
        await server.wait_closed()
