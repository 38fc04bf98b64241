"""The guest configuration the toolstack acts on, after xl.cfg parsing and defaults.

Field names follow libxl's ``libxl_domain_config`` where one exists; defaults are
libxl's for an HVM guest with a qemu-xen-traditional device model in a stubdomain.
The parser (`stubdom.toolstack.xlcfg`) fills these in; the builders of dmargs and the
stubdomain spawner only read them.
"""

from __future__ import annotations

import enum
import uuid as uuidlib
from dataclasses import dataclass, field

from stubdom.protocol import STUBDOM_MEMKB, Bdf


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW = "qcow"
    QCOW2 = "qcow2"
    VHD = "vhd"
    QED = "qed"
    EMPTY = "empty"  # a cdrom drive with no medium


@dataclass
class DiskSpec:
    """One ``disk=`` entry (xl-disk-configuration(5))."""

    vdev: str
    target: str = ""
    format: DiskFormat = DiskFormat.RAW
    readwrite: bool = True
    cdrom: bool = False
    backend: str = "0"
    script: str | None = None
    direct_io_safe: bool = False
    discard: bool | None = None
    #: ``backendtype=``: phy, tap, qdisk or standalone (None: libxl chooses).
    backendtype: str | None = None
    #: ``trusted``/``untrusted`` (None: libxl's default, trusted).
    trusted: bool | None = None
    #: ``specification=``: xen or virtio.
    specification: str = "xen"


class NicType(enum.StrEnum):
    IOEMU = "ioemu"  # emulated NIC plus PV (the HVM default)
    VIF = "vif"  # PV only


@dataclass
class NicSpec:
    """One ``vif=`` entry (xl-network-configuration(5))."""

    devid: int
    mac: str
    bridge: str = "xenbr0"
    model: str = "rtl8139"
    type: NicType = NicType.IOEMU
    ifname: str | None = None
    script: str | None = None
    ip: str | None = None
    mtu: int | None = None
    #: ``backend=``: the backend domain (name or id).
    backend: str = "0"


class RdmPolicy(enum.StrEnum):
    STRICT = "strict"
    RELAXED = "relaxed"


@dataclass
class PciSpec:
    """One ``pci=`` entry (xl-pci-configuration(5)); ``all_functions`` for ``BB:DD.*``."""

    bdf: Bdf
    vslot: int | None = None
    all_functions: bool = False
    msitranslate: bool = False
    power_mgmt: bool = False
    permissive: bool = False
    seize: bool = False
    rdm_policy: RdmPolicy = RdmPolicy.RELAXED
    name: str | None = None

    @property
    def vdevfn(self) -> int:
        """The devfn asked of the device model (0: let it choose).  A single function
        sits at function 0 of its slot whatever its host function, since only function
        0 raises the guest's hot-plug event (libxl's ``device_pci_add_stubdom_done``);
        ``BB:DD.*`` adds each function to the slot in `stubdom.toolstack.pci`."""
        return 0 if self.vslot is None else self.vslot << 3


@dataclass
class VncConfig:
    enabled: bool = True
    listen: str = "127.0.0.1"
    display: int = 0
    findunused: bool = True
    password: str | None = None


@dataclass
class GuestConfig:
    """An HVM guest and its qemu-xen-traditional stubdomain."""

    name: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    #: The domain id to create the guest with (libxl's ``c_info.domid``, which
    #: ``xl save -D`` records); None lets the hypervisor choose.  No xl.cfg key sets it.
    domid: int | None = None
    memory_mb: int = 128
    maxmem_mb: int | None = None
    vcpus: int = 1
    maxvcpus: int | None = None
    bios: str = "rombios"
    boot: str = "cda"
    acpi: bool = True
    timeoffset: str = ""
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    pcis: list[PciSpec] = field(default_factory=list)
    serial: list[str] = field(default_factory=list)
    vnc: VncConfig = field(default_factory=VncConfig)
    sdl: bool = False
    opengl: bool = False
    nographic: bool = False
    keymap: str | None = None
    vga: str = "cirrus"  # "stdvga", "cirrus" or "none"
    videoram_mb: int | None = None
    usb: bool = False
    usbdevice: list[str] = field(default_factory=list)
    soundhw: str | None = None
    gfx_passthru: bool = False
    device_model_version: str = "qemu-xen-traditional"
    device_model_stubdomain_override: bool = True
    stubdomain_memory_mb: int | None = None
    stubdomain_kernel: str | None = None
    stubdomain_cmdline: str = ""
    device_model_args: list[str] = field(default_factory=list)
    device_model_args_hvm: list[str] = field(default_factory=list)
    #: What the domain's monitor does when it shuts down for each reason (xl.cfg(5)):
    #: destroy, restart, rename-restart, preserve, coredump-destroy, coredump-restart
    #: or soft-reset (see `stubdom.toolstack.actions`).
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    on_soft_reset: str = "soft-reset"
    #: Where the file came from, for messages (``<command line>`` for overrides).
    source: str = "<config>"

    @property
    def max_vcpus(self) -> int:
        return self.maxvcpus or self.vcpus

    @property
    def memkb(self) -> int:
        return self.memory_mb * 1024

    @property
    def max_memkb(self) -> int:
        return (self.maxmem_mb or self.memory_mb) * 1024

    @property
    def video_memkb(self) -> int:
        """qemu-trad's video RAM: cirrus is forced to 4 MiB, stdvga needs at least 8."""
        if self.vga == "none":
            return 0
        if self.vga == "stdvga":
            return max(self.videoram_mb or 8, 8) * 1024
        return 4 * 1024

    @property
    def stubdomain_memkb(self) -> int:
        base = (self.stubdomain_memory_mb * 1024) if self.stubdomain_memory_mb else STUBDOM_MEMKB
        return base + self.video_memkb

    @property
    def graphics(self) -> bool:
        """Whether the stubdomain gets a VFB and a VKB (vnc, sdl or spice enabled)."""
        return self.vnc.enabled or self.sdl
