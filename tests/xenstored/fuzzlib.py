"""Random and mutated xenstore packets against a real in-process server (shared by
tests/xenstored/test_fuzz.py and bench/fuzz_xenstored.py)."""

from __future__ import annotations

import asyncio
import random
import struct
import tempfile
from pathlib import Path

from stubdom.wire import Op, Packet, encode
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.quota import Quotas
from stubdom.xenstored.server import XenStoreServer
from tests.xenstored.test_server import Raw

SEEDS = [
    encode(Packet(Op.READ, b"/local/domain/5/x\0")),
    encode(Packet(Op.WRITE, b"/local/domain/5/x\0value")),
    encode(Packet(Op.WATCH, b"/local/domain/5\0tok\0")),
    encode(Packet(Op.TRANSACTION_START, b"\0")),
    encode(Packet(Op.SET_PERMS, b"/local/domain/5/x\0n5\0r0\0")),
    encode(Packet(Op.DIRECTORY_PART, b"/local/domain/5\0" + b"0\0")),
    encode(Packet(Op.RM, b"/local/domain/5/x\0")),
    encode(Packet(Op.RESET_WATCHES, b"")),
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(6)
        if k == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif k == 1:  # type field
            struct.pack_into("=I", b, 0, rng.choice([rng.randrange(40), 0xFFFFFFFF]))
        elif k == 2:  # tx_id
            struct.pack_into("=I", b, 8, rng.choice([0, 1, 2, rng.randrange(2**32)]))
        elif k == 3 and len(b) > 16:  # drop the final NUL or truncate
            del b[rng.randrange(16, len(b)) :]
            struct.pack_into("=I", b, 12, len(b) - 16)
        elif k == 4:  # huge token / long string
            b += b"t" * rng.randrange(4096 - min(len(b), 4000))
            struct.pack_into("=I", b, 12, min(len(b) - 16, 4096))
            b = b[: 16 + min(len(b) - 16, 4096)]
        elif k == 5:  # a bad length (closes the connection)
            struct.pack_into("=I", b, 12, rng.choice([4097, 0x80000000, 0xFFFFFFFF]))
    return bytes(b)


def message(rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        n = rng.randrange(0, 200)
        hdr = struct.pack("=4I", rng.randrange(32), rng.randrange(99), rng.randrange(4), n)
        return hdr + bytes(rng.randrange(256) for _ in range(n))
    return mutate(rng, rng.choice(SEEDS))


async def run(messages: list[bytes]) -> dict[str, int]:
    """Send ``messages`` from guest 5 (reconnecting when closed) while dom0 and guest 6
    keep working; check the server survives and state stays bounded."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        srv = XenStoreServer(Path(d) / "s", XenStored(Quotas(memory=200_000)))
        await srv.start()
        try:
            dom0 = await Raw.open(srv.socket_path)
            for dom in (5, 6):
                for args in (
                    ("INTRODUCE", str(dom), "0", str(dom + 1)),
                    ("MKDIR", f"/local/domain/{dom}"),
                    ("SET_PERMS", f"/local/domain/{dom}", f"n{dom}"),
                ):
                    assert (await dom0.rpc(Op[args[0]], *args[1:])).op != Op.ERROR
            g6 = await Raw.open(srv.domain_socket(6))
            closes = 0
            g5 = await Raw.open(srv.domain_socket(5))
            for i, m in enumerate(messages):
                if g5.writer.is_closing() or g5.reader.at_eof():
                    closes += 1
                    g5 = await Raw.open(srv.domain_socket(5))
                g5.writer.write(m)
                # the others are always served (this also lets the server run)
                r = await g6.rpc(Op.WRITE, raw=b"/local/domain/6/c\0" + str(i).encode())
                assert r.op == Op.WRITE, r
                while not g5.reader.at_eof() and g5.reader._buffer:
                    g5.reader._buffer.clear()
            assert (await dom0.rpc(Op.READ, "/local/domain/6/c")).op == Op.READ
            core = srv.core
            assert core.store.count_owned(5) <= core.quotas.nodes
            assert len(core.watches) <= 2 * (core.quotas.watches + 1)
            assert sum(len(c.outbox) for c in core.connections.values()) == 0
            backlog = sum(c.backlog() for c in srv.clients.values())
            assert backlog <= core.quotas.memory + 2 * 65536
            return {"messages": len(messages), "reconnects": closes}
        finally:
            await srv.close()


def run_sync(messages: list[bytes]) -> dict[str, int]:
    return asyncio.run(run(messages))
