"""The PV framebuffer backend (qemu's ``xenfb`` in dom0): checks its display config.

qemu's ``fb_init`` publishes ``feature-resize``; the frontend's ``page-ref`` and
``event-channel`` are mapped at connect.  No pixels are served: the simulated host
has no display, and ``vnc``/``sdl`` are only validated.
"""

from __future__ import annotations

from typing import ClassVar

from stubdom.host.backends.generic import BackendDevice, BackendDriver, Nodes, SetupFailed


class VfbBackend(BackendDriver):
    kind: ClassVar[str] = "vfb"
    frontend_requires: ClassVar[tuple[str, ...]] = ("page-ref", "event-channel")

    async def setup(self, dev: BackendDevice) -> Nodes:
        for node in ("vnc", "sdl", "vncunused", "opengl"):
            value = await dev.read(node)
            if value not in (None, "0", "1"):
                raise SetupFailed(f"{node} = {value!r}, want 0 or 1")
        if await dev.read("vnc") == "1" and not await dev.read("vnclisten"):
            raise SetupFailed("vnc enabled without vnclisten")
        return {"feature-resize": "1"}
