"""pciback: passes host PCI functions to a domain on a virtual bus (``vpci`` mode).

Setup exports every ``dev-N``: it gives the function a slot on virtual bus
``0000:00`` (functions of one physical slot share a virtual slot, as
``xen_pcibk_add_pci_dev`` keeps multi-function devices together), publishes
``vdev-N`` (``%04x:%02x:%02x.%02x``, pciback's format) and sets ``state-N`` to 3, plus
the root list (``root_num``, ``root-0``) pcifront scans.

Hot-plug is ``xen_pcibk_reconfigure``: with the backend in 7 (Reconfiguring, set by
the toolstack) and the frontend following to 7, each ``state-N`` of 1 is attached
(-> 3) and each of 5 detached (-> 6); the backend goes 8 (Reconfigured), the frontend
answers 4 and the backend returns to 4.
"""

from __future__ import annotations

from typing import ClassVar

from stubdom.host.backends.generic import BackendDevice, BackendDriver, Nodes, SetupFailed
from stubdom.host.xenbus import XenbusState
from stubdom.protocol import Bdf

#: xen/include/public/io/pciif.h ``XEN_PCI_MAGIC``: pcifront writes it as ``magic``.
XEN_PCI_MAGIC = "7"
PCI_SLOTS = 32


def vdev_string(slot: int, func: int) -> str:
    return f"0000:00:{slot:02x}.{func:02x}"


class _Bus:
    """The virtual bus as the backend directory currently describes it."""

    def __init__(self) -> None:
        #: index -> (physical address, virtual slot)
        self.slots: dict[int, tuple[Bdf, int]] = {}

    def place(self, index: int, address: Bdf) -> str:
        physical = (address.domain, address.bus, address.dev)
        shared = [s for a, s in self.slots.values() if (a.domain, a.bus, a.dev) == physical]
        if shared:
            slot = shared[0]
        else:
            used = {s for _, s in self.slots.values()}
            free = [s for s in range(PCI_SLOTS) if s not in used]
            if not free:
                raise SetupFailed("no free slot on the virtual PCI bus")
            slot = free[0]
        self.slots[index] = (address, slot)
        return vdev_string(slot, address.func)


class PciBackend(BackendDriver):
    kind: ClassVar[str] = "pci"
    frontend_requires: ClassVar[tuple[str, ...]] = ("pci-op-ref", "event-channel", "magic")

    async def _num_devs(self, dev: BackendDevice) -> int:
        raw = await dev.read("num_devs")
        try:
            num = int(raw or "")
        except ValueError:
            raise SetupFailed(f"bad num_devs {raw!r}") from None
        if not 0 <= num <= 256:
            raise SetupFailed(f"num_devs {num} out of range")
        return num

    async def _address(self, dev: BackendDevice, index: int) -> Bdf:
        raw = await dev.read(f"dev-{index}")
        try:
            return Bdf.parse(raw or "")
        except ValueError as exc:
            raise SetupFailed(f"dev-{index}: {exc}") from None

    async def _bus(self, dev: BackendDevice, num: int) -> _Bus:
        """The functions already attached (state-N 3 or 4 with a vdev-N)."""
        bus = _Bus()
        for i in range(num):
            state = XenbusState.parse(await dev.read(f"state-{i}"))
            vdev = await dev.read(f"vdev-{i}")
            if state not in (XenbusState.INITIALISED, XenbusState.CONNECTED) or vdev is None:
                continue
            try:
                virtual = Bdf.parse(vdev)
            except ValueError:
                continue
            bus.slots[i] = (await self._address(dev, i), virtual.dev)
        return bus

    async def setup(self, dev: BackendDevice) -> Nodes:
        num = await self._num_devs(dev)
        bus = _Bus()
        nodes: Nodes = {}
        for i in range(num):
            nodes[f"vdev-{i}"] = bus.place(i, await self._address(dev, i))
            nodes[f"state-{i}"] = XenbusState.INITIALISED.node().decode()
        nodes["root_num"] = "1"
        nodes["root-0"] = "0000:00"
        return nodes

    async def connect(self, dev: BackendDevice) -> Nodes:
        await super().connect(dev)
        magic = await dev.read_frontend("magic")
        if magic != XEN_PCI_MAGIC:
            raise SetupFailed(f"version mismatch ({magic}/{XEN_PCI_MAGIC}) with pcifront - halting")
        return {}

    async def reconfigure(
        self, dev: BackendDevice, own: XenbusState, frontend: XenbusState
    ) -> tuple[XenbusState | None, Nodes]:
        if own is XenbusState.RECONFIGURED:
            return (XenbusState.CONNECTED, {}) if frontend is XenbusState.CONNECTED else (None, {})
        if own is not XenbusState.RECONFIGURING or frontend is not XenbusState.RECONFIGURING:
            return None, {}  # pciback acts once pcifront has followed to Reconfiguring
        num = await self._num_devs(dev)
        bus = await self._bus(dev, num)
        nodes: Nodes = {}
        for i in range(num):
            sub = XenbusState.parse(await dev.read(f"state-{i}"))
            if sub is XenbusState.INITIALISING:
                nodes[f"vdev-{i}"] = bus.place(i, await self._address(dev, i))
                nodes[f"state-{i}"] = XenbusState.INITIALISED.node().decode()
            elif sub is XenbusState.CLOSING:
                bus.slots.pop(i, None)
                nodes[f"state-{i}"] = XenbusState.CLOSED.node().decode()
        return XenbusState.RECONFIGURED, nodes
