#!/usr/bin/python3
"""A pyxs session against the xenstored at $XENSTORED_PATH; prints a JSON transcript.

Run with the system interpreter (``/usr/bin/python3``), which has Debian's python3-pyxs;
the project's venv does not.  The transcript is deterministic (no pids, times or
transaction ids), so test_pyxs.py can compare the one made against our server with the
one made against the real cxenstored.

pyxs has no timeouts, so a watchdog (faulthandler) dumps every thread's stack and exits
with status 70 if the session hangs; the caller also runs this under a timeout.

Each transcript entry is ``[step, outcome]``: the outcome is ``{"ok": value}`` or
``{"err": "ENOENT"}`` (the errno name of a PyXSError).  Bytes become latin-1 strings.
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pyxs
from pyxs.exceptions import PyXSError

WATCHDOG_SECONDS = 30
GUEST = 5  # the domain introduced and released at the end
GUEST_PORT = 6  # its event channel: INTRODUCE needs a port > 0

transcript: list[list[Any]] = []


def plain(value: Any) -> Any:
    """Make a pyxs result JSON-friendly."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def step(name: str, fn: Callable[[], Any]) -> Any:
    """Run one pyxs call, record its result or its errno name, and return the result."""
    try:
        value = fn()
    except PyXSError as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        transcript.append([name, {"err": errno.errorcode.get(code, repr(e.args))}])
        return None
    transcript.append([name, {"ok": plain(value)}])
    return value


def main() -> int:
    if not os.environ.get("XENSTORED_PATH"):
        print("pyxs_scenario.py: set XENSTORED_PATH to the daemon's socket", file=sys.stderr)
        return 2
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)

    c = pyxs.Client()  # unix socket at $XENSTORED_PATH
    other = pyxs.Client()  # a second connection: "someone else" writing
    # pyxs refuses RELEASE/RESUME/SET_TARGET unless /proc/xen/capabilities says
    # control_d; our connections are dom0, so say so.
    c.SU = True
    with c, other:
        # Plain reads and writes.
        step("write /pyxs/a", lambda: c.write(b"/pyxs/a", b"1"))
        step("read /pyxs/a", lambda: c.read(b"/pyxs/a"))
        step("read /pyxs/a (getitem)", lambda: c[b"/pyxs/a"])
        step("write /pyxs/empty ''", lambda: c.write(b"/pyxs/empty", b""))
        step("read /pyxs/empty", lambda: c.read(b"/pyxs/empty"))
        step("read /pyxs/missing", lambda: c.read(b"/pyxs/missing"))
        step("read /pyxs/missing default", lambda: c.read(b"/pyxs/missing", b"dflt"))
        step("read /pyxs (implicit parent)", lambda: c.read(b"/pyxs"))
        step("mkdir /pyxs/dir/sub", lambda: c.mkdir(b"/pyxs/dir/sub"))
        step("read /pyxs/dir", lambda: c.read(b"/pyxs/dir"))
        step("mkdir /pyxs/a (exists)", lambda: c.mkdir(b"/pyxs/a"))
        step("read /pyxs/a after mkdir", lambda: c.read(b"/pyxs/a"))
        step("list /pyxs", lambda: c.list(b"/pyxs"))
        step("list /pyxs/a", lambda: c.list(b"/pyxs/a"))
        step("list /pyxs/missing", lambda: c.list(b"/pyxs/missing"))
        step("exists /pyxs/a", lambda: c.exists(b"/pyxs/a"))
        step("exists /pyxs/missing", lambda: c.exists(b"/pyxs/missing"))
        step("relative write data/x", lambda: c.write(b"data/x", b"rel"))
        step("read /local/domain/0/data/x", lambda: c.read(b"/local/domain/0/data/x"))

        # Permissions.
        step("get_perms /pyxs/a", lambda: c.get_perms(b"/pyxs/a"))
        step("set_perms /pyxs/a n0 r5 b7",
             lambda: c.set_perms(b"/pyxs/a", [b"n0", b"r5", b"b7"]))
        step("get_perms /pyxs/a after", lambda: c.get_perms(b"/pyxs/a"))
        step("get_perms /pyxs/missing", lambda: c.get_perms(b"/pyxs/missing"))
        step("write /pyxs/a/child (inherits perms)", lambda: c.write(b"/pyxs/a/child", b"c"))
        step("get_perms /pyxs/a/child", lambda: c.get_perms(b"/pyxs/a/child"))

        # A transaction that commits; outside, its writes are invisible until then.
        step("transaction (commit)", lambda: c.transaction() > 0)
        step("tx write /pyxs/tx", lambda: c.write(b"/pyxs/tx", b"in-tx"))
        step("tx read /pyxs/tx", lambda: c.read(b"/pyxs/tx"))
        step("outside read /pyxs/tx", lambda: other.read(b"/pyxs/tx"))
        step("commit", c.commit)
        step("read /pyxs/tx after commit", lambda: c.read(b"/pyxs/tx"))

        # A rolled-back transaction leaves no trace.
        step("transaction (rollback)", lambda: c.transaction() > 0)
        step("tx write /pyxs/rolled", lambda: c.write(b"/pyxs/rolled", b"x"))
        step("rollback", c.rollback)
        step("read /pyxs/rolled", lambda: c.read(b"/pyxs/rolled"))

        # A conflicting transaction: commit() returns False (EAGAIN).
        step("transaction (conflict)", lambda: c.transaction() > 0)
        step("conflict tx read /pyxs/tx", lambda: c.read(b"/pyxs/tx"))
        step("conflict tx write /pyxs/tx", lambda: c.write(b"/pyxs/tx", b"from-tx"))
        step("outside write /pyxs/tx", lambda: other.write(b"/pyxs/tx", b"outside"))
        step("commit (conflict)", c.commit)
        step("read /pyxs/tx after conflict", lambda: c.read(b"/pyxs/tx"))

        # Watches: the initial event, then one per change, filtered by the watched path.
        m = c.monitor()
        events: Iterator[tuple[bytes, bytes]] = m.wait()
        step("watch /pyxs/w tok-w", lambda: m.watch(b"/pyxs/w", b"tok-w"))
        step("initial event", lambda: next(events))
        step("other write /pyxs/unrelated", lambda: other.write(b"/pyxs/unrelated", b"u"))
        step("other write /pyxs/w/child", lambda: other.write(b"/pyxs/w/child", b"x"))
        step("change event", lambda: next(events))
        step("other rm /pyxs/w", lambda: other.delete(b"/pyxs/w"))
        step("rm event", lambda: next(events))
        step("unwatch /pyxs/w tok-w", lambda: m.unwatch(b"/pyxs/w", b"tok-w"))
        step("unwatch again", lambda: m.unwatch(b"/pyxs/w", b"tok-w"))

        # Domains.
        step("get_domain_path 0", lambda: c.get_domain_path(0))
        step("get_domain_path 7", lambda: c.get_domain_path(7))
        step("is_domain_introduced 0", lambda: c.is_domain_introduced(0))
        step(f"is_domain_introduced {GUEST}", lambda: c.is_domain_introduced(GUEST))
        step("watch @introduceDomain", lambda: m.watch(b"@introduceDomain", b"intro"))
        step("initial @introduceDomain event", lambda: next(events))
        step("watch @releaseDomain", lambda: m.watch(b"@releaseDomain", b"release"))
        step("initial @releaseDomain event", lambda: next(events))
        step(f"introduce_domain {GUEST} port {GUEST_PORT}",
             lambda: c.introduce_domain(GUEST, 0, GUEST_PORT))
        step("@introduceDomain event", lambda: next(events))
        step(f"is_domain_introduced {GUEST} after", lambda: c.is_domain_introduced(GUEST))
        step(f"introduce_domain {GUEST} again", lambda: c.introduce_domain(GUEST, 0, GUEST_PORT))
        step(f"release_domain {GUEST}", lambda: c.release_domain(GUEST))
        step("@releaseDomain event", lambda: next(events))
        step(f"is_domain_introduced {GUEST} released", lambda: c.is_domain_introduced(GUEST))
        step(f"release_domain {GUEST} again", lambda: c.release_domain(GUEST))
        m.close()

        # Walk, delete, and the tree afterwards.
        step("walk /pyxs", lambda: list(c.walk(b"/pyxs")))
        step("delete /pyxs/a", lambda: c.delete(b"/pyxs/a"))
        step("exists /pyxs/a/child", lambda: c.exists(b"/pyxs/a/child"))
        step("delete /pyxs/a again", lambda: c.delete(b"/pyxs/a"))
        step("delete /nope/deeper", lambda: c.delete(b"/nope/deeper"))
        step("delete /pyxs", lambda: c.delete(b"/pyxs"))
        step("list /", lambda: c.list(b"/"))

    faulthandler.cancel_dump_traceback_later()
    json.dump(transcript, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
