"""The stubdomain's log on console 0 (Mini-OS sends qemu's stderr there): every record
of the process as one ``LEVEL logger: message`` line.

A line costs its process: the record, the formatting and the write.  On the control
channel's path the toolstack and the agent share a CPU, so the lines wait: while an
event is served (`ConsoleLogHandler.held`) and then `ConsoleLogHandler.LINGER` more, and
go out in one write from a timer callback, with no task, lock or future per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from stubdom.host.frontend.console import Console, ConsoleError, connect_console
from stubdom.protocol import CONSOLE_LOGGING
from stubdom.xenstore import Client, XenStoreError

log = logging.getLogger(__name__)

#: Every stubdomain log line, on console 0 and on stderr alike.
LINE_FORMAT = "%(levelname)s %(name)s: %(message)s"


def line(level: str, name: str, message: str) -> str:
    """`LINE_FORMAT` filled in directly (`logging.Formatter` takes a dozen calls)."""
    return f"{level} {name}: {message}"


class LineFormatter(logging.Formatter):
    """`LINE_FORMAT`, built directly (`line`) for a plain record; a record with a
    traceback or stack goes the general way."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        return line(record.levelname, record.name, record.getMessage())


class ConsoleLogHandler(logging.Handler):
    """Log records as lines on console 0, written after `LINGER` in one write.

    While an event is served (`held`) they wait, so the answer to a command is not
    queued behind a write that wakes dom0's console backend; they follow once the
    event is done and `LINGER` has passed.  The linger keeps that write, and the
    backend it wakes, off the toolstack's next step: the toolstack is woken by our
    answer at that very moment, on a machine where dom0 and the stubdomains may share
    one CPU.  Until a console is attached the lines wait; once writing to it failed,
    they are dropped."""

    #: Seconds a line waits for others before the write (a command's exchange with
    #: the toolstack ends within about a millisecond of our answer).
    LINGER = 0.002

    @classmethod
    def installed(cls) -> ConsoleLogHandler:
        """A handler of the root logger, in the line format of every stubdomain log."""
        handler = cls()
        handler.setFormatter(LineFormatter())
        logging.getLogger().addHandler(handler)
        return handler

    def __init__(self) -> None:
        super().__init__()
        #: Records, and the device model's output lines already in the line format.
        self.lines: list[logging.LogRecord | bytes] = []
        self.console: Console | None = None
        self._held = 0
        self._failed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted when written, after the event: off the answer's path.
        if not self._failed:
            self.lines.append(record)
            self._wake()

    def output(self, text: str, name: str) -> bool:
        """Queue ``text``, a line the device model printed, as logger ``name``'s INFO
        line, with no log record made (qemu's output is no record of ours: Mini-OS
        sends it to console 0 as it comes).  False while no console takes lines."""
        if self.console is None or self._failed:
            return False
        self.lines.append((line("INFO", name, text) + "\n").encode("utf-8", "replace"))
        self._wake()
        return True

    def held(self) -> _Hold:
        """Lines logged inside wait until the block ends."""
        return _Hold(self)

    def _hold(self) -> None:
        self._held += 1

    def _unhold(self) -> None:
        self._held -= 1
        self._wake()

    def attach(self, console: Console) -> None:
        self.console = console
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake()

    async def open_console(self, client: Client) -> Console | None:
        """Connect console 0 and attach it; None when it cannot be opened, and then the
        handler keeps no lines (`unavailable`) and the process logs to stderr only."""
        try:
            console = await connect_console(client, CONSOLE_LOGGING)
        except (ConsoleError, XenStoreError, OSError) as e:
            self.unavailable()
            log.warning("no console %d (%s); logging to stderr only", CONSOLE_LOGGING, e)
            return None
        self.attach(console)
        return console

    def unavailable(self) -> None:
        """No console 0 will come (it could not be opened): keep no lines, now or later,
        where they would pile up for the process's whole life."""
        self._failed = True
        self.lines.clear()

    def _wake(self) -> None:
        """Set the linger's timer if lines wait, none is held and no timer is set."""
        loop = self._loop
        if loop is None or self._held or self._timer is not None or not self.lines:
            return
        if threading.get_ident() != self._loop_thread:
            # A record from another thread: the loop's thread sets the timer.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to write
                loop.call_soon_threadsafe(self._wake)
            return
        self._timer = loop.call_later(self.LINGER, self._linger_over)

    def _linger_over(self) -> None:
        self._timer = None
        if not self._held:
            self._send()

    def _send(self) -> None:
        """Write every queued line now, in the order logged."""
        console = self.console
        if console is None or self._failed or not self.lines:
            return
        records, self.lines = self.lines, []
        data = b"".join([r if isinstance(r, bytes) else self._line(r) for r in records])
        try:
            console.send(data)
        except (ConsoleError, OSError):
            self._failed = True

    def _line(self, record: logging.LogRecord) -> bytes:
        try:
            text = self.format(record)
        except Exception:  # pragma: no cover - logging must never raise
            return b""
        return (text.rstrip("\n") + "\n").encode("utf-8", "replace")

    async def write_now(self) -> None:
        """Write what is queued before returning, held or not: for lines that must
        reach dom0 before a state the toolstack may answer by destroying us."""
        self._send()
        if self.console is not None and not self._failed:
            try:
                await self.console.drain()
            except (ConsoleError, OSError):
                self._failed = True

    async def aclose(self) -> None:
        """Write what is queued, then close console 0 (durable in the log file)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send()
        self._failed = True  # nothing more: the console goes
        if self.console is not None:
            with contextlib.suppress(Exception):  # closing the log must not fail the exit
                await asyncio.wait_for(self.console.close(), 10)
            self.console = None


class _Hold:
    """`ConsoleLogHandler.held` as a plain context manager: one is made per event served,
    where a generator-based one costs a generator and contextlib's wrapper."""

    __slots__ = ("_handler",)

    def __init__(self, handler: ConsoleLogHandler) -> None:
        self._handler = handler

    def __enter__(self) -> None:
        self._handler._hold()

    def __exit__(self, *exc: object) -> None:
        self._handler._unhold()
