"""One request to the host daemon's API over a plain blocking socket.

For short-lived commands (``stubdom list``, as ``xl list``) that send one request and
exit: importing asyncio alone would cost them more than the exchange.  The bytes and the
errors are `RemoteHypervisor`'s, from the same codec (`stubdom.host.apicodec`).
"""

from __future__ import annotations

import _socket
import os
from typing import TypeVar

from stubdom.host.apicodec import (
    MAX_LINE,
    ApiProtocolError,
    HostNotRunning,
    Request,
    decode_reply,
    encode_request,
    lost_during,
    unreachable,
)

R = TypeVar("R")


def call(run_dir: str | os.PathLike[str], req: Request[R]) -> R:
    """Send ``req`` to the daemon of ``run_dir``; its decoded result, or its error
    (`HostNotRunning` when nothing listens), as `RemoteHypervisor.call` raises them."""
    socket_path = os.path.join(os.fspath(run_dir), "host.sock")
    # `_socket` is the socket type `socket` wraps, without the cost of importing
    # `socket` (it converts its constants to enums at import).
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise HostNotRunning(run_dir) from None
        except OSError as e:
            raise unreachable(socket_path, e) from None
        try:
            sock.sendall(encode_request(1, req))
            line = _read_line(sock, req.op)
        except ConnectionError:
            line = b""
    finally:
        sock.close()
    if not line.endswith(b"\n"):
        raise lost_during(str(run_dir), req.op)
    reply = decode_reply(line)
    if reply.error is not None:
        raise reply.error.to_exception()
    if reply.id != 1:
        raise ApiProtocolError(f"{req.op}: reply for request {reply.id}, expected 1")
    return req.decode_result(reply.result)


def _read_line(sock: _socket.socket, op: str) -> bytes:
    """Up to and with the first newline, or what came before the connection ended."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ApiProtocolError(f"{op}: reply longer than {MAX_LINE} bytes")
    return bytes(buf)
