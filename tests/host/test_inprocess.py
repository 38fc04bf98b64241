"""`inprocess_host` on every xenstored: the same sockets, and a trace that reads the same."""

from __future__ import annotations

import io
import json

import pytest

from stubdom.host.inprocess import inprocess_host
from stubdom.xenstore import Client
from stubdom.xenstored.trace import PacketTrace
from tests.support.daemons import on_every_daemon, short_tmpdir


@on_every_daemon
@pytest.mark.parametrize("traced", [False, True])
async def test_dom0_reaches_any_daemon_and_is_traced_alike(xenstored: str, traced: bool) -> None:
    root = short_tmpdir("inp-")
    lines = io.StringIO()
    trace = PacketTrace(lines) if traced else None
    async with inprocess_host(root, trace=trace, xenstored=xenstored) as h:
        assert h.server.socket_path == root / "xs"
        assert h.server.domain_socket(7) == root / "xs.d" / "7"
        other = await Client.connect(str(h.server.socket_path))
        try:
            await h.xs.write("/inp", "1")
            assert await other.read("/inp") == b"1"
        finally:
            await other.close()
    if not traced:
        return
    mine = [json.loads(line) for line in lines.getvalue().splitlines()]
    asked = {(r["conn"], r["req_id"]) for r in mine if r["payload"].startswith("/inp\0")}
    mine = [r for r in mine if (r["conn"], r["req_id"]) in asked]
    assert [(r["dir"], r["dom"], r["type"], r["payload"]) for r in mine] == [
        ("in", 0, "WRITE", "/inp\x001"), ("out", 0, "WRITE", "OK\0"),
        ("in", 0, "READ", "/inp\0"), ("out", 0, "READ", "1"),
    ]
    assert mine[0]["conn"] == mine[1]["conn"] != mine[2]["conn"] == mine[3]["conn"]
