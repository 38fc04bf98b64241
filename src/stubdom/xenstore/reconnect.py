"""When a client that lost xenstored tries again, and when it gives up: one policy for
the asyncio `Client` and the `BlockingClient` (sans-IO: the caller connects and sleeps).

A daemon stopped cleanly removes its socket and its successor may take seconds to bind
it again on a busy machine; a released domain's socket never comes back.  So a missing
socket is waited for `SOCKET_GONE_GRACE` seconds, a refusing one until the deadline.
"""

from __future__ import annotations

import errno

from stubdom.xenstore.errors import ConnectionClosed

#: How long a reconnecting client waits for a socket file that does not exist.
SOCKET_GONE_GRACE = 10.0
#: The pause after the first failed attempt, doubled per attempt up to `MAX_DELAY`.
FIRST_DELAY = 0.01
MAX_DELAY = 0.2


class Backoff:
    """The attempts to connect again after ``lost``, until ``deadline`` (the client's
    clock; ``reconnect`` seconds after the loss, for the message)."""

    def __init__(self, lost: ConnectionClosed, reconnect: float, deadline: float) -> None:
        self.lost = lost
        self.reconnect = reconnect
        self.deadline = deadline
        self.delay = FIRST_DELAY
        self._missing_since: float | None = None

    def failed(self, err: OSError, now: float) -> float:
        """The pause before the next attempt after ``err`` at ``now``; raises the
        `ConnectionClosed` that says why the client gives up instead."""
        if err.errno == errno.ENOENT:
            if self._missing_since is None:
                self._missing_since = now
        else:
            self._missing_since = None
        gone = self._missing_since is not None and now - self._missing_since > SOCKET_GONE_GRACE
        if gone or now + self.delay > self.deadline:
            why = "its socket is gone" if gone else (
                f"xenstored did not come back within {self.reconnect:g} s")
            raise ConnectionClosed(f"{self.lost}; {why} ({err.strerror or err})")
        delay, self.delay = self.delay, min(self.delay * 2, MAX_DELAY)
        return delay
