"""xenstored restarted (``host up --durable``) in the middle of a command.

The stubdomain is held at the command (tests/faults/gated_stub.py: the command is
received, nothing answered) while xenstored is killed or stopped and started again on
the same state directory.  Then the stub is let go.  The toolstack, the stub and the
host all connect again by themselves; the command completes and nothing written before
the restart is lost.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.faults.host import GUARD, NO_TIMEOUT, FaultHost
from tests.support.daemons import short_tmpdir


@pytest.fixture
def host() -> Iterator[FaultHost]:
    d = short_tmpdir("xsrestart-")
    h = FaultHost(d, "ours")
    h.run("host", "up", "--durable")
    try:
        yield h
    finally:
        h.run("host", "down", check=False)
        subprocess.run(["rm", "-rf", str(d)], check=False)


def logs(host: FaultHost) -> str:
    parts = []
    for name in ("log/qemu-dm-g.log", "xenstored.log", "host.log"):
        path = host.dir / name
        if path.exists():
            parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-40:]))
    return "\n".join(parts)


def wait_held(host: FaultHost, stub: int, gate: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        r = host.run("xenstore", "read", f"/local/domain/{stub}/data/held", check=False)
        if r.stdout.strip() == gate:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"the stub never reached {gate}")


@pytest.mark.parametrize("how", ["--kill", "sigterm"])
@pytest.mark.parametrize(
    ("gate", "verb"),
    [("pci-ins", ("pci-attach", "g", "03:00.0")), ("save", ("save", "-c", "g", "IMAGE"))],
)
def test_a_command_completes_across_a_xenstored_restart(
    host: FaultHost, how: str, gate: str, verb: tuple[str, ...]
) -> None:
    host.run("create", str(host.config("g", gates=gate)), "--timeout", NO_TIMEOUT)
    guest, stub = host.domids()["g"], host.domids()["g-dm"]
    host.run("xenstore", "write", "/before/restart", "kept")
    image = host.dir / "g.save"
    args = [str(image) if a == "IMAGE" else a for a in verb]
    proc = host.popen(*args, "--timeout", NO_TIMEOUT)
    try:
        wait_held(host, stub, gate, proc)
        host.run("host", "restart-xenstored", *([how] if how == "--kill" else []))
        assert proc.poll() is None, "the command survives the restart"
        host.run("xenstore", "write", f"/local/domain/{stub}/data/release", "1")
        _, err = proc.communicate(timeout=GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err + logs(host)
    assert host.run("xenstore", "read", "/before/restart").stdout == "kept\n"
    if gate == "pci-ins":
        rows = host.run("pci-list", "g").stdout.splitlines()
        assert [r.split()[1] for r in rows[1:]] == ["0000:03:00.0"]
    else:
        assert image.stat().st_size > 0
        assert host.domids()["g"] == guest  # kept (-c) and running again
    state = host.run("xenstore", "read", f"/local/domain/{stub}/device-model/{guest}/state")
    assert state.stdout == "running\n"
    host.run("destroy", "g")
    host.assert_clean("g", ids=(guest, stub))


def test_restart_needs_a_durable_host() -> None:
    d = short_tmpdir("xsrestart-")
    h = FaultHost(d, "ours")
    h.run("host", "up")
    try:
        r = h.run("host", "restart-xenstored", check=False)
        assert r.returncode == 1
        assert "keeps no state" in r.stderr and "'stubdom host up --durable'" in r.stderr
        assert h.run("list").returncode == 0  # nothing was stopped
    finally:
        h.run("host", "down", check=False)
        subprocess.run(["rm", "-rf", str(d)], check=False)
