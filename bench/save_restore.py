"""Save and restore throughput of a large device-model state (issue #8, item 4).

A guest whose ``sim`` device model holds N MiB of guest RAM (``stubdomain_cmdline =
"--sim-ram=N"``) is saved and restored through the toolstack API on a real ``stubdom
host``: the state goes out through console 1 into the host's file, then into the save
image (`saverestore.save_guest`), and comes back from the image through the restore file
and console 2 (`saverestore.restore_guest`: create, ``-loadvm``, ``running``).

Each round: create, save (1), restore (1), save (2), restore (2), destroy.  The two
images' device-model states must be equal byte for byte (the restored machine re-saves
bit for bit: its RAM came back exactly).  MB/s is the state's bytes (10^6) over the
whole operation's time; "marginal" takes off what the same operation costs with no RAM
(the fixed work: the exchange, the domains and devices of a restore).

Nothing is pinned (agent, host daemon, xenstored and toolstack share both CPUs).

    .venv/bin/python bench/save_restore.py [--rounds 3] [--sizes 64,244] [--quick]

Target: >= 200 MB/s for save and for restore.  244 MiB is 256 MB; the stream carries at
most 256 MiB of payload (devicemodel/stream.py MAX_PAYLOAD).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import BenchHost, machine_busy, med, table, verdict  # noqa: E402
from stubdom.toolstack.configure import load_config  # noqa: E402
from stubdom.toolstack.operations import create_guest  # noqa: E402
from stubdom.toolstack.savefile import decode_save_image  # noqa: E402
from stubdom.toolstack.saverestore import restore_guest, save_guest  # noqa: E402
from stubdom.toolstack.session import open_session  # noqa: E402

TARGET_MBS = 200.0


def one_round(mib: int) -> tuple[list[float], list[float], int, bool]:
    """Save and restore seconds (two each), the state's size and whether it came back
    bit for bit."""
    with BenchHost(f"s{mib}", xenstored_cpus={0, 1}, daemon_cpus={0, 1}) as h:
        cfg = load_config(h.config("g", cmdline=f"--sim-ram={mib}", devices=False))
        saves: list[float] = []
        restores: list[float] = []
        images = [h.dir / "g.save1", h.dir / "g.save2"]

        async def go() -> None:
            async with open_session(str(h.dir)) as s:
                guest = (await create_guest(s, cfg, timeout=120)).guest
                for image in images:
                    t0 = time.perf_counter()
                    await save_guest(s, guest, image, timeout=120)
                    saves.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    guest = (await restore_guest(s, image, timeout=120)).guest
                    restores.append(time.perf_counter() - t0)

        asyncio.run(go())
        states = [decode_save_image(p.read_bytes()).emulator_context for p in images]
        h.run("destroy", "g")
    return saves, restores, len(states[0]), states[0] == states[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="64,244", help="MiB of guest RAM, comma-separated")
    ap.add_argument("--quick", action="store_true", help="1 round of 64 MiB")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.quick:
        args.rounds, sizes = 1, [64]
    print(machine_busy())
    t_start = time.monotonic()
    save_s: dict[int, list[float]] = collections.defaultdict(list)
    rest_s: dict[int, list[float]] = collections.defaultdict(list)
    size: dict[int, int] = {}
    exact: dict[int, list[bool]] = collections.defaultdict(list)
    for rnd in range(args.rounds):
        for mib in [0, *sizes]:
            sv, rs, n, ok = one_round(mib)
            save_s[mib] += sv
            rest_s[mib] += rs
            size[mib] = n
            exact[mib].append(ok)
        print(f"# round {rnd + 1}/{args.rounds} ({time.monotonic() - t_start:.0f}s)",
              file=sys.stderr, flush=True)

    print(f"save / restore through consoles 1 / 2, medians of {2 * args.rounds} operations; "
          "MB = 10^6 bytes")
    rows = []
    for mib in [0, *sizes]:
        for what, times in (("save", save_s), ("restore", rest_s)):
            t = med(times[mib])
            row: list[object] = [f"{mib} MiB", what, f"{size[mib] / 1e6:.1f}", f"{t * 1e3:.0f}"]
            if mib:
                mbs = size[mib] / 1e6 / t
                extra = (size[mib] - size[0]) / 1e6 / max(t - med(times[0]), 1e-9)
                row += [f"{mbs:.0f}", f"{extra:.0f}",
                        f">= {TARGET_MBS:g} MB/s: {verdict(mbs >= TARGET_MBS)}",
                        "yes" if all(exact[mib]) else "NO"]
            else:
                row += ["-", "-", "(fixed cost)", "yes" if all(exact[mib]) else "NO"]
            rows.append(row)
    table(["RAM", "op", "state MB", "ms", "MB/s", "marginal MB/s", "target", "bit-exact"],
          rows)
    print(f"# total {time.monotonic() - t_start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
