"""The agent's event path: the command taken in one round trip, the event of its own
RM left unread, and console-0 lines held while an event is served."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import pytest

from stubdom import protocol as proto
from stubdom.devicemodel.sim import SimDeviceModel
from stubdom.host.frontend.console import ConsoleClosed
from stubdom.stubdomain.agent import Agent
from stubdom.stubdomain.args import AgentOptions
from stubdom.stubdomain.consolelog import ConsoleLogHandler, LineFormatter
from stubdom.wire.constants import Op
from stubdom.xenstore import Client
from tests.support.daemons import Daemon

GUEST = 7


def bare_agent(c: Client) -> Agent:
    """An agent for guest 7 on dom0's connection, not started (handlers called directly)."""
    agent = Agent(c, AgentOptions(), [], lambda o: SimDeviceModel())
    agent.guest = GUEST
    agent.dm = SimDeviceModel()
    return agent


@pytest.fixture(params=["ours", "cx"])
def daemon(request: pytest.FixtureRequest) -> Daemon:
    d: Daemon = request.getfixturevalue(request.param)
    return d


async def test_the_event_of_its_own_rm_is_not_read(daemon: Daemon) -> None:
    """[TIME-EVENTS]: the event the agent's own delete of ``command`` causes would find
    nothing; it is recognised by its place after the READ's reply and not read, while
    every later write of ``command`` is."""
    async with await Client.connect(daemon.socket) as c:
        agent = bare_agent(c)
        taken: list[tuple[str, str | None] | None] = []
        real_take = agent._take_command

        async def take() -> tuple[str, str | None] | None:
            got = await real_take()
            taken.append(got)
            return got

        agent._take_command = take  # type: ignore[method-assign]
        path = f"/local/domain/0/{proto.dm_relative_path(GUEST, 'command')}"

        async def serve_one() -> None:
            token, seq, epoch = await agent.events.get()
            await agent._event(token, seq, epoch)

        sink = agent._sink(proto.DM_COMMAND_TOKEN)
        async with c.watch(path, proto.DM_COMMAND_TOKEN, sink=sink):
            await serve_one()  # the watch's first event: nothing there
            assert taken == [None]
            await c.write(path, "continue")  # not paused: logged, nothing to do
            await serve_one()
            assert taken[-1] == ("continue", None)
            assert not await c.exists(path)
            await serve_one()  # the RM's own event
            assert len(taken) == 2
            await c.write(path, "continue")
            await serve_one()
            assert len(taken) == 3 and taken[-1] == ("continue", None)


async def test_a_command_is_read_removed_and_its_parameter_read_in_one_write(
    ours: Daemon,
) -> None:
    async with await Client.connect(ours.socket) as c:
        agent = bare_agent(c)
        batches: list[list[int]] = []
        real = c.roundtrips

        async def spy(requests: list[tuple[int, bytes, str | None]], **kw: object) -> object:
            batches.append([op for op, _, _ in requests])
            return await real(requests, **kw)  # type: ignore[arg-type]

        c.roundtrips = spy  # type: ignore[method-assign]
        assert await agent._take_command() is None  # nothing there: the RM changes nothing
        await c.write(f"/local/domain/0/{proto.dm_relative_path(GUEST, 'parameter')}", "p")
        await c.write(f"/local/domain/0/{proto.dm_relative_path(GUEST, 'command')}", "save")
        assert await agent._take_command() == ("save", "p")
        assert batches[0] == batches[-1] == [Op.READ, Op.RM, Op.READ]


def test_after_a_reconnection_no_event_is_taken_for_the_rm() -> None:
    agent = Agent(None, AgentOptions(), [], lambda o: SimDeviceModel())  # type: ignore[arg-type]
    agent._own_rm = (10, 0)
    assert not agent._own_rm_event(9, 0)  # before the READ's reply: read it
    assert agent._own_rm_event(11, 0)
    assert not agent._own_rm_event(12, 0)  # only one
    agent._own_rm = (10, 0)
    assert not agent._own_rm_event(11, 1)  # the connection was made again meanwhile
    assert agent._own_rm is None


class FakeConsole:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.wrote = asyncio.Event()

    def send(self, data: bytes) -> None:
        self.writes.append(data)
        self.wrote.set()

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def console_log(
    name: str, linger: float
) -> AsyncIterator[tuple[ConsoleLogHandler, FakeConsole, logging.Logger]]:
    """A console-0 handler with ``linger`` on a fake console, for logger ``name``;
    closed (what is queued written) on the way out."""
    handler = ConsoleLogHandler()
    handler.LINGER = linger  # type: ignore[misc]
    console = FakeConsole()
    handler.attach(console)  # type: ignore[arg-type]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler, console, logger
    finally:
        logger.removeHandler(handler)
        await asyncio.wait_for(handler.aclose(), 5)


async def test_lines_logged_while_an_event_is_served_follow_in_one_write() -> None:
    async with console_log("test.held", 0) as (handler, console, logger):
        with handler.held():
            logger.info("one")
            logger.info("two")
            for _ in range(20):  # every turn the writer could take
                await asyncio.sleep(0)
            assert console.writes == []
        await console.wrote.wait()
        assert console.writes == [b"one\ntwo\n"]
        logger.info("three")  # not held: written at once
        console.wrote.clear()
        await console.wrote.wait()
        assert console.writes[-1] == b"three\n"


async def test_lines_linger_for_company_and_closing_writes_them_at_once() -> None:
    async with console_log("test.linger", 3600) as (_, console, logger):
        logger.info("three")
        for _ in range(20):  # every turn the writer could take
            await asyncio.sleep(0)
        assert console.writes == []
        logger.info("four")
    assert console.writes == [b"three\nfour\n"]


async def test_write_now_writes_held_lines_before_it_returns() -> None:
    async with console_log("test.now", 3600) as (handler, console, logger):
        with handler.held():
            logger.info("snapshot saved")
            await handler.write_now()
            assert console.writes == [b"snapshot saved\n"]
    assert console.writes == [b"snapshot saved\n"]


async def test_lines_before_the_console_wait_for_it() -> None:
    handler = ConsoleLogHandler()
    handler.LINGER = 0  # type: ignore[misc]
    logger = logging.getLogger("test.early")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("early")
        await asyncio.sleep(0)
        console = FakeConsole()
        handler.attach(console)  # type: ignore[arg-type]
        await asyncio.wait_for(console.wrote.wait(), 5)
        assert console.writes == [b"early\n"]
    finally:
        logger.removeHandler(handler)
        await handler.aclose()


class BrokenConsole(FakeConsole):
    def send(self, data: bytes) -> None:
        super().send(data)
        raise ConsoleClosed("console 0 is closed")


async def test_a_console_that_failed_gets_no_more_lines_and_keeps_none() -> None:
    handler = ConsoleLogHandler()
    handler.LINGER = 0  # type: ignore[misc]
    console = BrokenConsole()
    handler.attach(console)  # type: ignore[arg-type]
    logger = logging.getLogger("test.broken")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("lost")
        await asyncio.wait_for(console.wrote.wait(), 5)
        logger.info("dropped")
        for _ in range(5):
            await asyncio.sleep(0)
        assert console.writes == [b"lost\n"] and handler.lines == []
    finally:
        logger.removeHandler(handler)
        await handler.aclose()  # does not raise


def test_the_line_format_matches_the_general_formatter() -> None:
    plain = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("stubdom.x", logging.INFO, __file__, 1, "a %s %d", ("b", 3), None)
    assert LineFormatter().format(record) == plain.format(record) == "INFO stubdom.x: a b 3"
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad", (), sys.exc_info())
    assert LineFormatter().format(failed) == plain.format(failed)
    assert "ValueError: boom" in LineFormatter().format(failed)


async def test_device_model_output_goes_out_in_order_with_the_records() -> None:
    handler = ConsoleLogHandler()
    assert not handler.output("sim: early", "stubdom.x")  # no console: the caller logs it
    handler.setFormatter(LineFormatter())
    handler.LINGER = 3600  # type: ignore[misc]
    console = FakeConsole()
    handler.attach(console)  # type: ignore[arg-type]
    logger = logging.getLogger("test.output")
    logger.addHandler(handler)
    try:
        logger.warning("before")
        assert handler.output("sim: 0000:03:00.0 inserted at devfn 0x28", "stubdom.x")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        await handler.aclose()
    assert console.writes == [
        b"WARNING test.output: before\n"
        b"INFO stubdom.x: sim: 0000:03:00.0 inserted at devfn 0x28\n"
        b"WARNING test.output: after\n"
    ]


async def test_a_line_logged_from_another_thread_is_written_by_the_loop() -> None:
    async with console_log("test.thread", 0) as (_, console, logger):
        await asyncio.to_thread(logger.info, "from a thread")
        await asyncio.wait_for(console.wrote.wait(), 5)
        assert console.writes == [b"from a thread\n"]


def test_without_a_console_no_line_is_kept() -> None:
    handler = ConsoleLogHandler()
    logger = logging.getLogger("test.unavailable")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("before the console failed")
        assert len(handler.lines) == 1  # waiting for the console
        handler.unavailable()
        logger.info("after")
        assert handler.lines == [] and not handler.output("sim: x", "stubdom.x")
    finally:
        logger.removeHandler(handler)
