"""The agent's event path: the command taken in one round trip, and the event of its
own RM left unread (its console-0 log: test_consolelog.py)."""

from __future__ import annotations

import pytest

from stubdom import protocol as proto
from stubdom.devicemodel.sim import SimDeviceModel
from stubdom.stubdomain.agent import Agent
from stubdom.stubdomain.args import AgentOptions
from stubdom.wire.constants import Op
from stubdom.xenstore import Client
from tests.support.daemons import Daemon

GUEST = 7


def bare_agent(c: Client) -> Agent:
    """An agent for guest 7 on dom0's connection, not started (handlers called directly)."""
    agent = Agent(c, AgentOptions(), [], lambda o: SimDeviceModel())
    agent.guest = GUEST
    agent.dm = SimDeviceModel()
    return agent


@pytest.fixture(params=["ours", "cx"])
def daemon(request: pytest.FixtureRequest) -> Daemon:
    d: Daemon = request.getfixturevalue(request.param)
    return d


async def test_the_event_of_its_own_rm_is_not_read(daemon: Daemon) -> None:
    """[TIME-EVENTS]: the event the agent's own delete of ``command`` causes would find
    nothing; it is recognised by its place after the READ's reply and not read, while
    every later write of ``command`` is."""
    async with await Client.connect(daemon.socket) as c:
        agent = bare_agent(c)
        taken: list[tuple[str, str | None] | None] = []
        real_take = agent._take_command

        async def take() -> tuple[str, str | None] | None:
            got = await real_take()
            taken.append(got)
            return got

        agent._take_command = take  # type: ignore[method-assign]
        path = f"/local/domain/0/{proto.dm_relative_path(GUEST, 'command')}"

        async def serve_one() -> None:
            token, seq, epoch = await agent.events.get()
            await agent._event(token, seq, epoch)

        sink = agent._sink(proto.DM_COMMAND_TOKEN)
        async with c.watch(path, proto.DM_COMMAND_TOKEN, sink=sink):
            await serve_one()  # the watch's first event: nothing there
            assert taken == [None]
            await c.write(path, "continue")  # not paused: logged, nothing to do
            await serve_one()
            assert taken[-1] == ("continue", None)
            assert not await c.exists(path)
            await serve_one()  # the RM's own event
            assert len(taken) == 2
            await c.write(path, "continue")
            await serve_one()
            assert len(taken) == 3 and taken[-1] == ("continue", None)


async def test_a_command_is_read_removed_and_its_parameter_read_in_one_write(
    ours: Daemon,
) -> None:
    async with await Client.connect(ours.socket) as c:
        agent = bare_agent(c)
        batches: list[list[int]] = []
        real = c.roundtrips

        async def spy(requests: list[tuple[int, bytes, str | None]], **kw: object) -> object:
            batches.append([op for op, _, _ in requests])
            return await real(requests, **kw)  # type: ignore[arg-type]

        c.roundtrips = spy  # type: ignore[method-assign]
        assert await agent._take_command() is None  # nothing there: the RM changes nothing
        await c.write(f"/local/domain/0/{proto.dm_relative_path(GUEST, 'parameter')}", "p")
        await c.write(f"/local/domain/0/{proto.dm_relative_path(GUEST, 'command')}", "save")
        assert await agent._take_command() == ("save", "p")
        assert batches[0] == batches[-1] == [Op.READ, Op.RM, Op.READ]


def test_after_a_reconnection_no_event_is_taken_for_the_rm() -> None:
    agent = Agent(None, AgentOptions(), [], lambda o: SimDeviceModel())  # type: ignore[arg-type]
    agent._own_rm = (10, 0)
    assert not agent._own_rm_event(9, 0)  # before the READ's reply: read it
    assert agent._own_rm_event(11, 0)
    assert not agent._own_rm_event(12, 0)  # only one
    agent._own_rm = (10, 0)
    assert not agent._own_rm_event(11, 1)  # the connection was made again meanwhile
    assert agent._own_rm is None
