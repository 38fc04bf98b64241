"""A small in-process xenstore server for client tests (no dependency on stubdom.xenstored).

It keeps a flat dict store and answers enough of the protocol to exercise the client,
and it can misbehave on purpose: echo ``req_id`` 0, hold replies and release them in
any order, never answer some paths, force commit conflicts, lack DIRECTORY_PART.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.wire.constants import PAYLOAD_MAX, Op
from stubdom.wire.packet import Packet, PacketDecoder, encode

OK = b"OK\0"


@dataclass
class Conn:
    writer: asyncio.StreamWriter
    watches: list[tuple[str, str]] = field(default_factory=list)

    def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet))


class FakeServer:
    def __init__(self) -> None:
        self.store: dict[str, bytes] = {"/": b""}
        self.gen = 0
        self.node_gen: dict[str, int] = {"/": 0}
        self.requests: list[Packet] = []
        self.conns: list[Conn] = []
        self.echo_zero = False  # reply with req_id 0 (libxenstore-style servers)
        self.hold = False  # park replies until release()
        self.held: list[tuple[Conn, list[Packet]]] = []
        self.silent_paths: set[str] = set()  # never answer requests naming these
        self.conflicts = 0  # how many commits to answer with EAGAIN
        self.directory_part = True
        self.tx_next = 1
        self.before: list[Callable[[Packet], None]] = []  # hooks run before handling
        self.received = asyncio.Condition()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- plumbing --------------------------------------------------------------

    async def start(self, path: Path) -> str:
        self._server = await asyncio.start_unix_server(self.serve, path=str(path))
        return str(path)

    async def close(self) -> None:
        for c in self.conns:
            c.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    def serve_socket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self.serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer)
        self.conns.append(conn)
        dec = PacketDecoder()
        try:
            while data := await reader.read(65536):
                dec.feed(data)
                for pkt in dec:
                    await self.on_packet(conn, pkt)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def on_packet(self, conn: Conn, pkt: Packet) -> None:
        async with self.received:
            self.requests.append(pkt)
            self.received.notify_all()
        for hook in self.before:
            hook(pkt)
        args = pkt.payload.split(b"\0")
        if args and args[0].decode(errors="replace") in self.silent_paths:
            return
        out = self.handle(conn, pkt)
        if self.echo_zero:
            out = [p if p.op == Op.WATCH_EVENT else Packet(p.op, p.payload, 0, p.tx_id)
                   for p in out]
        if self.hold:
            self.held.append((conn, out))
        else:
            for p in out:
                conn.send(p)

    async def wait_requests(self, n: int) -> None:
        async with self.received:
            await self.received.wait_for(lambda: len(self.requests) >= n)

    def release(self, order: list[int] | None = None) -> None:
        held, self.held = self.held, []
        order = order if order is not None else list(range(len(held)))
        for i in order:
            conn, out = held[i]
            for p in out:
                conn.send(p)

    def fire(self, path: str) -> None:
        for c in self.conns:
            for wpath, token in c.watches:
                if path == wpath or path.startswith(wpath.rstrip("/") + "/"):
                    c.send(Packet(Op.WATCH_EVENT, f"{path}\0{token}\0".encode()))

    # -- store -----------------------------------------------------------------

    def children(self, path: str) -> list[str]:
        prefix = "/" if path == "/" else path + "/"
        return [k[len(prefix):] for k in self.store
                if k.startswith(prefix) and k != path and "/" not in k[len(prefix):]]

    def set(self, path: str, value: bytes) -> None:
        self.gen += 1
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            p = "/" + "/".join(parts[:i])
            if p not in self.store:
                self.store[p] = b""
                self.node_gen[p] = self.gen
                self.node_gen[_parent(p)] = self.gen
        if path not in self.store:
            self.node_gen[_parent(path)] = self.gen
        self.store[path] = value
        self.node_gen[path] = self.gen

    def handle(self, conn: Conn, pkt: Packet) -> list[Packet]:
        def reply(payload: bytes) -> list[Packet]:
            return [Packet(pkt.op, payload, pkt.req_id, pkt.tx_id)]

        def error(name: str) -> list[Packet]:
            return [Packet(Op.ERROR, name.encode() + b"\0", pkt.req_id, pkt.tx_id)]

        args = [a.decode() for a in pkt.payload.split(b"\0")]
        op = pkt.op
        if op == Op.READ:
            return reply(self.store[args[0]]) if args[0] in self.store else error("ENOENT")
        if op == Op.WRITE:
            path, _, value = pkt.payload.partition(b"\0")
            self.set(path.decode(), value)
            self.fire(path.decode())
            return reply(OK)
        if op == Op.MKDIR:
            if args[0] not in self.store:
                self.set(args[0], b"")
                self.fire(args[0])
            return reply(OK)
        if op == Op.RM:
            if args[0] not in self.store:
                return error("ENOENT")
            for k in [k for k in self.store if k == args[0] or k.startswith(args[0] + "/")]:
                del self.store[k]
            self.gen += 1
            self.node_gen[_parent(args[0])] = self.gen
            self.fire(args[0])
            return reply(OK)
        if op == Op.DIRECTORY:
            if args[0] not in self.store:
                return error("ENOENT")
            body = b"".join(n.encode() + b"\0" for n in self.children(args[0]))
            return error("E2BIG") if len(body) > PAYLOAD_MAX else reply(body)
        if op == Op.DIRECTORY_PART:
            if not self.directory_part:
                return error("ENOSYS")
            return reply(self._directory_part(args[0], int(args[1])))
        if op == Op.GET_PERMS:
            return reply(b"n0\0") if args[0] in self.store else error("ENOENT")
        if op == Op.WATCH:
            conn.watches.append((args[0], args[1]))
            return [*reply(OK), Packet(Op.WATCH_EVENT, f"{args[0]}\0{args[1]}\0".encode())]
        if op == Op.UNWATCH:
            if (args[0], args[1]) not in conn.watches:
                return error("ENOENT")
            conn.watches.remove((args[0], args[1]))
            return reply(OK)
        if op == Op.TRANSACTION_START:
            self.tx_next += 1
            return reply(f"{self.tx_next - 1}\0".encode())
        if op == Op.TRANSACTION_END:
            if args[0] == "T" and self.conflicts > 0:
                self.conflicts -= 1
                return error("EAGAIN")
            return reply(OK)
        if op == Op.GET_DOMAIN_PATH:
            return reply(f"/local/domain/{args[0]}\0".encode())
        if op == Op.IS_DOMAIN_INTRODUCED:
            return reply(b"T\0" if args[0] == "0" else b"F\0")
        if op == Op.CONTROL:
            return reply(b"echo:" + pkt.payload)
        if op in (Op.WATCH_EVENT, Op.ERROR) or op > Op.DIRECTORY_PART:
            return error("ENOSYS")
        if op == Op.RESET_WATCHES:
            conn.watches.clear()
        return reply(OK)

    def _directory_part(self, path: str, offset: int) -> bytes:
        gen = f"{self.node_gen.get(path, 0)}\0".encode()
        full = b"".join(n.encode() + b"\0" for n in self.children(path))
        room = PAYLOAD_MAX - len(gen) - 1
        end = offset
        while end < len(full):
            nxt = full.index(b"\0", end) + 1
            if nxt - offset > room:
                break
            end = nxt
        chunk = full[offset:end]
        if end >= len(full):
            chunk += b"\0"
        return gen + chunk


def _parent(path: str) -> str:
    i = path.rfind("/")
    return "/" if i <= 0 else path[:i]


class ThreadedServer:
    """A FakeServer on its own loop in a thread, for testing blocking clients."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: FakeServer

    def __enter__(self) -> ThreadedServer:
        self.thread.start()

        async def start() -> FakeServer:
            s = FakeServer()
            await s.start(self.path)
            return s

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
