"""The xenstore trees of a domain: libxl's nodes and permissions, introduce and release."""

from __future__ import annotations

from stubdom.toolstack.records import DomainRecord, introduce_domain, make_domain, remove_domain
from stubdom.xenstore import Client, PermissionDenied
from tests.support.xsenv import XsEnv

UUID = "8a3b9e2c-1111-2222-3333-444455556666"


async def perms(xs: Client, path: str) -> str:
    return ",".join(str(p) for p in await xs.get_perms(path))


async def test_records_as_libxl_writes_them(xsenv: XsEnv) -> None:
    xs = xsenv.dom0
    rec = DomainRecord(
        7,
        "guest",
        UUID,
        hvm=True,
        max_memkb=65536,
        vcpus=2,
        platformdata={"device-model": "qemu_xen_traditional"},
    )
    async with xs.watch("@introduceDomain") as intro:
        await intro.get(timeout=5)
        await make_domain(xs, rec)
        await introduce_domain(xs, rec)
        assert (await intro.get(timeout=5)).path == "@introduceDomain"
    dom = "/local/domain/7"
    assert await perms(xs, dom) == "n0,r7"
    assert await perms(xs, f"/vm/{UUID}") == "n0,r7"
    assert await xs.read(f"{dom}/vm") == f"/vm/{UUID}".encode()
    assert await xs.read(f"{dom}/name") == b"guest"
    assert await xs.read(f"/vm/{UUID}/uuid") == UUID.encode()
    assert await xs.read(f"{dom}/domid") == b"7"
    assert await xs.read(f"{dom}/memory/static-max") == b"65536"
    assert await xs.read(f"{dom}/cpu/1/availability") == b"online"
    assert await xs.read(f"{dom}/platform/device-model") == b"qemu_xen_traditional"
    for node in ("data", "control/shutdown", "device/suspend/event-channel", "error"):
        assert await perms(xs, f"{dom}/{node}") == "n7", node
    for node in ("device", "control"):
        assert await perms(xs, f"{dom}/{node}") == "n0,r7", node
    assert await xs.is_domain_introduced(7)

    async with await Client.connect(str(xsenv.server.domain_socket(7))) as guest:
        await guest.write("data/x", b"1")
        await guest.write("control/shutdown", b"poweroff")
        assert await guest.read("name") == b"guest"
        for path in ("name", "device/vbd", f"/vm/{UUID}/name"):
            try:
                await guest.write(path, b"no")
            except PermissionDenied:
                continue
            raise AssertionError(f"the guest could write {path}")

    async with xs.watch("@releaseDomain") as rel:
        await rel.get(timeout=5)
        await remove_domain(xs, 7)
        assert (await rel.get(timeout=5)).path == "@releaseDomain"
    assert not await xs.exists(dom)
    assert not await xs.exists(f"/vm/{UUID}")
    assert not await xs.is_domain_introduced(7)


async def test_make_domain_replaces_stale_trees(xsenv: XsEnv) -> None:
    xs = xsenv.dom0
    await xs.write("/local/domain/3/stale", b"left over")
    rec = DomainRecord(3, "fresh", UUID)
    await make_domain(xs, rec)
    assert not await xs.exists("/local/domain/3/stale")
    assert await xs.read("/local/domain/3/name") == b"fresh"
