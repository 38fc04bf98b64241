"""The sans-IO ring core: both ends of one page in a bytearray, no daemon, no I/O."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, encode
from stubdom.xenstore.ring import (
    CONNECTED,
    CONNECTION,
    GUEST,
    PAGE_MIN,
    RECONNECT,
    REQ_CONS,
    REQ_PROD,
    RING_SIZE,
    RSP_CONS,
    RSP_PROD,
    SERVER,
    Outstanding,
    RingEnd,
    RingIndexError,
    spans,
    used,
)

U32 = 2**32
indexes = st.integers(0, U32 - 1)


def page_at(start: int) -> bytearray:
    """A page whose four indexes all start at ``start`` (guests must not assume 0)."""
    page = bytearray(4096)
    for off in (REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD):
        struct.pack_into("<I", page, off, start)
    return page


@given(indexes, st.integers(0, RING_SIZE))
def test_spans_cover_the_bytes_in_order(index: int, length: int) -> None:
    pieces = spans(index, length)
    assert sum(k for _, k in pieces) == length
    assert len(pieces) <= 2
    pos = index
    for off, k in pieces:
        assert off == pos % RING_SIZE
        assert k > 0 and off + k <= RING_SIZE
        pos += k


@given(indexes, st.integers(0, RING_SIZE))
def test_used_wraps_at_2_32(cons: int, n: int) -> None:
    assert used(cons, (cons + n) % U32) == n


@given(indexes, st.integers(RING_SIZE + 1, U32 - 1))
def test_used_rejects_impossible_indexes(cons: int, n: int) -> None:
    with pytest.raises(RingIndexError):
        used(cons, (cons + n) % U32)


def test_a_short_buffer_is_refused() -> None:
    with pytest.raises(ValueError):
        RingEnd(bytearray(PAGE_MIN - 1))


messages = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    start=st.one_of(indexes, st.integers(U32 - 3 * RING_SIZE, U32 - 1)),
    requests=messages,
    replies=messages,
    limits=st.lists(st.integers(1, RING_SIZE), min_size=1, max_size=20),
)
def test_streams_cross_wrap_overflow_and_ring_fulls(
    start: int, requests: list[bytes], replies: list[bytes], limits: list[int]
) -> None:
    """Both directions at once, the server reading in pieces of random size: every byte
    arrives once and in order, across the wrap, past 2**32, and messages larger than
    the ring (many ring-fulls)."""
    page = page_at(start)
    guest, server = RingEnd(page, GUEST), RingEnd(page, SERVER)
    for m in requests:
        guest.send(m)
    for m in replies:
        server.send(m)
    got_req, got_rsp = bytearray(), bytearray()
    want_req, want_rsp = b"".join(requests), b"".join(replies)
    i = 0
    while len(got_req) < len(want_req) or len(got_rsp) < len(want_rsp):
        step = guest.pump()
        got_rsp += step.received
        got_req += server.receive(limits[i % len(limits)])
        server.transmit()
        assert 0 <= guest.pending_out() <= RING_SIZE
        i += 1
        assert i < 10_000
    assert bytes(got_req) == want_req and bytes(got_rsp) == want_rsp
    assert guest.queued == 0 and server.queued == 0
    end_req = (start + len(want_req)) % U32
    assert struct.unpack_from("<2I", page, REQ_CONS) == (end_req, end_req)


@settings(max_examples=100, deadline=None)
@given(start=indexes, sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=5))
def test_writes_never_overrun_the_consumer(start: int, sizes: list[int]) -> None:
    """With nobody consuming, the guest fills exactly one ring and stops (backpressure)."""
    page = page_at(start)
    guest = RingEnd(page, GUEST)
    for n in sizes:
        guest.send(b"x" * n)
    total = sum(sizes)
    first = guest.transmit()
    assert first == min(total, RING_SIZE)
    assert guest.transmit() == 0
    assert guest.queued == total - first
    assert guest.pending_out() == first


def test_step_kicks_only_when_an_index_moved() -> None:
    page = page_at(0)
    guest, server = RingEnd(page, GUEST), RingEnd(page, SERVER)
    assert not guest.pump().kick
    guest.send(b"abc")
    assert guest.pump().kick
    assert server.receive() == b"abc"
    server.send(b"de")
    server.transmit()
    step = guest.pump()
    assert step.kick and step.received == b"de"


def test_corrupt_indexes_are_detected_before_data() -> None:
    page = page_at(0)
    struct.pack_into("<I", page, RSP_PROD, 5000)
    with pytest.raises(RingIndexError):
        RingEnd(page, GUEST).pump()
    assert struct.unpack_from("<I", page, RSP_CONS)[0] == 0  # nothing consumed


def test_reconnect_handshake_fields() -> None:
    page = page_at(77)
    guest, server = RingEnd(page, GUEST), RingEnd(page, SERVER)
    guest.send(b"half a message")
    guest.ask_reconnect()
    assert guest.connection == RECONNECT and guest.queued == 0
    server.reset()
    assert guest.connection == CONNECTED
    assert struct.unpack_from("<4I", page, REQ_CONS) == (0, 0, 0, 0)
    assert struct.unpack_from("<I", page, CONNECTION)[0] == CONNECTED


def _packets(ops: list[int]) -> bytes:
    return b"".join(
        encode(Packet(op, b"p" * (i % 7) + b"\0", i + 1, 0)) for i, op in enumerate(ops)
    )


@given(
    ops=st.lists(st.sampled_from([Op.READ, Op.WATCH_EVENT, Op.WRITE, Op.ERROR]), max_size=20),
    cuts=st.lists(st.integers(1, 40), max_size=50),
)
def test_outstanding_counts_replies_not_events_in_any_chunking(
    ops: list[int], cuts: list[int]
) -> None:
    replies = sum(op != Op.WATCH_EVENT for op in ops)
    counter = Outstanding()
    counter.sent(replies + 2)
    data = _packets(ops)
    pos = 0
    for n in cuts:
        counter.received(data[pos : pos + n])
        pos += n
    counter.received(data[pos:])
    assert counter.count == 2
