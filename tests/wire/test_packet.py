"""The header codec and the incremental decoder, with no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stubdom.wire import (
    HEADER_SIZE,
    PAYLOAD_MAX,
    MissingTerminator,
    Op,
    Packet,
    PacketDecoder,
    PayloadTooLong,
    UnknownType,
    encode,
    join_args,
    split_args,
)
from stubdom.wire.constants import ERRNO_NAMES, TYPE_COUNT
from stubdom.wire.packet import error_packet, op_name, validate_type


def test_message_type_numbers_match_xs_wire_h() -> None:
    expected = {
        "CONTROL": 0,
        "DIRECTORY": 1,
        "READ": 2,
        "GET_PERMS": 3,
        "WATCH": 4,
        "UNWATCH": 5,
        "TRANSACTION_START": 6,
        "TRANSACTION_END": 7,
        "INTRODUCE": 8,
        "RELEASE": 9,
        "GET_DOMAIN_PATH": 10,
        "WRITE": 11,
        "MKDIR": 12,
        "RM": 13,
        "SET_PERMS": 14,
        "WATCH_EVENT": 15,
        "ERROR": 16,
        "IS_DOMAIN_INTRODUCED": 17,
        "RESUME": 18,
        "SET_TARGET": 19,
        "RESTRICT": 20,
        "RESET_WATCHES": 21,
        "DIRECTORY_PART": 22,
    }
    assert {op.name: op.value for op in Op} == expected
    assert TYPE_COUNT == 23


def test_errno_table_order() -> None:
    assert ERRNO_NAMES[:5] == ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT")
    assert ERRNO_NAMES[-1] == "EPERM" and len(ERRNO_NAMES) == 16


def test_encode_is_host_order_header_then_payload() -> None:
    raw = encode(Packet(Op.READ, b"/a\0", req_id=7, tx_id=3))
    assert raw == struct.pack("=4I", 2, 7, 3, 3) + b"/a\0"
    assert len(raw) == HEADER_SIZE + 3


def test_encode_refuses_oversized_payload() -> None:
    encode(Packet(Op.WRITE, b"x" * PAYLOAD_MAX))
    with pytest.raises(PayloadTooLong, match="4097"):
        encode(Packet(Op.WRITE, b"x" * (PAYLOAD_MAX + 1)))


def test_decoder_rejects_overlong_header_and_stays_broken() -> None:
    d = PacketDecoder()
    good = encode(Packet(Op.READ, b"/a\0", 1))
    bad = struct.pack("=4I", 2, 0, 0, 4097)
    with pytest.raises(PayloadTooLong):
        d.feed(good + bad)
    assert [p.payload for p in d] == [b"/a\0"]
    with pytest.raises(PayloadTooLong):
        d.feed(b"more")


def test_decoder_huge_length_values() -> None:
    for length in (0x80000000, 0xFFFFFFFF):
        with pytest.raises(PayloadTooLong):
            PacketDecoder().feed(struct.pack("=4I", 2, 0, 0, length))


def test_decoder_keeps_unknown_types_for_the_server_to_refuse() -> None:
    d = PacketDecoder()
    d.feed(encode(Packet(0xFFFF, b"x\0")))
    p = d.next_packet()
    assert p is not None and p.op == 0xFFFF and p.type_name == "65535"
    with pytest.raises(UnknownType):
        validate_type(p.op)
    assert validate_type(22) is Op.DIRECTORY_PART


packets = st.builds(
    Packet,
    op=st.integers(0, 30),
    payload=st.binary(max_size=300),
    req_id=st.integers(0, 2**32 - 1),
    tx_id=st.integers(0, 2**32 - 1),
)


@given(st.lists(packets, max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=30))
def test_decoder_accepts_any_split(msgs: list[Packet], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in msgs)
    d = PacketDecoder()
    out: list[Packet] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        d.feed(stream[pos : pos + step])
        out.extend(d)
        pos += step
        i += 1
    assert out == msgs
    assert d.pending_bytes == 0


def test_args_helpers() -> None:
    assert join_args("a", b"b", "") == b"a\0b\0\0"
    assert split_args(b"a\0b\0") == [b"a", b"b"]
    assert split_args(b"a\0b\0", 2) == [b"a", b"b"]
    with pytest.raises(MissingTerminator):
        split_args(b"a\0b")
    with pytest.raises(ValueError, match="expected 3"):
        split_args(b"a\0b\0", 3)


def test_error_packets() -> None:
    req = Packet(Op.READ, b"/x\0", req_id=9, tx_id=4)
    err = error_packet(req, "ENOENT")
    assert (err.op, err.payload, err.req_id, err.tx_id) == (Op.ERROR, b"ENOENT\0", 9, 4)


def test_op_name_names_known_types_and_numbers_unknown_ones() -> None:
    assert op_name(Op.READ) == "READ" == Packet(Op.READ).type_name
    assert op_name(TYPE_COUNT + 5) == str(TYPE_COUNT + 5) == Packet(TYPE_COUNT + 5).type_name


def test_whole_takes_exactly_one_packet_and_only_when_nothing_is_pending() -> None:
    """The server's one-request read: the fields of exactly one packet, else None and
    `feed` takes the bytes (so order and partial packets stay the decoder's)."""
    read = encode(Packet(Op.READ, b"/a\0", 7, 3))
    d = PacketDecoder()
    assert d.whole(read) == (Op.READ, b"/a\0", 7, 3)
    assert type(d.whole(read)) is tuple
    assert d.whole(read[:-1]) is None  # short
    assert d.whole(read + read) is None  # two
    assert d.whole(read[:10]) is None  # not even a header
    d.feed(read[:5])
    assert d.whole(read) is None  # bytes are buffered
    d.feed(read[5:])
    assert d.whole(read) is None  # a packet is queued
    assert d.next_packet() == Packet(Op.READ, b"/a\0", 7, 3)
    assert d.whole(read) is not None
    assert PacketDecoder(max_payload=2).whole(read) is None  # over the limit
