"""Watch registrations and the index that finds the watches an event must reach.

cx scans every watch of every connection on every change.  We index watches by their
canonical path, so finding the watches on a path and its ancestors costs the path depth
plus the matches, whatever the number of watches; the order of delivery (connection
order, then registration order) is restored by sorting the few matches.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from stubdom.xenstored.connection import Connection

_seq = itertools.count()


@dataclass(eq=False, slots=True)
class Watch:
    conn: Connection
    #: Canonical path (absolute, or an ``@`` name).
    path: str
    token: bytes
    #: ``/local/domain/<id>`` when the client gave a relative path: events strip it.
    relative_prefix: str | None = None
    seq: int = field(default_factory=lambda: next(_seq))

    def event_path(self, path: str) -> str:
        if self.relative_prefix is not None and path.startswith(self.relative_prefix):
            rest = path[len(self.relative_prefix) :]
            return rest[1:] if rest.startswith("/") else rest
        return path

    @property
    def memory(self) -> int:
        return len(self.path) + len(self.token) + 2


def _delivery_order(w: Watch) -> tuple[int, int]:
    """Connection order, then registration order (cx's list walk)."""
    return (w.conn.cid, w.seq)


#: Paths whose covering watches `WatchIndex` remembers, at most (then it starts over).
COVERING_CACHED: Final = 4096


class WatchIndex:
    def __init__(self) -> None:
        self._by_path: dict[str, list[Watch]] = {}
        #: `covering`'s answers since the watches last changed: a change's path is
        #: usually one changed before (a walk of the ancestors is a lookup each).
        self._covering: dict[str, list[Watch]] = {}

    def add(self, watch: Watch) -> None:
        self._by_path.setdefault(watch.path, []).append(watch)
        self._covering.clear()

    def remove(self, watch: Watch) -> None:
        lst = self._by_path.get(watch.path)
        if lst is None:
            return
        lst.remove(watch)
        if not lst:
            del self._by_path[watch.path]
        self._covering.clear()

    def exact(self, path: str) -> list[Watch]:
        return list(self._by_path.get(path, ()))

    def covering(self, path: str) -> list[Watch]:
        """Watches on ``path`` or any ancestor, in delivery order (the caller must not
        change the list: it is remembered)."""
        found = self._covering.get(path)
        if found is None:
            if not self._by_path:
                return []
            found = self._find_covering(path)
            if len(self._covering) >= COVERING_CACHED:
                self._covering.clear()  # bounded whatever paths a guest writes
            self._covering[path] = found
        return found

    def _find_covering(self, path: str) -> list[Watch]:
        """Walks the ancestors in place (no list of them) and sorts only when there is
        something to order."""
        by_path = self._by_path
        found = by_path.get(path)
        found = list(found) if found else []
        p = path
        while p != "/":
            i = p.rfind("/")
            p = "/" if i <= 0 else p[:i]  # parent_of, inlined
            more = by_path.get(p)
            if more:
                found += more
        if len(found) > 1:
            found.sort(key=_delivery_order)
        return found

    @staticmethod
    def ordered(watches: list[Watch]) -> list[Watch]:
        return sorted(watches, key=_delivery_order)

    def __bool__(self) -> bool:
        """Whether any watch is registered (O(1), unlike `len`)."""
        return bool(self._by_path)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_path.values())
