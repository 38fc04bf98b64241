"""The device-model agent's asyncio shell: start-up, consoles, watches, dispatch, stop.

Start-up in qemu-trad's order ([setup.reads], [startup.watch-first], [startup.running]):
read ``domid``, ``target``, the guest's ``vm`` and dmargs; parse argv; bring the devices
up; with ``-loadvm``, read the saved state from console 2 (exactly to the stream's end);
start the device model; set the watches on ``command``, ``logdirty/cmd`` and the guest's
``cpu``; write ``running``.
Then events are served one at a time, in arrival order.  While paused by a save only
those three kinds of event are served ([DM-PAUSED]); the guest's ejects wait.

Console 0 is the log: every log record of the process goes there as one line
(`stubdom.stubdomain.consolelog`).  The backend logs what the device model does (an
insert, an eject, as qemu prints them); the agent adds only what it alone knows, such
as a refusal, so a command costs its answer no duplicate line.

For tests, the machine's `DeviceModel.snapshot` is logged as a
``snapshot saved {json}`` line when a save completes and ``snapshot restored {json}``
after a ``-loadvm`` start -- on the log, not on any protocol path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from stubdom import protocol as proto
from stubdom.devicemodel.base import (
    DeviceModel,
    DeviceModelError,
    PciInsertFailed,
    PciRemoveFailed,
)
from stubdom.host.frontend.console import ConsoleError, connect_console, open_console
from stubdom.stubdomain import commands as cmds
from stubdom.stubdomain.args import AgentOptions, DmArgsError, build_argv, parse_dm_args
from stubdom.stubdomain.boot import BootError, read_boot_info
from stubdom.stubdomain.consolelog import ConsoleLogHandler
from stubdom.stubdomain.discovery import Discovered, discover, run_pcifront
from stubdom.stubdomain.eventqueue import EventQueue
from stubdom.xenstore import (
    RECONNECT,
    Client,
    ConnectionClosed,
    NoEntry,
    Transaction,
    WatchEvent,
    WatchSink,
    XenStoreError,
)
from stubdom.xenstore.pipeline import Batch

if TYPE_CHECKING:  # the stream module is imported only for -loadvm
    from stubdom.devicemodel.stream import DecodedState

log = logging.getLogger(__name__)

STOP = "stop"
CLOSED = "connection-closed"
#: Exit statuses of `run_agent`.
EXIT_OK = 0
EXIT_FATAL = 1


class AgentFatal(Exception):
    """The agent cannot go on; the message is the reason, logged before exiting."""


def _snapshot_json(dm: DeviceModel) -> str:
    return json.dumps(dm.snapshot(), sort_keys=True, default=str)


class Agent:
    """One run of the device model for the guest named by ``target`` / ``-d``."""

    def __init__(
        self,
        client: Client,
        options: AgentOptions,
        cmdline: list[str],
        make_backend: Callable[[AgentOptions], DeviceModel],
    ) -> None:
        self.client = client
        self.options = options
        self.cmdline = cmdline
        self.make_backend = make_backend
        self.compat = options.compat
        self.guest = -1
        self.self_domid = -1
        self.dm: DeviceModel | None = None
        self.paused = False
        self.logdirty = False
        self.vcpus: set[int] = set()
        self.found = Discovered()
        #: (token, seq, epoch) of each watch event (`stubdom.xenstore.Reply.seq`), or
        #: STOP / CLOSED.
        self.events: EventQueue[tuple[str, int, int]] = EventQueue()
        #: Lines logged while an event is served wait for its end (None: not ours).
        self.log_handler: ConsoleLogHandler | None = None
        #: After our RM of ``command``: the seq of the READ before it and the
        #: connection's epoch (see `_own_rm_event`).
        self._own_rm: tuple[int, int] | None = None
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start-up ------------------------------------------------------------------------

    async def setup(self) -> None:
        """Everything before ``running``; `AgentFatal` if the stub cannot serve."""
        try:
            boot = await read_boot_info(self.client)
        except BootError as e:
            raise AgentFatal(str(e)) from None
        self.self_domid, target, dmargs = boot.self_domid, boot.target, boot.dmargs
        argv = build_argv(self.cmdline, dmargs)
        log.info("stubdom-dm %d for domain %d: argv %s", self.self_domid, target, " ".join(argv))
        try:
            opts = parse_dm_args(argv)
        except DmArgsError as e:
            raise AgentFatal(f"bad device-model arguments: {e}") from None
        self.guest = opts.domid if opts.domid is not None else target
        if self.guest != target:
            log.warning("-d %d differs from our target %d; serving %d", self.guest, target, target)
            self.guest = target
        self.found = await discover(self.client, self.self_domid)
        nics = opts.bind_nics(self.found.vifs)
        nics = [
            n if n.mac or n.vif is None else type(n)(n.vlan, self.found.macs[n.vif], n.model, n.vif)
            for n in nics
        ]
        for note in [*opts.notes, *self.found.notes]:
            log.warning("cannot honour: %s", note)
        machine = opts.machine(self.guest)
        machine.disks = list(self.found.disks)
        machine.nics = nics
        machine.graphics = machine.graphics and self.found.vfb
        self.vcpus = {n for n in range(machine.vcpus) if machine.vcpu_avail >> n & 1}
        self._start_task(run_pcifront(self.client), "pcifront")
        state = await self._load_state(opts.loadvm) if opts.loadvm else None
        self.dm = self.make_backend(self.options)
        log.info(
            "machine: %d disk(s), %d nic(s), %d vcpu(s), device model %s",
            len(machine.disks),
            len(machine.nics),
            machine.vcpus,
            self.dm.name,
        )
        try:
            await self.dm.start(machine, self._dm_output, state)
        except DeviceModelError as e:
            if state is not None and self.compat:
                # qemu-trad: "Error while loading savevm file", and runs anyway.
                log.error("Error while loading savevm file: %s", e)
                await self.dm.start(machine, self._dm_output, None)
            else:
                raise AgentFatal(f"the device model did not start: {e}") from None
        if state is not None:
            log.info("snapshot restored %s", _snapshot_json(self.dm))

    async def _load_state(self, path: str) -> DecodedState:
        """``-loadvm``: the saved stream from console 2, read exactly to its end into one
        buffer and checked whole as it comes (the device model does not check it again)."""
        from stubdom.devicemodel.stream import StreamError, StreamReader

        log.info("loading the device-model state (%s) from console %d", path,
                 proto.CONSOLE_RESTORE)  # fmt: skip
        reader = StreamReader()
        try:
            async with open_console(self.client, proto.CONSOLE_RESTORE) as con:
                while not reader.done:
                    chunk = await con.read(reader.needed)
                    if not chunk:
                        break
                    reader.feed(chunk)
            state = reader.result()
        except StreamError as e:
            raise AgentFatal(f"-loadvm {path}: {e}") from None
        except ConsoleError as e:
            raise AgentFatal(f"-loadvm {path}: console {proto.CONSOLE_RESTORE}: {e}") from None
        log.info("read %d bytes of device-model state", reader.received)
        return state

    # -- the event loop ----------------------------------------------------------------------

    def _start_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, ConnectionClosed):
                self.events.put_nowait((CLOSED, 0, 0))
            else:
                log.error("%s failed: %s", task.get_name(), exc)

    def _sink(self, token: str) -> WatchSink:
        """Queue each event of a watch as it arrives (no task between)."""

        def sink(event: WatchEvent | ConnectionClosed) -> None:
            if isinstance(event, ConnectionClosed):
                self.events.put_nowait((CLOSED, 0, 0))
            else:
                self.events.put_nowait((token, event.seq, self.client.epoch))

        return sink

    async def serve(self) -> None:
        """Watches, ``running``, then events until SIGTERM or the connection goes."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.events.put_nowait, (STOP, 0, 0))
        watches = [
            (proto.dm_relative_path(self.guest, "logdirty/cmd"), proto.LOGDIRTY_TOKEN),
            (proto.dm_relative_path(self.guest, "command"), proto.DM_COMMAND_TOKEN),
            (proto.vcpu_dir_path(self.guest), proto.VCPU_SET_TOKEN),
        ]
        async with contextlib.AsyncExitStack() as stack:
            for path, token in watches:
                await stack.enter_async_context(
                    self.client.watch(path, token, sink=self._sink(token))
                )
            await self._write([cmds.Write(cmds.STATE, proto.State.RUNNING)])
            log.info("running")
            while True:
                token, seq, epoch = await self.events.get()
                if token == STOP:
                    log.info("stopping (signal)")
                    return
                if token == CLOSED:
                    log.info("xenstore closed our connection; stopping")
                    return
                try:
                    with self._logs_held():
                        await self._event(token, seq, epoch)
                except ConnectionClosed:
                    log.info("xenstore closed our connection; stopping")
                    return
                except AgentFatal:
                    raise
                except (XenStoreError, DeviceModelError) as e:
                    log.error("%s event: %s", token, e)

    def _logs_held(self) -> contextlib.AbstractContextManager[None]:
        if self.log_handler is None:
            return contextlib.nullcontext()
        return self.log_handler.held()

    def _dm_output(self, line: str) -> None:
        """A line the device model printed: straight to console 0 (no log record on the
        answer's path), else logged."""
        handler = self.log_handler
        if handler is None or not handler.output(line, log.name):
            log.info("%s", line)

    async def _event(self, token: str, seq: int = 0, epoch: int = 0) -> None:
        if token == proto.DM_COMMAND_TOKEN:
            if not self._own_rm_event(seq, epoch):
                await self.command_event()
        elif token == proto.LOGDIRTY_TOKEN:
            await self.logdirty_event()
        elif token == proto.VCPU_SET_TOKEN:
            await self.vcpu_event()

    def _own_rm_event(self, seq: int, epoch: int) -> bool:
        """Whether this ``command`` event is the one our own RM of it fired, which
        would find nothing ([TIME-EVENTS]): the first one that arrived after the reply
        to the READ before that RM.  Events come in the order the server made them, so
        any later write of ``command`` fires an event after it and is read then; an
        event between the READ and the RM is for a write our RM removed.  After a
        reconnection nothing is skipped (the watch fired again)."""
        if self._own_rm is None or seq <= self._own_rm[0]:
            return False
        own_epoch = self._own_rm[1]
        self._own_rm = None
        return epoch == own_epoch

    async def _write(self, writes: list[cmds.Write]) -> None:
        if not cmds.must_be_atomic(writes):
            # Back to back: xenstored does them in this order (parameter before state).
            batch = Batch(self.client)
            for w in writes:
                batch.write(proto.dm_relative_path(self.guest, w.node), str(w.value))
            await batch.send()
            return

        async def together(t: Transaction) -> None:
            for w in writes:
                await t.write(proto.dm_relative_path(self.guest, w.node), str(w.value))

        await self.client.retry_transaction(together)

    # -- dm-command ([DM-COMMAND-EVENT]) -----------------------------------------------------

    async def _take_command(self) -> tuple[str, str | None] | None:
        """qemu-trad's read of ``command``, its rm and the read of ``parameter``, in
        one round trip: xenstored serves them in that order, and the rm of an absent
        command changes nothing.  The command and parameter, or None."""
        path = proto.dm_relative_path(self.guest, "command")
        batch = Batch(self.client)
        command = batch.read_text(path)
        removed = batch.rm(path, missing_ok=True)
        parameter = batch.read_text(proto.dm_relative_path(self.guest, cmds.PARAMETER))
        epoch = self.client.epoch
        await batch.send()
        if command.value is None:
            return None
        if removed.value and self.client.epoch == epoch:
            self._own_rm = (command.seq, epoch)
        return command.value, parameter.value

    async def command_event(self) -> None:
        taken = await self._take_command()
        if taken is None:
            return
        d = cmds.dispatch(*taken, compat=self.compat, paused=self.paused)
        for line in d.log:
            log.info("%s", line)
        if d.writes:
            await self._write(list(d.writes))
        assert self.dm is not None
        dm = self.dm
        if d.action is cmds.Action.SAVE:
            await self._save(dm)
        elif d.action is cmds.Action.CONTINUE:
            await dm.resume()
            self.paused = False
            self._unpaused.set()
            await self._write(cmds.running())  # the backend logged it (no line here)
        elif d.action is cmds.Action.PCI_INS:
            assert d.pci is not None
            try:
                devfn = await dm.pci_insert(d.pci)
            except PciInsertFailed as e:
                log.warning("pci-ins %s: %s", d.parameter, e.text)
                await self._write(cmds.pci_insert_failed(e.text, self.compat))
            else:
                await self._write(cmds.pci_inserted(devfn))
        elif d.action is cmds.Action.PCI_REM:
            assert d.bdf is not None
            try:
                devfn = await dm.pci_remove(d.bdf)
            except PciRemoveFailed as e:
                log.warning("pci-rem %s: %s", d.parameter, e.text)
                await self._write(cmds.pci_remove_failed(e.text, self.compat))
            else:
                self._start_task(self._await_eject(dm, devfn), f"eject 0x{devfn:02x}")
        elif d.action in (cmds.Action.USB_ADD, cmds.Action.USB_DEL):
            assert d.parameter is not None
            try:
                if d.action is cmds.Action.USB_ADD:
                    await dm.usb_add(d.parameter)
                else:
                    await dm.usb_del(d.parameter)
            except DeviceModelError as e:
                log.warning("%s %s: %s", d.action.value, d.parameter, e)
            await self._write(cmds.usb_done(d.action))

    async def _await_eject(self, dm: DeviceModel, devfn: int) -> None:
        await dm.wait_ejected(devfn)
        await self._unpaused.wait()  # nothing but control events while paused
        await self._write(cmds.pci_removed())

    async def _save(self, dm: DeviceModel) -> None:
        """Flush, the state to console 1 as one stream, close console 1, ``paused``."""
        await dm.pause()
        try:
            parts = await dm.save_state_parts()
            size = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
            con = await connect_console(self.client, proto.CONSOLE_SAVE)
            try:
                for part in parts:
                    await con.write(part)
            finally:
                await con.close()  # returns once the backend has it all (durable)
        except (DeviceModelError, ConsoleError, OSError) as e:
            log.error("save failed: %s; resuming", e)
            await dm.resume()
            return
        self.paused = True
        self._unpaused.clear()
        log.info("saved %d bytes of device-model state to console %d", size,
                 proto.CONSOLE_SAVE)  # fmt: skip
        log.info("snapshot saved %s", _snapshot_json(dm))
        if self.log_handler is not None:  # the toolstack may destroy us once it sees paused
            await self.log_handler.write_now()
        await self._write(cmds.saved())

    # -- logdirty ([logdirty.echo]) and vcpus ([vcpu-set]) -----------------------------------

    async def logdirty_event(self) -> None:
        # ret before cmd: the toolstack removes both at once, so a ret equal to the cmd
        # read after it means this very command was answered.
        answered = await self.client.read_text(proto.dm_relative_path(self.guest, "logdirty/ret"))
        value = await self.client.read_text(proto.dm_relative_path(self.guest, "logdirty/cmd"))
        d = cmds.logdirty(value, self.compat, answered)
        if d.error is not None:
            log.error("%s", d.error)
            if d.fatal:
                raise AgentFatal(d.error)
            return
        if d.enable is not None:
            self.logdirty = d.enable
            log.info("logdirty %s", "enabled" if d.enable else "disabled")
        if d.ret is not None:
            await self.client.write(proto.dm_relative_path(self.guest, "logdirty/ret"), d.ret)

    async def vcpu_event(self) -> None:
        base = proto.vcpu_dir_path(self.guest)
        try:
            names = await self.client.directory(base)
        except NoEntry:
            return
        avail: dict[int, str | None] = {}
        for name in names:
            if name.isdigit():
                avail[int(name)] = await self.client.read_text(f"{base}/{name}/availability")
        online = cmds.online_vcpus(avail, self.vcpus)
        if online != self.vcpus:
            assert self.dm is not None
            await self.dm.set_vcpus(online)
            log.info("vcpus online: %s", ",".join(map(str, sorted(online))) or "none")
            self.vcpus = online

    # -- stop ------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """backend.stop(), then let go of the devices (bounded)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dm is not None:
            with contextlib.suppress(Exception):
                await self.dm.stop()
        if not self.client.closed:
            await self.found.close()


async def run_agent(
    options: AgentOptions,
    cmdline: list[str],
    make_backend: Callable[[AgentOptions], DeviceModel],
    client: Client | None = None,
    fatal: str | None = None,
) -> int:
    """Connect (``XENSTORED_PATH``), log to console 0, run until stopped; exit status.
    With ``fatal`` (the kernel command line was bad) only log it there and fail."""
    if client is None:
        client = await Client.connect(reconnect=RECONNECT)
    handler = ConsoleLogHandler.installed()
    root = logging.getLogger()
    quieted: list[tuple[logging.Handler, int]] = []
    try:
        if await handler.open_console(client) is not None:
            quieted = _stderr_warnings_only(root)
        if fatal is not None:
            log.critical("stubdom-dm: fatal: %s", fatal)
            return EXIT_FATAL
        agent = Agent(client, options, cmdline, make_backend)
        agent.log_handler = handler
        status = EXIT_OK
        try:
            await agent.setup()
            await agent.serve()
        except AgentFatal as e:
            log.critical("stubdom-dm: fatal: %s", e)
            status = EXIT_FATAL
        except ConnectionClosed as e:
            log.info("xenstore connection closed: %s", e)
        except Exception as e:
            log.critical("stubdom-dm: fatal: %s: %s", type(e).__name__, e, exc_info=True)
            status = EXIT_FATAL
        finally:
            await agent.shutdown()
        return status
    finally:
        await handler.aclose()
        root.removeHandler(handler)
        for h, level in quieted:
            h.setLevel(level)
        await client.close()


def _stderr_warnings_only(root: logging.Logger) -> list[tuple[logging.Handler, int]]:
    """Once console 0 (the log) is there, stderr (the domain's process output) keeps
    warnings and worse: an info line each command would cost a second write.  The
    handlers changed, with their levels before."""
    changed: list[tuple[logging.Handler, int]] = []
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and h.stream is sys.stderr:
            changed.append((h, h.level))
            h.setLevel(max(h.level, logging.WARNING))
    return changed
