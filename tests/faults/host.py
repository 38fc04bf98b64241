"""A real `stubdom host` for fault tests, with guests whose stubdomain misbehaves.

Each guest boots `faulty_stub.py` with the fault asked for (or the plain agent), and
`assert_clean` checks what a destroy must leave: no xenstore node, domain, process or
file of the guest (its console-0 log stays, as libxl keeps /var/log/xen).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemons import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
STUBDOM = [sys.executable, "-m", "stubdom"]
#: Backend directories a domain's devices may leave under /local/domain/0/backend.
BACKENDS = ("vbd", "vif", "console", "vfb", "vkbd", "pci", "qdisk")
#: A guard against a hang, never a synchronisation delay.
GUARD = 120.0
#: What a wait for the device model is given, so that only a fast path can end it within
#: GUARD: a failure seen at a timeout would make the command outlive the guard.
NO_TIMEOUT = "600"


@dataclass
class FaultHost:
    dir: Path
    #: The daemon the host serves: ours, cx or ox (the ``xenstored`` fixture).
    xenstored: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STUBDOM_HOST_DIR": str(self.dir)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*STUBDOM, *args], env=self.env, capture_output=True, text=True, timeout=GUARD
        )
        if check and r.returncode != 0:
            raise AssertionError(f"stubdom {' '.join(args)} failed: {r.stderr}")
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*STUBDOM, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )

    def config(
        self,
        name: str,
        fault: str | None = None,
        *,
        gates: str | None = None,
        pci: str | None = None,
    ) -> Path:
        """A guest with a disk and a nic (and ``pci``).  Its stubdomain runs the agent
        with ``fault`` (faulty_stub.py), or held at ``gates`` (gated_stub.py), or as is."""
        kernel = self.dir / f"kernel-{name}"
        if fault is not None:
            program = f'{ROOT}/tests/faults/faulty_stub.py {ROOT} {fault}'
        elif gates is not None:
            program = f'{ROOT}/tests/faults/gated_stub.py {ROOT} "{gates}"'
        else:
            program = "-m stubdom.stubdomain.main"
        kernel.write_text(f'#!/bin/sh\nexec {sys.executable} {program} "$@"\n')
        kernel.chmod(0o755)
        disk = self.dir / f"{name}.img"
        disk.write_bytes(b"\0" * 8192)
        cfg = self.dir / f"{name}.cfg"
        cfg.write_text(
            f'type = "hvm"\nname = "{name}"\nmemory = 128\n'
            'device_model_version = "qemu-xen-traditional"\n'
            "device_model_stubdomain_override = 1\n"
            f"disk = [ '{disk},raw,hda,rw' ]\n"
            "vif = [ 'mac=00:16:3e:12:34:56' ]\n"
            + (f"pci = [ '{pci}' ]\n" if pci else "")
            + f'stubdomain_kernel = "{kernel}"\n'
        )
        return cfg

    def create(self, name: str, fault: str | None = None) -> None:
        # -e: no monitor applies on_crash, so a crashed stub stays for the test to see
        # what the toolstack's command said and left.
        self.run("create", "-e", str(self.config(name, fault)), "--timeout", NO_TIMEOUT)

    def domids(self) -> dict[str, int]:
        rows = self.run("list").stdout.splitlines()[1:]
        return {r.split()[0]: int(r.split()[1]) for r in rows}

    def xenstore_ls(self, path: str) -> list[str]:
        r = self.run("xenstore", "ls", path, check=False)
        return r.stdout.splitlines() if r.returncode == 0 else []

    def tree(self) -> set[str]:
        """Every node's path, from one ``xenstore ls /`` (one space of indent a level)."""
        paths: set[str] = set()
        stack: list[str] = []
        for line in self.xenstore_ls("/"):
            depth = len(line) - len(line.lstrip(" "))
            name = line.strip().split(" = ", 1)[0]
            del stack[depth:]
            stack.append(name)
            paths.add("/" + "/".join(stack))
        return paths

    def assert_clean(self, *names: str, ids: tuple[int, ...] = ()) -> None:
        """Nothing of the named guests (and the domids ``ids``) is left anywhere."""
        domains = self.domids()
        for name in names:
            assert name not in domains and f"{name}-dm" not in domains, domains
        tree = self.tree()
        for domid in ids:
            backends = [f"/local/domain/0/backend/{kind}/{domid}" for kind in BACKENDS]
            places = [f"/local/domain/{domid}", f"/libxl/{domid}", *backends]
            left = [p for p in places if p in tree]
            assert left == [], left
        # /vm holds only the live domains' entries.
        vm_entries = sorted(p for p in tree if p.count("/") == 2 and p.startswith("/vm/"))
        assert len(vm_entries) == len(domains) - 1, vm_entries
        left = sorted(p.name for p in (self.dir / "lib").iterdir() if
                      any(str(i) in p.name.split(".") for i in ids))
        assert left == [], left
        leaked = self.domain_processes(ids)
        assert leaked == [], leaked

    def domain_processes(self, ids: tuple[int, ...]) -> list[str]:
        """Processes started as one of domains ``ids`` (known by their XENSTORED_PATH)."""
        wanted = {f"XENSTORED_PATH={self.dir}/xenstored/socket.d/{i}".encode() for i in ids}
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = set((proc / "environ").read_bytes().split(b"\0"))
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if environ & wanted:
                found.append(f"{proc.name}: {cmdline.decode(errors='replace')}")
        return found


@pytest.fixture
def host(xenstored: str) -> Iterator[FaultHost]:
    d = short_tmpdir("faults-")
    h = FaultHost(d, xenstored)
    h.run("host", "up", "--xenstored", xenstored)
    try:
        yield h
    finally:
        h.run("host", "down", check=False)
        subprocess.run(["rm", "-rf", str(d)], check=False)
