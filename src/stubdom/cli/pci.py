"""PCI verbs: pci-attach, pci-detach, pci-list and the pci-assignable-* list."""

from __future__ import annotations

import click

from stubdom.cli.common import dir_option, run, timeout_option
from stubdom.protocol import Bdf, parse_bdf
from stubdom.toolstack.config import PciSpec
from stubdom.toolstack.session import Session


def _pci_spec(text: str) -> PciSpec:
    """xl's PCI_SPEC_STRING; a bad one is a usage error naming the argument."""
    from stubdom.toolstack.specs import parse_pci

    try:
        return parse_pci(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="PCI_SPEC_STRING") from None


@click.command("pci-attach")
@click.argument("domain")
@click.argument("pci_spec")
@timeout_option
@dir_option
def pci_attach(domain: str, pci_spec: str, timeout: float | None, directory: str | None) -> None:
    """Hot-plug a PCI function into a running guest (PCI_SPEC_STRING as xl)."""
    from stubdom.toolstack.pci import pci_attach as attach

    spec = _pci_spec(pci_spec)

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        await attach(s, info.domid, spec, timeout=timeout)

    run(body, directory)


@click.command("pci-detach")
@click.argument("domain")
@click.argument("pci_spec")
@click.option("-f", "force", is_flag=True, help="Remove without asking the device model.")
@timeout_option
@dir_option
def pci_detach(
    domain: str, pci_spec: str, force: bool, timeout: float | None, directory: str | None
) -> None:
    """Hot-unplug a PCI function, or every one of ``BB:DD.*`` (only the BDF matters)."""
    from stubdom.toolstack.pci import pci_detach as detach

    spec = _pci_spec(pci_spec)

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        await detach(
            s, info.domid, spec.bdf, all_functions=spec.all_functions, force=force,
            timeout=timeout,
        )

    run(body, directory)


@click.command("pci-list")
@click.argument("domain")
@dir_option
def pci_list(domain: str, directory: str | None) -> None:
    """The guest's PCI functions and the virtual slot the device model chose."""
    from stubdom.toolstack.pci import pci_list as listing

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        rows = await listing(s, info.domid)
        click.echo("Vdev Device")
        for row in rows:
            click.echo(row.row())

    run(body, directory)


def _bdf(text: str) -> Bdf:
    """One function, as xl's ``xlu_pci_parse_bdf``: a usage error (exit 2) otherwise."""
    try:
        return parse_bdf(text)
    except ValueError:
        raise click.BadParameter(
            f'malformed BDF "{text}" (one function: [DDDD:]BB:DD.F)', param_hint="BDF"
        ) from None


@click.command("pci-assignable-list")
@dir_option
def pci_assignable_list(directory: str | None) -> None:
    """The functions that can be passed through and that no guest holds."""
    from stubdom.toolstack.pci import assignable_list

    async def body(s: Session) -> None:
        for bdf in await assignable_list(s):
            click.echo(str(bdf))

    run(body, directory)


@click.command("pci-assignable-add")
@click.argument("bdf")
@dir_option
def pci_assignable_add(bdf: str, directory: str | None) -> None:
    """Make a function assignable (one BDF; adding it twice only warns, as xl)."""
    from stubdom.toolstack.pci import assignable_add

    function = _bdf(bdf)

    async def body(s: Session) -> None:
        assignable_add(s, function)

    run(body, directory)


@click.command("pci-assignable-remove")
@click.argument("bdf")
@click.option(
    "-r", "rebind", is_flag=True,
    help="Rebind to its dom0 driver (no effect: the simulated host has no drivers).",
)
@dir_option
def pci_assignable_remove(bdf: str, rebind: bool, directory: str | None) -> None:
    """Take a function off the assignable list (refused while a guest holds it)."""
    from stubdom.toolstack.pci import assignable_remove

    function = _bdf(bdf)

    async def body(s: Session) -> None:
        await assignable_remove(s, function)

    run(body, directory)
