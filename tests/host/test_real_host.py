"""``stubdom host up --xenstored cx|ox``: the simulated host on Xen's own daemons.

The real cxenstored and oxenstored run under the shim of `stubdom.realxs`; each domain
reaches them over its ring, through the relay socket the host gives it at the same
``XENSTORED_PATH`` as with our daemon.  These tests drive the host from the command line,
as a user does, and use Xen's C tools inside a domain's socket, as a third-party
stubdomain would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.host.rundir import RunDir, processes_using
from tests.support.daemons import have_cx, have_ox, need_peer, short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
XENSTORE_READ = shutil.which("xenstore-read") or "/usr/bin/xenstore-read"
GUARD = 60.0  # a failure guard, never a synchronisation delay


class CliHost:
    def __init__(self, directory: Path, daemon: str) -> None:
        self.dir = directory
        self.daemon = daemon
        self.env = {**os.environ, "STUBDOM_HOST_DIR": str(directory)}

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "stubdom", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=ROOT,
            timeout=GUARD,
        )
        if check:
            assert p.returncode == 0, f"stubdom {' '.join(args)}: {p.stdout}{p.stderr}"
        return p

    def as_domain(self, domid: int, *args: str) -> subprocess.CompletedProcess[str]:
        """A Xen C tool run inside domain ``domid``: its XENSTORED_PATH only."""
        sock = RunDir(self.dir).xenstored_socket
        env = {"XENSTORED_PATH": f"{sock}.d/{domid}", "PATH": os.environ["PATH"]}
        return subprocess.run(
            [XENSTORE_READ, *args], capture_output=True, text=True, env=env, timeout=GUARD
        )

    def domid(self, name: str) -> int:
        for line in self.run("list").stdout.splitlines()[1:]:
            words = line.split()
            if words[0] == name:
                return int(words[1])
        raise AssertionError(f"no domain {name}")


def _need(daemon: str) -> None:
    need_peer((have_cx if daemon == "cx" else have_ox)(), f"{daemon} (xen-utils-4.17, gcc)")


@pytest.fixture(params=["cx", "ox"], scope="module")
def host(request: pytest.FixtureRequest) -> Iterator[CliHost]:
    _need(request.param)
    h = CliHost(short_tmpdir(f"rh{request.param}-"), request.param)
    h.run("host", "up", "--xenstored", request.param)
    yield h
    h.run("host", "down", check=False)


def test_status_names_the_daemon(host: CliHost) -> None:
    out = host.run("host", "status").stdout
    assert f"xenstored    {host.daemon}, pid" in out


def test_a_guest_lives_its_life_on_the_real_daemon(host: CliHost) -> None:
    host.run("create", "examples/win7.cfg")
    guest, stub = host.domid("win7"), host.domid("win7-dm")
    # Xen's own tool inside the stubdomain, through the relay onto the stub's ring: the
    # daemon resolves the relative path as that domain and applies its permissions.
    target = host.as_domain(stub, "target")
    assert target.returncode == 0, target.stderr
    assert target.stdout.strip() == str(guest)
    # dom0's name exists, but a stubdomain may not read it (xenstore-read does not say
    # why; the relay tests see the EACCES itself).
    assert host.run("xenstore", "read", "/local/domain/0/name").stdout.strip() == "Domain-0"
    denied = host.as_domain(stub, "/local/domain/0/name")
    assert denied.returncode != 0 and "couldn't read path" in denied.stderr
    host.run("pci-assignable-add", "03:00.0")
    host.run("pci-attach", "win7", "03:00.0")
    assert "0000:03:00.0" in host.run("pci-list", "win7").stdout
    host.run("pci-detach", "win7", "03:00.0")
    saved = host.dir / "win7.save"
    host.run("save", "win7", str(saved))
    host.run("restore", str(saved))
    host.run("destroy", "win7")
    assert "win7" not in host.run("list").stdout


def test_down_leaves_no_process_and_no_runtime_file() -> None:
    daemons = [d for d in ("cx", "ox") if (have_cx if d == "cx" else have_ox)()]
    _need("cx")
    for daemon in daemons:
        h = CliHost(short_tmpdir(f"rd{daemon}-"), daemon)
        h.run("host", "up", "--xenstored", daemon)
        h.run("create", "examples/win7.cfg")
        h.run("host", "down")
        rd = RunDir(h.dir)
        assert processes_using(rd) == []
        assert not rd.xenstored_dir.exists(), sorted(rd.xenstored_dir.rglob("*"))
        assert not any(p.is_socket() for p in h.dir.rglob("*"))


def test_our_daemon_only_options_are_refused_in_one_line(host: CliHost) -> None:
    other = CliHost(short_tmpdir("rdopt-"), host.daemon)
    p = other.run("host", "up", "--xenstored", host.daemon, "--durable", check=False)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "--durable needs our xenstored" in p.stderr
    p = host.run("host", "restart-xenstored", check=False)
    assert p.returncode == 1 and "only our xenstored" in p.stderr


def test_a_missing_compiler_is_one_line_naming_the_package() -> None:
    _need("cx")
    h = CliHost(short_tmpdir("rdgcc-"), "cx")
    cache = short_tmpdir("rdcache-")
    p = h.run(
        "host", "up", "--xenstored", "cx", check=False,
        CC="/nonexistent/gcc", XDG_CACHE_HOME=str(cache), STUBDOM_REALXS_SHIM="",
    )  # fmt: skip
    h.run("host", "down", check=False)
    assert p.returncode == 1
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Debian package gcc" in errors[0], p.stderr
