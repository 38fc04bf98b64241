"""Every fact of the toolstack <-> stubdomain protocol, in one place for both sides.

Paths, value formats, command and state names of the qemu-xen-traditional stubdomain
protocol as libxl (Xen <= 4.20), qemu-trad and Mini-OS implement it, which
``docs/protocol.md`` specifies (its rules are cited by clause ID, e.g. [ts.consoles]).
The toolstack and the device-model agent both import this module; neither spells a path
or a command name of its own.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from stubdom.wire.paths import domain_path

# -- names and kinds --------------------------------------------------------------------

#: ``/libxl/<G>/dm-version`` and ``/local/domain/<G>/platform/device-model``.
DM_VERSION_TRADITIONAL = "qemu_xen_traditional"
#: ``libxl__stub_dm_name``: the stubdomain of guest ``name`` is ``name-dm``.
STUBDOM_SUFFIX = "-dm"
#: argv[0] of the device model in the stubdomain (skipped when encoding dmargs).
DM_ARGV0 = "stubdom-dm"
#: Arguments never passed to the stubdomain (``libxl__write_stub_dmargs``).
DMARGS_DROPPED = frozenset({"-sdl", "-M", "xenfv"})
#: Mini-OS's defaults: 28 MiB of memory (plus video RAM), one vcpu.
STUBDOM_MEMKB = 28 * 1024
STUBDOM_VCPUS = 1

# Consoles of the stubdomain (libxl_internal.h ``STUBDOM_CONSOLE_*``, [ts.consoles]).
CONSOLE_LOGGING = 0
CONSOLE_SAVE = 1
CONSOLE_RESTORE = 2
CONSOLE_SERIAL = 3

# Timeouts of libxl (seconds; libxl_internal.h ``LIBXL_STUBDOM_START_TIMEOUT``,
# ``LIBXL_DEVICE_MODEL_START_TIMEOUT``; the logdirty one is a literal; [TIME-TIMEOUTS]).
STUBDOM_START_TIMEOUT = 30.0
DEVICE_MODEL_TIMEOUT = 60.0
LOGDIRTY_TIMEOUT = 10.0


def stubdom_name(guest_name: str) -> str:
    return guest_name + STUBDOM_SUFFIX


# -- xenstore paths -----------------------------------------------------------------------


def dm_path(stubdom: int, guest: int, node: str = "") -> str:
    """``DEVICE_MODEL_XS_PATH(S, G, node)``: the control directory the stubdom owns."""
    base = f"{domain_path(stubdom)}/device-model/{guest}"
    return f"{base}/{node}" if node else base


def state_path(stubdom: int, guest: int) -> str:
    return dm_path(stubdom, guest, "state")


def command_path(stubdom: int, guest: int) -> str:
    return dm_path(stubdom, guest, "command")


def parameter_path(stubdom: int, guest: int) -> str:
    return dm_path(stubdom, guest, "parameter")


def logdirty_path(stubdom: int, guest: int, node: str) -> str:
    """``logdirty/cmd`` or ``logdirty/ret``."""
    return dm_path(stubdom, guest, f"logdirty/{node}")


def target_path(stubdom: int) -> str:
    """``/local/domain/<S>/target``: the guest domid; Mini-OS reads it as ``target``."""
    return f"{domain_path(stubdom)}/target"


#: The same node as the stubdomain reads it (relative to its home).
TARGET_RELATIVE = "target"
#: The stubdomain's own domid, relative to its home (qemu-trad reads ``domid``).
DOMID_RELATIVE = "domid"


def dm_relative_path(guest: int, node: str = "") -> str:
    """``device-model/<G>[/node]``: the control directory as the device model names it
    (qemu-trad's ``xenstore_record_dm`` writes relative to the stubdomain's home)."""
    base = f"device-model/{guest}"
    return f"{base}/{node}" if node else base


#: qemu-trad's watch tokens for the command node and ``logdirty/cmd``.
DM_COMMAND_TOKEN = "dm-command"
LOGDIRTY_TOKEN = "logdirty"
#: qemu-trad's watch token for the guest's ``cpu`` directory (vCPU hot-plug).
VCPU_SET_TOKEN = "vcpu-set"
#: Fired when a domain (e.g. the stubdomain) goes away.
RELEASE_DOMAIN = "@releaseDomain"


def device_model_domid_path(guest: int) -> str:
    """``/local/domain/<G>/image/device-model-domid``: how the toolstack finds S."""
    return f"{domain_path(guest)}/image/device-model-domid"


def vm_path_node(guest: int) -> str:
    """``/local/domain/<G>/vm``: the guest's ``/vm/<uuid>``."""
    return f"{domain_path(guest)}/vm"


def dmargs_path(vm_path: str) -> str:
    """``<vm>/image/dmargs``: the encoded device-model command line (``n0,r<S>``)."""
    return f"{vm_path}/image/dmargs"


def timeoffset_path(vm_path: str) -> str:
    return f"{vm_path}/rtc/timeoffset"


def dm_version_path(guest: int) -> str:
    return f"/libxl/{guest}/dm-version"


def dm_last_sent_path(guest: int) -> str:
    """The toolstack's own note of the last command with a parameter it sent the guest's
    device model (``"<command> <parameter>"``: the one ``parameter`` answers), in its
    private area, gone with the domain."""
    return f"/libxl/{guest}/dm-last-sent"


def allow_memory_relocate_path(guest: int) -> str:
    return f"{domain_path(guest)}/hvmloader/allow-memory-relocate"


def platform_device_model_path(guest: int) -> str:
    return f"{domain_path(guest)}/platform/device-model"


def vcpu_dir_path(guest: int) -> str:
    """``/local/domain/<G>/cpu``: the device model watches it (token ``vcpu-set``)."""
    return f"{domain_path(guest)}/cpu"


def vcpu_availability_path(guest: int, vcpu: int) -> str:
    return f"{domain_path(guest)}/cpu/{vcpu}/availability"


# -- commands and states ------------------------------------------------------------------


class Command(enum.StrEnum):
    """What the toolstack writes to ``command`` (qemu-trad's names)."""

    SAVE = "save"
    CONTINUE = "continue"
    USB_ADD = "usb-add"
    USB_DEL = "usb-del"
    PCI_REM = "pci-rem"
    PCI_INS = "pci-ins"


#: The order qemu-trad tests command names in (it matches any name the value prefixes).
COMMAND_MATCH_ORDER = (
    Command.SAVE,
    Command.CONTINUE,
    Command.USB_ADD,
    Command.USB_DEL,
    Command.PCI_REM,
    Command.PCI_INS,
)


def qemu_trad_dispatch(value: str) -> Command | None:
    """The command qemu-trad would run for ``value`` (``strncmp`` with the value's
    length: an empty value is ``save``, ``pci-`` is ``pci-rem``)."""
    for cmd in COMMAND_MATCH_ORDER:
        if cmd.value.startswith(value):
            return cmd
    return None


class State(enum.StrEnum):
    """What the device model writes to ``state``."""

    RUNNING = "running"
    PAUSED = "paused"
    PCI_INSERTED = "pci-inserted"
    PCI_REMOVED = "pci-removed"
    USB_ADDED = "usb-added"
    USB_DELETED = "usb-deleted"
    #: Toolstack vocabulary only: libxl accepts them, no qemu-trad ever writes them.
    PCI_INSERT_FAILED = "pci-insert-failed"
    PCI_REMOVE_FAILED = "pci-remove-failed"


#: The state each command waits for.
RESULT_STATE = {
    Command.SAVE: State.PAUSED,
    Command.CONTINUE: State.RUNNING,
    Command.PCI_INS: State.PCI_INSERTED,
    Command.PCI_REM: State.PCI_REMOVED,
    Command.USB_ADD: State.USB_ADDED,
    Command.USB_DEL: State.USB_DELETED,
}

#: The state that answers a command as failed, for the commands that have one.
FAILURE_STATE = {
    Command.PCI_INS: State.PCI_INSERT_FAILED,
    Command.PCI_REM: State.PCI_REMOVE_FAILED,
}
#: States that end their command's wait as a failure at once.
FAILURE_STATES = frozenset(FAILURE_STATE.values())

#: The error texts qemu-trad writes to ``parameter`` when ``pci-ins`` fails.
PCI_INS_NO_FREE_DEVFN = "no free hotplug devfn"
PCI_INS_BAD_BDF = "wrong bdf or vdevfn"
PCI_INS_ERRORS = frozenset({PCI_INS_NO_FREE_DEVFN, PCI_INS_BAD_BDF})

#: Logdirty commands (``logdirty/cmd``).
LOGDIRTY_ENABLE = "enable"
LOGDIRTY_DISABLE = "disable"

#: A devfn qemu-trad chooses itself (``AUTO_PHP_SLOT``).
AUTO_PHP_SLOT = 0x100


# -- PCI parameter formats (libxl_pci.c PCI_BDF, PCI_BDF_VDEVFN, PCI_OPTIONS) ---------------


@dataclass(frozen=True)
class Bdf:
    domain: int
    bus: int
    dev: int
    func: int

    def __str__(self) -> str:
        """``PCI_BDF``: ``%04x:%02x:%02x.%01x``."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.dev:02x}.{self.func:01x}"

    @property
    def devfn(self) -> int:
        return (self.dev << 3) | self.func

    @classmethod
    def parse(cls, text: str) -> Bdf:
        return parse_bdf(text)


_BDF = re.compile(
    r"(?:(?P<dom>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})"
    r"\.0?(?P<func>[0-7])\Z"
)


class BdfError(ValueError):
    """Text that is not a PCI address; the one-line message quotes (the start of) it."""


def _clip(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut short for a one-line message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def parse_bdf(text: str) -> Bdf:
    """``[DDDD:]BB:DD.F``; `BdfError` (a `ValueError`) naming the text otherwise."""
    m = _BDF.match(text.strip())
    if m is None:
        raise BdfError(f"{_clip(text)} is not a PCI address (expected [DDDD:]BB:DD.F, hex)")
    dev = int(m["dev"], 16)
    if dev > 0x1F:
        raise BdfError(f"{_clip(text)}: device number {dev:#x} exceeds 0x1f")
    return Bdf(int(m["dom"] or "0", 16), int(m["bus"], 16), dev, int(m["func"]))


def pci_ins_parameter(bdf: Bdf, vdevfn: int, msitranslate: bool, power_mgmt: bool) -> str:
    """The ``pci-ins`` parameter: ``PCI_BDF[@vdevfn],msitranslate=%d,power_mgmt=%d``."""
    at = f"@{vdevfn:02x}" if vdevfn else ""
    return f"{bdf}{at},msitranslate={int(msitranslate)},power_mgmt={int(power_mgmt)}"


def pci_rem_parameter(bdf: Bdf) -> str:
    """The ``pci-rem`` parameter: just ``PCI_BDF``."""
    return str(bdf)


def pci_inserted_parameter(devfn: int) -> str:
    """What the device model writes to ``parameter`` on success: ``0x%02x``."""
    return f"0x{devfn:02x}"


#: libxl's ``"0x%x"`` (the hex digits after ``0x``; what follows is ignored).
_VDEVFN = re.compile(r"0x([0-9a-fA-F]+)")


def parse_pci_inserted(parameter: str) -> int:
    """libxl's ``sscanf(p, "0x%x", &vdevfn)``; `ValueError` if that fails."""
    m = _VDEVFN.match(parameter)
    if m is None:
        raise ValueError(f"wrong format for the vdevfn: {_clip(parameter)}")
    return int(m.group(1), 16)


# -- dmargs ------------------------------------------------------------------------------


def encode_dmargs(argv: list[str]) -> str:
    """``libxl__write_stub_dmargs``: argv[1:], each preceded by one space, without the
    arguments the stubdomain must not see; nothing is quoted."""
    return "".join(" " + a for a in argv[1:] if a not in DMARGS_DROPPED)


def split_dmargs(text: str) -> list[str]:
    """Mini-OS's split: on spaces, runs skipped, ``'..'``/``".."`` group a word."""
    words: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    have = False
    for ch in text:
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
            continue
        if ch in "'\"":
            quote = ch
            have = True
        elif ch == " ":
            if cur or have:
                words.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(ch)
    if cur or have:
        words.append("".join(cur))
    return words


# -- files ---------------------------------------------------------------------------------


def save_file_name(guest: int) -> str:
    """``qemu-save.<G>`` (``LIBXL_DEVICE_MODEL_SAVE_FILE``), in the host's state directory."""
    return f"qemu-save.{guest}"


def restore_file_name(guest: int) -> str:
    """``qemu-resume.<G>`` (``LIBXL_DEVICE_MODEL_RESTORE_FILE``)."""
    return f"qemu-resume.{guest}"


def log_file_name(guest_name: str) -> str:
    """``qemu-dm-<guest>.log``: console 0 of the stubdomain."""
    return f"qemu-dm-{guest_name}.log"


# -- the Mini-OS layer (stubdom-minios) ------------------------------------------------------

#: What the layer gives its application, besides the domain's own environment.
ENV_XENSTORED_PATH = "XENSTORED_PATH"
ENV_DOMID = "STUBDOM_DOMID"
ENV_TARGET = "STUBDOM_TARGET"
ENV_SAVE_FILE = "STUBDOM_SAVE_FILE"
ENV_RESTORE_FILE = "STUBDOM_RESTORE_FILE"
#: The qemu option whose presence makes console 2 the source of the restore FIFO.
LOADVM_OPTIONS = ("-loadvm", "--loadvm")


def dm_state_write_paths(stubdom: int, guest: int) -> tuple[str, str]:
    """The ``state`` node as a device model in ``stubdom`` may name it in a WRITE:
    relative to its home, and absolute."""
    return dm_relative_path(guest, "state"), state_path(stubdom, guest)
