"""Consoles 1 and 2 as FIFOs, with a fake console (no socket, no xenstore).

The save relay is idle only once console 1 is closed (durable) after the application
closed the FIFO, and it is busy from the moment the application closed it, before the
relay's own loop has run: that is what lets the proxy hold ``paused`` deterministically.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from stubdom.minios.relay import SaveRelay, feed_restore


class FakeConsole:
    """A console whose close returns only when the test says the data is on disk."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = asyncio.Event()
        self.closed = False

    async def write(self, data: bytes) -> None:
        self.data += data

    async def close(self) -> None:
        await self.durable.wait()
        self.closed = True

    async def read(self, n: int = 65536) -> bytes:
        chunk = bytes(self.data[:n])
        del self.data[:n]
        return chunk


def write_fifo(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


async def test_idle_waits_for_console_1_to_be_durable_after_the_fifo_closed(
    tmp_path: Path,
) -> None:
    consoles: list[FakeConsole] = []

    async def open_console() -> FakeConsole:
        consoles.append(FakeConsole())
        return consoles[-1]

    relay = SaveRelay(tmp_path / "save", open_console)  # type: ignore[arg-type]
    relay.start()
    try:
        assert not relay.busy()
        state = os.urandom(3 << 20)  # more than the pipe holds: the relay must copy
        writer = asyncio.get_running_loop().run_in_executor(
            None, write_fifo, tmp_path / "save", state)
        await writer
        # The application closed the FIFO and would now write `paused`: busy at once.
        assert relay.busy()
        idle = asyncio.create_task(relay.idle())
        while not consoles or len(consoles[0].data) < len(state):
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not idle.done()  # console 1 not closed yet
        consoles[0].durable.set()
        await idle
        assert consoles[0].closed and bytes(consoles[0].data) == state
        # A second save is a second session on a fresh console.
        await asyncio.get_running_loop().run_in_executor(None, write_fifo, tmp_path / "save",
                                                         b"second")
        assert relay.busy()
        while len(consoles) < 2:
            await asyncio.sleep(0)
        consoles[1].durable.set()
        await relay.idle()
        assert bytes(consoles[1].data) == b"second" and relay.sessions == 2
    finally:
        for c in consoles:
            c.durable.set()
        await relay.close()


async def test_an_empty_save_is_a_session_too(tmp_path: Path) -> None:
    consoles: list[FakeConsole] = []

    async def open_console() -> FakeConsole:
        consoles.append(FakeConsole())
        consoles[-1].durable.set()
        return consoles[-1]

    relay = SaveRelay(tmp_path / "save", open_console)  # type: ignore[arg-type]
    relay.start()
    try:
        os.close(os.open(tmp_path / "save", os.O_WRONLY))
        assert relay.busy()
        await relay.idle()
        assert len(consoles) == 1 and consoles[0].closed and relay.sessions == 1
    finally:
        await relay.close()


def read_fifo(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("loadvm", [True, False], ids=["loadvm", "no-loadvm"])
async def test_the_restore_fifo_yields_console_2_then_end_of_file(
    tmp_path: Path, loadvm: bool
) -> None:
    state = os.urandom(1 << 20)
    con = FakeConsole()
    con.durable.set()
    con.data += state

    async def open_console() -> FakeConsole:
        return con

    path = tmp_path / "restore"
    feeder = asyncio.create_task(
        feed_restore(path, open_console if loadvm else None))  # type: ignore[arg-type]
    while not path.exists():
        await asyncio.sleep(0)
    got = await asyncio.get_running_loop().run_in_executor(None, read_fifo, path)
    assert got == (state if loadvm else b"")
    assert await feeder == len(got)
    assert con.closed is loadvm
