"""Consoles of a simulated domain: libxl's nodes, dom0's backend, the domain's frontend.

Everything runs against an in-process xenstored; the frontend speaks through domain 5's
own connection, so it is unprivileged exactly as a domain is.  Nothing waits on time:
progress is observed through watches, and timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.host.backends.console import (
    ConsoleBackend,
    console_backend_path,
    console_frontend_path,
    console_socket_path,
)
from stubdom.host.frontend.console import ConsoleError, SyncConsole, open_console
from stubdom.host.xenbus import XENCONSOLE_LIMIT, XenbusState
from stubdom.toolstack.devices import DeviceExists, add_console, remove_console
from stubdom.wire import Op
from stubdom.xenstore import Client, NoEntry, PermissionDenied
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir

D = 5
GUARD = 30.0  # failure guard only


@dataclass
class Env:
    server: XenStoreServer
    toolstack: Client  # dom0, as libxl
    backend: ConsoleBackend  # dom0, as the pvqemu (its own connection)
    dom: Client  # domain 5's own connection
    run_dir: Path
    files: Path


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    run_dir = short_tmpdir("con-")
    server = XenStoreServer(run_dir / "xs")
    await server.start()
    toolstack = await Client.connect(str(server.socket_path))
    await toolstack.introduce(D, 0, 15)
    await toolstack.mkdir(f"/local/domain/{D}")
    await toolstack.set_perms(f"/local/domain/{D}", ["n0", f"r{D}"])
    backend_client = await Client.connect(str(server.socket_path))
    backend = ConsoleBackend(backend_client, run_dir)
    await backend.start()
    dom = await Client.connect(str(server.domain_socket(D)))
    files = run_dir / "files"
    files.mkdir()
    try:
        yield Env(server, toolstack, backend, dom, run_dir, files)
    finally:
        await dom.close()
        await backend.stop()
        await backend_client.close()
        await toolstack.close()
        await server.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def wait_node(client: Client, path: str, ok: object) -> bytes:
    """Wait (by watch) until ``ok(value)`` holds for the node; the value."""
    assert callable(ok)
    async with asyncio.timeout(GUARD), client.watch(path) as w:
        while True:
            try:
                value: bytes | None = await client.read(path)
            except NoEntry:
                value = None
            if ok(value):
                return value or b""
            await w.get()


async def wait_state(client: Client, path: str, *states: XenbusState) -> None:
    await wait_node(client, f"{path}/state", lambda v: XenbusState.parse(v) in states)


async def gone(client: Client, path: str) -> bool:
    return not await client.exists(path)


def recorded(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """(op, payload) of every request ``client`` sends from now on."""
    sent: list[tuple[int, bytes]] = []
    roundtrips = client.roundtrips

    async def counted(requests: list[tuple[int, bytes, str | None]], **kw: object) -> object:
        sent.extend((op, payload) for op, payload, _ in requests)
        return await roundtrips(requests, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "roundtrips", counted)
    return sent


def perms(ps: list[object]) -> list[str]:
    return [str(p) for p in ps]


# -- the nodes libxl writes ------------------------------------------------------------


async def test_nodes_and_permissions_as_libxl_writes_them(env: Env) -> None:
    ts = env.toolstack
    log = env.files / "qemu-dm-guest.log"
    await add_console(ts, D, 0, f"file:{log}", name="c0")
    await add_console(ts, D, 1, f"file:{env.files / 'qemu-save.6'}")
    await add_console(ts, D, 2, None)  # not restoring: no output node

    fe0, be0 = console_frontend_path(D, 0), console_backend_path(D, 0)
    assert fe0 == f"/local/domain/{D}/console"
    assert be0 == f"/local/domain/0/backend/console/{D}/0"
    ro, rw = ["n0", f"r{D}"], [f"n{D}", "r0"]
    assert perms(await ts.get_perms(fe0)) == ro
    assert perms(await ts.get_perms(be0)) == ro
    assert await ts.read(f"{fe0}/backend") == be0.encode()
    assert perms(await ts.get_perms(f"{fe0}/backend")) == ro
    assert await ts.read(f"{fe0}/backend-id") == b"0"
    assert perms(await ts.get_perms(f"{fe0}/backend-id")) == rw
    expected0 = {
        "name": b"c0",
        "limit": str(XENCONSOLE_LIMIT).encode(),
        "type": b"ioemu",
        "output": f"file:{log}".encode(),
        "port": b"0",
        "ring-ref": b"0",
    }
    for key, value in expected0.items():
        assert await ts.read(f"{fe0}/{key}") == value, key
        assert perms(await ts.get_perms(f"{fe0}/{key}")) == ro, key
    assert perms(await ts.get_perms(f"{fe0}/tty")) == ro
    assert not await ts.exists(f"{fe0}/state")  # console 0 has no xenbus frontend state
    assert await ts.read(f"{be0}/frontend") == fe0.encode()
    assert await ts.read(f"{be0}/frontend-id") == str(D).encode()
    assert await ts.read(f"{be0}/online") == b"1"
    assert await ts.read(f"{be0}/protocol") == b"vt100"
    assert await ts.read(f"{be0}/name") == b"c0"

    fe1, be1 = console_frontend_path(D, 1), console_backend_path(D, 1)
    assert fe1 == f"/local/domain/{D}/device/console/1"
    assert perms(await ts.get_perms(fe1)) == rw
    assert perms(await ts.get_perms(f"{fe1}/backend")) == rw
    for key in ("state", "protocol", "backend-id"):
        assert perms(await ts.get_perms(f"{fe1}/{key}")) == rw, key
    for key in ("limit", "type", "output", "tty"):
        assert perms(await ts.get_perms(f"{fe1}/{key}")) == ro, key
    assert await ts.read(f"{fe1}/protocol") == b"vt100"
    assert not await ts.exists(f"{fe1}/port")
    assert not await ts.exists(f"{console_frontend_path(D, 2)}/output")

    # The backend publishes its socket and moves to InitWait.
    for n in (0, 1, 2):
        be = console_backend_path(D, n)
        await wait_state(ts, be, XenbusState.INIT_WAIT)
        sock = console_socket_path(env.run_dir, D, n)
        assert await ts.read(f"{be}/socket") == str(sock).encode()
        assert sock.is_socket()
    # Console 2 fell back to pty: the slave's path is in its frontend tty node.
    tty_path = await ts.read(f"{console_frontend_path(D, 2)}/tty")
    assert tty_path.startswith(b"/dev/pts/")

    # What the domain may and may not do.
    dom = env.dom
    assert await dom.read("console/output") == f"file:{log}".encode()
    assert await dom.read(f"{be1}/socket")  # the backend directory is readable
    for path in ("console/output", "console/state", "device/console/1/output"):
        with pytest.raises(PermissionDenied):
            await dom.write(path, "x")
    with pytest.raises(PermissionDenied):
        await dom.write(f"{be1}/state", "4")
    await dom.write("device/console/1/state", XenbusState.INITIALISING.node())


# -- file ------------------------------------------------------------------------------


async def test_file_console_is_durable_when_close_returns(env: Env) -> None:
    path = env.files / "qemu-save.6"
    await add_console(env.toolstack, D, 1, f"file:{path}")
    payload = os.urandom(4 * 1024 * 1024 + 123)
    async with open_console(env.dom, 1) as con:
        assert con.socket_path == str(console_socket_path(env.run_dir, D, 1))
        assert await env.dom.read("device/console/1/state") == XenbusState.CONNECTED.node()
        assert await env.toolstack.read(f"{console_backend_path(D, 1)}/state") == b"4"
        for i in range(0, len(payload), 100_000):
            await con.write(payload[i : i + 100_000])
    # No waiting: close returned, so every byte must already be in the file.
    assert path.read_bytes() == payload
    assert await env.dom.read("device/console/1/state") == XenbusState.CLOSED.node()
    assert await env.toolstack.read(f"{console_backend_path(D, 1)}/state") == b"6"


async def test_one_watch_and_one_write_per_state_for_an_open_and_close(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frontend's cost on the save path: a single watch on the backend for the
    console's whole life (open, the removal monitor, close), and each state it moves
    to written once, in the handshake's order."""
    await add_console(env.toolstack, D, 1, f"file:{env.files / 'save'}")
    sent = recorded(env.dom, monkeypatch)
    async with open_console(env.dom, 1) as con:
        await con.write(b"state")
    ops = [op for op, _ in sent]
    assert ops.count(Op.WATCH) == 1 and ops.count(Op.UNWATCH) == 1
    node = b"device/console/1/state\0"
    states = [p.removeprefix(node) for op, p in sent if op == Op.WRITE and p.startswith(node)]
    # libxl wrote Initialising; Connected comes without Initialised, as Mini-OS's.
    assert states == [b"4", b"5", b"6"]
    assert (env.files / "save").read_bytes() == b"state"


async def test_the_backend_opens_a_transaction_only_to_write_its_state(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most of the backend's wake-ups are its own state writes coming back: those are
    settled by one batch of plain reads, and a transaction is opened only for a step
    that moves the state."""
    await add_console(env.toolstack, D, 1, f"file:{env.files / 'save'}")
    be = console_backend_path(D, 1)
    await wait_state(env.toolstack, be, XenbusState.INIT_WAIT)
    sent = recorded(env.backend.client, monkeypatch)
    for _ in range(2):
        async with open_console(env.dom, 1) as con:
            await con.write(b"state")
    await wait_state(env.toolstack, be, XenbusState.CLOSED)
    node = f"{be}/state\0".encode()
    writes = [p.removeprefix(node) for op, p in sent if op == Op.WRITE and p.startswith(node)]
    assert writes == [b"4", b"5", b"6", b"2", b"4", b"5", b"6"]
    assert sum(op == Op.TRANSACTION_START for op, _ in sent) == len(writes)


async def test_file_truncated_at_init_then_appended_across_reconnects(env: Env) -> None:
    path = env.files / "log"
    path.write_bytes(b"stale contents of an earlier run\n")
    await add_console(env.toolstack, D, 1, f"file:{path}")
    await wait_state(env.toolstack, console_backend_path(D, 1), XenbusState.INIT_WAIT)
    assert path.read_bytes() == b""
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    for part in (b"first\n", b"second\n", b"third\n"):
        async with open_console(env.dom, 1) as con:
            await con.write(part)
    assert path.read_bytes() == b"first\nsecond\nthird\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_console_zero_reconnects_without_a_state_node(env: Env) -> None:
    path = env.files / "qemu-dm-guest.log"
    await add_console(env.toolstack, D, 0, f"file:{path}")
    async with open_console(env.dom, 0) as con:
        await con.write(b"Mini-OS booting\n")
    assert await env.toolstack.read(f"{console_backend_path(D, 0)}/state") == b"4"
    async with open_console(env.dom, 0) as con:
        await con.write(b"qemu: starting\n")
    assert path.read_bytes() == b"Mini-OS booting\nqemu: starting\n"
    assert not await env.toolstack.exists(f"{console_frontend_path(D, 0)}/state")


# -- pipe ------------------------------------------------------------------------------


async def test_pipe_console_streams_a_fifo_then_eof(env: Env) -> None:
    fifo = env.files / "qemu-resume.6"
    os.mkfifo(fifo)
    await add_console(env.toolstack, D, 2, f"pipe:{fifo}")
    stream = os.urandom(3 * 1024 * 1024)

    def feed() -> None:  # the restore side: blocks until the backend has the FIFO open
        with open(fifo, "wb") as f:
            f.write(stream)

    feeder = asyncio.create_task(asyncio.to_thread(feed))
    async with open_console(env.dom, 2) as con:
        got = await con.readexactly(len(stream))
        assert await con.read() == b""  # EOF after the stream
        await con.write(b"ignored")  # what the domain writes is discarded
    await asyncio.wait_for(feeder, GUARD)
    assert got == stream


async def test_pipe_console_streams_a_regular_file(env: Env) -> None:
    saved = env.files / "qemu-resume.6"
    stream = b"QEVM" + os.urandom(200_000)
    saved.write_bytes(stream)
    await add_console(env.toolstack, D, 2, f"pipe:{saved}")
    async with open_console(env.dom, 2) as con:
        chunks = []
        while data := await con.read():
            chunks.append(data)
    assert b"".join(chunks) == stream
    assert saved.read_bytes() == stream  # only read


async def test_pipe_close_before_the_end_of_the_stream(env: Env) -> None:
    saved = env.files / "big"
    saved.write_bytes(os.urandom(8 * 1024 * 1024))
    await add_console(env.toolstack, D, 2, f"pipe:{saved}")
    async with open_console(env.dom, 2) as con:
        assert len(await con.readexactly(10)) == 10
    await wait_state(env.toolstack, console_backend_path(D, 2), XenbusState.CLOSED)


# -- pty -------------------------------------------------------------------------------


async def read_fd(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from a non-blocking fd, waiting by the event loop."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        async with asyncio.timeout(GUARD):
            while len(buf) < n:
                await readable.wait()
                readable.clear()
                with contextlib.suppress(BlockingIOError):
                    buf += os.read(fd, n - len(buf))
    finally:
        loop.remove_reader(fd)
    return bytes(buf)


async def test_pty_console_both_ways(env: Env) -> None:
    await add_console(env.toolstack, D, 3, "pty")
    async with open_console(env.dom, 3) as con:
        tty_path = (await env.dom.read("device/console/3/tty")).decode()
        assert tty_path.startswith("/dev/pts/")
        fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(fd, b"from the user\r\n\x03")  # raw: no line discipline in the way
            assert await con.readexactly(16) == b"from the user\r\n\x03"
            await con.write(b"guest serial output\n")
            assert await read_fd(fd, 20) == b"guest serial output\n"
        finally:
            os.close(fd)


# -- several consoles ------------------------------------------------------------------


async def test_four_consoles_of_one_domain_at_once(env: Env) -> None:
    log, save, resume = env.files / "log", env.files / "save", env.files / "resume"
    resume.write_bytes(b"saved device state")
    ts = env.toolstack
    await add_console(ts, D, 0, f"file:{log}")
    await add_console(ts, D, 1, f"file:{save}")
    await add_console(ts, D, 2, f"pipe:{resume}")
    await add_console(ts, D, 3, "pty")
    # A second domain's console alongside.
    await ts.introduce(6, 0, 16)
    await ts.mkdir("/local/domain/6")
    await ts.set_perms("/local/domain/6", ["n0", "r6"])
    await add_console(ts, 6, 0, f"file:{env.files / 'log6'}")
    other = await Client.connect(str(env.server.domain_socket(6)))
    try:
        async with (
            open_console(env.dom, 0) as c0,
            open_console(env.dom, 1) as c1,
            open_console(env.dom, 2) as c2,
            open_console(env.dom, 3) as c3,
            open_console(other, 0) as o0,
        ):
            assert {c.socket_path for c in (c0, c1, c2, c3)} == {
                str(console_socket_path(env.run_dir, D, n)) for n in range(4)
            }
            await c0.write(b"log line\n")
            await o0.write(b"domain 6\n")
            await c1.write(await c2.readexactly(18))
            tty_path = (await env.dom.read("device/console/3/tty")).decode()
            fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                await c3.write(b"serial")
                assert await read_fd(fd, 6) == b"serial"
            finally:
                os.close(fd)
    finally:
        await other.close()
    assert log.read_bytes() == b"log line\n"
    assert save.read_bytes() == b"saved device state"
    assert (env.files / "log6").read_bytes() == b"domain 6\n"
    assert set(env.backend.devices) == {(D, 0), (D, 1), (D, 2), (D, 3), (6, 0)}


# -- removal and failures --------------------------------------------------------------


def _no_forced_removal(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if "forcing removal" in r.getMessage()]


async def test_removal_while_connected_goes_through_closing_to_closed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = env.files / "save"
    await add_console(env.toolstack, D, 1, f"file:{path}")
    await add_console(env.toolstack, D, 0, f"file:{env.files / 'log'}")
    sock = console_socket_path(env.run_dir, D, 1)
    async with open_console(env.dom, 1) as con:
        device = env.backend.devices[(D, 1)]
        await con.write(b"written before removal")
        be = console_backend_path(D, 1)
        states: list[bytes] = []
        async with env.toolstack.watch(f"{be}/state") as w:
            remover = asyncio.create_task(remove_console(env.toolstack, D, 1))
            # The frontend follows the backend to Closed; its pending read sees EOF.
            assert await asyncio.wait_for(con.read(), GUARD) == b""
            while not remover.done() or w.pending:
                ev = await w.get(timeout=GUARD)
                with contextlib.suppress(NoEntry):
                    states.append(await env.toolstack.read(ev.path))
                if remover.done() and not w.pending:
                    break
            await remover
        assert con.closed
    _no_forced_removal(caplog)
    assert path.read_bytes() == b"written before removal"
    assert await gone(env.toolstack, be)
    assert await gone(env.toolstack, console_frontend_path(D, 1))
    assert await gone(env.toolstack, f"/local/domain/{D}/device/console")
    assert not sock.exists()
    await asyncio.wait_for(device.task, GUARD)  # it ends once it sees its directory gone
    assert (D, 1) not in env.backend.devices
    assert b"6" in states
    # The other console of the domain is untouched.
    assert console_socket_path(env.run_dir, D, 0).is_socket()


async def test_removal_of_console_zero_while_connected(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    path = env.files / "log"
    await add_console(env.toolstack, D, 0, f"file:{path}")
    async with open_console(env.dom, 0) as con:
        await con.write(b"last words\n")
        await remove_console(env.toolstack, D, 0)
        assert con.closed
    _no_forced_removal(caplog)
    assert path.read_bytes() == b"last words\n"
    assert await gone(env.toolstack, console_backend_path(D, 0))
    assert await gone(env.toolstack, f"/local/domain/0/backend/console/{D}")
    assert not console_socket_path(env.run_dir, D, 0).exists()
    assert not console_socket_path(env.run_dir, D, 0).parent.exists()


async def test_removal_of_a_console_never_connected(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await add_console(env.toolstack, D, 3, "pty")
    await add_console(env.toolstack, D, 0, "pty")
    for n in (3, 0):
        await wait_state(env.toolstack, console_backend_path(D, n), XenbusState.INIT_WAIT)
    for n in (3, 0):
        await remove_console(env.toolstack, D, n)
        assert await gone(env.toolstack, console_backend_path(D, n))
        assert await gone(env.toolstack, console_frontend_path(D, n))
        assert not console_socket_path(env.run_dir, D, n).exists()
    _no_forced_removal(caplog)


async def test_forced_removal_and_domain_disappearing(env: Env) -> None:
    await add_console(env.toolstack, D, 1, f"file:{env.files / 'save'}")
    await add_console(env.toolstack, D, 2, "pty")
    async with open_console(env.dom, 1) as con:
        devices = list(env.backend.devices.values())
        assert len(devices) == 2
        await con.write(b"x")
        # libxl's destroy: force-remove the devices, then the whole domain tree.
        await remove_console(env.toolstack, D, 2, force=True)
        await env.toolstack.rm(f"/local/domain/{D}")
        await env.toolstack.rm(console_backend_path(D, 1))
        assert await asyncio.wait_for(con.read(), GUARD) == b""
    # Each device ends once it sees its directory gone, tearing its data path down.
    await asyncio.wait_for(asyncio.gather(*(d.task for d in devices)), GUARD)
    assert not env.backend.devices
    for n in (1, 2):
        assert not console_socket_path(env.run_dir, D, n).exists()
    assert (env.files / "save").read_bytes() == b"x"


async def test_bad_output_spec_fails_that_console_only(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await add_console(env.toolstack, D, 3, "tcp:127.0.0.1:4555")
    await add_console(env.toolstack, D, 4, f"file:{env.files / 'no-such-dir' / 'x'}")
    await add_console(env.toolstack, D, 1, f"file:{env.files / 'save'}")
    for n in (3, 4):
        be = console_backend_path(D, n)
        await wait_state(env.toolstack, be, XenbusState.CLOSED)
        assert await env.toolstack.read(f"{be}/error")
        with pytest.raises(ConsoleError, match="backend failed"):
            async with open_console(env.dom, n):
                pass
    assert "unsupported console output 'tcp:127.0.0.1:4555'" in caplog.text
    async with open_console(env.dom, 1) as con:
        await con.write(b"still fine")
    assert (env.files / "save").read_bytes() == b"still fine"
    await remove_console(env.toolstack, D, 3)
    assert await gone(env.toolstack, console_backend_path(D, 3))
    _no_forced_removal(caplog)


async def test_missing_console(env: Env) -> None:
    with pytest.raises(ConsoleError, match="no frontend directory"):
        async with open_console(env.dom, 7):
            pass


async def test_sync_console_in_a_thread(env: Env) -> None:
    save = env.files / "save"
    await add_console(env.toolstack, D, 1, f"file:{save}")
    sock = str(env.server.domain_socket(D))

    def domain() -> None:
        with SyncConsole(1, xenstored_path=sock) as con:
            con.write(b"sync " * 100_000)

    await asyncio.wait_for(asyncio.to_thread(domain), GUARD)
    assert save.read_bytes() == b"sync " * 100_000


# -- a real domain process -------------------------------------------------------------

DOMAIN_PROGRAM = textwrap.dedent(
    """
    from stubdom.host.frontend.console import SyncConsole

    with SyncConsole(0) as log:
        log.write(b"stubdom: device model up\\n")
    with SyncConsole(2) as restore:
        chunks = []
        while data := restore.read():
            chunks.append(data)
    with SyncConsole(1) as save:
        save.write(b"".join(chunks))
    """
)


async def test_a_domain_process_uses_its_consoles_like_the_stubdomain(env: Env) -> None:
    log, save, resume = env.files / "qemu-dm.log", env.files / "save", env.files / "resume"
    os.mkfifo(resume)
    await add_console(env.toolstack, D, 0, f"file:{log}")
    await add_console(env.toolstack, D, 1, f"file:{save}")
    await add_console(env.toolstack, D, 2, f"pipe:{resume}")
    stream = b"QEVM\x00\x00\x00\x03" + os.urandom(1_000_000)

    def feed() -> None:
        with open(resume, "wb") as f:
            f.write(stream)

    feeder = asyncio.create_task(asyncio.to_thread(feed))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DOMAIN_PROGRAM,
        env={**os.environ, "XENSTORED_PATH": str(env.server.domain_socket(D))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), GUARD * 2)
    assert proc.returncode == 0, err.decode()
    await asyncio.wait_for(feeder, GUARD)
    assert log.read_bytes() == b"stubdom: device model up\n"
    assert save.read_bytes() == stream


async def test_re_adding_a_console_restarts_its_backend(env: Env) -> None:
    first, second = env.files / "first", env.files / "second"
    be = console_backend_path(D, 1)
    await add_console(env.toolstack, D, 1, f"file:{first}")
    await wait_state(env.toolstack, be, XenbusState.INIT_WAIT)
    with pytest.raises(DeviceExists):  # libxl refuses a device that is already there
        await add_console(env.toolstack, D, 1, f"file:{second}")
    await remove_console(env.toolstack, D, 1, force=True)
    await add_console(env.toolstack, D, 1, f"file:{second}")
    await wait_node(env.toolstack, f"{be}/socket", bool)
    async with open_console(env.dom, 1) as con:
        await con.write(b"to the new file")
    assert second.read_bytes() == b"to the new file"
    assert first.read_bytes() == b""
