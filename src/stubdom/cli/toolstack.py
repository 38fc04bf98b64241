"""xl's verbs on the simulated host: create, destroy, list, and xenstore conveniences.

DOMAIN is a name or a domid everywhere.  Exit status 0 on success; otherwise one line
on stderr naming what failed and how to fix it, and status 1.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import click

from stubdom import protocol as proto
from stubdom.cli.host import XL_LIST_HEADER, dir_option, xl_list_row
from stubdom.cli.main import cli
from stubdom.host.devices import DeviceError
from stubdom.host.hypervisor import DomainInfo, HypervisorError
from stubdom.toolstack.control import DeviceModelError
from stubdom.toolstack.session import Session, ToolstackError, open_session
from stubdom.toolstack.spawn import CreateError
from stubdom.toolstack.xlcfg import ConfigError
from stubdom.wire.perms import InvalidPermission, parse_perm
from stubdom.xenstore import Transaction, XenStoreError


def run(body: Callable[[Session], Awaitable[None]], directory: str | None) -> None:
    """Run one command against the host; every expected failure is a one-line error."""

    async def main() -> None:
        async with open_session(directory) as session:
            await body(session)

    try:
        asyncio.run(main())
    except EXPECTED as e:
        raise click.ClickException(str(e)) from None


#: Failures a user can act on: reported in one line, never as a traceback.
EXPECTED: tuple[type[Exception], ...] = (
    ToolstackError, HypervisorError, XenStoreError, DeviceError, DeviceModelError,
    CreateError, ConfigError, ValueError, OSError,
)


# -- domains ----------------------------------------------------------------------------


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


# -- xenstore conveniences -----------------------------------------------------------------


@cli.group("xenstore")
def xenstore() -> None:
    """Read and change the host's xenstore (like xenstore-read, -write, -ls ...)."""


@xenstore.command("read")
@click.argument("paths", nargs=-1, required=True)
@dir_option
def xs_read(paths: tuple[str, ...], directory: str | None) -> None:
    async def body(s: Session) -> None:
        for p in paths:
            click.echo((await s.xs.read(p)).decode("utf-8", "replace"))

    run(body, directory)


@xenstore.command("write")
@click.argument("pairs", nargs=-1, required=True)
@dir_option
def xs_write(pairs: tuple[str, ...], directory: str | None) -> None:
    """PATH VALUE [PATH VALUE ...], in one transaction when there are several."""
    if len(pairs) % 2:
        raise click.UsageError("write takes PATH VALUE pairs")

    async def body(s: Session) -> None:
        items = list(zip(pairs[::2], pairs[1::2], strict=True))
        if len(items) == 1:
            await s.xs.write(*items[0])
            return

        async def tx(t: Transaction) -> None:
            for path, value in items:
                await t.write(path, value)

        await s.xs.retry_transaction(tx)

    run(body, directory)


@xenstore.command("rm")
@click.argument("paths", nargs=-1, required=True)
@dir_option
def xs_rm(paths: tuple[str, ...], directory: str | None) -> None:
    async def body(s: Session) -> None:
        for p in paths:
            await s.xs.rm(p)

    run(body, directory)


@xenstore.command("ls")
@click.argument("path", default="/")
@click.option("-p", "perms", is_flag=True, help="Show permissions.")
@dir_option
def xs_ls(path: str, perms: bool, directory: str | None) -> None:
    """The tree below PATH, indented, like xenstore-ls."""

    async def walk(s: Session, p: str, depth: int) -> None:
        for name in await s.xs.directory(p):
            child = f"{p.rstrip('/')}/{name}"
            value = (await s.xs.read(child)).decode("utf-8", "replace")
            line = f'{" " * depth}{name} = "{_sanitise(value)}"'
            if perms:
                line += "  (" + ",".join(str(x) for x in await s.xs.get_perms(child)) + ")"
            click.echo(line)
            await walk(s, child, depth + 1)

    run(functools.partial(walk, p=path, depth=0), directory)


@xenstore.command("chmod")
@click.argument("path")
@click.argument("permissions", nargs=-1, required=True)
@dir_option
def xs_chmod(path: str, permissions: tuple[str, ...], directory: str | None) -> None:
    """Set PATH's permissions: owner first (n0), then ACL entries (r5 w3 b7)."""
    try:
        vector = [parse_perm(p) for p in permissions]
    except InvalidPermission as e:
        raise click.BadParameter(str(e)) from None

    async def body(s: Session) -> None:
        await s.xs.set_perms(path, vector)

    run(body, directory)


@xenstore.command("watch")
@click.argument("path")
@click.option("-n", "count", type=int, default=0, help="Stop after N events (0: never).")
@dir_option
def xs_watch(path: str, count: int, directory: str | None) -> None:
    """Print the path of each event (the first is the watch being set)."""

    async def body(s: Session) -> None:
        seen = 0
        async with s.xs.watch(path) as w:
            async for ev in w:
                click.echo(ev.path)
                seen += 1
                if count and seen >= count:
                    return

    run(body, directory)


def _sanitise(value: str) -> str:
    """Like xenstore-ls: backslashes and unprintable characters escaped."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)


# -- PCI, save, restore, console ----------------------------------------------------------

_timeout_option = click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to wait for the device model (default 60, libxl's).",
)


@cli.command("pci-attach")
@click.argument("domain")
@click.argument("pci_spec")
@_timeout_option
@dir_option
def pci_attach(domain: str, pci_spec: str, timeout: float | None, directory: str | None) -> None:
    """Hot-plug a PCI function into a running guest (PCI_SPEC_STRING as xl)."""
    from stubdom.toolstack.operations import pci_attach as attach
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
@_timeout_option
@dir_option
def pci_detach(
    domain: str, pci_spec: str, force: bool, timeout: float | None, directory: str | None
) -> None:
    """Hot-unplug a PCI function (only its BDF matters, as with xl)."""
    from stubdom.toolstack.operations import pci_detach as detach
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
    from stubdom.toolstack.operations import pci_list as listing

    async def body(s: Session) -> None:
        info = await s.resolve_guest(domain)
        rows = await listing(s, info.domid)
        click.echo("Vdev Device")
        for row in rows:
            click.echo(row.row())

    run(body, directory)


@cli.command("save")
@click.argument("domain")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-c", "keep", is_flag=True, help="Leave the guest running after saving.")
@click.option("-p", "leave_paused", is_flag=True, help="With -c: leave the guest paused.")
@_timeout_option
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

    from stubdom.toolstack.operations import save_guest

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
@_timeout_option
@dir_option
def restore(file: str, paused: bool, timeout: float | None, directory: str | None) -> None:
    """Recreate a guest and its stubdomain from a file written by 'stubdom save'."""
    from pathlib import Path

    from stubdom.toolstack.operations import restore_guest

    async def body(s: Session) -> None:
        created = await restore_guest(s, Path(file), paused=paused, timeout=timeout)
        click.echo(f"Restored domain {created.guest} with stubdomain {created.stubdom}", err=True)

    run(body, directory)


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
