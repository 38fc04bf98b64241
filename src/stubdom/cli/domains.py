"""xl's domain verbs on the simulated host: create, destroy, pause, unpause, list, and
the hidden ``monitor`` that create leaves behind."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

from stubdom.cli.common import (
    SECONDS,
    XL_LIST_HEADER,
    dir_option,
    one_line,
    require_xenstored,
    run,
    xl_list_row,
)
from stubdom.host.rundir import resolve

if TYPE_CHECKING:
    from stubdom.host.hypervisor import DomainInfo
    from stubdom.toolstack.config import GuestConfig
    from stubdom.toolstack.session import Session


@click.command("create")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("-p", "paused", is_flag=True, help="Leave the guest paused after creating it.")
@click.option("-c", "console", is_flag=True, help="Attach to the guest's serial port 0 after.")
@click.option(
    "-e", "no_monitor", is_flag=True,
    help="Leave no monitor: on_poweroff, on_reboot and on_crash are not applied.",
)
@click.option("-F", "foreground", is_flag=True, help="Monitor the guest in the foreground.")
@click.option("-V", "--vncviewer", "vncviewer", is_flag=True,
              help="Start vncviewer on the guest's display.")
@click.option("-n", "--dryrun", "dryrun", is_flag=True,
              help="Print the guest and the stubdomain as JSON; create nothing.")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="No note on stderr.")
@click.option(
    "--timeout",
    type=SECONDS,
    default=None,
    help="Seconds to wait for the device model to report running (default 30).",
)
@dir_option
def create(
    config: str,
    overrides: tuple[str, ...],
    paused: bool,
    console: bool,
    no_monitor: bool,
    foreground: bool,
    vncviewer: bool,
    dryrun: bool,
    quiet: bool,
    timeout: float | None,
    directory: str | None,
) -> None:
    """Create an HVM guest and its device-model stubdomain from an xl.cfg file.

    Trailing KEY=VALUE arguments override the file, as with 'xl create'.

    A monitor process stays behind (in the foreground with -F, none with -e) and
    applies on_poweroff, on_reboot and on_crash when the guest shuts down.  A guest
    cannot run without its device model: if the stubdomain crashes or shuts down, the
    monitor destroys it and treats that as a crash of the guest (on_crash).

    \b
    The stubdomain boots stubdom-dm unless the config names another kernel:
      stubdomain_kernel = "stubdom-minios"      (a bare name is looked up on PATH)
      stubdomain_cmdline = "PROGRAM [ARG...]"   (the device model Mini-OS runs)
    stubdom-minios plays Mini-OS (consoles, PV devices, pcifront) for a PROGRAM that
    speaks only the control channel; see the README.
    """
    from stubdom.toolstack.configure import load_config
    from stubdom.toolstack.operations import create_guest
    from stubdom.toolstack.xlcfg import ConfigError

    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if dryrun:
        _dry_run(cfg)
        return
    status = 0

    async def body(s: Session) -> None:
        nonlocal status
        created = await create_guest(s, cfg, paused=paused, timeout=timeout)
        if not quiet:
            click.echo(
                f"Created {cfg.name} (domain {created.guest}) with stubdomain "
                f"{cfg.name}-dm (domain {created.stubdom})",
                err=True,
            )
        status = await _after_create(s, cfg, created.guest, console=console,
                                     monitor="foreground" if foreground else
                                     "none" if no_monitor else "background",
                                     vncviewer=vncviewer)

    run(body, directory)
    sys.exit(status)


def _dry_run(cfg: GuestConfig) -> None:
    import json

    from stubdom.toolstack.dryrun import describe

    try:
        click.echo(json.dumps(describe(cfg), indent=2))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


async def _after_create(
    s: Session, cfg: GuestConfig, guest: int, *, console: bool, monitor: str, vncviewer: bool
) -> int:
    """xl's order after the domain is built: vncviewer, the monitor, the console."""
    from stubdom.cli.console import announce
    from stubdom.toolstack.console import attach, find_console, vnc_display
    from stubdom.toolstack.monitor import monitor_domain, start_monitor
    from stubdom.toolstack.session import ToolstackError

    if vncviewer:
        try:
            _start_vncviewer(await vnc_display(s, guest, cfg.vnc.listen))
        except ToolstackError as e:
            click.echo(f"Warning: no vncviewer: {e}", err=True)
    if monitor == "background":
        start_monitor(s.run_dir, s.paths, guest, cfg.name)
    if console:
        try:
            ref = await find_console(s, str(guest), "serial", 0)
        except ToolstackError as e:
            click.echo(f"Warning: {cfg.name} was created, but has no console: {e}", err=True)
        else:
            announce(ref.what)
            await attach(ref.tty)
    if monitor == "foreground":
        logging.getLogger("stubdom.toolstack.monitor").setLevel(logging.INFO)
        return await monitor_domain(s, guest)
    return 0


def _start_vncviewer(display: str) -> None:
    import shutil
    import subprocess

    from stubdom.toolstack.session import ToolstackError

    viewer = shutil.which("vncviewer")
    if viewer is None:
        raise ToolstackError(f"vncviewer is not installed; point a VNC viewer at {display}")
    subprocess.Popen([viewer, display], stdin=subprocess.DEVNULL, start_new_session=True)


@click.command("monitor", hidden=True)
@click.argument("domid", type=int)
@dir_option
def monitor(domid: int, directory: str | None) -> None:
    """Internal: the monitor 'stubdom create' leaves behind for guest DOMID."""
    from stubdom.toolstack.monitor import monitor_domain

    logging.getLogger("stubdom.toolstack.monitor").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    status = 0

    async def body(s: Session) -> None:
        nonlocal status
        status = await monitor_domain(s, domid)

    run(body, directory)
    sys.exit(status)


@click.command("destroy")
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
        await destroy_guest(s.hv, s.xs, info.domid, s.paths, channels=s.channels)

    run(body, directory)


@click.command("pause")
@click.argument("domain")
@dir_option
def pause(domain: str, directory: str | None) -> None:
    """Pause a domain's vCPUs (xl pause); its device model is not told."""
    _on_domain(domain, directory, lambda s, domid: s.hv.pause(domid))


@click.command("unpause")
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
    from stubdom import protocol as proto

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


@click.command("list")
@click.argument("domains", nargs=-1)
@dir_option
def list_(domains: tuple[str, ...], directory: str | None) -> None:
    """List domains in xl's layout; a stubdomain shows as <guest>-dm."""
    # One request to the host daemon over a plain socket: no session, no asyncio (the
    # domain list is the hypervisor's, as for xl list).
    from stubdom.host.apiblocking import call
    from stubdom.host.apicodec import ListDomains
    from stubdom.host.hypervisor import HypervisorError

    rd = resolve(directory)
    try:
        infos = call(rd.root, ListDomains())
    except (HypervisorError, OSError) as e:
        one_line(e)
    require_xenstored(str(rd.xenstored_socket), directory)
    if domains:
        wanted = set(domains)
        infos = [d for d in infos if d.name in wanted or str(d.domid) in wanted]
        missing = wanted - {d.name for d in infos} - {str(d.domid) for d in infos}
        if missing:
            raise click.ClickException(f"no domain {sorted(missing)[0]!r}")
    click.echo(XL_LIST_HEADER)
    for d in infos:
        click.echo(xl_list_row(d))
