"""console: attach to a guest's serial port (or a stubdomain's PV console)."""

from __future__ import annotations

import click

from stubdom.cli.common import dir_option, run
from stubdom.toolstack.session import Session


@click.command("console")
@click.argument("domain")
@click.option("-n", "number", type=int, default=0, help="Console number (default 0).")
@click.option(
    "-t",
    "kind",
    type=click.Choice(["serial", "pv", "vuart"]),
    default="serial",
    help="serial (default): the guest's serial port, served by its stubdomain. "
    "pv: a stubdomain's PV console (0 log, 1 save, 2 restore, 3+ the guest's serial "
    "ports); an HVM guest here has no OS and so no PV console. vuart: Arm only.",
)
@dir_option
def console(domain: str, number: int, kind: str, directory: str | None) -> None:
    """Attach to a guest's serial console; Ctrl+] detaches."""
    from stubdom.toolstack.console import attach, find_console

    async def body(s: Session) -> None:
        ref = await find_console(s, domain, kind, number)
        announce(ref.what)
        await attach(ref.tty)

    run(body, directory)


def announce(what: str) -> None:
    """What the terminal is joined to and how to leave, on stderr (stdout is the guest's)."""
    click.echo(f"Connected to {what}; Ctrl-] to leave", err=True)
