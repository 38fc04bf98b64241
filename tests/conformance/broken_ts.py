"""A deliberately broken toolstack: our ``stubdom`` CLI with one behaviour patched.

Usage: ``broken_ts.py VARIANT STUBDOM-ARGS...``.  Variants:

- ``dmargs-no-space``: dmargs without the leading space;
- ``dmargs-perms``: dmargs perms ``r0`` (everyone reads) instead of ``n0,rS``;
- ``dm-dir-perms``: ``device-model/G`` perms ``nS`` (the guest cannot read);
- ``no-restore``: the state is never written back after a command;
- ``command-first``: the command is written before its parameter;
- ``pci-ins-format``: the pci-ins parameter lacks ``power_mgmt``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from stubdom import protocol as proto
from stubdom.cli.main import main
from stubdom.toolstack import channel, exchange, spawn
from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import Transaction


def _perms_dm_dir(self: spawn.StubdomSpawner, stub: int, guest: int) -> Awaitable[None]:
    async def body(t: Transaction) -> None:
        await t.mkdir(proto.dm_path(stub, guest))
        await t.set_perms(proto.dm_path(stub, guest), [Perm(Access.NONE, stub)])

    return self.xs.retry_transaction(body)


def _command_first(orig: Callable[..., Awaitable[exchange.Snapshot]]) -> Callable[..., object]:
    async def command_first(
        self: channel.DeviceModelChannel,
        command: proto.Command,
        parameter: str | None,
        expect: proto.State,
        restore: exchange.Restore,
    ) -> exchange.Snapshot:
        state = await self.client.read_text(self._state)

        async def send(watches: channel.ChannelWatches) -> channel.Look:
            await self.client.write(self._command, command.value)
            if parameter is not None:
                await self.client.write(self._parameter, parameter)
            return await self._look(watches)  # the first look, as the channel's own

        try:
            return await self._wait(
                exchange.CommandExchange(self.guest, expect, command, parameter), send
            )
        finally:
            if state is not None and restore is not exchange.Restore.NEVER:
                await self._restore(state)

    return command_first


def patch(variant: str) -> None:
    if variant == "dmargs-no-space":
        good = proto.encode_dmargs
        proto.encode_dmargs = lambda argv: good(argv).lstrip(" ")  # type: ignore[assignment]
    elif variant == "dmargs-perms":

        async def write_dmargs(self: spawn.StubdomSpawner, vm: str, stub: int, d: str) -> None:
            path = proto.dmargs_path(vm)
            await self.xs.write(path, d)
            await self.xs.set_perms(path, [Perm(Access.READ, 0)])

        spawn.StubdomSpawner._write_dmargs = write_dmargs  # type: ignore[method-assign]
    elif variant == "dm-dir-perms":
        spawn.StubdomSpawner._make_dm_dir = _perms_dm_dir  # type: ignore[method-assign,assignment]
    elif variant == "no-restore":

        async def no_restore(self: channel.DeviceModelChannel, orig: str) -> None:
            return None

        channel.DeviceModelChannel._restore = no_restore  # type: ignore[method-assign]
    elif variant == "command-first":
        ch = channel.DeviceModelChannel
        ch._exchange = _command_first(ch._exchange)  # type: ignore[method-assign,assignment]
    elif variant == "pci-ins-format":

        def fmt(bdf: proto.Bdf, vdevfn: int, msi: bool, pm: bool) -> str:
            return f"{bdf},msitranslate={int(msi)}"

        channel.pci_ins_parameter = fmt
    else:
        raise SystemExit(f"unknown variant {variant!r}")


if __name__ == "__main__":
    patch(sys.argv[1])
    sys.argv = ["stubdom", *sys.argv[2:]]
    main()
