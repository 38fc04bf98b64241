"""Fixtures shared by every test package: daemons to talk to."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.daemons import (
    Daemon,
    have_cx,
    have_ox,
    need_peer,
    need_xenstored,
    start_cx,
    start_ours,
    start_ox,
)

# CI runs the same examples every time (a property a random run breaks is found and
# pinned with @example locally); elsewhere every run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture
def xenstored(request: pytest.FixtureRequest) -> str:
    """The daemon a test's host runs on: "ours" unless the test is parametrised
    (``on_every_daemon``); a missing cx/ox skips, or fails under STUBDOM_REQUIRE_PEERS=1."""
    kind: str = getattr(request, "param", "ours")
    need_xenstored(kind)
    return kind


@pytest.fixture
def ours() -> Iterator[Daemon]:
    """A fresh ``stubdom xenstored`` for one test."""
    d = start_ours()
    yield d
    d.stop()


@pytest.fixture
def cx() -> Iterator[Daemon]:
    """A fresh real cxenstored 4.17 (`stubdom.realxs`) for one test."""
    need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    d = start_cx()
    yield d
    d.stop()


@pytest.fixture
def ox() -> Iterator[Daemon]:
    """A fresh real oxenstored 4.17 (`stubdom.realxs`) for one test."""
    need_peer(have_ox(), "oxenstored (Debian xen-utils-4.17) and gcc")
    d = start_ox()
    yield d
    d.stop()
