"""The tightest blocking xenstore client the benches can have in Python.

Each request is prepared once as bytes; a call is one ``send`` and, nearly always, one
``recv``.  Its own cost per request is a constant added to every daemon's figure alike,
so the smaller it is the less it pulls the ratio ours/cx toward 1 (see the note in
bench/xenstored.py).  No watch may be set on a connection of this client: an event would
be read as the reply.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from bench.rawxs import HDR

READ, TSTART, TEND, WRITE, ERROR = 2, 6, 7, 11, 16
BUF = 65536


def request(op: int, payload: bytes, tx: int = 0) -> bytes:
    """One request packet, ready to send."""
    return HDR.pack(op, 0, tx, len(payload)) + payload


class TightConnection:
    """One Unix-socket connection that sends a packet and reads back one reply."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)

    def call(self, req: bytes) -> bytes:
        """Send ``req``; return the whole reply packet (header included)."""
        s = self.s
        s.sendall(req)
        data = s.recv(BUF)
        while len(data) < 16 or len(data) < 16 + int.from_bytes(data[12:16], "little"):
            more = s.recv(BUF)
            if not more:
                raise ConnectionError("daemon closed the connection")
            data += more
        if data[0] == ERROR:
            raise RuntimeError(f"daemon refused {req[:4]!r}: {data[16:]!r}")
        return data

    def repeat(self, req: bytes, n: int) -> None:
        """``n`` round trips of ``req`` whose reply length is that of the first one."""
        s = self.s
        first = self.call(req)
        size = len(first)
        send, recv = s.send, s.recv
        for _ in range(n - 1):
            send(req)
            data = recv(BUF)
            if len(data) != size:
                self._rest(data, size)

    def _rest(self, data: bytes, size: int) -> None:
        while len(data) < size:
            more = self.s.recv(BUF)
            if not more:
                raise ConnectionError("daemon closed the connection")
            data += more
        if data[0] == ERROR or len(data) != size:
            raise RuntimeError(f"unexpected reply {data[:32]!r}")

    def close(self) -> None:
        self.s.close()


def single_ops(cl: TightConnection) -> dict[str, Callable[[int], None]]:
    """The issue's single-request paths on ``/bench/x`` (written first), each ``n``
    times: READ of the one-byte node, WRITE of the same value, and a transaction of
    start, read, write, commit."""
    w, r = request(WRITE, b"/bench/x\0v"), request(READ, b"/bench/x\0")
    cl.call(w)
    call = cl.call

    def transactions(n: int) -> None:
        for _ in range(n):
            t = int(call(request(TSTART, b"\0"))[16:-1])
            call(request(READ, b"/bench/x\0", t))
            call(request(WRITE, b"/bench/x\0v", t))
            call(request(TEND, b"T\0", t))

    return {"WRITE": lambda n: cl.repeat(w, n), "READ": lambda n: cl.repeat(r, n),
            "transaction": transactions}
