"""The agent's log on console 0 (`stubdom.stubdomain.consolelog`): held and lingering
lines, the device model's output, a console that fails or never comes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

from stubdom.host.frontend.console import ConsoleClosed
from stubdom.stubdomain.consolelog import LINE_FORMAT, ConsoleLogHandler, LineFormatter
from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir


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
    plain = logging.Formatter(LINE_FORMAT)
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


async def test_a_console_0_that_cannot_be_opened_leaves_no_line_kept() -> None:
    """`open_console` on a domain without console 0: None, and the handler keeps nothing."""
    server = XenStoreServer(short_tmpdir("cl-") / "xs")
    await server.start()
    client = await Client.connect(str(server.socket_path), timeout=10)
    handler = ConsoleLogHandler()
    try:
        handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "waiting", (), None))
        assert await handler.open_console(client) is None
        assert handler.lines == [] and not handler.output("sim: x", "stubdom.x")
    finally:
        await client.close()
        await server.close()
