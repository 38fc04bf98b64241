"""The clause catalogue: every checked rule, with where ``docs/protocol.md`` states it.

Each id appears in that section of the document as ``**[id]**``
(``tests/test_no_external_citations.py`` holds both)."""

from __future__ import annotations

from dataclasses import dataclass

#: Where the clauses are specified; a clause's `Clause.section` is this plus an anchor.
DOC = "docs/protocol.md"
D = DOC + "#"


@dataclass(frozen=True)
class Clause:
    id: str
    #: The document and section anchor, e.g. ``docs/protocol.md#pci-ins``.
    section: str
    text: str


STUBDOMAIN_CLAUSES: tuple[Clause, ...] = (
    Clause("setup.reads", D + "argv", "reads target, the guest's vm node and <vm>/image/dmargs"),
    Clause("startup.running", D + "running",
           "writes state=running (and no other value) at startup"),
    Clause("startup.watch-first", D + "running",
           "watches command and logdirty/cmd before running"),
    Clause("command.deleted", D + "the-exchange", "deletes the command node after reading it"),
    Clause("pci-ins.result", D + "pci-ins", "pci-ins: parameter=0x%02x then state=pci-inserted"),
    Clause("pci-ins.order", D + "pci-ins", "pci-ins: parameter is written before state"),
    Clause("pci-ins.vdevfn", D + "pci-ins", "pci-ins with @vdevfn inserts at that devfn"),
    Clause("pci-ins.refusal", D + "pci-ins", "a refused pci-ins: pci-insert-failed, or the "
           "error text in parameter with state unchanged (qemu-trad)"),
    Clause("pci-rem.result", D + "pci-rem", "pci-rem of an inserted function 0: pci-removed"),
    Clause("pci-rem.refusal", D + "pci-rem", "pci-rem of an unknown device: no pci-removed"),
    Clause("command.unknown", D + "the-exchange",
           "an unknown command is deleted and writes no state"),
    Clause("save.paused", D + "save", "save: state=paused"),
    Clause("save.console-closed", D + "save", "save: console 1 closed before paused"),
    Clause("save.complete", D + "save", "save: console-1 file is a complete stream at paused"),
    Clause("paused.logdirty", D + "paused", "logdirty is answered while paused"),
    Clause("continue.running", D + "continue", "continue while paused: state=running"),
    Clause("logdirty.echo", D + "logdirty",
           "logdirty/cmd enable|disable echoed into logdirty/ret"),
    Clause("vcpu-set", D + "vcpu-set", "a change under /local/domain/G/cpu is read by the DM"),
    Clause("loadvm.running", D + "restore", "-loadvm: state read from console 2, then running "
           "(never paused)"),
    Clause("pci-ins.failed-state", D + "pci-ins", "a refused pci-ins writes "
           "state=pci-insert-failed (the documented failure result, which qemu-trad never "
           "writes)"),
    Clause("pci-rem.failed-state", D + "pci-rem", "a refused pci-rem writes "
           "state=pci-remove-failed with the reason in parameter (qemu-trad writes nothing)"),
    Clause("scope.writes", D + "nodes", "writes only its own nodes: its frontends and "
           "consoles, and state, parameter and logdirty/ret of device-model/G; nothing of the "
           "guest but console/vnc-port and a vbd's eject; never target, vm, image or command"),
)

TOOLSTACK_CLAUSES: tuple[Clause, ...] = (
    Clause("ts.dm-version", D + "setup-order", "/libxl/G/dm-version = qemu_xen_traditional"),
    Clause("ts.dmargs", D + "dmargs", "dmargs: leading space, space-joined, no -sdl/-M/xenfv"),
    Clause("ts.dmargs-perms", D + "nodes", "dmargs perms n0,rS"),
    Clause("ts.target", D + "setup-order", "/local/domain/S/target = G"),
    Clause("ts.device-model-domid", D + "setup-order", "image/device-model-domid = S"),
    Clause("ts.dm-dir", D + "setup-order", "device-model/G created with perms nS,rG"),
    Clause("ts.consoles", D + "consoles", "console outputs: 0 log file, 1 save file"),
    Clause("ts.pci-ins.format", D + "pci-ins",
           "pci-ins parameter format, written before command"),
    Clause("ts.pci-rem.format", D + "pci-rem", "pci-rem parameter = PCI_BDF, before command"),
    Clause("ts.state-restored", D + "timing-and-ordering",
           "state written back after pci-ins, and after a successful pci-rem"),
    Clause("ts.serialised", D + "timing-and-ordering", "one command outstanding at a time"),
    Clause("ts.continue-paused", D + "continue", "continue sent only while state is paused"),
)

BY_ID = {c.id: c for c in STUBDOMAIN_CLAUSES + TOOLSTACK_CLAUSES}
