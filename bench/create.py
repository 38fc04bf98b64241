"""Create -> running on our xenstored, cx and ox, one guest and many at once, and the host's
memory (issue #8, items 2, 3; issue 15).

For each xenstored (``stubdom host up --xenstored ours|cx|ox``) and N in 1, 10, 50,
100: a fresh ``stubdom host``, then N guests (a disk and a nic each, the ``sim`` device
model) created at the same moment through the toolstack API
(`operations.create_guest`, one asyncio task per guest on one session, so the
toolstack's start-up is not counted).  Per guest: from its create call to its return
(the stubdomain wrote ``running``, the guest is unpaused); total: from the first call to
the last return.  On cx and ox every domain reaches the daemon over its ring through a
relay socket inside the host daemon (`stubdom.host.xslink`); on ours over the daemon's
own per-domain socket.

Interleaving: within a round the daemons alternate at every sample (N=1: host, host,
host, then again, five times; each N likewise), and each round and repetition starts
with another daemon, so a drift of the machine hits all three alike.

Pinning (two CPUs): N=1 has xenstored on CPU 1 and everything else on CPU 0 (the host
daemon with the relays, the stubdomain's agent, the guest, this toolstack).  N > 1 pins
nothing: the agents' work is parallel and the domains run on the host too, so all share
both CPUs.

Memory: VmRSS (and PSS, which shares the interpreter's pages fairly) of one agent
process, and of the whole host (xenstored + host daemon + every agent) once all N run.

    .venv/bin/python bench/create.py [--rounds 3] [--counts 1,10,50,100]
                                     [--xenstored ours,cx,ox] [--quick]

Prints three tables: create -> running (per N: the median per-guest time, the slowest
guest, the total; medians and spread per daemon, ratios cx/ours and ox/ours), memory and
CPU seconds (medians, one row per N and daemon).  ``--quick``: one round of N=1 (three
hosts per daemon) and N=10.

Targets (ours): one guest <= 150 ms; 100 guests within 10 s; one agent <= 30 MiB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import (  # noqa: E402
    CLIENT_CPU,
    SERVER_CPU,
    BenchHost,
    Figure,
    compare,
    machine_busy,
    med,
    need_two_cpus,
    rotated,
    rss_kib,
    table,
    verdict,
    xenstoreds,
)
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


def one_run(n: int, xenstored: str
            ) -> tuple[list[float], float, dict[str, float], dict[str, float]]:
    """Per-guest ms, total s, memory figures (MiB) and CPU seconds for N concurrent
    creates on a host running ``xenstored``."""
    alone = n == 1  # pinned apart; many guests share both CPUs
    xs_cpus, rest_cpus = ({SERVER_CPU}, {CLIENT_CPU}) if alone else ({0, 1}, {0, 1})
    os.sched_setaffinity(0, rest_cpus)
    with BenchHost(f"c{n}{xenstored}", xenstored_cpus=xs_cpus, daemon_cpus=rest_cpus,
                   xenstored=xenstored) as h:
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
        agents = list(h.domain_pids().values())
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
    os.sched_setaffinity(0, {0, 1})
    return per, total, mem, cpu


Key = tuple[int, str]  # (N, xenstored)


@dataclass
class Samples:
    per_guest: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    worst: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    totals: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    mems: dict[Key, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    cpus: dict[Key, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)


def collect(rounds: int, counts: list[int], daemons: list[str], one_reps: int) -> Samples:
    """Every sample, the daemons interleaved (`rotated`: each pass starts with another)."""
    got = Samples()
    t_start = time.monotonic()
    turn = 0
    for rnd in range(rounds):
        for n in counts:
            for _ in range(one_reps if n == 1 else 1):  # one guest is quick: more samples
                for d in rotated(daemons, turn):
                    try:
                        per, total, mem, cpu = one_run(n, d)
                    except Exception as e:  # reported; the other daemons go on
                        print(f"# N={n} on {d} failed: {e}", file=sys.stderr, flush=True)
                        got.failures.append(f"round {rnd + 1}, N={n} on {d}: {e}")
                        continue
                    got.per_guest[n, d].append(med(per))
                    got.worst[n, d].append(max(per))
                    got.totals[n, d].append(total)
                    got.mems[n, d].append(mem)
                    got.cpus[n, d].append(cpu)
                turn += 1
        print(f"# round {rnd + 1}/{rounds} ({time.monotonic() - t_start:.0f}s)",
              file=sys.stderr, flush=True)
    return got


def report(got: Samples, rounds: int, counts: list[int], daemons: list[str],
           one_reps: int) -> None:
    print(f"create -> running, N guests at once via the API, {rounds} round(s), the "
          f"daemons interleaved (N=1: {one_reps} hosts per daemon and round, xenstored on "
          f"CPU {SERVER_CPU}, the rest on CPU {CLIENT_CPU}; N>1: both CPUs shared)")
    print("median and spread (min..max, or p25..p75 from 8 samples) of the per-host "
          "figures; ratios of the medians")
    figs = []
    for n in counts:
        def by(d: dict[Key, list[float]], n: int = n) -> dict[str, list[float]]:
            return {x: d[n, x] for x in daemons}

        ours_pg, ours_tot = med(got.per_guest[n, "ours"]), med(got.totals[n, "ours"])
        tgt = f"<= {ONE_GUEST_MS:g} ms: {verdict(ours_pg <= ONE_GUEST_MS)}" if n == 1 else ""
        figs.append(Figure(f"N={n}: per guest ms", by(got.per_guest), target=tgt))
        if n > 1:
            figs.append(Figure(f"N={n}: slowest ms", by(got.worst)))
            tgt = f"<= {HUNDRED_S:g} s: {verdict(ours_tot <= HUNDRED_S)}" if n == 100 else ""
            figs.append(Figure(f"N={n}: total s", by(got.totals), "{:.2f}", tgt))
    compare("figure", daemons, figs)
    print("memory (MiB) once all N run, medians; agent: median over the agents")
    keys = ["agent rss", "agent pss", "xenstored rss", "daemon rss", "host rss", "host pss"]
    rows = []
    for n in counts:
        for d in daemons:
            m = {k: med([x[k] for x in got.mems[n, d]]) for k in keys}
            tgt = f"agent <= {AGENT_MIB:g} MiB: {verdict(m['agent rss'] <= AGENT_MIB)}"
            rows.append([n, d, *(f"{m[k]:.1f}" for k in keys), tgt if d == "ours" else ""])
    table(["guests", "on", *keys, "target"], rows)
    print("CPU seconds spent during the creates, medians (the host daemon holds the "
          "relays on cx/ox)")
    keys = ["xenstored", "host daemon", "agents", "toolstack"]
    rows = []
    for n in counts:
        for d in daemons:
            m = {k: med([x[k] for x in got.cpus[n, d]]) for k in keys}
            rows.append([n, d, *(f"{m[k]:.2f}" for k in keys), f"{sum(m.values()):.2f}",
                         f"{m['agents'] / n * 1e3:.0f}"])
    table(["guests", "on", *keys, "sum", "per agent ms"], rows)
    if got.failures:
        print(f"{len(got.failures)} run(s) FAILED, their samples are missing:")
        for f in got.failures:
            print(f"  {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--counts", default="1,10,50,100")
    ap.add_argument("--xenstored", default="ours,cx,ox", help="comma list of daemons")
    ap.add_argument("--quick", action="store_true", help="1 round of 1 (x3) and 10 guests")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    one_reps = 5
    if args.quick:
        args.rounds, counts, one_reps = 1, [1, 10], 3
    daemons = xenstoreds(args.xenstored)
    need_two_cpus()
    print(machine_busy())
    t_start = time.monotonic()
    got = collect(args.rounds, counts, daemons, one_reps)
    report(got, args.rounds, counts, daemons, one_reps)
    print(f"# total {time.monotonic() - t_start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
