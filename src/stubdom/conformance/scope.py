"""Which nodes a stubdomain may change, judged from the xenstored request trace.

A stubdomain is privileged over its guest (SET_TARGET), so xenstored lets it write the
guest's whole tree; and a stray write into its own setup (``target``, ``vm``,
``image``) or into ``command`` breaks the toolstack's view of it.  Nothing in the
protocol needs such writes: Mini-OS writes its frontends' nodes and consoles, qemu-trad
writes ``state``, ``parameter`` and ``logdirty/ret`` and deletes ``command``, and
writes into the guest's tree only ``console/vnc-port`` and a CD drive's ``eject``.
Attempts count, refused or not: the peer did try.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from stubdom.conformance.host import Request

#: Requests that change the store.
CHANGES = frozenset({"WRITE", "MKDIR", "RM", "SET_PERMS"})
#: Subtrees of its own domain a stubdomain (Mini-OS, Linux) writes into.
OWN_SUBTREES = ("device/", "console/", "data/", "drivers/", "feature/", "attr/", "error/",
                "control/")
#: Nodes of ``device-model/<G>`` the device model writes, and the one it removes.
DM_WRITES = frozenset({"state", "parameter", "logdirty/ret"})
DM_REMOVES = frozenset({"command"})
_GUEST_OK = re.compile(r"console/vnc-port|device/vbd/\d+/eject")
_TARGET = re.compile(r"/local/domain/(\d+)/target")


def stub_targets(requests: Iterable[Request]) -> dict[int, int]:
    """stubdomain -> guest, from dom0's writes of ``/local/domain/<S>/target``."""
    out: dict[int, int] = {}
    for r in requests:
        m = _TARGET.fullmatch(r.path)
        if r.dom == 0 and r.type == "WRITE" and m and r.value and r.value.isdigit():
            out[int(m.group(1))] = int(r.value)
    return out


def allowed(stub: int, guest: int, op: str, path: str) -> bool:
    """Whether stubdomain ``stub`` of ``guest`` may make change ``op`` at ``path``."""
    own = f"/local/domain/{stub}/"
    if path.startswith(own):
        rel = path[len(own):]
        dm = f"device-model/{guest}/"
        if rel.startswith(dm):
            node = rel[len(dm):]
            return node in DM_WRITES or (op == "RM" and node in DM_REMOVES)
        return rel.startswith(OWN_SUBTREES)
    mine = f"/local/domain/{guest}/"
    return path.startswith(mine) and bool(_GUEST_OK.fullmatch(path[len(mine):]))


def violations(requests: Iterable[Request], targets: Mapping[int, int]) -> list[Request]:
    """The changes stubdomains made outside what `allowed` lets them."""
    return [
        r for r in requests
        if r.dom in targets and r.type in CHANGES
        and not allowed(r.dom, targets[r.dom], r.type, r.path)
    ]


def judge(requests: list[Request]) -> tuple[bool, str]:
    """Whether every stubdomain kept to its nodes, and a one-line account."""
    targets = stub_targets(requests)
    if not targets:
        return True, "no stubdomain was given a target"
    changed = sum(1 for r in requests if r.dom in targets and r.type in CHANGES)
    bad = violations(requests, targets)
    if not bad:
        return True, f"{_changes(changed)}, all to its own nodes"
    paths = sorted({f"{r.type} {r.path}" for r in bad})
    shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    return False, f"{_changes(len(bad))} to nodes it must not touch: {shown}"


def _changes(n: int) -> str:
    return f"{n} change" if n == 1 else f"{n} changes"
