"""``stubdom-qemu-trad-dm``: a qemu-traditional device model that speaks only the channel.

What ioemu is inside a Mini-OS stubdomain, without Mini-OS: no frontend, no console of
its own, no machine behind it (the guest is simulated: it ejects a slot at once).  It
is an application for ``stubdom-minios`` (``stubdomain_cmdline =
"stubdom-qemu-trad-dm [--ram-mib=N]"``) and relies on it for everything else: argv is
Mini-OS's (``-d <guest>`` and the other dmargs words), ``XENSTORED_PATH`` is the
layer's proxy, the saved state goes to ``$STUBDOM_SAVE_FILE`` and ``-loadvm`` reads
``$STUBDOM_RESTORE_FILE``.  stdout and stderr are console 0.

The channel as qemu-trad answers it (``xenstore_process_dm_command_event``,
``xen-vl-extra.c``, ``pass-through.c``): the command is read and deleted, its name
prefix-matched; a ``pci-ins`` answers ``0x%02x`` in ``parameter`` then ``pci-inserted``,
and a refusal is only qemu's text in ``parameter``; a ``pci-rem`` that fails writes
nothing, and one that works writes ``pci-removed`` once the simulated guest ejects the
slot (at once); ``save`` writes the savevm stream, closes the file, then ``paused``;
``continue`` writes ``running``; logdirty commands are echoed to ``logdirty/ret`` (an
unknown one is fatal); the guest's ``cpu`` directory is watched for vcpu-set.

``--ram-mib=N`` (first on the command line) makes a save carry N MiB of "guest RAM".
For tests, the first lines it prints are ``argv [...]`` and ``env {...}`` (JSON), and
``snapshot saved {json}`` / ``snapshot restored {json}`` show what a save carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from dataclasses import dataclass, field

from stubdom import eventloop
from stubdom import protocol as proto
from stubdom.devicemodel.stream import check_savevm_complete, savevm_stream
from stubdom.protocol import (
    AUTO_PHP_SLOT,
    PCI_INS_BAD_BDF,
    PCI_INS_NO_FREE_DEVFN,
    Command,
    State,
    qemu_trad_dispatch,
)
from stubdom.xenstore import RECONNECT, Client, Watch

#: Hot-plug slots qemu-trad hands out for an automatic devfn (0-3 hold emulated devices).
SLOTS = range(4, 0x20)
SECTION = "qemu-trad-dm"
RAM_OPTION = "--ram-mib="
RAM_PIECE = 1 << 16
WITH_PARAMETER = frozenset({Command.PCI_INS, Command.PCI_REM, Command.USB_ADD, Command.USB_DEL})
#: What a test asks the layer to show in the environment line.
SHOWN_ENV = (
    proto.ENV_XENSTORED_PATH, proto.ENV_DOMID, proto.ENV_TARGET, proto.ENV_SAVE_FILE,
    proto.ENV_RESTORE_FILE, "PATH", "LANG", "TMPDIR",
)  # fmt: skip


def say(line: str) -> None:
    print(line, flush=True)


def parse_bdf(text: str) -> tuple[int, int, int, int] | None:
    """pass-through.c ``parse_bdf``: ``seg:bus:dev.func[@devfn][,opts]`` -> (bus, dev,
    func, devfn); no ``@`` is ``AUTO_PHP_SLOT``."""
    head = text.partition(",")[0]
    bdf, at, vdev = head.partition("@")
    try:
        _seg, bus_s, rest = bdf.split(":", 2)
        dev_s, func_s = rest.split(".", 1)
        return int(bus_s, 16), int(dev_s, 16), int(func_s, 16), (
            int(vdev, 16) if at else AUTO_PHP_SLOT
        )
    except ValueError:
        return None


def option(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv[:-1]):
        if word in (name, "-" + name):
            return argv[i + 1]
    return None


@dataclass
class Dm:
    xs: Client
    guest: int
    state: dict[str, object] = field(default_factory=dict)
    present: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # devfn -> bdf
    paused: bool = False
    ram_mib: int = 0

    def rel(self, node: str) -> str:
        return proto.dm_relative_path(self.guest, node)

    async def set_state(self, state: State) -> None:
        await self.xs.write(self.rel("state"), state.value)

    async def command_event(self) -> None:
        raw = await self.xs.read_optional(self.rel("command"))
        if raw is None:
            return
        await self.xs.rm(self.rel("command"))
        value = raw.decode()
        cmd = qemu_trad_dispatch(value)
        if cmd is None:
            say(f'dm-command: unknown command"{value}"')
            return
        parameter = None
        if cmd in WITH_PARAMETER:
            p = await self.xs.read_optional(self.rel("parameter"))
            if p is None:
                return
            parameter = p.decode()
        say(f"dm-command: {cmd.value} {parameter or ''}".rstrip())
        if cmd is Command.SAVE and not self.paused:
            await self.save()
        elif cmd is Command.CONTINUE and self.paused:
            self.paused = False
            await self.set_state(State.RUNNING)
        elif cmd is Command.PCI_INS and parameter is not None:
            await self.pci_ins(parameter)
        elif cmd is Command.PCI_REM and parameter is not None:
            await self.pci_rem(parameter)
        elif cmd is Command.USB_ADD:
            await self.set_state(State.USB_ADDED)
        elif cmd is Command.USB_DEL:
            await self.set_state(State.USB_DELETED)

    async def save(self) -> None:
        """The stream to the save file, the file closed, then ``paused``."""
        self.state["saves"] = int(str(self.state.get("saves", 0))) + 1
        body = json.dumps(self.state, sort_keys=True).encode()
        ram = os.urandom(RAM_PIECE) * max(1, self.ram_mib * ((1 << 20) // RAM_PIECE))
        stream = savevm_stream([(SECTION, body), ("ram", ram)])
        with open(os.environ[proto.ENV_SAVE_FILE], "wb") as f:
            f.write(stream)
        self.paused = True
        say(f"snapshot saved {json.dumps(self.state, sort_keys=True)}")
        await self.set_state(State.PAUSED)

    async def pci_ins(self, parameter: str) -> None:
        parsed = parse_bdf(parameter)
        devfn = -1
        if parsed is not None:
            devfn = parsed[3]
            if devfn & AUTO_PHP_SLOT:  # insert_to_pci_devfn: the first free slot, function 0
                free = [s for s in SLOTS if not any(s << 3 | f in self.present for f in range(8))]
                devfn = free[0] << 3 if free else -1
            elif devfn in self.present or not 0 <= devfn < 0x100:
                devfn = -2
        if devfn < 0:
            text = PCI_INS_NO_FREE_DEVFN if devfn == -1 else PCI_INS_BAD_BDF
            say(f"pci-ins {parameter}: {text}")
            await self.xs.write(self.rel("parameter"), text)  # state unchanged
            return
        assert parsed is not None
        self.present[devfn] = parsed[:3]
        await self.xs.write(self.rel("parameter"), proto.pci_inserted_parameter(devfn))
        await self.set_state(State.PCI_INSERTED)

    async def pci_rem(self, parameter: str) -> None:
        parsed = parse_bdf(parameter)
        devfn = next(
            (d for d, bdf in self.present.items() if parsed is not None and bdf == parsed[:3]),
            -1,
        )
        if devfn < 0:
            say(f"pci-rem {parameter}: no such device")  # qemu-trad writes nothing
            return
        if devfn & 7:
            say(f"Attempt to remove non-zero function {devfn & 7:x}")
            return
        for f in range(8):  # the simulated guest ejects the slot at once
            self.present.pop(devfn | f, None)
        say(f"guest ejected slot {devfn >> 3:02x}")
        await self.set_state(State.PCI_REMOVED)

    async def logdirty_event(self) -> bool:
        raw = await self.xs.read_optional(self.rel("logdirty/cmd"))
        if raw is None:
            return True
        value = raw.decode()
        if value not in (proto.LOGDIRTY_ENABLE, proto.LOGDIRTY_DISABLE):
            say(f"logdirty: unknown command {value!r}")
            return False  # qemu-trad exit(1)s
        await self.xs.write(self.rel("logdirty/ret"), value)
        return True

    async def vcpu_event(self) -> None:
        base = proto.vcpu_dir_path(self.guest)
        with contextlib.suppress(Exception):
            names = await self.xs.directory(base)
            online = []
            for n in sorted(x for x in names if x.isdigit()):
                v = await self.xs.read_optional(f"{base}/{n}/availability")
                if v == b"online":
                    online.append(n)
            say(f"vcpus online: {','.join(online) or 'none'}")


def restore(path: str) -> dict[str, object]:
    """``-loadvm``: the whole stream from the restore file, checked, its state back."""
    with open(os.environ[proto.ENV_RESTORE_FILE], "rb") as f:
        data = f.read()
    check_savevm_complete(data)
    head = 8 + 1 + 4 + 1 + len(SECTION) + 8
    end = data.index(b'}', head) + 1
    state: dict[str, object] = json.loads(data[head:end])
    say(f"snapshot restored {json.dumps(state, sort_keys=True)} from {path} ({len(data)} bytes)")
    return state


async def serve(argv: list[str], ram_mib: int) -> int:
    guest = int(option(argv, "-d") or os.environ[proto.ENV_TARGET])
    # Like every long-lived client of the host: back by itself after a xenstored restart.
    xs = await Client.connect(reconnect=RECONNECT)
    loadvm = option(argv, "-loadvm")
    dm = Dm(xs, guest, ram_mib=ram_mib)
    dm.state = restore(loadvm) if loadvm else {"guest": guest, "token": secrets.token_hex(8)}
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def forward(w: Watch, token: str) -> None:
        async for _ in w:
            queue.put_nowait(token)

    async with contextlib.AsyncExitStack() as stack:
        for path, token in (
            (dm.rel("command"), proto.DM_COMMAND_TOKEN),
            (dm.rel("logdirty/cmd"), proto.LOGDIRTY_TOKEN),
            (proto.vcpu_dir_path(guest), proto.VCPU_SET_TOKEN),
        ):
            w = await stack.enter_async_context(xs.watch(path, token))
            task = asyncio.create_task(forward(w, token))
            stack.callback(task.cancel)
        await dm.set_state(State.RUNNING)
        say("running")
        while True:
            token = await queue.get()
            if token == proto.DM_COMMAND_TOKEN:
                await dm.command_event()
            elif token == proto.LOGDIRTY_TOKEN and not await dm.logdirty_event():
                return 1
            elif token == proto.VCPU_SET_TOKEN:
                await dm.vcpu_event()


def main() -> int:
    argv = sys.argv[1:]
    say(f"argv {json.dumps(sys.argv)}")
    say(f"env {json.dumps({k: os.environ.get(k) for k in SHOWN_ENV}, sort_keys=True)}")
    ram_mib = 0
    if argv and argv[0].startswith(RAM_OPTION):
        value = argv.pop(0).removeprefix(RAM_OPTION)
        if not value.isdigit():
            say(f"{RAM_OPTION}{value}: a whole number of MiB")
            return 1
        ram_mib = int(value)
    return eventloop.run(serve(argv, ram_mib))


if __name__ == "__main__":
    sys.exit(main())
