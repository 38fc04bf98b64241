"""Issue #8: the toolstack process is SIGKILLed in the middle of create, pci-attach and save.

Each kill lands at a point the test observes first, never after a sleep: either the
stub kernel is held at a gate (`gated_stub`: it received the command, or finished its
setup, and says so in its ``data/held`` node), or the toolstack itself is stopped at a
named point (`hanging_toolstack`: it creates a flag file there).  Afterwards:

* ``stubdom list`` shows the domains that exist, in their state;
* a second toolstack invocation on the guest is not blocked by the dead one's lock, and a
  left-over ``paused`` (with or without the save marker) is recovered;
* ``stubdom destroy`` removes everything: domains, processes, xenstore nodes (home,
  /vm, /libxl, backends) and files (save/restore files, userdata, the save marker);
* a guest whose create was killed can be destroyed by name and created again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.host.api import RemoteHypervisor
from stubdom.host.hypervisor import DomainInfo
from stubdom.xenstore.sync import SyncClient
from tests.faults.host import ROOT, STUBDOM, FaultHost
from tests.support.daemons import on_every_daemon, short_tmpdir
from tests.support.flock import flock_free

#: A guard against a hang, never a timing assumption.
GUARD = 60.0
#: The device-model wait given to commands after a kill: only a fast path (no lock left
#: held, a recovery, a clear refusal) can end them within GUARD.
NO_TIMEOUT = ("--timeout", "600")
NAME = "win7"

# On cx and ox too (README, "On the real daemons"): every test (all marked
# @on_every_daemon): each kill point leaves xenstore in a state the next command reads.


@dataclass
class Host(FaultHost):
    xs: SyncClient

    def start(self, *args: str, hang: str | None = None) -> subprocess.Popen[str]:
        """A toolstack command in the background (stopped for good at ``hang``)."""
        if hang is None:
            return self.popen(*args)
        prefix = [sys.executable, str(ROOT / "tests/faults/hanging_toolstack.py"), str(ROOT),
                  hang, str(self.flag)]
        return subprocess.Popen([*prefix, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    @property
    def flag(self) -> Path:
        return self.dir / "hang-reached"

    def config(  # type: ignore[override]
        self, gates: str = "", pci: str | None = None
    ) -> Path:
        return super().config(NAME, gates=gates, pci=pci)

    def domains(self) -> list[DomainInfo]:
        async def ask() -> list[DomainInfo]:
            async with await RemoteHypervisor.connect(self.dir) as hv:
                return list(await hv.list_domains())

        return asyncio.run(ask())

    def listed(self) -> list[tuple[str, str]]:
        """(name, state letters) of each row of ``stubdom list``."""
        rows = self.run("list").stdout.splitlines()[1:]
        return [(r.split()[0], r.split()[4]) for r in rows]

    def guest_and_stub(self) -> tuple[DomainInfo, DomainInfo]:
        by_name = {d.name: d for d in self.domains()}
        return by_name[NAME], by_name[f"{NAME}-dm"]


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    d = short_tmpdir("tskill-")
    subprocess.run([*STUBDOM, "host", "up", "--dir", str(d), "--xenstored", xenstored],
                   check=True, capture_output=True, timeout=GUARD)
    xs = SyncClient(str(d / "xenstored" / "socket"))
    try:
        yield Host(d, xenstored, xs)
    finally:
        xs.close()
        subprocess.run([*STUBDOM, "host", "down", "--dir", str(d)], capture_output=True,
                       timeout=GUARD)


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str] | None = None
             ) -> None:
    """Poll until ``ready``; fail at once if ``proc`` ended first (it was to be killed)."""
    deadline = time.monotonic() + GUARD
    while not ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the toolstack ended ({proc.returncode}) before {what}: "
                        f"{proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"no {what} within {GUARD} s"
        time.sleep(0.02)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=GUARD) == -signal.SIGKILL
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def held(host: Host, stub: int) -> str | None:
    path = f"/local/domain/{stub}/data/held"
    return host.xs.read(path).decode() if host.xs.exists(path) else None


def stub_held_at(host: Host, gate: str, proc: subprocess.Popen[str]) -> int:
    """Wait until the stubdomain of NAME is held at ``gate``; its domid."""
    stub: list[int] = []

    def ready() -> bool:
        if not stub:
            found = [d.domid for d in host.domains() if d.name == f"{NAME}-dm"]
            if not found:
                return False
            stub.append(found[0])
        return held(host, stub[0]) == gate

    wait_for(f"the stubdomain held at {gate}", ready, proc)
    return stub[0]


def release(host: Host, stub: int) -> None:
    host.xs.write(f"/local/domain/{stub}/data/release", "1")


def lock_is_free(host: Host, guest: int) -> bool:
    path = host.dir / "lock" / f"dm-{guest}.lock"
    return not path.exists() or flock_free(path)


def assert_all_gone(host: Host, doms: list[DomainInfo]) -> None:
    """Nothing of ``doms`` is left: domains, processes, nodes, files (logs may stay)."""
    left = {d.domid for d in host.domains()}
    assert not left & {d.domid for d in doms}
    backends = host.xs.directory("/local/domain/0/backend") if host.xs.exists(
        "/local/domain/0/backend") else []
    for d in doms:
        for path in (f"/local/domain/{d.domid}", f"/vm/{d.uuid}", f"/libxl/{d.domid}",
                     *(f"/local/domain/0/backend/{k}/{d.domid}" for k in backends)):
            assert not host.xs.exists(path), f"{path} is left"
        if d.pid is not None:
            with pytest.raises(ProcessLookupError):
                os.killpg(d.pid, 0)
        lib = host.dir / "lib"
        for f in (lib / f"qemu-save.{d.domid}", lib / f"qemu-resume.{d.domid}",
                  host.dir / "lock" / f"dm-{d.domid}.saved",
                  host.dir / "domains" / f"{d.domid}.tmp"):
            assert not f.exists(), f"{f} is left"
        assert not list(lib.glob(f"userdata-d.{d.domid}.*")), "userdata is left"
        assert lock_is_free(host, d.domid)
    assert not list(host.dir.rglob("*.partial"))


def destroy_and_recreate(host: Host, name_or_id: str) -> None:
    """Destroy what the dead toolstack left, check it is all gone, create anew."""
    guest, stub = host.guest_and_stub()
    host.run("destroy", name_or_id)
    assert host.listed() == [("Domain-0", host.listed()[0][1])]
    assert_all_gone(host, [guest, stub])
    host.run("create", str(host.config()))
    assert [n for n, _ in host.listed()] == ["Domain-0", NAME, f"{NAME}-dm"]
    host.run("pci-attach", NAME, "05:00.0")
    assert host.run("pci-list", NAME).stdout.splitlines()[1:] == ["05.0 0000:05:00.0"]


# -- create ------------------------------------------------------------------------------


@on_every_daemon
@pytest.mark.parametrize("point", ["stub-records", "stub-unpause"])
def test_create_killed_before_the_stub_runs(host: Host, point: str) -> None:
    proc = host.start("create", str(host.config()), hang=point)
    wait_for(f"the create at {point}", host.flag.exists, proc)
    kill(proc)
    # Both domains exist, paused: the guest never ran, the stub never booted.
    assert host.listed()[1:] == [(NAME, "--p---"), (f"{NAME}-dm", "--p---")]
    guest, stub = host.guest_and_stub()
    assert stub.pid is None
    # Nothing would ever answer: refused at once, in one line, telling how to clean up.
    r = host.run("pci-attach", NAME, "03:00.0", *NO_TIMEOUT, check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"'stubdom destroy {guest.domid}'" in r.stderr
    r = host.run("create", str(host.config()), check=False)
    assert r.returncode == 1 and "already exists" in r.stderr and "destroy" in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    destroy_and_recreate(host, NAME if point == "stub-records" else str(guest.domid))


@on_every_daemon
def test_create_killed_while_waiting_for_running(host: Host) -> None:
    proc = host.start("create", str(host.config("running")), "--timeout", "600")
    stub = stub_held_at(host, "running", proc)
    kill(proc)
    listed = dict(host.listed())
    assert listed[NAME] == "--p---" and "p" not in listed[f"{NAME}-dm"]
    _, stub_info = host.guest_and_stub()
    assert stub_info.domid == stub and stub_info.pid is not None
    destroy_and_recreate(host, NAME)


@on_every_daemon
def test_create_killed_during_its_pci_attach(host: Host) -> None:
    proc = host.start("create", str(host.config("pci-ins", pci="03:00.0")))
    stub = stub_held_at(host, "pci-ins", proc)
    guest, _ = host.guest_and_stub()
    assert host.xs.exists(f"/local/domain/{stub}/device-model/{guest.domid}/command")
    kill(proc)
    assert lock_is_free(host, guest.domid)
    assert dict(host.listed())[NAME] == "--p---"
    assert host.run("pci-list", NAME).stdout.splitlines()[1:] == [
        "??.? 0000:03:00.0 (an unfinished pci-attach; pci-detach removes it)"
    ]
    destroy_and_recreate(host, NAME)


# -- pci-attach ---------------------------------------------------------------------------


@on_every_daemon
def test_pci_attach_killed_mid_exchange(host: Host) -> None:
    host.run("create", str(host.config("pci-ins")))
    guest, stub = host.guest_and_stub()
    proc = host.start("pci-attach", NAME, "03:00.0")
    stub_held_at(host, "pci-ins", proc)
    assert host.xs.exists(f"/local/domain/{stub.domid}/device-model/{guest.domid}/command")
    assert not lock_is_free(host, guest.domid)
    kill(proc)
    assert lock_is_free(host, guest.domid)  # the flock died with its holder
    assert dict(host.listed())[NAME] == "r-----"
    # The device model answers the dead toolstack's command: a result nobody restores.
    release(host, stub.domid)
    state = f"/local/domain/{stub.domid}/device-model/{guest.domid}/state"
    wait_for("the late pci-inserted", lambda: host.xs.read(state) == b"pci-inserted")
    host.run("pci-attach", NAME, "04:00.0", *NO_TIMEOUT)
    assert host.xs.read(state) == b"running"
    # The dead attach left a trace: listed, refused again, undone by pci-detach.
    rows = host.run("pci-list", NAME).stdout.splitlines()
    assert rows[1].split()[1] == "0000:04:00.0"
    assert rows[-1].startswith("??.? 0000:03:00.0 (an unfinished pci-attach")
    again = host.run("pci-attach", NAME, "03:00.0", *NO_TIMEOUT, check=False)
    assert again.returncode == 1
    assert "an earlier pci-attach of 0000:03:00.0" in again.stderr
    assert f"'stubdom pci-detach {NAME} 0000:03:00.0' removes it" in again.stderr
    host.run("pci-detach", NAME, "03:00.0", *NO_TIMEOUT)
    host.run("pci-attach", NAME, "03:00.0", *NO_TIMEOUT)
    listed = [r.split()[1] for r in host.run("pci-list", NAME).stdout.splitlines()[1:]]
    assert sorted(listed) == ["0000:03:00.0", "0000:04:00.0"]
    host.run("pci-detach", "-f", NAME, "04:00.0")
    destroy_and_recreate(host, NAME)


# -- save ---------------------------------------------------------------------------------


@on_every_daemon
def test_save_killed_after_save_was_sent(host: Host) -> None:
    host.run("create", str(host.config("save")))
    guest, stub = host.guest_and_stub()
    image = host.dir / "win7.save"
    proc = host.start("save", NAME, str(image))
    stub_held_at(host, "save", proc)
    kill(proc)
    assert dict(host.listed())[NAME] == "--p---"  # paused by the save, truthfully
    assert not image.exists()
    release(host, stub.domid)  # the device model saves and pauses: nobody continues it
    state = f"/local/domain/{stub.domid}/device-model/{guest.domid}/state"
    wait_for("the late paused", lambda: host.xs.read(state) == b"paused")
    host.run("pci-attach", NAME, "03:00.0", *NO_TIMEOUT)  # continue, then the insert
    assert host.xs.read(state) == b"running"
    host.run("pci-detach", "-f", NAME, "03:00.0")
    host.run("save", NAME, str(image))
    assert image.read_bytes().startswith(b"Xen saved domain, xl format\n")
    assert host.listed()[1:] == []
    assert_all_gone(host, [guest, stub])


@on_every_daemon
def test_save_killed_before_the_image_is_written(host: Host) -> None:
    host.run("create", str(host.config()))
    guest, stub = host.guest_and_stub()
    image = host.dir / "win7.save"
    proc = host.start("save", NAME, str(image), hang="save-image")
    wait_for("the save at its image", host.flag.exists, proc)
    kill(proc)
    assert dict(host.listed())[NAME] == "--p---"
    state = f"/local/domain/{stub.domid}/device-model/{guest.domid}/state"
    assert host.xs.read(state) == b"paused"
    assert (host.dir / "lock" / f"dm-{guest.domid}.saved").exists()
    assert not image.exists()
    # The save marker's owner is dead: the paused device model is continued, not refused.
    host.run("pci-attach", NAME, "03:00.0", *NO_TIMEOUT)
    assert host.xs.read(state) == b"running"
    host.run("pci-detach", "-f", NAME, "03:00.0")
    host.run("save", NAME, str(image))
    assert image.read_bytes().startswith(b"Xen saved domain, xl format\n")
    assert_all_gone(host, [guest, stub])
    host.run("restore", str(image))
    guest, stub = host.guest_and_stub()
    host.run("destroy", NAME)
    assert_all_gone(host, [guest, stub])


@on_every_daemon
def test_a_stubdomain_whose_guest_is_gone_is_destroyed_by_its_name(host: Host) -> None:
    host.run("create", str(host.config()))
    guest, stub = host.guest_and_stub()

    async def destroy_guest_domain_only() -> None:
        async with await RemoteHypervisor.connect(host.dir) as hv:
            await hv.destroy(guest.domid)

    asyncio.run(destroy_guest_domain_only())
    assert [n for n, _ in host.listed()] == ["Domain-0", f"{NAME}-dm"]
    r = host.run("destroy", NAME, check=False)
    assert r.returncode == 1 and "no domain 'win7'" in r.stderr
    host.run("destroy", f"{NAME}-dm")
    assert_all_gone(host, [stub])
