"""The frontend library as a domain program uses it, in-process and as a real process."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

import pytest

from stubdom.host.frontend import Frontend, FrontendError, list_devices
from stubdom.host.xenbus import XenbusState
from stubdom.protocol import Bdf
from stubdom.toolstack.devices import (
    PciFunction,
    Vbd,
    Vfb,
    Vif,
    Vkbd,
    add_device,
    add_pci,
    remove_device,
    wait_for_state,
)
from tests.support.device_host import GUARD, GUEST, Host


async def test_list_devices_reads_our_own_tree(host: Host) -> None:
    guest = await host.guest()
    assert await list_devices(guest, "vif") == []
    await add_device(host.dom0, GUEST, Vif(handle=2, mac="00:16:3e:00:00:02"))
    await add_device(host.dom0, GUEST, Vif(handle=0))
    await add_device(host.dom0, GUEST, Vbd(vdev="xvdb", target="", cdrom=True))
    assert await list_devices(guest, "vif") == [0, 2]
    assert await list_devices(guest, "vbd") == [51728]
    # Another domain's devices are not ours to see.
    other = await host.guest(6)
    assert await list_devices(other, "vif") == []


async def test_ring_nodes_are_published_like_minios(host: Host) -> None:
    guest = await host.guest()
    await add_device(host.dom0, GUEST, Vfb())
    await add_device(host.dom0, GUEST, Vkbd())
    async with (
        Frontend(guest, "vfb", 0, timeout=GUARD) as fb,
        Frontend(guest, "vkbd", 0, timeout=GUARD) as kbd,
    ):
        assert set(fb.nodes) >= {"page-ref", "event-channel", "protocol", "feature-update"}
        assert set(kbd.nodes) >= {"page-ref", "event-channel", "request-abs-pointer"}
        assert fb.nodes["page-ref"] != kbd.nodes["page-ref"]
        # The guest created them in its own directory: it owns them, dom0 reads them.
        perms = await host.dom0.get_perms("/local/domain/5/device/vfb/0/page-ref")
        assert [str(p) for p in perms] == ["n5", "r0"]
        assert fb.backend_id == 0


async def test_snapshot_of_named_nodes_only(host: Host) -> None:
    guest = await host.guest()
    await add_device(host.dom0, GUEST, Vif(mac="00:16:3e:00:00:07"))
    async with Frontend(
        guest, "vif", 0, timeout=GUARD, backend_nodes=("mac", "no-such"), own_nodes=()
    ) as dev:
        assert dev.info == {"mac": "00:16:3e:00:00:07"}
        assert dev.nodes == {}
        assert dev.mac == "00:16:3e:00:00:07"


async def test_backend_initiated_close_is_reported(host: Host) -> None:
    guest = await host.guest()
    ref = await add_device(host.dom0, GUEST, Vif(mac="00:16:3e:00:00:09"))
    async with Frontend(guest, "vif", 0, timeout=GUARD) as dev:
        assert not dev.closed.is_set()
        removal = asyncio.ensure_future(remove_device(host.dom0, ref, timeout=GUARD))
        await asyncio.wait_for(dev.closed.wait(), GUARD)
        assert dev.closed_by_backend
        assert dev.state is XenbusState.CLOSED
        assert await removal is True
    # Leaving the context after the backend closed is quiet.
    assert dev.closed.is_set()


async def test_missing_device_and_absent_backend(host: Host) -> None:
    guest = await host.guest()
    with pytest.raises(FrontendError, match="no device"):
        await Frontend(guest, "vbd", 768, timeout=GUARD).connect()
    await host.manager.stop()  # nobody serves the backend
    await add_device(host.dom0, GUEST, Vkbd())
    with pytest.raises(FrontendError, match="stuck in INITIALISING"):
        async with Frontend(guest, "vkbd", 0, timeout=0.2):
            pass


async def test_pcifront_follows_a_hot_add(host: Host) -> None:
    guest = await host.guest()
    first = Bdf(0, 3, 0, 0)
    await add_pci(host.dom0, GUEST, PciFunction(first), domain_name="g-dm", starting=True)
    async with Frontend(guest, "pci", 0, timeout=GUARD) as dev:
        assert dev.nodes["magic"] == "7"
        await add_pci(host.dom0, GUEST, PciFunction(Bdf(0, 5, 2, 0)), domain_name="g-dm")
        functions = await dev.pci_functions()
        assert [(str(f.physical), str(f.virtual), f.state) for f in functions] == [
            ("0000:03:00.0", "0000:00:00.0", XenbusState.INITIALISED),
            ("0000:05:02.0", "0000:00:01.0", XenbusState.INITIALISED),
        ]
        assert dev.state is XenbusState.CONNECTED
        assert await dev.physical_to_virtual("0000:09:00.0") is None


SCRIPT = textwrap.dedent(
    """
    import asyncio

    from stubdom.host.frontend import Frontend, list_devices
    from stubdom.xenstore import Client


    async def main() -> None:
        async with await Client.connect() as xs:  # $XENSTORED_PATH: our own connection
            (devid,) = await list_devices(xs, "vif")
            async with Frontend(xs, "vif", devid, timeout=20) as nic:
                print(nic.mac, nic.state.name, flush=True)


    asyncio.run(main())
    """
)


async def test_frontend_in_a_real_domain_process(host: Host) -> None:
    await host.guest()
    ref = await add_device(host.dom0, GUEST, Vif(handle=3, mac="00:16:3e:5a:5a:01"))
    script = host.run_dir / "domain.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "XENSTORED_PATH": str(host.server.domain_socket(GUEST))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["00:16:3e:5a:5a:01", "CONNECTED"]
    # The program closed the device on its way out; the backend followed.
    await wait_for_state(host.dom0, f"{ref.backend}/state", XenbusState.CLOSED, GUARD)
    assert await host.read(f"{ref.frontend}/state") == "6"
    assert await remove_device(host.dom0, ref, timeout=GUARD) is True
