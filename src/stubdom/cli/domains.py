"""xl's domain verbs on the simulated host: create, destroy, pause, unpause, list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import click

from stubdom import protocol as proto
from stubdom.cli.common import run
from stubdom.cli.host import XL_LIST_HEADER, dir_option, xl_list_row
from stubdom.cli.main import cli
from stubdom.host.hypervisor import DomainInfo
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.toolstack.xlcfg import ConfigError


@cli.command("create")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("-p", "paused", is_flag=True, help="Leave the guest paused after creating it.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to wait for the device model to report running (default 30).",
)
@dir_option
def create(
    config: str,
    overrides: tuple[str, ...],
    paused: bool,
    timeout: float | None,
    directory: str | None,
) -> None:
    """Create an HVM guest and its device-model stubdomain from an xl.cfg file.

    Trailing KEY=VALUE arguments override the file, as with 'xl create'.
    """
    from stubdom.toolstack.configure import load_config
    from stubdom.toolstack.operations import create_guest

    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None

    async def body(s: Session) -> None:
        created = await create_guest(s, cfg, paused=paused, timeout=timeout)
        click.echo(
            f"Created {cfg.name} (domain {created.guest}) with stubdomain "
            f"{cfg.name}-dm (domain {created.stubdom})",
            err=True,
        )

    run(body, directory)


@cli.command("destroy")
@click.argument("domain")
@dir_option
def destroy(domain: str, directory: str | None) -> None:
    """Destroy a guest, its stubdomain, their nodes and their save/restore files.

    A stubdomain whose guest is gone (what a toolstack killed half-way can leave) is
    destroyed by its own name or domid; one whose guest lives follows its guest.
    """
    from stubdom.toolstack.spawn import destroy_domain, destroy_guest

    async def body(s: Session) -> None:
        orphan = await _orphan_stubdom(s, domain)
        if orphan is not None:
            await destroy_domain(s.hv, s.xs, orphan.domid, orphan.uuid, s.paths)
            return
        info = await s.resolve_guest(domain)
        await destroy_guest(s.hv, s.xs, info.domid, s.paths)

    run(body, directory)


@cli.command("pause")
@click.argument("domain")
@dir_option
def pause(domain: str, directory: str | None) -> None:
    """Pause a domain's vCPUs (xl pause); its device model is not told."""
    _on_domain(domain, directory, lambda s, domid: s.hv.pause(domid))


@cli.command("unpause")
@click.argument("domain")
@dir_option
def unpause(domain: str, directory: str | None) -> None:
    """Unpause a domain (xl unpause): e.g. a guest a killed 'stubdom save' left paused."""
    _on_domain(domain, directory, lambda s, domid: s.hv.unpause(domid))


def _on_domain(
    domain: str, directory: str | None, action: Callable[[Session, int], Awaitable[None]]
) -> None:
    async def body(s: Session) -> None:
        await action(s, (await s.resolve_guest(domain)).domid)

    run(body, directory)


async def _orphan_stubdom(s: Session, name_or_id: str) -> DomainInfo | None:
    """The stubdomain ``name_or_id`` names, if its guest no longer exists."""
    infos = await s.domains()
    found = next((d for d in infos if str(d.domid) == name_or_id), None) or next(
        (d for d in infos if d.name == name_or_id), None
    )
    if found is None or found.hvm or not found.name.endswith(proto.STUBDOM_SUFFIX):
        return None
    raw = await s.xs.read_optional(proto.target_path(found.domid))
    target = int(raw) if raw is not None and raw.decode().isdigit() else found.target
    guest_name = found.name[: -len(proto.STUBDOM_SUFFIX)]
    if any(d.domid == target or d.name == guest_name for d in infos if d.hvm):
        return None
    return found


@cli.command("list")
@click.argument("domains", nargs=-1)
@dir_option
def list_(domains: tuple[str, ...], directory: str | None) -> None:
    """List domains in xl's layout; a stubdomain shows as <guest>-dm."""

    async def body(s: Session) -> None:
        infos = list(await s.domains())
        if domains:
            wanted = set(domains)
            infos = [d for d in infos if d.name in wanted or str(d.domid) in wanted]
            missing = wanted - {d.name for d in infos} - {str(d.domid) for d in infos}
            if missing:
                raise ToolstackError(f"no domain {sorted(missing)[0]!r}")
        click.echo(XL_LIST_HEADER)
        for d in infos:
            click.echo(xl_list_row(d))

    run(body, directory)
