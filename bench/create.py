"""Create -> running for many guests at once, and the host's memory (issue #8, items 2, 3).

For N in 1, 10, 50, 100: a fresh ``stubdom host``, then N guests (a disk and a nic
each, the ``sim`` device model) created at the same moment through the toolstack API
(`operations.create_guest`, one asyncio task per guest on one session, so the
toolstack's start-up is not counted).  Nothing is pinned: xenstored, the host daemon,
the agents and the toolstack share both CPUs.  Per guest: from its create call to its
return (the stubdomain wrote ``running``, the guest is unpaused); total: from the first
call to the last return.

Memory: VmRSS (and PSS, which shares the interpreter's pages fairly) of one agent
process, and of the whole host (xenstored + host daemon + every agent) once all N run.

    .venv/bin/python bench/create.py [--rounds 3] [--counts 1,10,50,100] [--quick]

Targets: one guest <= 150 ms; 100 guests within 10 s; one agent <= 30 MiB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import BenchHost, machine_busy, med, rss_kib, table, verdict  # noqa: E402
from stubdom.toolstack.configure import load_config  # noqa: E402
from stubdom.toolstack.operations import create_guest  # noqa: E402
from stubdom.toolstack.session import open_session  # noqa: E402

ONE_GUEST_MS = 150.0
HUNDRED_S = 10.0
AGENT_MIB = 30.0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(n: int) -> tuple[list[float], float, dict[str, float], dict[str, float]]:
    """Per-guest ms, total s, memory figures (MiB) and CPU seconds for N concurrent
    creates."""
    with BenchHost(f"c{n}", xenstored_cpus={0, 1}, daemon_cpus={0, 1}) as h:
        cfgs = [load_config(h.config(f"g{i}", index=i)) for i in range(n)]

        async def go() -> tuple[list[float], float]:
            async with open_session(str(h.dir)) as s:
                async def one(cfg: object) -> float:
                    t0 = time.perf_counter()
                    await create_guest(s, cfg)  # type: ignore[arg-type]
                    return (time.perf_counter() - t0) * 1e3

                t0 = time.perf_counter()
                per = await asyncio.gather(*(one(c) for c in cfgs))
                return list(per), time.perf_counter() - t0

        xs0, dm0, ts0 = cpu_s(h.xenstored_pid), cpu_s(h.daemon_pid), time.process_time()
        per, total = asyncio.run(go())
        cpu = {"xenstored": cpu_s(h.xenstored_pid) - xs0, "host daemon": cpu_s(h.daemon_pid) - dm0,
               "toolstack": time.process_time() - ts0}
        time.sleep(0.5)  # let the agents settle after running
        doms = h.domain_pids()
        agents = list(doms.values())
        if len(agents) != n:
            raise RuntimeError(f"{len(agents)} stubdomain processes for {n} guests")
        host_pids = [h.xenstored_pid, h.daemon_pid, *agents]
        mem = {
            "agent rss": med([rss_kib(p) for p in agents]) / 1024,
            "agent pss": med([pss_kib(p) for p in agents]) / 1024,
            "xenstored rss": rss_kib(h.xenstored_pid) / 1024,
            "daemon rss": rss_kib(h.daemon_pid) / 1024,
            "host rss": sum(rss_kib(p) for p in host_pids) / 1024,
            "host pss": sum(pss_kib(p) for p in host_pids) / 1024,
        }
        cpu["agents"] = sum(cpu_s(p) for p in agents)  # all of their lives: ~ the create
    return per, total, mem, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--counts", default="1,10,50,100")
    ap.add_argument("--quick", action="store_true", help="1 round of 1, 10 and 100 guests")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.quick:
        args.rounds, counts = 1, [1, 10, 100]
    print(machine_busy())
    t_start = time.monotonic()
    per_guest: dict[int, list[float]] = collections.defaultdict(list)
    worst: dict[int, list[float]] = collections.defaultdict(list)
    totals: dict[int, list[float]] = collections.defaultdict(list)
    mems: dict[int, list[dict[str, float]]] = collections.defaultdict(list)
    cpus: dict[int, list[dict[str, float]]] = collections.defaultdict(list)
    for rnd in range(args.rounds):
        for n in counts:
            reps = 5 if n == 1 else 1  # one guest is quick: more samples
            for _ in range(reps):
                per, total, mem, cpu = one_run(n)
                cpus[n].append(cpu)
                per_guest[n].append(med(per))
                worst[n].append(max(per))
                totals[n].append(total)
                mems[n].append(mem)
        print(f"# round {rnd + 1}/{args.rounds} ({time.monotonic() - t_start:.0f}s)",
              file=sys.stderr, flush=True)

    print(f"create -> running, N guests at once via the API, both CPUs shared, medians "
          f"over {args.rounds} round(s) (N=1: 5 hosts per round)")
    rows = []
    for n in counts:
        tgt = ""
        if n == 1:
            tgt = f"<= {ONE_GUEST_MS:g} ms: {verdict(med(per_guest[n]) <= ONE_GUEST_MS)}"
        if n == 100:
            tgt = f"total <= {HUNDRED_S:g} s: {verdict(med(totals[n]) <= HUNDRED_S)}"
        rows.append([n, f"{med(per_guest[n]):.0f}", f"{med(worst[n]):.0f}",
                     f"{med(totals[n]):.2f}", f"{med(totals[n]) / n * 1e3:.0f}", tgt])
    table(["guests", "per guest ms (median)", "slowest ms", "total s", "total/N ms",
           "target"], rows)
    print("memory (MiB) once all N run; agent: median over the agents")
    keys = ["agent rss", "agent pss", "xenstored rss", "daemon rss", "host rss", "host pss"]
    rows = []
    for n in counts:
        m = {k: med([x[k] for x in mems[n]]) for k in keys}
        rows.append([n, *(f"{m[k]:.1f}" for k in keys),
                     f"agent <= {AGENT_MIB:g} MiB: {verdict(m['agent rss'] <= AGENT_MIB)}"])
    table(["guests", *keys, "target"], rows)
    print("CPU seconds spent during the creates (2 CPUs: the wall time is at least half "
          "their sum)")
    keys = ["xenstored", "host daemon", "agents", "toolstack"]
    rows = []
    for n in counts:
        m = {k: med([x[k] for x in cpus[n]]) for k in keys}
        rows.append([n, *(f"{m[k]:.2f}" for k in keys), f"{sum(m.values()):.2f}",
                     f"{m['agents'] / n * 1e3:.0f}"])
    table(["guests", *keys, "sum", "per agent ms"], rows)
    print(f"# total {time.monotonic() - t_start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
