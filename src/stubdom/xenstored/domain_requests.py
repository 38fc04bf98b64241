"""Handlers of the domain requests: INTRODUCE, RELEASE, SET_TARGET and friends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stubdom.wire.constants import DOMID_FIRST_RESERVED, DOMID_SELF, OK
from stubdom.wire.packet import RawPacket
from stubdom.wire.paths import domain_path
from stubdom.xenstored.errors import DomainIntroduced, XsError
from stubdom.xenstored.requests import atoi, onearg, strings

if TYPE_CHECKING:
    from stubdom.xenstored.connection import Connection
    from stubdom.xenstored.core import View, XenStored
    from stubdom.xenstored.domains import Domain


def op_introduce(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    args = strings(packet)
    if len(args) < 3:
        raise XsError("EINVAL")
    domid = atoi(args[0])
    port = atoi(args[2])  # evtchn_port_t is unsigned: only 0 is refused
    if port == 0:
        raise XsError("EINVAL")
    xs.gone.discard(domid)
    if domid >= DOMID_FIRST_RESERVED or not xs.domain_exists(domid):
        raise XsError("EINVAL")
    dom = xs.domain_record(domid)
    dom.port = port
    xs.domain_changed(domid)
    if not dom.introduced:
        dom.introduced = True
        dom.shutdown = False
        if domid != xs.priv_domid:
            xs.notifications.append(DomainIntroduced(domid))
            xs.fire_special("@introduceDomain")
    else:
        # Every INTRODUCE resets the domain's connection (cx ``domain_conn_reset``).
        for c in xs.domain_connections(domid):
            xs.reset_connection(c)
    return OK


def _introduced_guest(xs: XenStored, packet: RawPacket) -> Domain:
    """The introduced domain a RELEASE or RESUME names; dom0 is EINVAL, others ENOENT."""
    domid = atoi(onearg(packet))
    if domid == 0:
        raise XsError("EINVAL")
    dom = xs.introduced(domid)
    if dom is None:
        raise XsError("ENOENT")
    return dom


def op_release(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    dom = _introduced_guest(xs, packet)
    domid = dom.domid
    if dom.target_refs:
        # cx quirk: a stubdomain's reference absorbs the first RELEASE of its target.
        dom.target_refs -= 1
        xs.domain_changed(domid)
        return OK
    # The reply goes before the events of the domain's destruction (as observed in cx).
    xs.send(conn, (packet[0], OK, packet[2], packet[3]))
    xs.destroy_domain(domid)
    return None


def op_get_domain_path(
    xs: XenStored, conn: Connection, packet: RawPacket, view: View
) -> bytes | None:
    domid = atoi(onearg(packet))
    return domain_path(domid).encode() + b"\0"


def op_is_domain_introduced(
    xs: XenStored, conn: Connection, packet: RawPacket, view: View
) -> bytes | None:
    domid = atoi(onearg(packet))
    yes = domid == DOMID_SELF or xs.introduced(domid) is not None
    return b"T\0" if yes else b"F\0"


def op_resume(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    _introduced_guest(xs, packet).shutdown = False
    return OK


def op_set_target(xs: XenStored, conn: Connection, packet: RawPacket, view: View) -> bytes | None:
    args = strings(packet)
    if len(args) < 2:
        raise XsError("EINVAL")
    domid, tdomid = atoi(args[0]), atoi(args[1])
    dom = xs.introduced(domid)
    if dom is None:
        raise XsError("ENOENT")
    tdom = xs.introduced(tdomid)
    if tdom is None:
        raise XsError("ENOENT")
    if dom.target is not None and dom.target != tdomid:
        old = xs.domains.get(dom.target)
        if old is not None and old.target_refs:
            old.target_refs -= 1
            xs.domain_changed(old.domid)
    if dom.target != tdomid:
        tdom.target_refs += 1
    dom.target = tdomid
    xs.domain_changed(domid)
    xs.domain_changed(tdomid)
    return OK


def op_reset_watches(
    xs: XenStored, conn: Connection, packet: RawPacket, view: View
) -> bytes | None:
    xs.reset_connection(conn)
    return OK
