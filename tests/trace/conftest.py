"""A real trace: the in-process host with the real agent, recorded by xenstored."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from stubdom import protocol as proto
from stubdom.host.rundir import RunDir
from stubdom.toolstack import devices
from stubdom.toolstack import operations as ops
from stubdom.toolstack.config import DiskSpec, GuestConfig
from stubdom.toolstack.session import Session
from stubdom.toolstack.spawn import HostPaths, destroy_guest
from stubdom.xenstored.trace import PacketTrace
from tests.support.inprocess_host import inprocess_host

AGENT = str(Path(sys.executable).with_name("stubdom-dm"))


async def record_scenario(trace_file: Path) -> None:
    """Create a guest with its stubdomain, hot-plug a PCI function, save/continue, destroy."""
    async with inprocess_host("trace-") as h:
        trace = PacketTrace(open(trace_file, "w", encoding="utf-8"))  # noqa: SIM115
        h.server.trace = trace
        try:
            paths = HostPaths.under(h.root)
            paths.ensure()
            s = Session(h.hv, h.xs, paths, RunDir(h.root))
            disk = h.root / "g.img"
            disk.write_bytes(b"\0" * 4096)
            cfg = GuestConfig(
                name="g",
                vcpus=1,
                maxvcpus=2,
                stubdomain_kernel=AGENT,
                disks=[DiskSpec(vdev="hda", target=str(disk))],
            )
            c = await ops.create_guest(s, cfg, timeout=20)
            bdf = proto.Bdf(0, 3, 0, 0)
            await devices.add_pci(h.xs, c.stubdom, devices.PciFunction(bdf), domain_name="g-dm")
            ch = ops.channel(s, c.stubdom, c.guest, 10)
            await ch.pci_insert(bdf)
            await ch.save()
            await ch.resume()
            await destroy_guest(h.hv, h.xs, c.guest, paths)
        finally:
            h.server.trace = None
            trace.close()


@pytest.fixture(scope="session")
def real_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "run.jsonl"
    asyncio.run(record_scenario(path))
    return path
