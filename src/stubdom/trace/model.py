"""Typed events from ``stubdom xenstored --trace`` lines (sans-IO parsing and pairing).

Each request (``dir: in``) is paired with its reply (``dir: out``, same connection and
``req_id``, first come first served); watch events stand alone.  Payloads are decoded
into a path (made absolute for a domain's relative paths) and, for writes, a value.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Request types that change the store.
WRITE_OPS = frozenset({"WRITE", "MKDIR", "RM", "SET_PERMS"})
#: Request types that only look at it.
READ_OPS = frozenset({"READ", "DIRECTORY", "DIRECTORY_PART", "GET_PERMS"})
WATCH_OPS = frozenset({"WATCH", "UNWATCH"})
#: Request types whose first argument is a path.
PATH_OPS = WRITE_OPS | READ_OPS | WATCH_OPS


class TraceError(ValueError):
    """A trace line that is not a packet record."""


@dataclass(frozen=True)
class Record:
    """One trace line as written by :class:`stubdom.xenstored.trace.PacketTrace`."""

    t: float
    dir: str
    conn: int
    dom: int
    type: str
    req_id: int
    tx_id: int
    payload: str


@dataclass
class Event:
    """A request with its reply, or a watch event sent to a watcher.

    ``kind`` is ``write``, ``read``, ``watch``, ``event``, ``transaction`` or ``other``.
    """

    index: int
    t: float
    conn: int
    dom: int
    op: str
    kind: str
    req_id: int
    tx_id: int
    args: list[str]
    path: str | None = None
    value: str | None = None
    token: str | None = None
    reply_type: str | None = None
    reply: str | None = None
    reply_t: float | None = None

    @property
    def error(self) -> str | None:
        """The errno name of an ``ERROR`` reply."""
        return self.reply if self.reply_type == "ERROR" else None

    @property
    def ok(self) -> bool:
        return self.reply_type is not None and self.reply_type != "ERROR"


def parse_line(line: str) -> Record:
    try:
        d = json.loads(line)
        return Record(
            t=float(d["t"]),
            dir=str(d["dir"]),
            conn=int(d["conn"]),
            dom=int(d["dom"]),
            type=str(d["type"]),
            req_id=int(d["req_id"]),
            tx_id=int(d["tx_id"]),
            payload=str(d["payload"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise TraceError(f"not a trace record: {line[:80]!r}: {e}") from None


def split_payload(payload: str) -> list[str]:
    """NUL-separated arguments, without the terminating empty one."""
    parts = payload.split("\0")
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def absolute(path: str, dom: int) -> str:
    """A domain's relative path (``device-model/1/state``) as the absolute path."""
    if path.startswith("/") or path.startswith("@") or not path:
        return path
    return f"/local/domain/{dom}/{path}"


def _kind(op: str) -> str:
    if op in WRITE_OPS:
        return "write"
    if op in READ_OPS:
        return "read"
    if op in WATCH_OPS:
        return "watch"
    if op == "WATCH_EVENT":
        return "event"
    if op.startswith("TRANSACTION"):
        return "transaction"
    return "other"


def _request(index: int, r: Record) -> Event:
    ev = Event(index, r.t, r.conn, r.dom, r.type, _kind(r.type), r.req_id, r.tx_id, [])
    if r.type == "WRITE":
        path, _, value = r.payload.partition("\0")
        ev.args = [path, value]
        ev.value = value
    else:
        ev.args = split_payload(r.payload)
    if r.type in PATH_OPS and ev.args:
        ev.path = absolute(ev.args[0], r.dom)
    if r.type in WATCH_OPS and len(ev.args) > 1:
        ev.token = ev.args[1]
    return ev


def _watch_event(index: int, r: Record) -> Event:
    args = split_payload(r.payload)
    ev = Event(index, r.t, r.conn, r.dom, r.type, "event", r.req_id, r.tx_id, args)
    if args:
        ev.path = absolute(args[0], r.dom)
    if len(args) > 1:
        ev.token = args[1]
    return ev


def pair(records: Iterable[Record]) -> list[Event]:
    """Requests paired with replies by (conn, req_id, order); watch events on their own."""
    events: list[Event] = []
    pending: dict[tuple[int, int], deque[Event]] = defaultdict(deque)
    for r in records:
        if r.dir == "in":
            ev = _request(len(events), r)
            events.append(ev)
            pending[(r.conn, r.req_id)].append(ev)
        elif r.type == "WATCH_EVENT":
            events.append(_watch_event(len(events), r))
        else:
            queue = pending.get((r.conn, r.req_id))
            if queue:
                ev = queue.popleft()
                ev.reply_type = r.type
                ev.reply = r.payload.rstrip("\0")
                ev.reply_t = r.t
            else:
                log.debug("reply without request: conn %d req %d", r.conn, r.req_id)
                ev = Event(len(events), r.t, r.conn, r.dom, r.type, "other", r.req_id, r.tx_id, [])
                ev.reply_type = r.type
                ev.reply = r.payload.rstrip("\0")
                events.append(ev)
    return events


def parse_lines(lines: Iterable[str], name: str = "the trace") -> list[Event]:
    """Events of a trace's lines; blank lines are skipped, damaged ones too.

    A crash can cut a trace's last line short, so damaged lines are skipped with one
    warning for all of them (a garbage file would otherwise log a line per line).  Lines
    none of which is a record are no trace at all: `TraceError`.
    """
    records = []
    damaged: list[tuple[int, TraceError]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(parse_line(line))
        except TraceError as e:
            damaged.append((n, e))
    if damaged and not records:
        raise TraceError(
            f"{name} is not a trace (line {damaged[0][0]} is no packet record); give a "
            "file written by 'stubdom host up --trace' or 'stubdom xenstored --trace'"
        )
    if damaged:
        log.warning("%s: skipped %d damaged line(s), the first: line %d: %s",
                    name, len(damaged), *damaged[0])
    return pair(records)


def load_trace(path: str | Path) -> list[Event]:
    """The events of a trace file; `TraceError` if it is none, `OSError` if unreadable."""
    # Payloads are JSON-escaped, so a valid trace is ASCII: undecodable bytes can only
    # be damage, which parse_line then reports as such.
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_lines(f, str(path))
