"""Read and change the host's xenstore, like xenstore-utils do."""

from __future__ import annotations

import functools

import click

from stubdom.cli.common import dir_option, run
from stubdom.toolstack.session import Session
from stubdom.wire.perms import InvalidPermission, parse_perm
from stubdom.xenstore import Transaction


@click.group("xenstore")
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
