"""`Deadlines`: the calls made with one timeout expire in order under one timer,
on a fake clock (no time passes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stubdom.xenstore.inflight import Call, Deadlines


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """What `Deadlines` uses of a loop: its clock and its timers."""

    def __init__(self, real: asyncio.AbstractEventLoop) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []
        self._real = real

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def armed(self) -> list[float]:
        return [t.when for t in self.timers if not t.cancelled]

    def run_until(self, now: float) -> None:
        """Advance the clock, firing the timers that fall due, in order."""
        while due := sorted(
            (t for t in self.timers if not t.cancelled and t.when <= now), key=lambda t: t.when
        ):
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer.when
            timer.callback()
        self.now = now

    def call(self) -> Call:
        return Call(self._real.create_future(), 1)


@pytest.fixture
def loop() -> Iterator[FakeLoop]:
    real = asyncio.new_event_loop()
    yield FakeLoop(real)
    real.close()


def timed_out(call: Call) -> bool:
    fut = call.future
    return fut.done() and not fut.cancelled() and isinstance(fut.exception(), TimeoutError)


def test_one_timer_for_calls_in_flight_and_each_expires_at_its_own_deadline(
    loop: FakeLoop,
) -> None:
    deadlines = Deadlines(loop, 10.0)  # type: ignore[arg-type]  # the fake is enough
    calls = []
    for now in (0.0, 1.0, 2.0):
        loop.now = now
        calls.append(loop.call())
        deadlines.add(calls[-1])
    assert loop.armed() == [10.0]
    assert [c.deadline for c in calls] == [10.0, 11.0, 12.0]
    calls[0].future.set_result([])  # answered in time
    deadlines.finished()
    loop.run_until(10.5)
    assert not any(timed_out(c) for c in calls)
    assert loop.armed() == [11.0]  # for the oldest unfinished call
    loop.run_until(11.0)
    assert [timed_out(c) for c in calls] == [False, True, False]
    loop.run_until(12.0)
    assert timed_out(calls[2])
    assert loop.armed() == []


def test_a_finished_call_behind_an_unfinished_one_waits_for_it(loop: FakeLoop) -> None:
    deadlines = Deadlines(loop, 5.0)  # type: ignore[arg-type]
    first, second = loop.call(), loop.call()
    deadlines.add(first)
    deadlines.add(second)
    second.future.set_result([])
    deadlines.finished()
    assert list(deadlines._calls) == [first, second]
    first.future.cancel()  # given up on by its caller
    deadlines.finished()
    assert list(deadlines._calls) == []


def test_a_timer_left_after_the_calls_finished_fires_once_and_is_not_armed_again(
    loop: FakeLoop,
) -> None:
    deadlines = Deadlines(loop, 5.0)  # type: ignore[arg-type]
    call = loop.call()
    deadlines.add(call)
    call.future.set_result([])
    deadlines.finished()
    loop.run_until(100.0)
    assert loop.armed() == []
    later = loop.call()
    deadlines.add(later)  # a new timer, for the new call's deadline
    assert loop.armed() == [105.0]


def test_cancel_disarms_and_forgets(loop: FakeLoop) -> None:
    deadlines = Deadlines(loop, 5.0)  # type: ignore[arg-type]
    call = loop.call()
    deadlines.add(call)
    deadlines.cancel()
    loop.run_until(10.0)
    assert not call.future.done()
    assert loop.armed() == []


def test_a_call_of_its_own_expires_once(loop: FakeLoop) -> None:
    call: Any = loop.call()
    call.expire()
    call.expire()  # a second time changes nothing
    assert timed_out(call)
