"""What libxenstore itself pays per request and per wait of libxl's, beside the bare
Python client with which bench/pci_ins.py replays libxl's order (issue 16, part 3).

The ``libxl order`` rows of bench/pci_ins.py send libxl's requests through a bare
blocking Python client.  libxl goes through libxenstore (``libxenstore.so.4``, from
Debian's xenstore-utils), which takes its mutexes, writes a request's header and body
apart and reads its reply the same way; once a handle watches, a reader thread takes
every reply and hands it over.  libxl's synchronous wait
(``libxl__xenstore_child_wait_deprecated``) opens a handle, watches (starting that
thread), reads, unwatches and closes (joining it).  Through ctypes, on each daemon:

- ``read``: one ``xs_read`` of a one-byte node on a handle with no watch;
- ``read, watching``: the same on a handle that watches another node (the reader
  thread on the path);
- ``wait``: ``xs_open``, ``xs_watch``, ``xs_read``, ``xs_unwatch``, ``xs_close``, the
  node already holding what is waited for;

and beside each, the same requests from the bare client of bench/pci_ins.py (``Raw``,
which has no thread: its read is the same watching or not; its wait is the replay's own,
``libxl_child_wait``).  Each daemon on CPU 1, the client on CPU 0; within a round the
daemons take turns (the first rotates), and the table gives the medians of the rounds'
medians.  If the library costs more than the bare client, the replay is a lower bound
of libxl's order.

    .venv/bin/python bench/libxs_cost.py [--rounds 10] [--n 1000] [--xenstored ours,cx,ox]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import med, need_two_cpus, rotated, table, xenstoreds  # noqa: E402
from bench.pci_ins import STARTS, Raw, libxl_child_wait, pinned  # noqa: E402

NODE = b"/libxs-cost"
KINDS = ("read", "read, watching", "wait")


def libxenstore() -> ctypes.CDLL:
    """libxenstore with the prototypes used here; a clear exit where it is missing."""
    try:
        lib = ctypes.CDLL("libxenstore.so.4")
    except OSError:
        sys.exit("libxs_cost: needs libxenstore.so.4 (Debian xenstore-utils)")
    handle, path = ctypes.c_void_p, ctypes.c_char_p
    lib.xs_open.restype, lib.xs_open.argtypes = handle, [ctypes.c_ulong]
    lib.xs_close.argtypes = [handle]
    for fn in (lib.xs_watch, lib.xs_unwatch):
        fn.restype, fn.argtypes = ctypes.c_bool, [handle, path, path]
    lib.xs_read.restype = ctypes.c_void_p
    lib.xs_read.argtypes = [handle, ctypes.c_uint32, path, ctypes.POINTER(ctypes.c_uint)]
    return lib


LIB = libxenstore()
LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
LIBC.free.argtypes = [ctypes.c_void_p]


def xs_read(h: int) -> None:
    n = ctypes.c_uint()
    LIBC.free(LIB.xs_read(h, 0, NODE, ctypes.byref(n)))


def xs_wait() -> None:
    h = LIB.xs_open(0)
    LIB.xs_watch(h, NODE, NODE)
    xs_read(h)
    LIB.xs_unwatch(h, NODE, NODE)
    LIB.xs_close(h)


def timed(fn: Callable[[], object], n: int) -> float:
    """Median µs of ``n`` calls (a tenth more first, untimed)."""
    out = []
    for i in range(n + n // 10):
        t0 = time.perf_counter()
        fn()
        if i >= n // 10:
            out.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(out)


def one_daemon(name: str, n: int) -> dict[tuple[str, str], float]:
    """{(kind, "libxenstore" | "bare"): µs} on a fresh ``name`` daemon."""
    d = pinned(STARTS[name])
    try:
        os.environ["XENSTORED_PATH"] = d.socket  # where xs_open(0) connects
        raw = Raw(d.socket)
        raw.rpc("WRITE", NODE.decode(), "1")
        plain, watching = LIB.xs_open(0), LIB.xs_open(0)
        LIB.xs_watch(watching, b"/libxs-cost-other", b"t")
        got = {("read", "libxenstore"): timed(lambda: xs_read(plain), n),
               ("read", "bare"): timed(lambda: raw.rpc("READ", NODE.decode()), n),
               ("read, watching", "libxenstore"): timed(lambda: xs_read(watching), n),
               ("wait", "libxenstore"): timed(xs_wait, n),
               ("wait", "bare"): timed(lambda: libxl_child_wait(d.socket, NODE.decode(),
                                                                lambda _: True), n)}
        got[("read, watching", "bare")] = got[("read", "bare")]
        LIB.xs_close(plain)
        LIB.xs_close(watching)
        raw.close()
        return got
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=1000, help="calls of each kind per round")
    ap.add_argument("--xenstored", default="ours,cx", help="comma list of daemons")
    args = ap.parse_args()
    need_two_cpus()
    daemons = xenstoreds(args.xenstored)
    per: dict[str, dict[tuple[str, str], list[float]]] = {d: {} for d in daemons}
    for rnd in range(args.rounds):
        for name in rotated(daemons, rnd):
            for k, v in one_daemon(name, args.n).items():
                per[name].setdefault(k, []).append(v)
        print(f"# round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
    print(f"µs per call, medians of {args.rounds} rounds of {args.n}; daemons on CPU 1, "
          "client on CPU 0; bare: bench/pci_ins.py's blocking Python client")
    rows = []
    for kind in KINDS:
        for d in daemons:
            lx, bare = med(per[d][(kind, "libxenstore")]), med(per[d][(kind, "bare")])
            rows.append([kind, d, f"{lx:.0f}", f"{bare:.0f}", f"{lx / bare:.2f}"])
    table(["call", "daemon", "libxenstore", "bare", "libxenstore/bare"], rows)


if __name__ == "__main__":
    main()
