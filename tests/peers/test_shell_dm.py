"""`examples/qemu-trad-dm.sh`, a device model in POSIX shell on Xen's xenstore tools,
runs under the Mini-OS layer through a guest's whole life and passes the conformance
kit on the clauses qemu-trad implements."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.cli.conformance import minios_layer
from tests.support.daemons import need_peer, short_tmpdir

pytestmark = pytest.mark.peer

ROOT = Path(__file__).resolve().parents[2]
SHELL_DM = ROOT / "examples" / "qemu-trad-dm.sh"
STUBDOM = str(Path(sys.executable).with_name("stubdom"))
TOOLS = ("xenstore-read", "xenstore-write", "xenstore-rm", "xenstore-watch")
#: What qemu-traditional never does, so neither does the script.
QEMU_TRAD_UNSUPPORTED = {"pci-ins.failed-state", "pci-rem.failed-state"}


def need_tools_and_layer() -> str:
    for tool in TOOLS:
        need_peer(shutil.which(tool) is not None, f"{tool} (Debian xenstore-utils)")
    layer = minios_layer()
    if layer is None:
        pytest.skip("the Mini-OS layer (stubdom-minios) is not installed")
    return layer


@dataclass
class Host:
    dir: Path

    def run(self, *args: str) -> str:
        env = {**os.environ, "STUBDOM_HOST_DIR": str(self.dir / "run")}
        r = subprocess.run([STUBDOM, *args], env=env, capture_output=True, text=True,
                           timeout=120, cwd=self.dir)
        assert r.returncode == 0, f"stubdom {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    def pci_list(self, guest: str) -> list[str]:
        return [line.split()[1] for line in self.run("pci-list", guest).splitlines()[1:]]


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host(short_tmpdir("shdm-"))
    h.run("host", "up")
    yield h
    subprocess.run([STUBDOM, "host", "down"], capture_output=True, timeout=120,
                   env={**os.environ, "STUBDOM_HOST_DIR": str(h.dir / "run")})


def test_shell_dm_through_a_guest_s_life(host: Host) -> None:
    need_tools_and_layer()
    cfg = host.dir / "shdm.cfg"  # as the README shows it
    cfg.write_text(
        'type = "hvm"\nname = "shdm"\nvif = [ "mac=00:16:3e:00:00:01" ]\n'
        'device_model_version = "qemu-xen-traditional"\n'
        "device_model_stubdomain_override = 1\n"
        f'stubdomain_kernel = "stubdom-minios"\nstubdomain_cmdline = "{SHELL_DM}"\n'
    )
    host.run("create", str(cfg))
    host.run("pci-attach", "shdm", "0000:03:00.0")
    host.run("pci-attach", "shdm", "0000:04:00.0@07")
    assert sorted(host.pci_list("shdm")) == ["0000:03:00.0", "0000:04:00.0"]
    assert "07.0" in host.run("pci-list", "shdm")
    host.run("pci-detach", "shdm", "03:00.0")
    assert host.pci_list("shdm") == ["0000:04:00.0"]
    host.run("pci-detach", "shdm", "04:00.0")  # xl saves no guest with PCI functions
    assert host.pci_list("shdm") == []
    image = host.dir / "shdm.save"
    host.run("save", "shdm", str(image))
    assert "shdm" not in host.run("list")
    host.run("restore", str(image))
    names = [line.split()[0] for line in host.run("list").splitlines()[1:]]
    assert names == ["Domain-0", "shdm", "shdm-dm"]
    log = next((host.dir / "run" / "log").glob("qemu-dm-shdm*.log")).read_text()
    assert "restored from" in log, log
    host.run("pci-attach", "shdm", "0000:03:00.0")  # the restored model hot-plugs too
    assert host.pci_list("shdm") == ["0000:03:00.0"]
    host.run("destroy", "shdm")
    assert [line.split()[0] for line in host.run("list").splitlines()[1:]] == ["Domain-0"]


def test_shell_dm_passes_the_conformance_kit(tmp_path: Path) -> None:
    need_tools_and_layer()
    report = tmp_path / "r.json"
    r = subprocess.run([STUBDOM, "conformance", "stubdomain", "--app", str(SHELL_DM),
                        "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["id"]: row["verdict"] for row in json.loads(report.read_text())["results"]}
    assert {c for c, v in rows.items() if v == "not supported"} == QEMU_TRAD_UNSUPPORTED
    assert all(v == "pass" for c, v in rows.items() if c not in QEMU_TRAD_UNSUPPORTED), rows
