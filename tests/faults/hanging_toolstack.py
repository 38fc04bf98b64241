"""The ``stubdom`` CLI, stopped for good at one named point so a test can SIGKILL it there.

    hanging_toolstack.py ROOT POINT FLAG [stubdom arguments...]

At POINT the process creates the file FLAG and then waits forever; the test waits for
FLAG, so the kill lands exactly at POINT whatever the machine's speed.  Points:

``stub-records``
    create: the guest's domain and records exist, the stubdomain's domain too, but it
    has no xenstore record at all (no home, no /vm, no ``device-model-domid``).
``stub-unpause``
    create: both domains are complete and paused; the stubdomain is about to be started.
``save-image``
    save: the device model reported ``paused`` (the save marker is written), the guest
    is paused, and the save image is about to be encoded and written.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

POINTS = ("stub-records", "stub-unpause", "save-image")


def install(point: str, flag: Path) -> None:
    from stubdom.host.api import RemoteHypervisor
    from stubdom.toolstack import savefile, spawn

    async def hang(*_: Any, **__: Any) -> Any:
        flag.write_text(f"{os.getpid()}\n")
        await asyncio.Event().wait()

    def hang_sync(*_: Any, **__: Any) -> Any:
        flag.write_text(f"{os.getpid()}\n")
        while True:
            signal.pause()

    if point == "stub-records":
        make_domain = spawn.make_domain
        calls: list[str] = []

        async def second_hangs(xs: Any, rec: Any) -> None:
            calls.append(rec.name)
            if len(calls) == 2:  # the guest's, then the stubdomain's
                await hang()
            await make_domain(xs, rec)

        spawn.make_domain = second_hangs
    elif point == "stub-unpause":
        RemoteHypervisor.unpause = hang  # type: ignore[method-assign]
    elif point == "save-image":
        savefile.encode_save_image = hang_sync
        savefile.encode_save_image_frame = hang_sync  # what save_guest calls


def main() -> None:
    root, point, flag, *args = sys.argv[1:]
    sys.path.insert(0, os.path.join(root, "src"))
    sys.path.insert(0, root)
    if point not in POINTS:
        sys.exit(f"hanging_toolstack: unknown point {point!r}; one of {', '.join(POINTS)}")
    install(point, Path(flag))
    from stubdom.cli.main import main as cli_main

    sys.argv = ["stubdom", *args]
    cli_main()


if __name__ == "__main__":
    main()
