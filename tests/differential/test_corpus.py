"""The corpus, case by case: the candidate (our server by default) must answer like cx.

Until our server implements something, the matching cases fail: that is intended (no
xfail), the failure message shows the first differing steps and both transcripts.
"""

from __future__ import annotations

import pytest

from tests.differential.compare import differences
from tests.differential.conftest import CANDIDATE
from tests.differential.corpus import Case, load
from tests.differential.pool import Pool
from tests.differential.report import size_line
from tests.differential.runner import run_case

CASES = load()


def test_corpus_size(capsys: pytest.CaptureFixture[str]) -> None:
    """Print the corpus size (visible with -s or in the -rA summary) and sanity-check it."""
    line = size_line(CASES)
    with capsys.disabled():
        print("\n" + line)
    assert len(CASES) >= 70
    assert len({c.name for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.doc, c.name
        for s in c.all_steps():
            assert s.ours is None or s.why, (c.name, s)


@pytest.mark.peer
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(pools: tuple[Pool, Pool], case: Case) -> None:
    ref, cand = pools
    if cand.kind == "ox" and case.cx_only:
        pytest.skip("cx-only case (cx command-line quota flags)")
    if cand.kind != "ours" and case.instance_specific:
        pytest.skip(f"instance-specific: {case.instance_specific}")
    want = run_case(ref.get(case), case)
    got = run_case(cand.get(case), case)
    diffs = differences(case, want, got)
    assert not diffs, (
        f"{case.name}: {case.doc}\n{CANDIDATE} differs from cx in {len(diffs)} step(s):\n"
        + "\n".join(diffs[:8]) + "\n\n" + want.show() + "\n\n" + got.show()
    )
