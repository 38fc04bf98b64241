"""Daemon pools for the differential tests.

``STUBDOM_DIFF_TARGET`` picks the candidate compared with the reference cx: ``ours``
(default), ``cx`` (a second, independent cx: checks the harness itself) or ``ox``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.differential.pool import Pool
from tests.support.daemons import have_cx, have_ox, need_peer

CANDIDATE = os.environ.get("STUBDOM_DIFF_TARGET", "ours")


@pytest.fixture(scope="module")
def pools() -> Iterator[tuple[Pool, Pool]]:
    """(reference cx, candidate) daemon pools shared by one test module."""
    need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    if CANDIDATE == "ox":
        need_peer(have_ox(), "oxenstored (Debian xen-utils-4.17) and gcc")
    ref, cand = Pool("cx"), Pool(CANDIDATE)
    yield ref, cand
    ref.close()
    cand.close()
