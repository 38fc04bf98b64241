"""A transaction: a private overlay of the tree and cx's record of accessed nodes.

cx's conflict rule (``xenstored_transaction.c``): the first access of a node inside a
transaction remembers its generation if that access was a read (a missing node
remembers "no generation").  Commit fails with EAGAIN if any remembered generation
changed.  Writes read first, so blind writes and node creation register reads too.
Watch events are remembered per accessed node and fired once each at commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stubdom.wire.perms import Perm
from stubdom.xenstored.store import NO_GENERATION, Node


@dataclass(slots=True)
class Accessed:
    generation: int = NO_GENERATION
    check_generation: bool = False
    #: Permissions when first seen, for filtering events after the node is gone.
    perms: tuple[Perm, ...] | None = None
    fire_watch: bool = False
    watch_exact: bool = False


@dataclass(slots=True)
class Transaction:
    tx_id: int
    #: Nodes written (a Node) or deleted (None) inside the transaction.
    overlay: dict[str, Node | None] = field(default_factory=dict)
    #: Nodes as first read inside the transaction: later reads see this copy (cx copies
    #: them into the transaction's database), not what others committed since.
    snapshot: dict[str, Node] = field(default_factory=dict)
    #: Every node touched, in order of first access (events fire in this order).
    accessed: dict[str, Accessed] = field(default_factory=dict)
    #: A failure inside the transaction (quota, ...) makes END "T" answer ENOMEM.
    failed: bool = False
    #: Net nodes created per owner, settled against the node quota at commit.
    entry_delta: dict[int, int] = field(default_factory=dict)
    #: Nodes created per owner (what the node quota sees before commit).
    created: dict[int, int] = field(default_factory=dict)

    def count_entry(self, owner: int, delta: int) -> None:
        self.entry_delta[owner] = self.entry_delta.get(owner, 0) + delta
