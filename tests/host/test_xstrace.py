"""Tracing a xenstored from outside: the shared writer, dom0's proxy and the relays.

The proxy and the relay run here in front of our own xenstored, whose own trace is the
reference: through either, a connection's lines must read as our daemon writes them.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from stubdom.host.xsproxy import TracingProxy
from stubdom.host.xsrelay import DomainRelay
from stubdom.host.xstrace import TraceWriter
from stubdom.wire.constants import Op
from stubdom.wire.packet import Packet, encode
from stubdom.xenstore import Client, StreamTransport, Transport
from stubdom.xenstored.trace import PacketTrace
from tests.support.xsenv import XsEnv

D = 5
HOME = f"/local/domain/{D}"


class Lines(io.StringIO):
    """A trace's stream, kept in memory and read back as records."""

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


def short(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(dir, conn, dom, type, req_id, payload) of each record."""
    return [(r["dir"], r["conn"], r["dom"], r["type"], r["req_id"], r["payload"])
            for r in records]


@dataclass
class Traced:
    xs: XsEnv
    lines: Lines
    writer: TraceWriter
    proxy: TracingProxy
    relay: DomainRelay

    def records(self) -> list[dict[str, Any]]:
        return self.lines.records()


@pytest.fixture
async def traced(xsenv: XsEnv) -> AsyncIterator[Traced]:
    await xsenv.dom0.introduce(D, 0, 1)
    await xsenv.dom0.mkdir(HOME)
    await xsenv.dom0.set_perms(HOME, [f"n{D}"])
    lines = Lines()
    writer = TraceWriter(PacketTrace(lines))

    async def connect() -> Transport:
        return await StreamTransport.connect_unix(str(xsenv.server.domain_socket(D)))

    proxy = await TracingProxy.start(xsenv.run_dir / "proxy", xsenv.server.socket_path,
                                     writer.domain(0))
    relay = await DomainRelay.start(xsenv.run_dir / "relay", connect, f"domain {D}",
                                    writer.domain(D))
    yield Traced(xsenv, lines, writer, proxy, relay)
    await relay.close()
    await proxy.close()


def test_a_connection_records_whole_packets_from_bytes_split_anywhere() -> None:
    lines = Lines()
    writer = TraceWriter(PacketTrace(lines))
    a, b = writer.connection(0), writer.connection(7)
    data = encode(Packet(Op.WRITE, b"/x\0v", 3)) + encode(Packet(Op.READ, b"/x\0", 4))
    for i in range(len(data)):
        a.requests(data[i : i + 1])
    b.reply(Packet(Op.READ, b"v", 9))
    assert short(lines.records()) == [
        ("in", 1, 0, "WRITE", 3, "/x\0v"),
        ("in", 1, 0, "READ", 4, "/x\0"),
        ("out", 2, 7, "READ", 9, "v"),
    ]


def test_a_stream_that_stops_decoding_keeps_what_came_before() -> None:
    lines = Lines()
    conn = TraceWriter(PacketTrace(lines)).connection(0)
    too_long = bytes.fromhex("02000000" "01000000" "00000000" "00100100")  # 69,632 bytes
    conn.replies(encode(Packet(Op.READ, b"v", 1)) + too_long)
    conn.replies(encode(Packet(Op.READ, b"w", 2)))
    assert short(lines.records()) == [("out", 1, 0, "READ", 1, "v")]


async def test_the_proxy_gives_each_client_its_own_connection(traced: Traced) -> None:
    server = traced.xs.server

    def dom0_connections() -> int:
        return sum(1 for c in server.clients if c.domid == 0)

    before = dom0_connections()
    a = await Client.connect(str(traced.proxy.path), timeout=10.0)
    b = await Client.connect(str(traced.proxy.path), timeout=10.0)
    try:
        assert stat.S_IMODE(os.stat(traced.proxy.path).st_mode) == 0o600
        await a.write("/p/x", "1")
        assert await b.read("/p/x") == b"1"
        assert dom0_connections() == before + 2
    finally:
        await a.close()
        await b.close()
    recs = traced.records()
    assert {r["dom"] for r in recs} == {0}
    assert [(r["dir"], r["type"], r["payload"]) for r in recs if r["conn"] == 1] == [
        ("in", "WRITE", "/p/x\x001"), ("out", "WRITE", "OK\0")]
    assert [(r["dir"], r["type"], r["payload"]) for r in recs if r["conn"] == 2] == [
        ("in", "READ", "/p/x\0"), ("out", "READ", "1")]


async def test_the_relay_records_each_client_as_it_saw_its_connection(traced: Traced) -> None:
    """Its own req_ids and token, its events, the mux's answers; not the clean-up."""
    dom0 = await Client.connect(str(traced.proxy.path), timeout=10.0)
    a = await Client.connect(str(traced.relay.path), timeout=10.0)
    b = await Client.connect(str(traced.relay.path), timeout=10.0)
    try:
        await dom0.write(f"{HOME}/w", "0")
        async with a.watch("w", "tok") as wa:
            await wa.get(5)
            await b.write("w", "1")
            assert (await wa.get(5)).token == "tok"
            async with b.transaction() as tx:
                await tx.write("t", "x")
    finally:
        for c in (a, b, dom0):
            await c.close()
    recs = traced.records()
    conns = {r["conn"]: r["dom"] for r in recs}
    assert sorted(conns.items()) == [(1, 0), (2, D), (3, D)]
    own_a = [(r["dir"], r["type"], r["payload"]) for r in recs if r["conn"] == 2]
    assert ("in", "WATCH", "w\0tok\0") in own_a
    assert ("out", "WATCH_EVENT", "w\0tok\0") in own_a
    assert not any("1:" in p or "2:" in p for _, _, p in own_a)
    ids_b = [r["req_id"] for r in recs if r["conn"] == 3 and r["dir"] == "in"]
    assert ids_b == sorted(ids_b) and ids_b[0] == 1  # the client's own numbering
    # Each request has its reply on the same connection and req_id.
    for r in recs:
        if r["dir"] == "in":
            assert any(o["dir"] == "out" and o["conn"] == r["conn"]
                       and o["req_id"] == r["req_id"] for o in recs), r


async def test_a_request_is_recorded_before_its_reply(traced: Traced) -> None:
    async def writes(path: str) -> None:
        c = await Client.connect(path, timeout=10.0)
        try:
            await asyncio.gather(*(c.write(f"{HOME}/n{i}", str(i)) for i in range(20)))
        finally:
            await c.close()

    await asyncio.gather(writes(str(traced.proxy.path)), writes(str(traced.relay.path)))
    seen: set[tuple[int, int]] = set()
    for r in traced.records():
        key = (r["conn"], r["req_id"])
        if r["dir"] == "in":
            seen.add(key)
        else:
            assert key in seen, r


async def test_the_proxy_refuses_a_client_while_the_daemon_is_away(traced: Traced) -> None:
    away = await TracingProxy.start(traced.xs.run_dir / "away", traced.xs.run_dir / "none",
                                    traced.writer.domain(0))
    try:
        reader, writer = await asyncio.open_unix_connection(str(away.path))
        assert await reader.read() == b""  # closed at once
        writer.close()
    finally:
        await away.close()
    assert not away.path.exists()
    assert traced.records() == []
