"""The client side of the xenstore protocol, sans I/O (after h11).

`ClientProtocol` turns requests into bytes and received bytes into `Reply` and
`WatchEvent` objects; it never touches a socket, a clock or an event loop, so every
rule about matching replies can be tested with plain byte strings.

Matching replies to requests: each request gets a fresh non-zero ``req_id`` and is
kept, oldest first, until its reply arrives.  A reply whose ``req_id`` names an
outstanding request completes that request (servers may answer out of order).  A
reply whose ``req_id`` names none - libxenstore always sends 0, and some servers echo
0 or answer strictly in order - completes the *oldest* outstanding request.  A request
given up on (timeout, cancellation) stays in the queue as *abandoned* until its reply
arrives and is then dropped, so the FIFO fallback stays in step with the server.

`DirectoryPager` is libxenstore's ``xs_directory_part()`` loop as a state machine.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from stubdom.wire.constants import PAYLOAD_MAX, Op
from stubdom.wire.packet import HEADER, DecodeError, Packet, PacketDecoder, PayloadTooLong, op_name
from stubdom.xenstore.errors import ProtocolError, error_from_name
from stubdom.xenstore.payloads import (
    DEFAULT_MAX_REPLY,
    ID_LIMIT,
    args_payload,
    error_name,
    opened_transaction,
    parse_bool,
    parse_perms,
    parse_single,
    parse_strings,
    parse_tx_id,
    perms_payload,
    wire_text,
    write_payload,
)

log = logging.getLogger(__name__)

# Plain ints for the hot path: comparing with them needs no enum attribute lookup.
_ERROR = int(Op.ERROR)
_WATCH_EVENT = int(Op.WATCH_EVENT)
_pack_header = HEADER.pack
#: ``tuple.__new__``: a `Reply` or `WatchEvent` built without a Python-level call.
_new: Final = tuple.__new__


class WatchEvent(NamedTuple):
    """A WATCH_EVENT: ``path`` changed (as the server spells it), for watch ``token``.
    ``seq`` is its place among everything received on the connection (`Reply.seq`):
    where it came, not what it says, so equality leaves it out.

    A named tuple, built in C by the decoder (`_new`): a frozen dataclass costs a
    Python ``__init__`` per event, four times the time."""

    path: str
    token: str
    seq: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WatchEvent):
            return NotImplemented
        return self[0] == other[0] and self[1] == other[1]

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((self[0], self[1]))


@dataclass(eq=False, slots=True)
class Request:
    """One request sent and not yet answered (identity matters, not value)."""

    op: int
    payload: bytes
    req_id: int
    tx_id: int = 0
    abandoned: bool = False

    @property
    def op_name(self) -> str:
        return op_name(self.op)


class Reply(NamedTuple):
    """The server's answer to ``request``: either the same type or ERROR.

    ``seq`` numbers replies and watch events in the order they arrived: a server sends
    one connection's packets in the order it made them, so an event with a higher
    ``seq`` than a reply was made after the request was served -- what a read showed is
    still so as long as no event on that path came after its reply.

    A named tuple built in C by the decoder (`_new`), as `WatchEvent`."""

    request: Request
    packet: Packet
    seq: int = 0

    @property
    def is_error(self) -> bool:
        return self.packet.op == _ERROR

    @property
    def error_name(self) -> str | None:
        """The errno name of an ERROR reply (``"ENOENT"``), else None."""
        if not self.is_error:
            return None
        return error_name(self.packet.payload)

    @property
    def payload(self) -> bytes:
        return self.packet.payload


class ClientProtocol:
    """Request/reply bookkeeping and framing for one xenstore connection."""

    def __init__(self, *, max_reply: int = DEFAULT_MAX_REPLY, received: int = 0) -> None:
        self._decoder = PacketDecoder(max_payload=max_reply)
        self._pending: OrderedDict[int, Request] = OrderedDict()
        self._events: list[Reply | WatchEvent] = []
        self._next_id = 1
        #: Packets received so far (``received`` carries the count of an earlier
        #: connection on, so ``seq`` keeps growing across a reconnection).
        self.received = received
        #: Transactions the server opened for a TRANSACTION_START nobody waits for any
        #: more (`abandon`, `orphaned`): the shell ends them (`take_orphans`).
        self.orphans: list[int] = []

    # -- sending ---------------------------------------------------------------

    def _allocate_id(self) -> int:
        for _ in range(len(self._pending) + 1):
            req_id = self._next_id
            self._next_id = req_id + 1 if req_id + 1 < ID_LIMIT else 1
            if req_id not in self._pending:
                return req_id
        raise RuntimeError("no free req_id")  # pragma: no cover - needs 2**32 requests

    def send(self, op: int, payload: bytes, tx_id: int = 0) -> tuple[Request, bytes]:
        """Record a request; return it and the bytes to write, as one message.

        Raises `stubdom.wire.PayloadTooLong` (nothing is recorded) if the payload
        exceeds ``PAYLOAD_MAX``.
        """
        size = len(payload)
        if size > PAYLOAD_MAX:
            raise PayloadTooLong(size)
        req_id = self._next_id
        if req_id in self._pending or req_id + 1 >= ID_LIMIT:
            req_id = self._allocate_id()  # a wrap, or an id still outstanding
        else:
            self._next_id = req_id + 1
        req = Request(op, payload, req_id, tx_id)
        self._pending[req_id] = req
        return req, _pack_header(op, req_id, tx_id, size) + payload

    def abandon(self, request: Request) -> None:
        """Nobody waits for this reply any more; drop it when it comes."""
        if self._pending.get(request.req_id) is request:
            request.abandoned = True

    @property
    def outstanding(self) -> list[Request]:
        """Requests sent and not answered, oldest first (abandoned ones included)."""
        return list(self._pending.values())

    def clear(self) -> list[Request]:
        """Forget every outstanding request (the connection is gone); return them."""
        out = list(self._pending.values())
        self._pending.clear()
        return out

    # -- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server, split anywhere; raises `ProtocolError`.  What
        they complete is queued for `next_event` and `events`."""
        self._events = self.receive(data)

    def receive(self, data: bytes) -> list[Reply | WatchEvent]:
        """Feed bytes from the server, split anywhere; raises `ProtocolError`.  Returns
        (and takes from the queue) every reply and watch event decoded so far, in
        arrival order: a shell's one call per read."""
        try:
            self._decoder.feed(data)
        except DecodeError as exc:
            raise ProtocolError(f"undecodable data from the xenstore server: {exc}") from exc
        events, self._events = self._events, []
        ready = self._decoder.ready
        pending = self._pending
        while ready:
            packet = ready.popleft()
            self.received += 1
            op, payload, req_id, _ = packet
            if op == _WATCH_EVENT:
                path, _, rest = payload.partition(b"\0")
                token = rest[:-1] if rest.endswith(b"\0") else rest
                events.append(_new(WatchEvent, (  # as `wire_text`, inline
                    path.decode("utf-8", "surrogateescape"),
                    token.decode("utf-8", "surrogateescape"),
                    self.received,
                )))
                continue
            req = pending.pop(req_id, None)
            if req is None:
                if not pending:
                    log.warning("dropping reply with no outstanding request: %r", packet)
                    continue
                _, req = pending.popitem(last=False)
            if req.abandoned:
                log.debug("dropping reply to abandoned %s req_id=%d", req.op_name, req.req_id)
                self._orphan(req.op, op, payload)
                continue
            events.append(_new(Reply, (req, packet, self.received)))
        return events

    def orphaned(self, replies: list[Reply]) -> None:
        """``replies`` arrived, but whoever asked will not see them (cancelled as they
        came): a transaction one of them opened must be ended by the shell."""
        for reply in replies:
            self._orphan(reply.request.op, reply.packet[0], reply.packet[1])

    def _orphan(self, request_op: int, reply_op: int, payload: bytes) -> None:
        tx_id = opened_transaction(request_op, reply_op, payload)
        if tx_id is not None:
            self.orphans.append(tx_id)

    def take_orphans(self) -> list[int]:
        """The transactions to end (TRANSACTION_END F) since the last call."""
        orphans, self.orphans = self.orphans, []
        return orphans

    def next_event(self) -> Reply | WatchEvent | None:
        """The oldest reply or watch event decoded so far, or None."""
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[Reply | WatchEvent]:
        """Drain every decoded reply and watch event, in arrival order."""
        while self._events:
            yield self._events.pop(0)


def reply_payload(reply: Reply, what: str | None) -> bytes:
    """The payload of a reply of the request's own type; an ERROR as `XenStoreError`
    (``what``, a path or a domain, names the object in its message)."""
    packet = reply.packet
    if packet.op == reply.request.op and packet.op != _ERROR:
        return packet.payload
    name = reply.request.op_name
    if packet.op == _ERROR:
        raise error_from_name(error_name(packet.payload), op=name, path=what)
    raise ProtocolError(f"xenstore {name} {what or ''}: reply of type {packet.type_name}")


@dataclass(frozen=True, slots=True)
class DirectoryPart:
    """A DIRECTORY_PART reply: the node's generation and the raw child-list bytes."""

    generation: str
    data: bytes

    @classmethod
    def parse(cls, payload: bytes) -> DirectoryPart:
        gen, sep, data = payload.partition(b"\0")
        if not sep:
            raise ProtocolError(f"DIRECTORY_PART reply {payload[:40]!r} has no generation")
        return cls(wire_text(gen), data)


class DirectoryPager:
    """libxenstore ``xs_directory_part()``: assemble a child list from chunks.

    Ask for `offset`, `feed` the reply payload, repeat until `done`; then `names`.
    A change of generation between chunks means the list changed: start over at 0.
    """

    def __init__(self, max_restarts: int = 100) -> None:
        self.offset = 0
        self.done = False
        self.restarts = 0
        self._max_restarts = max_restarts
        self._gen: str | None = None
        self._buf = bytearray()

    def feed(self, payload: bytes) -> bool:
        """Take one reply; True when the list is complete."""
        if self.done:
            raise RuntimeError("DirectoryPager is already done")
        part = DirectoryPart.parse(payload)
        if self.offset:
            if part.generation != self._gen:
                self.restarts += 1
                if self.restarts > self._max_restarts:
                    raise ProtocolError(
                        f"directory changed {self.restarts} times while being listed"
                    )
                log.debug("generation %s -> %s: restarting listing", self._gen, part.generation)
                self.offset = 0
                self._buf.clear()
                return False
            if not part.data:
                raise ProtocolError(f"empty DIRECTORY_PART chunk at offset {self.offset}")
        else:
            self._gen = part.generation
            self._buf.clear()
        self._buf += part.data
        self.offset += len(part.data)
        if self.offset <= 1 or self._buf[self.offset - 2] == 0:
            self.done = True
        return self.done

    @property
    def names(self) -> list[str]:
        if not self.done:
            raise RuntimeError("DirectoryPager is not done yet")
        if self.offset <= 1:
            return []
        # The list ends with an extra NUL (an empty last name): drop it.
        return parse_strings(bytes(self._buf[:-1]))


__all__ = [
    "DEFAULT_MAX_REPLY",
    "ClientProtocol",
    "DirectoryPager",
    "DirectoryPart",
    "Reply",
    "Request",
    "WatchEvent",
    "args_payload",
    "parse_bool",
    "parse_perms",
    "parse_single",
    "parse_strings",
    "parse_tx_id",
    "perms_payload",
    "reply_payload",
    "write_payload",
]
