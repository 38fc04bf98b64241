"""What the protocol benchmarks share: a real `stubdom host` in a short /tmp directory,
pinned to CPUs, guest configs and kernels, process memory, and the tables they print.

Not a benchmark itself (and not collected by pytest: bench/ is outside ``testpaths``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
STUBDOM = [sys.executable, "-m", "stubdom"]
#: xenstored on one CPU, everything else (host daemon, agents, toolstack) on the other.
SERVER_CPU, CLIENT_CPU = 1, 0
GUARD = 300.0  # a guard against a hang, never a pacing delay


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``main`` on the event loop our processes run (`stubdom.eventloop.run`: uvloop's
    where installed), or asyncio's for a checkout from before that module."""
    try:
        from stubdom.eventloop import run
    except ImportError:
        return asyncio.run(main)
    return run(main)


def need_two_cpus() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs two CPUs to pin xenstored and its clients apart")


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def machine_busy(window: float = 2.0) -> str:
    """A warning line if another benchmark runs or the CPUs are busy (sampled over
    ``window`` seconds before we start), else a line saying the machine is quiet."""
    r = subprocess.run(["pgrep", "-f", "bench/xenstored.py"], capture_output=True, text=True)
    others = [p for p in r.stdout.split() if int(p) != os.getpid()]
    busy0, total0 = _cpu_ticks()
    time.sleep(window)
    busy1, total1 = _cpu_ticks()
    used = (busy1 - busy0) / max(total1 - total0, 1)
    notes = []
    if others:
        notes.append(f"bench/xenstored.py is running (pids {' '.join(others)})")
    if used > 0.1:
        notes.append(f"the CPUs were {used:.0%} busy over {window:g} s before the start")
    if notes:
        return "# WARNING: machine busy: " + "; ".join(notes)
    return f"# machine quiet: CPUs {used:.0%} busy over {window:g} s before the start"


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Pin every thread of ``pid``."""
    cpuset = set(cpus)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpuset)


@dataclass
class BenchHost:
    """``stubdom host up --dir DIR``, xenstored pinned to ``xenstored_cpus`` and the host
    daemon (hence every domain it starts, and on cx/ox the domains' relays onto their
    rings, which run inside it) to ``daemon_cpus``."""

    tag: str
    xenstored_cpus: set[int] = field(default_factory=lambda: {SERVER_CPU})
    daemon_cpus: set[int] = field(default_factory=lambda: {CLIENT_CPU})
    trace: Path | None = None
    #: ``host up --xenstored``: ours, cx or ox.
    xenstored: str = "ours"
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"b{self.tag}-", dir="/tmp"))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STUBDOM_HOST_DIR": str(self.dir)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*STUBDOM, *args], env=self.env, capture_output=True, text=True, timeout=GUARD
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"stubdom {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def up(self) -> None:
        extra = ["--trace", str(self.trace)] if self.trace is not None else []
        if self.xenstored != "ours":
            extra += ["--xenstored", self.xenstored]
        self.run("host", "up", *extra)
        pin(self.xenstored_pid, self.xenstored_cpus)
        pin(self.daemon_pid, self.daemon_cpus)

    def down(self) -> None:
        self.run("host", "down", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BenchHost:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def xenstored_pid(self) -> int:
        return int((self.dir / "xenstored.pid").read_text())

    @property
    def daemon_pid(self) -> int:
        return int((self.dir / "host.pid").read_text())

    @property
    def socket(self) -> str:
        return str(self.dir / "xenstored" / "socket")

    def domain_pids(self) -> dict[int, int]:
        """``{domid: pid}`` of every running domain process (known by XENSTORED_PATH)."""
        prefix = f"XENSTORED_PATH={self.dir}/xenstored/socket.d/".encode()
        found: dict[int, int] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for var in environ:
                if var.startswith(prefix):
                    found[int(var[len(prefix):])] = int(proc.name)
        return found

    def kernel(self, name: str, fault: str | None = None) -> Path:
        """The stubdomain kernel: the agent, or tests/faults/faulty_stub.py with ``fault``."""
        path = self.dir / f"kernel-{name}"
        program = (f"{ROOT}/tests/faults/faulty_stub.py {ROOT} {fault}" if fault
                   else "-m stubdom.stubdomain.main")
        path.write_text(f'#!/bin/sh\nexec {sys.executable} {program} "$@"\n')
        path.chmod(0o755)
        return path

    def config(self, name: str, *, cmdline: str = "", fault: str | None = None,
               devices: bool = True, index: int = 0) -> Path:
        """A guest (with a disk and a nic if ``devices``) and its stubdomain's kernel."""
        lines = [
            'type = "hvm"', f'name = "{name}"', "memory = 128",
            'device_model_version = "qemu-xen-traditional"',
            "device_model_stubdomain_override = 1",
            f'stubdomain_kernel = "{self.kernel(name, fault)}"',
        ]
        if cmdline:
            lines.append(f'stubdomain_cmdline = "{cmdline}"')
        if devices:
            disk = self.dir / f"{name}.img"
            disk.write_bytes(b"\0" * 8192)
            mac = f"00:16:3e:12:{index >> 8:02x}:{index & 255:02x}"
            lines += [f"disk = [ '{disk},raw,hda,rw' ]", f"vif = [ 'mac={mac}' ]"]
        cfg = self.dir / f"{name}.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg


# -- statistics and tables ---------------------------------------------------------------


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``lo..hi``: the interquartile range from 8 samples on, else the whole range."""
    if not xs:
        return "-"
    if len(xs) >= 8:
        q = statistics.quantiles(xs, n=4)
        lo, hi = q[0], q[2]
    else:
        lo, hi = min(xs), max(xs)
    return f"{fmt.format(lo)}..{fmt.format(hi)}"


def ratio(x: float, base: float) -> str:
    """``x / base`` to two places, ``-`` if either is missing (NaN) or base is 0."""
    if math.isnan(x) or math.isnan(base) or base == 0:
        return "-"
    return f"{x / base:.2f}"


@dataclass
class Figure:
    """One row of a `compare` table: a label, samples per daemon, a format, a target."""

    label: str
    samples: dict[str, list[float]]
    fmt: str = "{:.0f}"
    target: str = ""


def compare(first: str, daemons: Sequence[str], figures: Sequence[Figure]) -> None:
    """A table with, per daemon, the median and the spread (`spread`) of each figure,
    then the ratios of the others to ours (from the medians), then the target."""
    others = [d for d in daemons if d != "ours"]
    base = "ours" in daemons
    headers = [first]
    for d in daemons:
        headers += [d, f"{d} spread"]
    headers += [f"{d}/ours" for d in others if base]
    headers.append("target")
    rows = []
    for f in figures:
        m = {d: med(f.samples.get(d, [])) for d in daemons}
        row: list[object] = [f.label]
        for d in daemons:
            row += ["-" if math.isnan(m[d]) else f.fmt.format(m[d]),
                    spread(f.samples.get(d, []), f.fmt)]
        row += [ratio(m[d], m["ours"]) for d in others if base]
        row.append(f.target)
        rows.append(row)
    table(headers, rows)


def rotated(xs: Sequence[str], k: int) -> list[str]:
    """``xs`` started at its ``k``-th element: round k of an interleaved run starts with
    another daemon each time, so none is always the first after a pause."""
    k %= max(len(xs), 1)
    return [*xs[k:], *xs[:k]]


def xenstoreds(wanted: str) -> list[str]:
    """The daemons of a comma list (ours, cx, ox) that can run here; a missing real one is
    reported on stderr and left out."""
    from stubdom import realxs
    from stubdom.realxs import Flavour

    out = []
    for name in (w.strip() for w in wanted.split(",") if w.strip()):
        if name not in ("ours", "cx", "ox"):
            sys.exit(f"bench: no xenstored called {name!r}: choose ours, cx, ox")
        if name == "ours" or realxs.available(Flavour(name)):
            out.append(name)
        else:
            print(f"# {name} is not available here (xen-utils-4.17 and gcc): left out",
                  file=sys.stderr)
    return out


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table, columns as wide as their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
