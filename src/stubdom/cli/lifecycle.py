"""xl's verbs on a running guest: shutdown, reboot, mem-set, vcpu-set, rename."""

from __future__ import annotations

import click

from stubdom.cli.common import dir_option, run
from stubdom.host.hypervisor import DomainInfo
from stubdom.toolstack.session import Session


def _say(line: str) -> None:
    click.echo(line, err=True)


def _shutdown_options(verb: str) -> list[click.Parameter]:
    wait_help = (
        "Wait until the guest has shut down or is destroyed; twice (-ww): until it is "
        "destroyed." + (" The restart on_reboot asks for follows; 'stubdom list' shows it."
                        if verb == "reboot" else "")
    )
    return [
        click.Argument(["domain"], required=False),
        click.Option(
            ["-a", "--all", "all_"], is_flag=True, help=f"{verb.capitalize()} every guest."
        ),
        click.Option(["-w", "--wait", "wait"], count=True, help=wait_help),
        click.Option(
            ["-F", "fallback"], is_flag=True,
            help="xl's ACPI fallback for guests without PV drivers: never needed here, "
            "every guest answers control/shutdown.",
        ),
    ]


def _shutdown_or_reboot(
    reboot: bool, domain: str | None, all_: bool, wait: int, directory: str | None
) -> None:
    from stubdom.toolstack.domain import request_shutdown, wait_for_deaths

    if domain is None and not all_:
        raise click.ClickException("name a domain, or give -a for every guest")

    async def body(s: Session) -> None:
        if all_:
            targets = [d for d in await s.domains() if _is_running_guest(d)]
        else:
            targets = [await s.resolve_guest(domain or "")]
        for info in targets:
            _say(f"{'Rebooting' if reboot else 'Shutting down'} domain {info.domid}")
            await request_shutdown(s, info.domid, reboot=reboot)
        if wait:
            await wait_for_deaths(s, [d.domid for d in targets], death_only=wait > 1, say=_say)

    run(body, directory)


def _is_running_guest(d: DomainInfo) -> bool:
    """What -a reaches: guests (not Domain-0, not stubdomains) that still run."""
    return d.domid != 0 and d.target is None and not d.ended


@click.command(
    "shutdown",
    params=_shutdown_options("shutdown"),
    help="Ask a guest to power off: control/shutdown = poweroff, which the simulated host "
    "obeys for the guest (an HVM guest here has no OS); then on_poweroff applies.",
)
@dir_option
def shutdown(domain: str | None, all_: bool, wait: int, fallback: bool,
             directory: str | None) -> None:
    _shutdown_or_reboot(False, domain, all_, wait, directory)


@click.command(
    "reboot",
    params=_shutdown_options("reboot"),
    help="Ask a guest to reboot: control/shutdown = reboot, which the simulated host "
    "obeys for the guest; then on_reboot applies (by default, guest and stubdomain are "
    "created again).",
)
@dir_option
def reboot(domain: str | None, all_: bool, wait: int, fallback: bool,
           directory: str | None) -> None:
    _shutdown_or_reboot(True, domain, all_, wait, directory)


@click.command("mem-set")
@click.argument("domain")
@click.argument("memory")
@dir_option
def mem_set(domain: str, memory: str, directory: str | None) -> None:
    """Set a guest's current memory (its memory/target) to MEMORY: MiB, or a number
    with a b, k, m, g or t suffix.  At most its maxmem."""
    from stubdom.toolstack.domain import parse_mem_size_kb, set_memory_target

    memkb = parse_mem_size_kb(memory)
    if memkb is None:
        raise click.ClickException(
            f"invalid memory size {memory!r}: give MiB, or a number with b, k, m, g or t"
        )

    async def body(s: Session) -> None:
        await set_memory_target(s, (await s.resolve_guest(domain)).domid, memkb)

    run(body, directory)


@click.command("vcpu-set")
@click.argument("domain")
@click.argument("vcpus")
@click.option("-i", "--ignore-host", "ignore_host", is_flag=True,
              help="Allow more vCPUs than the host has CPUs.")
@dir_option
def vcpu_set(domain: str, vcpus: str, ignore_host: bool, directory: str | None) -> None:
    """Set how many vCPUs a guest has online (at most its maxvcpus); its device model
    hot-plugs them."""
    from stubdom.toolstack.domain import set_vcpus

    if not vcpus.isdigit():
        raise click.ClickException(f"invalid number of vCPUs {vcpus!r}: give a number")

    async def body(s: Session) -> None:
        guest = (await s.resolve_guest(domain)).domid
        await set_vcpus(s, guest, int(vcpus), check_host=not ignore_host)

    run(body, directory)


@click.command("rename")
@click.argument("domain")
@click.argument("new_name")
@dir_option
def rename(domain: str, new_name: str, directory: str | None) -> None:
    """Rename a guest, and its stubdomain to NEW_NAME-dm."""
    from stubdom.toolstack.domain import rename_guest

    async def body(s: Session) -> None:
        await rename_guest(s, (await s.resolve_guest(domain)).domid, new_name)

    run(body, directory)
