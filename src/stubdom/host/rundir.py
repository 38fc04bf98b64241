"""Where a running stubdom host keeps its sockets, pid files and logs.

Every ``stubdom`` command must find the same host without being told, so the directory
is chosen the same way everywhere (`resolve`): ``--dir`` > ``$STUBDOM_HOST_DIR`` >
``$XDG_RUNTIME_DIR/stubdom`` > ``/run/stubdom`` (when writable) > ``/tmp/stubdom-<uid>``.

Layout::

    DIR/xenstored/socket      dom0's xenstore socket (XENSTORED_PATH); socket.d/<domid>
    DIR/xenstored.pid  .log   the embedded xenstored
    DIR/xenstored/daemon      which xenstored runs: ours (also when absent), cx or ox
    DIR/xenstored/real/       cx or ox: their run directory and the shim's (fake/);
                              traced, the daemon's own socket is real/socket and
                              xenstored/socket is the host daemon's tracing proxy
    DIR/host.sock             the host daemon's local API (`stubdom.host.api`)
    DIR/host.pid       .log   the host daemon
    DIR/consoles/             console sockets and logs
    DIR/domains/              per-domain files of the simulated hypervisor
    DIR/monitors/<domid>.pid  the monitor 'stubdom create' leaves per guest (its log is
                              DIR/log/xl-<name>.log, as xl's /var/log/xen/xl-<name>.log)

Unix socket paths must fit ``sun_path`` (108 bytes with its NUL), which bounds DIR.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "STUBDOM_HOST_DIR"

#: ``sizeof(sun_path)``: a socket path must be shorter than this, in bytes.
SUN_PATH_MAX = 108

#: The longest socket path we know of below DIR: xenstored's per-domain socket.
LONGEST_SOCKET = "xenstored/socket.d/32767"


class RunDirError(Exception):
    """The run directory cannot be used; the message says why and what to do."""


def default_dir(env: Mapping[str, str] | None = None) -> Path:
    """The run directory when no ``--dir`` is given (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "stubdom"
    run = Path("/run/stubdom")
    if os.access(run, os.W_OK) or (not run.exists() and os.access(run.parent, os.W_OK)):
        return run
    return Path(f"/tmp/stubdom-{os.getuid()}")


@dataclass(frozen=True)
class RunDir:
    """The files of one host; ``root`` is absolute so child processes agree on it."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> RunDir:
        return cls(Path(os.path.abspath(path)))

    @property
    def xenstored_dir(self) -> Path:
        return self.root / "xenstored"

    @property
    def xenstored_socket(self) -> Path:
        return self.xenstored_dir / "socket"

    @property
    def xenstored_daemon_file(self) -> Path:
        return self.xenstored_dir / "daemon"

    @property
    def real_xenstored_dir(self) -> Path:
        """cxenstored's or oxenstored's run directory, the shim's ``fake/`` in it."""
        return self.xenstored_dir / "real"

    @property
    def real_xenstored_socket(self) -> Path:
        """A traced cx's or ox's own socket, behind the proxy on `xenstored_socket`."""
        return self.real_xenstored_dir / "socket"

    def xenstored_daemon(self) -> str:
        """Which xenstored this host runs: ``ours``, ``cx`` or ``ox``."""
        try:
            return self.xenstored_daemon_file.read_text().strip() or "ours"
        except FileNotFoundError:
            return "ours"

    @property
    def xenstored_state(self) -> Path:
        """``host up --durable``: xenstored's --state-dir (the host's life only)."""
        return self.xenstored_dir / "state"

    @property
    def xenstored_pid(self) -> Path:
        return self.root / "xenstored.pid"

    @property
    def xenstored_log(self) -> Path:
        return self.root / "xenstored.log"

    @property
    def host_socket(self) -> Path:
        return self.root / "host.sock"

    @property
    def host_pid(self) -> Path:
        return self.root / "host.pid"

    @property
    def host_log(self) -> Path:
        return self.root / "host.log"

    @property
    def consoles(self) -> Path:
        return self.root / "consoles"

    @property
    def domains(self) -> Path:
        return self.root / "domains"

    @property
    def monitors(self) -> Path:
        return self.root / "monitors"

    def monitor_pid(self, guest: int) -> Path:
        return self.monitors / f"{guest}.pid"

    def monitor_pids(self) -> tuple[Path, ...]:
        """The pid files of the domain monitors (`stubdom.toolstack.monitor`)."""
        if not self.monitors.is_dir():
            return ()
        return tuple(sorted(self.monitors.glob("*.pid")))

    def pid_files(self) -> tuple[Path, ...]:
        return (self.host_pid, self.xenstored_pid, *self.monitor_pids())

    def sockets(self) -> tuple[Path, ...]:
        return (self.host_socket, self.xenstored_socket)

    def check_socket_paths(self) -> None:
        """Refuse a directory whose sockets would not fit ``sun_path``."""
        longest = os.fsencode(self.root / LONGEST_SOCKET)
        if len(longest) >= SUN_PATH_MAX:
            budget = SUN_PATH_MAX - 1 - len(LONGEST_SOCKET) - 1
            raise RunDirError(
                f"run directory {self.root} is too long for unix sockets: "
                f"{self.root / LONGEST_SOCKET} is {len(longest)} bytes, the limit is "
                f"{SUN_PATH_MAX - 1}; use a --dir of at most {budget} bytes"
            )

    def create(self) -> None:
        """Make the directories, private to this user; refuse one owned by someone else."""
        self.check_socket_paths()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.root.lstat()
            if st.st_uid != os.getuid():
                raise RunDirError(
                    f"run directory {self.root} belongs to uid {st.st_uid}, not to you; "
                    f"choose another with --dir or ${ENV_VAR}"
                )
            for d in (self.xenstored_dir, self.consoles, self.domains):
                d.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise RunDirError(
                f"cannot create run directory {e.filename or self.root}: {e.strerror}; "
                f"choose another with --dir or ${ENV_VAR}"
            ) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the directory, so two ``up``/``down`` cannot interleave.

        The lock is on the directory itself, so it leaves no lock file behind.
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def remove_runtime_files(self) -> list[Path]:
        """Delete pid files and every socket below DIR (logs stay), and empty directories.

        A crashed xenstored or backend leaves its sockets behind, per-domain ones included,
        so every socket goes, not only the ones we know by name.  Returns what went.
        """
        import shutil  # here: every command resolves its run directory, few clean it

        removed = []
        # The scratch TMPDIRs (`SimulatedHypervisor.scratch_dir`) of domains that died
        # with a killed host: their hypervisor is not there to remove them.
        for scratch in self.domains.glob("*.tmp"):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
        # Its domains died with the host: a new host must not inherit the tree, nor the
        # rings, FIFOs and markers of a real xenstored.
        for gone in (self.xenstored_state, self.real_xenstored_dir):
            if gone.is_dir():
                shutil.rmtree(gone, ignore_errors=True)
                removed.append(gone)
        if self.xenstored_daemon_file.exists():
            self.xenstored_daemon_file.unlink()
            removed.append(self.xenstored_daemon_file)
        sockets = [p for p in self.root.rglob("*") if _is_socket(p)]
        for p in (*self.pid_files(), *sockets):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        for d in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir() and not d.is_symlink():
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty
        return removed


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def resolve(
    directory: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> RunDir:
    """The run directory for ``--dir`` (None: the default of `default_dir`)."""
    return RunDir.at(directory if directory is not None else default_dir(env))


def read_pid(path: Path) -> int | None:
    """The pid recorded in ``path``, or None if there is no usable one."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pid(path: Path, pid: int) -> None:
    """Write atomically, so a reader never sees half a pid."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: orphans may linger unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def process_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def process_is_ours(pid: int, run_dir: RunDir) -> bool:
    """Whether ``pid`` is alive and one of this host's processes.

    A pid file may outlive its process and the pid be reused; only a process whose
    command line names the run directory is ours to signal.
    """
    if not process_alive(pid):
        return False
    below = f"{run_dir.root}/"
    return any(below in f"{arg}/" for arg in process_cmdline(pid))


def processes_using(run_dir: RunDir) -> list[int]:
    """Every live process (but this one) whose command line names the run directory."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and process_is_ours(int(entry), run_dir):
            found.append(int(entry))
    return found


def is_monitor(pid: int, run_dir: RunDir) -> bool:
    """Whether ``pid`` is a live domain monitor of this host (not a re-used pid)."""
    return process_is_ours(pid, run_dir) and "monitor" in process_cmdline(pid)


def monitor_processes(run_dir: RunDir) -> list[int]:
    """The live domain monitors of this host, from their pid files (a pid file may
    outlive its monitor and the pid be reused by another process)."""
    pids = (read_pid(f) for f in run_dir.monitor_pids())
    return [pid for pid in pids if pid is not None and is_monitor(pid, run_dir)]


def domain_processes(run_dir: RunDir) -> list[int]:
    """Every live process started as a domain of this host, or by one.

    Domain processes are sessions of their own, so a host daemon killed by SIGKILL
    leaves them running, and their command line need not name the run directory.  They
    are known by the environment the hypervisor gave them, which their children
    inherit: ``XENSTORED_PATH`` is this host's ``<socket>.d/<domid>`` and ``TMPDIR`` lies
    in ``DIR/domains`` (both, so that a shell someone pointed at a domain socket is not
    taken for a domain).
    """
    markers = (
        os.fsencode(f"XENSTORED_PATH={run_dir.xenstored_socket}.d/"),
        os.fsencode(f"TMPDIR={run_dir.domains}/"),
    )
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if all(any(v.startswith(m) for v in env) for m in markers) and process_alive(int(entry)):
            found.append(int(entry))
    return found


def end_domain_processes(run_dir: RunDir, timeout: float) -> list[int]:
    """Kill what is left of this host's domains and return once it is gone.

    A domain left by a dead host is destroyed as `SimulatedHypervisor.destroy` does it:
    SIGKILL to its process group (SIGCONT too: a paused domain is stopped), no grace, as
    a destroyed Xen domain gets none.  Returns the pids still alive after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        left = [pid for pid in {*killed, *domain_processes(run_dir)} if process_alive(pid)]
        if not left or time.monotonic() >= deadline:
            return sorted(left)
        for pid in set(left) - killed:
            _kill_group_or_process(pid)
            killed.add(pid)
        time.sleep(0.01)


def _kill_group_or_process(pid: int) -> None:
    try:
        leader = os.getpgid(pid) == pid and pid != os.getpgrp()
        for sig in (signal.SIGKILL, signal.SIGCONT):
            if leader:  # a domain: its session's group holds the children it started
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
    except ProcessLookupError:
        pass


def signal_process(pid: int, sig: int) -> bool:
    """Send ``sig``; False if the process is already gone."""
    try:
        os.kill(pid, sig)
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        raise
    return True
