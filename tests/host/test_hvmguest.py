"""An HVM guest without an OS: the simulated host obeys control/shutdown for it, follows
its cpu/<n>/availability, and keeps its current memory and name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stubdom.host.hvmguest import online_vcpus
from stubdom.host.hypervisor import (
    DomainConfig,
    DomainExists,
    DomainState,
    HypervisorError,
    ShutdownReason,
)
from stubdom.host.simulated import SimulatedHypervisor
from stubdom.toolstack.records import DomainRecord, introduce_domain, make_domain
from stubdom.xenstore import Client
from tests.support.xsenv import XsEnv

GUARD = 20.0  # failure guard only


@pytest.fixture
async def hv(xsenv: XsEnv) -> AsyncIterator[SimulatedHypervisor]:
    hv = SimulatedHypervisor(xsenv.dom0, xsenv.socket, xsenv.run_dir)
    yield hv
    await hv.close()


async def hvm_guest(xs: Client, hv: SimulatedHypervisor, vcpus: int = 2, max_vcpus: int = 4) -> int:
    domid = await hv.create_domain(
        DomainConfig(name="g", hvm=True, max_vcpus=max_vcpus, max_memkb=262144)
    )
    rec = DomainRecord(domid, "g", (await hv.domain_info(domid)).uuid, hvm=True,
                       max_memkb=262144, target_memkb=131072, vcpus=vcpus, max_vcpus=max_vcpus)
    await make_domain(xs, rec)
    await hv.build_hvm(domid, 131072, vcpus)
    await introduce_domain(xs, rec)
    return domid


async def test_the_guest_obeys_control_shutdown(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    xs = xsenv.dom0
    domid = await hvm_guest(xs, hv)
    await hv.unpause(domid)
    async with xs.watch("@releaseDomain") as released:
        await released.get(timeout=GUARD)
        await xs.write(f"/local/domain/{domid}/control/shutdown", "reboot")
        await released.get(timeout=GUARD)
    info = await hv.domain_info(domid)
    assert info.state is DomainState.SHUTDOWN and info.shutdown_reason is ShutdownReason.REBOOT
    assert info.state_letters == "---sr-"
    assert await xs.read(f"/local/domain/{domid}/control/shutdown") == b""  # acknowledged


async def test_a_paused_guest_obeys_once_unpaused(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    xs = xsenv.dom0
    domid = await hvm_guest(xs, hv)  # created paused
    node = f"/local/domain/{domid}/control/shutdown"
    async with xs.watch(node) as changed:
        await changed.get(timeout=GUARD)
        await xs.write(node, "poweroff")
        await changed.get(timeout=GUARD)
    # Its drivers cannot run: the request waits (a round trip through the host's
    # connection later, it is still there).
    await xs.read(node)
    assert (await hv.domain_info(domid)).state is DomainState.RUNNING
    assert await xs.read(node) == b"poweroff"
    async with xs.watch("@releaseDomain") as released:
        await released.get(timeout=GUARD)
        await hv.unpause(domid)
        await released.get(timeout=GUARD)
    info = await hv.domain_info(domid)
    assert info.state is DomainState.SHUTDOWN and info.shutdown_reason is ShutdownReason.POWEROFF


async def test_online_vcpus_follow_availability(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    xs = xsenv.dom0
    domid = await hvm_guest(xs, hv, vcpus=2, max_vcpus=4)
    assert (await hv.domain_info(domid)).vcpus == 2  # built with 2 of 4 online
    assert await xs.read(f"/local/domain/{domid}/cpu/3/availability") == b"offline"
    await xs.write(f"/local/domain/{domid}/cpu/2/availability", "online")
    async with asyncio.timeout(GUARD):
        while (await hv.domain_info(domid)).vcpus != 3:
            await asyncio.sleep(0.01)


async def test_memory_target_and_rename(hv: SimulatedHypervisor, xsenv: XsEnv) -> None:
    domid = await hvm_guest(xsenv.dom0, hv)
    info = await hv.domain_info(domid)
    assert (info.memkb, info.max_memkb) == (131072, 262144)
    await hv.set_memory_target(domid, 204800)
    assert (await hv.domain_info(domid)).memkb == 204800
    with pytest.raises(HypervisorError, match=r"outside 0\.\.262144"):
        await hv.set_memory_target(domid, 300000)
    other = await hv.create_domain(DomainConfig(name="other"))
    with pytest.raises(DomainExists, match="'other' already exists"):
        await hv.rename(domid, "other")
    await hv.rename(domid, "g2")
    assert (await hv.domain_info(domid)).name == "g2"
    await hv.rename(other, "g")  # the old name is free again


def test_online_vcpus_counts_online_nodes() -> None:
    assert online_vcpus({"0": b"online", "1": b"offline", "2": None, "3": b"online"}) == 2
