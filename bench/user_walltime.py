"""What a user feels: ``stubdom create`` -> running and ``stubdom pci-attach`` timed from
the shell, for one or more checkouts of stubdom side by side (before/after a change).

Each checkout runs its own ``stubdom host`` (our xenstored) with its own console script
(``CHECKOUT/.venv/bin/stubdom``, what a user types) and its own agent as the stubdomain
kernel.  Within a round the checkouts take turns at every sample, so a drift of the
machine hits all alike.  Per round and checkout: ``create`` (returns once the stubdomain
wrote ``running`` and the guest is unpaused), ``pci-attach`` of one function, then an
untimed ``pci-detach`` and ``destroy``.

    .venv/bin/python bench/user_walltime.py [--rounds 10] [CHECKOUT[,NAME=VALUE...] ...]

With no CHECKOUT, the one this file is in.  ``NAME=VALUE`` after a checkout goes into the
environment of its commands (and so of its host and xenstored), e.g. ``.`` against
``.,STUBDOM_XENSTORED_POLL_US=0`` compares a setting within one checkout.  Prints the
medians, the p25..p75 spread and each checkout's ratio to the first.  Nothing is pinned:
a user's shell is not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
GUARD = 120.0  # against a hang, never a pacing delay
VERBS = ("create", "pci-attach")


@dataclass
class Checkout:
    root: Path
    #: Added to the environment of its commands.
    extra: dict[str, str] = field(default_factory=dict)
    dir: Path = field(init=False)
    times: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VERBS})

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="uw-", dir="/tmp"))

    @property
    def stubdom(self) -> str:
        return str(self.root / ".venv" / "bin" / "stubdom")

    def run(self, *args: str) -> float:
        env = {**os.environ, **self.extra, "STUBDOM_HOST_DIR": str(self.dir)}
        t0 = time.perf_counter()
        r = subprocess.run([self.stubdom, *args], env=env, capture_output=True, text=True,
                           timeout=GUARD)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"{self.root}: stubdom {' '.join(args)} failed: {r.stderr.strip()}")
        return dt

    @property
    def label(self) -> str:
        return ",".join([self.root.name, *(f"{k}={v}" for k, v in self.extra.items())])

    def config(self) -> Path:
        disk = self.dir / "g.img"
        disk.write_bytes(b"\0" * 8192)
        cfg = self.dir / "g.cfg"
        cfg.write_text("\n".join([
            'type = "hvm"', 'name = "g"', "memory = 128",
            'device_model_version = "qemu-xen-traditional"',
            "device_model_stubdomain_override = 1",
            f'stubdomain_kernel = "{self.root / ".venv" / "bin" / "stubdom-dm"}"',
            'stubdomain_cmdline = "--eject-delay=0"',
            f"disk = [ '{disk},raw,hda,rw' ]", "vif = [ 'mac=00:16:3e:12:00:01' ]",
        ]) + "\n")
        return cfg

    def sample(self, cfg: Path) -> None:
        self.times["create"].append(self.run("create", str(cfg)))
        self.times["pci-attach"].append(self.run("pci-attach", "g", "05:00.0"))
        self.run("pci-detach", "g", "05:00.0")
        self.run("destroy", "g")

    def down(self) -> None:
        env = {**os.environ, "STUBDOM_HOST_DIR": str(self.dir)}
        subprocess.run([self.stubdom, "host", "down"], env=env, capture_output=True,
                       timeout=GUARD)
        shutil.rmtree(self.dir, ignore_errors=True)


def quartiles(xs: list[float]) -> str:
    if len(xs) < 4:
        return f"{min(xs) * 1e3:.0f}..{max(xs) * 1e3:.0f}"
    q = statistics.quantiles(xs, n=4)
    return f"{q[0] * 1e3:.0f}..{q[2] * 1e3:.0f}"


def report(checkouts: list[Checkout], rounds: int) -> None:
    print(f"wall time from the shell, ms: medians (p25..p75) over {rounds} rounds")
    head = f"{'verb':<12}" + "".join(f"{c.label:>36}" for c in checkouts)
    print(head)
    for verb in VERBS:
        base = statistics.median(checkouts[0].times[verb])
        cells = []
        for c in checkouts:
            m = statistics.median(c.times[verb])
            cell = f"{m * 1e3:.0f} ({quartiles(c.times[verb])})"
            if c is not checkouts[0]:
                cell += f" {m / base:.2f}x"
            cells.append(f"{cell:>36}")
        print(f"{verb:<12}" + "".join(cells))


def checkout(arg: str) -> Checkout:
    """``PATH[,NAME=VALUE...]``."""
    path, *pairs = arg.split(",")
    extra = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise SystemExit(f"{pair!r}: expected NAME=VALUE after the checkout {path}")
        extra[name] = value
    return Checkout(Path(path).resolve(), extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("checkouts", nargs="*", default=[str(HERE)])
    args = ap.parse_args()
    checkouts = [checkout(a) for a in args.checkouts]
    try:
        for c in checkouts:
            c.run("host", "up")
        cfgs = [c.config() for c in checkouts]
        for rnd in range(args.rounds + 1):  # round 0 warms the page cache, untimed
            order = list(zip(checkouts, cfgs, strict=True))
            for c, cfg in order[rnd % len(order):] + order[:rnd % len(order)]:
                c.sample(cfg)
            if rnd == 0:
                for c in checkouts:
                    c.times = {v: [] for v in VERBS}
            print(f"# round {rnd}/{args.rounds}", file=sys.stderr, flush=True)
    finally:
        for c in checkouts:
            c.down()
    report(checkouts, args.rounds)


if __name__ == "__main__":
    main()
