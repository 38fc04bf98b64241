"""The poll window's rule (`stubdom.xenstored.pollwindow`), with made-up idle spells:
haltpoll's grow-and-shrink, no clock."""

from __future__ import annotations

import pytest

from stubdom.xenstored.pollwindow import GROW_START_NS, LIMIT_NS, PollWindow

US = 1000


def test_no_window_until_a_spell_within_the_limit_calls_for_one() -> None:
    w = PollWindow()
    assert w.window == 0
    w.idle(LIMIT_NS + 1)  # a long sleep: nothing to catch by polling
    assert w.window == 0
    w.idle(30 * US)
    assert w.window == GROW_START_NS


def test_a_spell_the_window_missed_doubles_it_up_to_the_limit() -> None:
    """Each spell just past the window (and within the limit)."""
    w = PollWindow()
    seen = []
    for _ in range(5):
        w.idle(min(w.window + 1, LIMIT_NS))
        seen.append(w.window)
    assert seen == [50 * US, 100 * US, 200 * US, 200 * US, 200 * US]
    w.idle(LIMIT_NS + 1)  # just past the limit: too long to poll for
    assert w.window == 100 * US


def test_a_spell_the_poll_caught_changes_nothing() -> None:
    w = PollWindow()
    w.idle(30 * US)
    w.idle(GROW_START_NS)
    w.idle(0)
    assert w.window == GROW_START_NS


def test_spells_past_the_limit_halve_it_down_to_none() -> None:
    w = PollWindow(100 * US)
    w.idle(60 * US)
    w.idle(90 * US)
    assert w.window == 100 * US
    halves = []
    while w.window:
        w.idle(10_000 * US)
        halves.append(w.window)
    assert halves[:3] == [50 * US, 25 * US, 12_500]
    assert halves[-1] == 0


def test_a_limit_under_the_first_window_is_the_window() -> None:
    w = PollWindow(20 * US)
    w.idle(15 * US)
    assert w.window == 20 * US


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="-1 ns"):
        PollWindow(-1)
