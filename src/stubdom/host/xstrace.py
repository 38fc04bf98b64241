"""One packet trace for a host whose xenstored cannot write ours.

Our xenstored records every packet itself (`stubdom.xenstored.trace.PacketTrace`).
cxenstored and oxenstored cannot (cx's ``-T`` is another format and costs a write per
byte), so a host that runs one records at the two places every packet passes and that
the host owns: the proxy in front of dom0's socket (`stubdom.host.xsproxy`) and each
domain's relay onto its ring (`stubdom.host.xsrelay`).  They share one `TraceWriter`,
so their lines go to one file and ``conn`` numbers each connection once across the
whole host, as our daemon's do.

Each connection is recorded as the daemon would show it to that connection alone:
``in`` is what the client sent, ``out`` what it received, with the client's own
``req_id``s and watch tokens, not the rewritten ones a relay sends up the ring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from stubdom.wire.packet import DecodeError, Packet, PacketDecoder
from stubdom.xenstored.trace import PacketTrace

log = logging.getLogger(__name__)


class TraceWriter:
    """The host's trace: the lines' destination and the connection numbers."""

    def __init__(self, trace: PacketTrace) -> None:
        self.trace = trace
        self._next_conn = 1

    def domain(self, dom: int) -> DomainTrace:
        """Where the connections of domain ``dom`` are traced."""
        return DomainTrace(self, dom)

    def connection(self, dom: int) -> ConnTrace:
        """A new connection of ``dom``, with a number no other connection had."""
        conn = self._next_conn
        self._next_conn += 1
        return ConnTrace(self.trace, conn, dom)

    def close(self) -> None:
        self.trace.close()


@dataclass(frozen=True)
class DomainTrace:
    """The trace of one domain's connections (a relay's, or dom0's proxy's)."""

    writer: TraceWriter
    dom: int

    def connection(self) -> ConnTrace:
        return self.writer.connection(self.dom)


class ConnTrace:
    """One client connection's records, made from its byte streams or its packets.

    A stream that stops decoding (an over-long header) stops being recorded: the daemon
    or the relay closes that connection anyway.
    """

    def __init__(self, trace: PacketTrace, conn: int, dom: int) -> None:
        self.trace = trace
        self.conn = conn
        self.dom = dom
        self._requests = PacketDecoder()
        self._replies = PacketDecoder()

    def requests(self, data: bytes) -> None:
        """Bytes the client sent, split anywhere: recorded ``in``, whole packets only."""
        self._decode(self._requests, "in", data)

    def replies(self, data: bytes) -> None:
        """Bytes the client is sent, split anywhere: recorded ``out``."""
        self._decode(self._replies, "out", data)

    def reply(self, packet: Packet) -> None:
        """One packet the client is sent."""
        self.trace.record("out", self.conn, self.dom, packet)

    def _decode(self, decoder: PacketDecoder, direction: str, data: bytes) -> None:
        try:
            decoder.feed(data)
        except DecodeError as e:  # the whole packets before the bad header still count
            log.debug("conn %d (domain %d): %s stream not traced further: %s",
                      self.conn, self.dom, direction, e)
        ready = decoder.ready
        while ready:
            self.trace.record(direction, self.conn, self.dom, ready.popleft())


__all__ = ["ConnTrace", "DomainTrace", "TraceWriter"]
