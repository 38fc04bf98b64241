"""A stubdomain "kernel" for the CLI tests: Mini-OS's start-up around the fake qemu-trad.

It reads ``target``, the guest's ``vm`` and dmargs as Mini-OS does, logs them to console
0, reads a saved state from console 2 when dmargs say ``-loadvm``, then runs
`FakeDeviceModel`, whose ``save`` writes a well-formed savevm stream to console 1 and
closes it (durable) before ``paused`` is written.  Run as a program by the simulated
hypervisor; the repository root comes as the first argument (the domain's environment
has no PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import sys


async def main() -> int:
    from stubdom import protocol as p
    from stubdom.devicemodel.stream import savevm_stream
    from stubdom.host.frontend.console import SyncConsole, open_console
    from stubdom.xenstore import Client
    from tests.toolstack.fake_dm import FakeDeviceModel

    xs = await Client.connect()
    guest = int((await xs.read(p.TARGET_RELATIVE)).decode())
    vm = (await xs.read(p.vm_path_node(guest))).decode()
    args = p.split_dmargs((await xs.read_optional(p.dmargs_path(vm)) or b"").decode())
    async with open_console(xs, p.CONSOLE_LOGGING) as log:
        await log.write(("dmargs: " + " ".join(args) + "\n").encode())
        if "-loadvm" in args:
            async with open_console(xs, p.CONSOLE_RESTORE) as restore:
                state = b""
                while chunk := await restore.read():
                    state += chunk
            await log.write(f"restored {len(state)} bytes\n".encode())

    def save(_: bytes) -> None:
        with SyncConsole(p.CONSOLE_SAVE) as con:
            con.write(savevm_stream({"guest": f"guest {guest}".encode()}))

    fake = FakeDeviceModel(xs, guest, save_sink=save)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(run_pcifront(xs)), loop.create_task(run_serial(xs))]
    try:
        await fake.run()
    finally:
        for t in tasks:
            t.cancel()
        await xs.close()
    return 0


async def run_pcifront(xs: object) -> None:
    """Mini-OS's pcifront thread: wait for ``device/pci/0``, connect, follow the backend
    through hot-plug reconfigurations until it closes."""
    from stubdom.host.frontend import Frontend
    from stubdom.xenstore import Client

    assert isinstance(xs, Client)
    async with xs.watch("device") as w:
        while not await xs.exists("device/pci/0/backend"):
            await w.get()
    async with Frontend(xs, "pci", 0) as dev:
        await dev.closed.wait()


async def run_serial(xs: object) -> None:
    """The guest's first serial port (console 3): greet, then echo what comes in."""
    from stubdom import protocol as p
    from stubdom.host.frontend.console import open_console
    from stubdom.xenstore import Client

    assert isinstance(xs, Client)
    if not await xs.exists(f"device/console/{p.CONSOLE_SERIAL}"):
        return
    async with open_console(xs, p.CONSOLE_SERIAL) as serial:
        await serial.write(b"serial0 ready\r\n")
        while data := await serial.read():
            await serial.write(data)


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    sys.exit(asyncio.run(main()))
