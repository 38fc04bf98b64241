"""The guest's flock and save marker, alone (the channel's use of them is in
test_channel.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.toolstack.locks import (
    GuestLock,
    SaveMarker,
    lock_path,
    new_stamp,
    save_marker_path,
)
from tests.support.flock import flock_free


@pytest.fixture
def lock_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "locks"  # made by the first lock


async def test_the_flock_is_held_only_inside(lock_dir: Path) -> None:
    path = lock_path(lock_dir, 5)
    assert path == lock_dir / "dm-5.lock"
    async with GuestLock(path, asyncio.Lock()):
        assert not flock_free(path)
    assert flock_free(path)


async def test_a_cancelled_wait_for_the_flock_holds_nothing(lock_dir: Path) -> None:
    path = lock_path(lock_dir, 5)

    async def take() -> None:
        async with GuestLock(path, asyncio.Lock()):
            raise AssertionError("got a lock someone holds")

    async with GuestLock(path, asyncio.Lock()):
        waiter = asyncio.create_task(take())
        await asyncio.sleep(0)  # let it start (a cancel before that must hold nothing too)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert flock_free(path)


async def test_a_guest_lock_cancelled_waiting_for_the_flock_holds_neither_lock(
    lock_dir: Path,
) -> None:
    path = lock_path(lock_dir, 5)
    mine = asyncio.Lock()

    async def take() -> None:
        async with GuestLock(path, mine):
            raise AssertionError("got a flock another process holds")

    async with GuestLock(path, asyncio.Lock()):  # another process's
        waiter = asyncio.create_task(take())
        for _ in range(3):
            await asyncio.sleep(0)
        assert mine.locked()  # in-process lock taken, waiting for the flock
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not mine.locked()
    assert flock_free(path)
    async with GuestLock(path, mine):
        assert mine.locked() and not flock_free(path)
    assert not mine.locked() and flock_free(path)


async def test_each_hold_finds_the_stamp_of_the_last_holder(lock_dir: Path) -> None:
    path = lock_path(lock_dir, 5)
    mine = asyncio.Lock()
    x, y = new_stamp(), new_stamp()
    assert x != y and len(x) == len(y)  # fixed width: written over, never truncated
    found: list[bytes] = []  # by `taken`, once per hold
    for holder in (x, x, y, x):
        async with GuestLock(path, mine, holder, lambda lock: found.append(lock.previous)):
            assert path.read_bytes() == holder
    assert found == [b"", x, x, y]  # b"": a new lock file
    assert GuestLock(path, mine).stamp not in (x, y)  # no stamp given: a fresh one


async def test_a_lock_file_that_cannot_be_stamped_fails_the_hold(lock_dir: Path) -> None:
    path = lock_path(lock_dir, 5)
    lock_dir.mkdir()
    os.mkfifo(path)  # opens read-write, but takes no pread
    mine = asyncio.Lock()
    with pytest.raises(OSError, match="cannot stamp the lock file"):
        async with GuestLock(path, mine):
            raise AssertionError("held a lock it could not stamp")
    assert not mine.locked()


def test_a_held_marker_is_a_save_in_progress_of_its_stubdomain_only(
    lock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock_dir.mkdir()
    path = save_marker_path(lock_dir, 5)
    ours, theirs = SaveMarker(path, 5), SaveMarker(path, 5)
    assert not theirs.in_progress(6)  # no marker at all
    ours.hold(6)
    assert path.read_text() == "6\n"
    assert theirs.in_progress(6)
    assert not theirs.in_progress(7)
    ours.release()  # as if the process that saved died
    caplog.set_level(logging.WARNING, logger="stubdom.toolstack.locks")
    assert not theirs.in_progress(6)
    assert "guest 5: the save marker" in caplog.text and "toolstack that died" in caplog.text
    ours.hold(6)
    ours.remove()
    assert not path.exists() and not theirs.in_progress(6)


async def test_the_lock_makes_a_missing_lock_directory(tmp_path: Path) -> None:
    path = lock_path(tmp_path / "run" / "locks", 7)
    async with GuestLock(path, asyncio.Lock()):
        assert not flock_free(path)
    assert path.exists() and flock_free(path)
