"""The stubdomain's own devices, found as qemu-trad and Mini-OS find them
([DEV-DISKS], [DEV-NICS], [DEV-VFB], [DEV-PCI]; qemu-trad ``xenstore_parse_domain_config``).

Disks: every ``device/vbd/<id>`` whose backend is dom0's ``vbd``/``tap``/``qdisk``
directory for us, placed by the backend's ``dev`` name: ``hdX`` on IDE (at most four),
``sdX`` on SCSI, ``xvdX`` on IDE when no ``hd*`` exists; ``device-type=cdrom`` makes a
CD-ROM.  NICs: the vifs in index order (the n-th ``-net tap`` opens the n-th).  vfb and
vkbd when present.  Every device is brought up through the xenbus handshake and kept
open while the agent runs.  pcifront comes later (the toolstack creates it on the first
hot-plug): `run_pcifront` waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field

from stubdom.devicemodel.base import Disk, DiskBus
from stubdom.host.frontend import Frontend, FrontendError, list_devices
from stubdom.host.xenbus import XenbusState
from stubdom.xenstore import Client, NoEntry, PermissionDenied, XenStoreError

log = logging.getLogger(__name__)

BACKEND_KINDS = ("vbd", "tap", "qdisk")
MAX_IDE = 4
CLOSE_TIMEOUT = 5.0
#: What we use of each device once Connected (backend nodes, our own nodes), read then
#: as Mini-OS's blkfront and netfront read them: not every node of both directories.
SNAPSHOT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vbd": (("params", "sectors", "sector-size", "info", "mode"), ()),
    "vif": (("mac",), ("mac",)),
    "vfb": ((), ()),
    "vkbd": ((), ()),
}


def _frontend(client: Client, kind: str, devid: int, timeout: float) -> Frontend:
    backend_nodes, own_nodes = SNAPSHOT[kind]
    return Frontend(
        client, kind, devid, timeout=timeout, backend_nodes=backend_nodes, own_nodes=own_nodes
    )


@dataclass
class Discovered:
    disks: list[Disk] = field(default_factory=list)
    vifs: list[int] = field(default_factory=list)  # devids, in index order
    macs: dict[int, str] = field(default_factory=dict)
    vfb: bool = False
    vkbd: bool = False
    frontends: list[Frontend] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    async def close(self) -> None:
        """Let go of every device (bounded: a dead backend must not hang the stop)."""
        for fe in reversed(self.frontends):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await fe.close()
        self.frontends.clear()


def place(dev: str, have_hd: bool) -> tuple[DiskBus, int] | None:
    """The bus and index of a drive named ``dev``, or None (not placeable)."""
    for prefix, kind in (("hd", DiskBus.IDE), ("sd", DiskBus.SCSI), ("xvd", DiskBus.IDE)):
        if dev.startswith(prefix):
            letters, bus = dev[len(prefix) :], kind
            break
    else:
        return None
    if prefix == "xvd" and have_hd:
        return None
    if len(letters) != 1 or not "a" <= letters <= "z":
        return None
    index = ord(letters) - ord("a")
    if bus is DiskBus.IDE and index >= MAX_IDE:
        return None
    return bus, index


async def discover(client: Client, self_domid: int, timeout: float = 30.0) -> Discovered:
    """Bring up our vbds, vifs, vfb and vkbd; what the machine is built from."""
    found = Discovered()
    vbds = await _connect_vbds(client, self_domid, timeout, found)
    await _place_vbds(client, vbds, found)
    for devid in await list_devices(client, "vif"):
        fe = await _connected(client, "vif", devid, timeout, found)
        if fe is not None:
            found.vifs.append(devid)
            found.macs[devid] = fe.mac
    for kind in ("vfb", "vkbd"):
        for devid in await list_devices(client, kind):
            if await _connected(client, kind, devid, timeout, found) is not None:
                setattr(found, kind, True)
    return found


async def _connected(
    client: Client, kind: str, devid: int, timeout: float, found: Discovered
) -> Frontend | None:
    """The device's frontend, connected and added to ``found``; None (with a note) if it
    would not connect."""
    fe = _frontend(client, kind, devid, timeout)
    try:
        await fe.connect()
    except FrontendError as e:
        found.notes.append(f"{kind} {devid}: {e}")
        return None
    found.frontends.append(fe)
    return fe


async def _connect_vbds(
    client: Client, self_domid: int, timeout: float, found: Discovered
) -> list[tuple[int, str, Frontend]]:
    """Each vbd whose dom0 backend points back to us, connected, with its ``dev``."""
    read = functools.partial(client.read_text, denied_as_absent=True)
    vbds: list[tuple[int, str, Frontend]] = []
    for devid in await list_devices(client, "vbd"):
        fe_dir = f"device/vbd/{devid}"
        backend = await read(f"{fe_dir}/backend")
        allowed = {f"/local/domain/0/backend/{k}/{self_domid}/{devid}" for k in BACKEND_KINDS}
        if backend not in allowed:
            found.notes.append(f"vbd {devid}: backend {backend!r} is not dom0's, skipped")
            continue
        if await read(f"{backend}/frontend") not in (
            f"/local/domain/{self_domid}/{fe_dir}",
            None,
        ):
            found.notes.append(f"vbd {devid}: the backend does not point back to us, skipped")
            continue
        dev = await read(f"{backend}/dev") or ""
        fe = _frontend(client, "vbd", devid, timeout)
        try:
            await fe.connect()
        except FrontendError as e:
            found.notes.append(f"vbd {devid} ({dev}): {e}")
            continue
        found.frontends.append(fe)
        vbds.append((devid, dev, fe))
    return vbds


async def _place_vbds(
    client: Client, vbds: list[tuple[int, str, Frontend]], found: Discovered
) -> None:
    """The emulated drive of each vbd (no ``xvd`` drive beside an ``hd`` one)."""
    read = functools.partial(client.read_text, denied_as_absent=True)
    have_hd = any(dev.startswith("hd") for _, dev, _ in vbds)
    for devid, dev, fe in vbds:
        where = place(dev, have_hd)
        if where is None:
            found.notes.append(f"vbd {devid}: cannot place drive {dev!r}, not emulated")
            continue
        cdrom = await read(f"device/vbd/{devid}/device-type") == "cdrom"
        found.disks.append(
            Disk(
                vdev=dev,
                bus=where[0],
                index=where[1],
                path=fe.info.get("params", ""),
                cdrom=cdrom,
                readonly=fe.readonly or cdrom,
                sectors=fe.sectors,
            )
        )


#: The state of our pcifront's frontend; the toolstack writes a new device's as 1.
PCI_STATE = "device/pci/0/state"
#: Where the toolstack names pciback; our pcifront waits for it to appear.
PCI_BACKEND = "device/pci/0/backend"


def _old_device_gone(state: str | None) -> bool | None:
    """Whether the device we were connected to is gone: its frontend directory removed,
    or already replaced by a new device (Initialising), which a quick detach and attach
    can do before we look; waiting for the directory to vanish would then wait forever."""
    return True if state in (None, str(int(XenbusState.INITIALISING))) else None


async def run_pcifront(client: Client, timeout: float = 30.0) -> None:
    """Mini-OS's pcifront thread: wait for ``device/pci/0``, connect, follow pciback
    through hot-plug reconfigurations; start over if the toolstack removes it."""
    while True:
        # Mini-OS watches the backend node itself: a watch on ``device`` would also
        # wake for every console and disk state change (five per save).
        async with client.watch(PCI_BACKEND) as w:
            while not await client.exists(PCI_BACKEND):
                await w.get()
        try:
            async with Frontend(client, "pci", 0, timeout=timeout) as dev:
                log.info("pcifront connected to %s", dev.backend)
                await dev.closed.wait()
        except FrontendError as e:
            log.warning("pcifront: %s", e)
        except (NoEntry, PermissionDenied, XenStoreError) as e:
            log.warning("pcifront: %s", e)
        with contextlib.suppress(XenStoreError):
            await client.wait_until(PCI_STATE, _old_device_gone, timeout=None)
