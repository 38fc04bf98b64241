"""A blocking xenstore client: one Unix socket, one request at a time, no event loop.

For short-lived programs that send a few requests and exit (``stubdom xenstore read``,
as ``xenstore-read`` does with libxenstore): importing asyncio alone costs them more
than the whole exchange, and so, nearly, does the asyncio client's sans-IO core
(`stubdom.xenstore.protocol`: its dataclasses and logging).  So this shell sits on the
wire codec and the payload helpers that core uses too (`stubdom.xenstore.payloads`) and
raises the asyncio client's errors, worded alike (`error_from_name`).  With one request
outstanding, reply matching is simple: the next packet that is not a watch event is the
reply (whatever ``req_id`` the server echoes), and a connection whose reply never came
is not used again.  No watches: a watch needs a reader running beside the requests,
which is what the asyncio client is for.

``reconnect=SECONDS`` outlives a restart of the daemon as the asyncio client does: a
request whose connection drops is sent again over a new one; one inside a transaction
fails with `TransactionConflict` instead (the daemon forgot the transaction), which
`BlockingClient.retry_transaction` answers by running the block again.
"""

from __future__ import annotations

import _socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from stubdom.wire.constants import PAYLOAD_MAX, Op
from stubdom.wire.packet import DecodeError, Packet, PacketDecoder, encode, op_name
from stubdom.wire.paths import check_client_path
from stubdom.xenstore.errors import (
    ConnectionClosed,
    ProtocolError,
    TransactionConflict,
    error_from_name,
    no_reply,
    request_too_big,
)
from stubdom.xenstore.payloads import (
    DEFAULT_MAX_REPLY,
    ID_LIMIT,
    args_payload,
    error_name,
    parse_perms,
    parse_strings,
    parse_tx_id,
    perms_payload,
)
from stubdom.xenstore.recovery import DEFAULT_TIMEOUT, Backoff, forgotten, retry_pause

if TYPE_CHECKING:
    import logging

    from stubdom.wire.perms import Perm


def _log() -> logging.Logger:
    """This module's logger, imported on first use: importing logging costs a
    ``stubdom xenstore read`` a tenth of its time, and it logs only when a connection
    drops or a transaction conflicts."""
    import logging

    return logging.getLogger(__name__)


T = TypeVar("T")

_RECV = 65536


class BlockingClient:
    """One connection to a xenstored Unix socket; not for sharing between threads."""

    def __init__(
        self,
        path: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_paths: bool = True,
        reconnect: float | None = None,
    ) -> None:
        """Connect to ``path``; OSError (its ``strerror`` says why) if nothing answers."""
        self.path = path
        self.timeout = timeout
        self.check_paths = check_paths
        self.reconnect = reconnect
        self._sock = self._open()
        self._decoder = PacketDecoder(max_payload=DEFAULT_MAX_REPLY)
        self._req_id = 0
        #: Why the connection may not carry another request (a reply never came).
        self._unusable: ConnectionClosed | None = None

    def _open(self) -> _socket.socket:
        # `_socket` is the socket type `socket` wraps; importing `socket` converts its
        # constants to enums, which costs a short-lived command more than its request.
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests --------------------------------------------------------------

    def request(self, op: Op, payload: bytes, *, tx_id: int = 0, what: str | None = None
                ) -> bytes:
        """Send one request; the reply payload, or the ERROR as `XenStoreError`.

        ``what`` (a path) only makes error messages clearer, as for `Client.request`.
        """
        if len(payload) > PAYLOAD_MAX:
            raise request_too_big(op_name(op), what, len(payload))
        deadline: float | None = None
        while True:
            try:
                reply = self._exchange(op, payload, tx_id, what)
                break
            except ConnectionClosed as lost:
                if self.reconnect is None:
                    raise
                # However often the new connections drop, the request gives up after
                # `reconnect` seconds in all.
                deadline = deadline or time.monotonic() + self.reconnect
                self._reestablish(lost, deadline)
                if tx_id:
                    raise forgotten(op_name(op), tx_id) from None
        if reply.op == Op.ERROR:
            raise error_from_name(error_name(reply.payload), op=op_name(op), path=what)
        if reply.op != op:
            raise ProtocolError(
                f"xenstore {op_name(op)} {what or ''}: reply of type {reply.type_name}"
            )
        return reply.payload

    def _exchange(self, op: Op, payload: bytes, tx_id: int, what: str | None) -> Packet:
        """Write the request, read until its reply (watch events cannot come: no watches)."""
        if self._unusable is not None:
            raise self._unusable
        self._req_id = self._req_id % (ID_LIMIT - 1) + 1
        try:
            self._sock.sendall(encode(Packet(op, payload, self._req_id, tx_id)))
            while True:
                packet = self._decoder.next_packet()
                if packet is None:
                    chunk = self._sock.recv(_RECV)
                    if not chunk:
                        raise ConnectionClosed(
                            f"xenstore connection {self.path} closed by the server")
                    self._decoder.feed(chunk)
                elif packet.op != Op.WATCH_EVENT:  # an event: nobody here waits for it
                    return packet
        except TimeoutError:
            # Its reply may still come and would be taken for the next one's.
            self._unusable = ConnectionClosed(
                f"xenstore connection {self.path}: a reply never came")
            raise no_reply(op_name(op), what, self.timeout) from None
        except DecodeError as e:
            self._unusable = ConnectionClosed(f"xenstore connection {self.path}: {e}")
            raise ProtocolError(f"undecodable data from the xenstore server: {e}") from e
        except ConnectionClosed:
            raise
        except OSError as e:
            raise ConnectionClosed(f"xenstore connection {self.path} failed: {e}") from e

    def _reestablish(self, lost: ConnectionClosed, deadline: float) -> None:
        """Connect again before ``deadline``, or raise why not (as `Client` does)."""
        assert self.reconnect is not None
        _log().info("%s; connecting again (for up to %g s)", lost, self.reconnect)
        self._sock.close()
        backoff = Backoff(lost, self.reconnect, deadline)
        while True:
            try:
                self._sock = self._open()
                self._decoder = PacketDecoder(max_payload=DEFAULT_MAX_REPLY)
                self._unusable = None
                return
            except OSError as e:
                delay = backoff.failed(e, time.monotonic())
            time.sleep(delay)

    def _path(self, path: str) -> bytes:
        if self.check_paths:
            check_client_path(path)
        return args_payload(path)

    # -- node requests (as `Client`'s) -------------------------------------------

    def read(self, path: str, *, tx_id: int = 0) -> bytes:
        return self.request(Op.READ, self._path(path), tx_id=tx_id, what=path)

    def write(self, path: str, value: bytes | str, *, tx_id: int = 0) -> None:
        """Set the value, creating the node and missing parents; str is sent as UTF-8."""
        raw = value.encode() if isinstance(value, str) else value
        self.request(Op.WRITE, self._path(path) + raw, tx_id=tx_id, what=path)

    def rm(self, path: str, *, tx_id: int = 0) -> None:
        self.request(Op.RM, self._path(path), tx_id=tx_id, what=path)

    def directory(self, path: str, *, tx_id: int = 0) -> list[str]:
        """Raw DIRECTORY: the child names, or `TooBig` if they exceed one reply."""
        return parse_strings(self.request(Op.DIRECTORY, self._path(path), tx_id=tx_id, what=path))

    def get_perms(self, path: str, *, tx_id: int = 0) -> list[Perm]:
        return parse_perms(self.request(Op.GET_PERMS, self._path(path), tx_id=tx_id, what=path))

    def set_perms(self, path: str, perms: Sequence[Perm | str], *, tx_id: int = 0) -> None:
        if not perms:
            raise ValueError("set_perms needs at least the owner entry")
        if self.check_paths:
            check_client_path(path)
        self.request(Op.SET_PERMS, perms_payload(path, perms), tx_id=tx_id, what=path)

    # -- transactions -----------------------------------------------------------

    def retry_transaction(self, fn: Callable[[int], T]) -> T:
        """Run ``fn(tx_id)`` in a fresh transaction until it commits, as
        `Client.retry_transaction` does: on `TransactionConflict` the block runs again
        after a random pause, until `recovery.RETRY_PATIENCE` seconds have passed."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._in_transaction(fn)
            except TransactionConflict:
                pause = retry_pause(attempt, None, time.monotonic() - started)
                if pause is None:
                    raise
                _log().debug("transaction conflict, attempt %d", attempt)
                time.sleep(pause)

    def _in_transaction(self, fn: Callable[[int], T]) -> T:
        tx_id = parse_tx_id(self.request(Op.TRANSACTION_START, b"\0"))
        try:
            result = fn(tx_id)
        except BaseException:
            try:
                self.request(Op.TRANSACTION_END, b"F\0", tx_id=tx_id,
                             what=f"transaction {tx_id}")
            except (OSError, ProtocolError) as err:
                _log().debug("aborting transaction %d failed: %s", tx_id, err)
            raise
        self.request(Op.TRANSACTION_END, b"T\0", tx_id=tx_id, what=f"transaction {tx_id}")
        return result


__all__ = ["DEFAULT_TIMEOUT", "BlockingClient"]
