"""Creating a guest with its stubdomain: libxl's nodes and permissions, and clean failure."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom import protocol as proto
from stubdom.host.hypervisor import DomainState
from stubdom.host.simulated import SimulatedHypervisor
from stubdom.toolstack.config import DiskSpec, GuestConfig, NicSpec
from stubdom.toolstack.spawn import CreateError, HostPaths, StubdomSpawner, destroy_guest
from stubdom.xenstore import Client
from tests.support.inprocess_host import inprocess_host

# A stand-in for the device-model agent: what Mini-OS and qemu-trad do at start-up.
FAKE_DM = """\
#!{python}
import sys, time
from stubdom.xenstore.sync import SyncClient
from stubdom import protocol as p
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
with SyncClient() as xs:
    guest = int(xs.read(p.TARGET_RELATIVE))
    vm = xs.read(f"/local/domain/{{guest}}/vm").decode()
    args = p.split_dmargs(xs.read(p.dmargs_path(vm)).decode())
    domid = xs.read("domid").decode()
    if mode == "ok":
        xs.write(f"device-model/{{guest}}/state", b"running")
    elif mode == "crash":
        sys.exit(1)
while True:
    time.sleep(3600)
"""


@dataclass
class Host:
    xs: Client
    hv: SimulatedHypervisor
    paths: HostPaths
    root: Path

    def kernel(self, mode: str = "ok") -> str:
        path = self.root / f"fake-dm-{mode}"
        path.write_text(FAKE_DM.format(python=sys.executable).replace(
            'mode = sys.argv[1] if len(sys.argv) > 1 else "ok"', f"mode = {mode!r}"))
        path.chmod(0o755)
        return str(path)

    def spawner(self, timeout: float = 20.0) -> StubdomSpawner:
        return StubdomSpawner(self.hv, self.xs, self.paths, self.wait_running, timeout)

    async def wait_running(self, stub: int, guest: int, timeout: float) -> None:
        path = proto.state_path(stub, guest)
        async with self.xs.watch(path) as w:
            async with asyncio.timeout(timeout):
                while await self.xs.read_optional(path) != b"running":
                    await w.get()


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with inprocess_host("spawn-") as h:
        yield Host(h.xs, h.hv, HostPaths.under(h.root), h.root)


def win7(host: Host, kernel: str) -> GuestConfig:
    disk = host.root / "win7.img"
    disk.write_bytes(b"\0" * 4096)
    return GuestConfig(name="win7", vcpus=2, serial=["pty"], stubdomain_kernel=kernel,
                       disks=[DiskSpec(vdev="hda", target=str(disk))],
                       nics=[NicSpec(devid=0, mac="00:16:3e:12:34:56")])


async def perms(xs: Client, path: str) -> str:
    return ",".join(str(p) for p in await xs.get_perms(path))


async def test_create_writes_what_libxl_writes(host: Host) -> None:
    cfg = win7(host, host.kernel())
    created = await host.spawner().create(cfg)
    g, s, xs = created.guest, created.stubdom, host.xs
    assert (g, s) == (1, 2)
    vm = f"/vm/{cfg.uuid}"
    assert await xs.read(proto.target_path(s)) == b"1"
    assert await perms(xs, proto.target_path(s)) == "n0,r2"
    assert await xs.read(proto.device_model_domid_path(g)) == b"2"
    assert await xs.read(proto.dm_version_path(g)) == b"qemu_xen_traditional"
    assert await xs.read(proto.allow_memory_relocate_path(g)) == b"1"
    assert await xs.read(proto.platform_device_model_path(g)) == b"qemu_xen_traditional"
    dmargs = (await xs.read(proto.dmargs_path(vm))).decode()
    assert dmargs == (
        " -d 1 -domain-name win7 -vnc 127.0.0.1:0 -vncunused -serial pty -videoram 4"
        " -boot cda -acpi -vcpus 2 -vcpu_avail 0x03"
        " -net nic,vlan=0,macaddr=00:16:3e:12:34:56,model=rtl8139"
        " -net tap,vlan=0,ifname=vif1.0-emu,bridge=xenbr0,script=no,downscript=no")
    assert await perms(xs, proto.dmargs_path(vm)) == "n0,r2"
    assert await perms(xs, proto.timeoffset_path(vm)) == "n0,r2"
    assert await perms(xs, proto.dm_path(s, g)) == "n2,r1"
    assert await xs.read(proto.state_path(s, g)) == b"running"
    assert await xs.read(f"/local/domain/{s}/name") == b"win7-dm"
    outputs = {}
    for n in range(4):
        front = "/local/domain/2/console" if n == 0 else f"/local/domain/2/device/console/{n}"
        outputs[n] = (await xs.read_optional(f"{front}/output") or b"").decode()
    assert outputs == {0: f"file:{host.paths.dm_log('win7')}",
                       1: f"file:{host.paths.save_file(1)}", 2: "", 3: "pty"}
    assert await xs.exists("/local/domain/0/backend/vbd/2/768")  # the guest's disk, for S
    assert await xs.exists("/local/domain/0/backend/vbd/1/768")  # and for G itself
    assert await xs.read("/local/domain/0/backend/vif/2/0/mac") == b"00:16:3e:12:34:56"
    assert await xs.exists("/local/domain/0/backend/vfb/2/0")
    stub = await host.hv.domain_info(s)
    assert stub.max_memkb == 32 * 1024 and stub.max_vcpus == 1 and not stub.paused
    guest = await host.hv.domain_info(g)
    assert guest.hvm and not guest.paused and guest.state is DomainState.RUNNING

    await destroy_guest(host.hv, xs, g, host.paths)
    assert [d.name for d in await host.hv.list_domains()] == ["Domain-0"]
    for path in ("/local/domain/1", "/local/domain/2", vm, "/libxl/1"):
        assert not await xs.exists(path), path
    for kind in ("vbd", "vif", "vfb", "vkbd", "console"):
        for domid in (1, 2):
            assert not await xs.exists(f"/local/domain/0/backend/{kind}/{domid}"), (kind, domid)


async def _nothing_left(host: Host) -> None:
    assert [d.name for d in await host.hv.list_domains()] == ["Domain-0"]
    assert await host.xs.directory("/local/domain") == ["0"]
    assert await host.xs.directory("/vm") == []
    for kind in await host.xs.directory("/local/domain/0/backend"):
        assert await host.xs.directory(f"/local/domain/0/backend/{kind}") == [], kind


async def test_a_failed_step_leaves_nothing_behind(host: Host) -> None:
    cfg = win7(host, str(host.root / "no-such-kernel"))
    with pytest.raises(CreateError, match="while building the stubdomain: kernel"):
        await host.spawner().create(cfg)
    await _nothing_left(host)


async def test_a_dead_device_model_is_a_clean_failure(host: Host) -> None:
    cfg = win7(host, host.kernel("silent"))
    with pytest.raises(CreateError, match="waiting for the device model to report running"):
        await host.spawner(timeout=3).create(cfg)
    await _nothing_left(host)


async def test_paused_create_leaves_the_guest_paused(host: Host) -> None:
    created = await host.spawner().create(win7(host, host.kernel()), paused=True)
    assert (await host.hv.domain_info(created.guest)).paused
    assert not (await host.hv.domain_info(created.stubdom)).paused
