"""info and dmesg: the host as xl describes a Xen host."""

from __future__ import annotations

import click

from stubdom.cli.common import dir_option, run
from stubdom.host.rundir import process_cmdline, resolve
from stubdom.toolstack.session import Session


@click.command("info")
@click.argument("name", required=False)
@dir_option
def info(name: str | None, directory: str | None) -> None:
    """Print xl info's 'key : value' lines for the simulated host; with NAME, only the
    values of the keys starting with it (e.g. 'stubdom info free_memory')."""
    from stubdom.toolstack.hostinfo import HostFacts, info_lines, render

    async def body(s: Session) -> None:
        domains = await s.domains()
        dom0 = next(d for d in domains if d.domid == 0)
        facts = HostFacts(
            nr_cpus=dom0.max_vcpus,
            total_memkb=dom0.max_memkb,
            domains_memkb=sum(d.memkb for d in domains if d.domid != 0),
            host_cmdline=process_cmdline(dom0.pid) if dom0.pid else [],
        )
        for line in render(info_lines(facts), name):
            click.echo(line)

    run(body, directory)


@click.command("dmesg")
@click.option("-c", "--clear", "clear", is_flag=True, help="Clear the log after printing it.")
@dir_option
def dmesg(clear: bool, directory: str | None) -> None:
    """Print the hypervisor's log: here the host daemon's (host.log in the run directory)."""
    log = resolve(directory).host_log
    try:
        with open(log, "rb+" if clear else "rb") as f:
            click.echo(f.read().decode("utf-8", "replace"), nl=False)
            if clear:
                f.truncate(0)
    except FileNotFoundError:
        raise click.ClickException(
            f"no host log at {log}; start a host with 'stubdom host up'"
        ) from None
    except OSError as e:
        raise click.ClickException(f"cannot read {log}: {e.strerror or e}") from None
