"""The daemon's logic as a sans-IO object: packets in, packets queued per connection.

Everything here follows cxenstored 4.17 (``xenstored_core.c``, ``_domain.c``,
``_transaction.c``, ``_watch.c``) as observed through `stubdom.realxs`; deliberate
departures are marked "Deliberate:".  The asyncio shell in `server` owns the sockets and
only moves bytes.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from stubdom.wire.constants import DOMID_FIRST_RESERVED, PAYLOAD_MAX, Op
from stubdom.wire.packet import RawPacket
from stubdom.wire.paths import canonicalize, is_valid_path, join, parent_of, relative_length
from stubdom.wire.perms import Access, Perm
from stubdom.xenstored.connection import Connection, Output
from stubdom.xenstored.control import op_control
from stubdom.xenstored.domain_requests import (
    op_get_domain_path,
    op_introduce,
    op_is_domain_introduced,
    op_release,
    op_reset_watches,
    op_resume,
    op_set_target,
)
from stubdom.xenstored.domains import Domain
from stubdom.xenstored.errors import (
    DomainReleased,
    NodeQuotaExceeded,
    Notification,
    XsError,
)
from stubdom.xenstored.node_requests import (
    op_directory,
    op_directory_part,
    op_get_perms,
    op_mkdir,
    op_read,
    op_rm,
    op_set_perms,
    op_transaction_end,
    op_transaction_start,
    op_unwatch,
    op_watch,
    op_write,
)
from stubdom.xenstored.quota import Quotas
from stubdom.xenstored.requests import onearg
from stubdom.xenstored.store import NO_GENERATION, Node, Store, node_memory
from stubdom.xenstored.transaction import Accessed, Transaction
from stubdom.xenstored.watches import WatchIndex

log = logging.getLogger(__name__)

# Module-level names are Final where they can be: mypyc keeps those in C variables (or
# inlines them) instead of looking them up in the module's dict on every use.
# Access is worked out in plain ints: an IntFlag's ``&`` is Python code (Flag.__and__,
# thousands of instructions), an int's one instruction.
ALL: Final = int(Access.READ | Access.WRITE | Access.OWNER)
_READ: Final = int(Access.READ)
#: An ACL entry's access as an int (every value the three bits can take).
_BITS: Final[dict[Access, int]] = {Access(v): v for v in range(ALL + 1)}
#: ``/`` or ``/a/b...``: absolute, valid characters, no empty segment, no trailing ``/``.
_PLAIN_ABSOLUTE: Final = re.compile(rb"/(?:[A-Za-z0-9_@-]+(?:/[A-Za-z0-9_@-]+)*)?")
#: The same, NUL-terminated: a request's only argument.
_PLAIN_ARG: Final = re.compile(rb"/(?:[A-Za-z0-9_@-]+(?:/[A-Za-z0-9_@-]+)*)?\0")
#: Arguments that matched `_PLAIN_ARG` (`_PLAIN_ABSOLUTE`), and their path: valid
#: whoever sends them (the path quota aside, checked on each use).  At most this many,
#: this long.
_plain_args: Final[dict[bytes, str]] = {}
_plain_paths: Final[dict[bytes, str]] = {}
_PLAIN_CACHED: Final = 4096
_PLAIN_CACHED_LEN: Final = 256
#: A relative path of the same characters (not an ``@`` name), bare and as an argument.
_PLAIN_RELATIVE: Final = re.compile(rb"[A-Za-z0-9_-][A-Za-z0-9_@-]*(?:/[A-Za-z0-9_@-]+)*")
_PLAIN_RELATIVE_ARG: Final = re.compile(rb"[A-Za-z0-9_-][A-Za-z0-9_@-]*(?:/[A-Za-z0-9_@-]+)*\0")
#: Relative paths a connection remembers (`Connection.paths`), at most.
_RELATIVE_CACHED: Final = 256
SPECIAL_PATHS: Final = ("@introduceDomain", "@releaseDomain")


#: A handler returns the reply payload, or None when it queued its reply itself.
Handler = Callable[["XenStored", Connection, RawPacket, "View"], bytes | None]
PRIV: Final = 1
NOTID: Final = 2


@dataclass(slots=True, frozen=True)
class _Op:
    handler: Handler
    flags: int = 0


#: A request's events until it has one (most have none: no list built for them).
_NO_EVENTS: Final[list[tuple[str, bool, Node | None, tuple[Perm, ...] | None]]] = []


_ERROR: Final = int(Op.ERROR)


def _error(request: RawPacket, name: str) -> Output:
    """The ERROR reply to ``request`` (`stubdom.wire.packet.error_packet`, as a tuple)."""
    return (_ERROR, name.encode() + b"\0", request[2], request[3])


def _remember(
    cache: dict[bytes, str], raw: bytes, path: str, limit: int = _PLAIN_CACHED
) -> str:
    """Keep ``raw`` (it matched the plain pattern of ``cache``) as ``path``."""
    if len(raw) <= _PLAIN_CACHED_LEN:
        if len(cache) >= limit:
            cache.clear()  # bounded whatever a guest sends
        cache[raw] = path
    return path


class View:
    """The tree as one request sees it: committed, or through its transaction."""

    __slots__ = ("conn", "events", "tx", "xs")

    def __init__(self, xs: XenStored, conn: Connection, tx: Transaction | None) -> None:
        self.xs = xs
        self.conn = conn
        self.tx = tx
        #: Events of this request, fired after it succeeds (or at commit).
        self.events: list[tuple[str, bool, Node | None, tuple[Perm, ...] | None]] = _NO_EVENTS

    # -- access recording (transactions) ---------------------------------------------

    def _accessed(self, path: str, node: Node | None) -> Accessed:
        assert self.tx is not None
        acc = self.tx.accessed.get(path)
        if acc is None:
            if (
                not self.conn.privileged
                and len(self.tx.accessed) >= self.xs.quotas.transaction_nodes
            ):
                self.tx.failed = True
                raise XsError("ENOSPC")
            acc = Accessed(None if node is None else node.perms)
            self.tx.accessed[path] = acc
        return acc

    def read(self, path: str) -> Node | None:
        if self.tx is None:
            return self.xs.store.get(path)
        if path in self.tx.overlay:
            return self.tx.overlay[path]
        snapshot = self.tx.snapshot
        if path in snapshot:
            return snapshot[path]
        node = self.xs.store.get(path)
        if path not in self.tx.accessed:
            acc = self._accessed(path, node)
            acc.generation = node.generation if node is not None else NO_GENERATION
            acc.check_generation = True
            snapshot[path] = node  # a missing node stays missing to the transaction
        return node

    def write(self, path: str, node: Node) -> None:
        node.generation = self.xs.store.next_generation()
        if self.tx is None:
            self.xs.store.put(path, node)
            return
        self._accessed(path, node)
        self.tx.overlay[path] = node

    def delete(self, path: str, node: Node) -> None:
        if self.tx is None:
            self.xs.store.delete(path)
            return
        self._accessed(path, node)
        self.tx.overlay[path] = None

    def count_entry(self, owner: int, delta: int) -> None:
        if self.tx is not None:
            self.tx.count_entry(owner, delta)
            if delta > 0:
                self.tx.created[owner] = self.tx.created.get(owner, 0) + delta

    def entries(self, domid: int) -> int:
        """Nodes ``domid`` owns as the node quota sees them: removals inside a
        transaction only count once it commits (as observed in cx)."""
        n = self.xs.store.count_owned(domid)
        if self.tx is not None:
            n += self.tx.created.get(domid, 0)
        return n

    def fire(
        self,
        path: str,
        exact: bool,
        node: Node | None,
        old_perms: tuple[Perm, ...] | None = None,
    ) -> None:
        if self.tx is not None:
            acc = self.tx.accessed.get(path)
            if acc is None:
                self.tx.failed = True
                return
            if not acc.fire_watch:
                acc.fire_watch = True
                acc.watch_exact = exact
            elif not exact:
                acc.watch_exact = False
            return
        if self.events is _NO_EVENTS:
            self.events = []
        self.events.append((path, exact, node, old_perms))


class XenStored:
    """The whole daemon state; `handle` one packet at a time."""

    def __init__(
        self,
        quotas: Quotas | None = None,
        domain_exists: Callable[[int], bool] | None = None,
        priv_domid: int = 0,
    ) -> None:
        self.quotas = quotas or Quotas()
        self._domain_exists = domain_exists or (lambda d: 0 <= d < DOMID_FIRST_RESERVED)
        self.priv_domid = priv_domid
        self.store = Store()
        self.connections: dict[int, Connection] = {}
        self.watches = WatchIndex()
        self.domains: dict[int, Domain] = {}
        self.special_perms: dict[str, tuple[Perm, ...]] = {
            p: (Perm(Access.NONE, 0),) for p in SPECIAL_PATHS
        }
        self.notifications: deque[Notification] = deque()
        #: Domains the host reported gone: permissions may no longer name them.
        self.gone: set[int] = set()
        #: Connections given output since the last `pending` (each once: ``listed``).
        self._dirty: list[Connection] = []
        #: Domains whose introduction, port or target changed, kept only while a
        #: journal wants them (see `domain_changed`).
        self.domains_changed: set[int] | None = None
        self._view: View | None = None
        self._setup_structure()

    # -- start-up -------------------------------------------------------------------

    def _setup_structure(self) -> None:
        """cx's tree once dom0 is introduced: ``/``, ``/tool``, ``/tool/xenstored``."""
        dom0 = Domain(0, birth=0, introduced=True)
        self.domains[0] = dom0
        root_perms = (Perm(Access.NONE, 0),)
        root = Node(b"", root_perms)
        root.add_child("tool")
        tool = Node(b"", root_perms)
        tool.add_child("xenstored")
        for path, node in (
            ("/", root),
            ("/tool", tool),
            ("/tool/xenstored", Node(b"", root_perms)),
        ):
            node.generation = self.store.next_generation()
            self.store.put(path, node)

    # -- connections ------------------------------------------------------------------

    def connect(self, domid: int = 0, privileged: bool | None = None) -> Connection:
        """A new connection acting as ``domid`` (the socket is dom0, privileged)."""
        if privileged is None:
            privileged = domid == self.priv_domid
        conn = Connection(domid, privileged)
        self.connections[conn.cid] = conn
        return conn

    def disconnect(self, conn: Connection) -> None:
        """The client went away: its watches and transactions go with it."""
        if conn.closed:
            return
        self.reset_connection(conn)
        conn.closed = True
        self.connections.pop(conn.cid, None)
        if conn.listed:
            self._dirty.remove(conn)
            conn.listed = False

    def reset_connection(self, conn: Connection) -> None:
        for w in conn.watches.values():
            self.watches.remove(w)
        dom = self.domains.get(conn.domid)
        if dom is not None:
            dom.watches -= len(conn.watches)
            dom.watch_memory -= sum(w.memory for w in conn.watches.values())
            dom.transactions -= len(conn.transactions)
        conn.watches.clear()
        conn.transactions.clear()

    def domain_connections(self, domid: int) -> list[Connection]:
        return [c for c in self.connections.values() if c.domid == domid and not c.privileged]

    def pending(self) -> list[Connection]:
        """Connections with queued output since the last call.

        A list, each connection once (its ``listed`` flag): no set built per turn.
        """
        dirty = self._dirty
        if not dirty:
            return dirty
        self._dirty = []
        if len(dirty) == 1:  # the usual reply alone
            conn = dirty[0]
            conn.listed = False
            return dirty if conn.outbox and not conn.closed else []
        whole = True
        for conn in dirty:
            conn.listed = False
            if conn.closed or not conn.outbox:
                whole = False
        return dirty if whole else [c for c in dirty if c.outbox and not c.closed]

    def send(self, conn: Connection, packet: Output) -> None:
        if not conn.listed:
            conn.listed = True
            self._dirty.append(conn)
        conn.outbox.append(packet)

    def queue_event(self, conn: Connection, path: str, token: bytes) -> None:
        """An event for ``conn`` (`Connection.queue_event`), which is then pending."""
        if not conn.listed:
            conn.listed = True
            self._dirty.append(conn)
        conn.queue_event(path, token)

    # -- request dispatch -------------------------------------------------------------

    def handle(self, conn: Connection, packet: RawPacket) -> None:
        """Process one request and queue its reply (and any events) for delivery."""
        number, _, req_id, tx_id = packet
        op = OPS.get(number)
        if op is None:
            self.send(conn, _error(packet, "ENOSYS"))
            return
        flags = op.flags
        if flags & PRIV and not conn.privileged:
            self.send(conn, _error(packet, "EACCES"))
            return
        tx: Transaction | None = None
        if tx_id and not flags & NOTID:
            tx = conn.transactions.get(tx_id)
            if tx is None:
                self.send(conn, _error(packet, "ENOENT"))
                return
        # One View serves every request (handle is not reentrant): no object per request.
        view = self._view
        if view is None:
            view = self._view = View(self, conn, tx)
        else:
            view.conn = conn
            view.tx = tx
            view.events = _NO_EVENTS
        try:
            payload = op.handler(self, conn, packet, view)
        except XsError as e:
            self.send(conn, _error(packet, e.name))
            return
        # cx fires a request's watches before it queues the reply.
        if view.events:  # fire_watches is quick when there is no watch
            for path, exact, node, perms in view.events:
                self.fire_watches(path, exact, node, perms)
        if payload is None:
            return
        if len(payload) > PAYLOAD_MAX:
            self.send(conn, _error(packet, "E2BIG"))
            return
        if not conn.listed:
            conn.listed = True
            self._dirty.append(conn)
        conn.outbox.append((number, payload, req_id, tx_id))

    # -- permissions --------------------------------------------------------------------

    def _ignored(self, node: Node, index: int) -> bool:
        if index in node.ignored:
            return True
        dom = self.domains.get(node.perms[index].domid)
        return dom is None or dom.birth > node.generation

    def perm_for(
        self, conn: Connection, perms: tuple[Perm, ...], node: Node | None = None
    ) -> int:
        """cx ``perm_for_conn``: privilege, ownership or target first, then the ACL
        (`Access` bits, as an int)."""
        if conn.privileged:
            return ALL
        target = self._target_of(conn)
        owner = perms[0].domid
        if owner == conn.domid or (target is not None and owner == target):
            return ALL
        for i in range(1, len(perms)):
            p = perms[i]
            if p.domid == conn.domid or (target is not None and p.domid == target):
                if node is not None and self._ignored(node, i):
                    continue
                return _BITS[p.access]
        return _BITS[perms[0].access]

    def _target_of(self, conn: Connection) -> int | None:
        dom = self.domains.get(conn.domid)
        return dom.target if dom is not None else None

    def node_perm(self, conn: Connection, node: Node) -> int:
        return self.perm_for(conn, node.perms, node)

    # -- node access helpers --------------------------------------------------------

    def path_arg(self, conn: Connection, packet: RawPacket) -> str:
        """The one path argument of ``packet``, canonical (`onearg`, then `canonical`)."""
        p = packet[1]
        if len(p) > self.quotas.path_max + 1:  # the quota may have changed since cached
            return self.canonical(conn, onearg(packet))
        path = _plain_args.get(p)
        if path is not None:  # a path seen before: most requests name one
            return path
        # Else one C-level match proves both checks.
        if _PLAIN_ARG.fullmatch(p) is not None:
            return _remember(_plain_args, p, p[:-1].decode("ascii"))
        path = conn.arg_paths.get(p)
        if path is not None:  # a relative path this connection named before
            return path
        path = self.canonical(conn, onearg(packet))
        # Valid now, and whenever it is within the path quota (checked above).
        if _PLAIN_RELATIVE_ARG.fullmatch(p) is not None and relative_length(path) == len(p) - 1:
            _remember(conn.arg_paths, p, path, _RELATIVE_CACHED)
        return path

    def canonical(self, conn: Connection, raw: bytes, allow_special: bool = False) -> str:
        # The usual request names a plain absolute path: one C-level match proves what
        # `is_valid_path` checks one by one (its relative length is at most its length).
        # Such paths are remembered as in `path_arg`.
        if len(raw) <= self.quotas.path_max:
            path = _plain_paths.get(raw)
            if path is not None:
                return path
            if _PLAIN_ABSOLUTE.fullmatch(raw) is not None:
                return _remember(_plain_paths, raw, raw.decode("ascii"))
            path = conn.paths.get(raw)
            if path is not None:  # a relative path this connection named before
                return path
        try:
            path = raw.decode("ascii")
        except UnicodeDecodeError:
            raise XsError("EINVAL") from None
        path = canonicalize(path, conn.domid)
        if not is_valid_path(path, self.quotas.path_max, allow_special):
            raise XsError("EINVAL")
        # Its relative length is its length given: valid whenever within the quota.
        if _PLAIN_RELATIVE.fullmatch(raw) is not None and relative_length(path) == len(raw):
            _remember(conn.paths, raw, path, _RELATIVE_CACHED)
        return path

    def errno_from_parents(self, view: View, path: str, errnum: str, perm: int) -> str:
        """What a caller may learn about a missing or forbidden node (cx hides existence)."""
        if errnum == "ENOMEM":
            return errnum
        p = path
        node = None
        while p != "/":
            p = parent_of(p)
            node = view.read(p)
            if node is not None:
                break
        if node is None:
            return "EACCES"
        if self.node_perm(view.conn, node) & perm:
            return errnum
        return "EACCES"

    def get_node(self, view: View, path: str, perm: int) -> Node:
        """The node if the caller has ``perm`` (`Access` bits) on it; else the error cx
        would give."""
        if view.tx is None and view.conn.privileged:  # `find_node`'s first case
            node = self.store.nodes.get(path)
            if node is not None:
                return node
            raise XsError("ENOENT")
        node = self.find_node(view, path, perm)
        if node is None:
            raise XsError("ENOENT")
        return node

    def find_node(self, view: View, path: str, perm: int) -> Node | None:
        """`get_node`, but None where it raises ENOENT: a request that creates or
        tolerates a missing node (WRITE, MKDIR, RM) raises and catches nothing."""
        conn = view.conn
        if view.tx is None:
            node = self.store.nodes.get(path)
            if conn.privileged:
                # Every access, and a missing node has an ancestor (``/`` at least),
                # which outside a transaction there is no need to read.
                return node
        else:
            node = view.read(path)
        if node is not None:
            # The privileged hold every access: skip the (IntFlag) arithmetic.
            if conn.privileged or (self.node_perm(conn, node) & perm) == perm:
                return node
            errnum = "EACCES"
        else:
            errnum = "ENOENT"
        errnum = self.errno_from_parents(view, path, errnum, perm)
        if errnum == "ENOENT":
            return None
        raise XsError(errnum)

    # -- node creation and removal ---------------------------------------------------

    def _check_node_size(self, conn: Connection, node: Node) -> None:
        if not conn.privileged and node.record_size() >= self.quotas.node_size:
            raise XsError("ENOSPC")

    def memory_used(self, domid: int) -> int:
        """Approximates cx's per-domain accounting: owned nodes plus watches."""
        dom = self.domains.get(domid)
        watches = dom.watch_memory if dom is not None else 0
        return self.store.memory_owned(domid) + watches

    def check_memory(self, conn: Connection, extra: int) -> None:
        if not conn.privileged and self.memory_used(conn.domid) + extra > self.quotas.memory:
            raise XsError("ENOMEM")

    def write_node(self, view: View, path: str, node: Node) -> None:
        if not view.conn.privileged:  # the quotas bind the unprivileged only
            try:
                self._check_node_size(view.conn, node)
                self.check_memory(view.conn, len(node.value))
            except XsError:
                if view.tx is not None:
                    view.tx.failed = True
                raise
        view.write(path, node)

    def create_node(self, view: View, path: str, value: bytes) -> Node:
        """Create ``path`` and any missing parents (cx ``construct_node``/``create_node``).

        A failure inside a transaction fails the transaction (XSA-415).
        """
        try:
            return self._create_node(view, path, value)
        except NodeQuotaExceeded:
            raise  # checked before anything is written: the transaction lives on
        except XsError:
            if view.tx is not None:
                view.tx.failed = True  # a node could not be written (XSA-415)
            raise

    def _create_node(self, view: View, path: str, value: bytes) -> Node:
        conn = view.conn
        # Find the nearest existing ancestor, collecting the names to create.
        missing = [path]
        parent_path = parent_of(path)
        parent = view.read(parent_path)
        while parent is None:
            missing.append(parent_path)
            parent_path = parent_of(parent_path)
            parent = view.read(parent_path)
        perms = parent.perms
        ignored = parent.ignored
        if not conn.privileged:
            # Unprivileged domains own what they create.
            perms = (Perm(perms[0].access, conn.domid), *perms[1:])
        created: list[tuple[str, Node]] = []
        for p in reversed(missing):
            created.append((p, Node(value if p == path else b"", perms, ignored=ignored)))
        if not conn.privileged and view.entries(conn.domid) + len(created) > self.quotas.nodes:
            raise NodeQuotaExceeded("ENOSPC")
        # Check sizes before changing anything: no half-written state on failure.
        new_parent = parent.copy()
        new_parent.add_child(created[0][0].rsplit("/", 1)[1])
        self._check_node_size(conn, new_parent)
        for i, (_, n) in enumerate(created):
            if i + 1 < len(created):
                n.add_child(created[i + 1][0].rsplit("/", 1)[1])
            self._check_node_size(conn, n)
        self.check_memory(conn, sum(node_memory(p, n) for p, n in created))
        for p, n in reversed(created):
            view.write(p, n)
            view.count_entry(n.owner, 1)
        view.write(parent_path, new_parent)
        return created[-1][1]

    def remove_subtree(self, view: View, path: str, node: Node, parent: Node | None) -> None:
        """Delete ``path`` and everything below it, post-order, firing cx's watches, and
        take it out of ``parent`` (as the caller read it: the node at its parent path)."""
        order: list[tuple[str, Node]] = []
        stack: list[tuple[str, Node, bool]] = [(path, node, False)]
        while stack:
            p, n, expanded = stack.pop()
            if expanded:
                order.append((p, n))
                continue
            stack.append((p, n, True))
            for name in reversed(list(n.children)):
                cp = join(p, name)
                child = view.read(cp)
                if child is not None:
                    stack.append((cp, child, False))
        parents: dict[str, Node] = {p: n for p, n in order}
        for p, n in order:
            view.delete(p, n)
            view.count_entry(n.owner, -1)
            above = parents.get(parent_of(p))
            view.fire(p, p != path, n, above.perms if above is not None else None)
        if parent is not None:
            new_parent = parent.copy()
            new_parent.remove_child(path.rsplit("/", 1)[1])
            view.write(parent_of(path), new_parent)

    # -- watches ------------------------------------------------------------------------

    def _watch_permitted(
        self, conn: Connection, path: str, node: Node | None, extra: tuple[Perm, ...] | None
    ) -> bool:
        # Privileged watchers are filtered too: a node gone by commit time whose
        # permissions were never seen (created and deleted in one transaction) fires
        # nothing, as in cx.
        if extra is not None and self.perm_for(conn, extra) & _READ:
            return True
        if node is None:
            node = self.store.get(path)
            if node is None:
                return False
        if self.node_perm(conn, node) & _READ:
            return True
        if path == "/":
            return False
        parent = self.store.get(parent_of(path))
        return parent is not None and bool(self.node_perm(conn, parent) & _READ)

    def fire_watches(
        self,
        path: str,
        exact: bool,
        node: Node | None,
        extra_perms: tuple[Perm, ...] | None = None,
    ) -> None:
        """Queue the events of a change at ``path`` (subtree match unless ``exact``)."""
        watches = (
            WatchIndex.ordered(self.watches.exact(path)) if exact else self.watches.covering(path)
        )
        if not watches:
            return
        dirty = self._dirty
        # The privileged read everything there is: a node, given or still stored.
        exists = node is not None or extra_perms is not None or path in self.store.nodes
        for w in watches:
            conn = w.conn
            if (
                exists if conn.privileged
                else self._watch_permitted(conn, path, node, extra_perms)
            ):
                if not conn.listed:
                    conn.listed = True
                    dirty.append(conn)
                conn.queue_event(
                    path if w.relative_prefix is None else w.event_path(path), w.token
                )

    def set_special_perms(self, name: str, perms: tuple[Perm, ...]) -> None:
        """Permissions of ``@introduceDomain``/``@releaseDomain`` (state a journal keeps)."""
        self.special_perms[name] = perms
        if self.store.changes is not None:
            self.store.changes.append((name, Node(b"", perms), None))

    def fire_special(self, name: str) -> None:
        perms = self.special_perms[name]
        for w in WatchIndex.ordered(self.watches.exact(name)):
            if w.conn.privileged or self.perm_for(w.conn, perms) & _READ:
                self.queue_event(w.conn, name, w.token)

    # -- domains ---------------------------------------------------------------------------

    def domain_changed(self, domid: int) -> None:
        """An introduction, port, target or release a journal must record."""
        if self.domains_changed is not None:
            self.domains_changed.add(domid)

    def domain_exists(self, domid: int) -> bool:
        if domid in self.gone:
            return False
        return domid in self.domains or self._domain_exists(domid)

    def domain_record(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None:
            dom = Domain(domid, birth=self.store.generation)
            self.domains[domid] = dom
        return dom

    def introduced(self, domid: int) -> Domain | None:
        dom = self.domains.get(domid)
        return dom if dom is not None and dom.introduced else None

    def destroy_domain(self, domid: int) -> None:
        """The domain is gone: close its connections, remove what it owns, tell watchers."""
        dom = self.domains.get(domid)
        if dom is None or domid == 0:
            return
        for conn in self.domain_connections(domid):
            self.disconnect(conn)
        self._remove_owned(domid)
        for name in SPECIAL_PATHS:
            perms = self.special_perms[name]
            kept = (perms[0], *(p for p in perms[1:] if p.domid != domid))
            if kept != perms:
                self.set_special_perms(name, kept)
        del self.domains[domid]
        self.domain_changed(domid)
        for other in self.domains.values():
            if other.target == domid:
                other.target = None
                self.domain_changed(other.domid)
        if dom.introduced:
            if dom.target is not None:
                tdom = self.domains.get(dom.target)
                if tdom is not None and tdom.target_refs:
                    tdom.target_refs -= 1
                    self.domain_changed(tdom.domid)
            self.notifications.append(DomainReleased(domid))
            self.fire_special("@releaseDomain")

    def _remove_owned(self, domid: int) -> None:
        """cx ``domain_tree_remove``: pre-order walk, remove each owned subtree."""
        if not self.store.count_owned(domid):
            return
        root_conn = Connection(0, True)  # the daemon acting on its own behalf
        view = View(self, root_conn, None)
        stack = ["/"]
        while stack and self.store.count_owned(domid):
            path = stack.pop()
            node = self.store.get(path)
            if node is None:
                continue
            if node.owner == domid and path != "/":
                self.remove_subtree(view, path, node, view.read(parent_of(path)))
                continue
            stack.extend(join(path, c) for c in reversed(node.children))
        for path, exact, n, perms in view.events:
            self.fire_watches(path, exact, n, perms)

    def domain_shutdown(self, domid: int) -> None:
        """The hypervisor reports the domain shut down or crashed (fires once until RESUME)."""
        dom = self.introduced(domid)
        if dom is not None and not dom.shutdown:
            dom.shutdown = True
            self.fire_special("@releaseDomain")

    def domain_died(self, domid: int) -> None:
        """The hypervisor reports the domain dying or gone."""
        self.destroy_domain(domid)


OPS: Final[dict[int, _Op]] = {
    Op.CONTROL: _Op(op_control, PRIV),
    Op.DIRECTORY: _Op(op_directory),
    Op.READ: _Op(op_read),
    Op.GET_PERMS: _Op(op_get_perms),
    Op.WATCH: _Op(op_watch, NOTID),
    Op.UNWATCH: _Op(op_unwatch, NOTID),
    Op.TRANSACTION_START: _Op(op_transaction_start),
    Op.TRANSACTION_END: _Op(op_transaction_end),
    Op.INTRODUCE: _Op(op_introduce, PRIV),
    Op.RELEASE: _Op(op_release, PRIV),
    Op.GET_DOMAIN_PATH: _Op(op_get_domain_path),
    Op.WRITE: _Op(op_write),
    Op.MKDIR: _Op(op_mkdir),
    Op.RM: _Op(op_rm),
    Op.SET_PERMS: _Op(op_set_perms),
    Op.IS_DOMAIN_INTRODUCED: _Op(op_is_domain_introduced, PRIV),
    Op.RESUME: _Op(op_resume, PRIV),
    Op.SET_TARGET: _Op(op_set_target, PRIV),
    Op.RESET_WATCHES: _Op(op_reset_watches),
    Op.DIRECTORY_PART: _Op(op_directory_part),
}
