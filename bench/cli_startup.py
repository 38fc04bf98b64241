"""How fast the ``stubdom`` command starts, against Python itself and click (issue 16, part 4).

Five commands, each run as a user runs it (a fresh process of the venv's interpreter;
``stubdom`` is the console script next to it), ``--runs`` times, interleaved (one of
each, then again), so a drift of the machine hits all of them alike:

- ``python -c pass``              the interpreter's own start-up, the floor;
- ``python -c "import click"``    the reference: what any click tool pays;
- ``stubdom --version``           target: within 1.5x the reference;
- ``stubdom xenstore read /local/domain/0/name``   target: within 1.5x;
- ``stubdom list``                target: within 2x.

The last two talk to a host this bench starts in a directory of its own (``stubdom
host up --dir D``, ``host down`` at the end), its xenstored pinned to CPU 1 and
everything else (the host daemon, the commands) to CPU 0.  Prints each command's wall
time (median, p25..p75, ratio to the reference), which the targets are judged on, and
its median CPU time (user + system) and ratio, which other load on a shared machine
disturbs less.

    .venv/bin/python bench/cli_startup.py [--runs 20 | --quick] [--instructions] [--tree DIR]

``--instructions`` also counts each command's instructions under valgrind: a figure the
rest of a shared machine does not move (the targets stay judged on wall time).

Modules are loaded compiled, as a user's are: the bench lets the interpreter write its
``__pycache__`` (``PYTHONDONTWRITEBYTECODE`` is dropped for the commands), and a
warm-up run of each command comes first.

``--tree DIR`` runs another checkout's code (``DIR/src`` first on the path) with the
same interpreter and console script: the before/after comparison of a change.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import CLIENT_CPU, BenchHost, machine_busy, need_two_cpus  # noqa: E402

PYTHON = sys.executable
STUBDOM = str(Path(sys.executable).with_name("stubdom"))

#: label -> (argv, the reference's multiple it must stay within, or None).
COMMANDS: dict[str, tuple[list[str], float | None]] = {
    "python -c pass": ([PYTHON, "-c", "pass"], None),
    "python -c 'import click'": ([PYTHON, "-c", "import click"], None),
    "stubdom --version": ([STUBDOM, "--version"], 1.5),
    "stubdom xenstore read": ([STUBDOM, "xenstore", "read", "/local/domain/0/name"], 1.5),
    "stubdom list": ([STUBDOM, "list"], 2.0),
}
REFERENCE = "python -c 'import click'"


def once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run, in seconds; a failed run stops
    the bench."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"cli_startup: {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


Samples = dict[str, list[tuple[float, float]]]


def measure(runs: int, env: dict[str, str]) -> Samples:
    times: Samples = {label: [] for label in COMMANDS}
    for argv, _ in COMMANDS.values():
        once(argv, env)  # warm the page cache and the .pyc files, unmeasured
    for _ in range(runs):
        for label, (argv, _) in COMMANDS.items():
            times[label].append(once(argv, env))
    return times


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """Instructions one run executes, counted by valgrind (callgrind): what the command
    costs, whatever else the machine is doing."""
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        *argv], env=env, capture_output=True, text=True, timeout=300)
    found = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or found is None:
        sys.exit(f"cli_startup: valgrind {' '.join(argv)} failed: {r.stderr.strip()[-300:]}")
    return int(found.group(1))


def report_instructions(env: dict[str, str], runs: int = 3) -> None:
    counts = {label: statistics.median(instructions(argv, env) for _ in range(runs))
              for label, (argv, _) in COMMANDS.items()}
    print(f"# instructions (valgrind, median of {runs}):")
    for label, (_, target) in COMMANDS.items():
        ratio = counts[label] / counts[REFERENCE]
        bound = f"(target {target:g}x)" if target is not None else ""
        print(f"{label:<28} {counts[label] / 1e6:7.1f}M {ratio:7.2f}x  {bound}")


def report(times: Samples) -> bool:
    """The table; whether every target is met (on wall time, what a user feels; the
    CPU time beside it is less disturbed by other load on the machine)."""
    ref = statistics.median(w for w, _ in times[REFERENCE])
    ref_cpu = statistics.median(c for _, c in times[REFERENCE])
    met = True
    print(f"{'command':<28} {'median':>8} {'p25..p75 (ms)':>16} {'x click':>8}   "
          f"{'cpu':>7} {'x click':>7}  target")
    for label, (_, target) in COMMANDS.items():
        p25, med, p75 = quartiles([w for w, _ in times[label]])
        cpu = statistics.median(c for _, c in times[label])
        ratio = med / ref
        verdict = ""
        if target is not None:
            ok = ratio <= target
            met &= ok
            verdict = f"<= {target:g}x: {'met' if ok else 'MISSED'}"
        print(f"{label:<28} {med * 1000:6.1f}ms {p25 * 1000:7.1f}..{p75 * 1000:<7.1f} "
              f"{ratio:7.2f}x   {cpu * 1000:5.1f}ms {cpu / ref_cpu:6.2f}x  {verdict}")
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="Runs of each command (default 20).")
    ap.add_argument("--quick", action="store_true", help="5 runs of each: a rough check.")
    ap.add_argument("--instructions", action="store_true",
                    help="Also count each command's instructions under valgrind (slow).")
    ap.add_argument("--tree", type=Path, default=None,
                    help="Run the stubdom code of this checkout (DIR/src) instead.")
    args = ap.parse_args()
    if args.quick:
        args.runs = 5
    need_two_cpus()
    print(machine_busy())
    env = dict(os.environ)
    # As a user runs it: from compiled modules (the warm-up run writes them), not from
    # source compiled at every start, which would weigh on ours and not on click.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree.resolve() / "src")
    with BenchHost("cli") as host:
        env["STUBDOM_HOST_DIR"] = str(host.dir)
        os.sched_setaffinity(0, {CLIENT_CPU})  # the commands, beside the host daemon
        code = args.tree or ROOT
        print(f"# {args.runs} runs of each, interleaved; code from {code}/src; "
              f"{PYTHON} {sys.version.split()[0]}")
        met = report(measure(args.runs, env))
        if args.instructions:
            report_instructions(env)
    print(f"# targets {'met' if met else 'MISSED'}")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
