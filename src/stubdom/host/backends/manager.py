"""dom0's backend side: one watch on ``/local/domain/0/backend``, one worker per device.

Any event under the backend root names the device directory it touched; that
device's worker wakes up, reads its backend state, ``online`` and the frontend's
state, asks `BackendHandshake` for the next state and writes it (with whatever the
kind's driver publishes at that step) in one transaction that first checks the state
is still the one it read, so a concurrent toolstack write (removal) always wins.
Each served device also has a watch on its frontend's ``state`` node, the only
frontend node a backend reacts to.

Nothing a guest or a toolstack writes may stop the manager: an unreadable state, a
frontend path outside the guest's domain, a directory that disappears, or a driver
error is one log line, and the device waits for the next change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.host.backends.generic import BackendDevice, BackendDriver, Nodes, SetupFailed
from stubdom.host.backends.pci import PciBackend
from stubdom.host.backends.vbd import VbdBackend
from stubdom.host.backends.vfb import VfbBackend
from stubdom.host.backends.vif import VifBackend
from stubdom.host.backends.vkbd import VkbdBackend
from stubdom.host.xenbus import BackendHandshake, XenbusState, backend_root
from stubdom.wire.paths import domain_path
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    NoEntry,
    Transaction,
    Watch,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import pipelined

log = logging.getLogger(__name__)


Key = tuple[str, int, int]


def default_drivers() -> dict[str, BackendDriver]:
    """The kinds this host serves; ``console`` has its own backend (`consoles`)."""
    drivers: list[BackendDriver] = [
        VbdBackend(),
        VifBackend(),
        VfbBackend(),
        VkbdBackend(),
        PciBackend(),
    ]
    return {d.kind: d for d in drivers}


@dataclass
class _Entry:
    device: BackendDevice
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    fe_watch: Watch | None = None
    fe_task: asyncio.Task[None] | None = None
    fe_watched: str | None = None


def _parse_state(dev: BackendDevice, what: str, raw: str | None) -> XenbusState | None:
    """The state in ``raw``; None (after one log line) for a value that is not a state."""
    if raw is None:
        return XenbusState.UNKNOWN
    state = XenbusState.parse(raw)
    if state is XenbusState.UNKNOWN and raw.strip() != "0":
        dev.warn_once(f"{what}={raw}", "%s %r is not a xenbus state; ignored", what, raw)
        return None
    return state


class BackendManager:
    """Serves the vbd, vif, vfb, vkbd and pci backends of the backend domain (dom0)."""

    def __init__(
        self,
        client: Client,
        run_dir: Path,
        *,
        drivers: Mapping[str, BackendDriver] | None = None,
        backend_domid: int = 0,
    ) -> None:
        self.client = client
        self.run_dir = Path(run_dir)
        self.drivers = dict(drivers) if drivers is not None else default_drivers()
        self.backend_domid = backend_domid
        self.root = backend_root(backend_domid)
        self._entries: dict[Key, _Entry] = {}
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._handshake = BackendHandshake()

    @property
    def devices(self) -> dict[Key, BackendDevice]:
        """The devices being served, by (kind, frontend domid, devid)."""
        return {k: e.device for k, e in self._entries.items()}

    async def start(self) -> None:
        """Watch the backend root; the watch's first event makes us scan what exists."""
        self._watch = self.client.watch(self.root)
        await self._watch.start()
        self._task = asyncio.get_running_loop().create_task(
            self._watch_loop(self._watch), name=f"backends {self.root}"
        )
        log.info("serving %s backends under %s", ", ".join(sorted(self.drivers)), self.root)

    async def stop(self) -> None:
        """Stop watching and serving; the xenstore records are left as they are."""
        tasks = [self._task] if self._task else []
        for entry in self._entries.values():
            tasks += [t for t in (entry.task, entry.fe_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        watches = [self._watch] + [e.fe_watch for e in self._entries.values()]
        for watch in watches:
            if watch is not None:
                with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
                    await watch.stop()
        self._entries.clear()
        self._watch = self._task = None

    # -- dispatch ------------------------------------------------------------------------

    async def _watch_loop(self, watch: Watch) -> None:
        try:
            async for event in watch:
                try:
                    await self._on_event(event.path)
                except (XenStoreError, XenStoreTimeout) as exc:
                    log.warning("backend event %s: %s", event.path, exc)
        except ConnectionClosed:
            log.info("xenstore connection closed; backends stop")

    async def _on_event(self, path: str) -> None:
        if path != self.root and not path.startswith(self.root + "/"):
            return
        parts = [p for p in path[len(self.root) :].split("/") if p]
        if parts and parts[0] not in self.drivers:
            return
        if len(parts) >= 3:
            try:
                domid, devid = int(parts[1]), int(parts[2])
            except ValueError:
                log.debug("ignoring %s: not a <domid>/<devid> directory", path)
                return
            self._kick((parts[0], domid, devid))
            return
        await self._scan(parts)

    async def _scan(self, parts: list[str]) -> None:
        """Kick every device below ``parts`` (kind[/domid]), the known ones included."""
        for key in list(self._entries):
            if list(map(str, key[: len(parts)])) == parts:
                self._kick(key)
        kinds = (
            [parts[0]] if parts else [k for k in await self._list(self.root) if k in self.drivers]
        )
        for kind in kinds:
            domids = [parts[1]] if len(parts) > 1 else await self._list(f"{self.root}/{kind}")
            for d in domids:
                for devid in await self._list(f"{self.root}/{kind}/{d}"):
                    try:
                        self._kick((kind, int(d), int(devid)))
                    except ValueError:
                        log.debug("ignoring %s/%s/%s/%s", self.root, kind, d, devid)

    async def _list(self, path: str) -> list[str]:
        try:
            return list(await self.client.list(path))
        except NoEntry:
            return []

    def _kick(self, key: Key) -> None:
        entry = self._entries.get(key)
        if entry is None:
            kind, domid, devid = key
            device = BackendDevice(
                client=self.client,
                kind=kind,
                domid=domid,
                devid=devid,
                path=f"{self.root}/{kind}/{domid}/{devid}",
                run_dir=self.run_dir,
                backend_domid=self.backend_domid,
            )
            entry = _Entry(device)
            self._entries[key] = entry
            entry.task = asyncio.get_running_loop().create_task(
                self._worker(key, entry), name=f"backend {device.name}"
            )
        entry.kick.set()

    # -- one device ------------------------------------------------------------------------

    async def _worker(self, key: Key, entry: _Entry) -> None:
        dev = entry.device
        while True:
            await entry.kick.wait()
            entry.kick.clear()
            try:
                if await self._step(entry):
                    break
            except ConnectionClosed:
                return
            except (XenStoreError, XenStoreTimeout) as exc:
                log.warning("%s: %s", dev.name, exc)
            except Exception:
                log.exception("%s: backend error; the device waits for the next change", dev.name)
        log.debug("%s: directory gone", dev.name)
        await self._forget(key, entry)

    async def _forget(self, key: Key, entry: _Entry) -> None:
        dev = entry.device
        if self._entries.get(key) is entry:
            del self._entries[key]
        await self._teardown(entry)
        if dev.failed:
            with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
                await self.client.rm(dev.error_path)

    async def _teardown(self, entry: _Entry) -> None:
        dev = entry.device
        await self._unwatch_frontend(entry)
        if not dev.torn_down:
            dev.torn_down = True
            try:
                await self.drivers[dev.kind].teardown(dev)
            except Exception:
                log.exception("%s: teardown failed", dev.name)

    async def _step(self, entry: _Entry) -> bool:
        """React once to the current state; True when the directory is gone."""
        dev = entry.device
        driver = self.drivers[dev.kind]
        raw_state = await dev.read("state")  # first, as the event that woke us found it
        if raw_state is None:
            return not await self.client.exists(dev.path)
        own = _parse_state(dev, "state", raw_state)
        if own is None:
            return False
        # One round trip for the rest of what every step looks at (the frontend's state
        # follows, once we know where the frontend is).
        raw_online, fe_path, fe_id = await pipelined(
            *(dev.read(node) for node in ("online", "frontend", "frontend-id"))
        )
        if own is XenbusState.INITIALISING and dev.last_state not in (
            None,
            XenbusState.INITIALISING,
        ):
            log.info("%s: directory re-created; starting over", dev.name)
            dev.reset()
            await self._unwatch_frontend(entry)
        dev.last_state = own
        online = self._online(dev, raw_online)
        await self._find_frontend(entry, fe_path, fe_id)
        fe_state = await self._frontend_state(dev)
        if fe_state is None:
            fe_state = XenbusState.UNKNOWN

        nodes: Nodes = {}
        try:
            if own in (XenbusState.RECONFIGURING, XenbusState.RECONFIGURED):
                nxt, nodes = await driver.reconfigure(dev, own, fe_state)
            else:
                if own is XenbusState.INITIALISING and online and not dev.set_up and not dev.failed:
                    nodes = await driver.setup(dev)
                ready = not dev.failed
                nxt = self._handshake.next_state(own, fe_state, online, ready)
                if dev.failed and nxt is XenbusState.INIT_WAIT:
                    nxt = None  # a failed device stays closed
                if nxt is XenbusState.CONNECTED:
                    nodes.update(await driver.connect(dev))
        except SetupFailed as exc:
            await self._fail(entry, own, exc)
            return False

        if nxt is None:
            if own is XenbusState.CLOSED and not online:
                await self._teardown(entry)
            return False
        if await self._apply(dev, own, nxt, nodes):
            if own is XenbusState.INITIALISING and nxt is XenbusState.INIT_WAIT:
                dev.set_up = True
            log.info("%s: %s -> %s", dev.name, own.name, nxt.name)
        entry.kick.set()  # look again: the new state may call for another step
        return False

    def _online(self, dev: BackendDevice, raw: str | None) -> bool:
        if raw not in (None, "0", "1"):
            dev.warn_once(f"online={raw}", "online %r is not 0 or 1; taken as 0", raw)
        return raw == "1"

    async def _find_frontend(self, entry: _Entry, path: str | None, fid: str | None) -> None:
        """Check ``frontend``/``frontend-id`` (as read) point into the guest; watch its
        state."""
        dev = entry.device
        prefix = domain_path(dev.domid) + "/"
        if path is None or fid != str(dev.domid) or not path.startswith(prefix):
            dev.warn_once(
                f"frontend={path}:{fid}",
                "frontend %r / frontend-id %r do not name a directory of domain %d; "
                "treating the frontend as absent",
                path,
                fid,
                dev.domid,
            )
            dev.frontend = None
            await self._unwatch_frontend(entry)
            return
        dev.frontend = path
        if entry.fe_watched == path:
            return
        await self._unwatch_frontend(entry)
        watch = self.client.watch(f"{path}/state")
        await watch.start()
        entry.fe_watch, entry.fe_watched = watch, path
        entry.fe_task = asyncio.get_running_loop().create_task(
            self._follow(entry, watch), name=f"frontend of {dev.name}"
        )

    async def _follow(self, entry: _Entry, watch: Watch) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in watch:
                entry.kick.set()

    async def _unwatch_frontend(self, entry: _Entry) -> None:
        watch, task = entry.fe_watch, entry.fe_task
        entry.fe_watch = entry.fe_task = entry.fe_watched = None
        if watch is not None:
            with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
                await watch.stop()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _frontend_state(self, dev: BackendDevice) -> XenbusState | None:
        raw = await dev.read_frontend("state")
        return _parse_state(dev, "frontend state", raw)

    async def _apply(
        self, dev: BackendDevice, own: XenbusState, new: XenbusState, nodes: Nodes
    ) -> bool:
        """Write ``nodes`` and state ``new`` if the state is still ``own``."""

        async def body(t: Transaction) -> bool:
            try:
                current = XenbusState.parse(await t.read(f"{dev.path}/state"))
            except NoEntry:
                return False
            if current is not own:
                return False
            await pipelined(
                *(t.write(f"{dev.path}/{node}", value) for node, value in nodes.items()),
                t.write(f"{dev.path}/state", new.node()),
            )
            return True

        return await self.client.retry_transaction(body)

    async def _fail(self, entry: _Entry, own: XenbusState, exc: SetupFailed) -> None:
        """``xenbus_dev_fatal`` plus a failed hotplug script: report, then Closing."""
        dev = entry.device
        message = str(exc)
        log.error("%s: %s", dev.name, message)
        dev.failed = True
        nodes = {"hotplug-status": "error", "hotplug-error": message}
        if await self._apply(dev, own, XenbusState.CLOSING, nodes):
            await self.client.write(
                f"{dev.error_path}/error", f"{exc.errno or errno.EINVAL} {message}"
            )
            log.info("%s: %s -> CLOSING", dev.name, own.name)
        entry.kick.set()
