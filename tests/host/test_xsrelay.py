"""`DomainRelay` against our own xenstored: many clients as domain 5 on one connection."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.host.xsrelay import DomainRelay
from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, PacketDecoder, encode, join_args
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    NoEntry,
    PermissionDenied,
    StreamTransport,
    Transport,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import pipelined
from tests.support.daemons import SYSTEM_PYTHON, Daemon, need_peer
from tests.support.xsenv import XsEnv

D = 5
HOME = f"/local/domain/{D}"
QUIET = 0.3  # how long "no further event" is waited for


@dataclass
class RelayEnv:
    xs: XsEnv
    relay: DomainRelay
    upstreams: list[Transport]

    @property
    def path(self) -> str:
        return str(self.relay.path)

    async def client(self) -> Client:
        return await Client.connect(self.path, timeout=10.0)

    def domain_connections(self) -> int:
        return sum(1 for conn in self.xs.server.clients if conn.domid == D)

    async def quota(self) -> dict[str, int]:
        """Domain 5's watches and transactions, as dom0 sees them."""
        report = (await self.xs.dom0.control("quota", str(D))).decode()
        rows = (line.split(":") for line in report.splitlines()[1:] if ":" in line)
        return {k.strip(): int(v) for k, v in rows}


@pytest.fixture
async def env(xsenv: XsEnv) -> AsyncIterator[RelayEnv]:
    dom0 = xsenv.dom0
    await dom0.introduce(D, 0, 1)
    await dom0.mkdir(HOME)
    await dom0.set_perms(HOME, [f"n{D}"])
    await dom0.write("/secret", "dom0 only")
    upstreams: list[Transport] = []

    async def connect() -> Transport:
        transport = await StreamTransport.connect_unix(str(xsenv.server.domain_socket(D)))
        upstreams.append(transport)
        return transport

    relay = await DomainRelay.start(xsenv.run_dir / "relay-5", connect, f"domain {D}")
    yield RelayEnv(xsenv, relay, upstreams)
    await relay.close()


async def wait_for(check: object, what: str) -> None:
    """Poll ``check`` (an async callable returning bool) for up to 5 s."""
    assert callable(check)
    for _ in range(250):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_socket_is_private_and_one_upstream_connection(env: RelayEnv) -> None:
    assert stat.S_IMODE(os.stat(env.path).st_mode) == 0o600
    a, b = await env.client(), await env.client()
    try:
        await a.write(f"{HOME}/x", "1")
        assert await b.read(f"{HOME}/x") == b"1"
        assert len(env.upstreams) == 1
        assert env.domain_connections() == 1
    finally:
        await a.close()
        await b.close()


async def test_clients_act_as_the_domain(env: RelayEnv) -> None:
    a, b = await env.client(), await env.client()
    try:
        await a.write("data", "relative")  # relative to the domain's home
        assert await b.read(f"{HOME}/data") == b"relative"
        assert await b.get_domain_path(D) == HOME
        with pytest.raises(PermissionDenied):
            await a.read("/secret")
        with pytest.raises(PermissionDenied):
            await b.write("/secret", "no")
        # Only dom0 may introduce a domain: the daemon refuses, the relay only carries.
        with pytest.raises(PermissionDenied):
            await a.introduce(9, 0, 1)
        owner = (await env.xs.dom0.get_perms(f"{HOME}/data"))[0]
        assert owner.domid == D
    finally:
        await a.close()
        await b.close()


async def test_same_watch_same_token_events_once_each(env: RelayEnv) -> None:
    a, b = await env.client(), await env.client()
    path = f"{HOME}/w"
    try:
        async with a.watch(path, "tok") as wa, b.watch(path, "tok") as wb:
            for w in (wa, wb):  # the initial event, to the right client
                event = await w.get(5)
                assert (event.path, event.token) == (path, "tok")
            await env.xs.dom0.write(path, "v")
            for w in (wa, wb):
                assert (await w.get(5)).path == path
            for w in (wa, wb):
                with pytest.raises(XenStoreTimeout):
                    await w.get(QUIET)
            assert (await env.quota())["watches"] == 2
        assert (await env.quota())["watches"] == 0
    finally:
        await a.close()
        await b.close()


async def test_a_transaction_per_client(env: RelayEnv) -> None:
    a, b = await env.client(), await env.client()
    try:
        # Existing nodes: creating new ones in both would change HOME twice, a conflict.
        await a.write(f"{HOME}/ta", "")
        await a.write(f"{HOME}/tb", "")
        async with a.transaction() as ta, b.transaction() as tb:
            await ta.write(f"{HOME}/ta", "a")
            await tb.write(f"{HOME}/tb", "b")
            assert await b.read(f"{HOME}/ta") == b""
            # b cannot use a's transaction, as if it were another connection's.
            with pytest.raises(NoEntry):
                await b.bind(ta.tx_id).read(f"{HOME}/ta")
        assert await env.xs.dom0.read(f"{HOME}/ta") == b"a"
        assert await env.xs.dom0.read(f"{HOME}/tb") == b"b"
        assert (await env.quota())["transactions"] == 0
    finally:
        await a.close()
        await b.close()


async def test_disconnect_mid_transaction_cleans_up_only_its_client(env: RelayEnv) -> None:
    a, b = await env.client(), await env.client()
    path = f"{HOME}/shared"
    try:
        async with b.watch(path, "t") as wb:
            await wb.get(5)
            tx = await a.transaction_start()
            await a.bind(tx).write(f"{HOME}/uncommitted", "x")
            await a.watch(path, "t").start()
            tb = b.bind(await b.transaction_start())
            q = await env.quota()
            assert (q["transactions"], q["watches"]) == (2, 2)
            await a.close()

            async def cleaned() -> bool:
                q = await env.quota()
                return q["transactions"] == 1 and q["watches"] == 1

            await wait_for(cleaned, "a's transaction and watch to go")
            assert not await env.xs.dom0.exists(f"{HOME}/uncommitted")
            # b's transaction and watch are untouched.
            await tb.write(f"{HOME}/from-b", "b")
            await b.transaction_end(tb.tx_id, commit=True)
            assert await env.xs.dom0.read(f"{HOME}/from-b") == b"b"
            await env.xs.dom0.write(path, "again")
            assert (await wb.get(5)).path == path
            assert env.domain_connections() == 1
    finally:
        await a.close()
        await b.close()


async def test_pipelined_requests_from_both_clients(env: RelayEnv) -> None:
    a, b = await env.client(), await env.client()
    try:
        n = 50
        await pipelined(
            *(a.write(f"{HOME}/p/a{i}", str(i)) for i in range(n)),
            *(b.write(f"{HOME}/p/b{i}", str(-i)) for i in range(n)),
        )
        got = await asyncio.gather(
            pipelined(*(a.read(f"{HOME}/p/b{i}") for i in range(n))),
            pipelined(*(b.read(f"{HOME}/p/a{i}") for i in range(n))),
        )
        assert got[0] == tuple(str(-i).encode() for i in range(n))
        assert got[1] == tuple(str(i).encode() for i in range(n))
    finally:
        await a.close()
        await b.close()


async def raw(env: RelayEnv) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(env.path)


async def test_garbage_from_a_third_client(env: RelayEnv) -> None:
    a, b = await env.client(), await env.client()
    try:
        async with a.watch(f"{HOME}/g", "t") as wa:
            await wa.get(5)
            # A header announcing more than the limit: that client is disconnected.
            reader, writer = await raw(env)
            writer.write(struct.pack("=4I", Op.READ, 1, 0, 100000) + b"junk")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            # A transaction that is not its own, a malformed WATCH: errors, no harm.
            reader, writer = await raw(env)
            writer.write(encode(Packet(Op.READ, join_args(f"{HOME}/g"), 7, 12345)))
            writer.write(encode(Packet(Op.WATCH, b"no-token\0", 8)))
            writer.write(encode(Packet(Op.UNWATCH, join_args(f"{HOME}/g", "never"), 9)))
            writer.write(encode(Packet(Op.RESET_WATCHES, b"\0", 10)))
            writer.write(encode(Packet(99, b"what\0", 11)))  # a type 4.17 does not know
            replies = [await read_packet(reader) for _ in range(5)]
            assert [(p.op, p.payload, p.req_id) for p in replies] == [
                (Op.ERROR, b"ENOENT\0", 7),
                (Op.ERROR, b"EINVAL\0", 8),
                (Op.ERROR, b"ENOENT\0", 9),
                (Op.RESET_WATCHES, b"OK\0", 10),
                (Op.ERROR, b"ENOSYS\0", 11),
            ]
            writer.close()
            # Half a message, then gone.
            reader, writer = await raw(env)
            writer.write(encode(Packet(Op.WRITE, join_args(f"{HOME}/g") + b"v"))[:20])
            await writer.drain()
            writer.close()
            await b.write(f"{HOME}/g", "still fine")
            assert (await wa.get(5)).path == f"{HOME}/g"
            assert await a.read(f"{HOME}/g") == b"still fine"
            assert not await a.exists(f"{HOME}/g/v")
    finally:
        await a.close()
        await b.close()


async def read_packet(reader: asyncio.StreamReader) -> Packet:
    header = await asyncio.wait_for(reader.readexactly(16), 5)
    op, req_id, tx_id, length = struct.unpack("=4I", header)
    return Packet(op, await reader.readexactly(length), req_id, tx_id)


async def test_upstream_loss_disconnects_clients_and_the_next_reconnects(env: RelayEnv) -> None:
    a = await env.client()
    await a.write(f"{HOME}/x", "1")
    (conn,) = [c for c in env.xs.server.clients if c.domid == D]
    env.xs.server.clients[conn].close()
    with pytest.raises(ConnectionClosed):
        for _ in range(100):
            await a.read(f"{HOME}/x")
            await asyncio.sleep(0.02)
    await a.close()
    assert env.relay.upstream_losses == 1
    b = await env.client()
    try:
        assert await b.read(f"{HOME}/x") == b"1"
        assert len(env.upstreams) == 2
    finally:
        await b.close()


async def test_a_client_is_refused_while_upstream_is_unreachable(xsenv: XsEnv) -> None:
    attempts: list[str] = []

    async def connect() -> Transport:
        attempts.append("try")
        if len(attempts) > 1:
            raise ConnectionRefusedError("xenstore is down")
        return await StreamTransport.connect_unix(xsenv.socket)

    relay = await DomainRelay.start(xsenv.run_dir / "relay-0", connect, "dom0")
    try:
        async def accepted() -> bool:
            return len(xsenv.server.clients) == 2  # the dom0 fixture's and the relay's

        await wait_for(accepted, "the relay's connection")
        conn = list(xsenv.server.clients)[-1]  # the relay's, the newest
        xsenv.server.clients[conn].close()

        async def lost() -> bool:
            return relay.upstream_losses == 1

        await wait_for(lost, "the relay to see the loss")
        c = await Client.connect(str(relay.path), timeout=10.0)
        with pytest.raises(ConnectionClosed):
            await c.read("/")
        await c.close()
        assert relay.upstream_losses == 1
        assert len(attempts) == 2
    finally:
        await relay.close()


async def test_close_disconnects_clients_and_removes_the_socket(env: RelayEnv) -> None:
    a = await env.client()
    await a.write(f"{HOME}/x", "1")
    await env.relay.close()
    assert not Path(env.path).exists()
    with pytest.raises(ConnectionClosed):
        await a.read(f"{HOME}/x")
    await a.close()

    async def gone() -> bool:
        return env.domain_connections() == 0

    await wait_for(gone, "the upstream connection to close")


async def test_a_file_in_the_way_is_not_replaced(xsenv: XsEnv) -> None:
    path = xsenv.run_dir / "not-a-socket"
    path.write_text("keep me")

    async def never() -> Transport:
        raise AssertionError("not reached")

    with pytest.raises(FileExistsError):
        await DomainRelay.start(path, never, "in the way")
    assert path.read_text() == "keep me"


async def run_tool(env: RelayEnv, *argv: str) -> str:
    tool_env = dict(os.environ, XENSTORED_PATH=env.path)
    tool_env.pop("LD_PRELOAD", None)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=tool_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (argv, err)
    return out.decode()


async def test_xen_c_tools_through_the_relay(env: RelayEnv) -> None:
    need_peer(shutil.which("xenstore-read") is not None, "xenstore-utils (Debian)")
    await run_tool(env, "xenstore-write", f"{HOME}/tool/a", "one", f"{HOME}/tool/b", "two")
    assert await run_tool(env, "xenstore-read", f"{HOME}/tool/a") == "one\n"
    listing = await run_tool(env, "xenstore-ls", f"{HOME}/tool")
    assert 'a = "one"' in listing
    assert 'b = "two"' in listing
    assert await env.xs.dom0.read(f"{HOME}/tool/b") == b"two"


async def test_pyxs_through_the_relay(env: RelayEnv) -> None:
    script = (
        "import sys, pyxs\n"
        "with pyxs.Client(unix_socket_path=sys.argv[1]) as c:\n"
        "    c.write(sys.argv[2].encode(), b'from pyxs')\n"
        "    c.transaction()\n"
        "    c.write(sys.argv[2].encode() + b'-tx', b'in tx')\n"
        "    assert c.commit()\n"
        "    print(c.read(sys.argv[2].encode()).decode())\n"
    )
    has_pyxs = False
    if Path(SYSTEM_PYTHON).exists():
        probe = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, "-c", "import pyxs", stderr=asyncio.subprocess.DEVNULL
        )
        has_pyxs = await probe.wait() == 0
    need_peer(has_pyxs, "python3-pyxs")
    out = await run_tool(env, SYSTEM_PYTHON, "-c", script, env.path, f"{HOME}/pyxs")
    assert out == "from pyxs\n"
    assert await env.xs.dom0.read(f"{HOME}/pyxs-tx") == b"in tx"


# -- onto the real daemons -------------------------------------------------------------


class Recording(Transport):
    """An upstream transport that keeps every packet written and read, so a test can
    see the clean-up the relay sends and what the daemon answered."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.description = f"recording {inner.description}"
        self.sent: list[Packet] = []
        self.received: list[Packet] = []
        self._decoder = PacketDecoder()

    def write(self, message: bytes) -> None:
        self.sent.append(next(iter(_decode(message))))
        self.inner.write(message)

    async def drain(self) -> None:
        await self.inner.drain()

    async def read(self) -> bytes:
        raise NotImplementedError  # the relay uses run

    async def run(self, sink: Callable[[bytes], None]) -> None:
        def record(data: bytes) -> None:
            self._decoder.feed(data)
            self.received.extend(self._decoder)
            sink(data)

        await self.inner.run(record)

    def close(self) -> None:
        self.inner.close()

    def answer_to(self, request: Packet) -> Packet:
        (reply,) = [p for p in self.received if p.req_id == request.req_id]
        return reply


def _decode(message: bytes) -> list[Packet]:
    decoder = PacketDecoder()
    decoder.feed(message)
    return list(decoder)


@pytest.mark.peer
@pytest.mark.parametrize("kind", ["cx", "ox"])
async def test_onto_a_real_daemons_connection(kind: str, request: pytest.FixtureRequest) -> None:
    """The mux's rules against cx/ox's own replies (a dom0 connection: rings are the
    ring transport's), the clean-up included: the daemon answers it OK."""
    daemon: Daemon = request.getfixturevalue(kind)
    recordings: list[Recording] = []

    async def connect() -> Transport:
        recordings.append(Recording(await StreamTransport.connect_unix(daemon.socket)))
        return recordings[-1]

    relay = await DomainRelay.start(daemon.run_dir / "relay", connect, f"{kind} dom0")
    try:
        a = await Client.connect(str(relay.path), timeout=10.0)
        b = await Client.connect(str(relay.path), timeout=10.0)
        await b.write("/relay/w", "0")
        async with b.watch("/relay/w", "tok") as wb:
            wa = await a.watch("/relay/w", "tok").start()
            for w in (wa, wb):
                assert (await w.get(5)).token == "tok"
            tx = await a.transaction_start()
            await a.bind(tx).write("/relay/uncommitted", "x")
            await b.write("/relay/w", "1")
            for w in (wa, wb):
                assert (await w.get(5)).path == "/relay/w"
                with pytest.raises(XenStoreTimeout):
                    await w.get(QUIET)
            await a.close()
            rec = recordings[0]

            def cleanup() -> list[Packet]:
                return [
                    p
                    for p in rec.sent
                    if (p.op == Op.TRANSACTION_END and p.tx_id == tx)
                    or (p.op == Op.UNWATCH and p.payload.startswith(b"/relay/w\0"))
                ]

            async def answered() -> bool:
                ids = {p.req_id for p in rec.received}
                return len(cleanup()) == 2 and all(p.req_id in ids for p in cleanup())

            await wait_for(answered, "the clean-up to be answered")
            assert [rec.answer_to(p).payload for p in cleanup()] == [b"OK\0", b"OK\0"]
            assert not await b.exists("/relay/uncommitted")
            await b.write("/relay/w", "2")
            assert (await wb.get(5)).path == "/relay/w"
        await b.close()
        assert len(recordings) == 1
    finally:
        await relay.close()
