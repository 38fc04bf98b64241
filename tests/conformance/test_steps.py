"""`StepRunner`: every step ends in verdicts, whatever its body does."""

from __future__ import annotations

import asyncio

from stubdom.conformance.report import Ledger, Verdict
from stubdom.conformance.steps import Step, StepRunner
from stubdom.conformance.stubdomain import new_ledger

A, B = ("pci-ins.result",), ("scope.writes",)


async def alive() -> str | None:
    return None


async def forever() -> None:
    await asyncio.sleep(3600)


def seen(ledger: Ledger, clause: str) -> str:
    (r,) = [r for r in ledger.results() if r.clause == clause]
    assert r.verdict is Verdict.FAIL
    return r.seen


async def test_a_step_that_hangs_fails_when_its_budget_is_spent() -> None:
    ledger = new_ledger()
    await StepRunner(ledger, 60.0, alive).run(Step("hang", A, 0.05, forever))
    assert seen(ledger, A[0]) == "step 'hang' took longer than its 0.05 s"
    assert ledger.ended == "complete"


async def test_the_deadline_cuts_a_step_and_skips_the_next_but_not_a_judge() -> None:
    ledger = new_ledger()
    runner = StepRunner(ledger, 0.05, alive)
    await runner.run(Step("hang", A, 60.0, forever))
    await runner.run(Step("next", ("pci-rem.result",), 60.0, forever))

    async def judge() -> None:
        ledger.add(B[0], Verdict.PASS, "judged after the deadline")

    await runner.run(Step("judge", B, 0, judge, needs_peer=False))
    assert seen(ledger, A[0]).startswith("not reached (time bound)")
    assert seen(ledger, "pci-rem.result").startswith("not reached (time bound)")
    assert ledger.ended == "time bound"
    assert ledger.results()[-1].verdict is Verdict.PASS


async def test_errors_are_verdicts() -> None:
    ledger = new_ledger()
    runner = StepRunner(ledger, 60.0, alive)

    async def garbage() -> None:
        raise ValueError("invalid literal for int() with base 16: 'ZZ'")

    async def bug() -> None:
        raise KeyError("devfn")

    await runner.run(Step("garbage", A, 1.0, garbage))
    await runner.run(Step("bug", B, 1.0, bug))
    assert seen(ledger, A[0]) == "ValueError: invalid literal for int() with base 16: 'ZZ'"
    assert seen(ledger, B[0]) == \
        "the kit's step 'bug' failed on what the stubdomain did: KeyError: 'devfn'"


async def test_a_dead_peer_is_named_and_its_steps_are_not_run() -> None:
    ledger = new_ledger()
    ran: list[str] = []

    async def dead() -> str | None:
        return "the stubdomain is dead (it crashed)"

    async def body() -> None:
        ran.append("body")

    await StepRunner(ledger, 60.0, dead).run(Step("pci", A, 1.0, body))
    assert ran == []
    assert seen(ledger, A[0]) == "not run: the stubdomain is dead (it crashed)"
