"""`RingTransport` and `Client.connect_ring` against a fake daemon in this process.

The fake maps the same page file, reads kicks from the event-channel FIFO, answers
with `FakeServer`'s store, and (in notify mode) writes a byte to the notify FIFO after
each change.  It can read the request ring in small pieces, stall, start the indexes
just below 2**32, and offer ring reconnection: cases a real daemon rarely produces.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stubdom.wire.packet import PacketDecoder
from stubdom.xenstore import Client, ConnectionClosed, RingTransport, RingUnsupported
from stubdom.xenstore.ring import (
    CONNECTION,
    FEATURE_RECONNECTION,
    RECONNECT,
    REQ_CONS,
    REQ_PROD,
    RING_SIZE,
    RSP_CONS,
    RSP_PROD,
    SERVER,
    SERVER_FEATURES,
    Backoff,
    RingEnd,
)
from tests.support.daemons import short_tmpdir
from tests.xenstore.fakeserver import Conn, FakeServer

GUARD = 20.0
PORT = 42
START = 2**32 - 700  # the indexes overflow within the first kilobytes


class _RingWriter:
    """What `FakeServer` writes replies to: the response ring's queue."""

    def __init__(self, ring: RingEnd) -> None:
        self.ring = ring

    def write(self, data: bytes) -> None:
        self.ring.send(data)

    def close(self) -> None:
        pass


class FakeRingDaemon:
    """The server end of one ring page, woken by kicks on a FIFO."""

    def __init__(self, root: Path, *, notify: bool, chunk: int = RING_SIZE) -> None:
        self.page = root / "ring"
        self.evtchn = root / "evtchn"
        self.notify = root / "notify" if notify else None
        self.page.write_bytes(bytes(4096))
        os.mkfifo(self.evtchn)
        if self.notify is not None:
            os.mkfifo(self.notify)
        fd = os.open(self.page, os.O_RDWR)
        self.mm = mmap.mmap(fd, 4096)
        os.close(fd)
        for off in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD):
            struct.pack_into("<I", self.mm, off, START)
        self.ring = RingEnd(self.mm, SERVER)
        self.store = FakeServer()
        self.conn = Conn(_RingWriter(self.ring))  # type: ignore[arg-type]
        self.store.conns.append(self.conn)
        self.decoder = PacketDecoder()
        self.chunk = chunk
        self.stalled = False
        self.kicks: list[int] = []
        self.reconnects = 0
        self._evfd = os.open(self.evtchn, os.O_RDWR | os.O_NONBLOCK)
        self._nfd = (
            os.open(self.notify, os.O_RDWR | os.O_NONBLOCK) if self.notify is not None else None
        )
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._evfd, self._on_kick)
        self._busy = False

    def offer_reconnection(self) -> None:
        struct.pack_into("<I", self.mm, SERVER_FEATURES, FEATURE_RECONNECTION)

    def _on_kick(self) -> None:
        try:
            self.kicks += os.read(self._evfd, 4096)
        except BlockingIOError:
            return
        if not self._busy:
            self._busy = True
            self._loop.create_task(self.serve())

    async def serve(self) -> None:
        """Work until neither ring moves (like a daemon after an event)."""
        try:
            while not self.stalled and await self._once():
                await asyncio.sleep(0)
        finally:
            self._busy = False

    async def _once(self) -> bool:
        if struct.unpack_from("<I", self.mm, CONNECTION)[0] == RECONNECT:
            self.reconnects += 1
            self.ring.reset()
            self.decoder = PacketDecoder()
            self._notify()
            return False
        data = self.ring.receive(self.chunk)
        self.decoder.feed(data)
        for pkt in self.decoder:
            await self.store.on_packet(self.conn, pkt)
        sent = self.ring.transmit()
        if data or sent:
            self._notify()
        return bool(data or sent)

    def _notify(self) -> None:
        if self._nfd is not None:
            os.write(self._nfd, b"\x01")

    def indexes(self) -> tuple[int, int, int, int]:
        return struct.unpack_from("<4I", self.mm, REQ_CONS)  # type: ignore[return-value]

    def close(self) -> None:
        self._loop.remove_reader(self._evfd)
        os.close(self._evfd)
        if self._nfd is not None:
            os.close(self._nfd)
        self.ring.release()
        self.mm.close()


async def make_daemon(**kw: Any) -> FakeRingDaemon:
    return FakeRingDaemon(short_tmpdir("ring-"), **kw)


@pytest.fixture(params=["notify", "poll"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeRingDaemon]:
    d = await make_daemon(notify=request.param == "notify", chunk=37)
    yield d
    d.close()


async def connect(d: FakeRingDaemon, **kw: Any) -> Client:
    return await Client.connect_ring(d.page, d.evtchn, PORT, d.notify, timeout=GUARD, **kw)


async def test_requests_across_the_wrap_and_2_32(fake: FakeRingDaemon) -> None:
    c = await connect(fake)
    try:
        big = bytes(97 + i % 26 for i in range(4000))  # four ring-fulls each way
        for i in range(5):
            await c.write(f"/d/v{i}", big[i:])
            assert await c.read(f"/d/v{i}") == big[i:]
        assert sorted(await c.directory("/d")) == [f"v{i}" for i in range(5)]
        req_cons, req_prod, rsp_cons, rsp_prod = fake.indexes()
        assert req_prod < START and rsp_prod < START  # both went past 2**32
        assert req_cons == req_prod and rsp_cons == rsp_prod
        assert set(fake.kicks) == {PORT}
    finally:
        await c.close()


async def test_pipelined_requests_and_watch_events(fake: FakeRingDaemon) -> None:
    c = await connect(fake)
    try:
        async with c.watch("/w") as w:
            assert (await w.get(GUARD)).path == "/w"
            n = 100
            await asyncio.gather(*(c.write(f"/p/{i}", f"v{i}" * 30) for i in range(n)))
            got = await asyncio.gather(*(c.read(f"/p/{i}") for i in range(n)))
            assert got == [f"v{i}".encode() * 30 for i in range(n)]
            fake.store.fire("/w/x")
            fake.ring.transmit()
            fake._notify()
            assert (await w.get(GUARD)).path == "/w/x"
    finally:
        await c.close()


async def test_drain_waits_while_the_ring_is_full() -> None:
    d = await make_daemon(notify=True)
    d.stalled = True
    t = await RingTransport.open(d.page, d.evtchn, PORT, d.notify)
    try:
        t.write(b"x" * (3 * RING_SIZE))
        drain = asyncio.ensure_future(t.drain())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not drain.done()  # one ring-full is out, the rest waits for req_cons
        _, req_prod, _, _ = d.indexes()
        assert (req_prod - START) % 2**32 == RING_SIZE
        got = bytearray()
        while len(got) < 3 * RING_SIZE:
            got += d.ring.receive()
            d._notify()
            await asyncio.sleep(0)
        await asyncio.wait_for(drain, GUARD)
        assert got == b"x" * (3 * RING_SIZE)
    finally:
        t.close()
        await t.wait_closed()
        d.close()


async def test_close_ends_reads_and_refuses_writes(fake: FakeRingDaemon) -> None:
    t = await RingTransport.open(fake.page, fake.evtchn, PORT, fake.notify)
    reader = asyncio.ensure_future(t.read())
    await asyncio.sleep(0)
    t.close()
    assert await asyncio.wait_for(reader, GUARD) == b""
    with pytest.raises(ConnectionClosed):
        t.write(b"more")
    await t.wait_closed()


async def test_corrupt_indexes_end_the_connection(fake: FakeRingDaemon) -> None:
    c = await connect(fake)
    fake.stalled = True
    pending = asyncio.ensure_future(c.read("/x"))
    await asyncio.sleep(0)
    struct.pack_into("<I", fake.mm, RSP_PROD, (START + 5000) % 2**32)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(pending, GUARD)
    await c.close()


async def test_reset_handshake_and_reconnection() -> None:
    d = await make_daemon(notify=False)
    try:
        with pytest.raises(RingUnsupported):
            await RingTransport.open(d.page, d.evtchn, PORT, reset=True)
        d.offer_reconnection()
        c = await connect(d, reset=True, reconnect=GUARD)
        assert d.reconnects == 1 and d.indexes()[1] < 100  # reset to 0, then used
        await c.write("/a", b"1")
        old = c._transport
        assert isinstance(old, RingTransport)
        old._fail(OSError("simulated"))
        assert await c.read("/a") == b"1"  # re-opened, reset again (offered), re-sent
        assert d.reconnects == 2
        await c.close()
    finally:
        d.close()


def test_backoff_spins_then_sleeps_within_bounds() -> None:
    b = Backoff(spins=2, first=1e-4, busy_max=1e-3, idle_max=2e-2, patience=1.0)
    b.progressed(0.0)
    assert [b.next(True, 0.0), b.next(True, 0.0)] == [0.0, 0.0]
    busy = [b.next(True, 0.1) for _ in range(10)]
    assert busy[0] == 1e-4 and max(busy) == 1e-3 and busy == sorted(busy)
    assert b.next(True, 5.0) > 1e-3  # no progress for long: polled like an idle ring
    idle = [b.next(False, 5.0) for _ in range(20)]
    assert max(idle) == 2e-2
    b.progressed(6.0)
    assert b.next(False, 6.0) == 0.0
