"""The device model's command line, built like ``libxl__build_device_model_args_old``.

The argv is what libxl would pass to qemu-xen-traditional for an HVM guest
([TS-DMARGS-ORDER], Xen 4.20); `stubdom.protocol.encode_dmargs` turns it into the string the
stubdomain reads from ``/vm/<uuid>/image/dmargs``.
"""

from __future__ import annotations

from stubdom.protocol import DM_ARGV0
from stubdom.toolstack.config import GuestConfig, NicType

#: ``HVM_MAX_VCPUS``: qemu-xen-traditional's ``-vcpus`` and ``-vcpu_avail`` stop there.
HVM_MAX_VCPUS = 128


class DmArgsError(ValueError):
    """A configuration libxl refuses to turn into qemu-trad arguments."""


def vnc_argument(cfg: GuestConfig) -> str:
    """``-vnc``'s value: ``listen:display``, or ``listen`` as given when it has a ``:``."""
    vnc = cfg.vnc
    if ":" in vnc.listen:
        if vnc.display:
            raise DmArgsError(
                f"{cfg.source}: vncdisplay is set and vnclisten {vnc.listen!r} also names a "
                "display; set only one of them"
            )
        arg = vnc.listen
    else:
        arg = f"{vnc.listen or '127.0.0.1'}:{vnc.display}"
    if vnc.password:
        arg += ",password"
    return arg


def vcpu_avail_hex(vcpus: int, max_vcpus: int) -> str:
    """``libxl_bitmap_to_hex_string``: the bitmap's bytes, most significant first."""
    nbytes = (max(max_vcpus, 1) + 7) // 8
    bitmap = (1 << vcpus) - 1
    return "0x" + "".join(f"{(bitmap >> (8 * i)) & 0xFF:02x}" for i in reversed(range(nbytes)))


def build_dm_argv(cfg: GuestConfig, domid: int, saved_state: str | None = None) -> list[str]:
    """The qemu-trad argv for guest ``domid`` (argv[0] is ``stubdom-dm``)."""
    _check_vcpus(cfg)
    argv = [DM_ARGV0, "-d", str(domid), "-domain-name", cfg.name]
    argv += _display_args(cfg)
    for spec in cfg.serial:
        argv += ["-serial", spec]
    argv += _video_args(cfg)
    argv += _platform_args(cfg)
    argv += _nic_args(cfg, domid)
    if cfg.gfx_passthru:
        argv.append("-gfx_passthru")
    if saved_state:
        argv += ["-loadvm", saved_state]
    argv += cfg.device_model_args
    argv += ["-M", "xenfv"]
    argv += cfg.device_model_args_hvm
    return argv


def _check_vcpus(cfg: GuestConfig) -> None:
    if not 1 <= cfg.vcpus <= cfg.max_vcpus <= HVM_MAX_VCPUS:
        raise DmArgsError(
            f"{cfg.source}: vcpus {cfg.vcpus} and maxvcpus {cfg.max_vcpus}: qemu-xen-traditional "
            f"needs 1 <= vcpus <= maxvcpus <= {HVM_MAX_VCPUS}"
        )


def _display_args(cfg: GuestConfig) -> list[str]:
    """VNC, else SDL, else ``-nographic``. (libxl adds ``-nographic`` a second time for
    ``nographic=1`` without VNC or SDL, after the serial ports; once is enough.)"""
    argv: list[str] = []
    if cfg.vnc.enabled:
        argv += ["-vnc", vnc_argument(cfg)]
        if cfg.vnc.findunused:
            argv.append("-vncunused")
    elif not cfg.sdl:
        argv.append("-nographic")
    if cfg.sdl:
        argv.append("-sdl")
        if not cfg.opengl:
            argv.append("-disable-opengl")
    if cfg.keymap:
        argv += ["-k", cfg.keymap]
    return argv


def _video_args(cfg: GuestConfig) -> list[str]:
    argv: list[str] = []
    if cfg.video_memkb:
        argv += ["-videoram", str(cfg.video_memkb // 1024)]
    if cfg.vga == "stdvga":
        argv.append("-std-vga")
    elif cfg.vga == "none":
        argv += ["-vga", "none"]
    elif cfg.vga != "cirrus":
        raise DmArgsError(
            f"{cfg.source}: emulated video card {cfg.vga!r} is not supported by "
            "qemu-xen-traditional; use stdvga, cirrus or none"
        )
    return argv


def _platform_args(cfg: GuestConfig) -> list[str]:
    """Boot order, USB, sound, ACPI and the vcpus."""
    argv: list[str] = []
    if cfg.boot:
        argv += ["-boot", cfg.boot]
    if cfg.usb or cfg.usbdevice:
        argv.append("-usb")
        for dev in cfg.usbdevice:
            argv += ["-usbdevice", dev]
    if cfg.soundhw:
        argv += ["-soundhw", cfg.soundhw]
    if cfg.acpi:
        argv.append("-acpi")
    if cfg.max_vcpus > 1:
        argv += ["-vcpus", str(cfg.max_vcpus)]
    argv += ["-vcpu_avail", vcpu_avail_hex(cfg.vcpus, cfg.max_vcpus)]
    return argv


def _nic_args(cfg: GuestConfig, domid: int) -> list[str]:
    """An emulated NIC and its tap per ioemu vif; ``-net none`` when there is none."""
    argv: list[str] = []
    ioemu = [nic for nic in cfg.nics if nic.type is NicType.IOEMU]
    for nic in ioemu:
        ifname = f"{nic.ifname}-emu" if nic.ifname else f"vif{domid}.{nic.devid}-emu"
        argv += [
            "-net",
            f"nic,vlan={nic.devid},macaddr={nic.mac},model={nic.model}",
            "-net",
            f"tap,vlan={nic.devid},ifname={ifname},bridge={nic.bridge},script=no,downscript=no",
        ]
    if not ioemu:
        argv += ["-net", "none"]
    return argv
