"""A minimal blocking xenstore client for the benchmarks.

The same few lines talk to every daemon (ours, cx, ox), so the client costs the same
against each, and nothing of ours (codec, asyncio client) is in the measured path.
"""

from __future__ import annotations

import socket
import struct

#: The wire header: type, req_id, tx_id, payload length (host order).
HDR = struct.Struct("=4I")


class RawConnection:
    """One Unix-socket connection: send a request, read whole packets."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)

    def send(self, op: int, payload: bytes, tx: int = 0) -> None:
        self.s.sendall(HDR.pack(op, 0, tx, len(payload)) + payload)

    def packet(self) -> tuple[int, bytes]:
        """The next packet (a reply or an event): its type and payload."""
        rop, _, _, n = HDR.unpack(self._exact(16))
        return rop, self._exact(n)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk
        return buf

    def close(self) -> None:
        self.s.close()
