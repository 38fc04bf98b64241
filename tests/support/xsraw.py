#!/usr/bin/env python3
"""A raw xenstore wire client for the tests: it validates nothing, so it can send the
malformed and hostile requests that a real client would refuse to build.

It speaks the packet format of xs_wire.h over either transport:

* :class:`SockConn`, the daemon's unix socket: a privileged (dom0) connection;
* :class:`RingConn`, the guest side of a domain's ring page (struct
  xenstore_domain_interface, Xen's docs/misc/xenstore-ring.txt).  Under the realxs shim
  the page is the file ``ring-<domid>`` and the daemon is woken by :class:`Kicker`.

Standard library only, so that it also runs as a script with any python3::

    python3 tests/support/xsraw.py [-s SOCKET] [-g DOMID] [-t TXID] TYPE [ARG ...]

sends one request (each ARG NUL-terminated, except WRITE's last, the raw value; with
``-g`` over that domain's ring, introducing it first) and prints the reply.  SOCKET
defaults to ``$XENSTORED_PATH`` and the shim's directory to ``$XSFAKE_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

TYPES = ["CONTROL", "DIRECTORY", "READ", "GET_PERMS", "WATCH", "UNWATCH",
         "TRANSACTION_START", "TRANSACTION_END", "INTRODUCE", "RELEASE",
         "GET_DOMAIN_PATH", "WRITE", "MKDIR", "RM", "SET_PERMS", "WATCH_EVENT",
         "ERROR", "IS_DOMAIN_INTRODUCED", "RESUME", "SET_TARGET", "RESTRICT",
         "RESET_WATCHES", "DIRECTORY_PART"]  # fmt: skip
T = {name: i for i, name in enumerate(TYPES)}

HEADER = struct.Struct("<4I")  # type, req_id, tx_id, len (host order: little-endian here)

# struct xenstore_domain_interface: two 1 KiB rings, then the free-running indexes.
RING_SIZE = 1024
REQ_OFF, RSP_OFF = 0, 1024
IDX_OFF = 2048  # req_cons, req_prod, rsp_cons, rsp_prod
REQ_PROD_OFF, RSP_CONS_OFF = 2052, 2056
STATUS_OFF = 2064  # server_features, connection, error
PAGE = 4096
MASK = 0xFFFFFFFF
# The ring's ``error`` field (xs_wire.h): set by the daemon when it gives up on the ring.
RING_ERRORS = ["none", "XENSTORE_ERROR_COMM", "XENSTORE_ERROR_RINGIDX", "XENSTORE_ERROR_PROTO"]
# RingConn accesses the indexes as items of a native uint32 view of the page.
assert sys.byteorder == "little" and struct.calcsize("@I") == 4, "little-endian uint32s"
VIRQ_PORT = 1  # the shim's VIRQ_DOM_EXC: "re-check every domain"
POLL = 0.0005


class Reply(NamedTuple):
    type: str
    req_id: int
    tx_id: int
    payload: bytes


class Conn(Protocol):
    """What the helpers need of a transport."""

    events: list[Reply]

    def send(self, data: bytes) -> None: ...
    def recv_exact(self, n: int, timeout: float | None = None) -> bytes: ...
    def close(self) -> None: ...


def tname(t: int) -> str:
    return TYPES[t] if t < len(TYPES) else str(t)


class SockConn:
    """A unix-socket connection: privileged, like dom0's tools."""

    def __init__(self, path: str | None = None, timeout: float = 5.0) -> None:
        path = path or os.environ.get("XENSTORED_PATH")
        if not path:
            raise ValueError("no socket path given and $XENSTORED_PATH is unset")
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(timeout)
        self.events: list[Reply] = []

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def recv_exact(self, n: int, timeout: float | None = None) -> bytes:
        if timeout is not None:
            self.s.settimeout(timeout)
        b = b""
        while len(b) < n:
            try:
                c = self.s.recv(n - len(b))
            except TimeoutError:
                raise TimeoutError("socket read timeout") from None
            if not c:
                raise EOFError("connection closed by xenstored")
            b += c
        return b

    def close(self) -> None:
        self.s.close()


class RingTimeout(TimeoutError):
    """A ring made no progress in time; the message has the indexes and the status, so a
    log shows which side stalled without a rerun."""


class Kicker:
    """Wakes the daemon: one byte, a port number, to the shim's FIFO ``evtchn``.

    oxenstored dispatches on the byte, so a guest sends its own port; cxenstored scans
    every ring whatever the byte.
    """

    def __init__(self, fake_dir: str, port: int) -> None:
        self.fd = os.open(os.path.join(fake_dir, "evtchn"), os.O_WRONLY | os.O_NONBLOCK)
        self.byte = bytes([port])

    def __call__(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the daemon has wake-ups pending
            os.write(self.fd, self.byte)

    def close(self) -> None:
        os.close(self.fd)


class RingConn:
    """The guest side of a ring page shared with the daemon (a 4 KiB file).

    ``kick`` is called after producing requests and, since nothing here waits for the
    daemon's notification, while polling for replies.

    The indexes are read and written as items of a native ``uint32`` view of the page:
    one aligned 4-byte load or store each.  ``struct.pack_into`` must not be used on
    them: it zeroes its bytes before writing the value, and a daemon that reads
    ``rsp_cons`` or ``req_prod`` as 0 in between sees ``prod - cons > 1024`` once the
    indexes pass 1024, sets ``error`` to XENSTORE_ERROR_RINGIDX and ignores the ring
    for good (cx: check_indexes in xenstored_domain.c, then ignore_connection).
    """

    def __init__(self, ringfile: str, kick: Callable[[], None], timeout: float = 5.0) -> None:
        fd = os.open(ringfile, os.O_RDWR)
        try:
            self.m = mmap.mmap(fd, PAGE)
        finally:
            os.close(fd)
        self.words = memoryview(self.m).cast("I")
        self.kick = kick
        self.timeout = timeout
        self.events: list[Reply] = []

    def idx(self) -> tuple[int, int, int, int]:
        """(req_cons, req_prod, rsp_cons, rsp_prod)"""
        w, i = self.words, IDX_OFF // 4
        return w[i], w[i + 1], w[i + 2], w[i + 3]

    def status(self) -> tuple[int, int, int]:
        """(server_features, connection, error)"""
        w, i = self.words, STATUS_OFF // 4
        return w[i], w[i + 1], w[i + 2]

    def _store(self, offset: int, value: int) -> None:
        """One index, as a single 4-byte store (never seen as 0 or torn by the daemon)."""
        self.words[offset // 4] = value & MASK

    def describe(self) -> str:
        """The indexes and the status, with what they say about who stalled."""
        req_cons, req_prod, rsp_cons, rsp_prod = self.idx()
        features, connection, error = self.status()
        unconsumed = (req_prod - req_cons) & MASK
        unread = (rsp_prod - rsp_cons) & MASK
        if error:
            verdict = "the daemon flagged the ring and ignores it"
        elif unconsumed:
            verdict = f"the daemon has not consumed {unconsumed} request bytes"
        elif not unread:
            verdict = "the daemon consumed every request and produced nothing"
        else:
            verdict = f"{unread} response bytes wait unread"
        name = RING_ERRORS[error] if error < len(RING_ERRORS) else "unknown"
        return (
            f"req_cons={req_cons} req_prod={req_prod} rsp_cons={rsp_cons} rsp_prod={rsp_prod}"
            f" server_features={features} connection={connection} error={error} ({name}):"
            f" {verdict}"
        )

    def send(self, data: bytes) -> None:
        end = time.monotonic() + self.timeout
        while data:
            cons, prod, _, _ = self.idx()
            space = RING_SIZE - ((prod - cons) & MASK)
            if space == 0:
                if time.monotonic() > end:
                    raise RingTimeout(f"request ring full for {self.timeout} s: {self.describe()}")
                self.kick()
                time.sleep(POLL)
                continue
            off = prod % RING_SIZE
            n = min(space, len(data), RING_SIZE - off)
            self.m[REQ_OFF + off : REQ_OFF + off + n] = data[:n]
            self._store(REQ_PROD_OFF, prod + n)
            data = data[n:]
        self.kick()

    def recv_exact(self, n: int, timeout: float | None = None) -> bytes:
        wait = self.timeout if timeout is None else timeout
        end = time.monotonic() + wait
        b = b""
        while len(b) < n:
            _, _, cons, prod = self.idx()
            avail = (prod - cons) & MASK
            if avail == 0:
                if time.monotonic() > end:
                    got = f"{len(b)} of {n} bytes"
                    raise RingTimeout(f"no response for {wait} s ({got}): {self.describe()}")
                self.kick()
                time.sleep(POLL)
                continue
            off = cons % RING_SIZE
            k = min(avail, n - len(b), RING_SIZE - off)
            b += self.m[RSP_OFF + off : RSP_OFF + off + k]
            self._store(RSP_CONS_OFF, cons + k)
        self.kick()
        return b

    def close(self) -> None:
        self.words.release()  # an mmap cannot close while a view of it exists
        self.m.close()
        if isinstance(self.kick, Kicker):
            self.kick.close()


def encode_args(args: tuple[str | bytes, ...] | list[str]) -> bytes:
    return b"".join((a if isinstance(a, bytes) else a.encode()) + b"\0" for a in args)


def msg(conn: Conn, typ: str | int, payload: bytes = b"", req_id: int = 0,
        tx_id: int = 0) -> None:  # fmt: skip
    """Send one packet; ``typ`` is a name from TYPES or a raw number."""
    code = T[typ] if isinstance(typ, str) else typ
    conn.send(HEADER.pack(code, req_id, tx_id, len(payload)) + payload)


def reply(conn: Conn, timeout: float | None = None) -> Reply:
    """Read one packet: a reply or a watch event."""
    t, r, x, n = HEADER.unpack(conn.recv_exact(HEADER.size, timeout))
    return Reply(tname(t), r, x, conn.recv_exact(n) if n else b"")


def rpc(conn: Conn, typ: str | int, *args: str | bytes, req_id: int = 7, tx_id: int = 0,
        raw: bytes | None = None) -> Reply:  # fmt: skip
    """Send a request made of NUL-terminated ``args`` (or ``raw``) and return its reply;
    watch events that arrive first go to ``conn.events``."""
    msg(conn, typ, raw if raw is not None else encode_args(args), req_id, tx_id)
    while True:
        r = reply(conn)
        if r.type != "WATCH_EVENT":
            return r
        conn.events.append(r)


def next_event(conn: Conn, timeout: float = 2.0) -> tuple[bytes, bytes]:
    """The next watch event as (path, token), waiting for it if none is kept."""
    while not conn.events:
        r = reply(conn, timeout)
        if r.type == "WATCH_EVENT":
            conn.events.append(r)
    path, token = conn.events.pop(0).payload.split(b"\0")[:2]
    return path, token


def write(conn: Conn, path: str | bytes, value: str | bytes, tx_id: int = 0) -> Reply:
    """WRITE: the path, NUL, then the value (not terminated)."""
    p = path if isinstance(path, bytes) else path.encode()
    v = value if isinstance(value, bytes) else value.encode()
    return rpc(conn, "WRITE", raw=p + b"\0" + v, tx_id=tx_id)


def fake_dir(path: str | None = None) -> str:
    d = path or os.environ.get("XSFAKE_DIR")
    if not d:
        raise ValueError("no shim directory given and $XSFAKE_DIR is unset")
    return d


def kick_virq(fdir: str | None = None) -> None:
    """Make the daemon re-read every domain's state (after creating a marker)."""
    kick = Kicker(fake_dir(fdir), VIRQ_PORT)
    kick()
    kick.close()


def introduce_guest(dom0: Conn, domid: int, fdir: str | None = None,
                    remote_port: int | None = None, timeout: float = 5.0) -> RingConn:  # fmt: skip
    """INTRODUCE ``domid`` through ``dom0`` (unless it already is) and return the guest
    side of its ring.  /local/domain/<domid> is left to the caller, as to a toolstack."""
    fdir = fake_dir(fdir)
    ring = os.path.join(fdir, f"ring-{domid}")
    if rpc(dom0, "IS_DOMAIN_INTRODUCED", str(domid)).payload != b"T\0":
        if os.path.exists(ring):
            os.unlink(ring)  # start from zeroed ring indexes
        port = remote_port if remote_port is not None else domid + 1
        r = rpc(dom0, "INTRODUCE", str(domid), "0", str(port))
        if r.type != "INTRODUCE":
            raise RuntimeError(f"INTRODUCE {domid} failed: {r!r}")
    with open(os.path.join(fdir, f"port-{domid}")) as f:
        local_port = int(f.read())
    return RingConn(ring, Kicker(fdir, local_port), timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-s",
        "--socket",
        default=os.environ.get("XENSTORED_PATH"),
        help="daemon socket (default $XENSTORED_PATH)",
    )
    ap.add_argument(
        "-g",
        "--guest",
        type=int,
        metavar="DOMID",
        help="send over this domain's ring (the realxs shim's)",
    )
    ap.add_argument("-t", "--tx", type=int, default=0, metavar="TXID", help="tx_id field")
    ap.add_argument("type", help="message type name or number")
    ap.add_argument("args", nargs="*")
    a = ap.parse_args(argv)
    if not a.socket:
        ap.error("no socket: pass -s or set XENSTORED_PATH")
    conn: Conn = SockConn(a.socket)
    if a.guest is not None:
        conn = introduce_guest(conn, a.guest)
    typ: str | int = int(a.type, 0) if a.type[0].isdigit() else a.type.upper()
    if typ == "WRITE" and len(a.args) >= 2:
        payload = encode_args(a.args[:-1]) + a.args[-1].encode()
    else:
        payload = encode_args(a.args)
    r = rpc(conn, typ, raw=payload, tx_id=a.tx)
    print(f"{r.type} req_id={r.req_id} tx_id={r.tx_id} {r.payload!r}")
    return 1 if r.type == "ERROR" else 0


if __name__ == "__main__":
    sys.exit(main())
