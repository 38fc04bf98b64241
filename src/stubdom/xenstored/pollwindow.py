"""How long the daemon polls for input before it sleeps: the guest kernel's haltpoll
rule, kept in user space.

On a virtual machine a vCPU that halts when idle is expensive to wake: the client's
send exits to the hypervisor to deliver the wake-up, and the daemon's reply waits
until the host runs its vCPU again.  A guest kernel avoids both with the
cpuidle-haltpoll governor, which polls a while before it halts; a machine booted with
``haltpoll.guest_halt_poll_ns=0`` (ours) halts at once, and a round trip across CPUs
costs 40-50 µs where 8-15 µs would do.  So after a turn the daemon polls its epoll
with a zero timeout for a window before it blocks, and adapts the window by the
governor's rule: an idle spell longer than the window but within the limit grows it
(a longer poll would have caught the input), one longer than the limit shrinks it.
Requests that come in bursts are caught; a daemon that is mostly idle polls little.
"""

from __future__ import annotations

#: haltpoll's defaults: the limit (``guest_halt_poll_ns``), the first window after
#: growing from none, and the factors.
LIMIT_NS = 200_000
GROW_START_NS = 50_000
GROW = 2
SHRINK = 2


class PollWindow:
    """The current window (ns), and its rule.  No I/O, no clock: the shell measures."""

    __slots__ = ("limit", "window")

    def __init__(self, limit_ns: int = LIMIT_NS) -> None:
        if limit_ns < 0:
            raise ValueError(f"poll limit {limit_ns} ns: must be 0 or more")
        self.limit = limit_ns
        #: How long to poll before the next sleep; none until a spell calls for it.
        self.window = 0

    def idle(self, spell_ns: int) -> None:
        """The daemon waited ``spell_ns`` from the end of a turn to the input that
        began the next one."""
        if spell_ns <= self.window:
            return  # caught by the poll
        if spell_ns <= self.limit:  # never under the first window, never over the limit
            self.window = min(max(self.window * GROW, GROW_START_NS), self.limit)
        else:
            self.window //= SHRINK
