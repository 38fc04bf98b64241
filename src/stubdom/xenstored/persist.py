"""``--state-dir``: the tree survives a restart, as cx's TDB file does with ``-I off``.

Only the tree is kept.  Connections, watches, transactions and domain introductions
belong to live clients and are gone after a restart, exactly as for a restarted cx.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from stubdom.wire.perms import parse_perm
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.store import Node

SNAPSHOT = "store.json"


def save(xs: XenStored, state_dir: Path) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    nodes = [
        {
            "path": path,
            "value": base64.b64encode(node.value).decode(),
            "perms": [str(p) for p in node.perms],
            "children": list(node.children),
        }
        for path, node in xs.store.walk("/")
    ]
    target = state_dir / SNAPSHOT
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "nodes": nodes}))
    os.replace(tmp, target)
    return target


def load(xs: XenStored, state_dir: Path) -> bool:
    """Replace the tree by the snapshot in ``state_dir``; False if there is none."""
    source = state_dir / SNAPSHOT
    if not source.exists():
        return False
    try:
        data = json.loads(source.read_text())
        entries = data["nodes"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{source}: not a stubdom xenstored snapshot ({e}); move it away") from e
    xs.store.nodes.clear()
    xs.store.owned.clear()
    # Domains named in permissions exist before the nodes naming them (see `_ignored`).
    for entry in entries:
        for text in entry["perms"]:
            domid = parse_perm(text).domid
            if xs.domain_exists(domid):
                xs.domain_record(domid)
    for entry in entries:
        node = Node(base64.b64decode(entry["value"]), tuple(parse_perm(p) for p in entry["perms"]))
        for child in entry["children"]:
            node.add_child(child)
        node.generation = xs.store.next_generation()
        xs.store.put(entry["path"], node)
    return True
