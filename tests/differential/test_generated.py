"""Random request sequences over a tiny path alphabet, compared between the candidate and cx.

The alphabet is small on purpose (``/h``, ``/h/a``, ``/h/a/b``, ``/h/b`` and relative
``h``, ``h/a``), so random sequences collide: creates under removed parents, permission
changes between a guest's reads, watches firing on each other's writes, transactions that
conflict. Deterministic (``derandomize=True``) and bounded; the daemons are shared by the
module and reset between examples by the runner (guest 5 is released and re-introduced,
the tree restored). Shrinking is off by default for speed (``STUBDOM_DIFF_SHRINK=1``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.differential.compare import differences
from tests.differential.conftest import CANDIDATE
from tests.differential.corpus import Case, S, Step
from tests.differential.pool import Pool
from tests.differential.runner import run_case

PATHS = ["/h", "/h/a", "/h/a/b", "/h/b", "h", "h/a"]
ACTORS = ["dom0", "dom0", "dom0b", "g5", "g5"]
PERMS = [("n0",), ("n0", "r5"), ("n0", "b5"), ("b0",), ("r0", "w5"), ("n5",), ("n5", "r0")]
TXS = [None, None, None, "t1", "t1", "t2"]

paths = st.sampled_from(PATHS)
actors = st.sampled_from(ACTORS)
txs = st.sampled_from(TXS)


@st.composite
def steps(draw: st.DrawFn) -> Step:
    actor, tx = draw(actors), draw(txs)
    kind = draw(st.sampled_from(["WRITE", "WRITE", "READ", "MKDIR", "RM", "DIRECTORY",
                                 "GET_PERMS", "SET_PERMS", "WATCH", "UNWATCH", "START",
                                 "END"]))
    if kind == "WRITE":
        return S(actor, "WRITE", draw(paths), draw(st.sampled_from(["", "x", "yy"])), tx=tx)
    if kind == "SET_PERMS":
        return S(actor, "SET_PERMS", draw(paths), *draw(st.sampled_from(PERMS)), tx=tx)
    if kind in ("WATCH", "UNWATCH"):
        return S(actor, kind, draw(paths), draw(st.sampled_from(["A", "B"])))
    if kind == "START":
        return S(actor, "TRANSACTION_START", bind=draw(st.sampled_from(["t1", "t2"])))
    if kind == "END":
        return S(actor, "TRANSACTION_END", draw(st.sampled_from(["T", "T", "F"])),
                 tx=draw(st.sampled_from(["t1", "t2"])))
    return S(actor, kind, draw(paths), tx=tx)


SETUP = (S("dom0", "WRITE", "/h", ""), S("dom0", "SET_PERMS", "/h", "n0", "b5"),
         S("dom0b", "WATCH", "/h", "root"))

PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("STUBDOM_DIFF_SHRINK") == "1":
    PHASES.append(Phase.shrink)


@pytest.mark.peer
@settings(max_examples=80, derandomize=True, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=st.lists(steps(), min_size=1, max_size=16))
def test_generated_sequences(pools: tuple[Pool, Pool], body: list[Step]) -> None:
    ref, cand = pools
    case = Case("generated", "random sequence", (*SETUP, *body), guests=(5,))
    want = run_case(ref.get(case), case)
    got = run_case(cand.get(case), case)
    diffs = differences(case, want, got)
    assert not diffs, (f"{CANDIDATE} differs from cx:\n" + "\n".join(diffs[:5]) + "\n\n"
                       + want.show() + "\n\n" + got.show())
