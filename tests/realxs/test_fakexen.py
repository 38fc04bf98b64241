"""FakeXen: the shim directory's names and the few writes a host or guest makes there."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.realxs import DomainState, FakeXen
from stubdom.realxs.fakexen import kick_byte


@pytest.fixture
def fake(tmp_path: Path) -> FakeXen:
    f = FakeXen(tmp_path / "fake")
    f.reset()
    return f


@pytest.fixture
def evtchn(fake: FakeXen) -> Iterator[int]:
    """The daemon's end of ``evtchn``, as the shim opens it (read-write, non-blocking)."""
    os.mkfifo(fake.evtchn)
    fd = os.open(fake.evtchn, os.O_RDWR | os.O_NONBLOCK)
    yield fd
    os.close(fd)


def test_names(fake: FakeXen) -> None:
    assert fake.ring_page(5) == fake.dir / "ring-5"
    assert fake.notify_fifo(5) == fake.dir / "notify-5"
    assert fake.evtchn == fake.dir / "evtchn"


def test_port_is_none_until_bound(fake: FakeXen) -> None:
    assert fake.port(5) is None
    (fake.dir / "port-5").write_text("11\n")  # as the shim's bind_interdomain writes it
    assert fake.port(5) == 11


def test_reset_empties_the_directory(fake: FakeXen) -> None:
    fake.mark(3, DomainState.DEAD)
    fake.reset()
    assert list(fake.dir.iterdir()) == []


def test_mark_and_unmark(fake: FakeXen) -> None:
    fake.mark(7, "shutdown")
    fake.mark(7, DomainState.GONE)
    assert sorted(p.name for p in fake.dir.iterdir()) == ["gone-7", "shutdown-7"]
    fake.unmark(7)
    assert list(fake.dir.iterdir()) == []
    with pytest.raises(ValueError):
        fake.mark(7, "asleep")


def test_kick_writes_the_port_byte(fake: FakeXen, evtchn: int) -> None:
    fake.kick(12)
    fake.kick_virq()
    assert os.read(evtchn, 16) == bytes([12, 1])


def test_a_full_evtchn_is_not_an_error(fake: FakeXen, evtchn: int) -> None:
    while True:  # fill the pipe buffer
        try:
            os.write(evtchn, b"\1" * 4096)
        except BlockingIOError:
            break
    fake.kick(11)


def test_kick_without_a_daemon_says_so(fake: FakeXen) -> None:
    os.mkfifo(fake.evtchn)
    with pytest.raises(RuntimeError, match="no daemon is reading it"):
        fake.kick(11)


@pytest.mark.parametrize("port", [0, 256, -1])
def test_a_port_beyond_one_byte_cannot_be_kicked(port: int) -> None:
    with pytest.raises(ValueError, match="one-byte kick"):
        kick_byte(port)
