"""CONTROL: the commands of cxenstored 4.17 that make sense here, plus ``domain-state``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stubdom.wire.constants import OK
from stubdom.wire.packet import RawPacket
from stubdom.xenstored.errors import XsError
from stubdom.xenstored.quota import QuotaError
from stubdom.xenstored.requests import atoi, atoi_signed, strings

if TYPE_CHECKING:
    from stubdom.xenstored.connection import Connection
    from stubdom.xenstored.core import View, XenStored

log = logging.getLogger(__name__)


def op_control(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    args = [a.decode("latin-1") for a in strings(packet)]
    if not args:
        raise XsError("EINVAL")
    cmd, rest = args[0], args[1:]
    if cmd == "help" and not rest:
        return _CONTROL_HELP.encode() + b"\0"
    if cmd == "check" and not rest:
        return OK
    if cmd == "log" and len(rest) == 1 and rest[0] in ("on", "off"):
        return OK
    if cmd == "print" and len(rest) == 1:
        log.info("control print: %s", rest[0])
        return OK
    if cmd == "domain-state" and len(rest) == 2:
        return _control_domain_state(xs, atoi(rest[0].encode()), rest[1])
    if cmd == "quota":
        if not rest:
            return xs.quotas.report().encode() + b"\0"
        if rest[0] == "set" and len(rest) == 3:
            try:
                xs.quotas.set(rest[1], atoi_signed(rest[2].encode()))
            except QuotaError:
                raise XsError("EINVAL") from None
            return OK
        if len(rest) == 1:
            return _domain_quota_report(xs, atoi(rest[0].encode())).encode() + b"\0"
        raise XsError("EINVAL")
    if cmd == "quota-soft":
        if not rest:
            return xs.quotas.soft_report().encode() + b"\0"
        if rest[0] == "set" and len(rest) == 3 and rest[1] == "memory":
            xs.quotas.memory_soft = atoi_signed(rest[2].encode())
            return OK
        raise XsError("EINVAL")
    raise XsError("EINVAL")


def _control_domain_state(xs: XenStored, domid: int, state: str) -> bytes:
    """Our extension, dom0 only: the host reports what the hypervisor would signal
    with VIRQ_DOM_EXC (there is no hypervisor to ask)."""
    if domid == 0:
        raise XsError("EINVAL")
    if state in ("shutdown", "crashed"):
        xs.domain_shutdown(domid)
    elif state in ("dying", "gone"):
        if state == "gone":
            xs.gone.add(domid)
        xs.domain_died(domid)
    elif state == "running":
        xs.gone.discard(domid)
    else:
        raise XsError("EINVAL")
    return OK


_CONTROL_HELP = (
    "check\t\n"
    "log\ton|off\n"
    "live-update\t[-c <cmdline>] [-F] [-t <timeout>] <file>\n"
    "    Default timeout is 60 seconds.\n"
    "logfile\t<file>\n"
    "memreport\t[<file>]\n"
    "print\t<string>\n"
    "quota\t[set <name> <val>|<domid>]\n"
    "quota-soft\t[set <name> <val>]\n"
    "help\t\n"
)


def _domain_quota_report(xs: XenStored, domid: int) -> str:
    dom = xs.domains.get(domid)
    if dom is None:
        raise XsError("ENOENT")
    memory = xs.memory_used(domid)
    rows = (
        ("nodes", xs.store.count_owned(domid)),
        ("watches", dom.watches),
        ("transactions", dom.transactions),
        ("outstanding", 0),
        ("memory", memory),
    )
    return f"Domain {domid}:\n" + "".join(f"{k:<16}: {v:>8}\n" for k, v in rows)
