"""The asyncio xenstore client's own cost per operation (issue #16, part 3).

What our `Client` costs *its own process* for one round trip, not how long the round
trip takes: the machine is shared, so wall time says little, but the client's CPU time
and its instruction count do not depend on who else runs.  Measured per:

- ``read``:  ``await client.read(path)`` (one request, one reply);
- ``write``: ``await client.write(path, value)``;
- ``batch``: a 3-request `Batch` (``read_text``, ``write``, ``read_text``) and ``send``;
- ``event``: a watch event delivered to a `WatchGroup` and its waiter woken
  (``take``, then ``changed``).  A bare blocking client in another process writes the
  node each time the measured client asks it to through a pipe: the figure includes
  that one-byte ``os.write``, the same before and after any change of the client;
- ``bare-read``: the floor of any asyncio client, for scale: a READ prepared once as
  bytes, written on a plain `asyncio.Protocol` whose ``data_received`` completes a
  future (no framing, no matching, no timeout).

Each operation runs in a child process (the client) against our xenstored
(tests/support/daemons.py ``start_ours``) pinned to CPU 1, the client and the writer on
CPU 0.  Figures, per operation:

- ``cpu µs``: the child's ``time.process_time`` (user + system) over ``--ops``
  operations, divided; the median of ``--rounds`` rounds and their spread;
- ``calls``: Python and C function calls counted by cProfile (deterministic);
- ``Ir`` (``--callgrind``): user-space instructions of the client process alone under
  ``valgrind --tool=callgrind``, from two runs of different lengths (the difference,
  so start-up and imports cancel out);
- ``syscalls`` (``--syscalls``): the client process's system calls under ``strace -c``,
  the same difference of two runs (callgrind does not see the kernel's side).

``--src DIR`` makes the client import ``stubdom`` from DIR (say, an older checkout's
``src`` from ``git archive``), for a before/after on the same daemon in one run.

    .venv/bin/python bench/client_cost.py [--ops 2000] [--rounds 7] [--callgrind]
                                          [--syscalls] [--src DIR]
                                          [--only read,write,batch,event]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import (  # noqa: E402
    CLIENT_CPU,
    SERVER_CPU,
    machine_busy,
    med,
    need_two_cpus,
    spread,
    table,
)
from bench.rawxs import HDR, RawConnection  # noqa: E402
from stubdom.xenstore import Client, WatchGroup  # noqa: E402
from stubdom.xenstore.pipeline import Batch  # noqa: E402
from tests.support.daemons import Daemon, start_ours  # noqa: E402

MODES = ("read", "write", "batch", "event", "bare-read")
BASE = "/local/domain/0/client-cost"
READ, WRITE = 2, 11
WARMUP = 200
#: Operations of the short and the long callgrind run.
CG_SHORT, CG_LONG = 100, 600


# -- the child: one client, one kind of operation ------------------------------------


def writer_helper(sock: str, path: str) -> None:
    """The bare writer: one WRITE of ``path`` per byte read from stdin, until EOF."""
    conn = RawConnection(sock)
    payload = path.encode() + b"\0" + b"x"
    stdin = sys.stdin.buffer.raw
    while stdin.read(1):
        conn.send(WRITE, payload)
        conn.packet()


class BareProtocol(asyncio.Protocol):
    """The least an asyncio client can do per reply: complete the waiting future."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None:
            self.waiter.set_result(data)


async def bare_op(sock: str, path: str) -> Callable[[], Awaitable[None]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_unix_connection(BareProtocol, sock)
    payload = path.encode() + b"\0"
    message = HDR.pack(READ, 1, 0, len(payload)) + payload

    async def op() -> None:
        proto.waiter = loop.create_future()
        transport.write(message)
        await proto.waiter
    return op


async def make_op(mode: str, client: Client, sock: str) -> Callable[[], Awaitable[None]]:
    paths = [f"{BASE}/{n}" for n in ("a", "b", "c")]
    for p in paths:
        await client.write(p, b"some-value")
    if mode == "bare-read":
        return await bare_op(sock, paths[0])
    if mode == "read":
        async def op() -> None:
            await client.read(paths[0])
        return op
    if mode == "write":
        async def op() -> None:
            await client.write(paths[0], b"value")
        return op
    if mode == "batch":
        async def op() -> None:
            b = Batch(client)
            b.read_text(paths[0])
            b.write(paths[1], "value")
            b.read_text(paths[2])
            await b.send()
        return op
    group = await WatchGroup(client, [paths[0]]).start()
    writer = subprocess.Popen(
        [sys.executable, __file__, "--writer", sock, paths[0]], stdin=subprocess.PIPE
    )
    assert writer.stdin is not None
    wfd = writer.stdin.fileno()

    async def op() -> None:
        group.take()
        os.write(wfd, b"x")
        await group.changed()
    return op


async def child(mode: str, sock: str, ops: int, rounds: int, profile: bool) -> dict[str, object]:
    client = await Client.connect(sock)
    op = await make_op(mode, client, sock)
    for _ in range(WARMUP):
        await op()
    cpu: list[float] = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(ops):
            await op()
        cpu.append((time.process_time() - t0) / ops * 1e6)
    calls = 0.0
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(ops):
            await op()
        prof.disable()
        calls = pstats.Stats(prof).total_calls / ops  # type: ignore[attr-defined]
    await client.close()
    return {"cpu": cpu, "calls": calls}


def child_main(mode: str, sock: str, ops: int, rounds: int, profile: bool) -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})
    out = asyncio.run(child(mode, sock, ops, rounds, profile))
    print(json.dumps(out), flush=True)
    # The writer (event) ends at its stdin's EOF when we exit.


# -- the parent ------------------------------------------------------------------------


#: ``--src``: where the child imports stubdom from (None: this checkout).
SRC: str | None = None


def run_child(daemon: Daemon, mode: str, ops: int, rounds: int, *, profile: bool = False,
              wrapper: list[str] | None = None) -> tuple[dict[str, object], str]:
    cmd = [*(wrapper or []), sys.executable, __file__, "--child", mode, daemon.socket,
           str(ops), str(rounds), "1" if profile else "0"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if SRC is not None:
        env["PYTHONPATH"] = SRC
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"client child ({mode}) failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def instructions(daemon: Daemon, mode: str, ops: int) -> int:
    out = f"/tmp/client-cost-{os.getpid()}.cg"
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    try:
        _, err = run_child(daemon, mode, ops, 1, wrapper=vg)
    finally:
        if os.path.exists(out):
            os.unlink(out)
    m = re.search(r"Collected : (\d+)", err)
    if m is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {err[-500:]}")
    return int(m.group(1))


def syscalls(daemon: Daemon, mode: str, ops: int) -> int:
    out = f"/tmp/client-cost-{os.getpid()}.strace"
    try:
        run_child(daemon, mode, ops, 1, wrapper=["strace", "-c", "-o", out])
        text = Path(out).read_text()
    finally:
        if os.path.exists(out):
            os.unlink(out)
    m = re.search(r"^-+.*\n\s*100\.00\s+\S+\s+\S+\s+(\d+)", text, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no total in strace's summary: {text[-500:]}")
    return int(m.group(1))


def per_op(count: Callable[[Daemon, str, int], int], daemon: Daemon, mode: str) -> float:
    """What ``count`` gives per operation: the difference of a long and a short run."""
    return (count(daemon, mode, CG_LONG) - count(daemon, mode, CG_SHORT)) / (CG_LONG - CG_SHORT)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--writer":
        writer_helper(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                   sys.argv[6] == "1")
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="operations per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--callgrind", action="store_true", help="also count instructions")
    ap.add_argument("--syscalls", action="store_true", help="also count system calls")
    ap.add_argument("--src", help="import stubdom from this directory in the client")
    ap.add_argument("--only", default=",".join(MODES), help="comma list of operations")
    args = ap.parse_args()
    modes = [m for m in args.only.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        sys.exit(f"bench: unknown operation {', '.join(bad)}; choose from {', '.join(MODES)}")
    global SRC
    SRC = args.src
    need_two_cpus()
    print(machine_busy())
    os.sched_setaffinity(0, {SERVER_CPU})
    daemon = start_ours()
    os.sched_setaffinity(0, {CLIENT_CPU})
    rows = []
    try:
        for mode in modes:
            got, _ = run_child(daemon, mode, args.ops, args.rounds, profile=True)
            cpu = [float(x) for x in got["cpu"]]  # type: ignore[attr-defined]
            row: list[object] = [mode, f"{med(cpu):.1f}", spread(cpu, "{:.1f}"),
                                 f"{float(got['calls']):.0f}"]  # type: ignore[arg-type]
            if args.callgrind:
                row.append(f"{per_op(instructions, daemon, mode):,.0f}")
            if args.syscalls:
                row.append(f"{per_op(syscalls, daemon, mode):.2f}")
            rows.append(row)
            print(f"# {mode} done", file=sys.stderr, flush=True)
    finally:
        daemon.stop()
    print(f"client cost per operation: {args.rounds} rounds of {args.ops}; xenstored (ours) "
          f"on CPU {SERVER_CPU}, the client on CPU {CLIENT_CPU}; stubdom from "
          f"{args.src or 'this checkout'}")
    headers = ["operation", "cpu µs (median)", "spread", "calls"]
    if args.callgrind:
        headers.append(f"Ir ({CG_LONG}-{CG_SHORT} ops)")
    if args.syscalls:
        headers.append("syscalls")
    table(headers, rows)


if __name__ == "__main__":
    main()
