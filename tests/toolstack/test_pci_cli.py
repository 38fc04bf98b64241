"""Issue 12: PCI as a user runs it, on a real `stubdom host` with the real agent.

The toolstack's records (``pci-list``, what ``save`` refuses on) and what the device
model holds must never disagree: not after a wildcard detach, not after an interrupted
attach, not when the stubdomain is dead.  And the host's assignable list is kept with
xl's ``pci-assignable-*`` verbs.  Times are asserted only as generous bounds far below
what the old behaviour took (10 s and more).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.daemons import on_every_daemon
from tests.toolstack.clihost import GUARD, STUBDOM, Host, running_host

#: What "at once" is allowed, far below the 10 s the old code took.
PROMPT = 5.0


# On cx and ox too (README, "On the real daemons"): every test marked @on_every_daemon,
# the attaches and detaches through the device model's nodes, an attach cut by Ctrl-C, a
# dead stub.  On ours alone: the pci-assignable list, a file of the host (the one attach
# it makes is the multi-function attach the others run on every daemon).


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    yield from running_host("pcicli-", xenstored)


# -- detach of every function the spec names ----------------------------------------------


@on_every_daemon
def test_a_wildcard_detach_removes_every_function(host: Host) -> None:
    (host.dir / "pci-assignable").write_text("0000:0b:00.0\n0000:0b:00.1\n0000:0b:00.3\n")
    host.run("create", str(host.pci_guest()))
    host.run("pci-attach", "win7", "0b:00.*@0d")
    assert host.pci_rows() == ["0d.0 0000:0b:00.0", "0d.1 0000:0b:00.1", "0d.3 0000:0b:00.3"]
    # One function of a shared slot cannot go alone: the device model ejects whole slots.
    r = host.run("pci-detach", "win7", "0b:00.1", check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "'stubdom pci-detach win7 0000:0b:00.*'" in r.stderr
    assert len(host.pci_rows()) == 3

    host.run("pci-detach", "win7", "0b:00.*")
    assert host.pci_rows() == []
    stub = host.domains()["win7-dm"].domid
    assert host.read(f"/local/domain/0/backend/pci/{stub}/0/num_devs") is None
    log = (host.dir / "log" / "qemu-dm-win7.log").read_text()
    assert "guest ejected slot 0d" in log
    # Toolstack and device model agree: the slot is free again for the same device.
    host.run("pci-attach", "win7", "0b:00.*@0d")
    assert len(host.pci_rows()) == 3
    r = host.run("pci-detach", "win7", "0c:00.*", check=False)
    assert r.returncode == 1 and "no function of 0000:0c:00 is attached" in r.stderr


# -- an interrupted attach ----------------------------------------------------------------


@on_every_daemon
def test_ctrl_c_during_an_attach_to_a_stopped_stub_leaves_an_undoable_record(
    host: Host,
) -> None:
    host.run("create", str(host.pci_guest()))
    pid = host.domains()["win7-dm"].pid
    assert pid is not None
    command = host.dm_node("command")
    os.kill(pid, signal.SIGSTOP)
    try:
        proc = subprocess.Popen([*STUBDOM, "pci-attach", "win7", "0b:00.0"], env=host.env,
                                stderr=subprocess.PIPE, text=True)
        host.wait_for("the pci-ins command", lambda: host.read(command) == "pci-ins")
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=GUARD)
        took = time.monotonic() - sent
        assert proc.returncode != 0
        assert took < PROMPT, f"Ctrl-C took {took:.1f} s to end pci-attach: {err}"
        assert "Traceback" not in err, err
        assert host.pci_rows() == [
            "??.? 0000:0b:00.0 (an unfinished pci-attach; pci-detach removes it)"]
    finally:
        os.kill(pid, signal.SIGCONT)
    # The device model reads the command once it runs again, and inserts the function.
    state = host.dm_node("state")
    host.wait_for("the late pci-inserted", lambda: host.read(state) == "pci-inserted")
    r = host.run("pci-attach", "win7", "0b:00.0", check=False)
    assert r.returncode == 1 and "an earlier pci-attach of 0000:0b:00.0" in r.stderr
    host.run("pci-detach", "win7", "0b:00.0")
    assert host.pci_rows() == []
    host.run("pci-attach", "win7", "0b:00.0")  # the device model no longer has it
    (row,) = host.pci_rows()
    assert row.endswith(" 0000:0b:00.0") and not row.startswith("??")


# -- a dead stubdomain ---------------------------------------------------------------------


@on_every_daemon
@pytest.mark.parametrize("attached", [True, False], ids=["with-pci", "without-pci"])
def test_a_killed_stub_is_named_dead_at_once_and_nothing_is_recorded(
    host: Host, attached: bool
) -> None:
    # -e: no monitor, whose on_crash (destroy) would take the guest away first.
    host.run("create", "-e", str(host.pci_guest()))
    if attached:
        host.run("pci-attach", "win7", "03:00.0")
    stub = host.domains()["win7-dm"]
    assert stub.pid is not None
    os.kill(stub.pid, signal.SIGKILL)
    host.wait_for("the crash", lambda: host.domains()["win7-dm"].state.value == "c")
    started = time.monotonic()
    r = host.run("pci-attach", "win7", "04:00.0", "--timeout", "600", check=False)
    took = time.monotonic() - started
    assert r.returncode == 1 and took < PROMPT, (took, r.stderr)
    first = r.stderr.splitlines()[0]
    assert f"the stubdomain of win7 (domain {stub.domid}) crashed" in first, r.stderr
    assert "'stubdom destroy win7'" in first and "before running" not in r.stderr
    assert [r.split()[1] for r in host.pci_rows()] == (["0000:03:00.0"] if attached else [])
    r = host.run("pci-detach", "win7", "03:00.0", check=False)
    assert r.returncode == 1 and "crashed" in r.stderr
    host.run("destroy", "win7")
    assert list(host.domains()) == ["Domain-0"]


# -- the assignable list ------------------------------------------------------------------


def test_pci_assignable_verbs(host: Host) -> None:
    assert host.run("pci-assignable-list").stdout == ""
    host.run("pci-assignable-add", "03:00.0")
    host.run("pci-assignable-add", "0000:03:00.1")
    r = host.run("pci-assignable-add", "03:00.0")
    assert r.returncode == 0 and "0000:03:00.0 is already assignable" in r.stderr
    assert host.run("pci-assignable-list").stdout == "0000:03:00.0\n0000:03:00.1\n"
    r = host.run("pci-assignable-add", "03:00.*", check=False)
    assert r.returncode == 2 and 'malformed BDF "03:00.*"' in r.stderr
    r = host.run("pci-assignable-remove", "05:00.0", check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "0000:05:00.0 is not assignable" in r.stderr

    host.run("create", str(host.pci_guest()))
    host.run("pci-attach", "win7", "03:00.*@06")
    # As xl: a function a guest holds is no longer listed, and cannot be removed.
    assert host.run("pci-assignable-list").stdout == ""
    r = host.run("pci-assignable-remove", "03:00.1", check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "0000:03:00.1 is attached to win7" in r.stderr
    host.run("pci-detach", "win7", "03:00.*")
    host.run("pci-assignable-remove", "-r", "03:00.1")
    assert host.run("pci-assignable-list").stdout == "0000:03:00.0\n"
    # A function one guest holds is not assignable to another.
    host.run("pci-attach", "win7", "03:00.0")
    host.run("create", str(host.pci_guest("other")))
    r = host.run("pci-attach", "other", "03:00.0", check=False)
    assert r.returncode == 1 and "0000:03:00.0 is attached to win7" in r.stderr


@on_every_daemon
def test_create_checks_its_pci_entries_before_building_anything(host: Host) -> None:
    for entry, why in (("'04:00.*@05'", "no assignable function of 0000:04:00"),
                       ("'04:00.*'", "needs a virtual slot")):
        r = host.run("create", str(host.pci_guest(pci=entry)), check=False)
        assert r.returncode == 1 and why in r.stderr, r.stderr
        assert "while attaching" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (host.dir / "log" / "qemu-dm-win7.log").exists(), "a stubdomain was built"
    host.run("pci-assignable-add", "04:00.0")
    host.run("pci-assignable-add", "04:00.1")
    host.run("create", str(host.pci_guest(pci="'04:00.*@05'")))
    assert host.domains()["win7"].domid == 1, "the refused creates built domains"
    assert host.pci_rows() == ["05.0 0000:04:00.0", "05.1 0000:04:00.1"]
