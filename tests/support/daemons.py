"""Start and stop xenstore daemons for tests: ours, and the real cx/ox via the oracle kit.

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

KIT = Path(__file__).resolve().parent.parent / "oracle"
XEN_BIN = Path("/usr/lib/xen-4.17/bin")
CX_BIN = XEN_BIN / "xenstored"
OX_BIN = XEN_BIN / "oxenstored"
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
    return CX_BIN.exists() and shutil.which("gcc") is not None


def have_ox() -> bool:
    return OX_BIN.exists() and shutil.which("gcc") is not None


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

    @property
    def env(self) -> dict[str, str]:
        """The environment for a client process talking to this daemon."""
        env = dict(os.environ)
        env["XENSTORED_PATH"] = self.socket
        env.pop("LD_PRELOAD", None)
        return env

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"  # an orphaned daemon that exited may linger as a zombie

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        else:
            subprocess.run(
                [str(KIT / "stop.sh"), str(self.run_dir)], check=False, capture_output=True
            )


def _wait_for_socket(
    path: str, proc: subprocess.Popen[bytes] | None, timeout: float = 10.0
) -> None:
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
    _wait_for_socket(sock, proc)
    return Daemon("ours", sock, proc.pid, run_dir, proc=proc)


def _start_kit(script: str, run_dir: Path, args: tuple[str, ...]) -> Daemon:
    out = subprocess.run(
        [str(KIT / script), str(run_dir), *args],
        check=True,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
    ).stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith(("#", "export")):
            k, _, v = line.partition("=")
            values[k.strip()] = v.strip()
    kind = "cx" if "cx" in script else "ox"
    return Daemon(
        kind,
        values["XENSTORED_PATH"],
        int(values["XS_PID"]),
        run_dir,
        fake_dir=Path(values["XSFAKE_DIR"]),
    )


def start_cx(run_dir: Path | None = None, *args: str) -> Daemon:
    """The real cxenstored 4.17 under the oracle kit's shim."""
    return _start_kit("start-cxenstored.sh", run_dir or short_tmpdir("cx-"), args)


def start_ox(run_dir: Path | None = None, *args: str) -> Daemon:
    """The real oxenstored 4.17 under the oracle kit's shim."""
    return _start_kit("start-oxenstored.sh", run_dir or short_tmpdir("ox-"), args)
