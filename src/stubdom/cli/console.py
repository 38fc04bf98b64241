"""console: attach to a guest's serial port."""

from __future__ import annotations

import click

from stubdom.cli.common import run
from stubdom.cli.host import dir_option
from stubdom.cli.main import cli
from stubdom.toolstack.session import Session


@cli.command("console")
@click.argument("domain")
@click.option("-n", "number", type=int, default=0, help="Serial port number (default 0).")
@click.option("-t", "kind", type=click.Choice(["serial"]), default="serial",
              help="Console type; a stubdomain guest has serial consoles only.")
@dir_option
def console(domain: str, number: int, kind: str, directory: str | None) -> None:
    """Attach to a guest's serial console; Ctrl+] detaches."""
    from stubdom.toolstack.console import attach_serial

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        await attach_serial(s, info.domid, number)

    run(body, directory)
