"""Read and change the host's xenstore, like xenstore-utils do.

The request/response verbs use the blocking client (`stubdom.xenstore.blocking`) over
dom0's socket: no event loop, no toolstack, so ``stubdom xenstore read`` starts about as
fast as ``xenstore-read``.  ``watch`` waits for events, which the asyncio client is for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from stubdom.cli.common import dir_option, explain_unreachable, one_line, run
from stubdom.host.rundir import resolve
from stubdom.xenstore.blocking import BlockingClient
from stubdom.xenstore.recovery import RECONNECT

if TYPE_CHECKING:
    from stubdom.toolstack.session import Session



@contextlib.contextmanager
def _xenstore(directory: str | None) -> Iterator[BlockingClient]:
    """dom0's connection to the host's xenstored; every failure a one-line error."""
    rd = resolve(directory)
    try:
        xs = _connect(str(rd.xenstored_socket), directory)
        with xs:
            yield xs
    except (OSError, ValueError) as e:
        one_line(e)


def _connect(socket_path: str, directory: str | None) -> BlockingClient:
    try:
        return BlockingClient(socket_path, reconnect=RECONNECT)
    except OSError:
        explain_unreachable(directory)
    # The toolstack reached it meanwhile (a daemon just started): once more.
    return BlockingClient(socket_path, reconnect=RECONNECT)


@click.group("xenstore")
def xenstore() -> None:
    """Read and change the host's xenstore (like xenstore-read, -write, -ls ...)."""


@xenstore.command("read")
@click.argument("paths", nargs=-1, required=True)
@dir_option
def xs_read(paths: tuple[str, ...], directory: str | None) -> None:
    with _xenstore(directory) as xs:
        for p in paths:
            click.echo(xs.read(p).decode("utf-8", "replace"))


@xenstore.command("write")
@click.argument("pairs", nargs=-1, required=True)
@dir_option
def xs_write(pairs: tuple[str, ...], directory: str | None) -> None:
    """PATH VALUE [PATH VALUE ...], in one transaction when there are several."""
    if len(pairs) % 2:
        raise click.UsageError("write takes PATH VALUE pairs")
    items = list(zip(pairs[::2], pairs[1::2], strict=True))
    with _xenstore(directory) as xs:
        if len(items) == 1:
            xs.write(*items[0])
            return

        def tx(tx_id: int) -> None:
            for path, value in items:
                xs.write(path, value, tx_id=tx_id)

        xs.retry_transaction(tx)


@xenstore.command("rm")
@click.argument("paths", nargs=-1, required=True)
@dir_option
def xs_rm(paths: tuple[str, ...], directory: str | None) -> None:
    with _xenstore(directory) as xs:
        for p in paths:
            xs.rm(p)


@xenstore.command("ls")
@click.argument("path", default="/")
@click.option("-p", "perms", is_flag=True, help="Show permissions.")
@dir_option
def xs_ls(path: str, perms: bool, directory: str | None) -> None:
    """The tree below PATH, indented, like xenstore-ls."""

    def walk(xs: BlockingClient, p: str, depth: int) -> None:
        for name in xs.directory(p):
            child = f"{p.rstrip('/')}/{name}"
            value = xs.read(child).decode("utf-8", "replace")
            line = f'{" " * depth}{name} = "{_sanitise(value)}"'
            if perms:
                line += "  (" + ",".join(str(x) for x in xs.get_perms(child)) + ")"
            click.echo(line)
            walk(xs, child, depth + 1)

    with _xenstore(directory) as xs:
        walk(xs, path, 0)


@xenstore.command("chmod")
@click.argument("path")
@click.argument("permissions", nargs=-1, required=True)
@dir_option
def xs_chmod(path: str, permissions: tuple[str, ...], directory: str | None) -> None:
    """Set PATH's permissions: owner first (n0), then ACL entries (r5 w3 b7)."""
    from stubdom.wire.perms import InvalidPermission, parse_perm

    try:
        vector = [parse_perm(p) for p in permissions]
    except InvalidPermission as e:
        raise click.BadParameter(str(e)) from None
    with _xenstore(directory) as xs:
        xs.set_perms(path, vector)


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
