"""Instructions the toolstack and the agent execute per control-channel exchange,
counted by callgrind (issue 16, part 3).

The channel's round trip on this machine is bound by the CPU the toolstack and the
agent share (bench/pci_ins.py prints their CPU per exchange beside the wall time), and
both wall and CPU time drift by a third from one minute to the next here.  An
instruction count does not: this is the figure to judge a change of the toolstack or
the agent by.

A real host on our xenstored (``stubdom host up``), whose stubdomain kernel runs the
agent under ``valgrind --tool=callgrind --instr-atstart=no``; the toolstack is a child
process of this script under callgrind too.  Around each exchange the toolstack stops
and this script zeroes both counters (``callgrind_control -z``), lets it run the one
exchange, waits until the agent is idle again (its console-0 log line lingers 2 ms
before the write: it is counted with the exchange that logged it), and dumps both
(``--dump``).  The control's own cost (a zero then a dump with nothing between) is
subtracted.  ``PYTHONHASHSEED=0`` in both.

Kinds: ``pci-ins`` and ``pci-rem`` (`DeviceModelChannel.pci_insert` / ``pci_remove``
of the same function, alternately), ``save`` and ``continue`` (``save`` / ``resume``,
alternately).

    .venv/bin/python bench/chaninstr.py [--n 10] [--base DIR]

``--base DIR`` also counts another checkout (``DIR/src`` first on the path of both
processes): a before/after table with the ratio after/before.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import CLIENT_CPU, BenchHost, run_loop, table  # noqa: E402

KINDS = ("pci-ins", "pci-rem", "save", "continue")
#: The agent is idle again this long after the toolstack's exchange returned (its log
#: line lingers 2 ms; under callgrind everything is some 50 times slower).
SETTLE = 0.5


def callgrind(out: Path, tag: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--vgdb-prefix={out}/vgdb",
            f"--callgrind-out-file={out}/{tag}.%p"]


class Counted:
    """A process under callgrind, and its control."""

    def __init__(self, pid: int, out: Path, tag: str) -> None:
        self.pid, self.out, self.tag = pid, out, tag
        self.dumps = 0

    def control(self, *opts: str) -> None:
        r = subprocess.run(["callgrind_control", f"--vgdb-prefix={self.out}/vgdb", *opts,
                            str(self.pid)], capture_output=True, text=True)
        if r.returncode != 0 or "Error" in r.stdout + r.stderr:
            raise RuntimeError(f"callgrind_control {' '.join(opts)} {self.tag}: "
                               f"{r.stderr.strip() or r.stdout.strip()}")

    def dump(self) -> int:
        self.control("--dump")
        self.dumps += 1
        text = (self.out / f"{self.tag}.{self.pid}.{self.dumps}").read_text(errors="replace")
        m = re.search(r"^totals: (\d+)", text, re.M) or re.search(r"^summary: (\d+)", text, re.M)
        if m is None:
            raise RuntimeError(f"no totals in the dump of {self.tag}")
        return int(m.group(1))


# -- the toolstack child -------------------------------------------------------------------


def toolstack_child(host_dir: str, n: int) -> None:
    """Warm up, then for each exchange: say its kind, wait for ``go``, run it, say ``end``
    and wait for ``next``."""
    from stubdom import compiled

    compiled.install()  # as `stubdom pci-attach` (the agent's main installs it too)
    from stubdom.protocol import Bdf
    from stubdom.toolstack import operations as ops_mod
    from stubdom.toolstack.session import open_session

    def sync(line: str) -> None:
        print(line, flush=True)
        sys.stdin.readline()

    async def go() -> None:
        async with open_session(host_dir) as s:
            guest = (await s.resolve_guest("g")).domid
            stub = await s.stubdom_of(guest)
            assert stub is not None
            chan = ops_mod.channel(s, stub, guest)
            steps = {"pci-ins": lambda: chan.pci_insert(Bdf(0, 4, 0, 0)),
                     "pci-rem": lambda: chan.pci_remove(Bdf(0, 4, 0, 0)),
                     "save": chan.save, "continue": chan.resume}
            for _ in range(3):  # warm: watches set, first-time paths taken
                for kind in KINDS:
                    await steps[kind]()
            sync("warm")
            for _ in range(n):
                for kind in KINDS:
                    sync(kind)
                    await steps[kind]()
                    sync("end")

    run_loop(go())
    print("done", flush=True)


# -- the driver ----------------------------------------------------------------------------


def count(tree: Path, n: int) -> dict[str, dict[str, float]]:
    """``{kind: {"toolstack": instr, "agent": instr}}``, medians over ``n`` of each."""
    out = Path(tempfile.mkdtemp(prefix="chi-", dir="/tmp"))
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(tree / "src"))
    with BenchHost("chi") as h:
        kernel = h.dir / "kernel-g"
        cfg = h.config("g", cmdline="--eject-delay=0", devices=False)
        kernel.write_text(f"#!/bin/sh\nPYTHONHASHSEED=0 PYTHONPATH={tree / 'src'} exec "
                          f"{' '.join(callgrind(out, 'agent'))} {sys.executable} "
                          "-m stubdom.stubdomain.main \"$@\"\n")
        h.run("create", str(cfg))
        agent = Counted(max(h.domain_pids().items())[1], out, "agent")
        ts = subprocess.Popen(
            [*callgrind(out, "ts"), sys.executable, __file__, "--toolstack", str(h.dir),
             str(n)],
            env={**env, "STUBDOM_HOST_DIR": str(h.dir)}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {CLIENT_CPU}))
        try:
            return drive(ts, Counted(ts.pid, out, "ts"), agent)
        finally:
            ts.kill()
            ts.wait()
            shutil.rmtree(out, ignore_errors=True)


def drive(proc: subprocess.Popen[str], ts: Counted, agent: Counted
          ) -> dict[str, dict[str, float]]:
    assert proc.stdin is not None and proc.stdout is not None
    got: dict[str, dict[str, list[int]]] = {k: {"toolstack": [], "agent": []} for k in KINDS}

    def expect() -> str:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the toolstack child ended early")
        return line

    def reply(word: str) -> None:
        proc.stdin.write(word + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    if expect() != "warm":
        raise RuntimeError("the toolstack child did not warm up")
    for p in (ts, agent):
        p.control("-i", "on")
    base = {p.tag: min(zero_dump(p) for _ in range(3)) for p in (ts, agent)}
    reply("go")
    while (kind := expect()) != "done":
        time.sleep(SETTLE)
        for p in (ts, agent):
            p.control("-z")
        reply("go")
        if expect() != "end":
            raise RuntimeError(f"the toolstack child did not finish {kind}")
        time.sleep(SETTLE)
        for p, who in ((ts, "toolstack"), (agent, "agent")):
            got[kind][who].append(p.dump() - base[p.tag])
        reply("next")
    return {k: {w: statistics.median(v) for w, v in d.items()} for k, d in got.items()}


def zero_dump(p: Counted) -> int:
    p.control("-z")
    return p.dump()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--toolstack":
        toolstack_child(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10, help="exchanges of each kind")
    ap.add_argument("--base", type=Path, help="another checkout to count first")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("chaninstr: needs valgrind (callgrind, callgrind_control)")
    trees = ([args.base.resolve()] if args.base else []) + [ROOT]
    results = {tree: count(tree, args.n) for tree in trees}
    print(f"instructions per exchange (thousands), medians of {args.n}; "
          f"{', '.join(str(t) for t in trees)}")
    header = ["exchange"]
    for t in trees:
        header += [f"{t.name} toolstack", f"{t.name} agent"]
    if args.base:
        header += ["after/before ts", "after/before agent"]
    rows = []
    for kind in KINDS:
        row: list[object] = [kind]
        for t in trees:
            row += [f"{results[t][kind][w] / 1e3:.0f}" for w in ("toolstack", "agent")]
        if args.base:
            b, a = results[trees[0]][kind], results[ROOT][kind]
            row += [f"{a[w] / b[w]:.2f}" for w in ("toolstack", "agent")]
        rows.append(row)
    table(header, rows)


if __name__ == "__main__":
    main()
