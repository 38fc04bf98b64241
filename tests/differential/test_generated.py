"""Random request sequences over a tiny path alphabet, compared between the candidate and cx.

The alphabet is small on purpose (``/h``, ``/h/a``, ``/h/a/b``, ``/h/b`` and relative
``h``, ``h/a``), so random sequences collide: creates under removed parents, permission
changes between a guest's reads, watches firing on each other's writes, transactions that
conflict. Deterministic (``derandomize=True``) and bounded; the daemons are shared by the
module and reset between examples by the runner (guest 5 is released and re-introduced,
the tree restored). Shrinking is off by default for speed (``STUBDOM_DIFF_SHRINK=1``).

A second test does the same with two guests (5 and 6) over their homes and ``/h``, with
permissions naming both.  Run undeterministically for long, these found two transaction
bugs of ours (a node read as missing in a transaction; RM of a node whose parent no
longer lists it), now corpus cases in ``cases/transactions.py``.
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
#: Two guests, each with a home and nodes the other may see: permissions naming both.
PATHS_2 = ["/h", "/h/a", "/h/a/b", "/h/b", "/local/domain/5/x", "/local/domain/5/x/y",
           "/local/domain/6/z", "x", "x/y", "z"]
ACTORS_2 = ["dom0", "g5", "g5", "g6", "g6"]
PERMS_2 = [("n0",), ("n0", "r5"), ("n0", "b6"), ("n5",), ("n5", "r6"), ("n6", "w5"), ("b5",),
           ("n6",), ("r5", "n0"), ("n5", "b0")]


@st.composite
def steps(draw: st.DrawFn, paths: list[str] = PATHS, actors: list[str] = ACTORS,
          perms: list[tuple[str, ...]] = PERMS) -> Step:
    actor, tx = draw(st.sampled_from(actors)), draw(st.sampled_from(TXS))
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["WRITE", "WRITE", "READ", "MKDIR", "RM", "DIRECTORY",
                                 "GET_PERMS", "SET_PERMS", "WATCH", "UNWATCH", "START",
                                 "END"]))
    if kind == "WRITE":
        return S(actor, "WRITE", path, draw(st.sampled_from(["", "x", "yy"])), tx=tx)
    if kind == "SET_PERMS":
        return S(actor, "SET_PERMS", path, *draw(st.sampled_from(perms)), tx=tx)
    if kind in ("WATCH", "UNWATCH"):
        return S(actor, kind, path, draw(st.sampled_from(["A", "B"])))
    if kind == "START":
        return S(actor, "TRANSACTION_START", bind=draw(st.sampled_from(["t1", "t2"])))
    if kind == "END":
        return S(actor, "TRANSACTION_END", draw(st.sampled_from(["T", "T", "F"])),
                 tx=draw(st.sampled_from(["t1", "t2"])))
    return S(actor, kind, path, tx=tx)


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
    same_as_cx(pools, Case("generated", "random sequence", (*SETUP, *body), guests=(5,)))


SETUP_2 = (S("dom0", "WRITE", "/h", ""), S("dom0", "SET_PERMS", "/h", "n0", "b5", "b6"),
           S("dom0", "MKDIR", "/local/domain/6"),
           S("dom0", "SET_PERMS", "/local/domain/6", "n6"), S("dom0", "WATCH", "/h", "root"))


@pytest.mark.peer
@settings(max_examples=80, derandomize=True, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=st.lists(steps(PATHS_2, ACTORS_2, PERMS_2), min_size=1, max_size=24))
def test_generated_sequences_of_two_guests(pools: tuple[Pool, Pool], body: list[Step]) -> None:
    """Two guests over their homes and a shared subtree: each one's permissions on the
    other's nodes, their watches and transactions in between."""
    case = Case("generated-2", "random sequence, two guests", (*SETUP_2, *body), guests=(5, 6))
    same_as_cx(pools, case)


def same_as_cx(pools: tuple[Pool, Pool], case: Case) -> None:
    ref, cand = pools
    want = run_case(ref.get(case), case)
    got = run_case(cand.get(case), case)
    diffs = differences(case, want, got)
    assert not diffs, (f"{CANDIDATE} differs from cx:\n" + "\n".join(diffs[:5]) + "\n\n"
                       + want.show() + "\n\n" + got.show())
