"""PCI hot-plug: the stubdomain's pciback first, then the device model (libxl's order).

Each function the toolstack hands over is recorded under ``/libxl/<guest>/device/pci``,
so that pci-list, save and pci-detach know what the device model holds.  The record
and the device model must never disagree:

* the record is made before anything is asked, and goes only once the answer is known.
  A function the device model may hold stays listed: an attach that was killed,
  interrupted (Ctrl-C) or timed out shows as unfinished, and pci-detach undoes it.  One
  it cannot hold (a refusal, a dead stubdomain) leaves no record;
* qemu-trad removes whole slots (``pci-rem`` of function 0 ejects every function of the
  slot), so pci-detach of ``BB:DD.*`` removes every function it names, function 0
  first, and one function of a shared slot is not detached alone unless forced.

The host's assignable list (``xl pci-assignable-*``) is the file ``pci-assignable`` in
the run directory, one BDF a line: the simulated host has no PCI hardware and no
pciback to bind.  ``BB:DD.*`` takes the functions listed there.  A single function
that is not listed is still passed through (libxl would refuse it as "not
assignable"), so that one-line attaches need no set-up; a function a guest holds is
not assignable to another guest, nor removable from the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stubdom import protocol as proto
from stubdom.toolstack import devices
from stubdom.toolstack.channel import DeviceModelChannel
from stubdom.toolstack.config import PciSpec
from stubdom.toolstack.exchange import (
    DeviceModelDied,
    DeviceModelError,
    DeviceModelTimeout,
    InsertOutcome,
    PciRemoveError,
)
from stubdom.toolstack.operations import channel, dead_stub_message, stub_of
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.xenstore import NoEntry, Transaction
from stubdom.xenstore.pipeline import pipelined

log = logging.getLogger(__name__)

#: The host's assignable list, in its run directory.
ASSIGNABLE_FILE = "pci-assignable"


@dataclass(frozen=True)
class AttachedPci:
    """One row of ``pci-list``: the host function and the guest slot qemu chose."""

    bdf: proto.Bdf
    #: None: an attach that never finished (killed, interrupted or timed out).
    vdevfn: int | None

    def row(self) -> str:
        if self.vdevfn is None:
            return f"??.? {self.bdf} (an unfinished pci-attach; pci-detach removes it)"
        return f"{self.vdevfn >> 3:02x}.{self.vdevfn & 7:01x} {self.bdf}"


def _pci_record(guest: int, bdf: proto.Bdf) -> str:
    """Our note of what the device model inserted, in libxl's private area."""
    return f"/libxl/{guest}/device/pci/{bdf.domain:04x}-{bdf.bus:02x}-{bdf.dev:02x}-{bdf.func}"


def _device(bdf: proto.Bdf) -> str:
    """``DDDD:BB:DD``: the device a function belongs to."""
    return f"{bdf.domain:04x}:{bdf.bus:02x}:{bdf.dev:02x}"


def _same_device(a: proto.Bdf, b: proto.Bdf) -> bool:
    return (a.domain, a.bus, a.dev) == (b.domain, b.bus, b.dev)


# -- the assignable list ------------------------------------------------------------------


def assignable(s: Session) -> list[proto.Bdf]:
    """Every function in the host's assignable list, held by a guest or not."""
    try:
        words = (s.run_dir.root / ASSIGNABLE_FILE).read_text().split()
    except FileNotFoundError:
        return []
    return sorted({proto.parse_bdf(word) for word in words}, key=_order)


def _order(bdf: proto.Bdf) -> tuple[int, int, int, int]:
    return (bdf.domain, bdf.bus, bdf.dev, bdf.func)


async def holders(s: Session) -> dict[proto.Bdf, int]:
    """Which guest holds each attached function (finished or not), from the records."""
    try:
        domids = [d for d in await s.xs.directory("/libxl") if d.isdigit()]
    except NoEntry:
        return {}
    held: dict[proto.Bdf, int] = {}
    for domid in domids:
        for a in await pci_list(s, int(domid)):
            held[a.bdf] = int(domid)
    return held


async def _held_by(s: Session, domid: int, bdf: proto.Bdf) -> str:
    """``BDF is attached to NAME; 'stubdom pci-detach ...' frees it``."""
    name = str(domid)
    with contextlib.suppress(Exception):
        name = (await s.hv.domain_info(domid)).name
    command = _detach_command(await pci_list(s, domid), bdf, name)
    return f"{bdf} is attached to {name}; {command} frees it"


async def assignable_list(s: Session) -> list[proto.Bdf]:
    """``xl pci-assignable-list``: the listed functions no guest holds."""
    held = await holders(s)
    return [b for b in assignable(s) if b not in held]


def _edit_assignable(s: Session, change: Callable[[set[proto.Bdf]], None]) -> None:
    """Apply ``change`` to the list under a lock, and replace the file whole."""
    path = s.run_dir.root / ASSIGNABLE_FILE
    s.paths.lock_dir.mkdir(parents=True, exist_ok=True)
    with open(s.paths.lock_dir / f"{ASSIGNABLE_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        listed = set(assignable(s))
        change(listed)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text("".join(f"{b}\n" for b in sorted(listed, key=_order)))
        os.replace(tmp, path)


def assignable_add(s: Session, bdf: proto.Bdf) -> bool:
    """``xl pci-assignable-add``; False if it was listed already (libxl only warns)."""
    added = False

    def add(listed: set[proto.Bdf]) -> None:
        nonlocal added
        added = bdf not in listed
        listed.add(bdf)

    _edit_assignable(s, add)
    if not added:
        log.warning("%s is already assignable", bdf)
    return added


async def assignable_remove(s: Session, bdf: proto.Bdf) -> None:
    """``xl pci-assignable-remove``: refused for a function not listed or held by a guest."""
    holder = (await holders(s)).get(bdf)
    if holder is not None:
        raise ToolstackError(f"{await _held_by(s, holder, bdf)} first")

    def remove(listed: set[proto.Bdf]) -> None:
        if bdf not in listed:
            raise ToolstackError(
                f"{bdf} is not assignable; 'stubdom pci-assignable-list' shows what is"
            )
        listed.discard(bdf)

    _edit_assignable(s, remove)


async def _functions(
    s: Session, spec: PciSpec, guest: int | None
) -> list[tuple[proto.Bdf, int]]:
    """(host function, guest vdevfn) to insert, function 7 first: function 0 raises the
    guest's hot-plug event, so it goes last (libxl).  ``BB:DD.*`` takes every assignable
    function of the device, each at the same virtual slot.  Refuses a function another
    guest than ``guest`` holds."""
    if spec.name is not None:
        raise ToolstackError(
            f"name={spec.name}: this host keeps no device names; give the BDF instead"
        )
    if not spec.all_functions:
        found = [(spec.bdf, spec.vdevfn)]
        if spec.bdf not in assignable(s):
            log.info("%s is not in the assignable list; passed through anyway", spec.bdf)
    elif spec.vslot is None:
        raise ToolstackError(
            f"{_device(spec.bdf)}.*: passing all functions needs a virtual slot (@VSLOT)"
        )
    else:
        funcs = [b for b in assignable(s) if _same_device(b, spec.bdf)]
        if not funcs:
            raise ToolstackError(
                f"no assignable function of {_device(spec.bdf)} on this host; "
                f"'stubdom pci-assignable-add {_device(spec.bdf)}.N' adds function N"
            )
        found = [(b, (spec.vslot << 3) | b.func) for b in sorted(funcs, key=lambda b: -b.func)]
    held = await holders(s)
    for bdf, _ in found:
        holder = held.get(bdf)
        if holder is not None and holder != guest:
            raise ToolstackError(await _held_by(s, holder, bdf))
    return found


async def check_config(s: Session, specs: Iterable[PciSpec]) -> None:
    """The ``pci = [...]`` entries of a config, resolved before anything is built: each
    names functions that no guest holds, and none twice."""
    seen: set[proto.Bdf] = set()
    for spec in specs:
        for bdf, _ in await _functions(s, spec, None):
            if bdf in seen:
                raise ToolstackError(f"pci = [...] names {bdf} twice")
            seen.add(bdf)


# -- attach -------------------------------------------------------------------------------


async def pci_attach(
    s: Session, guest: int, spec: PciSpec, *, starting: bool = False, timeout: float | None = None
) -> list[AttachedPci]:
    """``xl pci-attach``: the stubdomain's pciback first, then ``pci-ins`` per function."""
    stub = await stub_of(s, guest, hint=not starting)
    name = (await s.hv.domain_info(guest)).name
    chan = channel(s, stub, guest, timeout)
    done: list[AttachedPci] = []
    for bdf, vdevfn in await _functions(s, spec, guest):
        record = _pci_record(guest, bdf)
        if await s.xs.exists(f"{record}/vdevfn"):
            raise ToolstackError(f"{bdf} is already attached to {name!r}")
        if await s.xs.exists(record):
            raise ToolstackError(
                f"an earlier pci-attach of {bdf} to {name!r} did not finish; "
                f"'stubdom pci-detach {name} {bdf}' removes it"
            )
        fn = devices.PciFunction(
            bdf,
            vdevfn=vdevfn,
            msitranslate=spec.msitranslate,
            power_mgmt=spec.power_mgmt,
            permissive=spec.permissive,
            rdm_policy=spec.rdm_policy.value,
        )
        devfn = await _attach_one(s, chan, name, fn, starting=starting)
        done.append(AttachedPci(bdf, devfn))
    return done


async def _attach_one(
    s: Session, chan: DeviceModelChannel, name: str, fn: devices.PciFunction, *, starting: bool
) -> int:
    """One function: record, pciback, ``pci-ins``, then the vdevfn completes the record.

    Whatever ends it early decides what stays (see the module docstring).
    """
    bdf, stub, guest = fn.address, chan.stubdom, chan.guest
    record = _pci_record(guest, bdf)
    # Made first, so that an attach killed half-way leaves a trace that pci-list shows
    # and pci-detach undoes.
    await s.xs.mkdir(record)
    try:
        await devices.add_pci(
            s.xs, stub, fn, domain_name=f"{name}{proto.STUBDOM_SUFFIX}", starting=starting
        )
        devfn = await chan.pci_insert(bdf, fn.vdevfn, fn.msitranslate, fn.power_mgmt)
    except asyncio.CancelledError:
        log.warning(
            "pci-attach of %s to %s interrupted: the device model may still add it; "
            "'stubdom pci-list %s' shows it, 'stubdom pci-detach %s %s' removes it",
            bdf, name, name, name, bdf,
        )
        raise
    except DeviceModelTimeout as e:
        if starting:
            raise  # create removes the guest and all
        raise ToolstackError(
            f"{e}; {bdf} stays listed as unfinished, since the device model may still "
            f"add it: 'stubdom pci-detach {name} {bdf}' removes it"
        ) from None
    except DeviceModelDied as e:
        await _drop_record(s, record)  # the pciback entry goes with the stubdomain
        raise _died(e, name, starting) from None
    except devices.DeviceError as e:
        # pciback failed, nothing was sent: the device model cannot hold the function.
        await _drop_record(s, record)
        if not await chan.stub_alive():
            raise ToolstackError(
                await dead_stub_message(s, stub, guest, hint=not starting)
            ) from None
        with contextlib.suppress(Exception):
            await devices.remove_pci(s.xs, stub, bdf)
        raise ToolstackError(f"pci-attach {bdf} to {name}: {e}") from None
    except DeviceModelError:
        # The device model answered no (or wrongly), or was never asked (paused by a
        # save): it does not hold the function.  Anything else leaves the record.
        with contextlib.suppress(Exception):
            await devices.remove_pci(s.xs, stub, bdf)
        with contextlib.suppress(Exception):
            await _drop_record(s, record)
        raise
    await s.xs.write(f"{record}/vdevfn", f"0x{devfn:02x}")
    return devfn


def _died(e: DeviceModelDied, name: str, starting: bool) -> ToolstackError:
    """A death during an exchange: the channel's report, and how to clean up."""
    if starting:
        return ToolstackError(str(e))
    return ToolstackError(
        f"{e}\n{name} has no device model any more; 'stubdom destroy {name}' removes both"
    )


async def _drop_record(s: Session, record: str) -> None:
    async def drop(t: Transaction) -> None:
        await t.rm(record, missing_ok=True)

    await s.xs.retry_transaction(drop)


# -- detach -------------------------------------------------------------------------------


async def pci_detach(
    s: Session,
    guest: int,
    bdf: proto.Bdf,
    *,
    all_functions: bool = False,
    force: bool = False,
    timeout: float | None = None,
) -> None:
    """``xl pci-detach``: ``pci-rem`` (function 0, not forced), then the pciback entry;
    every attached function of the device with ``all_functions`` (``BB:DD.*``)."""
    stub = await stub_of(s, guest)
    name = (await s.hv.domain_info(guest)).name
    attached = await pci_list(s, guest)
    chan = channel(s, stub, guest, timeout)
    for a in _detach_order(attached, bdf, all_functions, force, name):
        await _detach_one(s, chan, a, force=force)


def _detach_order(
    attached: list[AttachedPci], bdf: proto.Bdf, all_functions: bool, force: bool, name: str
) -> list[AttachedPci]:
    """What to detach, the function at guest function 0 first: its ``pci-rem`` ejects
    the whole slot, and if it fails nothing has been removed yet (libxl goes from
    function 7 down, removing the others before it knows)."""
    if all_functions:
        chosen = [a for a in attached if _same_device(a.bdf, bdf)]
        if not chosen:
            raise ToolstackError(
                f"no function of {_device(bdf)} is attached to {name}; "
                f"see 'stubdom pci-list {name}'"
            )
        return sorted(chosen, key=lambda a: (a.vdevfn is None or a.vdevfn & 7 != 0, -a.bdf.func))
    chosen = [a for a in attached if a.bdf == bdf]
    if not chosen:
        raise ToolstackError(f"{bdf} is not attached to {name}; see 'stubdom pci-list {name}'")
    (one,) = chosen
    shared = _slot_mates(attached, one)
    if shared and not force:
        raise ToolstackError(
            f"{bdf} shares slot {(one.vdevfn or 0) >> 3:02x} of {name} with "
            f"{' and '.join(str(a.bdf) for a in shared)}, and the device model removes "
            f"whole slots: {_detach_command(attached, bdf, name)} detaches them together"
        )
    return chosen


def _slot_mates(attached: list[AttachedPci], one: AttachedPci) -> list[AttachedPci]:
    """The other functions in ``one``'s guest slot (a ``BB:DD.*`` attach)."""
    if one.vdevfn is None:
        return []
    slot = one.vdevfn >> 3
    return [a for a in attached if a is not one and a.vdevfn is not None and a.vdevfn >> 3 == slot]


def _detach_command(attached: list[AttachedPci], bdf: proto.Bdf, name: str) -> str:
    """The pci-detach that frees ``bdf``: its whole device if it shares a slot."""
    one = next((a for a in attached if a.bdf == bdf), None)
    target = f"{_device(bdf)}.*" if one is not None and _slot_mates(attached, one) else bdf
    return f"'stubdom pci-detach {name} {target}'"


async def _detach_one(
    s: Session, chan: DeviceModelChannel, a: AttachedPci, *, force: bool
) -> None:
    """``pci-rem`` as libxl sends it (or none), then the pciback entry, then the record."""
    if a.vdevfn is not None:
        await chan.pci_remove(a.bdf, force=force, vdevfn=a.vdevfn)
    else:
        # An unfinished attach: the device model may or may not have the function.
        # If its answer to that pci-ins is still there and is a refusal, it does not;
        # otherwise one that never had it refuses (ours) or stays silent (qemu-trad).
        if await chan.unanswered_insert(a.bdf) is InsertOutcome.REFUSED:
            log.info("%s was refused by the device model; removing what the attach left",
                     a.bdf)  # fmt: skip
        else:
            try:
                await chan.pci_remove(a.bdf, force=force)
            except (PciRemoveError, DeviceModelTimeout) as e:
                log.info("%s was never inserted (%s); removing what the attach left", a.bdf, e)
    with contextlib.suppress(devices.DeviceError):
        await devices.remove_pci(s.xs, chan.stubdom, a.bdf)
    await _drop_record(s, _pci_record(chan.guest, a.bdf))


async def pci_list(s: Session, guest: int) -> list[AttachedPci]:
    base = f"/libxl/{guest}/device/pci"
    try:
        names = await s.xs.directory(base)
    except NoEntry:
        return []
    raws = await pipelined(*(s.xs.read_optional(f"{base}/{name}/vdevfn") for name in names))
    out = []
    for name, raw in zip(names, raws, strict=True):
        dom, bus, dev, func = name.split("-")
        bdf = proto.Bdf(int(dom, 16), int(bus, 16), int(dev, 16), int(func))
        out.append(AttachedPci(bdf, int(raw, 16) if raw is not None else None))
    return sorted(out, key=lambda a: (a.vdevfn is None, a.vdevfn or 0))
