"""`stubdom.fdio.connect_unix`: a listener's full backlog is waited out, not mistaken
for a connection (cx and ox listen with a backlog of 1)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from stubdom.fdio import connect_unix
from tests.support.daemons import short_tmpdir


async def test_a_burst_beyond_the_backlog_connects_every_client() -> None:
    path = str(short_tmpdir("fdio-") / "sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        clients = [asyncio.create_task(connect_unix(path)) for _ in range(5)]
        await asyncio.sleep(0)  # all five try while nothing is accepted
        accepted = [(await loop.sock_accept(listener))[0] for _ in range(5)]
        socks = await asyncio.gather(*clients)
        for n, client in enumerate(socks):
            await loop.sock_sendall(client, b"%d" % n)
        got = {await loop.sock_recv(server, 16) for server in accepted}
        assert got == {b"%d" % n for n in range(5)}
        for s in (*socks, *accepted):
            s.close()
    finally:
        listener.close()


async def test_a_listener_that_never_accepts_is_a_timeout() -> None:
    path = str(short_tmpdir("fdio-") / "sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    try:
        held: list[socket.socket] = []
        with pytest.raises(TimeoutError, match=r"accepted no connection within 0\.1 s"):
            for _ in range(5):  # the kernel holds a connection or two in the backlog
                held.append(await connect_unix(path, timeout=0.1))
        assert held
        for s in held:
            s.close()
    finally:
        listener.close()


async def test_no_listener_is_refused_at_once() -> None:
    with pytest.raises(FileNotFoundError):
        await connect_unix(str(short_tmpdir("fdio-") / "none"))
