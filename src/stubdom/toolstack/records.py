"""The xenstore trees of a domain, written the way libxl writes them.

`make_domain` is ``libxl__domain_make`` (the trees, right after the domain is created),
`introduce_domain` is the end of ``libxl__build_post`` (memory, store, vcpus, then
INTRODUCE so the domain gets its connection and ``@introduceDomain`` fires), and
`remove_domain` is the xenstore half of ``libxl__destroy_domid`` (remove the trees,
RELEASE).  Permissions: ``n0,r<domid>`` for the directories the domain may only read,
``n<domid>`` for those it writes (libxl's ``roperm`` and ``rwperm``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

from stubdom.wire.paths import domain_path
from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import Client, NoEntry, Transaction
from stubdom.xenstore.pipeline import pipelined

log = logging.getLogger(__name__)

#: The event channel port we tell xenstored; there are no event channels here.
STORE_PORT = 1
#: Directories the domain writes (libxl ``rwperm``), relative to its home.
RW_NODES = (
    "device/suspend/event-channel",
    "control/shutdown",
    "control/feature-poweroff",
    "control/feature-reboot",
    "control/feature-suspend",
    "control/sysrq",
    "data",
    "drivers",
    "feature",
    "attr",
    "error",
)


def roperm(domid: int) -> list[Perm]:
    return [Perm(Access.NONE, 0), Perm(Access.READ, domid)]


def rwperm(domid: int) -> list[Perm]:
    return [Perm(Access.NONE, domid)]


def vm_path(uuid: str) -> str:
    return f"/vm/{uuid}"


@dataclass
class DomainRecord:
    domid: int
    name: str
    uuid: str
    hvm: bool = False
    max_memkb: int = 0
    target_memkb: int = 0
    vcpus: int = 1
    #: vCPUs the domain may have (None: ``vcpus``); those above ``vcpus`` start offline.
    max_vcpus: int | None = None
    #: Extra nodes below the domain's home (``xsdata``) and ``platform/`` (``platformdata``).
    xsdata: dict[str, str] = field(default_factory=dict)
    platformdata: dict[str, str] = field(default_factory=dict)

    @property
    def dom_path(self) -> str:
        return domain_path(self.domid)

    @property
    def vm_path(self) -> str:
        return vm_path(self.uuid)


def _mknod(t: Transaction, path: str, perms: list[Perm]) -> list[Awaitable[None]]:
    """``libxl__xs_mknod``: an empty node with explicit permissions."""
    return [t.write(path, b""), t.set_perms(path, perms)]


async def _rm_checked(t: Transaction, path: str) -> None:
    with contextlib.suppress(NoEntry):
        await t.rm(path)


async def make_domain(xs: Client, rec: DomainRecord) -> None:
    """Write the trees ``libxl__domain_make`` writes, in one transaction (its requests
    pipelined: one round trip, not one per node)."""
    dom, vm = rec.dom_path, rec.vm_path

    async def body(t: Transaction) -> None:
        requests: list[Awaitable[None]] = []
        for path in (dom, vm):
            requests.append(_rm_checked(t, path))
            requests += _mknod(t, path, roperm(rec.domid))
        requests += [
            t.write(f"{dom}/vm", vm),
            t.write(f"{dom}/name", rec.name),
            t.write(f"{vm}/name", rec.name),
            t.write(f"{vm}/uuid", rec.uuid),
            t.write(f"{vm}/image/ostype", "hvm" if rec.hvm else "linux"),
            t.write(f"{vm}/start_time", "0"),
        ]
        requests += [t.write(f"{dom}/{key}", value) for key, value in rec.xsdata.items()]
        requests += [
            t.write(f"{dom}/platform/{key}", value) for key, value in rec.platformdata.items()
        ]
        requests += [
            t.write(f"{dom}/control/platform-feature-multiprocessor-suspend", "1"),
            t.write(f"{dom}/control/platform-feature-xs_reset_watches", "1"),
        ]
        requests += _mknod(t, f"{dom}/device", roperm(rec.domid))
        requests += _mknod(t, f"{dom}/control", roperm(rec.domid))
        if rec.hvm:
            requests += _mknod(t, f"{dom}/hvmloader/generation-id-address", rwperm(rec.domid))
        for node in RW_NODES:
            requests += _mknod(t, f"{dom}/{node}", rwperm(rec.domid))
        await pipelined(*requests)

    await xs.retry_transaction(body)
    log.debug("wrote the xenstore trees of domain %d (%s)", rec.domid, rec.name)


async def introduce_domain(xs: Client, rec: DomainRecord) -> None:
    """What ``libxl__build_post`` writes, then INTRODUCE (``@introduceDomain`` fires)."""
    dom = rec.dom_path

    async def body(t: Transaction) -> None:
        await pipelined(
            t.write(f"{dom}/domid", str(rec.domid)),
            t.write(f"{dom}/memory/static-max", str(rec.max_memkb)),
            t.write(f"{dom}/memory/target", str(rec.target_memkb or rec.max_memkb)),
            t.write(f"{dom}/store/port", str(STORE_PORT)),
            t.write(f"{dom}/store/ring-ref", "0"),
            *(
                t.write(f"{dom}/cpu/{i}/availability", "online" if i < rec.vcpus else "offline")
                for i in range(max(rec.vcpus, rec.max_vcpus or 0))
            ),
        )

    await xs.retry_transaction(body)
    await xs.introduce(rec.domid, 0, STORE_PORT)


async def remove_domain(xs: Client, domid: int, uuid: str | None = None) -> None:
    """Remove a destroyed domain's trees and RELEASE it (``@releaseDomain`` fires)."""
    dom = domain_path(domid)
    if uuid is None:
        try:
            vm = (await xs.read(f"{dom}/vm")).decode()
        except NoEntry:
            vm = None
    else:
        vm = vm_path(uuid)
    for path in (vm, dom, f"/libxl/{domid}"):
        if path:
            with contextlib.suppress(NoEntry):
                await xs.rm(path)
    if await xs.is_domain_introduced(domid):
        await xs.release(domid)
