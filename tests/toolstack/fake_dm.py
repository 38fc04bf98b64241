"""A fake qemu-traditional device model: the command channel exactly as qemu-trad speaks it.

docs/protocol.md#the-command-channel in compat style (xenstore.c
``xenstore_process_dm_command_event``, xen-vl-extra.c, pass-through.c
``parse_bdf``/``insert_to_pci_devfn``/``bdf_to_devfn``): it watches
``device-model/<G>/command`` (token ``dm-command``), reads and *deletes* the command,
dispatches with qemu's prefix match, ignores a command whose ``parameter`` is absent,
answers a failed ``pci-ins`` only in ``parameter`` (never ``pci-insert-failed``), and
writes ``pci-removed`` only when the (simulated) guest ejects the slot.

In-process: ``FakeDeviceModel(client_of_the_stub, guest)``, ``await fake.start()``,
``await fake.eject(devfn)``.  As a program (``python -m tests.toolstack.fake_dm`` with
``XENSTORED_PATH`` set to the stub's socket): the guest comes from ``target`` like
Mini-OS, and the test ejects by writing a devfn to ``/local/domain/<S>/fake-dm/eject``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from stubdom.protocol import (
    AUTO_PHP_SLOT,
    DM_COMMAND_TOKEN,
    LOGDIRTY_DISABLE,
    LOGDIRTY_ENABLE,
    LOGDIRTY_TOKEN,
    PCI_INS_BAD_BDF,
    PCI_INS_NO_FREE_DEVFN,
    TARGET_RELATIVE,
    Command,
    State,
    dm_relative_path,
    pci_inserted_parameter,
    qemu_trad_dispatch,
)
from stubdom.xenstore import Client, ConnectionClosed, Watch, XenStoreError

log = logging.getLogger(__name__)

#: Relative to the stubdomain's home: the test writes a devfn here to eject (program mode).
EJECT_NODE = "fake-dm/eject"
EJECT_TOKEN = "fake-eject"
CLOSED = "connection-closed"
#: Where the fake says which slot's SCI it raised (the program's ``eject_requested``).
SCI_NODE = "fake-dm/sci"
#: Hot-plug slots tried in order for an automatic devfn (0-3 hold emulated devices).
DEFAULT_SLOTS = (4, 5, 6, 7)
#: What a save writes (the test's sink receives it).
SAVED_STATE = b"QEVM fake qemu-trad device state of guest %d\n"
#: Commands that take a parameter ([DM-PARAMETER]).
WITH_PARAMETER = frozenset({Command.PCI_INS, Command.PCI_REM, Command.USB_ADD, Command.USB_DEL})
NR_PCI_DEVFN = 0x100


@dataclass
class Misbehaviour:
    """Ways to be a worse device model than qemu-trad, for the toolstack's error paths."""

    never_answer: bool = False  # read and delete commands, answer nothing
    die_on: Command | None = None  # exit when this command arrives
    delay: float = 0.0  # answer this many seconds late


@dataclass
class _Plugged:
    bus: int
    dev: int
    func: int
    opts: str


@dataclass
class FakeDeviceModel:
    """qemu-trad's command channel over ``xs``, the stubdomain's own connection."""

    xs: Client
    guest: int
    slots: tuple[int, ...] = DEFAULT_SLOTS
    misbehave: Misbehaviour = field(default_factory=Misbehaviour)
    save_sink: Callable[[bytes], None] | None = None
    #: Awaited when the fake "dies" (in-process the test releases the stub's domain).
    on_die: Callable[[], Awaitable[None]] | None = None

    present: dict[int, _Plugged] = field(default_factory=dict)
    pending_eject: set[int] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)
    paused: bool = False
    logdirty: bool = False
    died: bool = False
    lost: bool = False  # xenstore closed our connection (the domain was released)
    #: Set when a pci-rem raised the SCI (the test may eject from then on).
    eject_requested: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def rel(self, node: str) -> str:
        return dm_relative_path(self.guest, node)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Set the watches, then say ``running`` (qemu's order: init, then main loop)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self.run(ready))
        await ready

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self) -> None:
        """Until the fake stops by itself (it died)."""
        if self._task is not None:
            await self._task

    async def run(self, ready: asyncio.Future[None] | None = None) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        watches = [
            (self.rel("command"), DM_COMMAND_TOKEN),
            (self.rel("logdirty/cmd"), LOGDIRTY_TOKEN),
            (EJECT_NODE, EJECT_TOKEN),
        ]

        async def forward(watch: Watch, token: str) -> None:
            try:
                async for _ in watch:
                    queue.put_nowait(token)
            except ConnectionClosed:
                queue.put_nowait(CLOSED)

        async with contextlib.AsyncExitStack() as stack:
            tasks: list[asyncio.Task[None]] = []
            for path, token in watches:
                w = await stack.enter_async_context(self.xs.watch(path, token))
                tasks.append(asyncio.create_task(forward(w, token)))

            async def cancel() -> None:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            stack.push_async_callback(cancel)
            await self.xs.write(self.rel("state"), State.RUNNING.value)
            if ready is not None:
                ready.set_result(None)
            try:
                while not self.died:
                    token = await queue.get()
                    if token == DM_COMMAND_TOKEN:
                        await self._command_event()
                    elif token == LOGDIRTY_TOKEN:
                        await self._logdirty_event()
                    elif token == EJECT_TOKEN:
                        await self._eject_event()
                    elif token == CLOSED:
                        raise ConnectionClosed("xenstore closed the stubdomain's connection")
            except ConnectionClosed as err:
                log.info("fake dm of guest %d: %s (the domain is gone)", self.guest, err)
                self.lost = True

    async def _die(self, why: str) -> None:
        log.info("fake dm of guest %d dies: %s", self.guest, why)
        self.died = True
        if self.on_die is not None:
            await self.on_die()

    # -- dm-command ([DM-COMMAND-EVENT]) --------------------------------------------

    async def _command_event(self) -> None:
        raw = await self.xs.read_optional(self.rel("command"))
        if raw is None:
            return  # the initial event, or the one our own rm caused
        await self.xs.rm(self.rel("command"))
        value = raw.decode()
        self.commands.append(value)
        cmd = qemu_trad_dispatch(value)
        if cmd is not None and cmd is self.misbehave.die_on:
            await self._die(f"told to die on {cmd}")
            return
        if self.misbehave.never_answer:
            log.info("fake dm: ignoring %r", value)
            return
        if self.misbehave.delay:
            await asyncio.sleep(self.misbehave.delay)
        if cmd is None:
            log.info('dm-command: unknown command"%s"', value)
            return
        parameter: str | None = None
        if cmd in WITH_PARAMETER:
            p = await self.xs.read_optional(self.rel("parameter"))
            if p is None:
                return  # qemu silently ignores the command
            parameter = p.decode()
        if cmd is Command.SAVE:
            await self._save()
        elif cmd is Command.CONTINUE:
            if self.paused:
                self.paused = False
                await self.xs.write(self.rel("state"), State.RUNNING.value)
        elif cmd is Command.PCI_INS:
            assert parameter is not None
            await self._pci_ins(parameter)
        elif cmd is Command.PCI_REM:
            assert parameter is not None
            await self._pci_rem(parameter)
        elif cmd is Command.USB_ADD:
            await self.xs.write(self.rel("state"), State.USB_ADDED.value)
        elif cmd is Command.USB_DEL:
            await self.xs.write(self.rel("state"), State.USB_DELETED.value)

    async def _save(self) -> None:
        if self.paused:
            return  # xen_pause_requested is already set: nothing happens
        if self.save_sink is not None:
            self.save_sink(SAVED_STATE % self.guest)
        self.paused = True
        await self.xs.write(self.rel("state"), State.PAUSED.value)

    async def _pci_ins(self, parameter: str) -> None:
        devfn = self._insert(parameter)
        if devfn < 0:
            text = PCI_INS_NO_FREE_DEVFN if devfn == -1 else PCI_INS_BAD_BDF
            await self.xs.write(self.rel("parameter"), text)  # state unchanged
            return
        await self.xs.write(self.rel("parameter"), pci_inserted_parameter(devfn))
        await self.xs.write(self.rel("state"), State.PCI_INSERTED.value)

    def _insert(self, parameter: str) -> int:
        """``insert_to_pci_devfn``: the devfn, -1 (unparsable, no free slot), -2 (taken)."""
        parsed = parse_dm_bdf(parameter)
        if parsed is None:
            return -1
        bus, dev, func, devfn, opts = parsed
        if devfn & AUTO_PHP_SLOT:
            for slot in self.slots:
                if not any((slot << 3 | f) in self.present for f in range(8)):
                    devfn = slot << 3 | (devfn & 7)
                    break
            else:
                return -1
        elif not 0 <= devfn < NR_PCI_DEVFN or devfn in self.present:
            return -2
        self.present[devfn] = _Plugged(bus, dev, func, opts)
        return devfn

    async def _pci_rem(self, parameter: str) -> None:
        parsed = parse_dm_bdf(parameter)
        devfn = -1
        if parsed is not None:
            bus, dev, func = parsed[:3]
            for d, p in self.present.items():
                if (p.bus, p.dev, p.func) == (bus, dev, func):
                    devfn = d
                    break
        if devfn < 0:
            log.info("fake dm: pci-rem %r: no such device", parameter)
        elif devfn & 7:
            log.info("fake dm: Attempt to remove non-zero function %x", devfn)
        else:
            self.pending_eject.add(devfn)  # SCI raised; pci-removed comes with the eject
            self.eject_requested.set()
            with contextlib.suppress(XenStoreError):
                await self.xs.write(SCI_NODE, f"0x{devfn:02x}")

    # -- the simulated guest eject ----------------------------------------------------

    async def eject(self, devfn: int) -> None:
        """The guest's ACPI code ejects slot ``devfn``: power the slot off, ``pci-removed``."""
        if devfn not in self.pending_eject:
            raise ValueError(f"no eject pending for devfn 0x{devfn:02x}")
        self.pending_eject.discard(devfn)
        slot = devfn >> 3
        for f in range(8):
            self.present.pop(slot << 3 | f, None)
        await self.xs.write(self.rel("state"), State.PCI_REMOVED.value)

    async def _eject_event(self) -> None:
        raw = await self.xs.read_optional(EJECT_NODE)
        if raw is None:
            return
        with contextlib.suppress(XenStoreError):
            await self.xs.rm(EJECT_NODE)
        try:
            await self.eject(int(raw.decode(), 0))
        except ValueError as err:
            log.info("fake dm: %s", err)

    # -- logdirty ([logdirty.echo]) ----------------------------------------------------

    async def _logdirty_event(self) -> None:
        raw = await self.xs.read_optional(self.rel("logdirty/cmd"))
        if raw is None:
            return  # "no command yet"
        value = raw.decode()
        if value not in (LOGDIRTY_ENABLE, LOGDIRTY_DISABLE):
            await self._die(f"unknown logdirty command {value!r}")  # qemu: exit(1)
            return
        self.logdirty = value == LOGDIRTY_ENABLE
        await self.xs.write(self.rel("logdirty/ret"), value)


def parse_dm_bdf(text: str) -> tuple[int, int, int, int, str] | None:
    """pass-through.c ``parse_bdf``: ``seg:bus:dev.func[@devfn][,opts]`` -> (bus, dev,
    func, devfn, opts); the segment is parsed and ignored; no ``@`` is ``AUTO_PHP_SLOT``."""
    head, _, opts = text.partition(",")
    bdf, at, vdev = head.partition("@")
    try:
        _seg, bus_s, rest = bdf.split(":", 2)
        dev_s, func_s = rest.split(".", 1)
        bus, dev, func = int(bus_s, 16), int(dev_s, 16), int(func_s, 16)
        devfn = int(vdev, 16) if at else AUTO_PHP_SLOT
    except ValueError:
        return None
    return bus, dev, func, devfn, opts


# -- program mode ------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> int:
    xs = await Client.connect()  # XENSTORED_PATH: the stubdomain's socket
    guest = int((await xs.read(TARGET_RELATIVE)).decode())
    sink = None
    if args.save_file:
        path = args.save_file

        def sink(data: bytes) -> None:
            with open(path, "wb") as f:
                f.write(data)

    fake = FakeDeviceModel(
        xs,
        guest,
        slots=tuple(args.slots),
        misbehave=Misbehaviour(
            never_answer=args.never_answer,
            die_on=Command(args.die_on) if args.die_on else None,
            delay=args.delay,
        ),
        save_sink=sink,
    )
    try:
        await fake.run()
    finally:
        await xs.close()
    return 1 if fake.died else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--slots", type=int, nargs="+", default=list(DEFAULT_SLOTS))
    ap.add_argument("--never-answer", action="store_true")
    ap.add_argument("--die-on", choices=[c.value for c in Command])
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--save-file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
