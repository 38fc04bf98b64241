"""The device model's command line: Mini-OS's argv and qemu-trad's options ([DM-ARGV],
[TS-DMARGS-ORDER]).

argv is the kernel command line words followed by the dmargs words (`build_argv`).  The
agent's own options (``--dm=``, ``--compat=``, ``--eject-delay=``, ``--sim-ram=``) may only
come from the kernel command line; they are taken out first (`split_agent_options`).  The rest is
parsed as the qemu-traditional options libxl produces (`parse_dm_args`): a value qemu
would reject (a missing argument, a number that is not one, a bad MAC) is a
`DmArgsError` and stops the agent; what we understand but cannot honour in a
stubdomain is kept as a note for the log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from stubdom.devicemodel.base import MachineConfig, Nic
from stubdom.protocol import LOADVM_OPTIONS, split_dmargs

#: Backends the agent can drive (``--dm=``).
BACKENDS = ("sim", "qemu")
COMPAT_QEMU_TRAD = "qemu-trad"
#: ``--sim-ram=MIB`` at most this: the saved state must fit the stream's MAX_PAYLOAD.
MAX_SIM_RAM_MB = 255


class DmArgsError(ValueError):
    """A malformed command line: the agent cannot start; the message says which word."""


#: ``DOMID_FIRST_RESERVED``: the guest of a stubdomain is an ordinary domain below it.
DOMID_FIRST_RESERVED = 0x7FF0
#: ``HVM_MAX_VCPUS``: ``-vcpus`` and the ``-vcpu_avail`` bitmap stop there.
HVM_MAX_VCPUS = 128


def _w(text: str, limit: int = 40) -> str:
    """A word to quote in a one-line message or note: escaped if it has a control
    character or a lone surrogate (a non-UTF-8 command line), cut short if long."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _r(text: str) -> str:
    """``repr(text)``, cut short."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


@dataclass(frozen=True)
class AgentOptions:
    """The agent's own options, from the kernel command line."""

    dm: str = "sim"
    compat: bool = False  # reproduce qemu-traditional to the letter
    eject_delay: float | None = 0.2  # the sim's guest ejects after this; None: never
    sim_ram_mb: int = 0  # MiB of guest RAM contents the sim carries in its saved state


def split_agent_options(words: list[str]) -> tuple[AgentOptions, list[str]]:
    """Take ``--dm=``, ``--compat=``, ``--eject-delay=`` and ``--sim-ram=`` out of ``words``."""
    dm, compat, delay, ram = "sim", False, AgentOptions.eject_delay, 0
    rest: list[str] = []
    for w in words:
        name, eq, value = w.partition("=")
        if name == "--dm":
            if value not in BACKENDS:
                raise DmArgsError(
                    f"--dm={_w(value)}: unknown backend (one of {', '.join(BACKENDS)})"
                )
            dm = value
        elif name == "--compat":
            if value != COMPAT_QEMU_TRAD:
                raise DmArgsError(f"--compat={_w(value)}: only --compat={COMPAT_QEMU_TRAD} exists")
            compat = True
        elif name == "--eject-delay":
            if value == "never":
                delay = None
            else:
                try:
                    delay = float(value)
                except ValueError:
                    raise DmArgsError(f"--eject-delay={_w(value)}: not SECONDS or never") from None
                if not 0 <= delay < float("inf"):
                    raise DmArgsError(
                        f"--eject-delay={_w(value)}: must be a finite, non-negative number of "
                        "seconds (or never)"
                    )
        elif name == "--sim-ram":
            if not value.isascii() or not value.isdigit() or int(value) > MAX_SIM_RAM_MB:
                raise DmArgsError(
                    f"--sim-ram={_w(value)}: MiB of guest RAM, 0 to {MAX_SIM_RAM_MB}"
                )
            ram = int(value)
        elif name.startswith("--") and eq:
            raise DmArgsError(f"{_w(w)}: unknown agent option")
        else:
            rest.append(w)
    return AgentOptions(dm, compat, delay, ram), rest


def build_argv(cmdline_words: list[str], dmargs: str) -> list[str]:
    """Mini-OS ``call_main``: the kernel command line words, then the dmargs words."""
    return [*cmdline_words, *split_dmargs(dmargs)]


def loadvm_argument(argv: list[str]) -> str | None:
    """The argument of qemu's ``-loadvm`` (or ``--loadvm``) in ``argv``, the last one
    winning as in qemu's option loop; None without one."""
    found = None
    for i, word in enumerate(argv[:-1]):
        if word in LOADVM_OPTIONS:
            found = argv[i + 1]
    return found


@dataclass(frozen=True)
class NicOption:
    """``-net nic,vlan=N,macaddr=M,model=X``."""

    vlan: int
    mac: str
    model: str


@dataclass
class DmOptions:
    """What the qemu-trad options say; `machine` turns it into a `MachineConfig`."""

    domid: int | None = None
    name: str = ""
    vcpus: int = 1
    vcpu_avail: int | None = None
    videoram_mb: int = 4
    vga: str = "cirrus"
    boot: str = "cda"
    acpi: bool = False
    usb: bool = False
    usbdevices: list[str] = field(default_factory=list)
    soundhw: str | None = None
    serial: list[str] = field(default_factory=list)
    #: qemu shows a display unless ``-nographic`` (libxl drops ``-sdl`` from dmargs).
    graphics: bool = True
    gfx_passthru: bool = False
    keymap: str | None = None
    nics: list[NicOption] = field(default_factory=list)
    #: The vlan of each ``-net tap``, in order: the n-th binds to the n-th vif.
    taps: list[int] = field(default_factory=list)
    net_none: bool = False
    loadvm: str | None = None
    #: Options understood but not honoured here, each with its reason (for the log).
    notes: list[str] = field(default_factory=list)

    def machine(self, guest: int) -> MachineConfig:
        avail = self.vcpu_avail if self.vcpu_avail is not None else (1 << self.vcpus) - 1
        return MachineConfig(
            guest_domid=guest,
            name=self.name,
            vcpus=self.vcpus,
            vcpu_avail=avail,
            videoram_mb=self.videoram_mb,
            vga=self.vga,
            boot=self.boot,
            acpi=self.acpi,
            usb=self.usb,
            usbdevices=list(self.usbdevices),
            soundhw=self.soundhw,
            serial=list(self.serial),
            graphics=self.graphics,
            gfx_passthru=self.gfx_passthru,
        )

    def bind_nics(self, vifs: list[int]) -> list[Nic]:
        """Each ``-net nic`` with the vif its vlan's tap opened (the n-th tap, the n-th
        vif by index, as Mini-OS's static counter does); notes what stays unbound."""
        tap_vif: dict[int, int] = {}
        for n, vlan in enumerate(self.taps):
            if n < len(vifs):
                tap_vif.setdefault(vlan, vifs[n])
            else:
                self.notes.append(
                    f"-net tap (vlan {vlan}): no vif number {n} in the stubdomain, left unconnected"
                )
        out = []
        for nic in self.nics:
            vif = tap_vif.get(nic.vlan)
            if vif is None:
                self.notes.append(f"-net nic vlan={nic.vlan}: no tap on that vlan, no network")
            out.append(Nic(vlan=nic.vlan, mac=nic.mac, model=nic.model, vif=vif))
        return out


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
_VGA = {"std": "stdvga", "cirrus": "cirrus", "none": "none"}
#: Options that take one argument and that we read.
_WITH_ARG = frozenset(
    {
        "-d", "-domain-name", "-vnc", "-serial", "-videoram", "-vga", "-boot", "-usbdevice",
        "-soundhw", "-vcpus", "-vcpu_avail", "-net", "-loadvm", "-k", "-M", "-monitor",
        "-m", "-name", "-parallel", "-pciemulation", "-keymap",
    }
)  # fmt: skip
#: Options with an argument we accept and ignore, with the reason.
_IGNORED_WITH_ARG = {
    "-M": "the machine is always xenfv",
    "-monitor": "no monitor in a stubdomain",
    "-m": "the guest's memory is the hypervisor's business",
    "-name": "use -domain-name",
    "-parallel": "no parallel port emulation",
    "-pciemulation": "no PCI emulation of host devices",
}
_IGNORED_FLAGS = {
    "-sdl": "SDL is served by the dom0 backend of the vfb",
    "-disable-opengl": "no display of our own",
    "-vncunused": "VNC is served by the dom0 backend of the vfb",
    "-full-screen": "no display of our own",
    "-localtime": "the clock comes from rtc/timeoffset",
    "-S": "the machine starts when the toolstack unpauses the guest",
}


def _int(opt: str, value: str, base: int = 10) -> int:
    try:
        n = int(value, base)
    except ValueError:
        raise DmArgsError(f"{opt} {_r(value)}: not a number") from None
    if n < 0:
        raise DmArgsError(f"{opt} {_r(value)}: must not be negative")
    return n


def _kv(opt: str, text: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = text.partition(",")
    out: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise DmArgsError(f"{opt} {_r(text)}: {_r(item)} is not key=value")
        out[k] = v
    return kind, out


def _net(opts: DmOptions, value: str) -> None:
    kind, kv = _kv("-net", value)
    vlan = _int("-net vlan", kv.get("vlan", "0"))
    if kind == "nic":
        mac = kv.get("macaddr", "")
        if mac and not _MAC.match(mac):
            raise DmArgsError(f"-net {_r(value)}: bad macaddr {_r(mac)}")
        opts.nics.append(NicOption(vlan, mac.lower(), kv.get("model", "rtl8139")))
    elif kind == "tap":
        opts.taps.append(vlan)  # ifname, bridge and script mean nothing in a stubdomain
    elif kind == "none":
        opts.net_none = True
    else:
        opts.notes.append(f"-net {_w(value)}: only nic, tap and none exist in a stubdomain")


def parse_dm_args(argv: list[str]) -> DmOptions:
    """qemu-trad's options as libxl writes them ([TS-DMARGS-ORDER]); `DmArgsError` if malformed."""
    opts = DmOptions()
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word == "-":
            opts.notes.append(f"{_r(word)}: a disk image on the command line; disks come from vbds")
            continue
        opt = "-" + word.lstrip("-") if word.startswith("--") else word
        if opt in _WITH_ARG:
            if i >= len(argv):
                raise DmArgsError(f"{_w(word)}: missing argument")
            value = argv[i]
            i += 1
            _one(opts, opt, value)
        elif opt in _IGNORED_FLAGS:
            if opt == "-vncunused":
                opts.graphics = True
            else:
                opts.notes.append(f"{opt}: ignored, {_IGNORED_FLAGS[opt]}")
        elif opt == "-nographic":
            opts.graphics = False
        elif opt == "-std-vga":
            opts.vga = "stdvga"
        elif opt == "-usb":
            opts.usb = True
        elif opt == "-acpi":
            opts.acpi = True
        elif opt == "-gfx_passthru":
            opts.gfx_passthru = True
        else:
            opts.notes.append(f"{_w(word)}: unknown option, ignored")
    return opts


def _one(opts: DmOptions, opt: str, value: str) -> None:
    """One option with its argument: stored, appended, checked, or noted as ignored."""
    if opt in _STORED:
        setattr(opts, _STORED[opt], value)
    elif opt in _APPENDED:
        getattr(opts, _APPENDED[opt]).append(value)
    elif opt in _CHECKED:
        _CHECKED[opt](opts, value)
    else:
        opts.notes.append(f"{opt} {_w(value)}: ignored, {_IGNORED_WITH_ARG[opt]}")


def _domid(opts: DmOptions, value: str) -> None:
    opts.domid = _int("-d", value)
    if not 0 < opts.domid < DOMID_FIRST_RESERVED:
        raise DmArgsError(f"-d {_r(value)}: not the domain id of a guest (1 to 32751)")


def _vnc(opts: DmOptions, value: str) -> None:
    opts.graphics = True
    opts.notes.append(f"-vnc {_w(value)}: VNC is served by the dom0 backend of the vfb")


def _videoram(opts: DmOptions, value: str) -> None:
    opts.videoram_mb = _int("-videoram", value)


def _vga(opts: DmOptions, value: str) -> None:
    if value not in _VGA:
        raise DmArgsError(f"-vga {_r(value)}: unknown (std, cirrus or none)")
    opts.vga = _VGA[value]


def _boot(opts: DmOptions, value: str) -> None:
    if not value or any(c not in "acdn" for c in value):
        raise DmArgsError(f"-boot {_r(value)}: the order is made of a, c, d and n")
    opts.boot = value


def _vcpus(opts: DmOptions, value: str) -> None:
    opts.vcpus = _int("-vcpus", value)
    if not 1 <= opts.vcpus <= HVM_MAX_VCPUS:
        raise DmArgsError(f"-vcpus {_r(value)}: between 1 and {HVM_MAX_VCPUS}")


def _vcpu_avail(opts: DmOptions, value: str) -> None:
    if not value.lower().startswith("0x"):
        raise DmArgsError(f"-vcpu_avail {_r(value)}: expected 0x<hex>")
    opts.vcpu_avail = _int("-vcpu_avail", value[2:], 16)
    if opts.vcpu_avail >> HVM_MAX_VCPUS:
        raise DmArgsError(f"-vcpu_avail {_r(value)}: names vcpus above {HVM_MAX_VCPUS}")


#: Options whose argument is kept as given, and the `DmOptions` field it goes to.
_STORED = {
    "-domain-name": "name",
    "-soundhw": "soundhw",
    "-loadvm": "loadvm",
    "-k": "keymap",
    "-keymap": "keymap",
}
#: Options that may be repeated, and the `DmOptions` list each adds to.
_APPENDED = {"-serial": "serial", "-usbdevice": "usbdevices"}
#: Options whose argument is checked (a `DmArgsError` if malformed) or interpreted.
_CHECKED: dict[str, Callable[[DmOptions, str], None]] = {
    "-d": _domid,
    "-vnc": _vnc,
    "-videoram": _videoram,
    "-vga": _vga,
    "-boot": _boot,
    "-vcpus": _vcpus,
    "-vcpu_avail": _vcpu_avail,
    "-net": _net,
}
