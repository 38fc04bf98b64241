"""Many xenstore clients on one upstream connection: the sans-IO multiplexer core.

On real Xen a domain has one xenstore connection (its ring) and its kernel shares it
among every program that opens the xenbus device.  `Mux` does the sharing as values:
feed it what clients and the daemon send, and it answers the `Action` list to carry
out (packets upstream, packets to a client, clients to disconnect).  Each client sees
what a connection of its own would show it:

- ``req_id`` is rewritten to a fresh upstream id and restored on the reply;
- WATCH/UNWATCH tokens get the client's number as prefix (``<n>:<token>``), so two
  clients may watch the same path with the same token; events are routed by it and
  the client's own token is put back.  The mapping is a function, not a table, so a
  duplicate WATCH or an UNWATCH of a token never set reaches the daemon, which gives
  EEXIST or ENOENT as it would to a connection of its own;
- a request in a transaction the client did not start is answered ENOENT here, as the
  daemon would answer a transaction of another connection (the daemon cannot tell
  the clients apart);
- RESET_WATCHES ends only the client's own watches and transactions;
- each client gets its replies in the order of its requests (the daemons answer in
  order; an answer made here waits for the replies before it), and its events as
  they come, so it sees the daemon's order;
- a client that goes has its transactions ended ("F") and its watches removed
  upstream, replies discarded; a transaction that starts after it went is ended too.

Everything else goes upstream untouched, types a guest may not use included: the
daemon decides permissions.  What cannot be relayed is refused as the daemons would: a
WATCH/UNWATCH that is not exactly two strings gets EINVAL (one the token prefix would
make too long, E2BIG), and a client sending an over-long header is disconnected, as
the daemons disconnect a socket client that does.  When the upstream connection is
lost, every client is, since its state in the daemon went with it.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from stubdom.wire.constants import OK, PAYLOAD_MAX, Op
from stubdom.wire.packet import DecodeError, Packet, PacketDecoder, error_packet
from stubdom.xenstore.payloads import opened_transaction

log = logging.getLogger(__name__)

_REQ_ID_LIMIT = 1 << 32


class Upstream(NamedTuple):
    """Send ``packet`` on the upstream connection."""

    packet: Packet


class Deliver(NamedTuple):
    """Send ``packet`` to client ``client``."""

    client: int
    packet: Packet


class Disconnect(NamedTuple):
    """Close client ``client``; the mux has already forgotten it."""

    client: int
    reason: str


class CloseUpstream(NamedTuple):
    """The upstream stream cannot be decoded: close it (then call `Mux.upstream_lost`)."""

    reason: str


Action = Upstream | Deliver | Disconnect | CloseUpstream


@dataclass(eq=False)
class _Slot:
    """A place in a client's output order, filled when its packet is known."""

    packet: Packet | None = None


@dataclass(eq=False)
class _Client:
    cid: int
    decoder: PacketDecoder = field(default_factory=PacketDecoder)
    #: Replies not yet delivered, in request order (an answer made here waits for the
    #: replies before it).
    queue: deque[_Slot] = field(default_factory=deque)
    #: Transactions the daemon started for this client.
    transactions: set[int] = field(default_factory=set)
    #: (path, the client's token) of every watch the client may have set, erring
    #: towards too many: an extra UNWATCH at clean-up only earns a discarded ENOENT.
    watches: set[tuple[bytes, bytes]] = field(default_factory=set)
    alive: bool = True


@dataclass(eq=False)
class _Inflight:
    """A request upstream awaiting its reply."""

    client: _Client | None  # None: the mux's own clean-up; the reply is discarded
    request: Packet  # as the client sent it (its req_id, its token)
    slot: _Slot | None = None
    #: What the client gets instead of the daemon's reply (an emulated request).
    answer: Packet | None = None


def upstream_token(cid: int, token: bytes) -> bytes:
    """The token the daemon sees for client ``cid``'s ``token``."""
    return b"%d:%s" % (cid, token)


def split_token(token: bytes) -> tuple[int, bytes] | None:
    """(client, the client's token) from an upstream token, None if it is not one."""
    prefix, sep, own = token.partition(b":")
    if not sep or not prefix.isdigit():
        return None
    return int(prefix), own


def _watch_args(payload: bytes) -> tuple[bytes, bytes] | None:
    """(path, token) of a WATCH/UNWATCH: exactly two NUL-terminated strings, as the
    daemons insist (anything else is their EINVAL)."""
    parts = payload.split(b"\0")
    if len(parts) != 3 or parts[2]:
        return None
    return parts[0], parts[1]


def _error_name(reply: Packet) -> bytes | None:
    return reply.payload.rstrip(b"\0") if reply.op == Op.ERROR else None


class Mux:
    """The multiplexer's state: clients, requests in flight, the upstream decoder."""

    def __init__(self) -> None:
        self._clients: dict[int, _Client] = {}
        self._inflight: dict[int, _Inflight] = {}
        self._next_cid = 1
        self._next_req_id = 1
        self._upstream = PacketDecoder()

    @property
    def clients(self) -> int:
        """How many clients are connected."""
        return len(self._clients)

    def open_client(self) -> int:
        """A new client's number; numbers are never reused, so a stale event or reply
        can never reach a later client."""
        cid = self._next_cid
        self._next_cid += 1
        self._clients[cid] = _Client(cid)
        return cid

    # -- from clients ---------------------------------------------------------------

    def client_bytes(self, cid: int, data: bytes) -> list[Action]:
        """Bytes from client ``cid``, split anywhere."""
        client = self._clients.get(cid)
        if client is None:
            return []
        actions: list[Action] = []
        try:
            client.decoder.feed(data)
        except DecodeError as exc:
            # Whole packets before the bad header are still served, as the daemons do.
            for packet in client.decoder:
                self._request(client, packet, actions)
            self._drop(client, actions)
            actions.append(Disconnect(cid, str(exc)))
            return actions
        for packet in client.decoder:
            self._request(client, packet, actions)
        return actions

    def client_closed(self, cid: int) -> list[Action]:
        """Client ``cid`` went: end its transactions, remove its watches."""
        client = self._clients.get(cid)
        actions: list[Action] = []
        if client is not None:
            self._drop(client, actions)
        return actions

    def _request(self, client: _Client, packet: Packet, actions: list[Action]) -> None:
        if packet.tx_id and packet.tx_id not in client.transactions:
            self._answer(client, error_packet(packet, "ENOENT"), actions)
            return
        upstream = packet
        if packet.op in (Op.WATCH, Op.UNWATCH):
            args = _watch_args(packet.payload)
            if args is None:
                self._answer(client, error_packet(packet, "EINVAL"), actions)
                return
            path, token = args
            payload = path + b"\0" + upstream_token(client.cid, token) + b"\0"
            if len(payload) > PAYLOAD_MAX:
                self._answer(client, error_packet(packet, "E2BIG"), actions)
                return
            if packet.op == Op.WATCH:
                client.watches.add((path, token))
            upstream = packet._replace(payload=payload)
        elif packet.op == Op.RESET_WATCHES:
            self._reset(client, packet, actions)
            return
        slot = _Slot()
        client.queue.append(slot)
        self._send(_Inflight(client, packet, slot), upstream, actions)

    def _reset(self, client: _Client, packet: Packet, actions: list[Action]) -> None:
        """RESET_WATCHES for one client: the daemon's would end every client's."""
        ok = Packet(packet.op, OK, packet.req_id, packet.tx_id)
        cleanup = self._cleanup(client)
        if not cleanup:
            self._answer(client, ok, actions)
            return
        for upstream in cleanup[:-1]:
            self._send(_Inflight(None, upstream), upstream, actions)
        # The last clean-up request carries the answer, so that it reaches the client
        # after every event the daemon sent before it removed the watches.
        slot = _Slot()
        client.queue.append(slot)
        self._send(_Inflight(client, packet, slot, answer=ok), cleanup[-1], actions)

    def _answer(self, client: _Client, packet: Packet, actions: list[Action]) -> None:
        """An answer made here, delivered in its request's place."""
        client.queue.append(_Slot(packet))
        self._flush(client, actions)

    # -- from upstream --------------------------------------------------------------

    def upstream_bytes(self, data: bytes) -> list[Action]:
        """Bytes from the daemon, split anywhere."""
        actions: list[Action] = []
        try:
            self._upstream.feed(data)
        except DecodeError as exc:
            for packet in self._upstream:
                self._reply(packet, actions)
            actions.append(CloseUpstream(str(exc)))
            return actions
        for packet in self._upstream:
            self._reply(packet, actions)
        return actions

    def upstream_lost(self, reason: str) -> list[Action]:
        """The upstream connection is gone: so is every client's state in the daemon,
        and every client is disconnected.  The mux is then as new."""
        actions: list[Action] = []
        for client in list(self._clients.values()):
            client.alive = False
            actions.append(Disconnect(client.cid, f"upstream lost: {reason}"))
        self._clients.clear()
        self._inflight.clear()
        self._upstream = PacketDecoder()
        return actions

    def _reply(self, packet: Packet, actions: list[Action]) -> None:
        if packet.op == Op.WATCH_EVENT:
            self._event(packet, actions)
            return
        entry = self._inflight.pop(packet.req_id, None)
        if entry is None:
            log.warning("reply %r matches no request; dropped", packet)
            return
        client = entry.client
        if client is None:
            if packet.op == Op.ERROR:
                log.debug("clean-up %r answered %r", entry.request, packet)
            return
        if not client.alive:
            self._orphan_reply(entry.request, packet, actions)
            return
        if entry.answer is not None:
            packet = entry.answer
        else:
            self._track(client, entry.request, packet)
            packet = packet._replace(req_id=entry.request.req_id)
        assert entry.slot is not None
        entry.slot.packet = packet
        self._flush(client, actions)

    def _track(self, client: _Client, request: Packet, reply: Packet) -> None:
        """Keep the client's transactions and watches as the daemon's reply says."""
        error = _error_name(reply)
        if request.op == Op.TRANSACTION_START and error is None:
            try:
                client.transactions.add(int(reply.payload.rstrip(b"\0")))
            except ValueError:
                log.warning("TRANSACTION_START answered %r; not tracked", reply.payload)
        elif request.op == Op.TRANSACTION_END and error != b"EINVAL":
            # Only a malformed argument leaves the transaction open.
            client.transactions.discard(request.tx_id)
        elif request.op in (Op.WATCH, Op.UNWATCH):
            args = _watch_args(request.payload)
            assert args is not None
            # A failed WATCH set nothing, unless EEXIST says an equal one is there; a
            # successful UNWATCH removed it.  Either way a WATCH of it still in flight
            # may set it again (after its own reply has gone): it stays.
            failed_watch = request.op == Op.WATCH and error not in (None, b"EEXIST")
            removed = failed_watch or (request.op == Op.UNWATCH and error is None)
            if removed and not self._watch_in_flight(client, args):
                client.watches.discard(args)

    def _watch_in_flight(self, client: _Client, args: tuple[bytes, bytes]) -> bool:
        return any(
            entry.client is client
            and entry.request.op == Op.WATCH
            and _watch_args(entry.request.payload) == args
            for entry in self._inflight.values()
        )

    def _orphan_reply(self, request: Packet, reply: Packet, actions: list[Action]) -> None:
        """A reply for a client that went: dropped, but a transaction it started is
        ended, since nobody else will."""
        tx_id = opened_transaction(request.op, reply.op, reply.payload)
        if tx_id is not None:
            end = Packet(Op.TRANSACTION_END, b"F\0", 0, tx_id)
            self._send(_Inflight(None, end), end, actions)

    def _event(self, packet: Packet, actions: list[Action]) -> None:
        path, _, rest = packet.payload.partition(b"\0")
        token, sep, tail = rest.partition(b"\0")
        owner = split_token(token)
        client = self._clients.get(owner[0]) if owner is not None else None
        if owner is None or client is None:
            if owner is None:
                log.warning("watch event %r with a token the mux never made", packet)
            return
        # Straight through: the daemon sent it after every reply that came before it,
        # and the replies still due come after it.
        event = packet._replace(payload=path + b"\0" + owner[1] + sep + tail)
        actions.append(Deliver(client.cid, event))

    # -- helpers --------------------------------------------------------------------

    def _send(self, entry: _Inflight, packet: Packet, actions: list[Action]) -> None:
        req_id = self._next_req_id
        while req_id in self._inflight:
            req_id = (req_id + 1) % _REQ_ID_LIMIT
        self._next_req_id = (req_id + 1) % _REQ_ID_LIMIT
        self._inflight[req_id] = entry
        actions.append(Upstream(packet._replace(req_id=req_id)))

    def _flush(self, client: _Client, actions: list[Action]) -> None:
        queue = client.queue
        while queue and (packet := queue[0].packet) is not None:
            queue.popleft()
            actions.append(Deliver(client.cid, packet))

    def _cleanup(self, client: _Client) -> list[Packet]:
        """The requests that end the client's transactions and remove its watches."""
        packets = [
            Packet(Op.TRANSACTION_END, b"F\0", 0, tx_id) for tx_id in sorted(client.transactions)
        ]
        packets += [
            Packet(Op.UNWATCH, path + b"\0" + upstream_token(client.cid, token) + b"\0")
            for path, token in sorted(client.watches)
        ]
        client.transactions.clear()
        client.watches.clear()
        return packets

    def _drop(self, client: _Client, actions: list[Action]) -> None:
        client.alive = False
        del self._clients[client.cid]
        client.queue.clear()
        for packet in self._cleanup(client):
            self._send(_Inflight(None, packet), packet, actions)
        log.debug("client %d gone; %d requests in flight", client.cid, len(self._inflight))


__all__ = [
    "Action",
    "CloseUpstream",
    "Deliver",
    "Disconnect",
    "Mux",
    "Upstream",
    "split_token",
    "upstream_token",
]
