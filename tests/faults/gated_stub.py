"""A stubdomain kernel: the real agent (``stubdom-dm``) that stops at named gates.

    gated_stub.py ROOT GATES [agent words...]

GATES is a comma-separated list of ``running`` (after the setup, before ``running`` is
written) and command names (``pci-ins``, ``save``, ...: the command is received, its
``command`` node still present, nothing answered).  At a gate the stub writes the gate's
name to its own ``data/held`` node, so a test sees exactly where it stands, then waits
until dom0 writes its ``data/release`` node; from then on no gate holds.  While held
the agent serves nothing else (it serves one event at a time), so a toolstack talking
to it is deterministically in the middle of its exchange.
"""

from __future__ import annotations

import os
import sys

HELD = "data/held"
RELEASE = "data/release"


def install(gates: frozenset[str]) -> None:
    from stubdom import protocol as proto
    from stubdom.stubdomain.agent import Agent

    setup = Agent.setup
    command_event = Agent.command_event

    async def gate(agent: Agent, name: str) -> None:
        if name not in gates or await agent.client.exists(RELEASE):
            return
        async with agent.client.watch(RELEASE) as w:
            await agent.client.write(HELD, name)
            while not await agent.client.exists(RELEASE):
                await w.get()

    async def gated_setup(agent: Agent) -> None:
        await setup(agent)
        await gate(agent, "running")

    async def gated_command(agent: Agent) -> None:
        raw = await agent.client.read_optional(proto.dm_relative_path(agent.guest, "command"))
        if raw is None:
            # Nothing to take.  Going on to the agent's own read here would race: a
            # command written between the two reads would be taken past its gate.  Its
            # write fires an event after this read, and that event is gated.
            return
        await gate(agent, raw.decode())
        await command_event(agent)

    Agent.setup = gated_setup  # type: ignore[method-assign]
    Agent.command_event = gated_command  # type: ignore[method-assign]


def main() -> int:
    root, gates, *words = sys.argv[1:]
    sys.path.insert(0, os.path.join(root, "src"))
    sys.path.insert(0, root)
    install(frozenset(g for g in gates.split(",") if g))
    from stubdom.stubdomain.main import main as agent_main

    return agent_main(words)


if __name__ == "__main__":
    sys.exit(main())
