"""How a client meets failure, the same for the asyncio `Client` and the
`BlockingClient` (sans-IO: the caller connects and sleeps): its request timeout, when it
connects again after losing xenstored and when it gives up, and when it runs a
conflicting transaction again.  Import-light (errno and our errors), for the blocking
client's start-up.

A daemon stopped cleanly removes its socket and its successor may take seconds to bind
it again on a busy machine; a released domain's socket never comes back.  So a missing
socket is waited for `SOCKET_GONE_GRACE` seconds, a refusing one until the deadline.
"""

from __future__ import annotations

import errno

from stubdom.xenstore.errors import ConnectionClosed, TransactionConflict

#: Default per-request timeout in seconds.
DEFAULT_TIMEOUT = 10.0
#: ``reconnect`` of the stack's own long-lived clients (host, agent, toolstack) and of
#: the CLI's: a xenstored restarted with its state directory is back well within this.
RECONNECT = 30.0
#: A retry after the n-th transaction conflict first pauses a random time up to this
#: times 2**(n-1) (at most 32 times this).
RETRY_BACKOFF = 0.001
#: How long a client keeps running a conflicting transaction again.
RETRY_PATIENCE = 30.0

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


def retry_pause(attempt: int, attempts: int | None, elapsed: float) -> float | None:
    """How long to wait after conflict number ``attempt`` before running the transaction
    again, or None to give up: after ``attempts`` tries if given, else once `RETRY_PATIENCE`
    seconds have ``elapsed``."""
    if attempt == attempts or (attempts is None and elapsed >= RETRY_PATIENCE):
        return None
    import random  # only after a conflict: a start-up cost for every short command

    return random.uniform(0, RETRY_BACKOFF * 2 ** min(attempt - 1, 5))


def forgotten(op: str, tx_id: int) -> TransactionConflict:
    """A transaction the restarted daemon no longer knows: a conflict, to be run again."""
    return TransactionConflict(
        op=op,
        path=f"transaction {tx_id}",
        message="xenstored restarted and forgot the transaction; run it again",
    )
