"""The ring transport against the real cxenstored and oxenstored 4.17 (oracle kit shim).

Each test introduces a fresh guest from a dom0 socket client, gives it a home
(``/local/domain/<d>``, owned by it), and speaks as that guest over its ring page.
Timeouts here only guard against a hang; nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stubdom.xenstore import (
    Client,
    PermissionDenied,
    RingTransport,
    RingUnsupported,
    XenStoreTimeout,
)
from stubdom.xenstore.ring import FEATURE_RECONNECTION
from stubdom.xenstore.sync import SyncClient
from tests.support.daemons import Daemon, have_cx, have_ox, need_peer, start_cx, start_ox

pytestmark = pytest.mark.peer

GUARD = 20.0  # seconds: a failure guard, never a timing assumption
_domids = itertools.count(5)


@pytest.fixture(scope="module", params=["cx", "ox"])
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    kind = request.param
    need_peer(have_cx() if kind == "cx" else have_ox(), f"{kind}enstored 4.17 and gcc")
    d = start_cx() if kind == "cx" else start_ox()
    yield d
    d.stop()


@dataclass
class Guest:
    """Where a guest's ring is, once introduced."""

    domid: int
    page: Path
    evtchn: Path
    port: int
    notify: Path | None

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    async def connect(self, **kw: Any) -> Client:
        return await Client.connect_ring(
            self.page, self.evtchn, self.port, self.notify, timeout=GUARD, **kw
        )


@pytest.fixture
async def dom0(daemon: Daemon) -> AsyncIterator[Client]:
    c = await Client.connect(daemon.socket, timeout=GUARD)
    yield c
    await c.close()


async def introduce(dom0: Client, daemon: Daemon) -> Guest:
    """INTRODUCE a new domid and give it a home, as a toolstack does."""
    assert daemon.fake_dir is not None
    domid = next(_domids)
    await dom0.introduce(domid, 0, domid + 1)
    fake = daemon.fake_dir
    port = int((fake / f"port-{domid}").read_text())
    await dom0.mkdir(f"/local/domain/{domid}")
    await dom0.set_perms(f"/local/domain/{domid}", [f"n{domid}"])
    notify = fake / f"notify-{domid}"  # the shim's notification FIFO, where it has one
    return Guest(
        domid, fake / f"ring-{domid}", fake / "evtchn", port, notify if notify.exists() else None
    )


@pytest.fixture
async def guest(dom0: Client, daemon: Daemon) -> Guest:
    return await introduce(dom0, daemon)


@pytest.fixture
async def gc(guest: Guest) -> AsyncIterator[Client]:
    c = await guest.connect()
    yield c
    await c.close()


async def test_read_write_directory(gc: Client, guest: Guest, dom0: Client) -> None:
    await gc.write("data/a", b"1")
    await gc.write("data/b", "two")
    assert await gc.read("data/a") == b"1"
    assert sorted(await gc.directory("data")) == ["a", "b"]
    assert await dom0.read(f"{guest.home}/data/b") == b"two"
    assert (await gc.get_perms("data/a"))[0].domid == guest.domid
    await gc.rm("data/a")
    assert not await gc.exists("data/a")


async def test_values_larger_than_the_ring(gc: Client) -> None:
    """Requests and replies of ~2 KiB (the 4.17 guest value quota is 2048 bytes): each
    takes two ring-fulls, and their starts fall at ever other offsets of the ring."""
    for i in range(7):
        value = bytes((i + j) % 251 + 1 for j in range(2000 - 37 * i))
        await gc.write(f"data/big{i}", value)
        assert await gc.read(f"data/big{i}") == value


async def test_watch_event_from_a_dom0_write(gc: Client, guest: Guest, dom0: Client) -> None:
    await gc.mkdir("data")
    async with gc.watch("data") as w:
        first = await w.get(GUARD)
        assert first.path == "data"
        await dom0.write(f"{guest.home}/data/x", b"v")
        ev = await w.get(GUARD)
        while ev.path == "data":  # ox may repeat the initial event's path
            ev = await w.get(GUARD)
        assert ev.path == "data/x"


async def test_transaction(gc: Client, guest: Guest, dom0: Client) -> None:
    async with gc.transaction() as t:
        await t.write("data/t1", b"a")
        await t.write("data/t2", b"b")
        assert await t.read("data/t1") == b"a"
        assert await dom0.read_optional(f"{guest.home}/data/t1") is None
    assert await gc.read("data/t2") == b"b"


async def test_pipelined_requests(gc: Client) -> None:
    """Far more outstanding requests than the ring holds at once: backpressure on the
    request ring, many replies per ring-full, and each reply to its own request."""
    n = 60
    await asyncio.gather(*(gc.write(f"data/p{i}", f"value-{i}" * 20) for i in range(n)))
    got = await asyncio.gather(*(gc.read(f"data/p{i}") for i in range(n)))
    assert got == [f"value-{i}".encode() * 20 for i in range(n)]


async def test_a_timed_out_request_does_not_wedge_the_ring(gc: Client) -> None:
    await gc.write("data/x", b"still here")
    timed_out = 0
    for _ in range(10):
        try:
            await gc.read("data/x", timeout=0)  # expires at the first suspension
        except XenStoreTimeout:
            timed_out += 1
    assert timed_out > 0
    # The late replies are recognised and dropped; the stream stays in step.
    for i in range(10):
        await gc.write(f"data/y{i}", str(i))
        assert await gc.read(f"data/y{i}") == str(i).encode()


async def test_permission_denied_as_a_guest(gc: Client, dom0: Client) -> None:
    await dom0.write("/secret", b"s")
    await dom0.set_perms("/secret", ["n0"])
    with pytest.raises(PermissionDenied):
        await gc.read("/secret")
    with pytest.raises(PermissionDenied):
        await gc.write("/secret", b"mine")


async def test_sync_facade_over_the_ring(guest: Guest) -> None:
    def run() -> bytes | None:
        with SyncClient.connect_ring(guest.page, guest.evtchn, guest.port, guest.notify) as xs:
            xs.write("data/sync", b"ok")
            return xs.read_optional("data/sync")

    assert await asyncio.to_thread(run) == b"ok"


# -- ring reconnection ---------------------------------------------------------


async def test_reset_where_the_server_offers_it(guest: Guest, daemon: Daemon) -> None:
    """ox 4.17 advertises XENSTORE_SERVER_FEATURE_RECONNECTION and resets the ring on
    request; cx 4.17 advertises nothing (server_features 0) and ignores ``connection``,
    so asking it is refused locally rather than waiting for ever."""
    t = await RingTransport.open(guest.page, guest.evtchn, guest.port, guest.notify)
    supported = bool(t.server_features & FEATURE_RECONNECTION)
    assert supported == (daemon.kind == "ox")
    # Leave half a request on the ring: a header announcing 100 bytes, then 3 of them.
    t.write(bytes.fromhex("02000000" "07000000" "00000000" "64000000") + b"/lo")
    await t.drain()
    t.close()
    if not supported:
        with pytest.raises(RingUnsupported):
            await RingTransport.open(guest.page, guest.evtchn, guest.port, reset=True)
        return
    c = await guest.connect(reset=True)
    try:
        await c.write("data/after", b"reset")  # the half request is gone
        assert await c.read("data/after") == b"reset"
    finally:
        await c.close()


async def test_client_reconnects_a_failed_ring(guest: Guest, daemon: Daemon, dom0: Client) -> None:
    """A ring that fails (here: the transport is told so) is opened again.  On ox it is
    reset, so the client registers its watches again (each fires at once) and re-sends
    what had no reply.  cx cannot reset a ring: the ring is taken up as it is, which
    works between messages; its watches stay registered in cx (re-sent, they get
    EEXIST, which nobody awaits)."""
    c = await guest.connect(reconnect=GUARD)
    try:
        await c.mkdir("data")
        async with c.watch("data") as w:
            assert (await w.get(GUARD)).path == "data"
            old = c._transport
            assert isinstance(old, RingTransport)
            old._fail(OSError("simulated ring failure"))
            await c.write("data/y", b"2")  # waits for the new ring
            assert c._transport is not old
            await dom0.write(f"{guest.home}/data/z", b"1")
            paths = set()
            while "data/z" not in paths:
                paths.add((await w.get(GUARD)).path)
            if daemon.kind == "ox":
                assert "data" in paths  # the re-registered watch's initial event
        assert await c.read("data/z") == b"1"
        assert await c.read("data/y") == b"2"
    finally:
        await c.close()


def test_evtchn_byte_is_the_local_port(daemon: Daemon) -> None:
    """ox dispatches kicks on the byte: the port file holds the local port (10+)."""
    assert daemon.fake_dir is not None
    ports = [int(p.read_text()) for p in daemon.fake_dir.glob("port-*")]
    assert all(10 <= p < 256 for p in ports)
    assert os.path.exists(daemon.fake_dir / "evtchn")
