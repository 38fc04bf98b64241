"""``stubdom xenstored``: run the embedded xenstore daemon."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stubdom import compiled
from stubdom.cli.main import cli

# Imported in the command, after `compiled.install`: it may load the mypyc build.
if TYPE_CHECKING:
    from stubdom.xenstored import persist
    from stubdom.xenstored.core import XenStored
    from stubdom.xenstored.quota import Quotas
    from stubdom.xenstored.server import XenStoreServer
    from stubdom.xenstored.trace import PacketTrace

log = logging.getLogger(__name__)


def _quota_pairs(values: tuple[str, ...], option: str) -> list[tuple[str, int]]:
    pairs = []
    for v in values:
        name, sep, num = v.partition("=")
        if not sep or not num.strip().lstrip("-").isdigit():
            raise click.BadParameter(
                f"{v!r}: expected NAME=NUMBER, e.g. outstanding=20", param_hint=option
            )
        pairs.append((name, int(num)))
    return pairs


@cli.command("xenstored")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="Unix socket for dom0 clients (set XENSTORED_PATH to it).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the tree here: every change is journalled and fsynced before its reply.",
)
@click.option(
    "--journal-compact-at",
    type=click.IntRange(min=1),
    hidden=True,
    help="Journal size in bytes that triggers a new snapshot (for tests).",
)
@click.option(
    "--trace",
    "trace_file",
    type=click.Path(dir_okay=False),
    help="Append one JSON line per packet in and out to this file.",
)
@click.option("--daemon", is_flag=True, help="Detach, print the daemon's pid, and return.")
@click.option(
    "--poll-us",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    envvar="STUBDOM_XENSTORED_POLL_US",
    help="Poll for input up to this many µs before sleeping, the window adapted to the "
    "traffic as the kernel's haltpoll does (0: sleep at once; also "
    "$STUBDOM_XENSTORED_POLL_US, which the daemon of `stubdom host up` sees too).",
)
@click.option("-E", "--entry-nb", type=int, help="Nodes per domain (cx -E; default 1000).")
@click.option("-S", "--entry-size", type=int, help="Max. node size (cx -S; default 2048).")
@click.option("-W", "--watch-nb", type=int, help="Watches per domain (cx -W; default 128).")
@click.option("-t", "--transaction", type=int, help="Transactions per domain (cx -t; default 10).")
@click.option("-A", "--perm-nb", type=int, help="Permissions per node (cx -A; default 5).")
@click.option("-M", "--path-max", type=int, help="Max. relative path length (cx -M; default 2048).")
@click.option(
    "-Q",
    "--quota",
    "quota",
    multiple=True,
    metavar="NAME=VAL",
    help="Any quota by its CONTROL name, e.g. -Q transaction-nodes=1024.",
)
@click.option(
    "-q",
    "--quota-soft",
    "quota_soft",
    multiple=True,
    metavar="memory=VAL",
    help="Soft (warning) quota, e.g. -q memory=2097152.",
)
def xenstored(
    socket_path: str,
    state_dir: Path | None,
    journal_compact_at: int | None,
    trace_file: str | None,
    daemon: bool,
    poll_us: int,
    entry_nb: int | None,
    entry_size: int | None,
    watch_nb: int | None,
    transaction: int | None,
    perm_nb: int | None,
    path_max: int | None,
    quota: tuple[str, ...],
    quota_soft: tuple[str, ...],
) -> None:
    """Run a xenstored compatible with cxenstored 4.17, in the foreground.

    Connections on SOCKET are dom0.  After dom0 INTRODUCEs domain D, connections on
    SOCKET.d/D act as domain D.  Point Xen's tools at it with XENSTORED_PATH=SOCKET.
    """
    _check_socket_path(socket_path)
    compiled.install()
    from stubdom.xenstored.core import XenStored
    from stubdom.xenstored.pollwindow import PollWindow
    from stubdom.xenstored.server import XenStoreServer

    limits = {
        "nodes": entry_nb,
        "node-size": entry_size,
        "watches": watch_nb,
        "transactions": transaction,
        "permissions": perm_nb,
        "path-max": path_max,
    }
    core = XenStored(_quotas(limits, quota, quota_soft))
    durable = _open_state(core, state_dir, journal_compact_at) if state_dir is not None else None
    trace = _open_trace(trace_file) if trace_file else None
    ready_fd = _daemonize() if daemon else None
    window = PollWindow(poll_us * 1000) if poll_us else None
    server = XenStoreServer(socket_path, core, trace, durable, poll_window=window)
    try:
        started = _serve(server, ready_fd)
    finally:
        if trace is not None:
            trace.close()
    if not started:
        raise click.ClickException(f"cannot listen on {socket_path}: {started.reason}")
    if server.failure:
        raise click.ClickException(server.failure)
    if durable is not None:
        durable.close()


def _check_socket_path(socket_path: str) -> None:
    """``sun_path`` holds 108 bytes with the NUL; a longer path would fail only at bind."""
    if len(os.fsencode(socket_path)) >= 108:
        raise click.BadParameter(
            f"{socket_path!r} is {len(socket_path)} bytes; unix socket "
            "paths must be shorter than 108",
            param_hint="--socket",
        )


def _quotas(
    limits: dict[str, int | None], quota: tuple[str, ...], quota_soft: tuple[str, ...]
) -> Quotas:
    """cxenstored's quota options, in its order: the named ones, then ``-Q``, then ``-q``."""
    from stubdom.xenstored.quota import QuotaError, Quotas

    quotas = Quotas()
    try:
        for name, value in limits.items():
            if value is not None:
                quotas.set(name, value)
        for name, value in _quota_pairs(quota, "-Q"):
            quotas.set(name, value)
        for name, value in _quota_pairs(quota_soft, "-q"):
            if name != "memory":
                raise QuotaError(f"unknown soft quota {name!r}; only 'memory' exists")
            quotas.memory_soft = value
    except QuotaError as e:
        raise click.BadParameter(str(e)) from None
    return quotas


def _open_state(
    core: XenStored, state_dir: Path, compact_at: int | None
) -> persist.DurableState:
    """The journalled tree, restored into ``core`` if the directory has one."""
    from stubdom.xenstored import persist

    durable = persist.DurableState(core, state_dir, compact_at or persist.COMPACT_AT)
    try:
        if durable.open():
            log.info("tree restored from %s", state_dir)
    except persist.StateError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"state directory {state_dir}: {e.strerror or e}") from None
    return durable


def _open_trace(path: str) -> PacketTrace:
    """Opened before detaching, so that a bad path is an error the caller sees."""
    from stubdom.xenstored.trace import PacketTrace

    try:
        return PacketTrace(open(path, "a", encoding="utf-8"))
    except OSError as e:
        raise click.ClickException(
            f"cannot open the trace file {path}: {e.strerror or e}; choose another --trace"
        ) from None


class _Outcome:
    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return not self.reason


def _serve(server: XenStoreServer, ready_fd: int | None) -> _Outcome:
    """Serve until SIGTERM/SIGINT; report start-up success or failure to a waiting parent."""
    try:
        server.listen()
    except OSError as e:
        reason = e.strerror or str(e)
        if ready_fd is not None:
            os.write(ready_fd, b"0" + reason.encode())
            os.close(ready_fd)
        return _Outcome(reason)
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    server.run(stop_signals=(signal.SIGTERM, signal.SIGINT))
    return _Outcome()


def _daemonize() -> int:
    """Fork; the parent waits until the child listens, prints its pid and exits.

    Returns, in the child, the pipe on which to report whether it started.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as pipe:
            status = pipe.read()
        if status[:1] != b"1":
            reason = status[1:].decode(errors="replace") or "it exited before listening"
            raise click.ClickException(f"the daemon failed to start: {reason}")
        click.echo(pid)
        sys.exit(0)
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    return wfd
