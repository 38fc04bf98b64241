"""save and restore, as xl has them."""

from __future__ import annotations

import click

from stubdom.cli.common import dir_option, run, timeout_option
from stubdom.toolstack.session import Session


@click.command("save")
@click.argument("domain")
@click.argument("file")
@click.argument("config_file", metavar="[CONFIGFILE]", required=False)
@click.option(
    "-c", "checkpoint", is_flag=True, help="Leave the guest running after saving (a checkpoint)."
)
@click.option(
    "-p",
    "leave_paused",
    is_flag=True,
    help="Leave the guest paused after saving, not destroyed (with or without -c).",
)
@click.option(
    "-D",
    "preserve_domid",
    is_flag=True,
    help="Record the guest's domain id in the image: restore creates the guest with that "
    "id again, and fails if it is in use. Ignored with CONFIGFILE, as in xl.",
)
@timeout_option
@dir_option
def save(
    domain: str,
    file: str,
    config_file: str | None,
    checkpoint: bool,
    leave_paused: bool,
    preserve_domid: bool,
    timeout: float | None,
    directory: str | None,
) -> None:
    """Save a guest's device-model state and configuration to FILE, as 'xl save'.

    Without -c or -p the guest (and its stubdomain) is destroyed once FILE is written.

    FILE is written where it points: a regular file is replaced only once the whole
    image is on disk (through a symlink, which stays one); a FIFO, a pipe or '-'
    (standard output) receive the image as a stream. A device or a directory is
    refused before anything happens. If the save fails, FILE is left as it was (a
    stream may have part of the image), and the guest runs on, or stays paused if it
    was paused before.

    CONFIGFILE is an xl.cfg stored in the image instead of the configuration the guest
    was created with.
    """
    from stubdom.toolstack.saverestore import save_guest

    async def body(s: Session) -> None:
        config = None
        if config_file is not None:
            from stubdom.toolstack.configure import load_config

            config = load_config(config_file)
            if preserve_domid:
                click.echo(f"-D is ignored with the config file {config_file}, as in xl", err=True)
        info = await s.resolve_guest(domain)
        size = await save_guest(
            s,
            info.domid,
            file,
            keep=checkpoint,
            leave_paused=leave_paused,
            preserve_domid=preserve_domid,
            config=config,
            timeout=timeout,
        )
        where = "standard output" if file == "-" else file
        click.echo(f"Saved {info.name} to {where} ({size} bytes)", err=True)

    run(body, directory)


@click.command("restore")
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
