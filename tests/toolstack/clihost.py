"""A real `stubdom host` for CLI tests: run verbs, write guest configs, wait for changes.

Waiting (`Host.wait_for`) is for what happens in the background (a monitor acting, the
simulated guest following its nodes): it polls until the condition holds, and its
deadline is only a guard against a hang, never part of what is tested.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stubdom.host.api import RemoteHypervisor
from stubdom.host.hypervisor import DomainInfo
from tests.support.daemons import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
STUBDOM = [sys.executable, "-m", "stubdom"]
#: Failure guard of `Host.wait_for`.
GUARD = 60.0


@dataclass
class Row:
    """One row of 'stubdom list'."""

    name: str
    domid: int
    mem: int
    vcpus: int
    state: str


@dataclass
class Host:
    dir: Path
    #: The daemon the host serves: ours, cx or ox.
    xenstored: str = "ours"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STUBDOM_HOST_DIR": str(self.dir)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*STUBDOM, *args], env=self.env, capture_output=True, text=True,
                           timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"stubdom {' '.join(args)} failed: {r.stderr}")
        return r

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*STUBDOM, *args], env=self.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kernel(self) -> str:
        path = self.dir / "stub-kernel"
        path.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT}/tests/toolstack/stub_kernel.py"
                        f" {ROOT}\n")
        path.chmod(0o755)
        return str(path)

    def config(self, name: str = "win7", *extra: str, agent: bool = False) -> Path:
        """A guest config; ``extra`` lines are appended; ``agent``: the real stubdom-dm
        boots in the stubdomain instead of the fast fake."""
        disk = self.dir / f"{name}.img"
        disk.write_bytes(b"\0" * 8192)
        kernel = "" if agent else f'stubdomain_kernel = "{self.kernel()}"\n'
        cfg = self.dir / f"{name}.cfg"
        cfg.write_text(
            f'type = "hvm"\nname = "{name}"\nmemory = 128\nvcpus = 2\n'
            'device_model_version = "qemu-xen-traditional"\n'
            "device_model_stubdomain_override = 1\n"
            f"disk = [ '{disk},raw,hda,rw' ]\n"
            "vif = [ 'mac=00:16:3e:12:34:56' ]\n"
            "serial = 'pty'\n" + kernel + "".join(f"{line}\n" for line in extra))
        return cfg

    def pci_guest(self, name: str = "win7", pci: str | None = None) -> Path:
        """A guest without devices whose stubdomain runs the agent (the sim guest ejects
        at once), with ``pci`` as its ``pci = [...]`` entries."""
        cfg = self.dir / f"{name}.cfg"
        cfg.write_text(
            f'type = "hvm"\nname = "{name}"\nmemory = 128\n'
            'device_model_version = "qemu-xen-traditional"\n'
            "device_model_stubdomain_override = 1\n"
            + (f"pci = [ {pci} ]\n" if pci else "")
        )
        return cfg

    def pci_rows(self, name: str = "win7") -> list[str]:
        return self.run("pci-list", name).stdout.splitlines()[1:]

    def domains(self) -> dict[str, DomainInfo]:
        async def ask() -> dict[str, DomainInfo]:
            async with await RemoteHypervisor.connect(self.dir) as hv:
                return {d.name: d for d in await hv.list_domains()}

        return asyncio.run(ask())

    def read(self, path: str) -> str | None:
        r = self.run("xenstore", "read", path, check=False)
        return r.stdout.rstrip("\n") if r.returncode == 0 else None

    def dm_node(self, node: str, name: str = "win7") -> str:
        d = self.domains()
        return f"/local/domain/{d[name + '-dm'].domid}/device-model/{d[name].domid}/{node}"

    def rows(self) -> list[Row]:
        out = []
        for line in self.run("list").stdout.splitlines()[1:]:
            f = line.split()
            out.append(Row(f[0], int(f[1]), int(f[2]), int(f[3]), f[4]))
        return out

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows() if r.name == name), None)

    def names(self) -> list[str]:
        return [r.name for r in self.rows()]

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + GUARD
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting ({GUARD:.0f}s guard) for {what}")
            time.sleep(0.05)

    def pid_of(self, domid: int) -> int:
        """The process of a PV domain (a stubdomain's device model)."""

        async def ask() -> int | None:
            async with await RemoteHypervisor.connect(self.dir) as hv:
                return (await hv.domain_info(domid)).pid

        pid = asyncio.run(ask())
        assert pid is not None, f"domain {domid} has no process"
        return pid

    def monitor_log(self, name: str = "win7") -> str:
        path = self.dir / "log" / f"xl-{name}.log"
        return path.read_text() if path.exists() else ""


def running_host(prefix: str = "tsxl-", xenstored: str = "ours") -> Iterator[Host]:
    """The body of a test module's ``host`` fixture: a host up on ``xenstored`` (ours, cx
    or ox: the ``xenstored`` fixture), then down."""
    h = Host(short_tmpdir(prefix), xenstored)
    h.run("host", "up", "--xenstored", xenstored)
    yield h
    h.run("host", "down", check=False)


def read_until(proc: subprocess.Popen[bytes], wanted: bytes) -> bytes:
    """What ``proc`` writes on stdout, up to and including ``wanted``."""
    assert proc.stdout is not None
    seen = b""
    while wanted not in seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, proc.stderr.read() if proc.stderr else b""
        seen += chunk
    return seen
