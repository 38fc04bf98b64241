"""`pipelined`: requests issued back to back, in order, failing as if run one by one."""

from __future__ import annotations

import pytest

from stubdom.wire.constants import Op
from stubdom.xenstore import Client, NoEntry
from stubdom.xenstore.pipeline import pipelined
from tests.xenstore.fakeserver import FakeServer


async def test_requests_leave_in_issue_order(client: Client, server: FakeServer) -> None:
    paths = [f"/p/{i}" for i in range(20)]
    async with client.transaction() as t:
        await pipelined(*(t.write(p, p) for p in paths), t.rm(paths[0]))
    writes = [p.payload.split(b"\0")[0].decode() for p in server.requests if p.op == Op.WRITE]
    assert writes == paths
    kinds = [p.op for p in server.requests if p.op in (Op.WRITE, Op.RM)]
    assert kinds == [Op.WRITE] * 20 + [Op.RM]
    assert not await client.exists(paths[0])
    assert await client.read(paths[-1]) == paths[-1].encode()


async def test_results_in_order(client: Client) -> None:
    await client.write("/r/a", "1")
    await client.write("/r/b", "2")
    assert await pipelined(client.read("/r/b"), client.read("/r/a")) == (b"2", b"1")
    assert await pipelined(client.read("/r/a")) == (b"1",)


async def test_the_first_failure_in_issue_order_raises(client: Client, server: FakeServer) -> None:
    with pytest.raises(NoEntry) as err:
        await pipelined(client.read("/gone/1"), client.write("/w", "x"), client.read("/gone/2"))
    assert err.value.path == "/gone/1"
    # Every request was still sent and answered (no reply is left to arrive later).
    assert await client.read("/w") == b"x"
    assert [p.op for p in server.requests if p.op in (Op.READ, Op.WRITE)][:3] == [
        Op.READ, Op.WRITE, Op.READ,
    ]
