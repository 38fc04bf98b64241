"""The xenstore proxy on a real daemon: requests pass unchanged, a state WRITE waits."""

from __future__ import annotations

import asyncio

from stubdom.minios.proxy import XenstoreProxy
from stubdom.protocol import dm_state_write_paths
from stubdom.xenstore import Client
from tests.support.daemons import Daemon, short_tmpdir

STUB, GUEST = 7, 5
RELATIVE, ABSOLUTE = dm_state_write_paths(STUB, GUEST)


async def test_a_state_write_reaches_xenstored_only_after_the_barrier(ours: Daemon) -> None:
    gate = asyncio.Event()
    proxy = XenstoreProxy(short_tmpdir("mproxy-") / "xs", ours.socket,
                          (RELATIVE, ABSOLUTE), gate.wait)
    await proxy.start()
    direct = await Client.connect(ours.socket)
    app = await Client.connect(str(proxy.path))
    try:
        await app.write("/a", "1")  # not held
        assert await direct.read("/a") == b"1"
        held = asyncio.create_task(app.write(ABSOLUTE, "paused"))
        after = asyncio.create_task(app.write("/b", "2"))  # behind it, in order
        # Round trips of another connection go on; the held write has not landed.
        for _ in range(5):
            assert await direct.read_optional(ABSOLUTE) is None
        assert await direct.read_optional("/b") is None
        assert not held.done()
        gate.set()
        await asyncio.gather(held, after)
        assert await direct.read(ABSOLUTE) == b"paused"
        assert await direct.read("/b") == b"2"
        # Watches work through it: events come back unchanged.
        async with app.watch("/c", "tok") as w:
            await w.get()  # the initial event
            await direct.write("/c", "x")
            assert (await w.get()).path == "/c"
    finally:
        await app.close()
        await direct.close()
        await proxy.close()
    assert not proxy.path.exists()
