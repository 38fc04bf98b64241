"""PCI hot-plug verbs: pci-attach, pci-detach, pci-list."""

from __future__ import annotations

import click

from stubdom.cli.common import run, timeout_option
from stubdom.cli.host import dir_option
from stubdom.cli.main import cli
from stubdom.toolstack.session import Session


@cli.command("pci-attach")
@click.argument("domain")
@click.argument("pci_spec")
@timeout_option
@dir_option
def pci_attach(domain: str, pci_spec: str, timeout: float | None, directory: str | None) -> None:
    """Hot-plug a PCI function into a running guest (PCI_SPEC_STRING as xl)."""
    from stubdom.toolstack.pci import pci_attach as attach
    from stubdom.toolstack.specs import parse_pci

    try:
        spec = parse_pci(pci_spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="PCI_SPEC_STRING") from None

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        await attach(s, info.domid, spec, timeout=timeout)

    run(body, directory)


@cli.command("pci-detach")
@click.argument("domain")
@click.argument("pci_spec")
@click.option("-f", "force", is_flag=True, help="Remove without asking the device model.")
@timeout_option
@dir_option
def pci_detach(
    domain: str, pci_spec: str, force: bool, timeout: float | None, directory: str | None
) -> None:
    """Hot-unplug a PCI function (only its BDF matters, as with xl)."""
    from stubdom.toolstack.pci import pci_detach as detach
    from stubdom.toolstack.specs import parse_pci

    try:
        spec = parse_pci(pci_spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="PCI_SPEC_STRING") from None

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        await detach(s, info.domid, spec.bdf, force=force, timeout=timeout)

    run(body, directory)


@cli.command("pci-list")
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
