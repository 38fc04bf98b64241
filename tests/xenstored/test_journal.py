"""The write-ahead journal: record format, replay, compaction and damage (in process)."""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stubdom.wire import Op, Packet, join_args
from stubdom.wire.perms import Access, Perm
from stubdom.xenstored import journal
from stubdom.xenstored.core import Connection, XenStored
from stubdom.xenstored.persist import JOURNAL, SNAPSHOT, DurableState, StateError
from stubdom.xenstored.store import Node, Store
from tests.xenstored.harness import Harness


class DurableHarness(Harness):
    """A harness whose requests are journalled as the server does it."""

    def __init__(self, state_dir: Path, compact_at: int = 1 << 30) -> None:
        super().__init__()
        self.durable = DurableState(self.xs, state_dir, compact_at)
        self.durable.open()

    def rq(
        self, conn: Connection, op: int, *args: str | bytes, tx: int = 0, raw: bytes | None = None
    ) -> tuple[str, bytes]:
        payload = raw if raw is not None else join_args(*args)
        self.xs.handle(conn, Packet(op, payload, 42, tx))
        self.durable.commit()
        # Re-dispatch the queued output through the parent's reply collection.
        return self._collect(conn, tx)

    def _collect(self, conn: Connection, tx: int) -> tuple[str, bytes]:
        reply: tuple[str, bytes] | None = None
        for c in [*list(self.xs.pending()), conn]:
            for p in map(Packet._make, c.take_output()):
                if c is conn and p.op != Op.WATCH_EVENT:
                    reply = (p.type_name, p.payload)
        assert reply is not None
        return reply


def tree(xs: XenStored) -> list[tuple[str, bytes, list[str], list[str], list[int]]]:
    """Everything a restart must keep, in walk order (children order included)."""
    walked = [
        (path, n.value, [str(p) for p in n.perms], list(n.children), sorted(n.ignored))
        for path, n in xs.store.walk("/")
    ]
    assert sorted(p for p, *_ in walked) == sorted(xs.store.nodes), "unreachable nodes"
    return walked


def reopen(state_dir: Path) -> XenStored:
    xs = XenStored()
    DurableState(xs, state_dir).open()
    return xs


# -- the record format ----------------------------------------------------------------


def test_record_round_trip_and_scan() -> None:
    a = journal.encode_record(1, [["del", "/x"]])
    b = journal.encode_record(2, [["put", "/y", "dg==", ["n0"], [], None]])
    result = journal.scan(a + b)
    assert [r.seq for r in result.records] == [1, 2]
    assert result.valid == len(a + b) and result.problem == ""
    assert result.records[1].offset == len(a)


@pytest.mark.parametrize("cut", [1, journal.HEADER_SIZE - 1, journal.HEADER_SIZE + 3])
def test_a_record_cut_short_at_the_end_is_a_torn_tail(cut: int) -> None:
    a = journal.encode_record(1, [["del", "/x"]])
    b = journal.encode_record(2, [["del", "/y"]])
    result = journal.scan(a + b[:cut])
    assert [r.seq for r in result.records] == [1]
    assert result.valid == len(a)
    assert result.torn_tail and "cut short" in result.problem


def test_damage_is_found_and_named() -> None:
    a = journal.encode_record(1, [["del", "/x"]])
    b = bytearray(journal.encode_record(2, [["del", "/y"]]))
    b[-2] ^= 0x40
    result = journal.scan(a + bytes(b))
    assert result.valid == len(a) and not result.torn_tail
    assert result.problem == f"record 2 at byte {len(a)} fails its checksum"
    bad_magic = b"XXXX" + journal.encode_record(1, [])[4:]
    assert "damaged header" in journal.scan(bad_magic).problem
    gap = a + journal.encode_record(3, [])
    assert "has sequence 3, expected 2" in journal.scan(gap).problem
    payload = b"not json"
    garbage = journal._HEADER.pack(journal.MAGIC, len(payload), zlib.crc32(payload)) + payload
    assert "not a journal record" in journal.scan(garbage).problem


def test_children_are_journalled_as_a_delta_when_that_is_shorter() -> None:
    old = Node(b"", (Perm(Access.NONE, 0),))
    for i in range(100):
        old.add_child(f"c{i}")
    new = old.copy()
    new.add_child("c100")
    assert journal.children_spec(new, old) == ["+", ["c100"], []]
    new.remove_child("c5")
    assert journal.children_spec(new, old) == ["+", ["c100"], ["c5"]]
    assert journal.children_spec(old.copy(), old) is None
    # A reordering cannot be a delta.
    reordered = Node(b"", (Perm(Access.NONE, 0),))
    for name in reversed(list(old.children)):
        reordered.add_child(name)
    assert journal.children_spec(reordered, old) == ["=", list(reordered.children)]


def test_malformed_ops_are_journal_errors() -> None:
    store = Store()
    special: dict[str, tuple] = {}
    for op in (
        ["frob", "/x"],
        ["put", "/x"],
        ["put", "/x", "!!", ["n0"], [], None],
        ["put", "/x", "", ["q0"], [], None],
        ["put", "/x", "", [], [], None],
        ["put", "/x", "", ["n0"], [], ["+", ["a"], []]],
    ):
        with pytest.raises(journal.JournalError):
            journal.apply_ops(store, special, [op])


# -- durable state ----------------------------------------------------------------


def test_every_change_is_in_the_journal_before_the_reply(tmp_path: Path) -> None:
    h = DurableHarness(tmp_path)
    g5 = h.guest(5)
    h.write(h.dom0, "/keep/a", b"value\0a")
    h.ok(h.dom0, Op.SET_PERMS, "/keep/a", "n0", "r5")
    h.write(g5, "data/x", "mine")
    tx = h.start(h.dom0)
    h.write(h.dom0, "/tx/one", "1", tx=tx)
    h.write(h.dom0, "/tx/two", "2", tx=tx)
    h.ok(h.dom0, Op.TRANSACTION_END, "T", tx=tx)
    h.write(h.dom0, "/gone", "x")
    h.ok(h.dom0, Op.RM, "/gone")
    h.ok(h.dom0, Op.SET_PERMS, "@releaseDomain", "n0", "r5")
    # No clean stop: what a SIGKILL leaves is the journal alone.
    assert not (tmp_path / SNAPSHOT).exists()
    xs = reopen(tmp_path)
    assert tree(xs) == tree(h.xs)
    assert [str(p) for p in xs.special_perms["@releaseDomain"]] == ["n0", "r5"]
    # The ACL entry naming domain 5 still counts after the restart.
    r = Harness(xs)
    g5 = r.xs.connect(5)
    assert r.ok(g5, Op.READ, "/keep/a") == b"value\0a"


def test_requests_that_change_nothing_write_nothing(tmp_path: Path) -> None:
    h = DurableHarness(tmp_path)
    h.write(h.dom0, "/a", "1")
    size = (tmp_path / JOURNAL).stat().st_size
    h.ok(h.dom0, Op.READ, "/a")
    h.err(h.dom0, Op.READ, "/nope")
    h.ok(h.dom0, Op.WATCH, "/a", "tok")
    tx = h.start(h.dom0)
    h.write(h.dom0, "/b", "2", tx=tx)
    h.ok(h.dom0, Op.TRANSACTION_END, "F", tx=tx)
    assert (tmp_path / JOURNAL).stat().st_size == size


def test_compaction_writes_a_snapshot_and_empties_the_journal(tmp_path: Path) -> None:
    h = DurableHarness(tmp_path, compact_at=2000)
    for i in range(200):
        h.write(h.dom0, f"/many/k{i}", f"v{i}")
    assert (tmp_path / SNAPSHOT).exists()
    assert (tmp_path / JOURNAL).stat().st_size < 2000
    assert tree(reopen(tmp_path)) == tree(h.xs)


def test_records_already_in_the_snapshot_are_not_replayed_twice(tmp_path: Path) -> None:
    h = DurableHarness(tmp_path)
    h.write(h.dom0, "/a", "1")
    h.ok(h.dom0, Op.RM, "/a")
    h.write(h.dom0, "/a/b", "2")
    saved = (tmp_path / JOURNAL).read_bytes()
    h.durable.compact()
    # A crash between the snapshot's rename and the journal's truncation.
    (tmp_path / JOURNAL).write_bytes(saved)
    h.write(h.dom0, "/c", "3")  # appended after the stale records, sequence goes on
    assert tree(reopen(tmp_path)) == tree(h.xs)


def test_a_torn_tail_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = DurableHarness(tmp_path)
    h.write(h.dom0, "/a", "1")
    expected = tree(h.xs)
    h.write(h.dom0, "/b", "2")
    data = (tmp_path / JOURNAL).read_bytes()
    (tmp_path / JOURNAL).write_bytes(data[:-5])
    with caplog.at_level(logging.WARNING):
        xs = reopen(tmp_path)
    assert tree(xs) == expected
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "cut short" in lines[0] and "never acknowledged" in lines[0]
    # The tail is gone for good: the next restart finds a clean directory.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert tree(reopen(tmp_path)) == expected
    assert not caplog.records


def test_a_damaged_journal_is_reported_in_one_line_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = DurableHarness(tmp_path)
    h.write(h.dom0, "/a", "1")
    expected = tree(h.xs)
    h.write(h.dom0, "/b", "2")
    h.write(h.dom0, "/c", "3")
    data = bytearray((tmp_path / JOURNAL).read_bytes())
    second = journal.scan(bytes(data)).records[1].offset
    data[second + journal.HEADER_SIZE + 2] ^= 0x01
    (tmp_path / JOURNAL).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        xs = reopen(tmp_path)
    assert tree(xs) == expected
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert f"record 2 at byte {second} fails its checksum" in lines[0]
    kept = list(tmp_path.glob(f"{JOURNAL}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)
    assert str(kept[0]) in lines[0]


def test_a_foreign_snapshot_refuses_to_start_and_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / SNAPSHOT).write_text('{"nodes": [{"path": "/"}]}')
    with pytest.raises(StateError, match="not a stubdom xenstored snapshot"):
        DurableState(XenStored(), tmp_path).open()
    assert (tmp_path / SNAPSHOT).read_text() == '{"nodes": [{"path": "/"}]}'
    assert not (tmp_path / JOURNAL).exists()


def test_a_clean_close_leaves_only_a_snapshot(tmp_path: Path) -> None:
    h = DurableHarness(tmp_path)
    h.write(h.dom0, "/a", "1")
    h.durable.close()
    assert (tmp_path / JOURNAL).stat().st_size == 0
    assert tree(reopen(tmp_path)) == tree(h.xs)


# -- any sequence of requests survives a restart exactly --------------------------------

NAMES = st.sampled_from(list("abcdefgh"))
PATHS = st.lists(NAMES, min_size=1, max_size=2).map(lambda parts: "/t/" + "/".join(parts))
REQUESTS = st.one_of(
    st.tuples(st.just("write"), PATHS, st.binary(max_size=8)),
    st.tuples(st.just("mkdir"), PATHS),
    st.tuples(st.just("rm"), PATHS),
    st.tuples(st.just("perms"), PATHS, st.sampled_from(["n0", "r0", "b0"]), st.integers(1, 3)),
    st.tuples(st.just("guest-write"), PATHS, st.binary(max_size=4)),
    st.tuples(st.just("tx"), st.lists(st.tuples(PATHS, st.binary(max_size=4)), max_size=3)),
    st.tuples(st.just("release"), st.just(3)),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(REQUESTS, max_size=25), st.integers(200, 5000))
def test_any_request_sequence_replays_to_the_same_tree(
    tmp_path_factory: pytest.TempPathFactory, requests: list[tuple], compact_at: int
) -> None:
    state_dir = tmp_path_factory.mktemp("state")
    h = DurableHarness(state_dir, compact_at)
    g3 = h.guest(3, home=False)
    h.ok(h.dom0, Op.MKDIR, "/t")
    h.ok(h.dom0, Op.SET_PERMS, "/t", "n0", "b3")
    for req in requests:
        kind = req[0]
        if kind == "write":
            h.write(h.dom0, req[1], req[2])
        elif kind == "mkdir":
            h.rq(h.dom0, Op.MKDIR, req[1])
        elif kind == "rm":
            h.rq(h.dom0, Op.RM, req[1])
        elif kind == "perms":
            h.rq(h.dom0, Op.SET_PERMS, req[1], req[2], f"r{req[3]}")
        elif kind == "guest-write" and not g3.closed:
            h.write(g3, req[1], req[2])
        elif kind == "tx":
            tx = h.start(h.dom0)
            for path, value in req[1]:
                h.write(h.dom0, path, value, tx=tx)
            h.rq(h.dom0, Op.TRANSACTION_END, "T", tx=tx)
        elif kind == "release" and not g3.closed:
            h.xs.destroy_domain(3)
            h.durable.commit()
    assert tree(reopen(state_dir)) == tree(h.xs)


# -- a journal that cannot be written ----------------------------------------------------


async def test_a_journal_write_failure_stops_the_server_without_replying(tmp_path: Path) -> None:
    from stubdom.xenstored.server import XenStoreServer
    from tests.support.daemons import short_tmpdir
    from tests.xenstored.test_server import Raw

    xs = XenStored()
    durable = DurableState(xs, tmp_path)
    durable.open()
    server = XenStoreServer(short_tmpdir() / "socket", xs, durable=durable)
    await server.start()
    try:
        client = await Raw.open(server.socket_path)
        assert (await client.rpc(Op.WRITE, raw=b"/saved\0x")).op == Op.WRITE
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, durable._fd)  # the disk is full from now on
        os.close(full)
        with pytest.raises(ConnectionError):
            await client.rpc(Op.WRITE, raw=b"/unsaved\0y")
        assert "cannot write the journal" in server.failure
        assert "No space left on device" in server.failure
        assert server.stopped
    finally:
        await server.close()
    assert tree(reopen(tmp_path))[-1][0] == "/saved"


# -- introductions ------------------------------------------------------------------------


def domains(xs: XenStored) -> list[tuple[int, int, int | None, int]]:
    return sorted(
        (d.domid, d.port, d.target, d.target_refs)
        for d in xs.domains.values()
        if d.introduced and d.domid != 0
    )


@pytest.mark.parametrize("compact", [False, True])
def test_introductions_and_targets_survive_a_restart(tmp_path: Path, compact: bool) -> None:
    h = DurableHarness(tmp_path)
    h.guest(5)
    h.guest(6)
    h.guest(7)
    h.ok(h.dom0, Op.SET_TARGET, "6", "5")
    h.ok(h.dom0, Op.RELEASE, "7")
    h.ok(h.dom0, Op.INTRODUCE, "6", "0", "99")  # a new port
    if compact:
        h.durable.compact()
    assert domains(h.xs) == [(5, 15, None, 1), (6, 99, 5, 0)]
    xs = reopen(tmp_path)
    assert domains(xs) == domains(h.xs)
    # The stubdomain still acts with its target's rights after the restart.
    r = Harness(xs)
    g6 = r.xs.connect(6)
    r.write(r.dom0, "/local/domain/5/secret", "x")
    assert r.ok(g6, Op.READ, "/local/domain/5/secret") == b"x"
    assert r.ok(r.dom0, Op.IS_DOMAIN_INTRODUCED, "7") == b"F\0"


async def test_a_restarted_server_listens_for_its_domains_again(tmp_path: Path) -> None:
    from stubdom.xenstored.server import XenStoreServer
    from tests.support.daemons import short_tmpdir
    from tests.xenstored.test_server import Raw

    sock = short_tmpdir() / "socket"
    for run in range(2):
        xs = XenStored()
        durable = DurableState(xs, tmp_path)
        durable.open()
        server = XenStoreServer(sock, xs, durable=durable)
        await server.start()
        try:
            if run == 0:
                dom0 = await Raw.open(server.socket_path)
                assert (await dom0.rpc(Op.INTRODUCE, "5", "0", "15")).op == Op.INTRODUCE
                assert (await dom0.rpc(Op.MKDIR, "/local/domain/5")).op == Op.MKDIR
                assert (await dom0.rpc(Op.SET_PERMS, "/local/domain/5", "n5")).op == Op.SET_PERMS
            else:
                guest = await Raw.open(server.domain_socket(5))
                assert (await guest.rpc(Op.WRITE, raw=b"data\0x")).op == Op.WRITE
                assert not server.domain_socket(6).exists()
        finally:
            await server.close()
        durable.close()
