"""The stubdom.xenstore client against the real cxenstored and oxenstored (and ours).

Each test runs against a fresh daemon of each kind over its dom0 Unix socket.  The
``ours`` variant is skipped while ``stubdom.xenstored`` cannot be imported.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator

import pytest

from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import (
    Client,
    NoEntry,
    TooBig,
    Transaction,
    TransactionConflict,
    WatchEvent,
    XenStoreError,
)
from tests.support.daemons import Daemon

GUARD = 10.0  # failure guard only

_HAVE_OURS = importlib.util.find_spec("stubdom.xenstored") is not None

KINDS = [
    pytest.param("cx", marks=pytest.mark.peer),
    pytest.param("ox", marks=pytest.mark.peer),
    pytest.param(
        "ours",
        marks=pytest.mark.skipif(
            not _HAVE_OURS, reason="stubdom.xenstored is not importable yet"
        ),
    ),
]


@pytest.fixture(params=KINDS)
def daemon(request: pytest.FixtureRequest) -> Daemon:
    d: Daemon = request.getfixturevalue(request.param)
    return d


@pytest.fixture
async def xs(daemon: Daemon) -> AsyncIterator[Client]:
    c = await Client.connect(daemon.socket, timeout=GUARD)
    yield c
    await c.close()


async def test_node_requests(xs: Client) -> None:
    await xs.write("/cl/a", b"v\0with-nul")
    await xs.write("/cl/s", "text")
    assert await xs.read("/cl/a") == b"v\0with-nul"
    assert await xs.read("/cl/s") == b"text"
    await xs.mkdir("/cl/d")
    assert await xs.read("/cl/d") == b""
    assert sorted(await xs.directory("/cl")) == ["a", "d", "s"]
    assert sorted(await xs.list("/cl")) == ["a", "d", "s"]
    await xs.rm("/cl/d")
    assert not await xs.exists("/cl/d")
    with pytest.raises(NoEntry) as info:
        await xs.read("/cl/missing")
    assert info.value.name == "ENOENT"
    assert "READ /cl/missing" in str(info.value)


async def test_permissions(xs: Client) -> None:
    await xs.write("/perm", b"")
    assert (await xs.get_perms("/perm"))[0] == Perm(Access.NONE, 0)
    await xs.set_perms("/perm", [Perm(Access.NONE, 0), "r5", Perm(Access.BOTH, 7)])
    assert await xs.get_perms("/perm") == [
        Perm(Access.NONE, 0),
        Perm(Access.READ, 5),
        Perm(Access.BOTH, 7),
    ]


async def test_watch_initial_and_change_event(xs: Client) -> None:
    async with xs.watch("/wt") as w:
        assert await w.get(GUARD) == WatchEvent("/wt", w.token)
        await xs.write("/wt/child", b"1")
        assert await w.get(GUARD) == WatchEvent("/wt/child", w.token)
    async with xs.watch("/other", token="tok2") as w2, xs.watch("/wt") as w3:
        assert (await w2.get(GUARD)).token == "tok2"
        assert (await w3.get(GUARD)).path == "/wt"
        await xs.write("/other/x", b"")
        assert await w2.get(GUARD) == WatchEvent("/other/x", "tok2")
        await xs.write("/wt/y", b"")  # w3 only: routing by token
        assert await w3.get(GUARD) == WatchEvent("/wt/y", w3.token)
        assert w2.pending == 0


async def test_concurrent_requests(xs: Client) -> None:
    await asyncio.gather(*(xs.write(f"/cc/{i}", str(i)) for i in range(40)))
    values = await asyncio.gather(*(xs.read(f"/cc/{i}") for i in range(40)))
    assert values == [str(i).encode() for i in range(40)]


async def test_transaction_commit_and_abort(xs: Client) -> None:
    async with xs.transaction() as t:
        await t.write("/tx/a", b"1")
        assert await t.read("/tx/a") == b"1"
    assert await xs.read("/tx/a") == b"1"
    with pytest.raises(RuntimeError):
        async with xs.transaction() as t:
            await t.write("/tx/a", b"2")
            raise RuntimeError("abort")
    assert await xs.read("/tx/a") == b"1"


async def test_transaction_conflict(xs: Client) -> None:
    await xs.write("/tx/x", b"0")
    with pytest.raises(TransactionConflict) as info:
        async with xs.transaction() as t:
            await t.read("/tx/x")
            await xs.write("/tx/x", b"outside")  # case A: both daemons say EAGAIN
            await t.write("/tx/y", b"1")
    assert info.value.name == "EAGAIN"
    assert not await xs.exists("/tx/y")


async def test_retry_transaction(xs: Client) -> None:
    await xs.write("/rt/n", b"0")
    attempts = 0

    async def increment(t: Transaction) -> int:
        nonlocal attempts
        attempts += 1
        n = int(await t.read("/rt/n"))
        if attempts == 1:
            await xs.write("/rt/n", b"10")  # someone else got in first
        await t.write("/rt/n", str(n + 1))
        return n + 1

    assert await xs.retry_transaction(increment, attempts=3) == 11
    assert attempts == 2
    assert await xs.read("/rt/n") == b"11"


async def test_domain_requests(xs: Client) -> None:
    assert await xs.get_domain_path(3) == "/local/domain/3"
    assert await xs.is_domain_introduced(0)
    assert not await xs.is_domain_introduced(5)
    async with xs.watch("@introduceDomain") as wi, xs.watch("@releaseDomain") as wr:
        assert (await wi.get(GUARD)).path == "@introduceDomain"
        assert (await wr.get(GUARD)).path == "@releaseDomain"
        await xs.introduce(5, 0, 6)  # cx needs port > 0
        assert await xs.is_domain_introduced(5)
        assert (await wi.get(GUARD)).path == "@introduceDomain"
        await xs.release(5)
        assert not await xs.is_domain_introduced(5)
        assert (await wr.get(GUARD)).path == "@releaseDomain"


async def test_control_and_reset_watches(xs: Client, daemon: Daemon) -> None:
    assert await xs.control("print", "hello from the client test") == b"OK"
    if daemon.kind == "ox":
        assert await xs.control("no-such-command") == b"OK"  # ox answers OK to anything
    else:
        with pytest.raises(XenStoreError) as info:
            await xs.control("no-such-command")
        assert info.value.name == "EINVAL"
    w = await xs.watch("/rw")
    await w.get(GUARD)
    await xs.reset_watches()
    assert not w.active
    await xs.write("/rw/x", b"")  # would fire if the watch were still registered
    async with xs.watch("/rw") as again:  # same path, new token: still works
        assert (await again.get(GUARD)).path == "/rw"


async def test_list_of_600_children(xs: Client, daemon: Daemon) -> None:
    names = [f"c{i:010d}" for i in range(600)]  # 11 characters each: > 4096 bytes
    await asyncio.gather(*(xs.write(f"/big/{n}", b"") for n in names))
    if daemon.kind == "cx":
        with pytest.raises(TooBig):
            await xs.directory("/big")  # so list() must page with DIRECTORY_PART
    assert sorted(await xs.list("/big")) == names
    async with xs.transaction() as t:
        assert sorted(await t.list("/big")) == names
