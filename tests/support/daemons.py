"""Start and stop xenstore daemons for tests: ours, and the real cx/ox (`stubdom.realxs`).

Tests that need a real peer call `need_peer`: it skips when the peer is missing, or fails
when ``STUBDOM_REQUIRE_PEERS=1`` (CI), so a missing package can never pass silently.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stubdom import realxs
from stubdom.realxs import Flavour, RealXenstored

XEN_BIN = realxs.daemons.XEN_BIN
CX_BIN = realxs.daemon_binary(Flavour.CX)
OX_BIN = realxs.daemon_binary(Flavour.OX)
TEST_XENSTORE = XEN_BIN / "test-xenstore"
SYSTEM_PYTHON = "/usr/bin/python3"


def peers_required() -> bool:
    return os.environ.get("STUBDOM_REQUIRE_PEERS") == "1"


def need_peer(available: bool, what: str) -> None:
    """Skip (or, in CI, fail) a test whose real peer is not installed."""
    if available:
        return
    msg = f"real peer missing: {what}"
    if peers_required():
        pytest.fail(msg + " (STUBDOM_REQUIRE_PEERS=1)")
    pytest.skip(msg)


def have_cx() -> bool:
    """cxenstored is installed and the shim is built or can be (gcc)."""
    return realxs.available(Flavour.CX)


def have_ox() -> bool:
    """oxenstored is installed and the shim is built or can be (gcc)."""
    return realxs.available(Flavour.OX)


#: Every xenstored a host can run, for tests parametrised over them; cx and ox are peers.
XENSTOREDS = [
    "ours",
    pytest.param("cx", marks=pytest.mark.peer),
    pytest.param("ox", marks=pytest.mark.peer),
]


def need_xenstored(name: str) -> None:
    """Skip (or in CI fail) a test on ``name`` when it is a real daemon that is missing."""
    if name == "cx":
        need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    elif name == "ox":
        need_peer(have_ox(), "oxenstored (Debian xen-utils-4.17) and gcc")


#: A test run once per daemon (ids ours, cx, ox) through the ``xenstored`` fixture
#: (tests/conftest.py); a test without it gets "ours".
on_every_daemon = pytest.mark.parametrize("xenstored", XENSTOREDS, indirect=True)


_TMPDIRS: list[Path] = []


def short_tmpdir(prefix: str = "sd-") -> Path:
    """A fresh directory under /tmp: unix socket paths must stay under 108 bytes.

    pytest's own tmp_path is too deep for that.  The directories go when the test
    session ends.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    _TMPDIRS.append(path)
    return path


@atexit.register
def _remove_tmpdirs() -> None:
    for path in _TMPDIRS:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Daemon:
    """A running xenstore daemon and how to reach it."""

    kind: str  # "ours", "cx" or "ox"
    socket: str
    pid: int
    run_dir: Path
    fake_dir: Path | None = None  # cx/ox: the shim's directory (rings, markers)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    real: RealXenstored | None = field(default=None, repr=False)  # cx/ox

    @property
    def env(self) -> dict[str, str]:
        """The environment for a client process talking to this daemon."""
        env = dict(os.environ)
        env["XENSTORED_PATH"] = self.socket
        env.pop("LD_PRELOAD", None)
        return env

    def alive(self) -> bool:
        if self.real is not None:
            return self.real.alive()
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.real is not None:
            self.real.stop()
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for_socket(
    path: str, proc: subprocess.Popen[bytes] | None, timeout: float = 10.0
) -> None:
    """Until a server accepts connections on ``path`` (an error if ``proc`` exits first
    or ``timeout`` passes): every daemon, ours, the real ones and the benches' floor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before {path} appeared")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.02)
    raise RuntimeError(f"daemon socket {path} did not come up within {timeout}s")


def start_ours(run_dir: Path | None = None, *args: str) -> Daemon:
    """``stubdom xenstored --socket RUN/socket`` in the foreground, as a child process."""
    run_dir = run_dir or short_tmpdir()
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = str(run_dir / "socket")
    log = open(run_dir / "xenstored.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "stubdom", "xenstored", "--socket", sock, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_socket(sock, proc)
    return Daemon("ours", sock, proc.pid, run_dir, proc=proc)


def _start_real(flavour: Flavour, run_dir: Path, args: tuple[str, ...]) -> Daemon:
    real = realxs.start(flavour, run_dir, args=args)
    return Daemon(
        str(flavour), str(real.socket), real.pid, run_dir, fake_dir=real.fake.dir, real=real
    )


def start_cx(run_dir: Path | None = None, *args: str) -> Daemon:
    """The real cxenstored 4.17 under the realxs shim."""
    return _start_real(Flavour.CX, run_dir or short_tmpdir("cx-"), args)


def start_ox(run_dir: Path | None = None, *args: str) -> Daemon:
    """The real oxenstored 4.17 under the realxs shim."""
    return _start_real(Flavour.OX, run_dir or short_tmpdir("ox-"), args)
