"""``--state-dir``: every acknowledged change is on disk before its reply is sent.

The directory holds a snapshot (``store.json``, the whole tree and the sequence number
of the last journal record it includes) and a write-ahead journal (``journal``, see
`journal`).  The server appends one record per request that changed the tree and
fsyncs it before the reply leaves; when the journal outgrows ``compact_at`` bytes the
tree is written to a new snapshot (written aside, fsynced, renamed) and the journal
emptied.  At start-up the snapshot is read and the journal replayed.

The tree (with its permissions, and those of the ``@`` paths) is kept, and so are the
domain introductions (with their targets), as cx's live update keeps them: a restarted
daemon listens on ``<socket>.d/<domid>`` again and its guests can reconnect.
Connections, watches and transactions belong to live clients and are gone.

A damaged journal is not fatal: replay stops at the first bad record, one line says
where and why, the damaged file is kept aside as ``journal.damaged-<time>``, and the
valid prefix is served (and written to a fresh snapshot at once).  A record cut short
at the very end is what a crash in the middle of a write leaves; it was never
acknowledged, so it is reported as a warning and dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from stubdom.xenstored import journal
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.store import Node

log = logging.getLogger(__name__)

SNAPSHOT = "store.json"
JOURNAL = "journal"
#: Journal size that triggers a new snapshot.
COMPACT_AT = 8 * 1024 * 1024


class StateError(ValueError):
    """A snapshot that cannot be read: the daemon refuses to start rather than lose it."""


class DurableState:
    """The state directory of one running daemon; `commit` after every request."""

    def __init__(self, xs: XenStored, state_dir: Path, compact_at: int = COMPACT_AT) -> None:
        self.xs = xs
        self.dir = state_dir
        self.compact_at = compact_at
        self.seq = 0
        self._fd = -1
        self._size = 0

    @property
    def snapshot_path(self) -> Path:
        return self.dir / SNAPSHOT

    @property
    def journal_path(self) -> Path:
        return self.dir / JOURNAL

    # -- start-up -------------------------------------------------------------------

    def open(self) -> bool:
        """Load the snapshot, replay the journal, and start recording changes.

        Returns whether there was any saved state.  Raises `StateError` for a snapshot
        that is not ours (nothing in the directory is changed then).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / (SNAPSHOT + ".tmp")).unlink()  # a snapshot a crash cut short
        found = self._load_snapshot()
        damaged = False
        if self.journal_path.exists():
            found = True
            damaged = self._replay()
        self._claim_domains()
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        _fsync_dir(self.dir)
        if damaged or self._size >= self.compact_at:
            self.compact()
        self.xs.store.changes = []
        self.xs.domains_changed = set()
        return found

    def _load_snapshot(self) -> bool:
        source = self.snapshot_path
        if not source.exists():
            return False
        try:
            data = json.loads(source.read_bytes())
            entries = data["nodes"]
            seq = int(data.get("seq", 0))
            special = data.get("special", {})
            domain_ops = data.get("domains", [])
            nodes = [(e["path"], _node_from(e)) for e in entries]
            special_perms = {name: journal.perms_from(perms) for name, perms in special.items()}
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(
                f"{source}: not a stubdom xenstored snapshot ({e}); move it away"
            ) from e
        store = self.xs.store
        store.nodes.clear()
        store.owned.clear()
        store.owned_bytes.clear()
        for path, node in nodes:
            node.generation = store.next_generation()
            store.put(path, node)
        for name, perms in special_perms.items():
            if name in self.xs.special_perms:
                self.xs.special_perms[name] = perms
        try:
            for op in domain_ops:
                journal.apply_domain(self.xs.domains, op)
        except (ValueError, TypeError) as e:
            raise StateError(f"{source}: a damaged domain entry ({e}); move it away") from e
        self.seq = seq
        return True

    def _replay(self) -> bool:
        """Apply the journal's records after the snapshot; True if it was damaged."""
        data = self.journal_path.read_bytes()
        result = journal.scan(data)
        applied = 0
        problem = result.problem
        for record in result.records:
            if record.seq <= self.seq:
                continue  # already in the snapshot
            if record.seq != self.seq + 1:
                problem = (
                    f"record at byte {record.offset} has sequence {record.seq}, "
                    f"but the snapshot ends at {self.seq}"
                )
                break
            try:
                journal.apply_ops(
                    self.xs.store, self.xs.special_perms, record.ops, self.xs.domains
                )
            except journal.JournalError as e:
                problem = f"record at byte {record.offset} cannot be applied ({e})"
                break
            self.seq = record.seq
            applied += 1
        if not problem:
            log.info("replayed %d journal records from %s", applied, self.journal_path)
            return False
        if result.torn_tail and problem == result.problem:
            log.warning(
                "%s: %s (a write a crash interrupted, never acknowledged); dropped it, "
                "serving the %d records before it",
                self.journal_path,
                problem,
                len(result.records),
            )
            return True
        kept = self.dir / f"{JOURNAL}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(self.journal_path, kept)
        log.error(
            "%s: %s; serving the tree as of sequence %d, the damaged journal is kept as %s",
            self.journal_path,
            problem,
            self.seq,
            kept,
        )
        return True

    def _claim_domains(self) -> None:
        """Domains named in permissions get a record, so their ACL entries count."""
        for node in self.xs.store.nodes.values():
            for p in node.perms:
                if p.domid not in self.xs.domains and self.xs.domain_exists(p.domid):
                    self.xs.domain_record(p.domid).birth = 0

    # -- running ----------------------------------------------------------------------

    def commit(self) -> None:
        """Make the changes of the request just handled durable (before its reply)."""
        changes = self.xs.store.take_changes()
        domains = self.xs.domains_changed
        if not changes and not domains:
            return
        ops = journal.encode_ops(changes)
        if domains:
            ops += journal.encode_domains(self.xs.domains, domains)
            domains.clear()
        self.seq += 1
        record = journal.encode_record(self.seq, ops)
        _write_all(self._fd, record)
        os.fdatasync(self._fd)
        self._size += len(record)
        if self._size >= self.compact_at:
            self.compact()

    def compact(self) -> None:
        """Write the whole tree to a new snapshot, then empty the journal."""
        target = self.snapshot_path
        tmp = target.with_name(SNAPSHOT + ".tmp")
        body = json.dumps(self._snapshot(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(self.dir)
        if self._fd < 0:
            self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._size = 0
        log.debug("snapshot at sequence %d written to %s", self.seq, target)

    def _snapshot(self) -> dict[str, Any]:
        nodes = [
            {"path": path, "node": journal.node_fields(node), "children": list(node.children)}
            for path, node in self.xs.store.walk("/")
        ]
        special = {name: [str(p) for p in perms] for name, perms in self.xs.special_perms.items()}
        introduced = {d for d, dom in self.xs.domains.items() if dom.introduced and d != 0}
        domains = journal.encode_domains(self.xs.domains, introduced)
        return {
            "version": 2,
            "seq": self.seq,
            "nodes": nodes,
            "special": special,
            "domains": domains,
        }

    def close(self) -> None:
        """A clean stop: everything goes into the snapshot."""
        if self._fd < 0:
            return
        self.xs.store.changes = None
        self.xs.domains_changed = None
        self.compact()
        os.close(self._fd)
        self._fd = -1


def _node_from(entry: dict[str, Any]) -> Node:
    node = journal.node_from_fields(*entry["node"])
    for child in entry["children"]:
        node.add_child(child)
    return node


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
