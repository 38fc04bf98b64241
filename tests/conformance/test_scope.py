"""Which changes a stubdomain may make (`stubdom.conformance.scope`), on made-up traces."""

from __future__ import annotations

import pytest

from stubdom.conformance.host import Request
from stubdom.conformance.scope import allowed, judge, stub_targets

S, G = 2, 1


def req(dom: int, op: str, path: str, value: str | None = None) -> Request:
    return Request(0, 1, dom, op, path, value, 0)


SETUP = [req(0, "WRITE", f"/local/domain/{S}/target", str(G))]


@pytest.mark.parametrize(
    ("op", "path"),
    [
        ("WRITE", f"/local/domain/{S}/device-model/{G}/state"),
        ("WRITE", f"/local/domain/{S}/device-model/{G}/parameter"),
        ("WRITE", f"/local/domain/{S}/device-model/{G}/logdirty/ret"),
        ("RM", f"/local/domain/{S}/device-model/{G}/command"),
        ("WRITE", f"/local/domain/{S}/device/pci/0/state"),
        ("WRITE", f"/local/domain/{S}/console/state"),
        ("WRITE", f"/local/domain/{S}/data/anything"),
        ("WRITE", f"/local/domain/{G}/console/vnc-port"),
        ("WRITE", f"/local/domain/{G}/device/vbd/768/eject"),
    ],
)
def test_what_a_stubdomain_writes(op: str, path: str) -> None:
    assert allowed(S, G, op, path)


@pytest.mark.parametrize(
    ("op", "path"),
    [
        ("WRITE", f"/local/domain/{S}/target"),
        ("WRITE", f"/local/domain/{S}/vm"),
        ("WRITE", f"/local/domain/{S}/image/device-model-pid"),
        ("WRITE", f"/local/domain/{S}/device-model/{G}/command"),
        ("RM", f"/local/domain/{S}/device-model/{G}"),
        ("WRITE", f"/local/domain/{S}/device-model/{G}/junk"),
        ("WRITE", f"/local/domain/{G}/data/x"),
        ("SET_PERMS", f"/local/domain/{G}/console/vnc-port/../tty"),
        ("WRITE", "/vm/1234/image/dmargs"),
        ("WRITE", "/local/domain/0/backend/pci/2/0/state"),
        ("WRITE", "@releaseDomain"),
    ],
)
def test_what_a_stubdomain_must_not_touch(op: str, path: str) -> None:
    assert not allowed(S, G, op, path)


def test_judge_counts_every_stub_and_ignores_dom0() -> None:
    trace = [*SETUP, req(0, "WRITE", f"/local/domain/{G}/data/x", "dom0 may"),
             req(S, "WRITE", f"/local/domain/{S}/device-model/{G}/state", "running"),
             req(S, "WRITE", f"/local/domain/{G}/data/x", "no")]
    assert stub_targets(trace) == {S: G}
    ok, seen = judge(trace)
    assert not ok
    assert seen == f"1 change to nodes it must not touch: WRITE /local/domain/{G}/data/x"
    assert judge(trace[:-1]) == (True, "1 change, all to its own nodes")
