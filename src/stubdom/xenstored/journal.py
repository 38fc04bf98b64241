"""The write-ahead journal's format, sans-IO: tree changes to records and back.

A record is everything one request changed (a transaction commit is one request), so
replay is all-or-nothing per request.  Framing: ``b"XSJ1"``, payload length and CRC-32
(little-endian u32s), then the payload, UTF-8 JSON ``{"seq": N, "ops": [...]}``.
Sequence numbers rise by one from record to record; the snapshot names the last one it
contains, so records it already holds are skipped on replay (a crash between writing a
snapshot and emptying the journal loses nothing and doubles nothing).

Ops carry whole nodes except for the child list, which is given relative to the node
being replaced when that is shorter (adding the 10,001st child must not rewrite 10,000
names):

- ``["put", path, value_b64, perms, ignored, children]`` where ``children`` is ``null``
  (unchanged), ``["=", names]`` (exactly these) or ``["+", added, removed]`` (drop the
  removed names, append the added ones);
- ``["del", path]``.

A ``put`` of ``@introduceDomain`` or ``@releaseDomain`` sets that name's permissions.
Introductions are kept too, so that a restarted daemon listens for its domains again:
``["dom", domid, port, target, target_refs]`` (introduced, with that event channel port,
SET_TARGET and count of stubdomains targeting it) and ``["undom", domid]`` (released).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stubdom.wire.perms import Perm, parse_perm
from stubdom.xenstored.domains import Domain
from stubdom.xenstored.store import Node, Store

MAGIC = b"XSJ1"
_HEADER = struct.Struct("<4sII")
HEADER_SIZE = _HEADER.size
#: A payload larger than this is damage, not a record (a whole tree is far smaller).
MAX_PAYLOAD = 256 * 1024 * 1024

#: One change as the store reports it: (path, new node or None for a deletion, old node).
Change = tuple[str, Node | None, Node | None]
Op = list[Any]


class JournalError(ValueError):
    """A record that cannot be decoded or applied."""


def children_spec(new: Node, old: Node | None) -> list[Any] | None:
    """The shortest exact description of ``new``'s child list given ``old``'s."""
    names = list(new.children)
    if old is None:
        return ["=", names] if names else None
    old_names = list(old.children)
    if names == old_names:
        return None
    kept = [n for n in old_names if n in new.children]
    added = [n for n in names if n not in old.children]
    removed = [n for n in old_names if n not in new.children]
    if kept + added == names and len(added) + len(removed) < len(names):
        return ["+", added, removed]
    return ["=", names]


def node_fields(node: Node) -> list[Any]:
    """A node without its children: ``[value_b64, perms, ignored]`` (journal and snapshot)."""
    return [
        base64.b64encode(node.value).decode("ascii"),
        [str(p) for p in node.perms],
        sorted(node.ignored),
    ]


def perms_from(texts: Sequence[str]) -> tuple[Perm, ...]:
    perms = tuple(parse_perm(p) for p in texts)
    if not perms:
        raise JournalError("a permission vector without its owner entry")
    return perms


def node_from_fields(value: str, perms: Sequence[str], ignored: Sequence[int]) -> Node:
    """The inverse of `node_fields` (children are added by the caller)."""
    return Node(
        base64.b64decode(value, validate=True),
        perms_from(perms),
        ignored=frozenset(int(i) for i in ignored),
    )


def encode_ops(changes: Sequence[Change]) -> list[Op]:
    ops: list[Op] = []
    for path, new, old in changes:
        if new is None:
            ops.append(["del", path])
            continue
        ops.append(["put", path, *node_fields(new), children_spec(new, old)])
    return ops


def encode_domains(domains: dict[int, Domain], changed: set[int]) -> list[Op]:
    """The introductions of ``changed`` domains as they stand now."""
    ops: list[Op] = []
    for domid in sorted(changed):
        dom = domains.get(domid)
        if dom is not None and dom.introduced:
            ops.append(["dom", domid, dom.port, dom.target, dom.target_refs])
        else:
            ops.append(["undom", domid])
    return ops


def apply_domain(domains: dict[int, Domain], op: Op) -> None:
    """Replay a ``dom`` or ``undom`` op (dom0's own record is never touched)."""
    domid = int(op[1])
    if domid == 0:
        return
    if op[0] == "undom":
        domains.pop(domid, None)
        return
    _, _, port, target, refs = op
    dom = domains.get(domid)
    if dom is None:
        dom = domains[domid] = Domain(domid, birth=0)
    dom.introduced = True
    dom.port = int(port)
    dom.target = None if target is None else int(target)
    dom.target_refs = int(refs)


def encode_record(seq: int, ops: list[Op]) -> bytes:
    payload = json.dumps({"seq": seq, "ops": ops}, separators=(",", ":")).encode()
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass
class Record:
    seq: int
    ops: list[Op]
    #: Byte offset of the record in the journal.
    offset: int


@dataclass
class Scan:
    records: list[Record]
    #: Bytes of the journal that hold whole, valid records.
    valid: int
    #: Why reading stopped before the end of the data, or "" when it did not.
    problem: str = ""
    #: True when the only problem is a record cut short at the very end: the write a
    #: crash interrupted, which was never acknowledged.
    torn_tail: bool = False


def scan(data: bytes) -> Scan:
    """The valid prefix of a journal; stops at the first damaged record."""
    records: list[Record] = []
    pos = 0
    expected: int | None = None
    while pos < len(data):
        index = len(records) + 1
        if len(data) - pos < HEADER_SIZE:
            return Scan(records, pos, f"record {index} at byte {pos} is cut short", True)
        magic, length, crc = _HEADER.unpack_from(data, pos)
        if magic != MAGIC or length > MAX_PAYLOAD:
            return Scan(records, pos, f"record {index} at byte {pos} has a damaged header")
        end = pos + HEADER_SIZE + length
        if end > len(data):
            return Scan(records, pos, f"record {index} at byte {pos} is cut short", True)
        payload = data[pos + HEADER_SIZE : end]
        if zlib.crc32(payload) != crc:
            return Scan(records, pos, f"record {index} at byte {pos} fails its checksum")
        try:
            body = json.loads(payload)
            seq = body["seq"]
            ops = body["ops"]
            if not isinstance(seq, int) or not isinstance(ops, list):
                raise TypeError("seq or ops has the wrong type")
        except (ValueError, KeyError, TypeError) as e:
            return Scan(records, pos, f"record {index} at byte {pos} is not a journal record ({e})")
        if expected is not None and seq != expected:
            problem = f"record {index} at byte {pos} has sequence {seq}, expected {expected}"
            return Scan(records, pos, problem)
        records.append(Record(seq, ops, pos))
        expected = seq + 1
        pos = end
    return Scan(records, pos)


def apply_ops(
    store: Store,
    special: dict[str, tuple[Perm, ...]],
    ops: list[Op],
    domains: dict[int, Domain] | None = None,
) -> None:
    """Replay one record's ops on ``store``, the ``@`` paths' permissions in
    ``special`` and the introductions in ``domains``; `JournalError` if malformed."""
    try:
        for op in ops:
            kind = op[0]
            if kind in ("dom", "undom"):
                if domains is not None:
                    apply_domain(domains, op)
            elif kind == "del":
                store.delete(op[1])
            elif kind == "put" and op[1] in special:
                special[op[1]] = perms_from(op[3])
            elif kind == "put":
                _apply_put(store, op)
            else:
                raise JournalError(f"unknown op {kind!r}")
    except JournalError:
        raise
    except (IndexError, TypeError, ValueError) as e:
        raise JournalError(f"malformed op: {e}") from e


def _apply_put(store: Store, op: Op) -> None:
    _, path, value, perms, ignored, spec = op
    if not isinstance(path, str):
        raise JournalError(f"put without a path: {op!r:.80}")
    node = node_from_fields(value, perms, ignored)
    old = store.get(path)
    if spec is None:
        names: Sequence[str] = list(old.children) if old is not None else []
    elif spec[0] == "=":
        names = spec[1]
    elif spec[0] == "+":
        if old is None:
            raise JournalError(f"child delta for {path}, which does not exist")
        removed = set(spec[2])
        names = [n for n in old.children if n not in removed] + list(spec[1])
    else:
        raise JournalError(f"unknown child list form {spec[0]!r}")
    for name in names:
        node.add_child(name)
    node.generation = store.next_generation()
    store.put(path, node)
