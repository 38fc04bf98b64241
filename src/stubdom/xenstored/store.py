"""The node tree: values, ordered children, permission vectors and generations.

Nodes live in a dict keyed by absolute path, which makes lookups O(1) and keeps the
tree walk explicit (and iterative: XSA-418 taught that recursion over a guest-built
tree is a stack-exhaustion bug).  Every write stamps the node with a fresh value of a
global generation counter; transactions compare generations to detect conflicts, and
DIRECTORY_PART hands the generation to clients to detect a list that changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from stubdom.wire.paths import join
from stubdom.wire.perms import Perm

#: Generation of a node that does not exist (cx ``NO_GENERATION``).
NO_GENERATION = -1

#: Size of cx's TDB record header; part of the node-size quota arithmetic.
RECORD_HEADER = 24
PERM_SIZE = 8


@dataclass(slots=True, init=False)
class Node:
    value: bytes
    perms: tuple[Perm, ...]
    #: Child names in insertion order (cx appends and deletes in place).
    children: dict[str, None]
    generation: int
    #: Bytes of the NUL-separated child list (kept to make size checks O(1)).
    childlen: int
    #: Indexes of ACL entries naming a domain that did not exist (cx XS_PERM_IGNORE).
    ignored: frozenset[int]
    #: ``perms[0].domid``, kept: a `Perm` is not compiled, its attributes cost a lookup.
    owner: int

    # Written out: mypyc compiles this one, not the one dataclasses would generate at
    # run time (a Python-level call on every write, 2,500 instructions).
    def __init__(
        self,
        value: bytes,
        perms: tuple[Perm, ...],
        children: dict[str, None] | None = None,
        generation: int = 0,
        childlen: int = 0,
        ignored: frozenset[int] = frozenset(),
        owner: int = -1,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children = {} if children is None else children
        self.generation = generation
        self.childlen = childlen
        self.ignored = ignored
        self.owner = perms[0].domid if owner < 0 else owner

    def copy(self) -> Node:
        return Node(
            self.value,
            self.perms,
            dict(self.children),
            self.generation,
            self.childlen,
            self.ignored,
            self.owner,
        )

    def set_perms(self, perms: tuple[Perm, ...], ignored: frozenset[int]) -> None:
        """New permissions (the only way to change them: ``owner`` follows)."""
        self.perms = perms
        self.ignored = ignored
        self.owner = perms[0].domid

    def record_size(self) -> int:
        """The size cx's node-size quota limits: header, perms, value and child list."""
        return RECORD_HEADER + PERM_SIZE * len(self.perms) + len(self.value) + self.childlen

    def add_child(self, name: str) -> None:
        if name not in self.children:
            self.children[name] = None
            self.childlen += len(name) + 1

    def remove_child(self, name: str) -> None:
        if name in self.children:
            del self.children[name]
            self.childlen -= len(name) + 1

    def child_list(self) -> bytes:
        """``name\\0`` per child, the DIRECTORY reply."""
        return b"".join(n.encode() + b"\0" for n in self.children)


def node_memory(path: str, node: Node) -> int:
    """What a node costs its owner against the memory quota: key plus record."""
    return len(path) + node.record_size()


class Store:
    """The committed tree plus the generation counter and per-owner node counts."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.generation = 0
        self.owned: dict[int, int] = {}
        #: Bytes of node records (path included) per owner, for the memory quota.
        self.owned_bytes: dict[int, int] = {}
        #: Committed changes since the last `take_changes`, kept only while a journal
        #: wants them: (path, new node or None when deleted, node replaced).
        self.changes: list[tuple[str, Node | None, Node | None]] | None = None

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        old = self.nodes.get(path)
        self.nodes[path] = node
        if self.changes is not None:
            self.changes.append((path, node, old))
        owner = node.owner
        if old is not None:
            old_owner = old.owner
            if old_owner == owner and self.owned.get(owner, 0) > 1:
                # The usual rewrite: same owner, count unchanged; only the bytes move
                # (the difference of the two `record_size`s).
                self.owned_bytes[owner] += (
                    len(node.value) - len(old.value) + node.childlen - old.childlen
                    + PERM_SIZE * (len(node.perms) - len(old.perms))
                )
                return
            self._count(old_owner, -1, -node_memory(path, old))
        self._count(owner, 1, node_memory(path, node))

    def delete(self, path: str) -> Node | None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self._count(old.owner, -1, -node_memory(path, old))
            if self.changes is not None:
                self.changes.append((path, None, old))
        return old

    def take_changes(self) -> list[tuple[str, Node | None, Node | None]]:
        """The changes recorded since the last call (recording must be on)."""
        assert self.changes is not None
        changes, self.changes = self.changes, []
        return changes

    def _count(self, domid: int, delta: int, nbytes: int) -> None:
        n = self.owned.get(domid, 0) + delta
        if n:
            self.owned[domid] = n
            self.owned_bytes[domid] = self.owned_bytes.get(domid, 0) + nbytes
        else:
            self.owned.pop(domid, None)
            self.owned_bytes.pop(domid, None)

    def memory_owned(self, domid: int) -> int:
        return self.owned_bytes.get(domid, 0)

    def count_owned(self, domid: int) -> int:
        return self.owned.get(domid, 0)

    def walk(self, top: str) -> Iterator[tuple[str, Node]]:
        """Pre-order walk below and including ``top``, children in list order."""
        stack = [top]
        while stack:
            path = stack.pop()
            node = self.nodes.get(path)
            if node is None:
                continue
            yield path, node
            stack.extend(join(path, c) for c in reversed(node.children))
