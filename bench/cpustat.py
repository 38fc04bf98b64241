"""CPU time a process has used, for the per-request CPU of a daemon.

``/proc/<pid>/stat`` gives utime + stime of the whole process (all its threads) in clock
ticks (10 ms at the usual 100 Hz): exact enough only when summed over many requests, so
the benches add up the deltas of every block of a setup.  ``/proc/<pid>/task/*/schedstat``
gives the scheduler's run time in nanoseconds, fine enough for a single block; it is the
cross-check.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def stat_ns(pid: int) -> int:
    """utime + stime of ``pid`` (every thread), in ns, at tick resolution."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) * TICK_NS  # fields 14 and 15 of proc(5)


def sched_ns(pid: int) -> int:
    """The scheduler's run time of every thread of ``pid``, in ns (0 when unavailable)."""
    return sched_run_wait(pid)[0]


def sched_run_wait(pid: int) -> tuple[int, int]:
    """Run time and run-queue wait (runnable, not running) of every thread of ``pid``,
    in ns; (0, 0) when unavailable."""
    run = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return run, wait
