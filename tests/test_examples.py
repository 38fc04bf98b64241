"""Every file in `examples/` works as the README shows it: create, exercise, destroy.

Each config is used from a copy of the examples directory (its disk images are relative
to the file), on a host of its own, through the `stubdom` command a user types.  A new
example without a case here fails `test_every_example_is_covered`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.toolstack.configure import load_config
from tests.support.daemons import short_tmpdir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STUBDOM = [sys.executable, "-m", "stubdom"]

#: What each example's README recipe needs before `create`: functions made assignable.
ASSIGNABLE = {"g1.cfg": ["0000:04:00.0", "0000:04:00.1"]}
CONFIGS = sorted(p.name for p in EXAMPLES.glob("*.cfg"))
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


@dataclass
class Host:
    dir: Path
    examples: Path
    #: The daemon the host serves: ours, cx or ox (the ``xenstored`` fixture).
    xenstored: str = "ours"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STUBDOM_HOST_DIR": str(self.dir / "run")}
        r = subprocess.run([*STUBDOM, *args], env=env, capture_output=True, text=True,
                           timeout=120, check=False, cwd=self.dir)
        if check and r.returncode:
            raise AssertionError(f"stubdom {' '.join(args)}: {r.stderr}")
        return r

    def names(self) -> list[str]:
        return [line.split()[0] for line in self.run("list").stdout.splitlines()[1:]]


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    d = short_tmpdir("ex-")
    h = Host(d, d / "examples", xenstored)
    shutil.copytree(EXAMPLES, h.examples)
    h.run("host", "up", "--xenstored", xenstored)
    yield h
    h.run("host", "down", check=False)


def test_every_example_is_covered() -> None:
    assert {"demo.cfg", "g1.cfg", "legacy.cfg", "minios.cfg", "win7.cfg"} == set(CONFIGS)
    assert SCRIPTS == ["xenstore_demo.py"]  # run by tests/test_demo.py


#: (daemon, example): every example on ours; on cx and ox (README, "On the real daemons")
#: g1.cfg alone, the one whose recipe crosses xenstore most (assignable functions, two
#: in its config, a hot-plug, save, restore, destroy): the others differ from it only in
#: what the toolstack reads from the file, which no daemon changes.
CASES = [("ours", c) for c in CONFIGS] + [("cx", "g1.cfg"), ("ox", "g1.cfg")]


@pytest.mark.parametrize(("xenstored", "name"), CASES, indirect=["xenstored"])
def test_example_creates_works_and_destroys(host: Host, name: str) -> None:
    cfg_path = host.examples / name
    cfg = load_config(cfg_path)
    for bdf in ASSIGNABLE.get(name, []):
        host.run("pci-assignable-add", bdf)
    host.run("create", str(cfg_path))
    assert host.names() == ["Domain-0", cfg.name, f"{cfg.name}-dm"]

    # The PCI functions of the config are in the guest, at the slots it names.
    rows = host.run("pci-list", cfg.name).stdout.splitlines()[1:]
    want = {spec.bdf.func for spec in cfg.pcis if not spec.all_functions}
    assert len(rows) >= len(cfg.pcis) and len(rows) >= len(want)
    for spec in cfg.pcis:
        if spec.vslot is not None:
            assert any(r.startswith(f"{spec.vslot:02x}.") for r in rows), rows

    # Exercise it: a hot-plug and back, then every function out, a save that keeps it.
    host.run("pci-attach", cfg.name, "0000:0a:00.0@0c")
    assert "0c.0 0000:0a:00.0" in host.run("pci-list", cfg.name).stdout
    for row in host.run("pci-list", cfg.name).stdout.splitlines()[1:]:
        host.run("pci-detach", "-f", cfg.name, row.split()[1])
    assert host.run("pci-list", cfg.name).stdout.splitlines() == ["Vdev Device"]
    image = host.dir / f"{cfg.name}.save"
    host.run("save", "-c", cfg.name, str(image))
    assert image.read_bytes().startswith(b"Xen saved domain, xl format")
    assert host.names() == ["Domain-0", cfg.name, f"{cfg.name}-dm"]

    host.run("destroy", cfg.name)
    assert host.names() == ["Domain-0"]
    assert cfg.name not in host.run("xenstore", "ls", "/local/domain").stdout


def test_a_missing_disk_image_fails_before_anything_is_built(host: Host) -> None:
    (host.examples / "images" / "legacy.img").unlink()
    r = host.run("create", str(host.examples / "legacy.cfg"), check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "Error: creating 'legacy' failed while checking the guest's disks: disk hda: "
        f"{host.examples / 'images' / 'legacy.img'}: No such file or directory")
    assert host.names() == ["Domain-0"]
    log = (host.dir / "run" / "host.log").read_text()
    assert "created domain" not in log
