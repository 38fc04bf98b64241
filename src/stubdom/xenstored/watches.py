"""Watch registrations and the index that finds the watches an event must reach.

cx scans every watch of every connection on every change.  We index watches by their
canonical path, so finding the watches on a path and its ancestors costs the path depth
plus the matches, whatever the number of watches; the order of delivery (connection
order, then registration order) is restored by sorting the few matches.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stubdom.wire.paths import ancestors

if TYPE_CHECKING:
    from stubdom.xenstored.connection import Connection

_seq = itertools.count()


@dataclass(eq=False)
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


class WatchIndex:
    def __init__(self) -> None:
        self._by_path: dict[str, list[Watch]] = {}

    def add(self, watch: Watch) -> None:
        self._by_path.setdefault(watch.path, []).append(watch)

    def remove(self, watch: Watch) -> None:
        lst = self._by_path.get(watch.path)
        if lst is None:
            return
        lst.remove(watch)
        if not lst:
            del self._by_path[watch.path]

    def exact(self, path: str) -> list[Watch]:
        return list(self._by_path.get(path, ()))

    def covering(self, path: str) -> list[Watch]:
        """Watches on ``path`` or any ancestor, in delivery order."""
        found: list[Watch] = list(self._by_path.get(path, ()))
        for anc in ancestors(path):
            found.extend(self._by_path.get(anc, ()))
        return self.ordered(found)

    @staticmethod
    def ordered(watches: list[Watch]) -> list[Watch]:
        return sorted(watches, key=lambda w: (w.conn.cid, w.seq))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_path.values())
