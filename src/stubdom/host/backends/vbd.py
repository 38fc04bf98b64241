"""blkback: a disk backed by a file in dom0 (``type`` = ``phy``).

Setup plays the ``block`` hotplug script (the image must exist and allow the
``mode``; an empty ``params`` is an empty CD-ROM), connect publishes what blkback's
``connect()`` does: ``sectors``, ``info``, ``sector-size``... read by Mini-OS
blkfront and Linux alike once the backend is Connected.
"""

from __future__ import annotations

import errno
import os
from typing import ClassVar

from stubdom.host.backends.generic import BackendDevice, BackendDriver, Nodes, SetupFailed

SECTOR_SIZE = 512
#: xen/include/public/io/blkif.h ``VDISK_*`` bits of ``info``.
VDISK_CDROM = 1
VDISK_REMOVABLE = 2
VDISK_READONLY = 4


class VbdBackend(BackendDriver):
    kind: ClassVar[str] = "vbd"
    frontend_requires: ClassVar[tuple[str, ...]] = ("ring-ref", "event-channel")

    async def _image(self, dev: BackendDevice) -> str | None:
        """The image path, None for an empty CD-ROM; `SetupFailed` when unusable."""
        params = await dev.read("params")
        dtype = await dev.read("type") or "phy"
        if dtype != "phy":
            raise SetupFailed(f"unsupported disk backend type {dtype!r} (only phy)")
        if params is None:
            raise SetupFailed("no params node")
        if params == "":
            if await dev.read("device-type") == "cdrom":
                return None
            raise SetupFailed("empty params for a disk that is not a cdrom")
        if not params.startswith("/"):
            raise SetupFailed(f"params {params!r} is not an absolute path")
        if not os.path.exists(params):
            raise SetupFailed(f"{params} does not exist.", errno.ENOENT)
        if not os.path.isfile(params):
            raise SetupFailed(f"{params} is not a regular file.")
        want = os.R_OK | (os.W_OK if await self._writable(dev) else 0)
        if not os.access(params, want):
            mode = "read-write" if want & os.W_OK else "read-only"
            raise SetupFailed(f"{params} cannot be opened {mode}.", errno.EACCES)
        return params

    async def _writable(self, dev: BackendDevice) -> bool:
        mode = await dev.read("mode") or "r"
        if mode not in ("r", "w"):
            raise SetupFailed(f"bad mode {mode!r} (want r or w)")
        return mode == "w"

    async def setup(self, dev: BackendDevice) -> Nodes:
        image = await self._image(dev)
        nodes = {
            "feature-flush-cache": "1",
            "feature-max-indirect-segments": "256",
            "max-ring-page-order": "4",
            "multi-queue-max-queues": "1",
        }
        if image is not None:
            nodes["physical-device-path"] = os.path.realpath(image)
        nodes["hotplug-status"] = "connected"
        return nodes

    async def connect(self, dev: BackendDevice) -> Nodes:
        await super().connect(dev)
        image = await self._image(dev)
        size = os.path.getsize(image) if image is not None else 0
        info = 0
        if await dev.read("device-type") == "cdrom":
            info |= VDISK_CDROM
        if await dev.read("removable") == "1":
            info |= VDISK_REMOVABLE
        if not await self._writable(dev):
            info |= VDISK_READONLY
        return {
            "sectors": str(size // SECTOR_SIZE),
            "info": str(info),
            "sector-size": str(SECTOR_SIZE),
            "physical-sector-size": str(SECTOR_SIZE),
            "feature-barrier": "1",
        }
