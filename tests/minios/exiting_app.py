"""An application that writes ``running``, then ends as the test tells it.

The test writes ``exit`` in the stubdomain's home: a number is the exit status, ``kill``
a SIGKILL of itself.  Run by stubdom-minios (argv ``-d <guest>`` among the dmargs).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from stubdom import protocol as proto
from stubdom.xenstore import Client


async def main() -> int:
    guest = int(os.environ[proto.ENV_TARGET])
    xs = await Client.connect()
    async with xs.watch("exit") as w:
        await xs.write(proto.dm_relative_path(guest, "state"), proto.State.RUNNING.value)
        print(f"application pid {os.getpid()}", flush=True)
        while (raw := await xs.read_optional("exit")) is None:
            await w.get()
    how = raw.decode()
    print(f"told to end: {how}", flush=True)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return int(how)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
