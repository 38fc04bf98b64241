"""save and restore, as xl has them."""

from __future__ import annotations

import click

from stubdom.cli.common import run, timeout_option
from stubdom.cli.host import dir_option
from stubdom.cli.main import cli
from stubdom.toolstack.session import Session


@cli.command("save")
@click.argument("domain")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-c", "keep", is_flag=True, help="Leave the guest running after saving.")
@click.option("-p", "leave_paused", is_flag=True, help="With -c: leave the guest paused.")
@timeout_option
@dir_option
def save(
    domain: str,
    file: str,
    keep: bool,
    leave_paused: bool,
    timeout: float | None,
    directory: str | None,
) -> None:
    """Save a guest's device-model state and configuration to FILE."""
    from pathlib import Path

    from stubdom.toolstack.saverestore import save_guest

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        size = await save_guest(
            s, info.domid, Path(file), keep=keep, leave_paused=leave_paused, timeout=timeout
        )
        click.echo(f"Saved {info.name} to {file} ({size} bytes)", err=True)

    run(body, directory)


@cli.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "paused", is_flag=True, help="Leave the guest paused after restoring.")
@click.option("-e", "no_monitor", is_flag=True,
              help="Leave no monitor (on_poweroff, on_reboot, on_crash are not applied).")
@timeout_option
@dir_option
def restore(
    file: str, paused: bool, no_monitor: bool, timeout: float | None, directory: str | None
) -> None:
    """Recreate a guest and its stubdomain from a file written by 'stubdom save'.

    As after 'stubdom create', a monitor applies on_poweroff, on_reboot and on_crash.
    """
    from pathlib import Path

    from stubdom.toolstack.monitor import start_monitor
    from stubdom.toolstack.saverestore import restore_guest

    async def body(s: Session) -> None:
        created = await restore_guest(s, Path(file), paused=paused, timeout=timeout)
        click.echo(f"Restored domain {created.guest} with stubdomain {created.stubdom}", err=True)
        if not no_monitor:
            name = (await s.hv.domain_info(created.guest)).name
            start_monitor(s.run_dir, s.paths, created.guest, name)

    run(body, directory)
