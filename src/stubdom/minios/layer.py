"""The layer's asyncio shell: boot as Mini-OS does, run the application, die with it.

Order, as Mini-OS with ioemu linked in: console 0 (our log and the application's
stdout/stderr), ``target``/``vm``/dmargs (`stubdom.stubdomain.boot`), the devices
(vbd, vif, vfb, vkbd through the handshake, and the pcifront thread, all the agent's
code in `stubdom.stubdomain.discovery`), the save and restore FIFOs and the xenstore
proxy, then the application.  Its exit status is ours; an error of ours kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stubdom import protocol as proto
from stubdom.host.frontend.console import Console, ConsoleError, connect_console
from stubdom.minios.proxy import XenstoreProxy
from stubdom.minios.relay import SaveRelay, feed_restore
from stubdom.programs import find_program
from stubdom.stubdomain.args import build_argv, loadvm_argument
from stubdom.stubdomain.boot import BootError, BootInfo, read_boot_info
from stubdom.stubdomain.consolelog import ConsoleLogHandler
from stubdom.stubdomain.discovery import Discovered, discover, run_pcifront
from stubdom.xenstore import RECONNECT, Client

log = logging.getLogger(__name__)

EXIT_CRASH = 1
#: Names in the domain's scratch directory (its TMPDIR), short enough for sun_path.
PROXY_SOCKET = "xs"
SAVE_FIFO = "save"
RESTORE_FIFO = "restore"
#: Bound on waiting for the application's last output after it exited (a child of it
#: may hold the pipe open).
OUTPUT_DRAIN = 5.0
PR_SET_PDEATHSIG = 1


class LayerError(Exception):
    """The layer cannot start the application; the message says why."""


def _die_with_parent() -> None:
    """In the child: SIGKILL when the layer dies, however it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _resolve(program: str, path: str | None) -> str:
    """A bare PROGRAM is looked up as the toolstack looks up a bare stubdomain_kernel:
    beside our interpreter, then on the domain's PATH."""
    if "/" in program:
        return program
    found = find_program(program, path)
    if found is None:
        raise LayerError(
            f"application {program!r} is neither beside {sys.executable} nor on PATH "
            f"({path}); give its path in stubdomain_cmdline"
        )
    return found


@dataclass
class Layer:
    client: Client
    words: list[str]
    scratch: Path
    upstream: str

    def __post_init__(self) -> None:
        self.found = Discovered()
        self.proc: asyncio.subprocess.Process | None = None
        self.relay: SaveRelay | None = None
        self.proxy: XenstoreProxy | None = None
        self.console0: Console | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        #: Set when one of our own tasks fails: like a Mini-OS thread's crash, that is
        #: the domain's crash.
        self._failed: asyncio.Future[BaseException] | None = None

    def _task(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        if not self._failed.done():
            self._failed.set_result(exc)

    async def run(self) -> int:
        try:
            boot = await read_boot_info(self.client)
        except BootError as e:
            raise LayerError(str(e)) from None
        argv = build_argv(self.words, boot.dmargs)
        log.info("stubdom-minios %d for domain %d: argv %s", boot.self_domid, boot.target,
                 " ".join(argv))  # fmt: skip
        self.found = await discover(self.client, boot.self_domid)
        for note in self.found.notes:
            log.warning("%s", note)
        self._task(run_pcifront(self.client), "pcifront")
        env = await self._prepare(boot, argv)
        return await self._run_application(argv, env)

    async def _prepare(self, boot: BootInfo, argv: list[str]) -> dict[str, str]:
        """The FIFOs, their relays and the proxy; the application's environment."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        client = self.client
        self.relay = SaveRelay(
            self.scratch / SAVE_FIFO, lambda: connect_console(client, proto.CONSOLE_SAVE)
        )
        self.relay.start()
        assert self.relay.task is not None
        self.relay.task.add_done_callback(self._task_done)
        loadvm = loadvm_argument(argv[1:])
        source = (lambda: connect_console(client, proto.CONSOLE_RESTORE)) if loadvm else None
        self._task(feed_restore(self.scratch / RESTORE_FIFO, source), "restore relay")
        self.proxy = XenstoreProxy(
            self.scratch / PROXY_SOCKET,
            self.upstream,
            proto.dm_state_write_paths(boot.self_domid, boot.target),
            self.relay.idle,
        )
        await self.proxy.start()
        return {
            **{k: v for k, v in os.environ.items() if k != proto.ENV_XENSTORED_PATH},
            proto.ENV_XENSTORED_PATH: str(self.proxy.path),
            proto.ENV_DOMID: str(boot.self_domid),
            proto.ENV_TARGET: str(boot.target),
            proto.ENV_SAVE_FILE: str(self.scratch / SAVE_FIFO),
            proto.ENV_RESTORE_FILE: str(self.scratch / RESTORE_FIFO),
        }

    async def _run_application(self, argv: list[str], env: dict[str, str]) -> int:
        program = _resolve(argv[0], env.get("PATH"))
        read_end, write_end = os.pipe()
        try:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    program, *argv[1:], stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_end, stderr=write_end, env=env,
                    preexec_fn=_die_with_parent,
                )  # fmt: skip
            except OSError as e:
                raise LayerError(f"cannot start {argv[0]!r}: {e.strerror or e}") from None
        finally:
            os.close(write_end)
        log.info("application %s started as pid %d", argv[0], self.proc.pid)
        output = asyncio.get_running_loop().create_task(self._relay_output(read_end))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._forward_signal, sig)
        code = await self._wait_application(self.proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(output, OUTPUT_DRAIN)
        if code == 0:
            log.info("application exited with status 0: the domain shuts down")
            return 0
        how = f"status {code}" if code > 0 else f"signal {signal.Signals(-code).name}"
        log.error("application exited with %s: the domain crashes", how)
        return code if code > 0 else EXIT_CRASH

    async def _wait_application(self, proc: asyncio.subprocess.Process) -> int:
        """The application's exit status; raises what one of our tasks failed with."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        waiter = asyncio.get_running_loop().create_task(proc.wait())
        try:
            await asyncio.wait((waiter, self._failed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
        if self._failed.done():
            exc = self._failed.result()
            raise LayerError(f"{type(exc).__name__}: {exc}") from exc
        return waiter.result()

    def _forward_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def _relay_output(self, fd: int) -> None:
        """The application's stdout and stderr to console 0 (and our own stderr)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while data := await reader.read(65536):
                with contextlib.suppress(OSError):
                    sys.stderr.buffer.write(data)
                    sys.stderr.buffer.flush()
                if self.console0 is not None:
                    with contextlib.suppress(ConsoleError, OSError):
                        await self.console0.write(data)
        finally:
            transport.close()

    async def shutdown(self) -> None:
        """Kill the application if it still runs, then stop every relay (bounded)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.proxy is not None:
            await self.proxy.close()
        if self.relay is not None:
            await self.relay.close()


async def run_layer(words: list[str], client: Client | None = None) -> int:
    """Connect (``XENSTORED_PATH``), log to console 0, run the application; exit status."""
    upstream = os.environ.get(proto.ENV_XENSTORED_PATH, "")
    if client is None:
        client = await Client.connect(reconnect=RECONNECT)
    handler = ConsoleLogHandler.installed()
    root = logging.getLogger()
    layer: Layer | None = None
    try:
        console0 = await handler.open_console(client)
        if not words:
            log.critical("stubdom-minios: fatal: no application: stubdomain_cmdline is empty")
            return EXIT_CRASH
        tmp = os.environ.get("TMPDIR")
        scratch = Path(tmp) if tmp else Path(tempfile.mkdtemp(prefix="stubdom-minios-"))
        layer = Layer(client, words, scratch, upstream)
        layer.console0 = console0
        try:
            return await layer.run()
        except LayerError as e:
            log.critical("stubdom-minios: fatal: %s", e)
        except Exception as e:
            log.critical("stubdom-minios: fatal: %s: %s", type(e).__name__, e, exc_info=True)
        return EXIT_CRASH
    finally:
        if layer is not None:
            await layer.shutdown()
        await handler.aclose()
        root.removeHandler(handler)
        await client.close()
