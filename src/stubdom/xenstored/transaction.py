"""A transaction: a private overlay of the tree and cx's record of accessed nodes.

cx's conflict rule (``xenstored_transaction.c``): the first access of a node inside a
transaction remembers its generation if that access was a read (a missing node
remembers "no generation").  Commit fails with EAGAIN if any remembered generation
changed.  Writes read first, so blind writes and node creation register reads too.
Watch events are remembered per accessed node and fired once each at commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from stubdom.wire.perms import Perm
from stubdom.xenstored.store import NO_GENERATION, Node

# The classes write out their __init__: mypyc compiles it, not the one dataclasses would
# generate at run time (a Python-level call each).


@dataclass(slots=True, init=False)
class Accessed:
    generation: int
    check_generation: bool
    #: Permissions when first seen, for filtering events after the node is gone.
    perms: tuple[Perm, ...] | None
    fire_watch: bool
    watch_exact: bool

    def __init__(self, perms: tuple[Perm, ...] | None = None) -> None:
        self.generation = NO_GENERATION
        self.check_generation = False
        self.perms = perms
        self.fire_watch = False
        self.watch_exact = False


@dataclass(slots=True, init=False)
class Transaction:
    tx_id: int
    #: Nodes written (a Node) or deleted (None) inside the transaction.
    overlay: dict[str, Node | None]
    #: Nodes as first read inside the transaction: later reads see this copy (cx copies
    #: them into the transaction's database), not what others committed since.  None: the
    #: node was missing, and stays missing to the transaction (cx finds no copy of it).
    snapshot: dict[str, Node | None]
    #: Every node touched, in order of first access (events fire in this order).
    accessed: dict[str, Accessed]
    #: A failure inside the transaction (quota, ...) makes END "T" answer ENOMEM.
    failed: bool
    #: Net nodes created per owner, settled against the node quota at commit.
    entry_delta: dict[int, int]
    #: Nodes created per owner (what the node quota sees before commit).
    created: dict[int, int]

    def __init__(self, tx_id: int) -> None:
        self.tx_id = tx_id
        self.overlay = {}
        self.snapshot = {}
        self.accessed = {}
        self.failed = False
        self.entry_delta = {}
        self.created = {}

    def count_entry(self, owner: int, delta: int) -> None:
        self.entry_delta[owner] = self.entry_delta.get(owner, 0) + delta
