"""Drive the sans-IO core directly: requests in, (type, payload) replies out."""

from __future__ import annotations

from stubdom.wire import Op, Packet, join_args
from stubdom.xenstored.core import Connection, XenStored


class Harness:
    def __init__(self, xs: XenStored | None = None) -> None:
        self.xs = xs or XenStored()
        self.dom0 = self.xs.connect(0)
        self._events: dict[int, list[tuple[str, str]]] = {}

    def guest(self, domid: int, home: bool = True) -> Connection:
        """Introduce ``domid`` and give it a home, as a toolstack would."""
        self.ok(self.dom0, Op.INTRODUCE, str(domid), "0", str(domid + 10))
        if home:
            self.ok(self.dom0, Op.MKDIR, f"/local/domain/{domid}")
            self.ok(self.dom0, Op.SET_PERMS, f"/local/domain/{domid}", f"n{domid}")
        return self.xs.connect(domid)

    def rq(
        self, conn: Connection, op: int, *args: str | bytes, tx: int = 0, raw: bytes | None = None
    ) -> tuple[str, bytes]:
        payload = raw if raw is not None else join_args(*args)
        self.xs.handle(conn, Packet(op, payload, 42, tx))
        reply: tuple[str, bytes] | None = None
        for c in [*list(self.xs.pending()), conn]:
            for p in map(Packet._make, c.take_output()):
                if p.op == Op.WATCH_EVENT:
                    path, token = p.payload.split(b"\0")[:2]
                    self._events.setdefault(c.cid, []).append((path.decode(), token.decode()))
                elif c is conn:
                    assert reply is None, "two replies to one request"
                    assert p.req_id == 42 and p.tx_id == tx
                    reply = (p.type_name, p.payload)
        assert reply is not None, "no reply"
        return reply

    def write(
        self, conn: Connection, path: str, value: bytes | str, tx: int = 0
    ) -> tuple[str, bytes]:
        v = value.encode() if isinstance(value, str) else value
        return self.rq(conn, Op.WRITE, raw=path.encode() + b"\0" + v, tx=tx)

    def ok(self, conn: Connection, op: int, *args: str | bytes, tx: int = 0) -> bytes:
        kind, payload = self.rq(conn, op, *args, tx=tx)
        assert kind != "ERROR", f"{Op(op).name} {args}: {payload!r}"
        return payload

    def err(self, conn: Connection, op: int, *args: str | bytes, tx: int = 0) -> str:
        kind, payload = self.rq(conn, op, *args, tx=tx)
        assert kind == "ERROR", f"{Op(op).name} {args} succeeded: {payload!r}"
        return payload[:-1].decode()

    def events(self, conn: Connection) -> list[tuple[str, str]]:
        return self._events.pop(conn.cid, [])

    def start(self, conn: Connection) -> int:
        return int(self.ok(conn, Op.TRANSACTION_START, "")[:-1])

    def end(self, conn: Connection, tx: int, commit: bool = True) -> str:
        kind, payload = self.rq(conn, Op.TRANSACTION_END, "T" if commit else "F", tx=tx)
        return "OK" if kind != "ERROR" else payload[:-1].decode()
