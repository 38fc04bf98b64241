"""A longer fuzz run of the embedded xenstored: N random/mutated messages from a guest
while another guest and dom0 keep working.  Usage:
    .venv/bin/python bench/fuzz_xenstored.py [N] [SEED]
Prints how many messages ran and that no crash occurred (an assertion fails otherwise).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.xenstored.fuzzlib import message, run_sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=20000, help="messages (default 20000)")
    ap.add_argument("seed", nargs="?", type=int, default=1, help="random seed (default 1)")
    args = ap.parse_args()
    n, seed = args.n, args.seed
    rng = random.Random(seed)
    total = reconnects = 0
    while total < n:
        batch = [message(rng) for _ in range(min(1000, n - total))]
        stats = run_sync(batch)
        total += stats["messages"]
        reconnects += stats["reconnects"]
    print(
        f"fuzz_xenstored: {total} messages (seed {seed}), {reconnects} connections closed "
        "by the server, no crash, state bounded"
    )


if __name__ == "__main__":
    main()
