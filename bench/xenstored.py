"""Per-request latency of our xenstored against the real cxenstored and oxenstored.

All three daemons run in the same invocation, each pinned to CPU 1 while the client
(this process) runs on CPU 0, and every daemon is driven by the same raw client code, so
the ratios compare like with like (the anchor: cx's watch dispatch, xenstored_watch.c
``fire_watches``, costs O(connections + watches) per change).

Setups, each measured on a freshly started daemon:

- ``1 connection``: WRITE, READ and a transaction (start, read, write, commit);
- ``10k watches`` / ``50k watches``: WRITE while 100 x 100 / 200 x 250 watches on paths
  that never match sit on other dom0 connections;
- ``200 idle`` / ``1000 idle``: WRITE with that many idle connections open;
- ``mix``: 10 writer connections take turns writing under ``/mix/<k>``; 50 watcher
  connections each watch one ``/mix/<k>`` subtree (so each write fires 5 events) and a
  thread drains the events as they come.

It prints the median µs per op for each daemon over ``--rounds`` rounds, the ratios
ours / cx and ours / ox, and whether the Issue 7 targets are met:

- READ, WRITE and transaction ≤ 1.0x cx;
- WRITE with 50k watches ≤ ox and at least 10x faster than cx;
- WRITE with 1000 idle connections ≤ 1.1x our single-connection WRITE.

Last, the resident memory (VmRSS) of each daemon holding 10k nodes and 50k watches.

    .venv/bin/python bench/xenstored.py [--rounds 5] [--ops 2000] [--quick]

``--quick`` drops the setups that carry no target (10k watches, 200 idle) and the cx/ox
memory figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rawxs import HDR, RawConnection  # noqa: E402
from tests.support.daemons import Daemon, have_cx, have_ox, start_cx, start_ours, start_ox  # noqa: E402

READ, WATCH, TSTART, TEND, WRITE, EVENT, ERROR = 2, 4, 6, 7, 11, 15, 16
SERVER_CPU, CLIENT_CPU = 1, 0


class Raw(RawConnection):
    """The same code path for every daemon; watch events are skipped."""

    def rpc(self, op: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        self.send(op, payload, tx)
        return self._reply()

    def pipeline(self, op: int, payloads: list[bytes]) -> None:
        """Send many requests at once, then read every reply (events are skipped)."""
        for i in range(0, len(payloads), 200):
            chunk = payloads[i:i + 200]
            self.s.sendall(b"".join(HDR.pack(op, 0, 0, len(p)) + p for p in chunk))
            for _ in chunk:
                rop, body = self._reply()
                if rop == ERROR:
                    raise RuntimeError(f"daemon refused op {op}: {body!r}")

    def _reply(self) -> tuple[int, bytes]:
        while True:
            rop, body = self.packet()
            if rop != EVENT:
                return rop, body


def per_op(fn: Callable[[], None], ops: int) -> float:
    for _ in range(min(ops // 10, 100)):  # warm up
        fn()
    t0 = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - t0) / ops * 1e6


def add_watchers(d: Daemon, conns: int, per_conn: int) -> list[Raw]:
    out = []
    for c in range(conns):
        r = Raw(d.socket)
        if per_conn:
            r.pipeline(WATCH, [f"/nomatch/{c}/{w}\0t{w}\0".encode() for w in range(per_conn)])
        out.append(r)
    return out


def write_op(cl: Raw) -> Callable[[], None]:
    return lambda: cl.rpc(WRITE, b"/bench/x\0v")


def basic(d: Daemon, ops: int) -> dict[str, float]:
    cl = Raw(d.socket)
    cl.rpc(WRITE, b"/bench/x\0v")
    out = {"WRITE": per_op(write_op(cl), ops),
           "READ": per_op(lambda: cl.rpc(READ, b"/bench/x\0"), ops)}

    def tx() -> None:
        _, tid = cl.rpc(TSTART, b"\0")
        t = int(tid[:-1])
        cl.rpc(READ, b"/bench/x\0", t)
        cl.rpc(WRITE, b"/bench/x\0v", t)
        cl.rpc(TEND, b"T\0", t)

    out["transaction"] = per_op(tx, max(ops // 4, 50))
    cl.close()
    return out


def loaded_write(d: Daemon, ops: int, conns: int, per_conn: int) -> dict[str, float]:
    extra = add_watchers(d, conns, per_conn)
    cl = Raw(d.socket)
    cl.rpc(WRITE, b"/bench/x\0v")
    out = {"WRITE": per_op(write_op(cl), ops)}
    for r in [*extra, cl]:
        r.close()
    return out


def mix(d: Daemon, ops: int, writers: int = 10, watchers: int = 50) -> dict[str, float]:
    subtrees = 10
    wr = [Raw(d.socket) for _ in range(writers)]
    wa = [Raw(d.socket) for _ in range(watchers)]
    for i, r in enumerate(wa):
        r.rpc(WATCH, f"/mix/{i % subtrees}\0w{i}\0".encode())
    stop = threading.Event()
    drained = [0]

    def drain() -> None:
        sel = selectors.DefaultSelector()
        for r in wa:
            r.s.setblocking(False)
            sel.register(r.s, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(0.05):
                with contextlib.suppress(BlockingIOError):
                    drained[0] += len(key.fileobj.recv(65536))  # type: ignore[union-attr]
        sel.close()

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    n = [0]

    def one() -> None:
        k = n[0]
        n[0] += 1
        wr[k % writers].rpc(WRITE, f"/mix/{k % subtrees}/n{k % 7}\0v".encode())

    us = per_op(one, ops)
    stop.set()
    th.join()
    if not drained[0]:
        raise RuntimeError("mix: the watchers received no events")
    for r in [*wr, *wa]:
        r.close()
    return {"WRITE": us}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def memory(d: Daemon) -> tuple[int, int]:
    """VmRSS empty, and holding 10k nodes and 50k (non-matching) watches."""
    time.sleep(0.2)
    before = rss_kib(d.pid)
    cl = Raw(d.socket)
    cl.pipeline(WRITE, [f"/mem/{i // 100}/{i % 100}\0value-{i}".encode() for i in range(10_000)])
    conns = add_watchers(d, 200, 250)
    cl.rpc(READ, b"/mem/0/0\0")
    time.sleep(0.2)
    after = rss_kib(d.pid)
    for r in [*conns, cl]:
        r.close()
    return before, after


SETUPS: list[tuple[str, Callable[[Daemon, int], dict[str, float]], bool]] = [
    ("1 connection", basic, True),
    ("10k watches (100x100)", lambda d, n: loaded_write(d, n, 100, 100), False),
    ("50k watches (200x250)", lambda d, n: loaded_write(d, n, 200, 250), True),
    ("200 idle conns", lambda d, n: loaded_write(d, n, 200, 0), False),
    ("1000 idle conns", lambda d, n: loaded_write(d, n, 1000, 0), True),
    ("mix 10 wr / 50 watchers", mix, True),
]


def pinned(start: Callable[..., Daemon]) -> Daemon:
    os.sched_setaffinity(0, {SERVER_CPU})  # the daemon inherits the server CPU
    try:
        return start()
    finally:
        os.sched_setaffinity(0, {CLIENT_CPU})


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2200:
        sys.exit(f"bench: RLIMIT_NOFILE hard limit {hard} is too low for 1000 connections")


def target(label: str, op: str, med: dict[str, float], single: float | None) -> str:
    ours, cx, ox = med.get("ours"), med.get("cx"), med.get("ox")
    if label == "1 connection" and cx is not None and ours is not None:
        return f"<=1.0x cx: {'MET' if ours <= cx else 'MISSED'}"
    if label.startswith("50k") and cx is not None and ox is not None and ours is not None:
        ok = ours <= ox and ours * 10 <= cx
        return f"<=ox, >=10x cx: {'MET' if ok else 'MISSED'} (cx/ours {cx / ours:.1f}x)"
    if label.startswith("1000 idle") and single and ours is not None:
        r = ours / single
        return f"<=1.1x 1-conn: {'MET' if r <= 1.1 else 'MISSED'} ({r:.2f}x)"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--quick", action="store_true",
                    help="only the setups with a target; memory of ours only")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs two CPUs to pin the daemon and the client apart")
    raise_fd_limit()
    starters: dict[str, Callable[..., Daemon]] = {"ours": start_ours}
    if have_cx():
        starters["cx"] = start_cx
    if have_ox():
        starters["ox"] = start_ox
    setups = [s for s in SETUPS if s[2] or not args.quick]
    results: dict[tuple[str, str, str], list[float]] = {}
    os.sched_setaffinity(0, {CLIENT_CPU})
    t_start = time.monotonic()
    for rnd in range(args.rounds):
        for label, fn, _ in setups:
            for name, start in starters.items():  # interleaved: drift hits all alike
                d = pinned(start)
                try:
                    for op, us in fn(d, args.ops).items():
                        results.setdefault((label, op, name), []).append(us)
                finally:
                    d.stop()
        print(f"# round {rnd + 1}/{args.rounds} done ({time.monotonic() - t_start:.0f}s)",
              file=sys.stderr, flush=True)
    names = list(starters)
    mem: dict[str, tuple[int, int]] = {}
    for name, start in starters.items():
        if args.quick and name != "ours":
            continue
        d = pinned(start)
        try:
            mem[name] = memory(d)
        finally:
            d.stop()

    print(f"median µs/op over {args.rounds} rounds of {args.ops} ops (transaction: "
          f"{max(args.ops // 4, 50)}); daemon on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}")
    head = f"{'setup':<25}{'op':<12}" + "".join(f"{n:>9}" for n in names)
    head += "".join(f"{'ours/' + n:>10}" for n in names[1:]) + "  target"
    print(head)
    print("-" * (len(head) + 40))
    single = None
    for label, _, _ in setups:
        for op in ("WRITE", "READ", "transaction"):
            if (label, op, "ours") not in results:
                continue
            med = {n: statistics.median(results[(label, op, n)]) for n in names}
            if label == "1 connection" and op == "WRITE":
                single = med["ours"]
            row = f"{label:<25}{op:<12}" + "".join(f"{med[n]:>9.1f}" for n in names)
            row += "".join(f"{med['ours'] / med[n]:>10.2f}" for n in names[1:])
            print(row + "  " + target(label, op, med, single))
    print()
    print("memory (VmRSS): empty -> holding 10k nodes and 50k watches (200 conns x 250)")
    for name, (before, after) in mem.items():
        print(f"  {name:<5} {before / 1024:8.1f} MiB -> {after / 1024:8.1f} MiB "
              f"(+{(after - before) / 1024:.1f} MiB)")
    print(f"# total {time.monotonic() - t_start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
