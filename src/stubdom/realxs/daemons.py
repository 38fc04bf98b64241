"""Starting and stopping the real Xen 4.17 xenstored daemons under the shim.

cx (cxenstored, ``xenstored``) and ox (``oxenstored``) come from Debian's
``xen-utils-4.17``.  Each runs in the foreground as our child with the shim preloaded
for it alone, its fake Xen in ``<run_dir>/fake`` and its socket wherever the caller
wants it.  cx is told its paths by environment; ox reads a generated config file, and the
shim moves its compiled-in socket path.  ``-D`` (cx 4.17 crashes on the first request)
and ``-T`` (a write per traced byte) are best left out of ``args``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket as socketlib
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from stubdom.realxs.build import cached_library, shim_library
from stubdom.realxs.errors import RealXenstoredUnavailable
from stubdom.realxs.fakexen import RING_PAGE, FakeXen

log = logging.getLogger(__name__)

XEN_BIN = Path("/usr/lib/xen-4.17/bin")
#: The port /proc/xen/xsd_port reads as for ox (cx gets it from the shim's default).
DOM0_REMOTE_PORT = 1
#: AF_UNIX's sun_path holds 108 bytes with the terminator.
SOCKET_PATH_MAX = 107
_ERROR_WORDS = re.compile(r"error|fatal|unknown|invalid|cannot|failed", re.IGNORECASE)
_READ_ROOT = struct.pack("<4I", 2, 0, 0, 2) + b"/\0"  # READ "/", as any client may


class Flavour(StrEnum):
    CX = "cx"
    OX = "ox"


_BINARY = {Flavour.CX: "xenstored", Flavour.OX: "oxenstored"}
_LOG = {Flavour.CX: "xenstored.log", Flavour.OX: "oxenstored.out"}


def daemon_binary(flavour: Flavour | str) -> Path:
    """Where Debian installs the flavour's daemon."""
    return XEN_BIN / _BINARY[Flavour(flavour)]


def available(flavour: Flavour | str) -> bool:
    """The daemon is installed and the shim is built, or can be (this builds it)."""
    if not os.access(daemon_binary(flavour), os.X_OK):
        return False
    try:
        return cached_library() is not None or shim_library().is_file()
    except RealXenstoredUnavailable:
        return False


@dataclass
class RealXenstored:
    """A running real daemon: its socket, its fake Xen and how to end it."""

    flavour: Flavour
    pid: int
    socket: Path
    run_dir: Path
    fake: FakeXen
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def log(self) -> Path:
        """The daemon's stdout and stderr (ox also writes ``oxenstored.log``)."""
        return self.run_dir / _LOG[self.flavour]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 2.0) -> None:
        """End the daemon: SIGTERM, then SIGKILL after ``grace`` seconds.  ox gets SIGKILL
        at once: on SIGTERM it first dumps its store to /var/run/xenstored/db, which
        fails outside Xen's install, and it logs the error and runs on (its store is in
        memory, so nothing is lost).  Reaped, so no process or zombie is left."""
        if self.proc.poll() is not None:
            return
        if self.flavour is not Flavour.OX:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                log.debug("%s (pid %d) ignored SIGTERM: killing it", self.flavour, self.pid)
        self.proc.kill()
        self.proc.wait()


def _ox_config(run_dir: Path, fake: FakeXen) -> Path:
    """An oxenstored.conf with Debian's default quotas, pointing dom0's ring and port
    into the fake directory and everything else into ``run_dir``."""
    (fake.dir / "xsd_port").write_text(str(DOM0_REMOTE_PORT))
    with open(fake.ring_page(0), "ab") as ring:
        ring.truncate(RING_PAGE)
    settings = {
        "pid-file": run_dir / "oxenstored.pid",
        "test-eagain": "false",
        "merge-activate": "true",
        "conflict-burst-limit": "5.0",
        "conflict-max-history-seconds": "0.05",
        "conflict-rate-limit-is-aggregate": "true",
        "perms-activate": "true",
        "perms-watch-activate": "true",
        "quota-activate": "true",
        "quota-maxentity": "1000",
        "quota-maxsize": "2048",
        "quota-maxwatch": "100",
        "quota-transaction": "10",
        "quota-maxrequests": "1024",
        "quota-path-max": "1024",
        "quota-maxoutstanding": "1024",
        "quota-maxwatchevents": "1024",
        "persistent": "false",
        "xenstored-log-file": run_dir / "oxenstored.log",
        "xenstored-log-level": "warn",
        "access-log-file": run_dir / "access.log",
        "xenstored-kva": fake.ring_page(0),
        "xenstored-port": fake.dir / "xsd_port",
    }
    conf = run_dir / "oxenstored.conf"
    conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return conf


def _command(
    flavour: Flavour, binary: Path, run_dir: Path, sock: Path, fake: FakeXen
) -> tuple[list[str], dict[str, str]]:
    """The daemon's argv (before the caller's ``args``) and its extra environment."""
    env = {"XSFAKE_DIR": str(fake.dir)}
    if flavour is Flavour.CX:
        # cx listens on $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket: set both, so an
        # inherited XENSTORED_PATH cannot move it.
        env |= {"XENSTORED_RUNDIR": str(run_dir), "XENSTORED_PATH": str(sock)}
        # -F names the run directory on the command line too, so that a supervisor
        # can tell this process from another that took over its pid.
        return [str(binary), "-N", "-F", str(run_dir / "xenstored.pid")], env
    env["XSFAKE_SOCKET"] = str(sock)  # ox has no override for its socket path
    conf = _ox_config(run_dir, fake)
    return [str(binary), "--no-fork", "--config-file", str(conf), "--no-access-log"], env


def _answers(sock: Path) -> bool:
    """The daemon replies to a READ of ``/`` on ``sock``."""
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(sock))
        s.sendall(_READ_ROOT)
        return len(s.recv(16)) > 0
    except OSError:
        return False
    finally:
        s.close()


def _complaint(log_file: Path) -> str:
    """The line of a daemon's output that says why it stopped: the first that sounds
    like an error (ox prints its usage after it), else the last."""
    lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    for line in lines:
        if _ERROR_WORDS.search(line):
            return line
    return lines[-1] if lines else "no output"


def _wait_ready(d: RealXenstored, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(d.socket):
        if not d.alive():
            raise RuntimeError(
                f"{d.flavour} exited with status {d.proc.returncode} at start-up "
                f"(see {d.log}): {_complaint(d.log)}"
            )
        if time.monotonic() > deadline:
            d.stop()
            raise RuntimeError(f"{d.flavour} did not answer on {d.socket} within {timeout} s")
        time.sleep(0.02)


def start(
    flavour: Flavour | str,
    run_dir: Path,
    socket: Path | None = None,
    args: Sequence[str] = (),
    *,
    binary: Path | None = None,
    timeout: float = 10.0,
) -> RealXenstored:
    """Start the real daemon with its files in ``run_dir`` (reset: ``fake/``, the socket)
    and its socket at ``socket`` (default ``run_dir/socket``); return once it answers."""
    flavour = Flavour(flavour)
    exe = binary or daemon_binary(flavour)
    if not os.access(exe, os.X_OK):
        raise RealXenstoredUnavailable(
            f"{exe} not found: install the Debian package xen-utils-4.17"
        )
    lib = shim_library()
    run_dir = run_dir.absolute()
    sock = (socket or run_dir / "socket").absolute()
    if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
        raise ValueError(f"socket path {sock} is longer than AF_UNIX allows: choose a shorter one")
    run_dir.mkdir(parents=True, exist_ok=True)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    fake = FakeXen(run_dir / "fake")
    fake.reset()
    argv, extra = _command(flavour, exe, run_dir, sock, fake)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | extra
    env["LD_PRELOAD"] = str(lib)  # for the daemon alone, never for its clients
    with open(run_dir / _LOG[flavour], "wb") as out:
        proc = subprocess.Popen(
            [*argv, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
    d = RealXenstored(flavour, proc.pid, sock, run_dir, fake, proc)
    try:
        _wait_ready(d, timeout)
    except BaseException:
        d.stop()
        raise
    log.info("%s running (pid %d) on %s", flavour, d.pid, sock)
    return d
