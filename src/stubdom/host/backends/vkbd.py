"""The PV keyboard/pointer backend (qemu's ``xenkbd`` in dom0).

qemu's ``input_init`` publishes ``feature-abs-pointer``; ``backend-type`` must name a
backend this host provides (``qemu``; ``linux`` is accepted as the same thing).
"""

from __future__ import annotations

from typing import ClassVar

from stubdom.host.backends.generic import BackendDevice, BackendDriver, Nodes, SetupFailed


class VkbdBackend(BackendDriver):
    kind: ClassVar[str] = "vkbd"
    frontend_requires: ClassVar[tuple[str, ...]] = ("page-ref", "event-channel")

    async def setup(self, dev: BackendDevice) -> Nodes:
        btype = await dev.read("backend-type")
        if btype not in (None, "qemu", "linux"):
            raise SetupFailed(f"unknown backend-type {btype!r} (want qemu or linux)")
        nodes: Nodes = {}
        if await dev.read("feature-abs-pointer") is None:
            nodes["feature-abs-pointer"] = "1"
        return nodes
