"""The reviewer's side-by-side check of our xenstored against cx, and its factors.

The reviewer's method (issue 16): one raw blocking client alternates blocks of 400
requests between our daemon and cx, 7 blocks each, and takes medians; both daemons are
started once and pinned to the same CPU; READ of an existing one-byte node, WRITE of the
same value to the same node, a transaction of start, read, write, commit.

This script runs that method and variants of it that change one factor at a time, all
in one sitting and interleaved (each repetition runs every variant once), so the
variants are compared under the same load of the machine:

- ``client``: ``tight`` (bench/tightxs.py: one send, one recv) or ``old`` (the client
  of bench/xenstored.py before issue 16: ``RawConnection`` reading the header and the
  payload with two recv loops, behind a lambda per op);
- ``client_cpu``: the client's CPU (``None``: unpinned, the reviewer's); ``daemon_cpu``:
  the daemons' (1; "swapped CPUs" puts them on 0 and the client on 1);
- ``fresh``: a daemon started for the variant instead of the long-running pair;
- ``alternate``: blocks alternate (``False``: the old bench's way, 2000 ops on one daemon
  then 2000 on the other);
- ``block``: ops per block;
- ``gc``: the client's garbage collector on during the blocks;
- ``fifo``: the daemons and the client under SCHED_FIFO for the variant's blocks (a
  few seconds), so that no one else's job delays a wake-up: it tells the scheduler's
  share of a placement's cost from the daemon's own.

Besides the wall time it reads, per op over the blocks, the daemons' CPU time and their
run-queue wait (``/proc/<pid>/task/*/schedstat``, ns), the client's CPU time
(``time.process_time``) and on which CPU the client was after each block (``beside``:
the share on the daemons' CPU).  The daemon's CPU ratio is what the wall-time ratio
would be if the client and the scheduler cost nothing.  The "old bench" and "new bench"
variants are the two versions of bench/xenstored.py's single-connection method; the
findings are in that file's docstring (WHY THE BENCHES DISAGREED).

    .venv/bin/python bench/xenstored_check.py [--reps 7] [--only NAME,NAME]

About 4 minutes for 7 repetitions of every variant.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpustat import sched_run_wait  # noqa: E402
from bench.rawxs import RawConnection  # noqa: E402
from bench.tightxs import TightConnection, single_ops  # noqa: E402
from tests.support.daemons import Daemon, start_cx, start_ours  # noqa: E402

READ, TSTART, TEND, WRITE, EVENT = 2, 6, 7, 11, 15
DAEMON_CPU = 1
OPS = ("READ", "WRITE", "transaction")


@dataclass(frozen=True)
class Variant:
    name: str
    client: str = "tight"
    client_cpu: int | None = None
    fresh: bool = False
    alternate: bool = True
    block: int = 400
    blocks: int = 7
    gc: bool = True
    daemon_cpu: int = DAEMON_CPU
    fifo: bool = False  # daemons and client SCHED_FIFO: nobody else's job runs first
    warm: int = 0  # requests each fresh daemon serves before the blocks


REVIEWER = Variant("reviewer")
VARIANTS = [
    REVIEWER,
    replace(REVIEWER, name="client=old", client="old"),
    replace(REVIEWER, name="client on CPU 0", client_cpu=0),
    replace(REVIEWER, name="client on CPU 1", client_cpu=1),
    replace(REVIEWER, name="fresh daemons", fresh=True),
    replace(REVIEWER, name="block 2000 x 2", block=2000, blocks=2),
    replace(REVIEWER, name="block 50 x 56", block=50, blocks=56),
    replace(REVIEWER, name="client gc off", gc=False),
    replace(REVIEWER, name="CPU 0 client=old", client="old", client_cpu=0),
    replace(REVIEWER, name="not alternating", alternate=False, block=2000, blocks=1),
    replace(REVIEWER, name="swapped CPUs", client_cpu=1, daemon_cpu=0),
    replace(REVIEWER, name="CPU 0 FIFO", client_cpu=0, fifo=True),
    replace(REVIEWER, name="CPU 1 FIFO", client_cpu=1, fifo=True),
    replace(REVIEWER, name="CPU 1 FIFO fresh", client_cpu=1, fifo=True, fresh=True),
    replace(REVIEWER, name="CPU 1 FIFO fresh 3k", client_cpu=1, fifo=True, fresh=True,
            warm=3000),
    replace(REVIEWER, name="CPU 1 FIFO fresh 30k", client_cpu=1, fifo=True, fresh=True,
            warm=30000),
    Variant("old bench", client="old", client_cpu=0, fresh=True, alternate=False,
            block=2000, blocks=1),
    Variant("new bench", client_cpu=0, fresh=True, gc=False),
]


class OldClient(RawConnection):
    """The request path of bench/xenstored.py before issue 16, op for op."""

    def rpc(self, op: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        self.send(op, payload, tx)
        while True:
            rop, body = self.packet()
            if rop != EVENT:
                return rop, body


def old_ops(path: str) -> dict[str, Callable[[int], None]]:
    cl = OldClient(path)
    cl.rpc(WRITE, b"/bench/x\0v")

    def loop(fn: Callable[[], object]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                fn()
        return run

    def tx() -> None:
        _, tid = cl.rpc(TSTART, b"\0")
        t = int(tid[:-1])
        cl.rpc(READ, b"/bench/x\0", t)
        cl.rpc(WRITE, b"/bench/x\0v", t)
        cl.rpc(7, b"T\0", t)

    return {"READ": loop(lambda: cl.rpc(READ, b"/bench/x\0")),
            "WRITE": loop(lambda: cl.rpc(WRITE, b"/bench/x\0v")),
            "transaction": loop(tx)}


def tight_ops(path: str) -> dict[str, Callable[[int], None]]:
    return single_ops(TightConnection(path))


def last_cpu() -> int:
    """The CPU this process last ran on (field 39 of /proc/self/stat)."""
    raw = Path("/proc/self/stat").read_text()
    return int(raw[raw.rindex(")") + 2:].split()[36])


def policy(pid: int, pol: int, prio: int) -> None:
    """Every thread of ``pid`` under scheduling policy ``pol``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setscheduler(int(tid), pol, os.sched_param(prio))


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


@dataclass
class Figures:
    """One variant, one op, one repetition."""

    us: dict[str, float]  # median µs per op of each daemon's blocks
    cpu: dict[str, float]  # daemon CPU µs per op over all its blocks
    wait: dict[str, float]  # daemon µs per op runnable but not running
    client: float  # client CPU µs per op over all blocks
    beside: float  # share of blocks the client ended on the daemons' CPU


def run_op(v: Variant, op: str, daemons: dict[str, Daemon],
           ops: dict[str, dict[str, Callable[[int], None]]]) -> Figures:
    names = list(daemons)
    n = v.block if op != "transaction" else max(v.block // 4, 10)
    for name in names:
        ops[name][op](max(n // 10, 10))
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu = dict.fromkeys(names, 0)
    wait = dict.fromkeys(names, 0)
    client = 0.0
    beside = 0
    order = ([names] * v.blocks if v.alternate else [[k] * v.blocks for k in names])
    if not v.gc:
        gc.collect()
        gc.disable()
    for group in order:
        for name in group:
            pid = daemons[name].pid
            (c0, w0), p0 = sched_run_wait(pid), time.process_time()
            t0 = time.perf_counter()
            ops[name][op](n)
            t1 = time.perf_counter()
            client += time.process_time() - p0
            c1, w1 = sched_run_wait(pid)
            cpu[name] += c1 - c0
            wait[name] += w1 - w0
            times[name].append((t1 - t0) / n * 1e6)
            beside += last_cpu() == v.daemon_cpu
    gc.enable()
    total = n * v.blocks
    return Figures({k: statistics.median(times[k]) for k in names},
                   {k: cpu[k] / total / 1e3 for k in names},
                   {k: wait[k] / total / 1e3 for k in names},
                   client / (total * len(names)) * 1e6, beside / (v.blocks * len(names)))


def run_variant(v: Variant, long: dict[str, Daemon]) -> dict[str, Figures]:
    old_aff = os.sched_getaffinity(0)
    daemons = long
    try:
        if v.fresh:
            os.sched_setaffinity(0, {DAEMON_CPU})
            daemons = {"ours": start_ours(), "cx": start_cx()}
        for d in daemons.values():
            pin(d.pid, {v.daemon_cpu})
            if v.fifo:
                policy(d.pid, os.SCHED_FIFO, 1)
        if v.fifo:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))

        os.sched_setaffinity(0, {v.client_cpu} if v.client_cpu is not None else old_aff)
        make = tight_ops if v.client == "tight" else old_ops
        ops = {k: make(d.socket) for k, d in daemons.items()}
        for o in ops.values():
            for op in OPS:
                o[op](v.warm // len(OPS))
        return {op: run_op(v, op, daemons, ops) for op in OPS}
    finally:
        os.sched_setaffinity(0, old_aff)
        if v.fifo:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            for d in daemons.values():
                policy(d.pid, os.SCHED_OTHER, 0)
        if v.fresh:
            for d in daemons.values():
                d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    args = ap.parse_args()
    variants = [v for v in VARIANTS if not args.only or v.name in args.only.split(",")]
    os.sched_setaffinity(0, {DAEMON_CPU})
    long = {"ours": start_ours(), "cx": start_cx()}
    os.sched_setaffinity(0, {0, 1})
    got: dict[tuple[str, str], list[Figures]] = {}
    try:
        warm = tight_ops(long["ours"].socket), tight_ops(long["cx"].socket)
        for w in warm:  # "long-running": both have served 20k requests
            w["WRITE"](10_000)
            w["READ"](10_000)
        for rep in range(args.reps):
            for v in variants:
                for op, f in run_variant(v, long).items():
                    got.setdefault((v.name, op), []).append(f)
            print(f"# rep {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
    finally:
        for d in long.values():
            d.stop()
    report(variants, got, args.reps)


def report(variants: list[Variant], got: dict[tuple[str, str], list[Figures]],
           reps: int) -> None:
    print(f"ours/cx, {reps} interleaved repetitions: median [min..max]; µs per op; "
          "CPU = daemon's schedstat per op; cl = client's CPU per op; "
          "beside = share of blocks the client ended on the daemons' CPU; "
          "wait = daemon's run-queue wait per op, ours/cx")
    print(f"{'variant':<18}{'op':<12}{'ours':>7}{'cx':>7}{'wall ours/cx':>20}"
          f"{'CPU ours':>9}{'CPU cx':>8}{'CPU ours/cx':>19}{'cl':>6}{'beside':>7}"
          f"{'wait':>12}")
    for v in variants:
        for op in OPS:
            fs = got[(v.name, op)]
            wall = [f.us["ours"] / f.us["cx"] for f in fs]
            cpu = [f.cpu["ours"] / f.cpu["cx"] for f in fs]
            med = statistics.median
            print(f"{v.name:<18}{op:<12}{med(f.us['ours'] for f in fs):>7.1f}"
                  f"{med(f.us['cx'] for f in fs):>7.1f}"
                  f"{med(wall):>7.2f} [{min(wall):.2f}..{max(wall):.2f}]"
                  f"{med(f.cpu['ours'] for f in fs):>9.1f}{med(f.cpu['cx'] for f in fs):>8.1f}"
                  f"{med(cpu):>7.2f} [{min(cpu):.2f}..{max(cpu):.2f}]"
                  f"{med(f.client for f in fs):>6.1f}"
                  f"{statistics.mean(f.beside for f in fs):>7.2f}"
                  f"{med(f.wait['ours'] for f in fs):>6.1f}/{med(f.wait['cx'] for f in fs):.1f}")


if __name__ == "__main__":
    main()
