"""stubdom-minios with a fault: its pcifront thread raises once ``boom`` appears in the
stubdomain's home (a bug of the layer, after the application started)."""

from __future__ import annotations

import sys

from stubdom.minios import layer
from stubdom.minios.main import main
from stubdom.xenstore import Client


async def boom(client: Client) -> None:
    async with client.watch("boom") as w:
        while not await client.exists("boom"):
            await w.get()
    raise RuntimeError("injected fault")


layer.run_pcifront = boom  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
