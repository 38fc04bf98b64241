"""What the stubdomain agent asks of a device model, whatever emulates the machine.

The agent (`stubdom.stubdomain`) speaks the xenstore protocol and owns the consoles;
a `DeviceModel` only emulates: it builds the machine the dmargs describe, hot-plugs
passed-through PCI functions, pauses, dumps and restores its state.  Two backends
implement it: `sim` (a pure-Python machine) and `qemu` (upstream QEMU over QMP).
Nothing here touches xenstore.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stubdom.protocol import AUTO_PHP_SLOT, Bdf

if TYPE_CHECKING:
    from stubdom.devicemodel.stream import DecodedState

#: Bytes, or a view of them: a saved state is passed on without being copied.
BytesLike = bytes | bytearray | memoryview


class DeviceModelError(Exception):
    """A request the device model refuses; the message is what goes to the log."""


class PciInsertFailed(DeviceModelError):
    """``pci-ins`` failed; ``text`` is qemu-trad's wording for ``parameter``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class PciRemoveFailed(DeviceModelError):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class DiskBus(enum.StrEnum):
    IDE = "ide"
    SCSI = "scsi"


@dataclass(frozen=True)
class Disk:
    """A disk the stubdomain found among its vbds (placement from the vdev name)."""

    vdev: str
    bus: DiskBus
    index: int  # IDE: bus = index // 2, unit = index % 2; SCSI: the id
    path: str  # what the frontend reads (the backend's params)
    cdrom: bool = False
    readonly: bool = False
    sectors: int = 0


@dataclass(frozen=True)
class Nic:
    """An emulated NIC (``-net nic``) bound to the n-th vif of the stubdomain."""

    vlan: int
    mac: str
    model: str = "rtl8139"
    vif: int | None = None  # the devid of the vif it was bound to


@dataclass
class MachineConfig:
    """The machine the dmargs describe, after discovery (what a backend builds)."""

    guest_domid: int
    name: str = ""
    vcpus: int = 1
    vcpu_avail: int = 1  # bitmap
    videoram_mb: int = 4
    vga: str = "cirrus"  # "cirrus", "stdvga" or "none"
    boot: str = "cda"
    acpi: bool = False
    usb: bool = False
    usbdevices: list[str] = field(default_factory=list)
    soundhw: str | None = None
    serial: list[str] = field(default_factory=list)
    graphics: bool = False  # vnc/sdl requested (served by the vfb backend in dom0)
    gfx_passthru: bool = False
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)


@dataclass(frozen=True)
class PciRequest:
    """A ``pci-ins`` as parsed like qemu-trad's ``parse_bdf`` (the segment is dropped)."""

    bdf: Bdf
    devfn: int = AUTO_PHP_SLOT  # requested slot<<3|func, or AUTO_PHP_SLOT
    msitranslate: bool = False
    power_mgmt: bool = False
    permissive: bool = False


#: Logs a line to console 0 (the device-model log).
LogFn = Callable[[str], None]


class DeviceModel(ABC):
    """One emulated machine.  Methods are async; errors are `DeviceModelError`s."""

    name: str = "?"

    @abstractmethod
    async def start(
        self, machine: MachineConfig, log: LogFn, state: BytesLike | DecodedState | None = None
    ) -> None:
        """Build the machine; with ``state`` (from ``-loadvm``), restore it first: a
        stream, or a `DecodedState` the agent's reader already checked whole.
        Returns once the machine runs."""

    @abstractmethod
    async def pci_insert(self, req: PciRequest) -> int:
        """Hot-plug a function; the devfn used.  `PciInsertFailed` with qemu-trad's text
        (``no free hotplug devfn`` / ``wrong bdf or vdevfn``) on refusal."""

    @abstractmethod
    async def pci_remove(self, bdf: Bdf) -> int:
        """Ask the guest to eject the slot holding ``bdf`` (function 0 only); returns the
        devfn.  `PciRemoveFailed` for an unknown device or a non-zero function."""

    @abstractmethod
    async def wait_ejected(self, devfn: int) -> None:
        """Return once the guest has ejected ``devfn``'s slot (may never happen)."""

    @abstractmethod
    async def pause(self) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @abstractmethod
    async def save_state(self) -> bytes:
        """The device state of the paused machine, as one self-describing stream."""

    async def save_state_parts(self) -> Sequence[BytesLike]:
        """`save_state` as pieces to write one after the other (a backend with a large
        state overrides it to hand out its buffers without joining them)."""
        return [await self.save_state()]

    @abstractmethod
    async def set_vcpus(self, online: set[int]) -> None:
        """vCPU hot-plug (``/local/domain/<G>/cpu/<n>/availability``)."""

    @abstractmethod
    async def usb_add(self, spec: str) -> None: ...

    @abstractmethod
    async def usb_del(self, spec: str) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """End the machine (the agent is stopping); idempotent."""

    @abstractmethod
    def snapshot(self) -> dict[str, object]:
        """A comparable description of the machine (slots, devices, vcpus, run state),
        for tests that check a restore gives the machine back."""
