"""xsraw.RingConn, the guest side of a shim ring page, without a daemon: how it moves the
indexes, and what a stalled ring says when it times out."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import xsraw

REQUEST = xsraw.HEADER.pack(xsraw.T["READ"], 7, 0, 3) + b"/a\0"  # 19 bytes
NEAR_WRAP = 0xFFFF_FFF8  # the free-running indexes wrap at 2**32 in mid-packet


@pytest.fixture
def page(tmp_path: Path) -> Path:
    p = tmp_path / "ring-5"
    p.write_bytes(bytes(xsraw.PAGE))
    return p


@pytest.fixture
def kicks() -> list[int]:
    return []


@pytest.fixture
def ring(page: Path, kicks: list[int]) -> Iterator[xsraw.RingConn]:
    c = xsraw.RingConn(str(page), lambda: kicks.append(1), timeout=0.02)
    yield c
    c.close()


def _set(page: Path, offset: int, *values: int) -> None:
    with open(page, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(f"<{len(values)}I", *values))


def test_a_request_is_published_then_kicked(ring: xsraw.RingConn, kicks: list[int]) -> None:
    ring.send(REQUEST)
    assert ring.idx() == (0, len(REQUEST), 0, 0)
    assert bytes(ring.m[: len(REQUEST)]) == REQUEST
    assert kicks == [1]


def test_the_indexes_wrap_at_2_to_the_32(page: Path) -> None:
    _set(page, xsraw.IDX_OFF, NEAR_WRAP, NEAR_WRAP, NEAR_WRAP, (NEAR_WRAP + 16) & xsraw.MASK)
    reply = xsraw.HEADER.pack(xsraw.T["READ"], 7, 0, 0)
    with open(page, "r+b") as f:  # the daemon's reply, split by the end of the ring
        f.seek(xsraw.RSP_OFF + 1016)
        f.write(reply[:8])
        f.seek(xsraw.RSP_OFF)
        f.write(reply[8:])
    c = xsraw.RingConn(str(page), lambda: None, timeout=0.02)
    try:
        c.send(REQUEST)
        assert c.recv_exact(16) == reply
        assert c.idx() == (NEAR_WRAP, (NEAR_WRAP + 19) & xsraw.MASK, 8, 8)
        assert bytes(c.m[1016:1024]) + bytes(c.m[:11]) == REQUEST
    finally:
        c.close()


def test_an_unconsumed_request_times_out_naming_the_indexes(ring: xsraw.RingConn) -> None:
    ring.send(REQUEST)
    with pytest.raises(xsraw.RingTimeout) as e:
        ring.recv_exact(16)
    assert str(e.value).endswith(
        "(0 of 16 bytes): req_cons=0 req_prod=19 rsp_cons=0 rsp_prod=0 server_features=0"
        " connection=0 error=0 (none): the daemon has not consumed 19 request bytes"
    )


def test_a_ring_the_daemon_gave_up_on_says_so(page: Path, ring: xsraw.RingConn) -> None:
    _set(page, xsraw.IDX_OFF, 19, 19, 1500, 1500)
    _set(page, xsraw.STATUS_OFF + 8, 2)  # cx's ignore_connection: XENSTORE_ERROR_RINGIDX
    with pytest.raises(xsraw.RingTimeout, match=r"req_cons=19 req_prod=19 rsp_cons=1500 "
                       r"rsp_prod=1500 .* error=2 \(XENSTORE_ERROR_RINGIDX\): the daemon "
                       r"flagged the ring and ignores it"):  # fmt: skip
        ring.recv_exact(16)


def test_a_full_request_ring_times_out_naming_the_indexes(ring: xsraw.RingConn) -> None:
    with pytest.raises(xsraw.RingTimeout, match=r"request ring full .* req_cons=0 "
                       r"req_prod=1024 .* not consumed 1024 request bytes"):  # fmt: skip
        ring.send(bytes(1100))


def test_a_timeout_is_a_timeout_error_for_the_callers(ring: xsraw.RingConn) -> None:
    """Channel and xsraw.rpc's callers catch TimeoutError."""
    with pytest.raises(TimeoutError):
        ring.recv_exact(1)
