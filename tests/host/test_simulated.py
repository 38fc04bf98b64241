"""Domains as processes: create, boot a kernel, pause, crash, destroy."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stubdom.host.hypervisor import (
    DomainConfig,
    DomainExists,
    DomainState,
    HypervisorError,
    NoSuchDomain,
    ShutdownReason,
)
from stubdom.host.simulated import SimulatedHypervisor
from stubdom.toolstack.records import DomainRecord, introduce_domain, make_domain, remove_domain
from tests.support.xsenv import XsEnv

# A PV "kernel": reaches xenstore as its own domain, reports what it may and may not do.
KERNEL = """\
#!{python}
import json, os, sys
from stubdom.xenstore.sync import SyncClient
from stubdom.xenstore import XenStoreError
report = {{"argv": sys.argv[1:], "env": sorted(os.environ)}}
with SyncClient() as xs:
    report["domid"] = xs.read("domid").decode()
    report["vm"] = xs.read("vm").decode()
    xs.write("data/hello", b"from the kernel")
    report["own"] = xs.read("data/hello").decode()
    for what, call in (("read dom0", lambda: xs.read("/local/domain/0")),
                       ("write vm", lambda: xs.write(report["vm"] + "/x", b"1")),
                       ("write name", lambda: xs.write("name", b"evil"))):
        try:
            call()
            report[what] = "allowed"
        except XenStoreError as e:
            report[what] = e.name
print(json.dumps(report), flush=True)
mode = sys.argv[1] if len(sys.argv) > 1 else "exit0"
if mode == "crash":
    sys.exit(3)
if mode == "wait":
    sys.stdin.read()  # stdin is /dev/null: returns at once; block on a pipe instead
    import time
    while True:
        time.sleep(3600)
"""


def kernel(tmp: Path) -> str:
    path = tmp / "kernel.py"
    path.write_text(KERNEL.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


async def boot(xs: XsEnv, hv: SimulatedHypervisor, name: str, *args: str) -> int:
    domid = await hv.create_domain(DomainConfig(name=name, max_memkb=32768))
    rec = DomainRecord(domid, name, (await hv.domain_info(domid)).uuid, max_memkb=32768)
    await make_domain(xs.dom0, rec)
    await hv.build_pv(
        domid, kernel(xs.run_dir), " ".join(args), env={"PYTHONPATH": os.pathsep.join(sys.path)}
    )
    await introduce_domain(xs.dom0, rec)
    await hv.unpause(domid)
    return domid


def report(hv: SimulatedHypervisor, domid: int, name: str) -> dict[str, object]:
    line = (hv.log_dir / f"{domid}-{name}.log").read_text().splitlines()[0]
    result: dict[str, object] = json.loads(line)
    return result


@pytest.fixture
async def hv(xsenv: XsEnv) -> AsyncIterator[SimulatedHypervisor]:
    hv = SimulatedHypervisor(xsenv.dom0, xsenv.socket, xsenv.run_dir)
    yield hv
    await hv.close()  # an HVM domain's simulated drivers stop with it


async def test_a_wanted_domid_is_given_or_refused(hv: SimulatedHypervisor) -> None:
    """What ``xl save -D`` relies on: a creation may ask for its domid (c_info.domid)."""
    assert await hv.create_domain(DomainConfig(name="a", domid=7)) == 7
    assert await hv.create_domain(DomainConfig(name="b")) == 1  # the rover goes on
    with pytest.raises(DomainExists, match=r"^domain id 7 for 'c' is in use by 'a'; destroy"):
        await hv.create_domain(DomainConfig(name="c", domid=7))
    with pytest.raises(HypervisorError, match="domain id 0 for 'c' is not a guest's"):
        await hv.create_domain(DomainConfig(name="c", domid=0))
    await hv.destroy(7)
    assert await hv.create_domain(DomainConfig(name="c", domid=7)) == 7


async def test_create_is_paused_and_ids_are_not_reused_while_alive(hv: SimulatedHypervisor) -> None:
    a = await hv.create_domain(DomainConfig(name="a"))
    b = await hv.create_domain(DomainConfig(name="b"))
    assert (a, b) == (1, 2)
    info = await hv.domain_info(a)
    assert info.paused and info.state_letters == "--p---"
    with pytest.raises(DomainExists, match="'a' already exists"):
        await hv.create_domain(DomainConfig(name="a"))
    await hv.destroy(a)
    c = await hv.create_domain(DomainConfig(name="c"))
    assert c == 3
    names = [d.name for d in await hv.list_domains()]
    assert names == ["Domain-0", "b", "c"]
    with pytest.raises(NoSuchDomain, match="domain 1 does not exist"):
        await hv.unpause(1)


async def test_build_refuses_what_cannot_boot(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    pv = await hv.create_domain(DomainConfig(name="pv"))
    hvm = await hv.create_domain(DomainConfig(name="hvm", hvm=True))
    with pytest.raises(HypervisorError, match="not an executable file"):
        await hv.build_pv(pv, str(xsenv.run_dir / "missing"))
    with pytest.raises(HypervisorError, match="is HVM"):
        await hv.build_pv(hvm, kernel(xsenv.run_dir))


async def test_kernel_reaches_xenstore_as_its_own_domain(
    hv: SimulatedHypervisor, xsenv: XsEnv
) -> None:
    async with xsenv.dom0.watch("@releaseDomain") as released:
        await released.get(timeout=5)
        domid = await boot(xsenv, hv, "guest", "exit0", "console=hvc0")
        await released.get(timeout=20)  # the kernel exits 0: the domain shuts down
    r = report(hv, domid, "guest")
    assert r["argv"] == ["exit0", "console=hvc0"]
    assert r["env"] == ["LANG", "PATH", "PYTHONPATH", "TMPDIR", "XENSTORED_PATH"]
    assert r["domid"] == str(domid) and r["own"] == "from the kernel"
    assert r["read dom0"] == "EACCES"
    assert r["write vm"] == "EACCES"
    assert r["write name"] == "EACCES"
    info = await hv.domain_info(domid)
    assert info.state is DomainState.SHUTDOWN and info.shutdown_reason is ShutdownReason.POWEROFF
    assert info.state_letters == "---s--"
    assert await xsenv.dom0.read(f"/local/domain/{domid}/data/hello") == b"from the kernel"


async def test_crash_fires_release_domain(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    async with xsenv.dom0.watch("@releaseDomain") as released:
        await released.get(timeout=5)
        domid = await boot(xsenv, hv, "crasher", "crash")
        await released.get(timeout=20)
    info = await hv.domain_info(domid)
    assert info.state is DomainState.CRASHED and info.state_letters == "----c-"
    with pytest.raises(HypervisorError, match="cannot run again"):
        await hv.unpause(domid)


async def test_pause_unpause_and_destroy(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    domid = await boot(xsenv, hv, "sleeper", "wait")
    pid = (await hv.domain_info(domid)).pid
    assert pid is not None
    await hv.pause(domid)
    assert (await hv.domain_info(domid)).state_letters[2] == "p"
    assert _proc_state(pid) == "T"  # stopped
    await hv.unpause(domid)
    assert _proc_state(pid) in ("R", "S")
    async with xsenv.dom0.watch("@releaseDomain") as released:
        await released.get(timeout=5)
        await hv.destroy(domid)
        await released.get(timeout=10)
    assert _proc_state(pid) is None
    assert not await xsenv.dom0.is_domain_introduced(domid)
    await remove_domain(xsenv.dom0, domid)
    assert not await xsenv.dom0.exists(f"/local/domain/{domid}")


async def test_hvm_guest_has_no_process(hv: SimulatedHypervisor) -> None:
    domid = await hv.create_domain(DomainConfig(name="win", hvm=True))
    await hv.unpause(domid)
    info = await hv.domain_info(domid)
    assert info.pid is None and info.state is DomainState.RUNNING and not info.paused
    await hv.shutdown(domid, ShutdownReason.REBOOT)
    info = await hv.domain_info(domid)
    assert info.state is DomainState.SHUTDOWN and info.state_letters == "---sr-"


async def test_close_ends_every_process(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    pids = []
    for name in ("one", "two"):
        domid = await boot(xsenv, hv, name, "wait")
        pid = (await hv.domain_info(domid)).pid
        assert pid is not None
        pids.append(pid)
    await hv.close()
    assert [_proc_state(p) for p in pids] == [None, None]
    assert [d.name for d in await hv.list_domains()] == ["Domain-0"]


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
    if state == "Z":
        return None
    return state


_ = signal  # SIGSTOP/SIGCONT are what pause/unpause send; see _proc_state
