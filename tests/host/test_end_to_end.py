"""The whole host as a user runs it: `stubdom host up`, a PV domain whose kernel brings
its devices and consoles up through the frontend library, Xen's tools looking at it,
and `stubdom host down` leaving nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.host.api import RemoteHypervisor
from stubdom.host.hypervisor import DomainConfig, DomainState
from stubdom.toolstack.devices import Vbd, Vif, add_console, add_device
from stubdom.toolstack.records import DomainRecord, introduce_domain, make_domain, remove_domain
from stubdom.xenstore import Client
from tests.support.daemons import need_peer, on_every_daemon, short_tmpdir

STUBDOM = [sys.executable, "-m", "stubdom"]

KERNEL = """\
#!{python}
import asyncio, sys
from stubdom.xenstore import Client, XenStoreError
from stubdom.host.frontend import Frontend, list_devices
from stubdom.host.frontend.console import open_console

async def main() -> None:
    async with await Client.connect() as xs:
        async with open_console(xs, 0) as log:
            await log.write(b"kernel " + " ".join(sys.argv[1:]).encode() + b"\\n")
            async with Frontend(xs, "vif", (await list_devices(xs, "vif"))[0]) as vif:
                await log.write(f"vif {{vif.mac}} connected\\n".encode())
                async with Frontend(xs, "vbd", (await list_devices(xs, "vbd"))[0]) as vbd:
                    await log.write(f"vbd {{vbd.sectors}} sectors\\n".encode())
            try:
                await xs.write("/local/domain/0/evil", b"x")
            except XenStoreError as e:
                await log.write(f"dom0 write {{e.name}}\\n".encode())
        async with open_console(xs, 1) as save:
            await save.write(b"S" * 100000)

asyncio.run(main())
"""


@pytest.fixture
def host_dir(xenstored: str) -> Iterator[Path]:
    d = short_tmpdir("e2e-")
    subprocess.run([*STUBDOM, "host", "up", "--dir", str(d), "--xenstored", xenstored],
                   check=True, capture_output=True, timeout=60)
    yield d
    subprocess.run([*STUBDOM, "host", "down", "--dir", str(d)], capture_output=True, timeout=60)


def host_processes(d: Path) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(d) in cmd and state != "Z":
            out.append(cmd)
    return out


@on_every_daemon
async def test_a_domain_lives_and_dies_on_the_host(host_dir: Path) -> None:
    xs_path = str(host_dir / "xenstored" / "socket")
    kernel = host_dir / "kernel.py"
    kernel.write_text(KERNEL.format(python=sys.executable))
    kernel.chmod(0o755)
    disk = host_dir / "disk.img"
    disk.write_bytes(b"\0" * 1024 * 1024)
    log0, save = host_dir / "console0.log", host_dir / "save.img"

    hv = await RemoteHypervisor.connect(host_dir)
    async with await Client.connect(xs_path) as xs:
        domid = await hv.create_domain(DomainConfig(name="demo", max_memkb=32768))
        info = await hv.domain_info(domid)
        rec = DomainRecord(domid, "demo", info.uuid, max_memkb=32768)
        await make_domain(xs, rec)
        await add_console(xs, domid, 0, f"file:{log0}")
        await add_console(xs, domid, 1, f"file:{save}")
        await add_device(xs, domid, Vif(mac="00:16:3e:12:34:56"))
        await add_device(xs, domid, Vbd(vdev="xvda", target=str(disk)))
        await hv.build_pv(domid, str(kernel), "console=hvc0 quiet")
        await introduce_domain(xs, rec)
        async with xs.watch("@releaseDomain") as released:
            await released.get(timeout=10)
            await hv.unpause(domid)
            await released.get(timeout=60)  # the kernel returned: the domain shut down
        assert (await hv.domain_info(domid)).state is DomainState.SHUTDOWN

        assert log0.read_text().splitlines() == [
            "kernel console=hvc0 quiet",
            "vif 00:16:3e:12:34:56 connected",
            "vbd 2048 sectors",
            "dom0 write EACCES",
        ]
        assert save.read_bytes() == b"S" * 100000  # on disk once the close returned

        if shutil.which("xenstore-ls"):
            env = {**os.environ, "XENSTORED_PATH": xs_path}
            ls = subprocess.run(["xenstore-ls", "-f", f"/local/domain/{domid}"], env=env,
                                capture_output=True, text=True, timeout=30, check=True).stdout
            assert f'/local/domain/{domid}/name = "demo"' in ls
            assert f"/local/domain/{domid}/device/vif/0/mac" in ls
        await hv.destroy(domid)
        await remove_domain(xs, domid, info.uuid)
        assert not await xs.exists(f"/local/domain/{domid}")
    await hv.close()


@on_every_daemon
def test_down_leaves_nothing_behind(xenstored: str) -> None:
    need_peer(shutil.which("xenstore-ls") is not None, "xenstore-ls (Debian xenstore-utils)")
    d = short_tmpdir("e2e-")
    up = subprocess.run([*STUBDOM, "host", "up", "--dir", str(d), "--xenstored", xenstored],
                        check=True, capture_output=True, text=True, timeout=60).stdout
    assert f"export XENSTORED_PATH={d}/xenstored/socket" in up
    env = {**os.environ, "XENSTORED_PATH": str(d / "xenstored" / "socket")}
    subprocess.run(["xenstore-write", "/local/domain/0/probe", "1"], env=env, check=True,
                   timeout=30)
    ls = subprocess.run(["xenstore-ls", "/local/domain/0"], env=env, capture_output=True,
                        text=True, timeout=30, check=True).stdout
    assert 'probe = "1"' in ls
    assert host_processes(d)
    subprocess.run([*STUBDOM, "host", "down", "--dir", str(d)], check=True, timeout=60)
    assert host_processes(d) == []
    leftovers = sorted(p.name for p in d.rglob("*") if p.is_socket() or p.suffix == ".pid")
    assert leftovers == []
