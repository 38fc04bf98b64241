"""Fault reaction time (issue #8, item 5): from a stubdomain's crash to the toolstack's error.

For each crash point of tests/faults/faulty_stub.py, a guest whose stubdomain runs the
real agent with that fault injected, on a real ``stubdom host``; the operation that meets
the crash runs through the toolstack API with a 600 s device-model timeout, so only a
fast path (the stub's death seen through ``@releaseDomain`` and the hypervisor) can end
it in time.  The crash instant is the end of the faulty agent's process: the stub kernel
is a bash wrapper that runs it and then stores ``$EPOCHREALTIME`` (a builtin: no fork)
before the domain itself ends; the error instant is when the API call raises.  So the
figure slightly overstates the reaction (by the wrapper's exit).

xenstored on CPU 1; the host daemon, the stubdomains and the toolstack on CPU 0.

    .venv/bin/python bench/protocol_faults.py [--samples 7] [--quick]

Target: < 1 s for every crash point (median of >= 5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import (  # noqa: E402
    CLIENT_CPU,
    BenchHost,
    machine_busy,
    med,
    need_two_cpus,
    table,
    verdict,
)
from stubdom.toolstack import operations as ops  # noqa: E402
from stubdom.toolstack import pci, saverestore  # noqa: E402
from stubdom.toolstack.configure import load_config  # noqa: E402
from stubdom.toolstack.session import Session, open_session  # noqa: E402
from stubdom.toolstack.specs import parse_pci  # noqa: E402

TARGET_S = 1.0
NO_TIMEOUT = 600.0
Op = Callable[[Session, int, Path], Awaitable[object]]


async def pci_ins(s: Session, guest: int, _: Path) -> object:
    return await pci.pci_attach(s, guest, parse_pci("03:00.0"), timeout=NO_TIMEOUT)


async def pci_rem(s: Session, guest: int, _: Path) -> object:
    await pci.pci_attach(s, guest, parse_pci("03:00.0"), timeout=NO_TIMEOUT)
    return await pci.pci_detach(s, guest, parse_pci("03:00.0").bdf, timeout=NO_TIMEOUT)


async def save_keep(s: Session, guest: int, image: Path) -> object:
    return await saverestore.save_guest(s, guest, image, keep=True, timeout=NO_TIMEOUT)


#: (fault, the operation that meets it); None: the create itself.
CRASHES: list[tuple[str, Op | None]] = [
    ("crash-before-running", None),
    ("crash-on-pci-ins", pci_ins),
    ("crash-on-pci-rem", pci_rem),
    ("crash-on-save", save_keep),
    ("crash-mid-save", save_keep),
    ("crash-after-save", save_keep),
    ("crash-on-continue", save_keep),
]


def wrapper_kernel(h: BenchHost, name: str, fault: str, stamp: Path) -> Path:
    path = h.dir / f"kernel-{name}"
    path.write_text(
        "#!/bin/bash\n"
        f'{sys.executable} {ROOT}/tests/faults/faulty_stub.py {ROOT} {fault} "$@"\n'
        f'status=$?\necho "$EPOCHREALTIME" > {stamp}\nexit $status\n'
    )
    path.chmod(0o755)
    return path


async def one(h: BenchHost, s: Session, fault: str, op: Op | None, n: int) -> float:
    """Seconds from the crash to the error, for one guest."""
    name = f"g{n}"
    stamp = h.dir / f"crash-{name}"
    cfg_path = h.config(name, fault=fault, index=n)
    text = cfg_path.read_text().replace(str(h.kernel(name, fault)),
                                        str(wrapper_kernel(h, name, fault, stamp)))
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    try:
        if op is None:
            await ops.create_guest(s, cfg, timeout=NO_TIMEOUT)
        else:
            guest = (await ops.create_guest(s, cfg, timeout=NO_TIMEOUT)).guest
            await op(s, guest, h.dir / f"{name}.save")
    except Exception:
        failed_at = time.time()
    else:
        raise RuntimeError(f"{fault}: the operation succeeded")
    for _ in range(100):  # the wrapper writes its stamp as the domain ends
        if stamp.exists() and stamp.read_text().strip():
            break
        await asyncio.sleep(0.01)
    crashed_at = float(stamp.read_text().replace(",", "."))
    if op is not None:
        h.run("destroy", name)
    return failed_at - crashed_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="5 samples")
    args = ap.parse_args()
    if args.quick:
        args.samples = 5
    need_two_cpus()
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(machine_busy())
    t_start = time.monotonic()
    times: dict[str, list[float]] = {f: [] for f, _ in CRASHES}
    with BenchHost("flt") as h:

        async def go() -> None:
            async with open_session(str(h.dir)) as s:
                n = 0
                for _ in range(args.samples):
                    for fault, op in CRASHES:  # interleaved
                        times[fault].append(await one(h, s, fault, op, n))
                        n += 1

        asyncio.run(go())
    print(f"crash -> toolstack error, {args.samples} samples each (API, device-model "
          f"timeout {NO_TIMEOUT:g} s); xenstored CPU 1, the rest CPU 0")
    rows = []
    for fault, op in CRASHES:
        t = times[fault]
        what = "create" if op is None else op.__name__.replace("_", "-")
        rows.append([fault, what, f"{med(t) * 1e3:.0f}", f"{min(t) * 1e3:.0f}",
                     f"{max(t) * 1e3:.0f}", f"< {TARGET_S:g} s: {verdict(med(t) < TARGET_S)}"])
    table(["crash point", "operation", "median ms", "min ms", "max ms", "target"], rows)
    print(f"# total {time.monotonic() - t_start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
