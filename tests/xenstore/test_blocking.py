"""The blocking client (`stubdom.xenstore.blocking`): the asyncio client's bytes, reply
matching and errors without an event loop, against the fake server and real daemons."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.wire.constants import Op
from stubdom.wire.paths import InvalidPath
from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    NoEntry,
    PermissionDenied,
    TooBig,
    TransactionConflict,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.blocking import BlockingClient
from stubdom.xenstore.protocol import args_payload
from stubdom.xenstore.sync import SyncClient
from tests.support.daemons import Daemon, have_cx, short_tmpdir, start_cx, start_ours
from tests.xenstore.fakeserver import ThreadedServer


@pytest.fixture
def threaded(sock_dir: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(sock_dir / "socket") as ts:
        yield ts


@pytest.fixture
def xs(threaded: ThreadedServer) -> Iterator[BlockingClient]:
    with BlockingClient(str(threaded.path)) as c:
        yield c


def test_node_requests(xs: BlockingClient, threaded: ThreadedServer) -> None:
    xs.write("/a/b", b"1")
    xs.write("/a/s", "two")
    assert xs.read("/a/b") == b"1"
    assert sorted(xs.directory("/a")) == ["b", "s"]
    xs.set_perms("/a/b", ["n0", "r5"])
    sent = [p.payload for p in threaded.server.requests if p.op == Op.SET_PERMS]
    assert sent == [b"/a/b\0n0\0r5\0"]
    assert [str(p) for p in xs.get_perms("/a/b")] == ["n0"]  # the fake keeps none
    xs.rm("/a/b")
    with pytest.raises(NoEntry) as e:
        xs.read("/a/b")
    assert str(e.value) == "xenstore READ /a/b: ENOENT (No such file or directory)"


def _node_ops(c: BlockingClient | SyncClient) -> None:
    c.write("/e/\u00e9", "v\u00e9")  # non-ASCII: both send it as UTF-8
    c.write("/e/b", b"\0raw")
    c.read("/e/b")
    c.directory("/e")
    c.set_perms("/e/b", ["n0", Perm(Access.READ, 5)])
    c.get_perms("/e/b")
    c.rm("/e/b")
    with contextlib.suppress(NoEntry):
        c.read("/e/b")


def test_the_bytes_are_the_asyncio_clients(threaded: ThreadedServer) -> None:
    """The payloads are built here, not by `stubdom.xenstore.protocol`: same bytes."""
    with SyncClient(str(threaded.path), check_paths=False) as sync:
        _node_ops(sync)
    theirs = [(p.op, p.payload, p.tx_id) for p in threaded.server.requests]
    threaded.server.requests.clear()
    with BlockingClient(str(threaded.path), check_paths=False) as xs:
        _node_ops(xs)
    ours = [(p.op, p.payload, p.tx_id) for p in threaded.server.requests]
    assert ours == theirs and len(ours) == 8


def test_a_connection_whose_reply_never_came_is_not_used_again(
        threaded: ThreadedServer) -> None:
    threaded.server.hold = True
    with BlockingClient(str(threaded.path), timeout=0.05) as c:
        with pytest.raises(XenStoreTimeout):
            c.read("/a")
        threaded.server.hold = False
        with pytest.raises(ConnectionClosed, match="a reply never came"):
            c.read("/a")


def test_refused_before_sending(xs: BlockingClient, threaded: ThreadedServer) -> None:
    with pytest.raises(InvalidPath):
        xs.read("/a//b")
    with pytest.raises(TooBig, match="request of 5005 bytes exceeds 4096"):
        xs.write("/big", b"x" * 5000)
    with pytest.raises(ValueError, match="owner"):
        xs.set_perms("/a", [])
    assert threaded.server.requests == []


def test_replies_with_req_id_zero_still_match(threaded: ThreadedServer,
                                              xs: BlockingClient) -> None:
    threaded.server.echo_zero = True
    xs.write("/z", b"0")
    assert xs.read("/z") == b"0"


def test_a_transaction_that_conflicts_runs_again(threaded: ThreadedServer,
                                                 xs: BlockingClient) -> None:
    threaded.server.conflicts = 2
    runs: list[int] = []

    def body(tx_id: int) -> str:
        runs.append(tx_id)
        xs.write("/t/a", b"1", tx_id=tx_id)
        return "done"

    assert xs.retry_transaction(body) == "done"
    assert len(runs) == 3 and len(set(runs)) == 3
    assert xs.read("/t/a") == b"1"


def test_an_error_in_the_block_aborts(threaded: ThreadedServer, xs: BlockingClient) -> None:
    def body(tx_id: int) -> None:
        xs.write("/t/b", b"1", tx_id=tx_id)
        raise KeyError("stop")

    with pytest.raises(KeyError):
        xs.retry_transaction(body)
    ends = [p for p in threaded.server.requests if p.op == Op.TRANSACTION_END]
    assert [p.payload for p in ends] == [b"F\0"]


def test_no_reply_is_a_timeout(threaded: ThreadedServer) -> None:
    threaded.server.hold = True  # the reply never comes
    with BlockingClient(str(threaded.path), timeout=0.05) as c, \
            pytest.raises(XenStoreTimeout, match=r"xenstore READ /a: no reply within 0\.05 s"):
        c.read("/a")


def test_nothing_listening_is_an_oserror(sock_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BlockingClient(str(sock_dir / "nothing"))
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(sock_dir / "refusing"))  # bound, never listening
    try:
        with pytest.raises(ConnectionRefusedError):
            BlockingClient(str(sock_dir / "refusing"))
    finally:
        bound.close()


# -- against real daemons: the same errors as the asyncio client -----------------------


def _daemons() -> list[str]:
    return ["ours", "cx"] if have_cx() else ["ours"]


@pytest.fixture(params=_daemons())
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    d = start_ours() if request.param == "ours" else start_cx()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.run_dir, ignore_errors=True)


async def _async_error(path: str, op: str, *args: str) -> str:
    async with await Client.connect(path) as c:
        try:
            await getattr(c, op)(*args)
        except XenStoreError as e:
            return str(e)
    raise AssertionError(f"{op} {args} did not fail")


@pytest.mark.parametrize(("op", "args"), [("read", ("/no/such",)), ("directory", ("/no",)),
                                          ("get_perms", ("/no",)), ("read", ("@bad",))])
def test_errors_read_as_the_asyncio_clients(daemon: Daemon, op: str,
                                            args: tuple[str, ...]) -> None:
    with BlockingClient(daemon.socket) as xs, pytest.raises(XenStoreError) as e:
        getattr(xs, op)(*args)
    assert str(e.value) == asyncio.run(_async_error(daemon.socket, op, *args))


def test_a_domain_is_refused_as_with_the_asyncio_client() -> None:
    d = start_ours()
    try:
        with BlockingClient(d.socket) as dom0:
            dom0.request(Op.INTRODUCE, args_payload("5", "0", "6"))
        guest = str(Path(d.socket + ".d") / "5")
        with BlockingClient(guest) as xs, pytest.raises(PermissionDenied) as e:
            xs.read("/local/domain/0/name")
        assert str(e.value) == "xenstore READ /local/domain/0/name: EACCES (Permission denied)"
        assert str(e.value) == asyncio.run(_async_error(guest, "read", "/local/domain/0/name"))
    finally:
        d.stop()


def test_a_restarted_daemon_is_reached_again() -> None:
    run_dir = short_tmpdir("blk-")
    d = start_ours(run_dir)
    try:
        with BlockingClient(d.socket, reconnect=30.0) as xs:
            xs.write("/before", b"1")
            d.stop()
            d = start_ours(run_dir)  # a new daemon on the same socket
            with pytest.raises(NoEntry):  # sent again over the new connection
                xs.read("/before")
            xs.write("/after", b"2")
            assert xs.read("/after") == b"2"
    finally:
        d.stop()


def test_a_transaction_the_restart_forgot_is_a_conflict() -> None:
    run_dir = short_tmpdir("blk-")
    d = start_ours(run_dir)
    try:
        with BlockingClient(d.socket, reconnect=30.0) as xs:
            tx_id = int(xs.request(Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
            d.stop()
            d = start_ours(run_dir)
            with pytest.raises(TransactionConflict, match="forgot the transaction"):
                xs.write("/t", b"1", tx_id=tx_id)
    finally:
        d.stop()


def test_without_reconnect_a_lost_connection_is_final() -> None:
    d = start_ours()
    try:
        xs = BlockingClient(d.socket)
        d.stop()
        with xs, pytest.raises(ConnectionClosed):
            xs.read("/")
    finally:
        d.stop()
