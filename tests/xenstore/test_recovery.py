"""The reconnection policy both clients share (`stubdom.xenstore.recovery`), on a fake
clock: no socket, no sleep."""

from __future__ import annotations

import errno

import pytest

from stubdom.xenstore.errors import ConnectionClosed
from stubdom.xenstore.recovery import MAX_DELAY, SOCKET_GONE_GRACE, Backoff

LOST = ConnectionClosed("xenstore connection /s closed by the server")
REFUSED = OSError(errno.ECONNREFUSED, "Connection refused")
MISSING = OSError(errno.ENOENT, "No such file or directory")


def test_pauses_double_up_to_the_cap() -> None:
    b = Backoff(LOST, 30.0, deadline=30.0)
    delays = [b.failed(REFUSED, now=0.0) for _ in range(8)]
    assert delays[:3] == [0.01, 0.02, 0.04]
    assert max(delays) == MAX_DELAY and delays[-1] == MAX_DELAY


def test_a_refusing_daemon_is_waited_for_until_the_deadline() -> None:
    b = Backoff(LOST, 5.0, deadline=5.0)
    assert b.failed(REFUSED, now=4.0) > 0
    with pytest.raises(ConnectionClosed, match=r"did not come back within 5 s \(Connection"):
        b.failed(REFUSED, now=4.99)


def test_a_socket_missing_past_the_grace_is_gone() -> None:
    b = Backoff(LOST, 60.0, deadline=60.0)
    b.failed(MISSING, now=0.0)
    b.failed(MISSING, now=SOCKET_GONE_GRACE)
    with pytest.raises(ConnectionClosed, match="its socket is gone") as e:
        b.failed(MISSING, now=SOCKET_GONE_GRACE + 0.1)
    assert str(e.value).startswith(str(LOST))


def test_a_socket_that_came_back_restarts_the_grace() -> None:
    b = Backoff(LOST, 60.0, deadline=60.0)
    b.failed(MISSING, now=0.0)
    b.failed(REFUSED, now=9.0)  # bound again by a restarting daemon
    assert b.failed(MISSING, now=15.0) > 0  # missing for 0 s, not 15
