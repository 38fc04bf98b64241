"""The command channel, sans-IO: what a command value means and what to write back.

qemu-trad's ``xenstore_process_dm_command_event`` (docs/protocol.md#the-command-channel):
the agent reads
``command`` (absent: nothing), deletes it, and `dispatch` says what to do; once the
device model did it, the result functions give the exact xenstore writes, ``parameter``
always before ``state`` ([TIME-RESULT-ORDER]).  Two modes:

* ours: exact command names; a failed ``pci-ins`` also writes ``pci-insert-failed`` and
  a refused ``pci-rem`` writes its reason and ``pci-remove-failed``, so the toolstack
  fails at once instead of after 60 s ([pci-ins.refusal], [pci-rem.refusal]);
* compat (``--compat=qemu-trad``): qemu-trad to the letter -- prefix matching of the
  names (an empty value is ``save``), a failed ``pci-ins`` answers in ``parameter``
  only, a refused ``pci-rem`` writes nothing, an unknown logdirty command is fatal
  (docs/protocol.md#qemu-trad-compatibility-mode).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from stubdom.devicemodel.base import PciInsertFailed, PciRemoveFailed, PciRequest
from stubdom.protocol import (
    AUTO_PHP_SLOT,
    FAILURE_STATES,
    LOGDIRTY_DISABLE,
    LOGDIRTY_ENABLE,
    PCI_INS_BAD_BDF,
    PCI_INS_NO_FREE_DEVFN,
    Bdf,
    Command,
    State,
    pci_inserted_parameter,
    qemu_trad_dispatch,
)

#: Nodes of ``device-model/<G>/`` the agent writes results to.
PARAMETER = "parameter"
STATE = "state"
#: Commands that read ``parameter`` (absent: the command is ignored, [DM-PARAMETER]).
WITH_PARAMETER = frozenset({Command.PCI_INS, Command.PCI_REM, Command.USB_ADD, Command.USB_DEL})


class Write(NamedTuple):
    """One xenstore write, ``node`` relative to ``device-model/<G>``.  Named tuples, as
    `Dispatch`: made for every command served, where a frozen dataclass's ``__init__``
    costs several times more."""

    node: str
    value: str


class Action(enum.Enum):
    NOTHING = "nothing"  # no command, or one to ignore
    UNKNOWN = "unknown"  # logged, no answer
    SAVE = "save"
    CONTINUE = "continue"
    PCI_INS = "pci-ins"
    PCI_REM = "pci-rem"
    USB_ADD = "usb-add"
    USB_DEL = "usb-del"


class Dispatch(NamedTuple):
    """What to do for one ``command`` value."""

    action: Action
    command: Command | None = None
    parameter: str | None = None
    pci: PciRequest | None = None  # PCI_INS, parsed
    bdf: Bdf | None = None  # PCI_REM, parsed
    #: Writes to do now instead of calling the device model (a parameter that does not
    #: parse), in order.
    writes: tuple[Write, ...] = ()
    log: Sequence[str] = ()


def match_command(value: str, compat: bool) -> Command | None:
    """Exact names, or qemu-trad's prefix match in compat mode."""
    if compat:
        return qemu_trad_dispatch(value)
    try:
        return Command(value)
    except ValueError:
        return None


def dispatch(value: str | None, parameter: str | None, *, compat: bool, paused: bool) -> Dispatch:
    """Decide for ``command`` = ``value`` (None: absent) with ``parameter`` as read."""
    if value is None:
        return Dispatch(Action.NOTHING)
    cmd = match_command(value, compat)
    if cmd is None:
        return Dispatch(Action.UNKNOWN, log=[f'dm-command: unknown command"{value}"'])
    if cmd in WITH_PARAMETER and parameter is None:
        return Dispatch(
            Action.NOTHING, cmd, log=[f"dm-command: {cmd} without a parameter, ignored"]
        )
    if cmd is Command.SAVE:
        if paused:
            return Dispatch(
                Action.NOTHING, cmd, log=["dm-command: save while paused, nothing to do"]
            )
        return Dispatch(Action.SAVE, cmd)
    if cmd is Command.CONTINUE:
        if not paused:
            return Dispatch(Action.NOTHING, cmd, log=["dm-command: continue while not paused"])
        return Dispatch(Action.CONTINUE, cmd)
    assert parameter is not None
    if cmd is Command.PCI_INS:
        try:
            req, notes = parse_pci_ins(parameter)
        except PciInsertFailed as e:
            return Dispatch(
                Action.NOTHING,
                cmd,
                parameter,
                writes=tuple(pci_insert_failed(e.text, compat)),
                log=[f"pci-ins {parameter!r}: {e.text}"],
            )
        return Dispatch(Action.PCI_INS, cmd, parameter, pci=req, log=notes)
    if cmd is Command.PCI_REM:
        try:
            bdf = parse_pci_rem(parameter)
        except PciRemoveFailed as e:
            return Dispatch(
                Action.NOTHING,
                cmd,
                parameter,
                writes=tuple(pci_remove_failed(e.text, compat)),
                log=[f"pci-rem {parameter!r}: {e.text}"],
            )
        return Dispatch(Action.PCI_REM, cmd, parameter, bdf=bdf)
    action = Action.USB_ADD if cmd is Command.USB_ADD else Action.USB_DEL
    return Dispatch(action, cmd, parameter)


# -- PCI parameters (pass-through.c parse_bdf) -------------------------------------------------


def _split_bdf(text: str) -> tuple[int, int, int, int, int, str]:
    """``seg:bus:dev.func[@devfn][,opts]`` -> (seg, bus, dev, func, devfn, opts)."""
    head, _, opts = text.partition(",")
    bdf, at, vdev = head.partition("@")
    seg_s, bus_s, rest = bdf.split(":", 2)
    dev_s, func_s = rest.split(".", 1)
    seg, bus, dev, func = int(seg_s, 16), int(bus_s, 16), int(dev_s, 16), int(func_s, 16)
    devfn = int(vdev, 16) if at else AUTO_PHP_SLOT
    if min(seg, bus, dev, func) < 0 or bus > 0xFF or dev > 0x1F or func > 7:
        raise ValueError(text)
    return seg, bus, dev, func, devfn, opts


def _flag(value: str) -> bool | None:
    return {"0": False, "no": False, "1": True, "yes": True}.get(value)


def parse_pci_ins(parameter: str) -> tuple[PciRequest, list[str]]:
    """A ``pci-ins`` parameter as qemu-trad reads it, and notes on ignored options.

    Unparsable: `PciInsertFailed` with ``no free hotplug devfn`` (qemu's -1); a negative
    devfn: ``wrong bdf or vdevfn``.  The segment is dropped; no ``@``: `AUTO_PHP_SLOT`.
    """
    try:
        seg, bus, dev, func, devfn, opts = _split_bdf(parameter)
    except ValueError:
        raise PciInsertFailed(PCI_INS_NO_FREE_DEVFN) from None
    if devfn < 0:
        raise PciInsertFailed(PCI_INS_BAD_BDF)
    if devfn & AUTO_PHP_SLOT:
        devfn = AUTO_PHP_SLOT
    msi = power = permissive = False
    notes: list[str] = []
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        if key == "msitranslate" and _flag(value) is not None:
            msi = bool(_flag(value))
        elif key == "power_mgmt" and value in ("0", "1"):
            power = value == "1"
        elif key == "permissive":
            permissive = True
        else:
            notes.append(f"pci-ins: option {item!r} not understood, ignored")
    req = PciRequest(Bdf(seg, bus, dev, func), devfn, msi, power, permissive)
    return req, notes


def parse_pci_rem(parameter: str) -> Bdf:
    """A ``pci-rem`` parameter (``@`` and options ignored); `PciRemoveFailed` if bad."""
    try:
        seg, bus, dev, func, _, _ = _split_bdf(parameter)
    except ValueError:
        raise PciRemoveFailed(f"{parameter!r} is not a PCI address") from None
    return Bdf(seg, bus, dev, func)


# -- results ---------------------------------------------------------------------------------


def pci_inserted(devfn: int) -> list[Write]:
    return [Write(PARAMETER, pci_inserted_parameter(devfn)), Write(STATE, State.PCI_INSERTED)]


def pci_insert_failed(text: str, compat: bool) -> list[Write]:
    """qemu-trad's text in ``parameter``; ``pci-insert-failed`` too unless compat."""
    out = [Write(PARAMETER, text)]
    if not compat:
        out.append(Write(STATE, State.PCI_INSERT_FAILED))
    return out


def pci_remove_failed(reason: str, compat: bool) -> list[Write]:
    """Nothing in compat (qemu-trad only logs); else the reason and ``pci-remove-failed``."""
    if compat:
        return []
    return [Write(PARAMETER, reason), Write(STATE, State.PCI_REMOVE_FAILED)]


def must_be_atomic(writes: list[Write]) -> bool:
    """Whether ``writes`` go in one transaction: a refusal's text in ``parameter`` is
    already an answer the toolstack acts on (and then writes ``running`` back), so a
    failure state written after it could land on top of that ``running``."""
    return len(writes) > 1 and any(
        w.node == STATE and w.value in FAILURE_STATES for w in writes
    )


def pci_removed() -> list[Write]:
    return [Write(STATE, State.PCI_REMOVED)]


def saved() -> list[Write]:
    return [Write(STATE, State.PAUSED)]


def running() -> list[Write]:
    return [Write(STATE, State.RUNNING)]


def usb_done(action: Action) -> list[Write]:
    """``usb-added``/``usb-deleted``, whatever the outcome (qemu-trad)."""
    return [Write(STATE, State.USB_ADDED if action is Action.USB_ADD else State.USB_DELETED)]


# -- logdirty ([logdirty.echo]) ------------------------------------------------------------------


@dataclass(frozen=True)
class LogdirtyDecision:
    enable: bool | None = None  # None: no change
    ret: str | None = None  # what to write to ``logdirty/ret``
    error: str | None = None
    fatal: bool = False  # compat: qemu-trad exit(1)s


def logdirty(value: str | None, compat: bool, answered: str | None = None) -> LogdirtyDecision:
    """What to do with ``cmd`` = ``value``; ``answered``: ``ret`` as read just before.

    Outside compat a command whose ``ret`` already equals it is not answered again:
    one change of ``cmd`` can reach us as two events, and a second ``ret`` written
    after the toolstack removed the pair would be left behind (qemu-trad rewrites it).
    """
    if value is None:
        return LogdirtyDecision()  # "no command yet"
    if not compat and answered == value:
        return LogdirtyDecision()  # answered already; the toolstack is cleaning up
    if value in (LOGDIRTY_ENABLE, LOGDIRTY_DISABLE):
        return LogdirtyDecision(enable=value == LOGDIRTY_ENABLE, ret=value)
    return LogdirtyDecision(
        error=f"logdirty: unknown command {value!r} (expected enable or disable), not answered",
        fatal=compat,
    )


# -- vcpus ([vcpu-set]) ----------------------------------------------------------------------


def online_vcpus(availability: dict[int, str | None], current: set[int]) -> set[int]:
    """The vcpus online after reading ``cpu/<n>/availability`` (others keep their state)."""
    out = set(current)
    for n, value in availability.items():
        if value == "online":
            out.add(n)
        elif value == "offline":
            out.discard(n)
    return out
