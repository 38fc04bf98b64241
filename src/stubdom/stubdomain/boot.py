"""What a stubdomain reads before anything else, as Mini-OS's ``main.c`` reads it.

``call_main`` reads ``target`` (relative: ``/local/domain/<self>/target``), then the
guest's ``vm`` and ``<vm>/image/dmargs`` (missing dmargs: an empty string); qemu-trad
reads its own ``domid``.  The device-model agent and the Mini-OS layer both start here.
"""

from __future__ import annotations

from dataclasses import dataclass

from stubdom import protocol as proto
from stubdom.xenstore import Client


class BootError(Exception):
    """The stubdomain cannot find its guest; the message is Mini-OS's or says what."""


@dataclass(frozen=True)
class BootInfo:
    self_domid: int
    target: int
    vm: str
    dmargs: str


async def read_boot_info(client: Client) -> BootInfo:
    """Our domid, the guest's, its vm path and dmargs; `BootError` if one is missing."""
    try:
        self_domid = int(await client.read_text(proto.DOMID_RELATIVE) or "")
    except ValueError:
        raise BootError("cannot read our own domid") from None
    try:
        target = int(await client.read_text(proto.TARGET_RELATIVE) or "")
    except ValueError:
        raise BootError("Couldn't read target") from None
    vm = await client.read_text(proto.vm_path_node(target))
    if vm is None:
        raise BootError(f"cannot read the vm path of domain {target}")
    dmargs = await client.read_text(proto.dmargs_path(vm)) or ""
    return BootInfo(self_domid, target, vm, dmargs)
