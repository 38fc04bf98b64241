"""Handlers of the node, watch and transaction requests.

Each takes the daemon, the connection, the request and the request's `View`, and
returns the reply payload (None when it queued the reply itself) or raises `XsError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stubdom.wire.constants import OK, PAYLOAD_MAX
from stubdom.wire.packet import RawPacket
from stubdom.wire.paths import parent_of
from stubdom.wire.perms import Access, InvalidPermission, Perm, parse_perm
from stubdom.xenstored.errors import XsError
from stubdom.xenstored.requests import atoi, strings
from stubdom.xenstored.store import NO_GENERATION
from stubdom.xenstored.transaction import Transaction
from stubdom.xenstored.watches import Watch

#: Access bits as ints (`XenStored.perm_for`); Final: mypyc inlines them.
_READ: Final = int(Access.READ)
_WRITE: Final = int(Access.WRITE)
_WRITE_OWNER: Final = int(Access.WRITE | Access.OWNER)

if TYPE_CHECKING:
    from stubdom.xenstored.connection import Connection
    from stubdom.xenstored.core import View, XenStored


def op_read(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    path = xs.path_arg(conn, packet)
    return xs.get_node(view, path, _READ).value


def op_directory(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    path = xs.path_arg(conn, packet)
    return xs.get_node(view, path, _READ).child_list()


def op_directory_part(
    xs: XenStored, conn: Connection, packet: RawPacket, view: View
) -> bytes | None:
    args = strings(packet)
    if len(args) != 2 or not packet[1].endswith(b"\0"):
        raise XsError("EINVAL")
    path = xs.canonical(conn, args[0])
    offset = atoi(args[1])
    node = xs.get_node(view, path, _READ)
    children = node.child_list()
    gen = f"{node.generation}".encode() + b"\0"
    if offset >= len(children):
        return gen + b"\0"
    room = PAYLOAD_MAX - len(gen) - 1
    chunk_end = offset
    pos = offset
    while pos < len(children):
        nul = children.index(b"\0", pos)
        if nul + 1 - offset > room:
            break
        pos = nul + 1
        chunk_end = pos
    body = children[offset:chunk_end]
    if chunk_end >= len(children):
        body += b"\0"
    return gen + body


def op_get_perms(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    path = xs.path_arg(conn, packet)
    node = xs.get_node(view, path, _READ)
    # cx lists ignored entries too; they only stop granting access.
    return b"".join(str(p).encode() + b"\0" for p in node.perms)


def op_write(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    raw, nul, value = packet[1].partition(b"\0")
    if not nul:
        raise XsError("EINVAL")
    path = xs.canonical(conn, raw)
    node = xs.find_node(view, path, _WRITE)
    if node is None:
        node = xs.create_node(view, path, value)
    else:
        node = node.copy()
        node.value = value
        xs.write_node(view, path, node)
    view.fire(path, False, node)
    return OK


def op_mkdir(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    path = xs.path_arg(conn, packet)
    if xs.find_node(view, path, _WRITE) is None:
        node = xs.create_node(view, path, b"")
        view.fire(path, False, node)
    return OK


def op_rm(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    path = xs.path_arg(conn, packet)
    node = xs.find_node(view, path, _WRITE)
    if node is None:
        if view.read(parent_of(path)) is not None:
            return OK
        raise XsError("ENOENT")
    if path == "/":
        raise XsError("EINVAL")
    # cx takes the node out of its parent first.  In a transaction whose node was
    # removed outside since, the parent may be gone (EINVAL) or not list it (corruption
    # to cx: EIO); either way nothing is removed.
    parent = view.read(parent_of(path))
    if parent is None:
        raise XsError("EINVAL")
    if path.rpartition("/")[2] not in parent.children:
        raise XsError("EIO")
    xs.remove_subtree(view, path, node, parent)
    return OK


def op_set_perms(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    args = strings(packet)
    if len(args) < 2:
        raise XsError("EINVAL")
    try:
        perms = tuple(parse_perm(a.decode("latin-1")) for a in args[1:])
    except InvalidPermission:
        raise XsError("EINVAL") from None
    if not conn.privileged and len(perms) > xs.quotas.permissions:
        raise XsError("ENOSPC")
    raw_path = args[0]
    if raw_path.startswith(b"@"):
        return _set_perms_special(xs, conn, raw_path, perms)
    path = xs.canonical(conn, raw_path)
    # Entries naming domains that do not exist are ignored; an ignored owner is ENOENT.
    ignored: set[int] = set()
    for i, p in enumerate(perms):
        if p.domid in xs.domains:
            continue
        if xs.domain_exists(p.domid):
            xs.domain_record(p.domid)
        else:
            if i == 0:
                raise XsError("ENOENT")
            ignored.add(i)
    node = xs.get_node(view, path, _WRITE_OWNER)
    # Only the privileged may change the owner (XSA-352).
    if not conn.privileged and perms[0].domid != node.owner:
        raise XsError("EPERM")
    old = node.perms
    new = node.copy()
    new.set_perms(perms, frozenset(ignored))
    old_owner = node.owner
    xs.write_node(view, path, new)
    if old_owner != new.owner:
        view.count_entry(old_owner, -1)
        view.count_entry(new.owner, 1)
    view.fire(path, False, new, old)
    return OK


def _set_perms_special(
    xs: XenStored, conn: Connection, raw_path: bytes, perms: tuple[Perm, ...]
) -> bytes:
    name = raw_path.decode("latin-1")
    if name not in xs.special_perms:
        # Deliberate: cx means EINVAL here (and EACCES below) but replies with a stale
        # errno, which varies from run to run (ENOENT and EINVAL were both observed).
        raise XsError("EINVAL")
    current = xs.special_perms[name]
    if xs.perm_for(conn, current) & _WRITE_OWNER != _WRITE_OWNER:
        raise XsError("EACCES")
    for p in perms:
        if p.domid not in xs.domains and xs.domain_exists(p.domid):
            xs.domain_record(p.domid)
    xs.set_special_perms(name, perms)
    return OK


def _watch_args(xs: XenStored, conn: Connection, packet: RawPacket) -> tuple[bytes, str, bytes]:
    """(path as given, canonical path, token): exactly two strings, as cx insists.

    ``@`` names are any string within the path quota (cx ``check_watch_path``).
    """
    args = strings(packet)
    if len(args) != 2 or not packet[1].endswith(b"\0"):
        raise XsError("EINVAL")
    raw, token = args
    if raw.startswith(b"@"):
        if len(raw) > xs.quotas.path_max:
            raise XsError("EINVAL")
        return raw, raw.decode("latin-1"), token
    return raw, xs.canonical(conn, raw), token


def op_watch(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    raw, path, token = _watch_args(xs, conn, packet)
    relative = not raw.startswith((b"/", b"@"))
    if (path, token) in conn.watches:
        raise XsError("EEXIST")
    dom = xs.domains.get(conn.domid)
    if not conn.privileged and dom is not None and dom.watches > xs.quotas.watches:
        raise XsError("E2BIG")
    w = Watch(conn, path, token, conn.implicit_path if relative else None)
    xs.check_memory(conn, w.memory)
    conn.watches[(path, token)] = w
    xs.watches.add(w)
    if dom is not None:
        dom.watches += 1
        dom.watch_memory += w.memory
    # The reply goes first, then the initial event with the path as the client gave it.
    xs.send(conn, (packet[0], OK, packet[2], packet[3]))
    xs.queue_event(conn, raw.decode("latin-1"), token)
    return None


def op_unwatch(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    _, path, token = _watch_args(xs, conn, packet)
    w = conn.watches.pop((path, token), None)
    if w is None:
        raise XsError("ENOENT")
    xs.watches.remove(w)
    dom = xs.domains.get(conn.domid)
    if dom is not None:
        dom.watches -= 1
        dom.watch_memory -= w.memory
    return OK


def op_transaction_start(
    xs: XenStored, conn: Connection, packet: RawPacket, view: View
) -> bytes | None:
    if view.tx is not None:
        raise XsError("EBUSY")
    dom = xs.domains.get(conn.domid)
    if not conn.privileged and len(conn.transactions) > xs.quotas.transactions:
        raise XsError("ENOSPC")
    tx_id = conn.next_tx_id
    while tx_id == 0 or tx_id in conn.transactions:
        tx_id = (tx_id + 1) & 0xFFFFFFFF
    conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
    conn.transactions[tx_id] = Transaction(tx_id)
    if dom is not None:
        dom.transactions += 1
    return str(tx_id).encode() + b"\0"


def op_transaction_end(
    xs: XenStored, conn: Connection, packet: RawPacket, view: View
) -> bytes | None:
    # `onearg` then T or F, in one comparison (requests.py is not compiled: a call).
    arg = packet[1]
    if arg != b"T\0" and arg != b"F\0":
        raise XsError("EINVAL")
    tx = view.tx
    if tx is None:
        raise XsError("ENOENT")
    del conn.transactions[tx.tx_id]
    dom = xs.domains.get(conn.domid)
    if dom is not None:
        dom.transactions -= 1
    if arg == b"F\0":
        return OK
    if tx.failed:
        raise XsError("ENOMEM")
    _commit(xs, conn, tx)
    return OK


def _commit(xs: XenStored, conn: Connection, tx: Transaction) -> None:
    store = xs.store
    for path, acc in tx.accessed.items():
        if not acc.check_generation:
            continue
        node = store.get(path)
        gen = node.generation if node is not None else NO_GENERATION
        if gen != acc.generation:
            raise XsError("EAGAIN")
    if not conn.privileged:
        delta = tx.entry_delta.get(conn.domid, 0)
        if delta > 0 and store.count_owned(conn.domid) + delta > xs.quotas.nodes:
            raise XsError("ENOSPC")
    for path, node in tx.overlay.items():
        if node is None:
            store.delete(path)
        else:
            node.generation = store.next_generation()
            store.put(path, node)
    for path, acc in tx.accessed.items():
        if acc.fire_watch:
            xs.fire_watches(path, acc.watch_exact, None, acc.perms)
