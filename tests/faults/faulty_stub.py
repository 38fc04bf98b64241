"""A stubdomain kernel: the real agent (``stubdom-dm``) with one fault injected.

    faulty_stub.py ROOT FAULT [agent words...]

ROOT is the repository (the domain's environment has no PYTHONPATH).  FAULT is one of
`FAULTS`; a crash writes ``fault: <what>`` on console 0 first, waits until console 0
holds it, then ends the process with status 134 (as an abort would), so the
toolstack's report can be checked for the stub's last words.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("faulty-stub")

CRASH_STATUS = 134
#: State writes of the ``flood`` fault before it answers.
FLOOD = 3000
COMMANDS = ("pci-ins", "pci-rem", "save", "continue")
FAULTS = (
    "crash-before-running",
    *(f"crash-on-{c}" for c in COMMANDS),
    "crash-mid-save",
    "crash-after-save",
    "silent",
    "garbage-state",
    "garbage-parameter",
    "running-twice",
    "delete-nodes",
    "flood",
    "short-save",
    "corrupt-save",
    "short-restore",
    "corrupt-restore",
)


async def crash(why: str) -> None:
    from stubdom.stubdomain.consolelog import ConsoleLogHandler

    log.critical("fault: %s", why)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ConsoleLogHandler):
            await handler.aclose()
    os._exit(CRASH_STATUS)


def install(fault: str) -> None:
    """Patch `Agent` so that it misbehaves as ``fault`` says."""
    from stubdom import protocol as proto
    from stubdom.host.frontend.console import open_console
    from stubdom.stubdomain.agent import Agent

    setup = Agent.setup
    command_event = Agent.command_event
    save = Agent._save

    def node(agent: Agent, name: str) -> str:
        return proto.dm_relative_path(agent.guest, name)

    async def pending_command(agent: Agent) -> str | None:
        raw = await agent.client.read_optional(node(agent, "command"))
        return raw.decode() if raw is not None else None

    async def patched_setup(agent: Agent) -> None:
        await setup(agent)
        if fault == "crash-before-running":
            await crash("crashing before writing running")

    async def patched_command(agent: Agent) -> None:
        command = await pending_command(agent)
        if command is None:
            return
        if fault == f"crash-on-{command}":
            await crash(f"crashing on {command}")
        if fault == "silent":
            await agent.client.rm(node(agent, "command"))
            log.info("fault: ignoring %s", command)
            return
        if fault == "garbage-state":
            await agent.client.rm(node(agent, "command"))
            await agent.client.write(node(agent, "state"), b"\xff\x00 not a state")
            return
        if fault == "garbage-parameter" and command == "pci-ins":
            await agent.client.rm(node(agent, "command"))
            await agent.client.write(node(agent, "parameter"), b"0xZZ\x00")
            await agent.client.write(node(agent, "state"), b"pci-inserted")
            return
        if fault == "running-twice":
            await agent.client.rm(node(agent, "command"))
            await agent.client.write(node(agent, "state"), b"running")
            return
        if fault == "delete-nodes":
            await agent.client.rm(proto.dm_relative_path(agent.guest))
            return
        if fault == "flood":
            # Thousands of watch events on state (none an answer), then the answer.
            for _ in range(FLOOD):
                await agent.client.write(node(agent, "state"), b"running")
        await command_event(agent)

    async def patched_save(agent: Agent, dm: Any) -> None:
        if fault in ("crash-mid-save", "short-save", "corrupt-save"):
            await dm.pause()
            data = await dm.save_state()
            async with open_console(agent.client, proto.CONSOLE_SAVE) as con:
                if fault == "corrupt-save":
                    damaged = bytearray(data)
                    damaged[len(damaged) // 2] ^= 0xFF
                    await con.write(bytes(damaged))
                else:
                    await con.write(data[: len(data) // 2])
                if fault == "crash-mid-save":
                    await crash(f"crashing after {len(data) // 2} of {len(data)} bytes of state")
            agent.paused = True
            agent._unpaused.clear()
            await agent.client.write(node(agent, "state"), b"paused")
            return
        await save(agent, dm)
        if fault == "crash-after-save":
            await crash("crashing while paused")

    if fault in ("short-restore", "corrupt-restore"):
        _damage_console_2(fault)
    Agent.setup = patched_setup  # type: ignore[method-assign]
    Agent.command_event = patched_command  # type: ignore[method-assign]
    Agent._save = patched_save  # type: ignore[method-assign]


def _damage_console_2(fault: str) -> None:
    """What the agent reads from console 2 is cut after 100 bytes, or has byte 100
    flipped, as a damaged transport would deliver it."""
    import contextlib

    from stubdom import protocol as proto
    from stubdom.stubdomain import agent as agent_module

    real_open = agent_module.open_console

    class Damaged:
        def __init__(self, con: Any) -> None:
            self.con = con
            self.offset = 0

        async def read(self, n: int = 65536) -> bytes:
            if fault == "short-restore" and self.offset >= 100:
                return b""
            chunk = bytearray(await self.con.read(min(n, 100) if self.offset < 100 else n))
            if fault == "corrupt-restore" and self.offset <= 100 < self.offset + len(chunk):
                chunk[100 - self.offset] ^= 0xFF
            self.offset += len(chunk)
            return bytes(chunk)

    @contextlib.asynccontextmanager
    async def damaged_open(client: Any, index: int) -> Any:
        async with real_open(client, index) as con:
            yield Damaged(con) if index == proto.CONSOLE_RESTORE else con

    agent_module.open_console = damaged_open  # type: ignore[assignment]


def main() -> int:
    root, fault, *words = sys.argv[1:]
    sys.path.insert(0, os.path.join(root, "src"))
    sys.path.insert(0, root)
    if fault not in FAULTS:
        print(f"faulty_stub: unknown fault {fault!r}; one of {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    install(fault)
    from stubdom.stubdomain.main import main as agent_main

    return agent_main(words)


if __name__ == "__main__":
    sys.exit(main())
