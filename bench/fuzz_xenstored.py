"""A longer fuzz run of the embedded xenstored: N random/mutated messages from a guest
while another guest and dom0 keep working.  Usage:
    .venv/bin/python bench/fuzz_xenstored.py [N] [SEED]
Prints how many messages ran and that no crash occurred (an assertion fails otherwise).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.xenstored.fuzzlib import message, run_sync


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
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
