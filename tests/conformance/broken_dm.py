"""Our agent with one deliberate protocol defect, run as a stubdomain kernel:
``broken_dm.py VARIANT [agent words…]``.

keep-command      never deletes ``command``
state-first       writes ``state`` before ``parameter`` (pci-ins)
never-running     never writes ``running``
paused-early      writes ``paused`` before the state reaches console 1
truncated-save    writes an incomplete state to console 1
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from stubdom import protocol as proto
from stubdom.stubdomain import agent as agent_mod
from stubdom.stubdomain import commands as cmds
from stubdom.stubdomain.main import main

Agent = agent_mod.Agent


def install(variant: str) -> None:
    orig_write = Agent._write

    if variant == "keep-command":

        async def take(self: Any) -> tuple[str, str | None] | None:
            value = await self.client.read_text(proto.dm_relative_path(self.guest, "command"))
            if value is None:
                return None
            parameter = proto.dm_relative_path(self.guest, cmds.PARAMETER)
            return value, await self.client.read_text(parameter)

        Agent._take_command = take  # type: ignore[method-assign]
    elif variant == "state-first":

        async def write(self: Any, writes: list[cmds.Write]) -> None:
            await orig_write(self, sorted(writes, key=lambda w: w.node != cmds.STATE))

        Agent._write = write  # type: ignore[method-assign]
    elif variant == "never-running":

        async def write(self: Any, writes: list[cmds.Write]) -> None:
            await orig_write(self, [w for w in writes if w.value != proto.State.RUNNING])

        Agent._write = write  # type: ignore[method-assign]
    elif variant in ("paused-early", "truncated-save"):

        async def save(self: Any, dm: Any) -> None:
            await dm.pause()
            data = await dm.save_state()
            if variant == "paused-early":
                await orig_write(self, cmds.saved())
                await asyncio.sleep(0.5)
            else:
                data = data[: len(data) // 2]
            con = await agent_mod.connect_console(self.client, proto.CONSOLE_SAVE)
            try:
                await con.write(data)
            finally:
                await con.close()
            self.paused = True
            self._unpaused.clear()
            if variant != "paused-early":
                await orig_write(self, cmds.saved())

        Agent._save = save  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown variant {variant}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
