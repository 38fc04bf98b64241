"""The clause catalogue: every checked rule, with its reference section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Clause:
    id: str
    section: str
    text: str


STUBDOMAIN_CLAUSES: tuple[Clause, ...] = (
    Clause("setup.reads", "§1.4", "reads target, the guest's vm node and <vm>/image/dmargs"),
    Clause("startup.running", "§2.2", "writes state=running (and no other value) at startup"),
    Clause("startup.watch-first", "§2.2", "watches command and logdirty/cmd before running"),
    Clause("command.deleted", "§3.2", "deletes the command node after reading it"),
    Clause("pci-ins.result", "§3.3", "pci-ins: parameter=0x%02x then state=pci-inserted"),
    Clause("pci-ins.order", "§7.1", "pci-ins: parameter is written before state"),
    Clause("pci-ins.vdevfn", "§3.3", "pci-ins with @vdevfn inserts at that devfn"),
    Clause("pci-ins.refusal", "§3.3", "a refused pci-ins: pci-insert-failed, or the "
           "error text in parameter with state unchanged (qemu-trad)"),
    Clause("pci-rem.result", "§3.4", "pci-rem of an inserted function 0: pci-removed"),
    Clause("pci-rem.refusal", "§3.4", "pci-rem of an unknown device: no pci-removed"),
    Clause("command.unknown", "§3.2", "an unknown command is deleted and writes no state"),
    Clause("save.paused", "§3.5", "save: state=paused"),
    Clause("save.console-closed", "§7.2", "save: console 1 closed before paused"),
    Clause("save.complete", "§3.5", "save: console-1 file is a complete stream at paused"),
    Clause("paused.logdirty", "§7.3", "logdirty is answered while paused"),
    Clause("continue.running", "§3.6", "continue while paused: state=running"),
    Clause("logdirty.echo", "§3.7", "logdirty/cmd enable|disable echoed into logdirty/ret"),
    Clause("vcpu-set", "§3.8", "a change under /local/domain/G/cpu is read by the DM"),
    Clause("loadvm.running", "§4.2", "-loadvm: state read from console 2, then running "
           "(never paused)"),
    Clause("pci-ins.failed-state", "", "a refused pci-ins writes state=pci-insert-failed "
           "(the documented failure result, which qemu-trad never writes)"),
    Clause("pci-rem.failed-state", "", "a refused pci-rem writes state=pci-remove-failed "
           "with the reason in parameter (qemu-trad writes nothing)"),
    Clause("scope.writes", "", "writes only its own nodes: its frontends and consoles, and "
           "state, parameter and logdirty/ret of device-model/G; nothing of the guest but "
           "console/vnc-port and a vbd's eject; never target, vm, image or command"),
)

TOOLSTACK_CLAUSES: tuple[Clause, ...] = (
    Clause("ts.dm-version", "§1.1 step 4", "/libxl/G/dm-version = qemu_xen_traditional"),
    Clause("ts.dmargs", "§1.3", "dmargs: leading space, space-joined, no -sdl/-M/xenfv"),
    Clause("ts.dmargs-perms", "§1.2", "dmargs perms n0,rS"),
    Clause("ts.target", "§1.1 step 7", "/local/domain/S/target = G"),
    Clause("ts.device-model-domid", "§1.1 step 6", "image/device-model-domid = S"),
    Clause("ts.dm-dir", "§1.1 step 11", "device-model/G created with perms nS,rG"),
    Clause("ts.consoles", "§1.5", "console outputs: 0 log file, 1 save file"),
    Clause("ts.pci-ins.format", "§3.3", "pci-ins parameter format, written before command"),
    Clause("ts.pci-rem.format", "§3.4", "pci-rem parameter = PCI_BDF, before command"),
    Clause("ts.state-restored", "§3.1 step 7", "state written back after pci-ins, and after "
           "a successful pci-rem"),
    Clause("ts.serialised", "§7.2", "one command outstanding at a time"),
    Clause("ts.continue-paused", "§3.6", "continue sent only while state is paused"),
)

BY_ID = {c.id: c for c in STUBDOMAIN_CLAUSES + TOOLSTACK_CLAUSES}
