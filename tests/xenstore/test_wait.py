"""`Client.wait_until`, `WatchGroup` and `read_text` against the in-process xenstored.

Nothing here waits for time to pass: timeouts are failure guards, except in the
timeout tests, whose condition can never hold.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    PermissionDenied,
    WaitTimeout,
    WatchGroup,
    XenStoreTimeout,
)
from tests.xenstore.conftest import GUARD, Xs

NEVER = 0.05  # for conditions that can never hold


def equals(wanted: str) -> Any:
    return lambda value: value if value == wanted else None


async def started(xs: Xs, wait: Any, looked: asyncio.Event) -> asyncio.Task[Any]:
    """``wait`` as a task, once its first look is done (its watches are set by then)."""
    task: asyncio.Task[Any] = asyncio.ensure_future(wait)
    await asyncio.wait_for(looked.wait(), GUARD)
    return task


def noting(looked: asyncio.Event, check: Any) -> Any:
    def wrapped(value: Any) -> Any:
        looked.set()
        return check(value)

    return wrapped


async def test_returns_at_once_when_the_condition_holds(xs: Xs) -> None:
    await xs.writer.write("/a", "ready")
    assert await xs.waiter.wait_until("/a", equals("ready"), GUARD) == "ready"
    assert xs.server_watches() == 0


async def test_wakes_on_a_later_write_and_sees_every_value_it_reads(xs: Xs) -> None:
    await xs.writer.write("/a", "0")
    seen: list[str | None] = []
    looked = asyncio.Event()

    def check(value: str | None) -> str | None:
        seen.append(value)
        looked.set()
        return value if value == "2" else None

    task = await started(xs, xs.waiter.wait_until("/a", check, GUARD), looked)
    await xs.writer.write("/a", "1")
    await xs.writer.write("/a", "2")
    assert await asyncio.wait_for(task, GUARD) == "2"
    assert seen[0] == "0" and seen[-1] == "2"
    assert set(seen) <= {"0", "1", "2"}
    assert xs.server_watches() == 0


async def test_an_absent_node_reads_as_none_both_ways(xs: Xs) -> None:
    looked = asyncio.Event()
    appears = xs.waiter.wait_until("/b", noting(looked, equals("here")), GUARD)
    task = await started(xs, appears, looked)
    await xs.writer.write("/b", "here")
    assert await asyncio.wait_for(task, GUARD) == "here"

    looked.clear()
    gone = xs.waiter.wait_until("/b", noting(looked, lambda v: True if v is None else None), GUARD)
    task = await started(xs, gone, looked)
    await xs.writer.rm("/b")
    assert await asyncio.wait_for(task, GUARD) is True


async def test_several_paths_are_read_together_in_order(xs: Xs) -> None:
    looked = asyncio.Event()

    def both(values: tuple[str | None, ...]) -> tuple[str | None, ...] | None:
        looked.set()
        return values if None not in values else None

    task = await started(xs, xs.waiter.wait_until(["/x", "/y"], both, GUARD), looked)
    await xs.writer.write("/y", "2")
    await xs.writer.write("/x", "1")
    assert await asyncio.wait_for(task, GUARD) == ("1", "2")
    assert xs.server_watches() == 0


async def test_a_change_between_the_read_and_the_wait_is_not_lost(
    xs: Xs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node changes after the first read, and its event has arrived before the
    waiter starts waiting: the wait must still look again."""
    await xs.writer.write("/a", "old")
    real = xs.waiter.read_text
    reads = 0

    async def read_then_change(path: str, **kw: Any) -> str | None:
        nonlocal reads
        reads += 1
        value = await real(path, **kw)
        if reads == 1:
            await xs.writer.write("/a", "new")
            await real(path)  # its reply follows the event: the event is in
        return value

    monkeypatch.setattr(xs.waiter, "read_text", read_then_change)
    assert await xs.waiter.wait_until("/a", equals("new"), GUARD) == "new"
    assert reads == 2


async def test_a_timeout_says_what_was_read_last(xs: Xs) -> None:
    await xs.writer.write("/a", "stuck")
    with pytest.raises(WaitTimeout, match=r"/a: the awaited condition did not hold") as info:
        await xs.waiter.wait_until("/a", equals("never"), NEVER)
    assert info.value.last == ("stuck",)
    assert isinstance(info.value, XenStoreTimeout)
    assert xs.server_watches() == 0


async def test_cancelling_the_wait_removes_its_watches(xs: Xs) -> None:
    looked = asyncio.Event()
    wait = xs.waiter.wait_until(["/a", "/b"], noting(looked, lambda v: None), GUARD)
    task = await started(xs, wait, looked)
    assert xs.server_watches() == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert xs.server_watches() == 0
    await xs.writer.write("/a", "after")  # an event for nobody: dropped, no error
    assert await xs.waiter.read_text("/a") == "after"


async def test_what_check_raises_ends_the_wait(xs: Xs) -> None:
    def refuse(value: str | None) -> None:
        raise LookupError(f"bad {value}")

    await xs.writer.write("/a", "x")
    with pytest.raises(LookupError, match="bad x"):
        await xs.waiter.wait_until("/a", refuse, GUARD)
    assert xs.server_watches() == 0


async def test_a_lost_connection_ends_the_wait(xs: Xs) -> None:
    looked = asyncio.Event()
    task = await started(
        xs, xs.waiter.wait_until("/a", noting(looked, lambda v: None), GUARD), looked
    )
    await xs.waiter.close()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(task, GUARD)


async def test_a_group_counts_the_events_per_path_and_can_be_reused_for_many_waits(
    xs: Xs,
) -> None:
    async with WatchGroup(xs.waiter, ["/a", "/b"]) as group:
        assert group.active
        looked = asyncio.Event()

        async def look_a() -> str | None:
            looked.set()
            value = await xs.waiter.read_text("/a")
            return value if value == "1" else None

        task = await started(xs, group.until(look_a, GUARD), looked)
        await xs.writer.write("/a", "1")
        assert await asyncio.wait_for(task, GUARD) == "1"
        await xs.writer.write("/b", "1")
        await xs.waiter.read_text("/b")  # the event came before this reply
        assert group.fired("/a") >= 2 and group.fired("/b") >= 2  # initial + write
        with pytest.raises(WaitTimeout):
            await group.until(_never, NEVER)
    assert not group.active
    assert xs.server_watches() == 0
    with pytest.raises(RuntimeError, match="not registered"):
        await group.until(_never, GUARD)


async def _never() -> None:
    return None


async def test_a_request_timeout_is_not_taken_for_the_waits_own(xs: Xs) -> None:
    async def slow_look() -> None:
        raise XenStoreTimeout("xenstore READ /a: no reply within 1 s")

    async with WatchGroup(xs.waiter, ["/a"]) as group:
        with pytest.raises(XenStoreTimeout) as info:
            await group.until(slow_look, GUARD)
    assert not isinstance(info.value, WaitTimeout)


async def test_read_text_replaces_what_is_not_utf8_and_reads_absent_as_none(xs: Xs) -> None:
    await xs.writer.write("/t/ascii", "running")
    await xs.writer.write("/t/bad", b"a\xffb")
    assert await xs.waiter.read_text("/t/ascii") == "running"
    assert await xs.waiter.read_text("/t/bad") == "a\ufffdb"  # replaced, never raised
    assert await xs.waiter.read_text("/t/none") is None
    async with xs.waiter.transaction() as t:
        assert await t.read_text("/t/ascii") == "running"
        assert await t.read_text("/t/none") is None


async def test_read_text_can_take_a_node_it_may_not_read_for_absent(xs: Xs) -> None:
    await xs.writer.write("/t/private", "secret")
    await xs.writer.set_perms("/t/private", ["n0"])
    await xs.writer.introduce(7, 0, 1)
    guest = await Client.connect(str(xs.server.domain_socket(7)), timeout=GUARD)
    try:
        with pytest.raises(PermissionDenied):
            await guest.read_text("/t/private")
        assert await guest.read_text("/t/private", denied_as_absent=True) is None
        assert await guest.read_text("/t/none", denied_as_absent=True) is None
    finally:
        await guest.close()
