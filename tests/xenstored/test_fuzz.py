"""Hypothesis: random and mutated packets (bad lengths, unknown types, unterminated
strings, huge tokens) against a real in-process server.  The server never dies, guest 6
and dom0 keep being served, and state stays bounded (see `fuzzlib.run`)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.xenstored.fuzzlib import message, run_sync

raw_packets = st.binary(min_size=0, max_size=300)


@settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(raw_packets, st.integers(0, 2**32).map(lambda s: message(random.Random(s)))),
        min_size=1,
        max_size=30,
    )
)
def test_server_survives_random_and_mutated_packets(messages: list[bytes]) -> None:
    assert run_sync(messages)["messages"] == len(messages)
