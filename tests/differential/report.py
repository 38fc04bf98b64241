"""Corpus size, transcripts and a cx-vs-ox (or any pair) comparison table.

    python -m tests.differential.report                 # size + cx vs ox table
    python -m tests.differential.report --size          # only the corpus size
    python -m tests.differential.report --show CASE --on cx   # one transcript
    python -m tests.differential.report --ref cx --cand cx    # harness self-check

The cx-vs-ox table is informative only: ox is a second real implementation, not the
reference, and the two differ in many known ways (DIRECTORY order, DIRECTORY_PART,
errnos of malformed requests, quotas).
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.differential.compare import differences
from tests.differential.corpus import Case, load
from tests.differential.pool import Pool
from tests.differential.runner import run_case


def size_line(cases: list[Case]) -> str:
    steps = sum(c.step_count() for c in cases)
    return f"differential corpus: {len(cases)} cases, {steps} steps"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", action="store_true")
    ap.add_argument("--show", metavar="CASE", action="append", default=[])
    ap.add_argument("--on", default="cx")
    ap.add_argument("--ref", default="cx")
    ap.add_argument("--cand", default="ox")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    a = ap.parse_args(argv)
    cases = [c for c in load() if a.k in c.name]
    print(size_line(load()))
    if a.size:
        return 0
    if a.show:
        with Pool(a.on) as pool:
            for c in cases:
                if c.name in a.show:
                    print(run_case(pool.get(c), c).show())
        return 0
    t0 = time.monotonic()
    table: list[tuple[str, int, str]] = []
    with Pool(a.ref) as ref, Pool(a.cand) as cand:
        for c in cases:
            if cand.kind == "ox" and c.cx_only:
                print(f"-- {c.name}: skipped for ox (cx-only)")
                continue
            d = differences(c, run_case(ref.get(c), c), run_case(cand.get(c), c))
            if d:
                print(f"-- {c.name}: {len(d)} differing step(s)\n" + "\n".join(d))
                table.append((c.name, len(d), first_line(d[0])))
    print(f"\n{'case':<34} {'steps':>5}  first difference ({a.ref} -> {a.cand})")
    for name, n, first in table:
        print(f"{name:<34} {n:>5}  {first}")
    print(f"{len(table)} of {len(cases)} cases differ ({a.ref} vs {a.cand}), "
          f"{time.monotonic() - t0:.1f}s")
    return 0


def first_line(diff: str) -> str:
    """`step N: ...` plus the two replies (or events) of one difference, on one line."""
    lines = [ln.strip() for ln in diff.splitlines()]
    return " | ".join(lines[:3])[:150]


if __name__ == "__main__":
    sys.exit(main())
