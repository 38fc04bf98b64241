"""Starting, probing and stopping the simulated host's processes in a run directory.

The host is two detached processes (sessions of their own, so they outlive whoever
started them): the embedded xenstored and the host daemon (`stubdom.host.daemon`),
each with a pid file and a log in the run directory (`stubdom.host.rundir`).  The
``stubdom host`` verbs and the demo both drive them through this module; `start` and
`stop` hold the directory's lock, so two of them never interleave.

Failures a user can act on are `SupervisorError`, one line naming the host and the
fix.  What happens on the way (an earlier host cleaned up, a process that had to be
killed) is told to ``say``.  Timeouts here are failure guards, not expectations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from stubdom import eventloop
from stubdom.host.api import HostError, HostNotRunning, HostStatus, RemoteHypervisor
from stubdom.host.hypervisor import DomainInfo
from stubdom.host.rundir import (
    RunDir,
    RunDirError,
    domain_processes,
    end_domain_processes,
    monitor_processes,
    process_alive,
    process_cmdline,
    process_is_ours,
    processes_using,
    read_pid,
    signal_process,
    write_pid,
)
from stubdom.host.xslink import Daemon

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Told what happened on the way, one sentence at a time.
Say = Callable[[str], None]

#: Failure guards only: how long a starting or stopping process may take at most.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
API_TIMEOUT = 30.0

#: Children this process spawned, reaped once they are gone (no zombies in a
#: long-lived caller such as the demo).
_children: dict[int, subprocess.Popen[bytes]] = {}


class SupervisorError(Exception):
    """The host cannot be started, found or stopped; the message says how to fix it."""


@dataclass(frozen=True)
class Probe:
    """What is left of a host in a run directory."""

    host_pid: int | None  # alive and ours
    xenstored_pid: int | None
    status: HostStatus | None  # the API answered
    xenstored_answers: bool
    files: tuple[Path, ...]  # pid files and sockets present
    domains: tuple[int, ...]  # live domain processes (orphans, unless the host is healthy)

    @property
    def healthy(self) -> bool:
        return bool(self.host_pid and self.xenstored_pid and self.status and self.xenstored_answers)

    @property
    def anything(self) -> bool:
        return bool(self.host_pid or self.xenstored_pid or self.files or self.domains)


@dataclass(frozen=True)
class Started:
    """A host that runs: started now, or found running by `start`."""

    root: Path
    host_pid: int
    xenstored_pid: int
    already_running: bool = False

    @property
    def summary(self) -> str:
        how = "already running" if self.already_running else "started"
        pids = f"host pid {self.host_pid}, xenstored pid {self.xenstored_pid}"
        return f"{how} in {self.root} ({pids})"


@dataclass(frozen=True)
class Stopped:
    """What `stop` did; ``stray`` are processes that still name the run directory."""

    summary: str
    stray: tuple[int, ...] = ()


@dataclass(frozen=True)
class Restarted:
    root: Path
    old_pid: int
    new_pid: int

    @property
    def summary(self) -> str:
        return f"xenstored restarted in {self.root} (pid {self.old_pid} -> {self.new_pid})"


# -- the API ------------------------------------------------------------------------


def probe(rd: RunDir) -> Probe:
    """Look at the run directory without changing anything."""
    host_pid = _live_pid(rd, rd.host_pid)
    status = None
    if host_pid is not None:
        with contextlib.suppress(HostError):
            status = _call(rd, lambda hv: hv.status())
    return Probe(
        host_pid,
        _live_pid(rd, rd.xenstored_pid),
        status,
        _socket_answers(rd.xenstored_socket),
        tuple(p for p in (*rd.pid_files(), *rd.sockets()) if p.exists()),
        tuple(domain_processes(rd)),
    )


def start(
    rd: RunDir,
    trace: str | None = None,
    durable: bool = False,
    say: Say = log.info,
    xenstored: Daemon | str = Daemon.OURS,
) -> Started:
    """Start the host, or find it running; what an earlier host left is cleaned up first.

    ``trace``: every packet is appended to that file (by our xenstored, or for cx and
    ox by the host daemon's proxy and relays).  ``durable``: xenstored journals every
    change, so that `restart_xenstored` keeps the tree (ours only).  ``xenstored``:
    ours, or the real cxenstored or oxenstored under `stubdom.realxs`.  A running host
    that cannot honour them is refused, not restarted (it would lose its domains).
    """
    daemon = _daemon(xenstored, trace, durable)
    if trace is not None and daemon is not Daemon.OURS:
        _check_trace(trace)
    try:
        rd.create()
        with rd.locked():
            found = probe(rd)
            if found.healthy:
                assert found.host_pid is not None and found.xenstored_pid is not None
                _refuse_other_daemon(rd, daemon)
                _refuse_other_options(rd, found, trace, durable)
                return Started(rd.root, found.host_pid, found.xenstored_pid, already_running=True)
            if found.anything:
                say(f"cleaning up what is left of an earlier host in {rd.root}")
                _stop(rd, found, say)
                rd.create()  # the clean-up removed the empty directories
            return _start(rd, trace, durable, say, daemon)
    except RunDirError as e:
        raise SupervisorError(str(e)) from None


def _daemon(xenstored: Daemon | str, trace: str | None, durable: bool) -> Daemon:
    try:
        daemon = Daemon(xenstored)
    except ValueError:
        choices = ", ".join(d.value for d in Daemon)
        raise SupervisorError(f"no xenstored called {xenstored!r}: choose {choices}") from None
    if daemon is not Daemon.OURS and durable:
        raise SupervisorError(
            f"--durable needs our xenstored, which {daemon} is not; "
            f"drop --durable or run 'stubdom host up' without --xenstored {daemon}"
        )
    return daemon


def _check_trace(trace: str) -> None:
    """The host daemon appends to ``trace`` for cx and ox: a path it cannot open is
    refused here, in one line, rather than as a daemon that did not start."""
    try:
        with open(trace, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise SupervisorError(
            f"cannot open the trace file {trace}: {e.strerror or e}; choose another --trace"
        ) from None


def _refuse_other_daemon(rd: RunDir, daemon: Daemon) -> None:
    running = rd.xenstored_daemon()
    if running != daemon:
        raise SupervisorError(
            f"the host in {rd.root} is already running with xenstored {running}, not "
            f"{daemon}; run 'stubdom host down' first"
        )


def stop(rd: RunDir, say: Say = log.info) -> Stopped:
    """Destroy every domain, end every process, remove sockets and pid files (logs stay).

    Nothing running is not an error.
    """
    _check(rd)
    if not rd.root.is_dir():
        return Stopped(f"nothing is running in {rd.root}")
    with rd.locked():
        found = probe(rd)
        if found.host_pid is None and found.xenstored_pid is None:
            _end_monitors(rd, say)
            return Stopped(_tidy_after_crash(rd, found, say))
        _stop(rd, found, say)
    return Stopped(f"stopped the host in {rd.root}", tuple(processes_using(rd)))


def restart_xenstored(rd: RunDir, kill: bool = False, say: Say = log.info) -> Restarted:
    """Stop the host's xenstored (SIGKILL, a crash, with ``kill``) and start it again on
    the same socket and state; needs a host started ``durable``."""
    _check(rd)
    if not rd.root.is_dir():
        raise _not_running(rd)
    with rd.locked():
        pid = _live_pid(rd, rd.xenstored_pid)
        if pid is None:
            raise SupervisorError(
                f"xenstored of the host in {rd.root} is not running; "
                "'stubdom host down' then 'stubdom host up --durable'"
            )
        if rd.xenstored_daemon() != Daemon.OURS:
            raise SupervisorError(
                f"the host in {rd.root} runs xenstored {rd.xenstored_daemon()}, which keeps "
                "no state across a restart; only our xenstored ('--durable') restarts"
            )
        args = _durable_xenstored_args(rd, pid)
        if kill:
            signal_process(pid, signal.SIGKILL)
            _wait_gone(pid, STOP_TIMEOUT)
        else:
            _end(pid, "xenstored", STOP_TIMEOUT, say)
        _reap()
        # A killed daemon leaves its sockets: clients get "refused" until the new one
        # binds them again (it removes the stale files itself).
        new_pid = _start_xenstored(rd, args, say)
    return Restarted(rd.root, pid, new_pid)


def host_status(rd: RunDir) -> tuple[HostStatus, list[DomainInfo]]:
    """The daemon's status and the domains, Domain-0 first."""
    _check(rd)
    if not rd.host_socket.exists():
        raise _not_running(rd)

    async def both(hv: RemoteHypervisor) -> tuple[HostStatus, list[DomainInfo]]:
        return await hv.status(), list(await hv.list_domains())

    try:
        status, domains = _call(rd, both)
    except HostNotRunning:
        raise _not_running(rd) from None
    except HostError as e:
        raise SupervisorError(str(e)) from None
    if not any(d.domid == 0 for d in domains):
        domains.insert(0, status.dom0)
    return status, sorted(domains, key=lambda d: d.domid)


def live_xenstored(rd: RunDir) -> int | None:
    """The pid of the host's xenstored, if it runs."""
    return _live_pid(rd, rd.xenstored_pid)


def _not_running(rd: RunDir) -> SupervisorError:
    msg = str(HostNotRunning(rd.root))
    if any(p.exists() for p in rd.pid_files()):
        msg += " (stale files are left: 'stubdom host down' removes them)"
    return SupervisorError(msg)


# -- probing ------------------------------------------------------------------------


def _check(rd: RunDir) -> None:
    try:
        rd.check_socket_paths()
    except RunDirError as e:
        raise SupervisorError(str(e)) from None


def _call(rd: RunDir, use: Callable[[RemoteHypervisor], Awaitable[T]]) -> T:
    """Run one exchange with the daemon (``use`` returns a coroutine), in a loop of its
    own: callers are synchronous (a click verb, or a thread of the demo)."""

    async def run() -> T:
        async with asyncio.timeout(API_TIMEOUT):
            async with await RemoteHypervisor.connect(rd.root) as hv:
                return await use(hv)

    try:
        return eventloop.run(run())
    except TimeoutError:
        raise HostError(
            f"the stubdom host in {rd.root} did not answer within {API_TIMEOUT:.0f}s "
            f"(see {rd.host_log})"
        ) from None


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


# -- stopping -----------------------------------------------------------------------


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.02)
    return False


def _end(pid: int, what: str, timeout: float, say: Say) -> None:
    """SIGTERM, then SIGKILL if it will not go."""
    signal_process(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        say(f"{what} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killing it")
        signal_process(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)


def _end_monitors(rd: RunDir, say: Say) -> None:
    """SIGTERM the domain monitors first, so none acts on the domains the host destroys."""
    pids = monitor_processes(rd)
    for pid in pids:
        signal_process(pid, signal.SIGTERM)
    for pid in pids:
        if not _wait_gone(pid, STOP_TIMEOUT):
            _end(pid, "a domain monitor", STOP_TIMEOUT, say)


def _stop(rd: RunDir, found: Probe, say: Say) -> None:
    """Stop whatever runs (monitors, then the daemon: destroying domains needs
    xenstored) and tidy up."""
    _end_monitors(rd, say)
    if found.host_pid is not None:
        asked = False
        if found.status is not None:
            try:
                _call(rd, lambda hv: hv.shutdown_host())
                asked = True
            except HostError as e:
                say(f"the host daemon did not take the shutdown request ({e}); signalling it")
        if not asked:
            signal_process(found.host_pid, signal.SIGTERM)
        if not _wait_gone(found.host_pid, STOP_TIMEOUT):
            _end(found.host_pid, "the host daemon", STOP_TIMEOUT, say)
    if found.xenstored_pid is not None:
        _end(found.xenstored_pid, "xenstored", STOP_TIMEOUT, say)
    _end_orphans(rd, say)
    rd.remove_runtime_files()
    _reap()


def _end_orphans(rd: RunDir, say: Say) -> None:
    """Domains the host daemon did not destroy (it was killed) go now, before we return."""
    survivors = end_domain_processes(rd, STOP_TIMEOUT)
    if survivors:
        say(f"warning: domain processes of {rd.root} survived SIGKILL: "
            f"{', '.join(map(str, survivors))}")


def _tidy_after_crash(rd: RunDir, found: Probe, say: Say) -> str:
    """Neither daemon runs: end the domains a killed host left, remove its files."""
    if not found.domains and not found.files:
        return f"nothing is running in {rd.root}"
    done = []
    if found.domains:
        _end_orphans(rd, say)
        done.append(f"killed {len(found.domains)} domain process(es) a dead host left")
    rd.remove_runtime_files()
    if found.files:
        done.append("removed stale pid files and sockets")
    return f"nothing was running in {rd.root}; {', '.join(done)}"


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


# -- starting -----------------------------------------------------------------------


def _spawn(args: Sequence[str], log_file: Path) -> subprocess.Popen[bytes]:
    """A detached ``stubdom`` process (own session) logging to ``log_file``."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stubdom", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    _children[proc.pid] = proc
    return proc


def _last_line(log_file: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()
    return ""


def _start_failed(rd: RunDir, what: str, log_file: Path, say: Say) -> SupervisorError:
    last = _last_line(log_file)
    _stop(rd, probe(rd), say)
    detail = f": {last}" if last else ""
    return SupervisorError(f"{what} did not start in {rd.root}{detail} (see {log_file})")


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


def _durable_xenstored_args(rd: RunDir, pid: int) -> list[str]:
    """The arguments xenstored ``pid`` runs with, refused unless it keeps its state."""
    args = process_cmdline(pid)
    try:
        args = args[args.index("xenstored") :]
    except ValueError:
        raise SupervisorError(f"pid {pid} does not look like xenstored: {args}") from None
    if "--state-dir" not in args:
        raise SupervisorError(
            f"the xenstored of the host in {rd.root} keeps no state, so a restart "
            "would lose the tree; start the host with 'stubdom host up --durable'"
        )
    return args


def _start_xenstored(rd: RunDir, args: list[str], say: Say) -> int:
    xs = _spawn(args, rd.xenstored_log)
    write_pid(rd.xenstored_pid, xs.pid)
    if not _wait_until(lambda: _socket_answers(rd.xenstored_socket), xs, START_TIMEOUT):
        raise _start_failed(rd, "xenstored", rd.xenstored_log, say)
    return xs.pid


def _start_real(rd: RunDir, daemon: Daemon, traced: bool) -> int:
    """cxenstored or oxenstored under the shim, its socket where ours would be, or
    traced, behind the proxy the host daemon will serve there."""
    from stubdom import realxs

    socket = rd.real_xenstored_socket if traced else rd.xenstored_socket
    try:
        real = realxs.start(daemon.value, rd.real_xenstored_dir, socket=socket)
    except (realxs.RealXenstoredUnavailable, RuntimeError, ValueError) as e:
        raise SupervisorError(f"xenstored {daemon}: {e}") from None
    _children[real.pid] = real.proc
    write_pid(rd.xenstored_pid, real.pid)
    return real.pid


def _start(rd: RunDir, trace: str | None, durable: bool, say: Say, daemon: Daemon) -> Started:
    rd.xenstored_daemon_file.write_text(f"{daemon}\n")
    host_args = ["host", "daemon", "--dir", str(rd.root)]
    if daemon is Daemon.OURS:
        xs_pid = _start_xenstored(rd, _xenstored_args(rd, trace, durable), say)
    else:
        xs_pid = _start_real(rd, daemon, traced=trace is not None)
        if trace is not None:  # the host daemon's proxy answers on the socket
            host_args += ["--trace", os.path.abspath(trace)]
    host = _spawn(host_args, rd.host_log)

    def answers() -> bool:
        if read_pid(rd.host_pid) != host.pid:
            return False
        try:
            _call(rd, lambda hv: hv.ping())
        except HostError:
            return False
        return True

    if not _wait_until(answers, host, START_TIMEOUT):
        raise _start_failed(rd, "the host daemon", rd.host_log, say)
    return Started(rd.root, host.pid, xs_pid)


def _refuse_other_options(rd: RunDir, found: Probe, trace: str | None, durable: bool) -> None:
    """A running host must not silently drop what it was asked for.

    The trace (of our xenstored, or of cx's or ox's proxy in the host daemon) and the
    state directory are fixed when they start, and restarting xenstored would lose the
    tree of a host that keeps none, so a different ``trace`` or a ``durable`` the
    running host lacks is refused; no option keeps what runs.
    """
    assert found.xenstored_pid is not None and found.host_pid is not None
    args = process_cmdline(found.xenstored_pid)
    running = _option(args, "--trace") or _option(process_cmdline(found.host_pid), "--trace")
    if trace is not None and os.path.abspath(trace) != running:
        now = f"traces to {running}" if running else "traces nothing"
        raise SupervisorError(
            f"the host in {rd.root} is already running and {now}, so --trace {trace} "
            "cannot apply; run 'stubdom host down' first"
        )
    if durable and "--state-dir" not in args:
        raise SupervisorError(
            f"the host in {rd.root} is already running without --durable, so --durable cannot "
            "apply; run 'stubdom host down' first"
        )


def _option(args: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` in a command line, if there."""
    return args[args.index(name) + 1] if name in args[:-1] else None
