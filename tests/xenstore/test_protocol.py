"""The sans-IO core and the error mapping, with byte strings only (no sockets)."""

from __future__ import annotations

import errno
import pickle
import struct

import pytest

from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, encode
from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import (
    ClientProtocol,
    DirectoryPager,
    NoEntry,
    ProtocolError,
    QuotaExceeded,
    Reply,
    TransactionConflict,
    WatchEvent,
    XenStoreError,
    error_from_name,
)
from stubdom.xenstore.protocol import (
    args_payload,
    parse_bool,
    parse_perms,
    parse_strings,
    parse_tx_id,
    perms_payload,
    write_payload,
)


def reply_bytes(op: int, payload: bytes, req_id: int, tx_id: int = 0) -> bytes:
    return encode(Packet(op, payload, req_id, tx_id))


def event_bytes(path: str, token: str) -> bytes:
    return encode(Packet(Op.WATCH_EVENT, f"{path}\0{token}\0".encode()))


# -- framing and ids ---------------------------------------------------------------


def test_send_encodes_header_and_payload() -> None:
    p = ClientProtocol()
    req, data = p.send(Op.READ, b"/a\0", tx_id=7)
    assert struct.unpack("=4I", data[:16]) == (Op.READ, req.req_id, 7, 3)
    assert data[16:] == b"/a\0"
    assert req.req_id != 0
    assert p.outstanding == [req]


def test_req_ids_are_unique_and_nonzero() -> None:
    p = ClientProtocol()
    ids = [p.send(Op.READ, b"/a\0")[0].req_id for _ in range(100)]
    assert len(set(ids)) == 100
    assert 0 not in ids


def test_req_id_wraps_skipping_zero_and_outstanding() -> None:
    p = ClientProtocol()
    p._next_id = 2**32 - 1  # white-box: force the wrap
    a, _ = p.send(Op.READ, b"/a\0")
    b, _ = p.send(Op.READ, b"/b\0")
    assert (a.req_id, b.req_id) == (2**32 - 1, 1)
    p._next_id = 1
    c, _ = p.send(Op.READ, b"/c\0")
    assert c.req_id == 2  # 1 is still outstanding


def test_payload_too_long_records_nothing() -> None:
    from stubdom.wire.packet import PayloadTooLong

    p = ClientProtocol()
    with pytest.raises(PayloadTooLong):
        p.send(Op.WRITE, b"x" * 5000)
    assert p.outstanding == []


# -- matching ------------------------------------------------------------------------


def test_replies_matched_by_req_id_out_of_order() -> None:
    p = ClientProtocol()
    reqs = [p.send(Op.READ, f"/{i}\0".encode())[0] for i in range(3)]
    p.receive_data(
        reply_bytes(Op.READ, b"two", reqs[2].req_id)
        + reply_bytes(Op.READ, b"zero", reqs[0].req_id)
        + reply_bytes(Op.READ, b"one", reqs[1].req_id)
    )
    got = {e.request.req_id: e.payload for e in p.events() if isinstance(e, Reply)}
    assert got == {reqs[0].req_id: b"zero", reqs[1].req_id: b"one", reqs[2].req_id: b"two"}
    assert p.outstanding == []


def test_req_id_zero_replies_match_oldest_first() -> None:
    p = ClientProtocol()
    reqs = [p.send(Op.READ, f"/{i}\0".encode())[0] for i in range(3)]
    p.receive_data(b"".join(reply_bytes(Op.READ, str(i).encode(), 0) for i in range(3)))
    events = list(p.events())
    assert [e.request for e in events if isinstance(e, Reply)] == reqs
    assert [e.payload for e in events if isinstance(e, Reply)] == [b"0", b"1", b"2"]


def test_mixed_matching_by_id_then_fifo() -> None:
    p = ClientProtocol()
    a, _ = p.send(Op.READ, b"/a\0")
    b, _ = p.send(Op.READ, b"/b\0")
    c, _ = p.send(Op.READ, b"/c\0")
    p.receive_data(reply_bytes(Op.READ, b"B", b.req_id) + reply_bytes(Op.READ, b"?", 0))
    events = [e for e in p.events() if isinstance(e, Reply)]
    assert [(e.request, e.payload) for e in events] == [(b, b"B"), (a, b"?")]
    assert p.outstanding == [c]


def test_abandoned_request_keeps_fifo_in_step() -> None:
    """A timed-out request's late reply must not be taken for the next request's."""
    p = ClientProtocol()
    slow, _ = p.send(Op.READ, b"/slow\0")
    p.abandon(slow)
    nxt, _ = p.send(Op.READ, b"/next\0")
    p.receive_data(reply_bytes(Op.READ, b"late", 0) + reply_bytes(Op.READ, b"fresh", 0))
    events = list(p.events())
    assert len(events) == 1
    assert isinstance(events[0], Reply)
    assert events[0].request is nxt
    assert events[0].payload == b"fresh"


def test_an_abandoned_transaction_start_leaves_an_orphan_to_end() -> None:
    """The server opened it for nobody: the shell must end it (TRANSACTION_END F)."""
    p = ClientProtocol()
    start, _ = p.send(Op.TRANSACTION_START, b"\0")
    refused, _ = p.send(Op.TRANSACTION_START, b"\0")
    read, _ = p.send(Op.READ, b"/a\0")
    for req in (start, refused, read):
        p.abandon(req)
    p.receive_data(
        reply_bytes(Op.TRANSACTION_START, b"17\0", start.req_id)
        + reply_bytes(Op.ERROR, b"EQUOTA\0", refused.req_id)
        + reply_bytes(Op.READ, b"x", read.req_id)
    )
    assert list(p.events()) == []
    assert p.take_orphans() == [17]
    assert p.take_orphans() == []


def test_replies_the_caller_never_saw_orphan_their_transaction() -> None:
    p = ClientProtocol()
    start, _ = p.send(Op.TRANSACTION_START, b"\0")
    read, _ = p.send(Op.READ, b"/a\0")
    p.receive_data(reply_bytes(Op.TRANSACTION_START, b"5\0", start.req_id)
                   + reply_bytes(Op.READ, b"5\0", read.req_id))
    replies = [e for e in p.events() if isinstance(e, Reply)]
    p.orphaned(replies)
    assert p.take_orphans() == [5]  # the READ's "5" is no transaction


def test_watch_events_interleaved_and_split_bytewise() -> None:
    p = ClientProtocol()
    req, _ = p.send(Op.WATCH, b"/a\0tok\0")
    stream = (
        reply_bytes(Op.WATCH, b"OK\0", req.req_id)
        + event_bytes("/a", "tok")
        + event_bytes("/a/b", "tok")
    )
    events: list[object] = []
    for i in range(len(stream)):
        p.receive_data(stream[i : i + 1])
        events.extend(p.events())
    assert isinstance(events[0], Reply)
    assert events[1:] == [WatchEvent("/a", "tok"), WatchEvent("/a/b", "tok")]


def test_watch_event_token_keeps_non_ascii_bytes() -> None:
    p = ClientProtocol()
    p.receive_data(encode(Packet(Op.WATCH_EVENT, b"/a\0t\xffk\0")))
    ev = p.next_event()
    assert isinstance(ev, WatchEvent)
    assert ev.token.encode("utf-8", "surrogateescape") == b"t\xffk"


def test_error_reply() -> None:
    p = ClientProtocol()
    req, _ = p.send(Op.READ, b"/a\0")
    p.receive_data(reply_bytes(Op.ERROR, b"ENOENT\0", req.req_id))
    ev = p.next_event()
    assert isinstance(ev, Reply)
    assert ev.is_error
    assert ev.error_name == "ENOENT"


def test_stray_reply_is_dropped() -> None:
    p = ClientProtocol()
    p.receive_data(reply_bytes(Op.READ, b"x", 5))
    assert p.next_event() is None


def test_undecodable_stream_raises_protocol_error() -> None:
    p = ClientProtocol(max_reply=10)
    with pytest.raises(ProtocolError):
        p.receive_data(struct.pack("=4I", Op.READ, 1, 0, 11))


def test_large_replies_accepted_by_default() -> None:
    """oxenstored's socket sends DIRECTORY replies above 4096 bytes."""
    p = ClientProtocol()
    req, _ = p.send(Op.DIRECTORY, b"/big\0")
    p.receive_data(struct.pack("=4I", Op.DIRECTORY, req.req_id, 0, 7000) + b"x" * 7000)
    ev = p.next_event()
    assert isinstance(ev, Reply)
    assert len(ev.payload) == 7000


def test_clear_forgets_everything() -> None:
    p = ClientProtocol()
    a, _ = p.send(Op.READ, b"/a\0")
    assert p.clear() == [a]
    assert p.outstanding == []


# -- payload helpers -----------------------------------------------------------------


def test_payload_helpers() -> None:
    assert args_payload() == b"\0"  # never len 0: ox stalls on empty payloads
    assert args_payload("/a", b"b") == b"/a\0b\0"
    assert write_payload("/a", b"v\0x") == b"/a\0v\0x"
    assert perms_payload("/a", [Perm(Access.NONE, 0), "r5"]) == b"/a\0n0\0r5\0"
    assert parse_strings(b"") == []
    assert parse_strings(b"a\0b\0") == ["a", "b"]
    assert parse_perms(b"n0\0b5\0") == [Perm(Access.NONE, 0), Perm(Access.BOTH, 5)]
    assert parse_tx_id(b"12\0") == 12
    assert parse_bool(b"T\0") is True
    assert parse_bool(b"F\0") is False
    for bad in (b"x\0", b"0\0", b"-1\0"):
        with pytest.raises(ProtocolError):
            parse_tx_id(bad)
    with pytest.raises(ProtocolError):
        parse_bool(b"yes\0")
    with pytest.raises(ProtocolError):
        parse_perms(b"q0\0")


# -- DIRECTORY_PART paging -----------------------------------------------------------


def test_pager_two_chunks() -> None:
    pg = DirectoryPager()
    assert pg.offset == 0
    assert not pg.feed(b"7\0aa\0bb\0")
    assert pg.offset == 6
    assert pg.feed(b"7\0cc\0\0")
    assert pg.names == ["aa", "bb", "cc"]


def test_pager_single_chunk_and_empty() -> None:
    pg = DirectoryPager()
    assert pg.feed(b"3\0a\0b\0\0")
    assert pg.names == ["a", "b"]
    empty = DirectoryPager()
    assert empty.feed(b"3\0\0")
    assert empty.names == []


def test_pager_restarts_on_generation_change() -> None:
    pg = DirectoryPager()
    assert not pg.feed(b"1\0aa\0")
    assert not pg.feed(b"2\0bb\0\0")  # list changed under us: start again at 0
    assert pg.offset == 0
    assert pg.restarts == 1
    assert not pg.feed(b"2\0aa\0xx\0")
    assert pg.feed(b"2\0bb\0\0")
    assert pg.names == ["aa", "xx", "bb"]


def test_pager_gives_up_after_too_many_restarts() -> None:
    pg = DirectoryPager(max_restarts=2)
    gen = 0
    with pytest.raises(ProtocolError):
        for _ in range(10):
            gen += 1
            pg.feed(f"{gen}\0aa\0".encode())


def test_pager_rejects_no_progress_and_garbage() -> None:
    pg = DirectoryPager()
    pg.feed(b"1\0aa\0")
    with pytest.raises(ProtocolError):
        pg.feed(b"1\0")
    with pytest.raises(ProtocolError):
        DirectoryPager().feed(b"no-nul")


# -- errors --------------------------------------------------------------------------


def test_error_mapping() -> None:
    e = error_from_name("ENOENT", op="READ", path="/a/b")
    assert isinstance(e, NoEntry)
    assert isinstance(e, OSError)
    assert e.errno == errno.ENOENT
    assert e.name == "ENOENT"
    assert str(e) == "xenstore READ /a/b: ENOENT (No such file or directory)"
    assert isinstance(error_from_name("EAGAIN"), TransactionConflict)


def test_unknown_and_quota_errors_get_einval_number_but_keep_name() -> None:
    q = error_from_name("EQUOTA", op="WRITE", path="/x")
    assert isinstance(q, QuotaExceeded)
    assert (q.errno, q.name) == (errno.EINVAL, "EQUOTA")
    u = error_from_name("EWHATEVER")
    assert type(u) is XenStoreError
    assert (u.errno, u.name) == (errno.EINVAL, "EWHATEVER")


def test_subclass_constructor_defaults_name_and_pickles() -> None:
    e = NoEntry(op="RM", path="/x", message="gone")
    assert e.name == "ENOENT"
    assert "gone" in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is NoEntry
    assert (e2.name, e2.op, e2.path, str(e2)) == (e.name, e.op, e.path, str(e))


def test_receive_hands_over_what_is_queued_and_what_the_bytes_complete() -> None:
    p = ClientProtocol()
    a, _ = p.send(Op.READ, b"/a\0")
    b, _ = p.send(Op.READ, b"/b\0")
    p.receive_data(reply_bytes(Op.READ, b"A", a.req_id))  # queued
    stream = event_bytes("/w", "t") + reply_bytes(Op.READ, b"B", b.req_id)
    first = p.receive(stream[:20])  # the event is not whole yet
    assert [(e.request, e.payload) for e in first if isinstance(e, Reply)] == [(a, b"A")]
    assert len(first) == 1 and p.next_event() is None  # nothing left in the queue
    second = p.receive(stream[20:])
    assert second[0] == WatchEvent("/w", "t")
    assert isinstance(second[1], Reply) and second[1].request is b
    assert [e.seq for e in first + second] == [1, 2, 3]
    assert p.receive(b"") == []


def test_receive_in_pieces_matches_receive_data() -> None:
    p = ClientProtocol()
    a, _ = p.send(Op.READ, b"/a\0")
    stream = event_bytes("/w", "t") + reply_bytes(Op.READ, b"A", a.req_id)
    got = [e for i in range(len(stream)) for e in p.receive(stream[i : i + 1])]
    assert [type(e) for e in got] == [WatchEvent, Reply]
    assert [e.seq for e in got] == [1, 2]
    assert isinstance(got[1], Reply) and got[1].request is a and got[1].payload == b"A"
