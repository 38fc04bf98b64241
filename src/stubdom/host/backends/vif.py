"""netback: a network interface whose dom0 end is a file in the run directory.

Setup plays netback's probe (the ``feature-*`` nodes) and the ``vif-bridge`` hotplug
script: it "creates" the interface ``vif<domid>.<devid>`` (or ``vifname``) as
``<run_dir>/net/<ifname>``, naming its MAC and bridge, and reports
``hotplug-status`` = ``connected``.  Teardown removes the interface.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

from stubdom.host.backends.generic import BackendDevice, BackendDriver, Nodes, SetupFailed
from stubdom.host.xenbus import valid_mac

NETBACK_FEATURES: Nodes = {
    "feature-sg": "1",
    "feature-gso-tcpv4": "1",
    "feature-gso-tcpv6": "1",
    "feature-ipv6-csum-offload": "1",
    "feature-rx-copy": "1",
    "feature-rx-flip": "0",
    "feature-multicast-control": "1",
    "feature-dynamic-multicast-control": "1",
    "feature-split-event-channels": "1",
    "multi-queue-max-queues": "1",
    "feature-ctrl-ring": "1",
}


def interface_file(run_dir: Path, name: str) -> Path:
    return run_dir / "net" / name


class VifBackend(BackendDriver):
    kind: ClassVar[str] = "vif"
    frontend_requires: ClassVar[tuple[str, ...]] = ("tx-ring-ref", "rx-ring-ref", "event-channel")

    async def _ifname(self, dev: BackendDevice) -> str:
        return await dev.read("vifname") or f"vif{dev.domid}.{dev.devid}"

    async def setup(self, dev: BackendDevice) -> Nodes:
        mac = await dev.read("mac")
        if mac is None or not valid_mac(mac):
            raise SetupFailed(f"bad mac {mac!r} (want xx:xx:xx:xx:xx:xx)")
        bridge = await dev.read("bridge") or ""
        ifname = await self._ifname(dev)
        path = interface_file(dev.run_dir, ifname)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"mac={mac}\nbridge={bridge}\nfrontend={dev.domid}\n")
        except OSError as exc:
            raise SetupFailed(f"cannot create interface {ifname}: {exc}") from exc
        dev.notes["ifname"] = ifname
        return {**NETBACK_FEATURES, "hotplug-status": "connected"}

    async def teardown(self, dev: BackendDevice) -> None:
        ifname = dev.notes.get("ifname")
        if ifname:
            with contextlib.suppress(OSError):
                interface_file(dev.run_dir, ifname).unlink()
