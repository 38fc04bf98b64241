"""Hostile input, one test per xenstore XSA (xenbits.xen.org/xsa) and per cx quirk.

Each test checks three things: the offending request gets the right errno (or only the
offending connection is closed), everyone else keeps being served, and the daemon's state
stays bounded -- measured in its own structures (node count, watch index, outboxes,
transport backlog), never RSS or wall-clock.

Most tests drive the sans-IO core (`Harness`); the ones about the transport (lengths,
clients that never read) use a real in-process `XenStoreServer` over Unix sockets.  Where
an XSA is about the shared ring (indexes, ring reset), we test the socket equivalent and
say so.  The differential corpus (`tests/differential/cases/hostile.py`) already compares
XSA-418/421/440/484 and the malformed requests with real cx; here we check the
invariants (bounded state, others served) rather than byte-for-byte replies.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import pytest

from stubdom.wire import Op, Packet, encode
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.quota import Quotas
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir
from tests.xenstored.harness import Harness
from tests.xenstored.test_server import Raw


@pytest.fixture
def h() -> Harness:
    return Harness()


def nodes(h: Harness) -> int:
    return len(h.xs.store.nodes)


def served(h: Harness) -> None:
    """Everyone else is still served: dom0 reads and a fresh guest works."""
    assert h.ok(h.dom0, Op.READ, "/tool/xenstored") == b""
    wr(h, h.dom0, "/alive", "1")
    assert h.ok(h.dom0, Op.READ, "/alive") == b"1"


def wr(h: Harness, conn: object, path: str, value: str) -> None:
    kind, payload = h.write(conn, path, value)  # type: ignore[arg-type]
    assert kind == "WRITE", payload


def outboxes(h: Harness) -> int:
    return sum(len(c.outbox) for c in h.xs.connections.values())


@pytest.fixture
async def server() -> AsyncIterator[XenStoreServer]:
    srv = XenStoreServer(short_tmpdir() / "socket", XenStored(Quotas(memory=200_000)))
    await srv.start()
    yield srv
    await srv.close()


async def _guest(server: XenStoreServer, dom0: Raw, domid: int) -> Raw:
    for args in (
        ("INTRODUCE", str(domid), "0", str(domid + 1)),
        ("MKDIR", f"/local/domain/{domid}"),
        ("SET_PERMS", f"/local/domain/{domid}", f"n{domid}"),
    ):
        assert (await dom0.rpc(Op[args[0]], *args[1:])).op != Op.ERROR
    return await Raw.open(server.domain_socket(domid))


def _header(op: int, length: int, req_id: int = 1, tx: int = 0) -> bytes:
    return struct.pack("=4I", op, req_id, tx, length)


# -- XSAs ------------------------------------------------------------------------------


async def test_xsa38_bogus_lengths_close_only_the_offender(server: XenStoreServer) -> None:
    """XSA-38 (ox ring indexes / len > 4096).  We have no ring: the socket equivalent is
    a header announcing 4097 or 0xffffffff bytes.  Only that connection is closed."""
    dom0 = await Raw.open(server.socket_path)
    guest = await _guest(server, dom0, 5)
    for length in (4097, 0xFFFFFFFF):
        bad = await Raw.open(server.domain_socket(5))
        bad.writer.write(_header(Op.READ, length) + b"/x\0")
        assert await bad.reader.read() == b""
    assert (await guest.rpc(Op.GET_DOMAIN_PATH, "5")).payload == b"/local/domain/5\0"
    assert (await dom0.rpc(Op.READ, "/tool/xenstored")).op == Op.READ
    assert sum(1 for c in server.clients if c.domid == 5) == 1


def test_xsa72_overlong_reply_is_e2big(h: Harness) -> None:
    """XSA-72: DIRECTORY whose child list exceeds 4096 bytes answers E2BIG, no crash."""
    for i in range(40):
        wr(h, h.dom0, f"/wide/{'c' * 120}{i:03}", "")
    assert h.err(h.dom0, Op.DIRECTORY, "/wide") == "E2BIG"
    served(h)


def test_xsa115_guest_watch_on_root_sees_no_foreign_nodes(h: Harness) -> None:
    """XSA-115: a guest watching ``/`` must not learn the names of nodes it cannot read;
    special paths and IS_DOMAIN_INTRODUCED are not for guests."""
    g5, g6 = h.guest(5), h.guest(6)
    h.events(g5)
    h.ok(g5, Op.WATCH, "/", "all")
    h.ok(g5, Op.WATCH, "@introduceDomain", "intro")
    assert h.events(g5) == [("/", "all"), ("@introduceDomain", "intro")]  # initial events
    h.write(g6, "/local/domain/6/secret", "x")
    wr(h, h.dom0, "/tool/private", "y")
    h.guest(7)  # fires @introduceDomain: not for g5
    assert h.events(g5) == []
    assert h.err(g5, Op.IS_DOMAIN_INTRODUCED, "6") == "EACCES"
    h.write(g5, "/local/domain/5/mine", "z")
    assert ("/local/domain/5/mine", "all") in h.events(g5)


def test_xsa206_write_flood_does_not_starve_other_transactions(h: Harness) -> None:
    """XSA-206: a guest writing constantly to its own nodes must not make another
    domain's transaction on unrelated nodes fail."""
    g5, g6 = h.guest(5), h.guest(6)
    for i in range(20):
        tx = h.start(g6)
        h.write(g6, "/local/domain/6/counter", str(i), tx=tx)
        for j in range(10):
            h.write(g5, "/local/domain/5/flood", f"{i}.{j}")
        assert h.end(g6, tx) == "OK"
    assert h.ok(g6, Op.READ, "/local/domain/6/counter") == b"19"
    assert h.xs.domains[6].transactions == 0


def test_xsa233_domain_and_its_stubdom_die_together(h: Harness) -> None:
    """XSA-233: SET_TARGET, then both domains die in the same breath."""
    stub, guest = h.guest(5), h.guest(6)
    h.ok(h.dom0, Op.SET_TARGET, "5", "6")
    h.write(stub, "/local/domain/6/by-stub", "1")
    h.write(guest, "/local/domain/6/by-guest", "1")
    before = nodes(h)
    h.ok(h.dom0, Op.CONTROL, "domain-state", "6", "dying")
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "dying")
    h.ok(h.dom0, Op.CONTROL, "domain-state", "6", "gone")  # again: no double free
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "gone")
    assert stub.closed and guest.closed
    assert 5 not in h.xs.domains and 6 not in h.xs.domains
    assert nodes(h) < before
    assert h.ok(h.dom0, Op.CONTROL, "check") == b"OK\0"
    served(h)


def test_xsa272_node_quota_enforced_on_creation(h: Harness) -> None:
    """XSA-272: creating many new nodes is charged to the quota."""
    h.xs.quotas.nodes = 50
    g5 = h.guest(5)
    errs = set()
    for i in range(100):
        kind, payload = h.write(g5, f"/local/domain/5/n{i}", "")
        if kind == "ERROR":
            errs.add(payload)
    assert errs == {b"ENOSPC\0"}
    assert h.xs.store.count_owned(5) <= 50
    # implicit parents count too
    assert h.write(g5, "/local/domain/5/a/b/c/d", "")[1] == b"ENOSPC\0"
    served(h)


def _destroy_and_reuse(h: Harness, domid: int) -> None:
    h.ok(h.dom0, Op.CONTROL, "domain-state", str(domid), "gone")
    h.ok(h.dom0, Op.CONTROL, "domain-state", str(domid), "running")


def test_xsa322_reused_domid_does_not_inherit_nodes_or_perms(h: Harness) -> None:
    """XSA-322: a destroyed domain's nodes and ACL entries do not pass to a new domain
    re-using its domid."""
    g5 = h.guest(5)
    h.write(g5, "/local/domain/5/old", "1")
    wr(h, h.dom0, "/shared", "s")
    h.ok(h.dom0, Op.SET_PERMS, "/shared", "n0", "r5")
    assert h.ok(g5, Op.READ, "/shared") == b"s"
    _destroy_and_reuse(h, 5)
    assert g5.closed
    assert h.xs.store.get("/local/domain/5/old") is None
    g5b = h.guest(5)
    assert h.err(g5b, Op.READ, "/shared") == "EACCES"
    assert h.err(g5b, Op.READ, "/local/domain/5/old") == "ENOENT"


def test_xsa323_relative_path_length_checked_after_prefix(h: Harness) -> None:
    """XSA-323: the relative part is checked against path-max (2048): exactly the limit
    works, one more is EINVAL, and the created node is readable by its creator."""
    g5 = h.guest(5)
    ok_path = "a/" * 10 + "b" * 2028  # 2048 characters
    assert len(ok_path) == 2048
    assert h.write(g5, ok_path, "v") == ("ERROR", b"ENOSPC\0")  # node-size quota (2028-byte name)
    ok_path = "a/" * 1000 + "b" * 48  # 2048 characters, 1001 levels
    h.xs.quotas.nodes = 2000
    assert len(ok_path) == 2048
    assert h.write(g5, ok_path, "v")[0] == "WRITE"
    assert h.ok(g5, Op.READ, ok_path) == b"v"
    assert h.err(g5, Op.WRITE, ok_path + "d", "v") == "EINVAL"
    assert h.ok(g5, Op.RM, "a") == b"OK\0"


def test_xsa324_huge_token_event_dropped(h: Harness) -> None:
    """XSA-324: an event longer than 4096 bytes is dropped, not sent; no crash."""
    g5 = h.guest(5)
    token = "t" * 4000
    h.ok(g5, Op.WATCH, "/local/domain/5", token)
    h.events(g5)
    h.write(g5, "/local/domain/5/" + "x" * 200, "v")
    assert h.events(g5) == []
    assert all(len(p[1]) <= 4096 for c in h.xs.connections.values() for p in c.outbox)
    served(h)


def test_xsa325_dropped_connection_fires_no_release_domain(h: Harness) -> None:
    """XSA-325: killing a bad connection must not fire ``@releaseDomain`` or destroy the
    domain.  Socket equivalent of a bad ring index: the guest's connection goes away."""
    g5 = h.guest(5)
    h.ok(h.dom0, Op.WATCH, "@releaseDomain", "rel")
    h.events(h.dom0)
    h.write(g5, "/local/domain/5/x", "1")
    h.xs.disconnect(g5)
    h.ok(h.dom0, Op.READ, "/tool/xenstored")
    assert h.events(h.dom0) == []
    assert h.xs.introduced(5) is not None
    assert h.ok(h.dom0, Op.READ, "/local/domain/5/x") == b"1"
    # the domain may connect again
    g5b = h.xs.connect(5)
    assert h.ok(g5b, Op.READ, "/local/domain/5/x") == b"1"


async def test_xsa326_guest_never_reads_while_others_write(server: XenStoreServer) -> None:
    """XSA-326: a guest that never reads its watch events, with many watches on a hot
    path, while dom0 writes: its queue is capped, and another guest is unaffected."""
    dom0 = await Raw.open(server.socket_path)
    g6 = await _guest(server, dom0, 6)
    await _guest(server, dom0, 5)
    await dom0.rpc(Op.SET_PERMS, "/local/domain/5", "n5", "r6")
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(server.domain_socket(5)))
    watch = b"".join(  # many watches on one hot path; the initial events fit its buffers
        encode(Packet(Op.WATCH, f"/local/domain/5\0{'k' * 100}{i}\0".encode())) for i in range(100)
    )
    lazy.sendall(watch)
    await dom0.rpc(Op.GET_DOMAIN_PATH, "0")
    assert (await g6.rpc(Op.WATCH, "/local/domain/5/hot", "g6")).op == Op.WATCH
    watches_before = len(server.core.watches)
    for i in range(300):
        r = await dom0.rpc(Op.WRITE, raw=b"/local/domain/5/hot\0" + str(i).encode())
        assert r.op == Op.WRITE
        assert (await g6.rpc(Op.READ, "/local/domain/5/hot")).payload == str(i).encode()
    backlog = sum(c.backlog() for conn, c in server.clients.items() if conn.domid == 5)
    assert backlog <= 200_000 + 8 * 4096
    assert len(server.core.watches) == watches_before <= 128 + 1
    assert sum(len(c.outbox) for c in server.core.connections.values()) == 0
    assert len(g6.events) >= 300  # the other guest got every event
    lazy.close()


def test_xsa326_watch_quota_and_tx_node_quota(h: Harness) -> None:
    """XSA-326: watches per domain and nodes per transaction are capped."""
    h.xs.quotas.transaction_nodes = 30
    g5 = h.guest(5)
    errs = {h.rq(g5, Op.WATCH, f"/local/domain/5/w{i}", "t")[1] for i in range(200)}
    assert b"E2BIG\0" in errs or b"ENOSPC\0" in errs
    assert len(g5.watches) <= h.xs.quotas.watches + 1  # cx checks "> quota" before adding
    tx = h.start(g5)
    kinds = {h.write(g5, f"/local/domain/5/t{i}", "", tx=tx)[1] for i in range(60)}
    assert b"ENOSPC\0" in kinds
    assert h.end(g5, tx) != "OK"
    served(h)


def test_xsa330_watch_reset_loop_stays_flat(h: Harness) -> None:
    """XSA-330: WATCH x100 then RESET_WATCHES, repeated: the watch index stays flat."""
    g5 = h.guest(5)
    for _ in range(5):
        for i in range(100):
            h.rq(g5, Op.WATCH, f"/local/domain/5/w{i}", "t")
        h.ok(g5, Op.RESET_WATCHES)
        assert len(h.xs.watches) == 0
        assert h.xs.domains[5].watches == 0
        h.events(g5)
    assert outboxes(h) == 0


def test_xsa352_guest_cannot_give_its_node_away(h: Harness) -> None:
    """XSA-352: only dom0 changes a node's owner."""
    g5 = h.guest(5)
    h.write(g5, "/local/domain/5/mine", "1")
    owned = h.xs.store.count_owned(5)
    assert h.err(g5, Op.SET_PERMS, "/local/domain/5/mine", "n0") in ("EPERM", "EACCES")
    assert h.ok(g5, Op.GET_PERMS, "/local/domain/5/mine") == b"n5\0"
    assert h.xs.store.count_owned(5) == owned


def test_xsa353_guest_cannot_touch_root(h: Harness) -> None:
    """XSA-353: guest WRITE, SET_PERMS, RM and MKDIR on ``/`` all fail."""
    g5 = h.guest(5)
    n = nodes(h)
    assert h.err(g5, Op.WRITE, "/", "x") == "EACCES"
    assert h.err(g5, Op.SET_PERMS, "/", "n5") == "EACCES"
    assert h.err(g5, Op.MKDIR, "/") == "EACCES"
    assert h.err(g5, Op.RM, "/") in ("EACCES", "EINVAL")
    assert nodes(h) == n
    assert h.ok(h.dom0, Op.GET_PERMS, "/") == b"n0\0"


def test_xsa414_creation_failing_midway_on_quota(h: Harness) -> None:
    """XSA-414: a WRITE needing several implicit parents fails on the node quota part
    way: nothing half-created stays, and the store is consistent."""
    g5 = h.guest(5)
    h.xs.quotas.nodes = h.xs.store.count_owned(5) + 3
    n = nodes(h)
    assert h.err(g5, Op.WRITE, "/local/domain/5/a/b/c/d/e", "v") == "ENOSPC"
    assert nodes(h) == n
    assert h.err(g5, Op.READ, "/local/domain/5/a") == "ENOENT"
    assert h.ok(h.dom0, Op.CONTROL, "check") == b"OK\0"
    assert h.write(g5, "/local/domain/5/a/b", "v")[0] == "WRITE"


def test_xsa415_quota_failure_inside_transaction_fails_commit(h: Harness) -> None:
    """XSA-415: a failed node creation in a transaction fails the transaction (here a
    node-size failure).  The node quota is checked before anything is written, so a
    quota failure leaves the transaction usable (deliberate, core.create_node) and
    creates nothing."""
    g5 = h.guest(5)
    h.xs.quotas.nodes = h.xs.store.count_owned(5) + 2
    n = nodes(h)
    tx = h.start(g5)
    assert h.write(g5, "/local/domain/5/a/b/c/d", "v", tx=tx)[1] == b"ENOSPC\0"
    assert h.end(g5, tx) == "OK"
    assert nodes(h) == n
    tx = h.start(g5)
    assert h.write(g5, "/local/domain/5/a", "v" * 3000, tx=tx)[0] == "ERROR"
    assert h.end(g5, tx) != "OK"
    assert nodes(h) == n
    assert h.xs.domains[5].transactions == 0
    served(h)


async def test_xsa416_big_reads_from_a_guest_that_never_reads(server: XenStoreServer) -> None:
    """XSA-416: many big READs from a guest that never consumes its replies: the server
    stops reading it at the high-water mark, memory stays bounded, dom0 is served."""
    dom0 = await Raw.open(server.socket_path)
    await _guest(server, dom0, 5)
    await dom0.rpc(Op.WRITE, raw=b"/local/domain/5/big\0" + b"v" * 2000)
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(server.domain_socket(5)))
    lazy.setblocking(False)
    req = encode(Packet(Op.READ, b"/local/domain/5/big\0"))
    for _ in range(2000):
        try:
            lazy.send(req)
        except BlockingIOError:
            break
        if _ % 50 == 0:
            await dom0.rpc(Op.GET_DOMAIN_PATH, "0")  # let the server process
    await dom0.rpc(Op.GET_DOMAIN_PATH, "0")
    backlog = sum(c.backlog() for conn, c in server.clients.items() if conn.domid == 5)
    assert backlog < 4 * 65536
    assert (await dom0.rpc(Op.READ, "/local/domain/5/big")).payload == b"v" * 2000
    lazy.close()


def test_xsa417_perm_naming_old_domid_not_honoured(h: Harness) -> None:
    """XSA-417: a node created by dom0 before the new domain, whose ACL names the old
    domid, does not grant anything to the new domain re-using that domid."""
    h.guest(5)
    wr(h, h.dom0, "/pre", "p")
    h.ok(h.dom0, Op.SET_PERMS, "/pre", "n0", "b5")
    _destroy_and_reuse(h, 5)
    g5 = h.guest(5)
    assert h.err(g5, Op.READ, "/pre") == "EACCES"
    assert h.err(g5, Op.WRITE, "/pre", "x") == "EACCES"


def test_xsa418_deep_tree_and_rm(h: Harness) -> None:
    """XSA-418: a path 1000 levels deep, then RM of its root: no recursion limit hit.
    (Compared with cx in tests/differential/cases/hostile.py: xsa418_deep_path.)"""
    g5 = h.guest(5)
    deep = "/deep" + "/a" * 1000
    n = nodes(h)
    wr(h, h.dom0, deep, "v")
    assert nodes(h) == n + 1001
    assert h.ok(h.dom0, Op.READ, deep) == b"v"
    assert h.ok(h.dom0, Op.CONTROL, "check") == b"OK\0"
    h.ok(h.dom0, Op.RM, "/deep")
    assert nodes(h) == n
    # the same depth owned by a guest, removed by the guest's death
    h.xs.quotas.nodes = 2000
    rel = "d" + "/a" * 1000
    assert h.write(g5, rel, "v")[0] == "WRITE"
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "gone")
    assert h.xs.store.count_owned(5) == 0


def test_wide_directory_and_rm(h: Harness) -> None:
    """Issue 7: a wide directory (5000 children) works, and RM of it is complete."""
    n = nodes(h)
    for i in range(5000):
        wr(h, h.dom0, f"/wide/{i}", "")
    assert h.err(h.dom0, Op.DIRECTORY, "/wide") == "E2BIG"
    part = h.ok(h.dom0, Op.DIRECTORY_PART, "/wide", "0")
    assert part.split(b"\0")[0].isdigit()
    h.ok(h.dom0, Op.RM, "/wide")
    assert nodes(h) == n


def test_xsa419_node_count_returns_to_zero_after_death(h: Harness) -> None:
    """XSA-419: everything a destroyed domain owned is removed, its watches and
    transactions too."""
    g5 = h.guest(5)
    for i in range(30):
        h.write(g5, f"/local/domain/5/n{i}/x", "v")
    h.ok(g5, Op.WATCH, "/local/domain/5", "w")
    h.start(g5)
    n_before = nodes(h)
    assert h.xs.store.count_owned(5) >= 60
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "dying")
    assert h.xs.store.count_owned(5) == 0
    assert nodes(h) <= n_before - 60
    assert len(h.xs.watches) == 0
    assert all(c.domid != 5 for c in h.xs.connections.values())


async def test_xsa420_length_0x80000000(server: XenStoreServer) -> None:
    """XSA-420: ``len`` = 0x80000000 closes that connection, nothing else."""
    dom0 = await Raw.open(server.socket_path)
    guest = await _guest(server, dom0, 5)
    guest.writer.write(_header(Op.WRITE, 0x80000000) + b"x" * 64)
    assert await guest.reader.read() == b""
    bad0 = await Raw.open(server.socket_path)
    bad0.writer.write(_header(Op.WRITE, 0x80000000))
    assert await bad0.reader.read() == b""
    assert (await dom0.rpc(Op.READ, "/tool/xenstored")).op == Op.READ
    assert (await (await Raw.open(server.domain_socket(5))).rpc(Op.GET_DOMAIN_PATH, "5")).op == (
        Op.GET_DOMAIN_PATH
    )


def test_xsa421_create_then_rm_in_transaction(h: Harness) -> None:
    """XSA-421: create then RM in one transaction, commit: accounting stays exact so the
    trick gives no unlimited nodes.  (Also compared with cx: xsa421_create_rm_in_tx.)"""
    g5 = h.guest(5)
    owned = h.xs.store.count_owned(5)
    for _ in range(20):
        tx = h.start(g5)
        h.write(g5, "/local/domain/5/tmp/a/b", "1", tx=tx)
        h.ok(g5, Op.RM, "/local/domain/5/tmp", tx=tx)
        assert h.end(g5, tx) == "OK"
    assert h.xs.store.count_owned(5) == owned
    assert h.xs.store.count_owned(5) == sum(1 for n in h.xs.store.nodes.values() if n.owner == 5)


async def test_xsa425_reintroduce_while_requests_queued(server: XenStoreServer) -> None:
    """XSA-425 (guest kexec / ring reset).  Socket equivalent: the guest has requests
    queued and unread replies while dom0 re-INTRODUCEs it and then releases it."""
    dom0 = await Raw.open(server.socket_path)
    await _guest(server, dom0, 5)
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(server.domain_socket(5)))
    lazy.sendall(encode(Packet(Op.WRITE, b"/local/domain/5/q\0" + b"v" * 3000)) * 20)
    await dom0.rpc(Op.GET_DOMAIN_PATH, "0")
    assert (await dom0.rpc(Op.INTRODUCE, "5", "0", "6")).op != Op.ERROR
    assert (await dom0.rpc(Op.RELEASE, "5")).payload == b"OK\0"
    assert (await dom0.rpc(Op.READ, "/tool/xenstored")).op == Op.READ
    assert all(c.domid != 5 for c in server.clients)
    g5 = await _guest(server, dom0, 5)
    assert (await g5.rpc(Op.GET_DOMAIN_PATH, "5")).payload == b"/local/domain/5\0"
    lazy.close()


def test_xsa440_two_transactions_remove_same_nodes(h: Harness) -> None:
    """XSA-440: two transactions each RM 50 nodes; commit both: one wins, the other
    gets EAGAIN, accounting never goes negative.  (Compared with cx: xsa440.)"""
    g5 = h.guest(5)
    for i in range(50):
        h.write(g5, f"/local/domain/5/n/{i}", "")
    a, b = h.start(g5), h.start(g5)
    for i in range(50):
        h.ok(g5, Op.RM, f"/local/domain/5/n/{i}", tx=a)
        h.ok(g5, Op.RM, f"/local/domain/5/n/{i}", tx=b)
    assert h.end(g5, a) == "OK"
    assert h.end(g5, b) == "EAGAIN"
    owned = h.xs.store.count_owned(5)
    assert owned >= 0
    assert owned == sum(1 for n in h.xs.store.nodes.values() if n.owner == 5)
    assert h.ok(h.dom0, Op.CONTROL, "check") == b"OK\0"


def test_xsa481_local_domain_trailing_slash_paths(h: Harness) -> None:
    """XSA-481: ``/local/domain/``, ``/local/domain/0``, ``/local/domain/abc/x``."""
    g5 = h.guest(5)
    for conn in (h.dom0, g5):
        assert h.err(conn, Op.READ, "/local/domain/") == "EINVAL"
        assert h.err(conn, Op.WRITE, "/local/domain/", "x") == "EINVAL"
        assert h.rq(conn, Op.READ, "/local/domain/0")[0] in ("READ", "ERROR")
        assert h.err(conn, Op.READ, "/local/domain/abc/x") in ("ENOENT", "EACCES")
    served(h)


def test_xsa483_reused_domid_has_full_quota(h: Harness) -> None:
    """XSA-483: node usage is reset on teardown; a re-used domid gets its full quota."""
    h.xs.quotas.nodes = 20
    g5 = h.guest(5)
    created = sum(h.write(g5, f"/local/domain/5/n{i}", "")[0] == "WRITE" for i in range(40))
    assert h.xs.store.count_owned(5) == 20
    _destroy_and_reuse(h, 5)
    assert h.xs.store.count_owned(5) == 0
    g5b = h.guest(5)
    again = sum(h.write(g5b, f"/local/domain/5/n{i}", "")[0] == "WRITE" for i in range(40))
    assert again == created
    assert "nodes" in h.ok(h.dom0, Op.CONTROL, "quota", "5").decode()


def test_xsa484_reset_watches_with_live_tx(h: Harness) -> None:
    """XSA-484: RESET_WATCHES with a live tx_id, from dom0 and a guest; then the
    connection's death mid-transaction.  (Compared with cx: xsa484_reset_watches_in_tx.)"""
    g5 = h.guest(5)
    for conn in (h.dom0, g5):
        tx = h.start(conn)
        path = "/r/x" if conn is h.dom0 else "/local/domain/5/x"
        h.write(conn, path, "1", tx=tx)
        h.ok(conn, Op.WATCH, path, "w")
        h.rq(conn, Op.RESET_WATCHES, tx=tx)
        assert not conn.watches
        h.end(conn, tx)
    tx = h.start(g5)
    h.write(g5, "/local/domain/5/y", "1", tx=tx)
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "gone")
    assert 5 not in h.xs.domains
    served(h)


# -- cx quirks ----------------------------------------------------------------------


@pytest.mark.parametrize("op", [Op.READ, Op.DIRECTORY, Op.GET_PERMS, Op.MKDIR, Op.RM])
def test_quirk_unterminated_string_after_watch(h: Harness, op: Op) -> None:
    """One-string requests lacking their NUL right after a WATCH (aborts cx 4.17): we
    answer EINVAL (deliberate, see the differential corpus)."""
    g5 = h.guest(5)
    for conn, path in ((h.dom0, b"/tool"), (g5, b"/local/domain/5")):
        h.ok(conn, Op.WATCH, path.decode(), "w")
        assert h.rq(conn, op, raw=path) == ("ERROR", b"EINVAL\0")
    served(h)


async def test_quirk_zero_length_payload_is_answered(server: XenStoreServer) -> None:
    """A ``len = 0`` payload (stalls ox) gets an answer at once, without a next request."""
    dom0 = await Raw.open(server.socket_path)
    guest = await _guest(server, dom0, 5)
    for c in (dom0, guest):
        for op in (Op.READ, Op.WRITE, Op.DIRECTORY, Op.TRANSACTION_START, Op.WATCH):
            c.writer.write(_header(op, 0))
            assert (await c.reply()).op in (op, Op.ERROR)


def test_quirk_watch_with_three_strings(h: Harness) -> None:
    g5 = h.guest(5)
    assert h.rq(g5, Op.WATCH, "/local/domain/5", "t", "extra")[0] in ("WATCH", "ERROR")
    assert len(g5.watches) <= 1
    assert h.xs.domains[5].watches == len(g5.watches)


@pytest.mark.parametrize("perm", ["w", "x0", "r1x", "b0x10", "n-1"])
def test_quirk_bad_permission_strings(h: Harness, perm: str) -> None:
    g5 = h.guest(5)
    h.write(g5, "/local/domain/5/p", "")
    before = h.ok(g5, Op.GET_PERMS, "/local/domain/5/p")
    kind, _ = h.rq(g5, Op.SET_PERMS, "/local/domain/5/p", perm)
    if kind == "ERROR":
        assert h.ok(g5, Op.GET_PERMS, "/local/domain/5/p") == before
    served(h)


def test_quirk_rm_root(h: Harness) -> None:
    n = nodes(h)
    assert h.err(h.dom0, Op.RM, "/") == "EINVAL"
    assert nodes(h) == n


def test_quirk_write_at_name(h: Harness) -> None:
    g5 = h.guest(5)
    for conn in (h.dom0, g5):
        assert h.err(conn, Op.WRITE, "@foo", "x") == "EINVAL"
    assert h.xs.store.get("@foo") is None


def test_quirk_directory_part_offset_off_boundary(h: Harness) -> None:
    for name in ("alpha", "beta", "gamma"):
        wr(h, h.dom0, f"/dp/{name}", "")
    for off in ("1", "3", "7", "999", "-1", "x"):
        kind, _ = h.rq(h.dom0, Op.DIRECTORY_PART, "/dp", off)
        assert kind in ("DIRECTORY_PART", "ERROR")
    served(h)


def test_quirk_tx_id_from_another_connection(h: Harness) -> None:
    g5, g6 = h.guest(5), h.guest(6)
    tx = h.start(g5)
    assert h.err(g6, Op.WRITE, "/local/domain/6/x", "1", tx=tx) == "ENOENT"
    assert h.err(h.dom0, Op.READ, "/tool", tx=tx) == "ENOENT"
    assert h.end(g5, tx) == "OK"


def test_quirk_transaction_start_with_nonzero_tx(h: Harness) -> None:
    g5 = h.guest(5)
    assert h.err(g5, Op.TRANSACTION_START, "", tx=77) == "ENOENT"
    tx = h.start(g5)
    h.rq(g5, Op.TRANSACTION_START, "", tx=tx)  # nested: whatever the answer, bounded
    assert len(g5.transactions) <= 2
    assert h.xs.domains[5].transactions == len(g5.transactions)


def test_quirk_value_with_embedded_nuls(h: Harness) -> None:
    g5 = h.guest(5)
    value = b"a\0b\0\0c"
    assert h.write(g5, "/local/domain/5/v", value)[0] == "WRITE"
    assert h.ok(g5, Op.READ, "/local/domain/5/v") == value


async def test_quirk_4096_and_4097_byte_payloads(server: XenStoreServer) -> None:
    dom0 = await Raw.open(server.socket_path)
    path = b"/p\0"
    r = await dom0.rpc(Op.WRITE, raw=path + b"v" * (4096 - len(path)))
    assert r.op == Op.WRITE
    bad = await Raw.open(server.socket_path)
    bad.writer.write(_header(Op.WRITE, 4097) + path + b"v" * (4097 - len(path)))
    assert await bad.reader.read() == b""
    assert len((await dom0.rpc(Op.READ, "/p")).payload) == 4096 - len(path)


async def test_quirk_dom0_watcher_never_reads_while_guest_writes(
    server: XenStoreServer,
) -> None:
    """A dom0 watcher that never reads while a guest writes (the outstanding-request stall
    of cx's ``outstanding`` quota, 20 per domain): the guest keeps being served and the
    core holds no queued output; what is held is the dom0 transport buffer (dom0 is trusted
    and never throttled)."""
    dom0 = await Raw.open(server.socket_path)
    guest = await _guest(server, dom0, 5)
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(server.socket_path))
    lazy.sendall(encode(Packet(Op.WATCH, b"/local/domain/5\0" + b"k" * 500 + b"\0")))
    await dom0.rpc(Op.GET_DOMAIN_PATH, "0")
    for i in range(200):
        r = await guest.rpc(Op.WRITE, raw=f"/local/domain/5/k{i % 10}\0{i}".encode())
        assert r.op == Op.WRITE
    assert sum(len(c.outbox) for c in server.core.connections.values()) == 0
    assert (await dom0.rpc(Op.READ, "/local/domain/5/k9")).payload == b"199"
    lazy.close()


def test_unknown_type_is_enosys(h: Harness) -> None:
    g5 = h.guest(5)
    for op in (26, 27, 100, 0xFFFFFFFF):
        assert h.rq(g5, op, raw=b"x\0") == ("ERROR", b"ENOSYS\0")
    served(h)


def test_reused_domid_starts_clean_watches_and_perms(h: Harness) -> None:
    """Issue 7: destruction removes nodes, watches, transactions and ACL entries naming
    the domain in other domains' nodes; the new domain starts clean."""
    g5, g6 = h.guest(5), h.guest(6)
    h.write(g6, "/local/domain/6/shared", "s")
    h.ok(g6, Op.SET_PERMS, "/local/domain/6/shared", "n6", "b5")
    assert h.ok(g5, Op.READ, "/local/domain/6/shared") == b"s"
    h.ok(g5, Op.WATCH, "/local/domain/6", "spy")
    h.start(g5)
    _destroy_and_reuse(h, 5)
    assert len(h.xs.watches) == 0
    g5b = h.guest(5)
    assert h.err(g5b, Op.READ, "/local/domain/6/shared") == "EACCES"
    assert h.xs.domains[5].watches == 0 and h.xs.domains[5].transactions == 0
