"""How the conformance tests read a run's results, shared by the kernel and app modes."""

from __future__ import annotations

from stubdom.conformance.report import Result, Verdict

#: What qemu-traditional never does: these are "not supported" for a faithful model.
QEMU_TRAD_UNSUPPORTED = {"pci-ins.failed-state", "pci-rem.failed-state"}


def by_clause(results: list[Result]) -> dict[str, Result]:
    return {r.clause: r for r in results}


def assert_judged_as_qemu_trad(res: dict[str, Result]) -> None:
    """Every clause qemu-trad satisfies passes, in its style; the rest is not supported."""
    assert {c for c, r in res.items() if r.verdict is Verdict.UNSUPPORTED} \
        == QEMU_TRAD_UNSUPPORTED, res
    assert all(r.verdict is Verdict.PASS for c, r in res.items()
               if c not in QEMU_TRAD_UNSUPPORTED), res
    assert res["pci-ins.refusal"].style == "qemu-trad style"
    assert res["pci-rem.refusal"].style == "qemu-trad style"
