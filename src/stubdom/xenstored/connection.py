"""One client connection as the daemon sees it: identity, watches, transactions, output."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, ClassVar, Final

from stubdom.wire.constants import PAYLOAD_MAX, Op
from stubdom.wire.packet import RawPacket
from stubdom.wire.paths import domain_path

if TYPE_CHECKING:
    from stubdom.xenstored.transaction import Transaction
    from stubdom.xenstored.watches import Watch


_WATCH_EVENT: Final = int(Op.WATCH_EVENT)
#: A packet queued for a client (`RawPacket`: the shell only packs it).
Output = RawPacket


class Connection:
    """One client: the dom0 socket, or a domain's connection."""

    _ids: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(self, domid: int, privileged: bool) -> None:
        self.cid = next(Connection._ids)
        self.domid = domid
        self.privileged = privileged
        self.watches: dict[tuple[str, bytes], Watch] = {}
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        #: Relative paths this connection sent -> canonical: a guest names its nodes
        #: relative to its home.  Bare (`XenStored.canonical`) and as a request's
        #: NUL-terminated only argument (`XenStored.path_arg`), as the daemon keeps
        #: plain absolute ones.
        self.paths: dict[bytes, str] = {}
        self.arg_paths: dict[bytes, str] = {}
        #: Output not yet taken by the shell.
        self.outbox: list[Output] = []
        #: In the core's list of connections given output (`XenStored.pending`).
        self.listed = False
        self._queued_events: set[bytes] = set()
        self.closed = False
        #: Requests from this connection whose replies or events are still queued.
        self.outstanding = 0

    @property
    def implicit_path(self) -> str:
        return domain_path(self.domid)

    def queue_event(self, path: str, token: bytes) -> None:
        payload = path.encode() + b"\0" + token + b"\0"
        if len(payload) > PAYLOAD_MAX:
            return  # XSA-324: an over-long event is dropped, never sent
        if path[0] != "@":
            # cx drops an event identical to one still queued (XSA-326).
            if payload in self._queued_events:
                return
            self._queued_events.add(payload)
        self.outbox.append((_WATCH_EVENT, payload, 0, 0))

    def take_output(self) -> list[Output]:
        out = self.outbox
        self.outbox = []
        if self._queued_events:
            self._queued_events.clear()
        return out

    def __repr__(self) -> str:
        kind = "priv" if self.privileged else "unpriv"
        return f"<Connection #{self.cid} dom{self.domid} {kind}>"
