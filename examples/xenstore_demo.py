"""A short scripted xenstore session against the embedded xenstored.

Starts `stubdom xenstored` in-process on a temporary socket, then plays the parts a
toolstack, a guest and its device-model stubdomain play over xenstore: introduce the
domains, give them homes with libxl's permissions, let the stubdomain act for its
guest (SET_TARGET), watch, and run a transaction that loses a race and is retried.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from stubdom.wire.perms import parse_perm
from stubdom.xenstore import Client, PermissionDenied, Transaction
from stubdom.xenstored.server import XenStoreServer

GUEST, STUB = 1, 2


def say(who: str, text: str) -> None:
    print(f"{who:>9} | {text}")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="xs-demo-", dir="/tmp") as tmp:
        sock = Path(tmp) / "socket"
        server = XenStoreServer(sock)
        await server.start()
        say("xenstored", f"listening on {sock} (dom0); domains get {sock}.d/<domid>")

        async with await Client.connect(str(sock)) as dom0:
            for domid in (GUEST, STUB):
                await dom0.introduce(domid, 0, 10 + domid)
                home = f"/local/domain/{domid}"
                await dom0.mkdir(home)
                await dom0.set_perms(home, [parse_perm("n0"), parse_perm(f"r{domid}")])
                await dom0.mkdir(f"{home}/data")
                await dom0.set_perms(f"{home}/data", [parse_perm(f"n{domid}")])
                say("toolstack", f"introduced domain {domid}; {home} is n0,r{domid}")
            await dom0.set_target(STUB, GUEST)
            say("toolstack", f"SET_TARGET {STUB} -> {GUEST}: the stubdomain acts for the guest")

            async with (
                await Client.connect(str(server.domain_socket(GUEST))) as guest,
                await Client.connect(str(server.domain_socket(STUB))) as stub,
            ):
                await guest.write("data/secret", b"only mine")
                perms = ",".join(str(p) for p in await guest.get_perms("data/secret"))
                say("guest", f"wrote data/secret; it owns it: perms {perms}")
                try:
                    await guest.read("/local/domain/0")
                except PermissionDenied as e:
                    say("guest", f"reading dom0's home: {e.name} (as in cxenstored)")
                value = await stub.read(f"/local/domain/{GUEST}/data/secret")
                say("stubdom", f"reads the guest's node thanks to SET_TARGET: {value!r}")

                async with dom0.watch(f"/local/domain/{GUEST}/data") as w:
                    first = await w.get(timeout=5)
                    say("toolstack", f"watching: initial event {first.path}")
                    await guest.write("data/state", b"running")
                    ev = await w.get(timeout=5)
                    say("toolstack", f"event {ev.path} -> {await dom0.read(ev.path)!r}")

                await dom0.write("/demo/counter", b"0")
                attempts = 0

                async def bump(t: Transaction) -> None:
                    nonlocal attempts
                    attempts += 1
                    n = int(await t.read("/demo/counter"))
                    if attempts == 1:  # someone else commits in between
                        await guest.write("data/noise", b"x")
                        await dom0.write("/demo/counter", b"10")
                    await t.write("/demo/counter", str(n + 1).encode())

                await dom0.retry_transaction(bump, attempts=5)
                final = await dom0.read("/demo/counter")
                say("toolstack", f"transaction retried after EAGAIN: {attempts} attempts, "
                    f"counter = {final.decode()}")

            async with dom0.watch("@releaseDomain") as released:
                await released.get(timeout=5)  # the initial event
                for domid in (STUB, GUEST):
                    await dom0.release(domid)
                    await released.get(timeout=5)
                    gone = not server.domain_socket(domid).exists()
                    say("toolstack", f"released domain {domid}: @releaseDomain fired, "
                        f"socket removed: {gone}")
        await server.close()
        say("xenstored", "stopped")


if __name__ == "__main__":
    asyncio.run(main())
