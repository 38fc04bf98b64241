"""``stubdom host``: start, inspect and stop the simulated Xen host.

``up`` starts two background processes in the run directory (`stubdom.host.rundir`):
the embedded xenstored and the host daemon (`stubdom.host.daemon`), and prints the
``export`` lines that point Xen's tools at them, so ``eval "$(stubdom host up)"`` works.
Every other command finds the host through the same directory default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from stubdom.cli.main import cli
from stubdom.host.api import HostError, HostNotRunning, HostStatus, RemoteHypervisor
from stubdom.host.hypervisor import DomainInfo
from stubdom.host.rundir import (
    ENV_VAR,
    RunDir,
    RunDirError,
    domain_processes,
    end_domain_processes,
    process_alive,
    process_cmdline,
    process_is_ours,
    processes_using,
    read_pid,
    resolve,
    signal_process,
    write_pid,
)

T = TypeVar("T")

#: Failure guards only: how long a starting or stopping process may take at most.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
API_TIMEOUT = 30.0

#: ``xl list`` (tools/xl/xl_info.c@4.17.7).
XL_LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def xl_list_row(d: DomainInfo) -> str:
    """``"%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"``: current memory in MiB and
    online vCPUs, as xl prints them (not the maximums)."""
    return (
        f"{d.name:<40} {d.domid:5d} {d.memkb // 1024:5d} {d.vcpus:5d}"
        f"     {d.state_letters}  {d.cpu_time:8.1f}"
    )


def _say(msg: str) -> None:
    """Notes go to stderr: stdout of ``up`` is for ``eval``."""
    click.echo(f"stubdom host: {msg}", err=True)


dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help=f"Run directory (default: ${ENV_VAR}, else $XDG_RUNTIME_DIR/stubdom, "
    "else /run/stubdom if writable, else /tmp/stubdom-UID).",
)


def _run_dir(directory: str | None) -> RunDir:
    rd = resolve(directory)
    try:
        rd.check_socket_paths()
    except RunDirError as e:
        raise click.ClickException(str(e)) from None
    return rd


def _api(rd: RunDir, use: Callable[[RemoteHypervisor], Awaitable[T]]) -> T:
    """Run one exchange with the daemon (``use`` returns a coroutine)."""

    async def run() -> T:
        async with asyncio.timeout(API_TIMEOUT):
            async with await RemoteHypervisor.connect(rd.root) as hv:
                return await use(hv)

    try:
        return asyncio.run(run())
    except TimeoutError:
        raise HostError(
            f"the stubdom host in {rd.root} did not answer within {API_TIMEOUT:.0f}s "
            f"(see {rd.host_log})"
        ) from None


@cli.group("host")
def host() -> None:
    """Run a simulated Xen host: xenstored, the hypervisor and dom0's backends."""


# -- probing and stopping -----------------------------------------------------------


@dataclass
class _Probe:
    """What is left of a host in a run directory."""

    host_pid: int | None  # alive and ours
    xenstored_pid: int | None
    status: HostStatus | None  # the API answered
    xenstored_answers: bool
    files: list[Path]  # pid files and sockets present
    domains: list[int]  # live domain processes (orphans, unless the host is healthy)

    @property
    def healthy(self) -> bool:
        return bool(self.host_pid and self.xenstored_pid and self.status and self.xenstored_answers)

    @property
    def anything(self) -> bool:
        return bool(self.host_pid or self.xenstored_pid or self.files or self.domains)


def _live_pid(rd: RunDir, pid_file: Path) -> int | None:
    pid = read_pid(pid_file)
    return pid if pid is not None and process_is_ours(pid, rd) else None


def _socket_answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def _probe(rd: RunDir) -> _Probe:
    host_pid = _live_pid(rd, rd.host_pid)
    status = None
    if host_pid is not None:
        with contextlib.suppress(HostError):
            status = _api(rd, lambda hv: hv.status())
    return _Probe(
        host_pid,
        _live_pid(rd, rd.xenstored_pid),
        status,
        _socket_answers(rd.xenstored_socket),
        [p for p in (*rd.pid_files(), *rd.sockets()) if p.exists()],
        domain_processes(rd),
    )


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.02)
    return False


def _end(pid: int, what: str, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it will not go."""
    signal_process(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        _say(f"{what} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
        signal_process(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)


def _end_monitors(rd: RunDir) -> None:
    """SIGTERM the domain monitors first, so none acts on the domains the host destroys."""
    from stubdom.toolstack.monitor import live_monitors

    pids = live_monitors(rd)
    for pid in pids:
        signal_process(pid, signal.SIGTERM)
    for pid in pids:
        if not _wait_gone(pid, STOP_TIMEOUT):
            _end(pid, "a domain monitor", STOP_TIMEOUT)


def _stop(rd: RunDir, probe: _Probe) -> None:
    """Stop whatever runs (monitors, then the daemon: destroying domains needs
    xenstored) and tidy up."""
    _end_monitors(rd)
    if probe.host_pid is not None:
        asked = False
        if probe.status is not None:
            try:
                _api(rd, lambda hv: hv.shutdown_host())
                asked = True
            except HostError as e:
                _say(f"the host daemon did not take the shutdown request ({e}); signalling it")
        if not asked:
            signal_process(probe.host_pid, signal.SIGTERM)
        if not _wait_gone(probe.host_pid, STOP_TIMEOUT):
            _end(probe.host_pid, "the host daemon", STOP_TIMEOUT)
    if probe.xenstored_pid is not None:
        _end(probe.xenstored_pid, "xenstored", STOP_TIMEOUT)
    _end_orphans(rd)
    rd.remove_runtime_files()


def _end_orphans(rd: RunDir) -> None:
    """Domains the host daemon did not destroy (it was killed) go now, before we return."""
    survivors = end_domain_processes(rd, STOP_TIMEOUT)
    if survivors:
        _say(f"warning: domain processes of {rd.root} survived SIGKILL: "
             f"{', '.join(map(str, survivors))}")


# -- starting ---------------------------------------------------------------------


def _spawn(rd: RunDir, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """A detached ``stubdom`` process (own session) logging to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stubdom", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()
    return ""


def _start_failed(rd: RunDir, what: str, log: Path) -> click.ClickException:
    last = _last_line(log)
    _stop(rd, _probe(rd))
    detail = f": {last}" if last else ""
    return click.ClickException(f"{what} did not start in {rd.root}{detail} (see {log})")


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return ready()
        time.sleep(0.02)
    return False


def _xenstored_args(rd: RunDir, trace: str | None, durable: bool) -> list[str]:
    args = ["xenstored", "--socket", str(rd.xenstored_socket)]
    if trace is not None:
        args += ["--trace", os.path.abspath(trace)]
    if durable:
        args += ["--state-dir", str(rd.xenstored_state)]
    return args


def _start_xenstored(rd: RunDir, args: list[str]) -> int:
    xs = _spawn(rd, args, rd.xenstored_log)
    write_pid(rd.xenstored_pid, xs.pid)
    if not _wait_until(lambda: _socket_answers(rd.xenstored_socket), xs, START_TIMEOUT):
        raise _start_failed(rd, "xenstored", rd.xenstored_log)
    return xs.pid


def _start(rd: RunDir, trace: str | None = None, durable: bool = False) -> tuple[int, int]:
    xs_pid = _start_xenstored(rd, _xenstored_args(rd, trace, durable))

    daemon = _spawn(rd, ["host", "daemon", "--dir", str(rd.root)], rd.host_log)

    def answers() -> bool:
        if read_pid(rd.host_pid) != daemon.pid:
            return False
        try:
            _api(rd, lambda hv: hv.ping())
        except HostError:
            return False
        return True

    if not _wait_until(answers, daemon, START_TIMEOUT):
        raise _start_failed(rd, "the host daemon", rd.host_log)
    return xs_pid, daemon.pid


def _exports(rd: RunDir, directory: str | None) -> None:
    click.echo(f"export XENSTORED_PATH={shlex.quote(str(rd.xenstored_socket))}")
    if directory is not None:
        click.echo(f"export {ENV_VAR}={shlex.quote(str(rd.root))}")


# -- the verbs ---------------------------------------------------------------------


@host.command("up")
@dir_option
@click.option("--trace", default=None, help="xenstored appends every packet to FILE (JSON lines).")
@click.option(
    "--durable",
    is_flag=True,
    help="xenstored journals every change (--state-dir), so that "
    "'stubdom host restart-xenstored' keeps the tree and the domains.",
)
def up(directory: str | None, trace: str | None, durable: bool) -> None:
    """Start the host in the background, or find it running; print its export lines.

    Use as: eval "$(stubdom host up)".  Xen's tools then reach the host's xenstored.
    """
    rd = _run_dir(directory)
    try:
        rd.create()
        with rd.locked():
            probe = _probe(rd)
            if probe.healthy:
                assert probe.xenstored_pid is not None
                _refuse_other_options(rd, probe.xenstored_pid, trace, durable)
                _say(
                    f"already running in {rd.root} (host pid {probe.host_pid}, "
                    f"xenstored pid {probe.xenstored_pid})"
                )
            else:
                if probe.anything:
                    _say(f"cleaning up what is left of an earlier host in {rd.root}")
                    _stop(rd, probe)
                    rd.create()  # the clean-up removed the empty directories
                xs_pid, host_pid = _start(rd, trace, durable)
                _say(f"started in {rd.root} (host pid {host_pid}, xenstored pid {xs_pid})")
    except RunDirError as e:
        raise click.ClickException(str(e)) from None
    _exports(rd, directory)


def _refuse_other_options(rd: RunDir, xs_pid: int, trace: str | None, durable: bool) -> None:
    """``up`` on a running host must not silently drop what it was asked for.

    xenstored's trace and state directory are fixed when it starts, and restarting it
    would lose the tree of a host that keeps none, so a different ``--trace`` or a
    ``--durable`` the running host lacks is refused; no option keeps what runs.
    """
    args = process_cmdline(xs_pid)
    running = args[args.index("--trace") + 1] if "--trace" in args[:-1] else None
    if trace is not None and os.path.abspath(trace) != running:
        now = f"traces to {running}" if running else "traces nothing"
        raise click.ClickException(
            f"the host in {rd.root} is already running and {now}, so --trace {trace} "
            "cannot apply; run 'stubdom host down' first"
        )
    if durable and "--state-dir" not in args:
        raise click.ClickException(
            f"the host in {rd.root} is already running without --durable, so --durable cannot "
            "apply; run 'stubdom host down' first"
        )


def _not_running(rd: RunDir) -> click.ClickException:
    msg = str(HostNotRunning(rd.root))
    if any(p.exists() for p in rd.pid_files()):
        msg += " (stale files are left: 'stubdom host down' removes them)"
    return click.ClickException(msg)


def _status_and_domains(rd: RunDir) -> tuple[HostStatus, list[DomainInfo]]:
    if not rd.host_socket.exists():
        raise _not_running(rd)

    async def both(hv: RemoteHypervisor) -> tuple[HostStatus, list[DomainInfo]]:
        return await hv.status(), list(await hv.list_domains())

    try:
        status, domains = _api(rd, both)
    except HostNotRunning:
        raise _not_running(rd) from None
    except HostError as e:
        raise click.ClickException(str(e)) from None
    if not any(d.domid == 0 for d in domains):
        domains.insert(0, status.dom0)
    return status, sorted(domains, key=lambda d: d.domid)


def _print_list(domains: Sequence[DomainInfo]) -> None:
    click.echo(XL_LIST_HEADER)
    for d in domains:
        click.echo(xl_list_row(d))


@host.command("status")
@dir_option
def status(directory: str | None) -> None:
    """Show whether the host runs, its processes and sockets, and its domains."""
    rd = _run_dir(directory)
    st, domains = _status_and_domains(rd)
    xs_pid = _live_pid(rd, rd.xenstored_pid)
    click.echo(f"stubdom host running in {rd.root}")
    click.echo(f"  host daemon  pid {st.pid}, up {st.uptime:.1f}s, API {rd.host_socket}")
    if xs_pid is not None:
        click.echo(f"  xenstored    pid {xs_pid}, XENSTORED_PATH={st.xenstored_socket}")
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
    _, domains = _status_and_domains(_run_dir(directory))
    _print_list(domains)


@host.command("down")
@dir_option
def down(directory: str | None) -> None:
    """Stop the host: destroy every domain, end every process, remove sockets and pid files.

    Logs stay.  Nothing running is not an error.
    """
    rd = _run_dir(directory)
    if not rd.root.is_dir():
        _say(f"nothing is running in {rd.root}")
        return
    with rd.locked():
        probe = _probe(rd)
        if probe.host_pid is None and probe.xenstored_pid is None:
            _end_monitors(rd)
            _tidy_after_crash(rd, probe)
            return
        _stop(rd, probe)
    stray = processes_using(rd)
    if stray:
        _say(f"warning: processes still use {rd.root}: {', '.join(map(str, stray))}")
    _say(f"stopped the host in {rd.root}")


def _tidy_after_crash(rd: RunDir, probe: _Probe) -> None:
    """Neither daemon runs: end the domains a killed host left, remove its files."""
    if not probe.domains and not probe.files:
        _say(f"nothing is running in {rd.root}")
        return
    done = []
    if probe.domains:
        _end_orphans(rd)
        done.append(f"killed {len(probe.domains)} domain process(es) a dead host left")
    rd.remove_runtime_files()
    if probe.files:
        done.append("removed stale pid files and sockets")
    _say(f"nothing was running in {rd.root}; {', '.join(done)}")


@host.command("restart-xenstored")
@dir_option
@click.option("--kill", is_flag=True, help="SIGKILL it (a crash) instead of SIGTERM.")
def restart_xenstored(directory: str | None, kill: bool) -> None:
    """Stop the host's xenstored and start it again on the same socket and state.

    Needs a host started with 'stubdom host up --durable'.  Clients of the host (its
    daemon, stubdomains, the toolstack) connect again by themselves.
    """
    rd = _run_dir(directory)
    if not rd.root.is_dir():
        raise _not_running(rd)
    with rd.locked():
        pid = _live_pid(rd, rd.xenstored_pid)
        if pid is None:
            raise click.ClickException(
                f"xenstored of the host in {rd.root} is not running; "
                "'stubdom host down' then 'stubdom host up --durable'"
            )
        args = process_cmdline(pid)
        try:
            args = args[args.index("xenstored") :]
        except ValueError:
            raise click.ClickException(f"pid {pid} does not look like xenstored: {args}") from None
        if "--state-dir" not in args:
            raise click.ClickException(
                f"the xenstored of the host in {rd.root} keeps no state, so a restart "
                "would lose the tree; start the host with 'stubdom host up --durable'"
            )
        if kill:
            signal_process(pid, signal.SIGKILL)
            _wait_gone(pid, STOP_TIMEOUT)
        else:
            _end(pid, "xenstored", STOP_TIMEOUT)
        # A killed daemon leaves its sockets: clients get "refused" until the new one
        # binds them again (it removes the stale files itself).
        new_pid = _start_xenstored(rd, args)
    _say(f"xenstored restarted in {rd.root} (pid {pid} -> {new_pid})")


@host.command("daemon", hidden=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True)
def daemon(directory: str) -> None:
    """Internal: the host daemon process that 'stubdom host up' starts."""
    from stubdom.host import daemon as host_daemon

    rd = _run_dir(directory)
    if not rd.root.is_dir():
        raise click.ClickException(
            f"run directory {rd.root} does not exist; start the host with 'stubdom host up'"
        )
    sys.exit(host_daemon.main(rd))
