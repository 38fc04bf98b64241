"""Device add/remove as libxl writes it, served by dom0's backends, met by a real frontend.

Every test runs an in-process xenstored, a dom0 client (the toolstack), a
`BackendManager`, and the frontend library over domain 5's own unprivileged
connection, so permissions are those a real guest has.  Waits are on watches; the
timeouts are only failure guards.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from stubdom.host.frontend import Frontend, FrontendError
from stubdom.host.xenbus import XenbusState
from stubdom.protocol import Bdf
from stubdom.toolstack.devices import (
    Console,
    DeviceExists,
    DeviceFailed,
    DeviceRef,
    DeviceTimeout,
    PciFunction,
    Vbd,
    Vfb,
    Vif,
    Vkbd,
    add_device,
    add_pci,
    disk_devid,
    pci_ref,
    remove_device,
    remove_pci,
    wait_device_connection,
    wait_for_state,
)
from stubdom.xenstore import Client, NoEntry, PermissionDenied
from tests.support.device_host import GUARD, GUEST, Host


def image(host: Host, size: int = 1 << 20) -> Path:
    path = host.run_dir / "disk.img"
    path.write_bytes(b"\0" * size)
    return path


def device_for(kind: str, host: Host) -> Vbd | Vif | Vfb | Vkbd:
    if kind == "vbd":
        return Vbd(vdev="xvda", target=str(image(host)))
    if kind == "vif":
        return Vif(handle=0, mac="00:16:3e:12:34:56")
    if kind == "vfb":
        return Vfb()
    return Vkbd()


async def exists(client: Client, path: str) -> bool:
    return await client.exists(path)


# -- the records ----------------------------------------------------------------------------


def test_disk_devids() -> None:
    assert disk_devid("xvda") == 51712
    assert disk_devid("xvdb1") == 51729
    assert disk_devid("hda") == 768
    assert disk_devid("hdc") == 22 << 8
    assert disk_devid("sdb") == 2064
    assert disk_devid("d0p1") == 51713
    assert disk_devid("xvdq") == (1 << 28) | (16 << 8)
    with pytest.raises(ValueError):
        disk_devid("floppy")


async def test_vbd_records_and_permissions(host: Host) -> None:
    """The nodes and perms of libxl's device_disk_add + libxl__device_generic_add."""
    await host.manager.stop()  # look at the records before any backend touches them
    disk = Vbd(vdev="xvda", target="/srv/img", readwrite=False)
    ref = await add_device(host.dom0, GUEST, disk)
    be, fe = "/local/domain/0/backend/vbd/5/51712", "/local/domain/5/device/vbd/51712"
    assert (ref.backend, ref.frontend, ref.libxl) == (be, fe, "/libxl/5/device/vbd/51712")
    back = {n: await host.read(f"{be}/{n}") for n in await host.dom0.list(be)}
    assert back == {
        "frontend": fe,
        "frontend-id": "5",
        "online": "1",
        "state": "1",
        "params": "/srv/img",
        "script": "/etc/xen/scripts/block",
        "removable": "0",
        "bootable": "1",
        "dev": "xvda",
        "type": "phy",
        "mode": "r",
        "device-type": "disk",
        "discard-enable": "0",
    }
    front = {n: await host.read(f"{fe}/{n}") for n in await host.dom0.list(fe)}
    assert front == {
        "backend": be,
        "backend-id": "0",
        "state": "1",
        "virtual-device": "51712",
        "device-type": "disk",
        "trusted": "1",
    }
    assert [str(p) for p in await host.dom0.get_perms(be)] == ["n0", "r5"]
    assert [str(p) for p in await host.dom0.get_perms(f"{be}/params")] == ["n0", "r5"]
    assert [str(p) for p in await host.dom0.get_perms(fe)] == ["n5", "r0"]
    assert [str(p) for p in await host.dom0.get_perms(f"{fe}/state")] == ["n5", "r0"]
    assert await host.read("/libxl/5/device/vbd/51712/params") == "/srv/img"
    with pytest.raises(DeviceExists):
        await add_device(host.dom0, GUEST, disk)


async def test_vif_vfb_vkbd_console_records(host: Host) -> None:
    await host.manager.stop()
    await add_device(host.dom0, GUEST, Vif(handle=1, mac="00:16:3E:AA:BB:CC", ip="10.0.0.2"))
    be, fe = "/local/domain/0/backend/vif/5/1", "/local/domain/5/device/vif/1"
    back = {n: await host.read(f"{be}/{n}") for n in await host.dom0.list(be)}
    assert back == {
        "frontend": fe,
        "frontend-id": "5",
        "online": "1",
        "state": "1",
        "script": "/etc/xen/scripts/vif-bridge",
        "mac": "00:16:3e:aa:bb:cc",
        "ip": "10.0.0.2",
        "bridge": "xenbr0",
        "handle": "1",
        "type": "vif",
        "hotplug-status": "",
    }
    assert await host.read(f"{fe}/mac") == "00:16:3e:aa:bb:cc"
    assert await host.read(f"{fe}/handle") == "1"
    # mtu is a read-only frontend entry (ro_front): owned by dom0, readable by the guest.
    assert [str(p) for p in await host.dom0.get_perms(f"{fe}/mtu")] == ["n0", "r5"]

    await add_device(host.dom0, GUEST, Vfb())
    be = "/local/domain/0/backend/vfb/5/0"
    got = {n: await host.read(f"{be}/{n}") for n in await host.dom0.list(be)}
    keys = ("vnc", "vnclisten", "vncdisplay", "vncunused", "sdl", "opengl")
    assert {k: got[k] for k in keys} == {
        "vnc": "1",
        "vnclisten": "127.0.0.1",
        "vncdisplay": "0",
        "vncunused": "1",
        "sdl": "0",
        "opengl": "0",
    }
    await add_device(host.dom0, GUEST, Vkbd())
    assert await host.read("/local/domain/0/backend/vkbd/5/0/backend-type") == "qemu"

    await add_device(host.dom0, GUEST, Console(number=1, output="file:/var/lib/xen/qemu-save.4"))
    be, fe = "/local/domain/0/backend/console/5/1", "/local/domain/5/device/console/1"
    assert await host.read(f"{be}/protocol") == "vt100"
    assert await host.read(f"{be}/state") == "1"
    assert await host.read(f"{fe}/state") == "1"
    assert await host.read(f"{fe}/protocol") == "vt100"
    assert await host.read(f"{fe}/output") == "file:/var/lib/xen/qemu-save.4"
    assert await host.read(f"{fe}/limit") == "1048576"
    assert await host.read(f"{fe}/type") == "ioemu"
    assert await host.read(f"{fe}/tty") == ""
    assert [str(p) for p in await host.dom0.get_perms(f"{fe}/output")] == ["n0", "r5"]
    assert [str(p) for p in await host.dom0.get_perms(fe)] == ["n5", "r0"]
    # Console 0: the frontend is /local/domain/5/console, read-only for the guest.
    await add_device(host.dom0, GUEST, Console(number=0, output="pty", port=2, ring_ref=1234))
    fe = "/local/domain/5/console"
    assert [str(p) for p in await host.dom0.get_perms(fe)] == ["n0", "r5"]
    assert await host.read(f"{fe}/ring-ref") == "1234"
    assert not await host.dom0.exists(f"{fe}/state")


# -- the handshake, kind by kind ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vbd", "vif", "vfb", "vkbd"])
async def test_each_kind_connects_and_is_removed(host: Host, kind: str) -> None:
    guest = await host.guest()
    device = device_for(kind, host)
    ref = await add_device(host.dom0, GUEST, device)
    assert await wait_device_connection(host.dom0, ref, GUARD) in (
        XenbusState.INIT_WAIT,
        XenbusState.CONNECTED,
    )
    async with Frontend(guest, kind, ref.devid, timeout=GUARD) as dev:
        assert dev.state is XenbusState.CONNECTED
        assert await host.state(ref.backend) is XenbusState.CONNECTED
        assert await host.state(ref.frontend) is XenbusState.CONNECTED
        assert dev.backend == ref.backend
        if kind == "vbd":
            assert (dev.sectors, dev.sector_size, dev.readonly) == (2048, 512, False)
            assert dev.info["feature-flush-cache"] == "1"
            assert await host.read(f"{ref.backend}/hotplug-status") == "connected"
            assert await host.read(f"{ref.frontend}/protocol") == "x86_64-abi"
        if kind == "vif":
            assert dev.mac == "00:16:3e:12:34:56"
            assert dev.info["feature-rx-copy"] == "1"
            assert (host.run_dir / "net" / "vif5.0").read_text().startswith("mac=00:16:3e")
            for node in ("tx-ring-ref", "rx-ring-ref", "event-channel"):
                assert await host.dom0.exists(f"{ref.frontend}/{node}")
        if kind == "vfb":
            assert dev.info["feature-resize"] == "1"
        if kind == "vkbd":
            assert dev.info["feature-abs-pointer"] == "1"

        assert await remove_device(host.dom0, ref, timeout=GUARD) is True
        await dev.wait_closed(GUARD)
        assert dev.closed_by_backend
        assert dev.state is XenbusState.CLOSED
    for path in (ref.backend, ref.frontend, ref.libxl):
        assert not await host.dom0.exists(path)
    assert not await host.dom0.exists("/local/domain/0/backend/" + kind)  # path cleanup
    if kind == "vif":
        assert not (host.run_dir / "net" / "vif5.0").exists()


async def test_frontend_close_then_reconnect(host: Host) -> None:
    """A frontend leaving closes both ends; the device stays and can connect again."""
    guest = await host.guest()
    ref = await add_device(host.dom0, GUEST, Vif(mac="00:16:3e:00:00:07"))
    async with Frontend(guest, "vif", 0, timeout=GUARD) as dev:
        pass
    assert dev.state is XenbusState.CLOSED and not dev.closed_by_backend
    await wait_for_state(host.dom0, f"{ref.backend}/state", XenbusState.CLOSED, GUARD)
    assert await host.read(f"{ref.backend}/online") == "1"
    async with Frontend(guest, "vif", 0, timeout=GUARD) as again:
        assert await host.state(ref.backend) is XenbusState.CONNECTED
        assert again.mac == "00:16:3e:00:00:07"
    assert await remove_device(host.dom0, ref, timeout=GUARD)
    assert not await host.dom0.exists(ref.backend)


async def test_forced_removal_just_removes(host: Host) -> None:
    guest = await host.guest()
    ref = await add_device(host.dom0, GUEST, Vif())
    async with Frontend(guest, "vif", 0, timeout=GUARD) as dev:
        assert await remove_device(host.dom0, ref, force=True) is False
        await dev.wait_closed(GUARD)
        assert dev.closed_by_backend
    for path in (ref.backend, ref.frontend, ref.libxl):
        assert not await host.dom0.exists(path)
    # The manager noticed the directory went away and forgot the device.
    await add_device(host.dom0, GUEST, Vif(handle=1))
    await wait_for_state(
        host.dom0, "/local/domain/0/backend/vif/5/1/state", XenbusState.INIT_WAIT, GUARD
    )
    assert ("vif", GUEST, 0) not in host.manager.devices


async def test_frontend_that_never_shows_up(host: Host) -> None:
    """Nobody runs the frontend: removal still completes (backend closes on its own)."""
    ref = await add_device(host.dom0, GUEST, Vkbd())
    await wait_for_state(host.dom0, f"{ref.backend}/state", XenbusState.INIT_WAIT, GUARD)
    assert await remove_device(host.dom0, ref, timeout=GUARD) is True
    assert not await host.dom0.exists(ref.backend)
    assert not await host.dom0.exists(ref.frontend)


async def test_a_state_wait_that_runs_out_says_what_the_node_held(host: Host) -> None:
    """Issue 12: the state seen and the one awaited, in Xen's words; never a bare list."""
    path = "/tool/a-backend/state"  # none of the host's backends touches it
    await host.dom0.write(path, XenbusState.INIT_WAIT.node())
    with pytest.raises(DeviceTimeout) as err:
        await wait_for_state(host.dom0, path, XenbusState.CONNECTED, 0.2)
    assert str(err.value) == f"{path} is 2 (InitWait) after 0.2 s, not 4 (Connected)"


async def test_domain_dies_mid_handshake(host: Host) -> None:
    """The guest's tree vanishes while the backend waits: removal still completes."""
    await host.guest()
    ref = await add_device(host.dom0, GUEST, Vfb())
    await wait_for_state(host.dom0, f"{ref.backend}/state", XenbusState.INIT_WAIT, GUARD)
    await host.dom0.rm("/local/domain/5")
    await host.dom0.release(GUEST)
    assert await remove_device(host.dom0, ref, timeout=GUARD) is True
    assert not await host.dom0.exists(ref.backend)


async def test_backend_that_never_closes_is_forced_after_the_timeout(host: Host) -> None:
    """No backend at all (manager stopped): libxl's escalation, then the records go."""
    await host.manager.stop()
    ref = await add_device(host.dom0, GUEST, Vif())
    assert await remove_device(host.dom0, ref, timeout=0.2) is False
    assert not await host.dom0.exists(ref.backend)
    assert not await host.dom0.exists(ref.frontend)


# -- failures and bad values ----------------------------------------------------------------


async def test_vbd_with_missing_image_fails_cleanly(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    guest = await host.guest()
    missing = host.run_dir / "nope.img"
    ref = await add_device(host.dom0, GUEST, Vbd(vdev="xvdb", target=str(missing)))
    with (
        caplog.at_level(logging.ERROR, logger="stubdom.host.backends"),
        pytest.raises(DeviceFailed, match="does not exist"),
    ):
        await wait_device_connection(host.dom0, ref, GUARD)
    await wait_for_state(host.dom0, f"{ref.backend}/state", XenbusState.CLOSED, GUARD)
    assert await host.read(f"{ref.backend}/hotplug-status") == "error"
    assert await host.read(f"{ref.backend}/hotplug-error") == f"{missing} does not exist."
    error_node = "/local/domain/0/error/backend/vbd/5/51728/error"
    assert await host.read(error_node) == f"2 {missing} does not exist."
    assert [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    with pytest.raises(FrontendError, match="does not exist"):
        async with Frontend(guest, "vbd", ref.devid, timeout=GUARD):
            pass
    assert await host.state(ref.backend) is XenbusState.CLOSED  # a failed device never reconnects
    assert await remove_device(host.dom0, ref, timeout=GUARD) is True
    assert not await host.dom0.exists(ref.backend)
    await _settled(host)
    assert not await host.dom0.exists(error_node)


async def _settled(host: Host) -> None:
    """Let the manager process what it has been told (a round trip through a watch)."""
    probe = await add_device(host.dom0, 9, Vkbd(id=7))
    await wait_for_state(host.dom0, f"{probe.backend}/state", XenbusState.INIT_WAIT, GUARD)
    await remove_device(host.dom0, probe, force=True)


async def test_empty_cdrom_connects_with_zero_sectors(host: Host) -> None:
    guest = await host.guest()
    ref = await add_device(
        host.dom0, GUEST, Vbd(vdev="hdc", target="", cdrom=True, readwrite=False)
    )
    async with Frontend(guest, "vbd", ref.devid, timeout=GUARD) as dev:
        assert dev.sectors == 0
        assert int(dev.info["info"]) & 1  # VDISK_CDROM
        assert dev.readonly


async def test_guest_cannot_write_backend_or_readonly_nodes(host: Host) -> None:
    guest = await host.guest()
    ref = await add_device(host.dom0, GUEST, Vif())
    async with Frontend(guest, "vif", 0, timeout=GUARD):
        with pytest.raises(PermissionDenied):
            await guest.write(f"{ref.backend}/state", "6")
        with pytest.raises(PermissionDenied):
            await guest.write(f"{ref.backend}/mac", "00:16:3e:66:66:66")
        with pytest.raises(PermissionDenied):
            await guest.write("device/vif/0/mtu", "9000")  # read-only frontend entry
        with pytest.raises((NoEntry, PermissionDenied)):
            await guest.read("/libxl/5/device/vif/0/mac")
        # It can read the backend (that is how it learns the features).
        assert (await guest.read(f"{ref.backend}/feature-sg")) == b"1"
        assert await host.state(ref.backend) is XenbusState.CONNECTED


async def test_manager_survives_garbage_state_nodes(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    guest = await host.guest()
    bad = await add_device(host.dom0, GUEST, Vkbd(id=0))
    await wait_for_state(host.dom0, f"{bad.backend}/state", XenbusState.INIT_WAIT, GUARD)
    with caplog.at_level(logging.WARNING, logger="stubdom.host.backends"):
        await guest.write("device/vkbd/0/state", "banana")  # the guest's own node
        await host.dom0.write(f"{bad.backend}/state", "\x00\xff")  # a toolstack bug
        await host.dom0.write(f"{bad.backend}/online", "maybe")
        # Another device is still served while the bad one sits there.
        ref = await add_device(host.dom0, GUEST, Vif())
        async with Frontend(guest, "vif", 0, timeout=GUARD):
            assert await host.state(ref.backend) is XenbusState.CONNECTED
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("'banana' is not a xenbus state" in w for w in warnings), warnings
    assert sum("is not a xenbus state" in w and "state '\\x00" in w for w in warnings) == 1
    # libxl's removal writes a proper state over the garbage; the backend closes.
    assert await remove_device(host.dom0, bad, timeout=GUARD) is True
    assert not await host.dom0.exists(bad.backend)


async def test_frontend_pointing_outside_its_domain_is_ignored(host: Host) -> None:
    await host.manager.stop()
    ref = await add_device(host.dom0, GUEST, Vkbd())
    await host.dom0.write(f"{ref.backend}/frontend", "/local/domain/0/device/vkbd/0")
    await host.manager.start()
    await wait_for_state(host.dom0, f"{ref.backend}/state", XenbusState.INIT_WAIT, GUARD)
    # The bogus frontend never counts as a live peer: removal closes at once.
    assert await remove_device(host.dom0, ref, timeout=GUARD) is True


# -- pci -------------------------------------------------------------------------------------


async def test_pci_connect_hot_add_and_hot_remove(host: Host) -> None:
    guest = await host.guest()
    first = Bdf.parse("0000:03:00.0")
    await add_pci(host.dom0, GUEST, PciFunction(first), domain_name="g-dm", starting=True)
    ref: DeviceRef = pci_ref(GUEST)
    be = ref.backend
    assert await host.read(f"{be}/domain") == "g-dm"
    assert await host.read(f"{be}/dev-0") == "0000:03:00.0"
    assert await host.read(f"{be}/key-0") == "0000:03:00.0"
    assert await host.read(f"{be}/opts-0") == (
        "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=relaxed"
    )
    assert await host.read(f"{be}/num_devs") == "1"
    async with Frontend(guest, "pci", 0, timeout=GUARD) as dev:
        assert await host.state(be) is XenbusState.CONNECTED
        assert await host.read(f"{be}/state-0") == "3"
        assert await host.read(f"{be}/vdev-0") == "0000:00:00.00"
        assert await host.read(f"{be}/root_num") == "1"
        assert await dev.physical_to_virtual(first) == Bdf(0, 0, 0, 0)

        # Hot-add function 1 of the same slot and a function of another device.
        sibling = Bdf.parse("0000:03:00.1")
        other = Bdf.parse("0000:04:00.0")
        assert await add_pci(host.dom0, GUEST, PciFunction(sibling), domain_name="g-dm") == 1
        assert await add_pci(host.dom0, GUEST, PciFunction(other), domain_name="g-dm") == 2
        assert await host.read(f"{be}/num_devs") == "3"
        assert [await host.read(f"{be}/state-{i}") for i in range(3)] == ["3", "3", "3"]
        assert await dev.physical_to_virtual(sibling) == Bdf(0, 0, 0, 1)
        assert await dev.physical_to_virtual("0000:04:00.0") == Bdf(0, 0, 1, 0)
        assert dev.state is XenbusState.CONNECTED and not dev.closed.is_set()

        # Hot-remove the sibling: entries renumbered, the rest unchanged.
        await remove_pci(host.dom0, GUEST, sibling, timeout=GUARD)
        assert await host.read(f"{be}/num_devs") == "2"
        assert await host.read(f"{be}/dev-1") == "0000:04:00.0"
        assert await host.read(f"{be}/vdev-1") == "0000:00:01.00"
        assert not await host.dom0.exists(f"{be}/dev-2")
        assert await dev.physical_to_virtual(sibling) is None
        assert await host.state(be) is XenbusState.CONNECTED

        # Removing the last functions takes the device away.
        await remove_pci(host.dom0, GUEST, other, timeout=GUARD)
        await remove_pci(host.dom0, GUEST, first, timeout=GUARD)
        await dev.wait_closed(GUARD)
        assert dev.closed_by_backend
    assert not await host.dom0.exists(be)
    assert not await host.dom0.exists(ref.frontend)


async def test_pci_bad_dev_entry_fails_setup(host: Host) -> None:
    await host.manager.stop()
    await add_pci(host.dom0, GUEST, PciFunction(Bdf(0, 3, 0, 0)), domain_name="g", starting=True)
    be = pci_ref(GUEST).backend
    await host.dom0.write(f"{be}/dev-0", "not-a-bdf")
    await host.manager.start()
    await wait_for_state(host.dom0, f"{be}/state", XenbusState.CLOSED, GUARD)
    assert "dev-0" in await host.read(f"{be}/hotplug-error")


async def test_a_hot_plug_never_reconfigures_into_another(host: Host) -> None:
    """Another toolstack sets Reconfiguring between our wait for Connected and our
    transaction: we must wait for Connected again, not write into its reconfiguration
    (three `pci-attach` at once left pciback never Connected, once in a CI run)."""
    await host.manager.stop()  # pciback is played by the test
    be = pci_ref(GUEST).backend
    first = PciFunction(Bdf(0, 3, 0, 0))
    await add_pci(host.dom0, GUEST, first, domain_name="g", starting=True)
    await host.dom0.write(f"{be}/state", XenbusState.CONNECTED.node())

    other = await Client.connect(str(host.server.socket_path))
    real_retry, real_watch = host.dom0.retry_transaction, host.dom0.watch
    sneaked = False
    waiting = asyncio.Event()

    async def retry(fn: Any, attempts: int | None = None) -> Any:
        nonlocal sneaked
        if not sneaked:  # the other toolstack's hot-plug starts right now
            sneaked = True
            await other.write(f"{be}/state", XenbusState.RECONFIGURING.node())
        return await real_retry(fn, attempts)

    def watch(path: str, *args: Any, **kwargs: Any) -> Any:
        if path == f"{be}/state" and sneaked:
            waiting.set()  # waiting for Connected after the other one began
        return real_watch(path, *args, **kwargs)

    host.dom0.retry_transaction = retry  # type: ignore[method-assign]
    host.dom0.watch = watch  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(
            add_pci(host.dom0, GUEST, PciFunction(Bdf(0, 4, 0, 0)), domain_name="g")
        )
        await asyncio.wait_for(waiting.wait(), GUARD)
        assert await host.read(f"{be}/num_devs") == "1"  # nothing written meanwhile
        assert not await host.dom0.exists(f"{be}/dev-1")
        waiting.clear()
        await other.write(f"{be}/state", XenbusState.CONNECTED.node())  # the other one is done
        await asyncio.wait_for(waiting.wait(), GUARD)  # ours reconfigures now
        assert await host.read(f"{be}/num_devs") == "2"
        assert await host.state(be) is XenbusState.RECONFIGURING
        await other.write(f"{be}/state", XenbusState.CONNECTED.node())
        assert await asyncio.wait_for(task, GUARD) == 1
    finally:
        await other.close()


async def test_concurrent_hot_plugs_all_connect(host: Host) -> None:
    """Four functions hot-plugged at once, then two removed at once, with the real
    pciback and pcifront: every one ends set up, on its own slot, and Connected."""
    await host.guest()
    be = pci_ref(GUEST).backend
    first = Bdf.parse("0000:03:00.0")
    await add_pci(host.dom0, GUEST, PciFunction(first), domain_name="g", starting=True)
    async with Frontend(host.guests[0], "pci", 0, timeout=GUARD) as dev:
        await wait_for_state(host.dom0, f"{be}/state", XenbusState.CONNECTED, GUARD)
        more = [Bdf(0, n, 0, 0) for n in range(4, 8)]
        got = await asyncio.gather(
            *(
                add_pci(host.dom0, GUEST, PciFunction(a), domain_name="g", timeout=GUARD)
                for a in more
            )
        )
        assert sorted(got) == [1, 2, 3, 4]
        assert [await host.read(f"{be}/state-{i}") for i in range(5)] == ["3"] * 5
        slots = {await dev.physical_to_virtual(a) for a in [first, *more]}
        assert None not in slots and len(slots) == 5
        await asyncio.gather(*(remove_pci(host.dom0, GUEST, a, timeout=GUARD) for a in more[:2]))
        assert await host.read(f"{be}/num_devs") == "3"
        assert await host.state(be) is XenbusState.CONNECTED
        assert await dev.physical_to_virtual(more[0]) is None
        assert await dev.physical_to_virtual(more[3]) is not None
