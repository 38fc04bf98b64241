"""What a guest's input can make xenstored log is bounded per domain (`stubdom.ratelimit`).

The clock is injected everywhere: no test sleeps or depends on how fast it runs.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator

import pytest

from stubdom.ratelimit import LimitedLog, TokenBucket, Verdict
from stubdom.wire import Op
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir
from tests.xenstored.test_server import Raw


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the token bucket --------------------------------------------------------------------


def test_a_burst_then_one_per_refill_with_the_count_of_refused() -> None:
    clock = Clock()
    tb: TokenBucket[int] = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [tb.take(5) for _ in range(3)] == [Verdict(True)] * 3
    assert [tb.take(5).allowed for _ in range(100)] == [False] * 100
    clock.now += 0.5  # one token back
    assert tb.take(5) == Verdict(True, suppressed=100)
    assert tb.take(5) == Verdict(False)
    clock.now += 3600  # refills up to the burst, never beyond
    assert [tb.take(5).allowed for _ in range(4)] == [True, True, True, False]


def test_keys_do_not_share_a_bucket() -> None:
    tb: TokenBucket[int] = TokenBucket(rate=1.0, burst=2, clock=Clock())
    assert [tb.take(5).allowed for _ in range(3)] == [True, True, False]
    assert [tb.take(6).allowed for _ in range(2)] == [True, True]


def test_a_clock_stepping_back_refills_nothing() -> None:
    clock = Clock()
    tb: TokenBucket[int] = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert tb.take(1).allowed
    clock.now -= 100
    assert not tb.take(1).allowed
    clock.now += 100
    assert not tb.take(1).allowed  # the step back is not credited either
    clock.now += 1
    assert tb.take(1) == Verdict(True, suppressed=2)


def test_idle_full_buckets_are_forgotten_when_there_are_too_many() -> None:
    clock = Clock()
    tb: TokenBucket[int] = TokenBucket(rate=1.0, burst=1, clock=clock, max_keys=10)
    for key in range(10):
        tb.take(key)
    tb.take(0)  # key 0 has something to report: it must be kept
    clock.now += 10
    tb.take(99)
    assert sorted(tb.keys()) == [0, 99]
    assert tb.pending(0) == 1


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0)
    with pytest.raises(ValueError):
        TokenBucket(burst=0)


# -- the limited log -----------------------------------------------------------------------


def test_limited_log_says_how_many_lines_it_dropped(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("test.ratelimit")
    ll: LimitedLog[int] = LimitedLog(logger, TokenBucket(rate=1.0, burst=2, clock=clock),
                                     describe=lambda d: f"domain {d}")
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        for i in range(50):
            ll.log(7, logging.WARNING, "bad thing %d", i)
        ll.log(7, logging.DEBUG, "not enabled: spends no token")
        clock.now += 1
        ll.log(7, logging.WARNING, "bad thing %d", 50)
        ll.log(7, logging.WARNING, "bad thing %d", 51)
        ll.flush()
        ll.flush()  # nothing left to report
    assert caplog.messages == [
        "bad thing 0",
        "bad thing 1",
        "domain 7: 48 more log line(s) suppressed (rate limit)",
        "bad thing 50",
        "domain 7: 1 more log line(s) suppressed (rate limit)",
    ]


# -- xenstored ----------------------------------------------------------------------------

BURST = 5


@pytest.fixture
async def limited() -> AsyncIterator[tuple[XenStoreServer, Clock]]:
    clock = Clock()
    guest_log: LimitedLog[int] = LimitedLog(
        logging.getLogger("stubdom.xenstored.server"),
        TokenBucket(rate=1.0, burst=BURST, clock=clock),
        describe=lambda d: f"domain {d}",
    )
    srv = XenStoreServer(short_tmpdir() / "socket", XenStored(), guest_log=guest_log)
    await srv.start()
    yield srv, clock
    await srv.close()


async def _offend(srv: XenStoreServer, domid: int | None) -> None:
    """One connection that announces a 4097-byte payload: the server closes it."""
    path = srv.socket_path if domid is None else srv.domain_socket(domid)
    bad = await Raw.open(path)
    bad.writer.write(struct.pack("=4I", Op.READ, 1, 0, 4097))
    assert await bad.reader.read() == b""
    bad.writer.close()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stubdom.xenstored.server"
            and r.levelno >= logging.WARNING]


async def test_a_hostile_guest_cannot_flood_the_log(
    limited: tuple[XenStoreServer, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    srv, clock = limited
    dom0 = await Raw.open(srv.socket_path)
    for args in (("INTRODUCE", "5", "0", "6"), ("INTRODUCE", "6", "0", "7")):
        assert (await dom0.rpc(Op[args[0]], *args[1:])).op != Op.ERROR
    caplog.set_level(logging.WARNING, logger="stubdom.xenstored.server")

    for _ in range(300):
        await _offend(srv, 5)
    lines = _lines(caplog)
    assert len(lines) == BURST
    assert all("dom5 unpriv" in line and "closing the connection" in line for line in lines)

    await _offend(srv, 6)  # another domain has a bucket of its own
    await _offend(srv, None)  # dom0 is never limited
    await _offend(srv, None)
    assert len(_lines(caplog)) == BURST + 3

    caplog.clear()
    clock.now += 1  # one line's worth of time
    await _offend(srv, 5)
    await _offend(srv, 5)
    lines = _lines(caplog)
    assert lines[0] == f"domain 5: {300 - BURST} more log line(s) suppressed (rate limit)"
    assert "dom5 unpriv" in lines[1] and len(lines) == 2

    caplog.clear()
    assert (await dom0.rpc(Op.RELEASE, "5")).op != Op.ERROR
    assert "domain 5: 1 more log line(s) suppressed (rate limit)" in _lines(caplog)
