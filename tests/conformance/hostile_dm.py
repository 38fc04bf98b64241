"""Stubdomain kernels that do not play along, for the conformance kit to judge:
``hostile_dm.py VARIANT [words...]`` (XENSTORED_PATH is the stubdomain's socket).

no-frontends         reads its setup and writes ``running``, brings no device up
                     and answers nothing
crash-after-running  writes ``running``, then exits with status 1
garbage              writes ``running``, then garbage into every node it can reach
                     (its own tree, its guest's, ``/vm``), and garbage into ``state``
                     and ``parameter`` on every command
silent               never writes anything (touches the file named by its first
                     word, if any, so that a test knows it booted)
trespass             our agent, after a write into its guest's tree and its own
                     ``target``
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from stubdom.xenstore import XenStoreError
from stubdom.xenstore.sync import SyncClient

GARBAGE = "\x01\xff garbage \x7f" * 3


def setup(xs: SyncClient) -> int:
    guest = int(xs.read("target"))
    vm = xs.read(f"/local/domain/{guest}/vm").decode()
    with contextlib.suppress(XenStoreError):
        xs.read(f"{vm}/image/dmargs")
    return guest


def tree(xs: SyncClient, path: str, depth: int = 6) -> list[str]:
    """Every node under ``path`` the stub may list (errors skip a branch)."""
    out = [path]
    if depth == 0:
        return out
    with contextlib.suppress(XenStoreError):
        for name in xs.directory(path):
            out += tree(xs, f"{path.rstrip('/')}/{name}", depth - 1)
    return out


def garbage(xs: SyncClient, guest: int, me: str) -> None:
    xs.write(f"device-model/{guest}/state", "running")
    vm = xs.read(f"/local/domain/{guest}/vm").decode()
    for root in (me, f"/local/domain/{guest}", vm, "/local/domain/0"):
        for node in tree(xs, root):
            with contextlib.suppress(XenStoreError):
                xs.write(node, GARBAGE)
    w = xs.watch(f"device-model/{guest}/command", "cmd").start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError, XenStoreError):
            w.get(timeout=1.0)
            xs.write(f"device-model/{guest}/parameter", GARBAGE)
            xs.write(f"device-model/{guest}/state", GARBAGE)


def main() -> int:
    variant, *words = sys.argv[1:]
    if variant == "silent":
        if words:  # a file to touch: tells a test the stub has booted
            open(words[0], "a").close()
        time.sleep(3600)
        return 0
    if variant == "trespass":
        with SyncClient() as xs:
            guest = int(xs.read("target"))
            for node in (f"/local/domain/{guest}/data/trespass", "target"):
                with contextlib.suppress(XenStoreError):  # tried is enough: refused or not
                    xs.write(node, str(guest))
        from stubdom.stubdomain.main import main as agent_main

        return agent_main(words)
    with SyncClient() as xs:
        guest = setup(xs)
        if variant == "garbage":
            # under the Mini-OS layer, else from the domain socket <socket>.d/<domid>
            me = os.environ.get("STUBDOM_DOMID") or os.environ["XENSTORED_PATH"].rsplit("/")[-1]
            garbage(xs, guest, f"/local/domain/{me}")
            return 0
        xs.write(f"device-model/{guest}/state", "running")
        if variant == "crash-after-running":
            return 1
    if variant == "no-frontends":
        time.sleep(3600)
        return 0
    print(f"hostile_dm: unknown variant {variant!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
