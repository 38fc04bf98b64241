"""The xenstore proxy's core, without sockets: which requests wait for the save relay."""

from __future__ import annotations

import struct

from stubdom.minios.gate import BARRIER, RequestGate
from stubdom.protocol import dm_state_write_paths
from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, encode, join_args

STUB, GUEST = 7, 5
RELATIVE, ABSOLUTE = dm_state_write_paths(STUB, GUEST)


def gate() -> RequestGate:
    return RequestGate(dm_state_write_paths(STUB, GUEST))


def write(path: str, value: str, req_id: int = 1) -> bytes:
    return encode(Packet(Op.WRITE, path.encode() + b"\0" + value.encode(), req_id))


def read(path: str, req_id: int = 1) -> bytes:
    return encode(Packet(Op.READ, join_args(path), req_id))


def test_the_state_node_is_named_relative_and_absolute() -> None:
    assert RELATIVE == "device-model/5/state"
    assert ABSOLUTE == "/local/domain/7/device-model/5/state"


def test_other_requests_pass_as_the_bytes_they_came_as_even_split_anywhere() -> None:
    stream = read("device-model/5/state") + write("device-model/5/parameter", "x", 2) + \
        write("/local/domain/7/device-model/6/state", "paused", 3) + read("target", 4)
    g = gate()
    out = b""
    for i in range(len(stream)):
        for item in g.feed(stream[i : i + 1]):
            assert item is not BARRIER
            assert isinstance(item, bytes)
            out += item
    assert out == stream and g.pending_bytes == 0


def test_a_packet_goes_on_only_once_whole() -> None:
    g = gate()
    pkt = read("domid")
    assert g.feed(pkt[:20]) == []
    assert g.pending_bytes == 20
    assert g.feed(pkt[20:]) == [pkt]


def test_a_write_of_the_state_node_waits_behind_a_barrier_relative_or_absolute() -> None:
    for path in (RELATIVE, ABSOLUTE):
        before, held, after = read("a"), write(path, "paused", 2), read("b", 3)
        assert gate().feed(before + held + after) == [before, BARRIER, held + after]


def test_two_state_writes_in_one_read_get_a_barrier_each() -> None:
    w1, w2 = write(RELATIVE, "paused"), write(ABSOLUTE, "running", 2)
    assert gate().feed(w1 + w2) == [BARRIER, w1, BARRIER, w2]


def test_a_header_no_xenstored_accepts_makes_the_rest_pass_raw() -> None:
    g = gate()
    bad = struct.pack("=4I", Op.WRITE, 1, 0, 1 << 20) + b"junk"
    assert g.feed(bad) == [bad]  # forwarded: xenstored closes the connection
    assert g.raw
    assert g.feed(write(RELATIVE, "paused")) == [write(RELATIVE, "paused")]
