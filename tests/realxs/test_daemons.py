"""The real cx and ox under the shim: start, answer, stop, and notify a guest's ring."""

from __future__ import annotations

import mmap
import os
import select
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom import realxs
from stubdom.realxs import Flavour, RealXenstored, RealXenstoredUnavailable
from stubdom.xenstore import Client
from tests.support import xsraw
from tests.support.daemons import need_peer, short_tmpdir

pytestmark = pytest.mark.peer

GUARD = 5.0  # seconds: a failure guard, not a timing assumption


@pytest.fixture(params=list(Flavour))
def flavour(request: pytest.FixtureRequest) -> Flavour:
    f = Flavour(request.param)
    need_peer(realxs.available(f), f"{realxs.daemon_binary(f)} (Debian xen-utils-4.17) and gcc")
    return f


@pytest.fixture
def daemon(flavour: Flavour) -> Iterator[RealXenstored]:
    run = short_tmpdir(f"{flavour}-")
    d = realxs.start(flavour, run, run / "xenstored" / "socket")
    yield d
    d.stop()


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def test_the_socket_answers_where_asked(daemon: RealXenstored) -> None:
    assert daemon.socket == daemon.run_dir / "xenstored" / "socket"
    c = await Client.connect(str(daemon.socket), timeout=GUARD)
    try:
        assert await c.read("/") == b""
        await c.write("/realxs/a", b"1")
        assert await c.read("/realxs/a") == b"1"
    finally:
        await c.close()


def test_the_fake_xen_holds_dom0(daemon: RealXenstored) -> None:
    fake = daemon.fake
    assert fake.dir == daemon.run_dir / "fake"
    assert fake.ring_page(0).stat().st_size == 4096
    assert fake.port(0) == 10  # the first port the shim binds
    assert fake.notify_fifo(0).is_fifo() and fake.evtchn.is_fifo()


def test_stop_leaves_no_process(daemon: RealXenstored) -> None:
    assert daemon.alive()
    daemon.stop()
    assert not daemon.alive() and _gone(daemon.pid)
    daemon.stop()  # twice is harmless


def _wait_notified(fd: int) -> int:
    """Bytes that arrived on a notify FIFO within GUARD seconds (0: none)."""
    ready, _, _ = select.select([fd], [], [], GUARD)
    return len(os.read(fd, 4096)) if ready else 0


def test_the_guest_is_notified_of_its_reply(daemon: RealXenstored) -> None:
    """A guest that never polls: it kicks once, then sleeps on its notify FIFO."""
    dom0 = xsraw.SockConn(str(daemon.socket), GUARD)
    assert xsraw.rpc(dom0, "INTRODUCE", "5", "0", "6").payload == b"OK\0"
    fake = daemon.fake
    port = fake.port(5)
    assert port is not None and fake.notify_fifo(5).is_fifo()
    notify = os.open(fake.notify_fifo(5), os.O_RDONLY | os.O_NONBLOCK)
    with open(fake.ring_page(5), "r+b") as f:
        ring = mmap.mmap(f.fileno(), 4096)
    try:
        while _pending(notify):
            pass  # whatever INTRODUCE itself notified
        request = xsraw.HEADER.pack(xsraw.T["GET_DOMAIN_PATH"], 9, 0, 2) + b"5\0"
        ring[xsraw.REQ_OFF : xsraw.REQ_OFF + len(request)] = request
        struct.pack_into("<I", ring, xsraw.REQ_PROD_OFF, len(request))
        fake.kick(port)
        expected = xsraw.HEADER.pack(xsraw.T["GET_DOMAIN_PATH"], 9, 0, 16) + b"/local/domain/5\0"
        notified = 0
        while struct.unpack_from("<I", ring, xsraw.IDX_OFF + 12)[0] < len(expected):
            woken = _wait_notified(notify)
            assert woken, "no notification while the reply is incomplete"
            notified += woken
        notified += _pending(notify)  # the reply may have been complete before we looked
        assert notified >= 1, "the daemon wrote the reply without notifying"
        assert ring[xsraw.RSP_OFF : xsraw.RSP_OFF + len(expected)] == expected
    finally:
        ring.close()
        os.close(notify)
        dom0.close()


def _pending(fd: int) -> int:
    """Bytes waiting on a notify FIFO now."""
    try:
        return len(os.read(fd, 4096))
    except BlockingIOError:
        return 0


@pytest.mark.parametrize("which", list(Flavour))
def test_a_missing_daemon_is_one_line_naming_the_package(which: Flavour) -> None:
    run = short_tmpdir()
    with pytest.raises(RealXenstoredUnavailable) as e:
        realxs.start(which, run, binary=Path("/nonexistent/xenstored"))
    msg = str(e.value)
    assert "\n" not in msg and "/nonexistent/xenstored" in msg and "xen-utils-4.17" in msg


#: Arguments each daemon refuses at start-up (cx ignores an unknown option, not a quota).
REFUSED = {Flavour.CX: ["-Q", "no-such-quota=1"], Flavour.OX: ["--no-such-option"]}


def test_a_daemon_that_exits_at_start_up_is_reported(flavour: Flavour) -> None:
    run = short_tmpdir()
    with pytest.raises(RuntimeError, match=f"{flavour} exited with status") as e:
        realxs.start(flavour, run, args=REFUSED[flavour]).stop()
    assert "\n" not in str(e.value)
