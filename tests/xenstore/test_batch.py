"""`Batch`: requests in one write, replies together; `Reply.seq` and `changed_since`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, encode
from stubdom.xenstore import Client, ClientProtocol, NoEntry, WatchGroup, XenStoreTimeout
from stubdom.xenstore.pipeline import Batch
from tests.xenstore.conftest import late_replies_are_dropped
from tests.xenstore.fakeserver import FakeServer

GUARD = 10.0  # failure guard only


async def test_results_in_order_and_absent_nodes(client: Client) -> None:
    await client.write("/b/a", "1")
    batch = Batch(client)
    a = batch.read_text("/b/a")
    gone = batch.read_text("/b/gone")
    w = batch.write("/b/c", "3")
    rm = batch.rm("/b/a")
    rm_gone = batch.rm("/b/a", missing_ok=True)
    raw = batch.read("/b/c")
    await batch.send()
    assert (a.value, gone.value, w.value, rm.value, rm_gone.value, raw.value) == (
        "1", None, None, True, False, b"3",
    )
    assert a.seq < gone.seq < w.seq < rm.seq < rm_gone.seq < raw.seq


async def test_the_first_failure_raises_after_every_reply(
    client: Client, server: FakeServer
) -> None:
    batch = Batch(client)
    first = batch.read("/gone/1")
    written = batch.write("/w", "x")
    batch.rm("/gone/2")
    with pytest.raises(NoEntry) as err:
        await batch.send()
    assert err.value.path == "/gone/1"
    with pytest.raises(NoEntry):
        _ = first.value
    assert written.value is None
    assert await client.read("/w") == b"x"
    ops = [p.op for p in server.requests if p.op in (Op.READ, Op.WRITE, Op.RM)]
    assert ops[:3] == [Op.READ, Op.WRITE, Op.RM]


async def test_a_result_before_the_batch_is_sent_is_an_error(client: Client) -> None:
    result = Batch(client).read("/x")
    with pytest.raises(RuntimeError, match="not sent"):
        _ = result.value


async def test_a_batch_is_one_write_on_a_socket(client: Client) -> None:
    writes: list[bytes] = []
    transport: Any = client._transport._transport  # type: ignore[attr-defined]
    real = transport.write

    def spy(data: bytes) -> None:
        writes.append(bytes(data))
        real(data)

    transport.write = spy
    batch = Batch(client)
    for i in range(3):
        batch.write(f"/one/{i}", str(i))
    await batch.send()
    assert len(writes) == 1 and writes[0].count(b"/one/") == 3


def test_seq_numbers_every_packet_and_goes_on_across_connections() -> None:
    proto = ClientProtocol(received=41)
    req, _ = proto.send(Op.READ, b"/a\0")
    proto.receive_data(encode(Packet(Op.WATCH_EVENT, b"/w\0tok\0")))
    proto.receive_data(encode(Packet(Op.READ, b"v", req.req_id)))
    event, reply = list(proto.events())
    assert (event.seq, reply.seq) == (42, 43)
    assert proto.received == 43


async def test_changed_since_tells_events_after_a_reply(
    client: Client, server: FakeServer
) -> None:
    await client.write("/c/x", "1")
    async with WatchGroup(client, ["/c/x"]) as group:
        batch = Batch(client)
        read = batch.read_text("/c/x")
        await batch.send()  # after the WATCH's initial event
        assert not group.changed_since("/c/x", read.seq)
        server.fire("/c/x")
        group.take()
        await group.changed()
        assert group.changed_since("/c/x", read.seq)
    assert group.changed_since("/c/x", 10**9)  # watches gone: nothing is known


async def test_changed_after_waits_only_for_events_after_the_reads(
    client: Client, server: FakeServer
) -> None:
    """An event that came before a read's reply is what the read saw: no reason to
    look again.  One after it is."""
    async with WatchGroup(client, ["/d/x", "/d/y"]) as group:
        server.fire("/d/x")  # before the read: the read shows its change
        batch = Batch(client)
        x = batch.read_text("/d/x")
        y = batch.read_text("/d/y")
        await batch.send()
        waiter = asyncio.create_task(group.changed_after({"/d/x": x.seq, "/d/y": y.seq}))
        for _ in range(20):  # every turn the waiter could take
            await asyncio.sleep(0)
        assert not waiter.done()
        server.fire("/d/y")
        await waiter


async def test_a_batch_times_out_as_a_whole_and_the_next_request_is_answered(
    server: FakeServer, sock_dir: Path
) -> None:
    server.silent_paths.add("/quiet")
    server.store["/a"] = b"1"
    async with await Client.connect(str(sock_dir / "socket"), timeout=0.05) as c:
        batch = Batch(c)
        first = batch.read("/a")
        batch.read("/quiet")
        with pytest.raises(XenStoreTimeout, match=r"READ /a: no reply within 0\.05 s"):
            await asyncio.wait_for(batch.send(), GUARD)
        with pytest.raises(RuntimeError, match="not sent"):
            _ = first.value  # the batch failed: no result is handed out
        assert await c.read("/a", timeout=GUARD) == b"1"


async def test_a_cancelled_batch_abandons_every_request(
    client: Client, server: FakeServer
) -> None:
    """Replies to a batch given up on are dropped, even by a server that answers with
    req_id 0 (so matching falls back to the order of the requests)."""
    server.store.update({"/x/1": b"1", "/x/2": b"2"})
    batch = Batch(client)
    batch.read("/x/1")
    batch.read("/x/2")
    await late_replies_are_dropped(client, server, batch.send(), 2)


async def test_waiters_on_a_group_all_wake_and_a_cancelled_one_leaves_nothing(
    client: Client, server: FakeServer
) -> None:
    async with WatchGroup(client, ["/e/x"]) as group:
        group.take()
        waiters = [asyncio.create_task(group.changed()) for _ in range(3)]
        for _ in range(20):  # every turn the waiters could take
            await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        waiters[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiters[0]
        assert len(group._wakers) == 2
        server.fire("/e/x")
        await asyncio.wait_for(asyncio.gather(*waiters[1:]), GUARD)
        assert group._wakers == []
        await asyncio.wait_for(group.changed(), GUARD)  # at once: not taken since


async def test_an_empty_batch_sends_nothing_and_returns_at_once(client: Client) -> None:
    """An answer with no writes (qemu-trad's refused pci-rem) is an empty batch."""
    await asyncio.wait_for(Batch(client).send(), 5)
    assert await asyncio.wait_for(client.roundtrips([]), 5) == []
