"""The blocking facade, against a fake server running on its own loop thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.wire.constants import Op
from stubdom.xenstore import NoEntry, TransactionConflict, WatchEvent, XenStoreTimeout
from stubdom.xenstore.sync import SyncClient, SyncTransaction
from tests.xenstore.fakeserver import ThreadedServer

GUARD = 10.0


@pytest.fixture
def threaded(sock_dir: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(sock_dir / "socket") as ts:
        yield ts


@pytest.fixture
def sync_client(threaded: ThreadedServer) -> Iterator[SyncClient]:
    with SyncClient(str(threaded.path), timeout=GUARD) as c:
        yield c


def test_blocking_requests(sync_client: SyncClient) -> None:
    c = sync_client
    c.write("/a/b", b"1")
    c.write("/a/s", "two")
    assert c.read("/a/b") == b"1"
    assert sorted(c.list("/a")) == ["b", "s"]
    assert sorted(c.directory("/a")) == ["b", "s"]
    assert c.directory_part("/a").data == b"b\0s\0\0"
    c.mkdir("/a/d")
    c.rm("/a/d")
    assert not c.exists("/a/d")
    assert [str(p) for p in c.get_perms("/a")] == ["n0"]
    c.set_perms("/a", ["n0", "r3"])
    assert c.get_domain_path(7) == "/local/domain/7"
    assert c.is_domain_introduced(0)
    c.introduce(5, 0, 6)
    c.resume(5)
    c.set_target(6, 5)
    c.release(5)
    assert c.control("print", "hi") == b"echo:print\0hi"
    c.reset_watches()
    with pytest.raises(NoEntry):
        c.read("/nope")


def test_blocking_watch_iterator_with_timeout(
    sync_client: SyncClient, threaded: ThreadedServer
) -> None:
    c = sync_client
    with c.watch("/w", timeout=GUARD) as w:
        assert w.get(GUARD) == WatchEvent("/w", w.token)
        c.write("/w/x", b"1")
        seen = []
        for ev in w:
            seen.append(ev.path)
            break
        assert seen == ["/w/x"]
        w.timeout = 0.01
        with pytest.raises(XenStoreTimeout):
            next(iter(w))  # nothing more will come: it must expire
    unwatch = [p for p in threaded.server.requests if p.op == Op.UNWATCH]
    assert len(unwatch) == 1


def test_blocking_transactions(sync_client: SyncClient, threaded: ThreadedServer) -> None:
    c = sync_client
    with c.transaction() as t:
        t.write("/t", b"1")
        assert t.read("/t") == b"1"
    with pytest.raises(RuntimeError), c.transaction() as t:
        t.write("/t", b"2")
        raise RuntimeError("abort")
    threaded.server.conflicts = 1
    with pytest.raises(TransactionConflict), c.transaction() as t:
        t.write("/t", b"3")
    ends = [p.payload for p in threaded.server.requests if p.op == Op.TRANSACTION_END]
    assert ends == [b"T\0", b"F\0", b"T\0"]

    threaded.server.conflicts = 2
    calls: list[int] = []

    def body(t: SyncTransaction) -> int:
        calls.append(t.tx_id)
        t.write("/r", b"x")
        return len(calls)

    assert c.retry_transaction(body, attempts=5) == 3
    threaded.server.conflicts = 12  # beyond any small fixed number of attempts
    calls.clear()
    assert c.retry_transaction(body) == 13
    tx = c.transaction_start()
    c.bind(tx).write("/bound", b"1")
    c.transaction_end(tx, commit=True)


def test_shared_between_threads(sync_client: SyncClient) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                sync_client.write(f"/th/{n}/{i}", str(i))
                assert sync_client.read(f"/th/{n}/{i}") == str(i).encode()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    assert errors == []
    assert sorted(sync_client.list("/th")) == ["0", "1", "2", "3"]


def test_close_is_idempotent(threaded: ThreadedServer) -> None:
    c = SyncClient(str(threaded.path))
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(RuntimeError, match="closed"):
        c.read("/a")


def test_connect_failure_cleans_up(sock_dir: Path) -> None:
    before = threading.active_count()
    with pytest.raises(FileNotFoundError):
        SyncClient(str(sock_dir / "missing"))
    assert threading.active_count() == before


def test_wait_until_blocks_until_the_condition_holds(sync_client: SyncClient) -> None:
    sync_client.write("/w", "ready")
    assert sync_client.wait_until("/w", lambda v: v if v == "ready" else None, GUARD) == "ready"
    assert sync_client.wait_until(["/w", "/none"], lambda vs: vs, GUARD) == ("ready", None)
    assert sync_client.read_text("/none") is None
    assert sync_client.read_optional("/w") == b"ready"
