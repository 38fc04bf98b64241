"""PCI hot-plug: the stubdomain's pciback first, then the device model (libxl's order).

Each function the toolstack hands over is recorded under ``/libxl/<guest>/device/pci``,
so that pci-list, save and pci-detach know what the device model holds.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from stubdom import protocol as proto
from stubdom.host import devices
from stubdom.toolstack.config import PciSpec
from stubdom.toolstack.control import DeviceModelDied, DeviceModelTimeout, PciRemoveError
from stubdom.toolstack.operations import channel, stub_of
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.xenstore import NoEntry, Transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachedPci:
    """One row of ``pci-list``: the host function and the guest slot qemu chose."""

    bdf: proto.Bdf
    #: None: an attach that never finished (its toolstack was killed).
    vdevfn: int | None

    def row(self) -> str:
        if self.vdevfn is None:
            return f"??.? {self.bdf} (an unfinished pci-attach; pci-detach removes it)"
        return f"{self.vdevfn >> 3:02x}.{self.vdevfn & 7:01x} {self.bdf}"


def _pci_record(guest: int, bdf: proto.Bdf) -> str:
    """Our note of what the device model inserted, in libxl's private area."""
    return f"/libxl/{guest}/device/pci/{bdf.domain:04x}-{bdf.bus:02x}-{bdf.dev:02x}-{bdf.func}"


def assignable(s: Session) -> list[proto.Bdf]:
    """The host's assignable PCI functions (``xl pci-assignable-list``).

    The simulated host has no PCI hardware: the list is the file ``pci-assignable`` in
    its run directory, one BDF per line, if someone wrote one.
    """
    path = s.run_dir.root / "pci-assignable"
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return []
    return [proto.parse_bdf(line) for line in lines]


def _functions(s: Session, spec: PciSpec) -> list[tuple[proto.Bdf, int]]:
    """(host function, guest vdevfn) to insert, function 7 first: function 0 raises the
    guest's hot-plug event, so it goes last (libxl).  ``BB:DD.*`` takes every assignable
    function of the device, each at the same virtual slot."""
    if not spec.all_functions:
        return [(spec.bdf, spec.vdevfn)]
    if spec.vslot is None:
        raise ToolstackError(
            f"{spec.bdf.domain:04x}:{spec.bdf.bus:02x}:{spec.bdf.dev:02x}.*: "
            "passing all functions needs a virtual slot (@VSLOT)"
        )
    funcs = [
        b
        for b in assignable(s)
        if (b.domain, b.bus, b.dev) == (spec.bdf.domain, spec.bdf.bus, spec.bdf.dev)
    ]
    if not funcs:
        raise ToolstackError(
            f"no assignable function of {spec.bdf.domain:04x}:"
            f"{spec.bdf.bus:02x}:{spec.bdf.dev:02x} on this host "
            f"(see {s.run_dir.root / 'pci-assignable'})"
        )
    return [(b, (spec.vslot << 3) | b.func) for b in sorted(funcs, key=lambda b: -b.func)]


async def pci_attach(
    s: Session, guest: int, spec: PciSpec, *, starting: bool = False, timeout: float | None = None
) -> list[AttachedPci]:
    """``xl pci-attach``: the stubdomain's pciback first, then ``pci-ins`` per function."""
    stub = await stub_of(s, guest)
    info = await s.hv.domain_info(guest)
    done: list[AttachedPci] = []
    for bdf, vdevfn in _functions(s, spec):
        record = _pci_record(guest, bdf)
        if await s.xs.exists(f"{record}/vdevfn"):
            raise ToolstackError(f"{bdf} is already attached to {info.name!r}")
        if await s.xs.exists(record):
            raise ToolstackError(
                f"an earlier pci-attach of {bdf} to {info.name!r} did not finish; "
                f"'stubdom pci-detach {info.name} {bdf}' removes it"
            )
        # The record is made first, so that an attach killed half-way leaves a trace
        # that pci-list shows and pci-detach undoes; vdevfn completes it.
        await s.xs.mkdir(record)
        fn = devices.PciFunction(
            bdf,
            vdevfn=vdevfn,
            msitranslate=spec.msitranslate,
            power_mgmt=spec.power_mgmt,
            permissive=spec.permissive,
            rdm_policy=spec.rdm_policy.value,
        )
        await devices.add_pci(
            s.xs, stub, fn, domain_name=f"{info.name}{proto.STUBDOM_SUFFIX}", starting=starting
        )
        try:
            devfn = await channel(s, stub, guest, timeout).pci_insert(
                bdf, vdevfn, spec.msitranslate, spec.power_mgmt
            )
        except DeviceModelDied:
            raise  # the pciback entry goes with the stubdomain; no one would answer
        except BaseException:
            with contextlib.suppress(Exception):
                await devices.remove_pci(s.xs, stub, fn.address)
            with contextlib.suppress(Exception):
                await s.xs.rm(record)
            raise
        await s.xs.write(f"{record}/vdevfn", f"0x{devfn:02x}")
        done.append(AttachedPci(bdf, devfn))
    return done


async def pci_detach(
    s: Session, guest: int, bdf: proto.Bdf, *, force: bool = False, timeout: float | None = None
) -> None:
    """``xl pci-detach``: ``pci-rem`` (function 0, not forced), then the pciback entry."""
    stub = await stub_of(s, guest)
    record = _pci_record(guest, bdf)
    raw = await s.xs.read_optional(f"{record}/vdevfn")
    if raw is not None:
        await channel(s, stub, guest, timeout).pci_remove(
            bdf, force=force, vdevfn=int(raw, 16)
        )
    elif await s.xs.exists(record):
        # An unfinished attach: the device model may or may not have the function.
        # One that never had it refuses (ours) or stays silent (qemu-trad).
        try:
            await channel(s, stub, guest, timeout).pci_remove(bdf, force=force)
        except (PciRemoveError, DeviceModelTimeout) as e:
            log.info("%s was never inserted (%s); removing what the attach left", bdf, e)
    else:
        raise ToolstackError(f"{bdf} is not attached to domain {guest}; see 'stubdom pci-list'")
    with contextlib.suppress(devices.DeviceError):
        await devices.remove_pci(s.xs, stub, bdf)

    async def drop(t: Transaction) -> None:
        with contextlib.suppress(NoEntry):
            await t.rm(record)

    await s.xs.retry_transaction(drop)


async def pci_list(s: Session, guest: int) -> list[AttachedPci]:
    base = f"/libxl/{guest}/device/pci"
    try:
        names = await s.xs.directory(base)
    except NoEntry:
        return []
    out = []
    for name in names:
        raw = await s.xs.read_optional(f"{base}/{name}/vdevfn")
        dom, bus, dev, func = name.split("-")
        bdf = proto.Bdf(int(dom, 16), int(bus, 16), int(dev, 16), int(func))
        out.append(AttachedPci(bdf, int(raw, 16) if raw is not None else None))
    return sorted(out, key=lambda a: (a.vdevfn is None, a.vdevfn or 0))

