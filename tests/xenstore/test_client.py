"""The asyncio client against the in-process fake server."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from stubdom.wire.constants import Op
from stubdom.wire.paths import InvalidPath
from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    NoEntry,
    TooBig,
    Transaction,
    TransactionConflict,
    WatchEvent,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import Batch
from tests.support.daemons import Daemon
from tests.xenstore.conftest import late_replies_are_dropped
from tests.xenstore.fakeserver import FakeServer

GUARD = 10.0  # failure guard only: nothing here waits for time to pass


def sent(server: FakeServer, op: Op) -> list[bytes]:
    return [p.payload for p in server.requests if p.op == op]


async def test_basic_requests(client: Client, server: FakeServer) -> None:
    await client.write("/a/b", b"v\0x")
    await client.write("/a/s", "str")
    assert await client.read("/a/b") == b"v\0x"
    assert await client.read("/a/s") == b"str"
    await client.mkdir("/a/d")
    assert sorted(await client.directory("/a")) == ["b", "d", "s"]
    assert sorted(await client.list("/a")) == ["b", "d", "s"]
    assert await client.exists("/a/d")
    await client.rm("/a/d")
    assert not await client.exists("/a/d")
    assert await client.get_perms("/a") == [Perm(Access.NONE, 0)]
    await client.set_perms("/a", [Perm(Access.NONE, 0), "r5"])
    assert sent(server, Op.SET_PERMS)[-1] == b"/a\0n0\0r5\0"
    part = await client.directory_part("/a", 0)
    assert part.data == b"b\0s\0\0"
    assert await client.get_domain_path(3) == "/local/domain/3"
    assert await client.is_domain_introduced(0) is True
    assert await client.is_domain_introduced(9) is False
    await client.introduce(5, 0, 6)
    assert sent(server, Op.INTRODUCE) == [b"5\0000\0006\0"]
    await client.release(5)
    await client.resume(5)
    await client.set_target(6, 5)
    assert sent(server, Op.SET_TARGET) == [b"6\0005\0"]
    assert await client.control("print", "x") == b"echo:print\0x"


async def test_never_sends_empty_payload(client: Client, server: FakeServer) -> None:
    await client.reset_watches()
    tx = await client.transaction_start()
    await client.transaction_end(tx, commit=False)
    await client.control()
    assert sent(server, Op.RESET_WATCHES) == [b"\0"]
    assert sent(server, Op.TRANSACTION_START) == [b"\0"]
    assert sent(server, Op.TRANSACTION_END) == [b"F\0"]
    assert sent(server, Op.CONTROL) == [b"\0"]
    assert all(p.payload for p in server.requests)


async def test_error_reply_raises_named_subclass(client: Client) -> None:
    with pytest.raises(NoEntry) as info:
        await client.read("/missing/node")
    err = info.value
    assert isinstance(err, XenStoreError)
    assert err.name == "ENOENT"
    assert (err.op, err.path) == ("READ", "/missing/node")
    assert "READ /missing/node" in str(err)


async def test_paths_checked_locally(client: Client, server: FakeServer) -> None:
    for bad in ("", "/a/", "/a b", "//a"):
        with pytest.raises(InvalidPath):
            await client.read(bad)
    with pytest.raises(InvalidPath):
        client.watch("/a.b")
    assert server.requests == []


async def test_paths_checked_once_stay_checked_and_bad_ones_stay_bad(
    client: Client, server: FakeServer
) -> None:
    """The client remembers the paths that passed its check, never those that failed,
    and forgets them all past a bound."""
    await client.write("/ok", "1")
    for _ in range(2):  # the second time from what the client remembers
        assert await client.read("/ok") == b"1"
        with pytest.raises(InvalidPath):
            await client.read("/a b")
        with pytest.raises(InvalidPath):
            Batch(client).read("//a")
    assert "/a b" not in client._valid_paths and "/ok" in client._valid_paths
    for i in range(5000):
        client.watch(f"/many/{i}")
    assert 0 < len(client._valid_paths) <= 4096


async def test_oversized_request_refused_locally(client: Client, server: FakeServer) -> None:
    with pytest.raises(TooBig) as info:
        await client.write("/a", b"x" * 5000)
    assert "exceeds 4096" in str(info.value)
    assert server.requests == []


# -- concurrency and reply matching ------------------------------------------------


async def _concurrent_reads(client: Client, server: FakeServer, order: list[int]) -> None:
    for i in range(5):
        server.store[f"/k{i}"] = f"v{i}".encode()
    server.hold = True
    tasks = [asyncio.create_task(client.read(f"/k{i}")) for i in range(5)]
    await asyncio.wait_for(server.wait_requests(5), GUARD)
    server.hold = False
    server.release(order)
    results = await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert results == [f"v{i}".encode() for i in range(5)]


async def test_replies_out_of_order(client: Client, server: FakeServer) -> None:
    await _concurrent_reads(client, server, [4, 2, 0, 3, 1])
    assert len({p.req_id for p in server.requests}) == 5


async def test_server_echoing_req_id_zero_in_order(client: Client, server: FakeServer) -> None:
    server.echo_zero = True
    await _concurrent_reads(client, server, [0, 1, 2, 3, 4])
    # Watches and errors work too when every reply carries req_id 0.
    async with client.watch("/k1") as w:
        assert await w.get(GUARD) == WatchEvent("/k1", w.token)
    with pytest.raises(NoEntry):
        await client.read("/nothing")


async def test_timeout_then_late_reply_is_dropped(client: Client, server: FakeServer) -> None:
    """A timed-out request's late reply must not answer the next request."""
    server.store["/slow"] = b"late"
    server.store["/fast"] = b"fresh"
    server.echo_zero = True
    server.hold = True
    with pytest.raises(XenStoreTimeout) as info:
        await client.read("/slow", timeout=0.05)  # the server holds it: it must expire
    assert "READ /slow" in str(info.value)
    task = asyncio.create_task(client.read("/fast"))
    await asyncio.wait_for(server.wait_requests(2), GUARD)
    server.hold = False
    server.release()
    assert await asyncio.wait_for(task, GUARD) == b"fresh"


async def test_client_default_timeout(server: FakeServer, sock_dir: Path) -> None:
    server.silent_paths.add("/quiet")
    async with await Client.connect(str(sock_dir / "socket"), timeout=0.05) as c:
        with pytest.raises(XenStoreTimeout):
            await c.read("/quiet")
        with pytest.raises(TimeoutError):  # XenStoreTimeout is a TimeoutError
            await c.mkdir("/quiet")
        server.store["/loud"] = b"1"
        assert await c.read("/loud", timeout=None) == b"1"


async def test_each_request_gets_the_whole_timeout_from_its_own_send(
    server: FakeServer, sock_dir: Path
) -> None:
    """The calls of the client's timeout share one timer: a later one must neither
    expire with an earlier one nor be forgotten once that one is answered."""
    server.silent_paths.add("/quiet")
    server.store["/loud"] = b"1"
    loop = asyncio.get_running_loop()
    async with await Client.connect(str(sock_dir / "socket"), timeout=0.3) as c:
        assert await c.read("/loud") == b"1"  # the timer is armed for this one
        first = asyncio.create_task(c.read("/quiet"))
        await asyncio.sleep(0.1)  # a margin between the two sends, not a wait for a state
        sent = loop.time()
        with pytest.raises(XenStoreTimeout):
            await asyncio.wait_for(c.mkdir("/quiet"), GUARD)
        assert loop.time() - sent >= 0.3
        with pytest.raises(XenStoreTimeout):
            await first


async def test_a_timeout_of_its_own_expires_before_the_clients(
    server: FakeServer, sock_dir: Path
) -> None:
    server.silent_paths.add("/quiet")
    server.store["/loud"] = b"1"
    async with await Client.connect(str(sock_dir / "socket"), timeout=GUARD * 10) as c:
        slow = asyncio.create_task(c.read("/quiet"))
        with pytest.raises(XenStoreTimeout, match=r"READ /quiet: no reply within 0\.05 s"):
            await asyncio.wait_for(c.read("/quiet", timeout=0.05), GUARD)
        c.timeout = 0.05  # a new default applies to the requests sent from now on
        with pytest.raises(XenStoreTimeout):
            await asyncio.wait_for(c.read("/quiet"), GUARD)
        assert not slow.done()
        assert await c.read("/loud") == b"1"
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow


async def test_cancelled_request_late_reply_is_dropped(client: Client, server: FakeServer) -> None:
    """A request given up on by cancellation keeps the FIFO matching in step."""
    server.store["/slow"] = b"late"
    await late_replies_are_dropped(client, server, client.read("/slow"), 1)


async def test_connection_closed_by_server(client: Client, server: FakeServer) -> None:
    server.silent_paths.add("/quiet")
    pending = asyncio.create_task(client.read("/quiet"))
    async with client.watch("/w") as w:
        assert (await w.get(GUARD)).path == "/w"
        await asyncio.wait_for(server.wait_requests(2), GUARD)
        await server.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pending, GUARD)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(w.get(), GUARD)
    assert client.closed
    with pytest.raises(ConnectionClosed):
        await client.read("/x")


async def test_close_fails_pending_requests(client: Client, server: FakeServer) -> None:
    server.hold = True
    pending = asyncio.create_task(client.read("/x"))
    await asyncio.wait_for(server.wait_requests(1), GUARD)
    await client.close()
    with pytest.raises(ConnectionClosed):
        await pending


# -- watches -------------------------------------------------------------------------


async def test_watch_initial_and_change_events(client: Client, server: FakeServer) -> None:
    async with client.watch("/w") as w:
        assert await w.get(GUARD) == WatchEvent("/w", w.token)
        await client.write("/w/x", b"1")
        assert await w.get(GUARD) == WatchEvent("/w/x", w.token)
    assert sent(server, Op.UNWATCH) == [f"/w\0{w.token}\0".encode()]
    assert not w.active


async def test_watch_async_for_ends_after_stop(client: Client) -> None:
    seen: list[str] = []
    async with client.watch("/w", token="mine") as w:
        assert w.token == "mine"
        await client.write("/w/a", b"1")
        async for ev in w:
            seen.append(ev.path)
            if len(seen) == 2:
                break
        await w.stop()
        async for ev in w:  # queue drained: the stop ends the iteration
            seen.append(ev.path)
    assert seen == ["/w", "/w/a"]


async def test_watches_routed_by_token(client: Client, server: FakeServer) -> None:
    async with client.watch("/a") as wa, client.watch("/b") as wb, client.watch("/a/x") as wx:
        assert len({wa.token, wb.token, wx.token}) == 3
        assert (await wa.get(GUARD)).path == "/a"
        assert (await wb.get(GUARD)).path == "/b"
        assert (await wx.get(GUARD)).path == "/a/x"
        await client.write("/b/1", b"")
        await client.write("/a/x", b"")
        assert await wb.get(GUARD) == WatchEvent("/b/1", wb.token)
        assert await wa.get(GUARD) == WatchEvent("/a/x", wa.token)
        assert await wx.get(GUARD) == WatchEvent("/a/x", wx.token)
        assert (wa.pending, wb.pending, wx.pending) == (0, 0, 0)


async def test_watch_token_in_use_is_refused(client: Client) -> None:
    async with client.watch("/a", token="t"):
        with pytest.raises(ValueError, match="already in use"):
            await client.watch("/b", token="t").start()


async def test_watch_get_timeout(client: Client) -> None:
    async with client.watch("/w") as w:
        await w.get(GUARD)
        with pytest.raises(XenStoreTimeout):
            await w.get(0.01)  # nothing will come: it must expire


async def test_failed_watch_unregisters(client: Client, server: FakeServer) -> None:
    server.store["/w"] = b""
    w = client.watch("/w", token="t")
    server.silent_paths.add("/w")
    with pytest.raises(XenStoreTimeout):
        await w.start(timeout=0.05)
    assert not w.active
    server.silent_paths.clear()
    async with client.watch("/w", token="t") as w2:  # the token is free again
        assert (await w2.get(GUARD)).token == "t"


async def test_await_watch_and_raw_unwatch(client: Client, server: FakeServer) -> None:
    w = await client.watch("/w", token="raw")
    assert (await w.get(GUARD)).path == "/w"
    await client.unwatch("/w", "raw")
    assert not w.active
    assert [ev async for ev in w] == []


async def test_reset_watches_stops_local_watches(client: Client) -> None:
    w = await client.watch("/w")
    await w.get(GUARD)
    await client.reset_watches()
    assert not w.active
    assert [ev async for ev in w] == []


async def test_events_for_unknown_tokens_are_ignored(client: Client, server: FakeServer) -> None:
    server.conns[0].watches.append(("/z", "nobody"))
    await client.write("/z/1", b"")
    assert await client.read("/z/1") == b""


# -- DIRECTORY_PART fallback ------------------------------------------------------


def _populate(server: FakeServer, n: int = 600) -> list[str]:
    names = [f"child{i:06d}" for i in range(n)]  # 11 characters each
    for name in names:
        server.set(f"/big/{name}", b"")
    return names


async def test_list_falls_back_to_directory_part(client: Client, server: FakeServer) -> None:
    names = _populate(server)
    with pytest.raises(TooBig):
        await client.directory("/big")
    assert await client.list("/big") == names
    offsets = [p.payload.split(b"\0")[1] for p in server.requests if p.op == Op.DIRECTORY_PART]
    assert offsets[0] == b"0"
    assert len(offsets) == 2
    assert int(offsets[1]) % 12 == 0  # whole names per chunk


async def test_list_restarts_when_generation_changes(client: Client, server: FakeServer) -> None:
    names = _populate(server)
    calls = 0

    def mutate(pkt: object) -> None:
        nonlocal calls
        if getattr(pkt, "op", None) == Op.DIRECTORY_PART:
            calls += 1
            if calls == 2:  # between the first and second chunk
                server.set("/big/zlatecomer1", b"")

    server.before.append(mutate)
    assert await client.list("/big") == [*names, "zlatecomer1"]
    offsets = [p.payload.split(b"\0")[1] for p in server.requests if p.op == Op.DIRECTORY_PART]
    assert offsets[0] == b"0"
    assert offsets[2] == b"0"  # restarted
    assert len(offsets) == 4


async def test_list_without_directory_part_is_e2big(client: Client, server: FakeServer) -> None:
    _populate(server)
    server.directory_part = False
    with pytest.raises(TooBig) as info:
        await client.list("/big")
    assert info.value.name == "E2BIG"


async def test_list_in_transaction_uses_tx_id(client: Client, server: FakeServer) -> None:
    names = _populate(server)
    async with client.transaction() as t:
        assert await t.list("/big") == names
    tx_ids = {p.tx_id for p in server.requests if p.op in (Op.DIRECTORY, Op.DIRECTORY_PART)}
    assert tx_ids == {t.tx_id}


# -- transactions --------------------------------------------------------------------


async def test_transaction_commit(client: Client, server: FakeServer) -> None:
    async with client.transaction() as t:
        assert t.tx_id != 0
        await t.write("/t/a", b"1")
        assert await t.read("/t/a") == b"1"
    ops = [(p.op, p.tx_id, p.payload) for p in server.requests]
    assert ops[0] == (Op.TRANSACTION_START, 0, b"\0")
    assert ops[1][:2] == (Op.WRITE, t.tx_id)
    assert ops[-1] == (Op.TRANSACTION_END, t.tx_id, b"T\0")
    assert not t.open
    with pytest.raises(RuntimeError):
        await t.read("/t/a")


async def test_transaction_abort_on_exception(client: Client, server: FakeServer) -> None:
    with pytest.raises(KeyError):
        async with client.transaction() as t:
            await t.write("/t/a", b"1")
            raise KeyError("boom")
    assert sent(server, Op.TRANSACTION_END) == [b"F\0"]


async def test_transaction_conflict(client: Client, server: FakeServer) -> None:
    server.conflicts = 1
    with pytest.raises(TransactionConflict) as info:
        async with client.transaction() as t:
            await t.write("/t/a", b"1")
    assert info.value.name == "EAGAIN"
    assert f"transaction {t.tx_id}" in str(info.value)


async def test_explicit_commit_and_bind(client: Client, server: FakeServer) -> None:
    tx = await client.transaction_start()
    t = client.bind(tx)
    await t.write("/b", b"1")
    await t.commit()
    async with client.transaction() as t2:
        await t2.abort()  # the exit does nothing more
    assert sent(server, Op.TRANSACTION_END) == [b"T\0", b"F\0"]


async def test_retry_transaction(client: Client, server: FakeServer) -> None:
    server.conflicts = 2
    calls: list[int] = []

    async def body(t: Transaction) -> str:
        calls.append(t.tx_id)
        await t.write("/r", str(len(calls)))
        return "done"

    assert await client.retry_transaction(body, attempts=3) == "done"
    assert len(calls) == 3
    assert len(set(calls)) == 3  # a fresh transaction each time
    assert sent(server, Op.TRANSACTION_END) == [b"T\0"] * 3


async def test_retry_transaction_gives_up(client: Client, server: FakeServer) -> None:
    server.conflicts = 5
    calls = 0

    async def body(t: Transaction) -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(TransactionConflict):
        await client.retry_transaction(body, attempts=3)
    assert calls == 3
    with pytest.raises(ValueError):
        await client.retry_transaction(body, attempts=0)


async def test_concurrent_retry_transactions_of_one_client_all_commit(ours: Daemon) -> None:
    """40 transactions that all create a child of one parent (as N creates at once
    write /local/domain and /vm) conflict with each other; each still commits within
    the default attempts, because one client's retries go one at a time."""
    c = await Client.connect(ours.socket)
    try:
        async def body(t: Transaction, n: int) -> None:
            with contextlib.suppress(NoEntry):
                await t.rm(f"/p/{n}")
            for k in range(10):
                await t.write(f"/p/{n}/k{k}", b"v")

        await asyncio.gather(*(c.retry_transaction(lambda t, n=n: body(t, n))
                               for n in range(40)))
        assert sorted(await c.directory("/p"), key=int) == [str(n) for n in range(40)]
    finally:
        await c.close()


async def test_retry_transaction_does_not_retry_other_errors(client: Client) -> None:
    calls = 0

    async def body(t: Transaction) -> bytes:
        nonlocal calls
        calls += 1
        return await t.read("/missing")

    with pytest.raises(NoEntry):
        await client.retry_transaction(body)
    assert calls == 1


# -- connecting ----------------------------------------------------------------------


async def test_connect_through_environment(
    server: FakeServer, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XENSTORED_PATH", str(sock_dir / "socket"))
    async with await Client.connect() as c:
        assert c.description == f"unix:{sock_dir / 'socket'}"
        await c.write("/e", b"1")
    monkeypatch.delenv("XENSTORED_PATH")
    monkeypatch.setenv("XENSTORED_RUNDIR", str(sock_dir))
    async with await Client.connect() as c:
        assert await c.read("/e") == b"1"


async def test_retry_transaction_keeps_trying_until_its_patience_runs_out(
    client: Client, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stubdom.xenstore.recovery as client_module

    monkeypatch.setattr(client_module, "RETRY_BACKOFF", 0.0)
    server.conflicts = 25  # more than any fixed small number of attempts
    calls = 0

    async def body(t: Transaction) -> None:
        nonlocal calls
        calls += 1

    await client.retry_transaction(body)
    assert calls == 26
    monkeypatch.setattr(client_module, "RETRY_PATIENCE", 0.0)
    server.conflicts = 5
    calls = 0
    with pytest.raises(TransactionConflict):
        await client.retry_transaction(body)
    assert calls == 1


async def test_rm_missing_ok(client: Client) -> None:
    with pytest.raises(NoEntry):
        await client.rm("/never/there")
    await client.rm("/never/there", missing_ok=True)
    await client.write("/gone/soon", "x")
    await client.rm("/gone/soon", missing_ok=True)
    assert not await client.exists("/gone/soon")

