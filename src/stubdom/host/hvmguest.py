"""The PV drivers of an HVM guest that has no OS: the simulated host plays their part.

An HVM guest here runs no kernel, so nothing in it would read its xenstore nodes.  A
toolstack relies on two things a real guest's drivers do, and the host does them:

- ``control/shutdown`` (Linux's drivers/xen/manage.c ``shutdown_handler``): the request
  is acknowledged by emptying the node, then ``poweroff`` or ``halt`` shuts the domain
  down with reason poweroff and ``reboot`` with reason reboot, as ``SCHEDOP_shutdown``
  would; other requests are ignored.  A paused guest cannot run its drivers: it obeys
  once unpaused.
- ``cpu/<n>/availability``: the vCPUs the guest has online follow these nodes, as a
  guest brings vCPUs up or down on its device model's ACPI hot-plug event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from stubdom.host.hypervisor import ShutdownReason
from stubdom.wire.paths import control_shutdown_path, domain_path
from stubdom.xenstore import Client, NoEntry, Transaction, XenStoreError

log = logging.getLogger(__name__)

#: What manage.c does for each ``control/shutdown`` value it knows.
SHUTDOWN_REQUESTS: Mapping[str, ShutdownReason] = {
    "poweroff": ShutdownReason.POWEROFF,
    "halt": ShutdownReason.POWEROFF,
    "reboot": ShutdownReason.REBOOT,
}


def online_vcpus(availability: Mapping[str, bytes | None]) -> int:
    """How many vCPUs are online, given each ``cpu/<n>/availability`` value."""
    return sum(1 for value in availability.values() if value == b"online")


class HvmGuestDrivers:
    """Watches one HVM domain's ``control/shutdown`` and ``cpu`` nodes and acts on them."""

    def __init__(
        self,
        xs: Client,
        domid: int,
        *,
        shutdown: Callable[[ShutdownReason], Awaitable[None]],
        set_online_vcpus: Callable[[int], None],
        paused: Callable[[], bool],
    ) -> None:
        self.xs = xs
        self.domid = domid
        self._shutdown = shutdown
        self._set_online_vcpus = set_online_vcpus
        self._paused = paused
        self._wake_shutdown = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                self._follow(control_shutdown_path(self.domid), self._wake_shutdown,
                             self._check_shutdown)
            ),
            loop.create_task(
                self._follow(f"{domain_path(self.domid)}/cpu", asyncio.Event(),
                             self._check_vcpus)
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def unpaused(self) -> None:
        """A request that arrived while the guest was paused is acted on now."""
        self._wake_shutdown.set()

    async def _follow(
        self, path: str, wake: asyncio.Event, check: Callable[[], Awaitable[None]]
    ) -> None:
        def sink(_: object) -> None:
            wake.set()

        try:
            async with self.xs.watch(path, sink=sink):
                while True:
                    await wake.wait()
                    wake.clear()
                    try:
                        await check()
                    except (XenStoreError, ConnectionError) as e:
                        log.warning("domain %d: reading %s failed: %s", self.domid, path, e)
        except (XenStoreError, ConnectionError) as e:
            log.warning("domain %d: cannot watch %s: %s", self.domid, path, e)

    async def _check_shutdown(self) -> None:
        if self._paused():
            return
        path = control_shutdown_path(self.domid)

        async def take(t: Transaction) -> bytes | None:
            value = await t.read_optional(path)
            if value:
                await t.write(path, "")
            return value

        request = await self.xs.retry_transaction(take)
        if not request:
            return
        text = request.decode("utf-8", "replace")
        reason = SHUTDOWN_REQUESTS.get(text)
        if reason is None:
            log.info("domain %d: ignoring shutdown request %r", self.domid, text[:40])
            return
        log.info("domain %d: shutdown request %r: shutting down (%s)", self.domid, text,
                 reason.name.lower())
        await self._shutdown(reason)

    async def _check_vcpus(self) -> None:
        base = f"{domain_path(self.domid)}/cpu"
        try:
            names = list(await self.xs.directory(base))
        except NoEntry:
            return
        values = {n: await self.xs.read_optional(f"{base}/{n}/availability") for n in names}
        self._set_online_vcpus(online_vcpus(values))
