"""Turn raw replies and events into comparable text, hiding what legitimately varies.

Only three things vary between runs of the same daemon and are normalised:

* the transaction id in a TRANSACTION_START reply becomes ``<tx:NAME>`` (the symbolic name
  the case bound it to), so the per-connection counters do not matter;
* the node generation at the head of a DIRECTORY_PART reply becomes ``gen-N``, numbered in
  order of first appearance within the case (equal generations stay equal, a changed
  generation stays visibly changed);
* the ``memory: <bytes>`` figure of ``CONTROL quota <domid>`` (allocator-dependent).

Everything else, including error names, payload bytes and header echoes, is kept verbatim.
"""

from __future__ import annotations

import hashlib
import re

from tests.differential.targets import Reply
from tests.support import xsraw

LONG = 240  # payloads longer than this are shown as length + digest + head


def fmt(b: bytes) -> str:
    """A compact, exact rendering of a byte string (digest for long ones)."""
    if len(b) <= LONG:
        return repr(b)[2:-1]
    digest = hashlib.sha1(b).hexdigest()[:12]
    return f"<{len(b)}B sha1:{digest} {repr(b[:60])[2:-1]}...>"


def type_name(t: int) -> str:
    return xsraw.tname(t) if t < len(xsraw.TYPES) else f"type{t}"


_MEMORY = re.compile(rb"memory: \d+")


class Normaliser:
    """Per-case state: generation numbering and the transaction-name table."""

    def __init__(self) -> None:
        self.gens: dict[bytes, str] = {}
        self.tx_names: dict[int, str] = {}  # numeric id -> symbolic name

    def gen(self, g: bytes) -> str:
        return self.gens.setdefault(g, f"gen-{len(self.gens) + 1}")

    def tx_sym(self, tx_id: int) -> str:
        return self.tx_names.get(tx_id, str(tx_id))

    def reply(self, r: Reply, *, req_id: int, tx_id: int, bind: str | None,
              control_arg: bytes = b"") -> str:
        name = type_name(r.type)
        p = r.payload
        if name == "ERROR":
            body = p[:-1].decode("latin-1") if p.endswith(b"\0") else fmt(p)
        elif p == b"OK\0":
            body = "OK"
        elif name == "TRANSACTION_START" and p.endswith(b"\0") and p[:-1].isdigit():
            sym = bind or f"anon{len(self.tx_names) + 1}"
            self.tx_names[int(p[:-1])] = sym
            body = f"<tx:{sym}>"
        elif name == "DIRECTORY_PART" and b"\0" in p:
            g, _, rest = p.partition(b"\0")
            body = f"{self.gen(g)}\\x00{fmt(rest)}"
        elif name == "CONTROL" and control_arg.startswith(b"quota\0") and len(control_arg) > 6:
            body = fmt(_MEMORY.sub(b"memory: <n>", p))
        else:
            body = fmt(p)
        text = f"{name} {body}"
        if r.req_id != req_id:
            text += f" [req_id={r.req_id}]"
        if r.tx_id != tx_id:
            text += f" [tx_id={self.tx_sym(r.tx_id)}]"
        return text

    def event(self, path: bytes, token: bytes) -> str:
        return f"{fmt(path)} {fmt(token)}"
