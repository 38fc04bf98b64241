"""Per-request latency of our xenstored against the real cxenstored and oxenstored.

Every daemon runs pinned to one CPU and the client to the other (``taskset``), in the
same run, so the ratios compare like with like.  Workloads follow the performance
anchor of reference/xenstore.md §4: one dom0 writer repeating WRITE of one node, with
extra idle connections holding watches on paths that never match; READ; and a
transaction (start, read, write, commit).  Prints the median of several rounds.

    .venv/bin/python bench/bench_xenstored.py [--rounds 5] [--ops 2000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.daemons import Daemon, have_cx, have_ox, start_cx, start_ours, start_ox  # noqa: E402

HDR = struct.Struct("=4I")
WRITE, READ, WATCH, TSTART, TEND = 11, 2, 4, 6, 7
SERVER_CPU, CLIENT_CPU = "1", "0"


class Raw:
    """A minimal blocking client: the same code path for every daemon."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)

    def rpc(self, op: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        self.s.sendall(HDR.pack(op, 0, tx, len(payload)) + payload)
        while True:
            head = self._exact(16)
            rop, _, _, n = HDR.unpack(head)
            body = self._exact(n)
            if rop != 15:  # skip watch events
                return rop, body

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk
        return buf

    def close(self) -> None:
        self.s.close()


def per_op(fn: Callable[[], None], ops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - t0) / ops * 1e6


def scenario(d: Daemon, ops: int, conns: int, watches: int) -> dict[str, float]:
    idle = []
    for c in range(conns):
        r = Raw(d.socket)
        for w in range(watches):
            r.rpc(WATCH, f"/nomatch/{c}/{w}\0tok\0".encode())
        idle.append(r)
    cl = Raw(d.socket)
    cl.rpc(WRITE, b"/bench/x\0v")
    out = {"write": per_op(lambda: cl.rpc(WRITE, b"/bench/x\0v"), ops)}
    if conns == 0:
        out["read"] = per_op(lambda: cl.rpc(READ, b"/bench/x\0"), ops)

        def tx() -> None:
            _, tid = cl.rpc(TSTART, b"\0")
            t = int(tid[:-1])
            cl.rpc(READ, b"/bench/x\0", t)
            cl.rpc(WRITE, b"/bench/x\0v", t)
            cl.rpc(TEND, b"T\0", t)

        out["transaction"] = per_op(tx, max(ops // 4, 50))
    for r in idle:
        r.close()
    cl.close()
    return out


def pinned(start: Callable[..., Daemon]) -> Daemon:
    os.sched_setaffinity(0, {int(SERVER_CPU)})  # children inherit the server CPU
    try:
        return start()
    finally:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs two CPUs to pin the daemon and the client apart")
    starters: dict[str, Callable[..., Daemon]] = {"ours": start_ours}
    if have_cx():
        starters["cx"] = start_cx
    if have_ox():
        starters["ox"] = start_ox
    setups = [("no extra connections", 0, 0), ("100 conns x 100 watches", 100, 100),
              ("1 conn x 20000 watches", 1, 20000)]
    results: dict[tuple[str, str, str], list[float]] = {}
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    for _ in range(args.rounds):
        for name, start in starters.items():
            for label, conns, watches in setups:
                d = pinned(start)
                try:
                    for op, us in scenario(d, args.ops, conns, watches).items():
                        results.setdefault((label, op, name), []).append(us)
                finally:
                    d.stop()
    names = list(starters)
    print(f"median µs/op over {args.rounds} rounds of {args.ops} ops "
          f"(daemon on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU})")
    head = f"{'setup':<26}{'op':<12}" + "".join(f"{n:>10}" for n in names)
    head += "".join(f"{'ours/' + n:>11}" for n in names[1:])
    print(head)
    for label, _, _ in setups:
        for op in ("write", "read", "transaction"):
            if (label, op, "ours") not in results:
                continue
            med = {n: statistics.median(results[(label, op, n)]) for n in names}
            row = f"{label:<26}{op:<12}" + "".join(f"{med[n]:>10.1f}" for n in names)
            row += "".join(f"{med['ours'] / med[n]:>11.2f}" for n in names[1:])
            print(row)


if __name__ == "__main__":
    main()
