"""``stubdom host``: start, inspect and stop the simulated Xen host.

``up`` starts the host's processes in the run directory (`stubdom.host.supervisor`
does the work) and prints the ``export`` lines that point Xen's tools at them, so
``eval "$(stubdom host up)"`` works.  Every other command finds the host through the
same directory default.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator, Sequence

import click

from stubdom.cli.common import XL_LIST_HEADER, dir_option, xl_list_row
from stubdom.host import supervisor
from stubdom.host.hypervisor import DomainInfo
from stubdom.host.rundir import ENV_VAR, RunDir, RunDirError, resolve


def _say(msg: str) -> None:
    """Notes go to stderr: stdout of ``up`` is for ``eval``."""
    click.echo(f"stubdom host: {msg}", err=True)


def _run_dir(directory: str | None) -> RunDir:
    rd = resolve(directory)
    try:
        rd.check_socket_paths()
    except RunDirError as e:
        raise click.ClickException(str(e)) from None
    return rd


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except supervisor.SupervisorError as e:
        raise click.ClickException(str(e)) from None


def _exports(rd: RunDir, directory: str | None) -> None:
    click.echo(f"export XENSTORED_PATH={shlex.quote(str(rd.xenstored_socket))}")
    if directory is not None:
        click.echo(f"export {ENV_VAR}={shlex.quote(str(rd.root))}")


def _print_list(domains: Sequence[DomainInfo]) -> None:
    click.echo(XL_LIST_HEADER)
    for d in domains:
        click.echo(xl_list_row(d))


@click.group("host")
def host() -> None:
    """Run a simulated Xen host: xenstored, the hypervisor and dom0's backends."""


@host.command("up")
@dir_option
@click.option("--trace", default=None,
              help="Append every xenstore packet to FILE (JSON lines); with cx or ox a "
              "proxy on dom0's socket and the domains' relays record them.")
@click.option(
    "--durable",
    is_flag=True,
    help="xenstored journals every change (--state-dir), so that "
    "'stubdom host restart-xenstored' keeps the tree and the domains.",
)
@click.option(
    "--xenstored",
    "xenstored",
    type=click.Choice(["ours", "cx", "ox"]),
    default="ours",
    show_default=True,
    help="Which xenstored: ours, or Xen 4.17's cxenstored (cx) or oxenstored (ox) run "
    "without Xen (they need the Debian packages xen-utils-4.17 and gcc).",
)
def up(directory: str | None, trace: str | None, durable: bool, xenstored: str) -> None:
    """Start the host in the background, or find it running; print its export lines.

    Use as: eval "$(stubdom host up)".  Xen's tools then reach the host's xenstored.
    """
    rd = _run_dir(directory)
    with _one_line_errors():
        started = supervisor.start(rd, trace, durable, say=_say, xenstored=xenstored)
    _say(started.summary)
    _exports(rd, directory)


@host.command("status")
@dir_option
def status(directory: str | None) -> None:
    """Show whether the host runs, its processes and sockets, and its domains."""
    rd = _run_dir(directory)
    with _one_line_errors():
        st, domains = supervisor.host_status(rd)
    xs_pid = supervisor.live_xenstored(rd)
    click.echo(f"stubdom host running in {rd.root}")
    click.echo(f"  host daemon  pid {st.pid}, up {st.uptime:.1f}s, API {rd.host_socket}")
    if xs_pid is not None:
        click.echo(
            f"  xenstored    {st.xenstored}, pid {xs_pid}, XENSTORED_PATH={st.xenstored_socket}"
        )
    else:
        click.echo("  xenstored    NOT RUNNING")
    click.echo(f"  domains      {st.domains}")
    click.echo("")
    _print_list(domains)
    if xs_pid is None:
        raise click.ClickException(
            f"xenstored of the host in {rd.root} is not running; restart the host with "
            "'stubdom host down' and 'stubdom host up'"
        )


@host.command("list")
@dir_option
def list_(directory: str | None) -> None:
    """List the domains as 'xl list' does, Domain-0 first."""
    with _one_line_errors():
        _, domains = supervisor.host_status(_run_dir(directory))
    _print_list(domains)


@host.command("down")
@dir_option
def down(directory: str | None) -> None:
    """Stop the host: destroy every domain, end every process, remove sockets and pid files.

    Logs stay.  Nothing running is not an error.
    """
    rd = _run_dir(directory)
    with _one_line_errors():
        stopped = supervisor.stop(rd, say=_say)
    if stopped.stray:
        _say(f"warning: processes still use {rd.root}: {', '.join(map(str, stopped.stray))}")
    _say(stopped.summary)


@host.command("restart-xenstored")
@dir_option
@click.option("--kill", is_flag=True, help="SIGKILL it (a crash) instead of SIGTERM.")
def restart_xenstored(directory: str | None, kill: bool) -> None:
    """Stop the host's xenstored and start it again on the same socket and state.

    Needs a host started with 'stubdom host up --durable'.  Clients of the host (its
    daemon, stubdomains, the toolstack) connect again by themselves.
    """
    with _one_line_errors():
        restarted = supervisor.restart_xenstored(_run_dir(directory), kill, say=_say)
    _say(restarted.summary)


@host.command("daemon", hidden=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True)
@click.option("--trace", "trace_file", default=None,
              help="cx/ox: serve dom0's socket through a proxy that traces to FILE.")
def daemon(directory: str, trace_file: str | None) -> None:
    """Internal: the host daemon process that 'stubdom host up' starts."""
    from stubdom.host import daemon as host_daemon

    rd = _run_dir(directory)
    if not rd.root.is_dir():
        raise click.ClickException(
            f"run directory {rd.root} does not exist; start the host with 'stubdom host up'"
        )
    sys.exit(host_daemon.main(rd, trace_file))
