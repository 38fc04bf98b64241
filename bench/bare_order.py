"""Our channel's own order with bare clients (issue #16, part 3), for bench/pci_ins.py.

The requests our toolstack (`DeviceModelChannel`) and our agent make per exchange,
batched as they batch them, and nothing else: no lock, no check, no decision.  Their
cost is what any program in our order pays on the daemon, so the room a target leaves
above it is what our logic may spend.  Two kinds of bare client:

- blocking sockets (this process and a child), as the floor's own clients;
- asyncio (the loop our processes run, uvloop's where installed) with a protocol that
  frames packets and completes one future per reply: the floor of any asyncio program,
  which our toolstack and agent are.

The order, with the device model's state known to the toolstack (its kept watches):

    toolstack  [WRITE note, WRITE parameter] (pci-ins), [WRITE command]
    dm         event command -> [READ command, RM command, READ parameter]
               -> [WRITE parameter, WRITE state] (pci-ins) or [WRITE state]
    toolstack  event state -> [READ state, READ parameter]; pci-ins: [WRITE state running]
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bench.rawxs import HDR
from stubdom.wire.constants import Op

#: Message types by name, and ``EVENT`` for a watch event (bench/pci_ins.py uses it too).
OPS = {op.name: int(op) for op in Op} | {"EVENT": int(Op.WATCH_EVENT)}
#: The toolstack's note of the command it sent (`stubdom.protocol.dm_last_sent_path`).
NOTE = "/libxl/1/dm-last-sent"


class Blocking(Protocol):
    """What is used of bench/pci_ins.py's ``Raw``: a blocking client keeping events."""

    events: collections.deque[str]

    def rpc(self, op: str, *args: str, tx: int = 0) -> bytes: ...
    def event(self) -> str: ...
    def sendall(self, data: bytes) -> None: ...
    def replies(self, n: int) -> list[tuple[int, bytes]]: ...


def packet(op: str, *args: str, value: str | None = None) -> bytes:
    body = b"".join(a.encode() + b"\0" for a in args)
    if value is not None:
        body += value.encode()
    return HDR.pack(OPS[op], 0, 0, len(body)) + body


def take_command(d: str) -> bytes:
    """The agent's one round trip on a command event (`Agent._take_command`)."""
    return (packet("READ", f"{d}/command") + packet("RM", f"{d}/command")
            + packet("READ", f"{d}/parameter"))


def answer(d: str, writes: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(packet("WRITE", f"{d}/{n}", value=v) for n, v in writes)


def look(d: str) -> bytes:
    """The toolstack's look after an event (`DeviceModelChannel._look`)."""
    return packet("READ", f"{d}/state") + packet("READ", f"{d}/parameter")


def first(kind: str, param: str, d: str) -> bytes | None:
    """The note and the parameter, before the command (pci-ins only)."""
    if kind != "pci-ins":
        return None
    return (packet("WRITE", NOTE, value=f"{kind} {param}")
            + packet("WRITE", f"{d}/parameter", value=param))


# -- blocking -------------------------------------------------------------------------------


def dm_blocking(dm: Blocking, d: str, writes: Sequence[tuple[str, str]]) -> None:
    """Answer every command for ever, in the agent's order (the watch is set).  The
    event of our own rm is passed over unread, as the agent does (it comes before any
    later command's)."""
    while True:
        dm.event()
        dm.sendall(take_command(d))
        if dm.replies(3)[0][0] == OPS["ERROR"]:
            continue
        dm.sendall(answer(d, writes))
        dm.replies(len(writes))
        dm.event()  # our rm's


def exchange_blocking(kind: str, param: str, result: str
                      ) -> Callable[[Blocking, str], None]:
    def exchange(ts: Blocking, d: str) -> None:
        pre = first(kind, param, d)
        if pre is not None:
            ts.sendall(pre)
            ts.replies(2)
        ts.rpc("WRITE", f"{d}/command", kind)
        while True:
            while ts.event() != f"{d}/state":
                pass
            ts.sendall(look(d))
            if ts.replies(2)[0][1] == result.encode():
                break
        if kind == "pci-ins":
            ts.rpc("WRITE", f"{d}/state", "running")
            while ts.event() != f"{d}/state":  # our write's (we ignore it unread too)
                pass
        ts.events.clear()  # parameter's

    return exchange


# -- asyncio --------------------------------------------------------------------------------


class BareProtocol(asyncio.Protocol):
    """Frames packets; each reply completes the oldest waiting future, each event goes
    to a queue (its path)."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: collections.deque[asyncio.Future[tuple[int, bytes]]] = (
            collections.deque())
        self.events: asyncio.Queue[str] = asyncio.Queue()
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while len(buf) >= 16:
            op, _, _, n = HDR.unpack_from(buf)
            if len(buf) < 16 + n:
                break
            body, buf = buf[16:16 + n], buf[16 + n:]
            if op == OPS["EVENT"]:
                self.events.put_nowait(body.split(b"\0")[0].decode())
            else:
                self.waiting.popleft().set_result((op, body))
        self.buf = buf

    async def batch(self, data: bytes, n: int) -> list[tuple[int, bytes]]:
        """Send ``data`` (``n`` requests) at once; their replies."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(n)]
        self.waiting.extend(futures)
        assert self.transport is not None
        self.transport.write(data)
        return [await f for f in futures]

    def drop_events(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()


async def connect(sock: str) -> BareProtocol:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_unix_connection(BareProtocol, sock)
    return p


async def watch(p: BareProtocol, paths: Sequence[str]) -> None:
    for path in paths:
        await p.batch(packet("WATCH", path, "t"), 1)
        await p.events.get()  # the initial event


async def dm_asyncio(sock: str, d: str, writes: Sequence[tuple[str, str]],
                     ready: Callable[[], None]) -> None:
    dm = await connect(sock)
    await watch(dm, [f"{d}/command"])
    ready()
    while True:
        await dm.events.get()
        if (await dm.batch(take_command(d), 3))[0][0] == OPS["ERROR"]:
            continue
        await dm.batch(answer(d, writes), len(writes))
        await dm.events.get()  # our rm's (`dm_blocking`)


async def timed_asyncio(sock: str, d: str, kind: str, param: str, result: str,
                        count: int, warm: int) -> list[float]:
    """µs per exchange in our order with the bare asyncio toolstack."""
    ts = await connect(sock)
    await watch(ts, [f"{d}/state", f"{d}/parameter"])
    out = []
    for i in range(count + warm):
        t0 = time.perf_counter()
        pre = first(kind, param, d)
        if pre is not None:
            await ts.batch(pre, 2)
        await ts.batch(packet("WRITE", f"{d}/command", value=kind), 1)
        while True:
            while await ts.events.get() != f"{d}/state":
                pass
            if (await ts.batch(look(d), 2))[0][1] == result.encode():
                break
        if kind == "pci-ins":
            await ts.batch(packet("WRITE", f"{d}/state", value="running"), 1)
            while await ts.events.get() != f"{d}/state":  # our write's
                pass
        ts.drop_events()  # parameter's
        if i >= warm:
            out.append((time.perf_counter() - t0) * 1e6)
    assert ts.transport is not None
    ts.transport.close()
    return out

