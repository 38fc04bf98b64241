"""Bring a PV device up from inside a domain, the way a Mini-OS or Linux frontend does.

The program runs as domain D (``XENSTORED_PATH`` names its unprivileged xenstore
connection) and only uses relative paths, so it sees its own ``device/<kind>/<devid>``
directory, which the toolstack created and D owns, and may read the backend directory
the toolstack pointed it to.  The steps are the ones of ``FrontendHandshake``: once the
backend is in InitWait, publish the ring references and event channel (placeholders:
nothing is mapped) and go Initialised in one transaction; go Connected when the
backend is.  Leaving goes Closing and then Closed once the backend is closing too.
If the backend closes first (the toolstack removes the device), the frontend follows
to Closed by itself and `Frontend.closed` is set.

pcifront also follows pciback through Reconfiguring (7) and back to Connected when
functions are hot-plugged, as Mini-OS ``pcifront_watches`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from types import TracebackType

from stubdom.host.xenbus import FrontendHandshake, XenbusState
from stubdom.protocol import Bdf
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    NoEntry,
    PermissionDenied,
    Transaction,
    Watch,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import pipelined

log = logging.getLogger(__name__)


DEFAULT_TIMEOUT = 30.0
#: What Mini-OS and Linux on x86-64 publish as the ring ABI (XEN_IO_PROTO_ABI_NATIVE).
PROTOCOL = "x86_64-abi"
XEN_PCI_MAGIC = "7"

# Placeholder grant references and event channels: unique per process, never mapped.
# Grant refs start after Mini-OS's GNTTAB_NR_RESERVED_ENTRIES (8).
_grefs = itertools.count(8)
_ports = itertools.count(5)


def _ring_nodes(kind: str) -> dict[str, str]:
    """What each Mini-OS frontend writes before it switches state."""
    if kind == "vbd":
        return {
            "ring-ref": str(next(_grefs)),
            "event-channel": str(next(_ports)),
            "protocol": PROTOCOL,
        }
    if kind == "vif":
        return {
            "tx-ring-ref": str(next(_grefs)),
            "rx-ring-ref": str(next(_grefs)),
            "event-channel": str(next(_ports)),
            "request-rx-copy": "1",
        }
    if kind == "vfb":
        return {
            "page-ref": str(next(_grefs)),
            "event-channel": str(next(_ports)),
            "protocol": PROTOCOL,
            "feature-update": "1",
        }
    if kind == "vkbd":
        return {
            "page-ref": str(next(_grefs)),
            "event-channel": str(next(_ports)),
            "request-abs-pointer": "1",
        }
    if kind == "pci":
        return {
            "pci-op-ref": str(next(_grefs)),
            "event-channel": str(next(_ports)),
            "magic": XEN_PCI_MAGIC,
        }
    return {"ring-ref": str(next(_grefs)), "event-channel": str(next(_ports))}


class FrontendError(Exception):
    """The device could not be brought up or closed; the message says why."""


async def list_devices(client: Client, kind: str) -> list[int]:
    """The devids under our own ``device/<kind>``, in numeric order."""
    try:
        names = await client.list(f"device/{kind}")
    except NoEntry:
        return []
    return sorted(int(n) for n in names if n.isdigit())


@dataclass(frozen=True)
class PciFunctionInfo:
    """One ``dev-N`` of pciback: the host address and where the domain sees it."""

    index: int
    physical: Bdf
    virtual: Bdf | None
    state: XenbusState


class Frontend:
    """One device of this domain: ``async with Frontend(client, "vif", 0) as dev``."""

    def __init__(
        self,
        client: Client,
        kind: str,
        devid: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        backend_nodes: Collection[str] | None = None,
        own_nodes: Collection[str] | None = None,
    ) -> None:
        """``backend_nodes``/``own_nodes``: the nodes of each directory `info`/`nodes`
        hold once Connected (a program that knows what it needs, as Mini-OS's drivers
        do, reads only those); None: every node there."""
        self.client = client
        self.kind = kind
        self.devid = devid
        self.timeout = timeout
        #: Our directory, relative to our domain's home.
        self.path = f"device/{kind}/{devid}"
        self.backend = ""
        self.backend_id = 0
        self.state = XenbusState.UNKNOWN
        self.backend_state = XenbusState.UNKNOWN
        #: The backend's nodes and our own, as read once Connected.
        self.info: dict[str, str] = {}
        self.nodes: dict[str, str] = {}
        self._backend_nodes = backend_nodes
        self._own_nodes = own_nodes
        #: Set once both ends let go of the device, whoever started it.
        self.closed = asyncio.Event()
        self.closed_by_backend = False
        self._closing = False
        self._reconnecting = False
        self._cond = asyncio.Condition()
        self._kick = asyncio.Event()
        self._watch: Watch | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._handshake = FrontendHandshake()

    def __repr__(self) -> str:
        return f"<Frontend {self.path} {self.state.name} backend {self.backend_state.name}>"

    # -- bring-up and teardown -------------------------------------------------------------

    async def __aenter__(self) -> Frontend:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Walk the handshake to Connected; `FrontendError` if the backend refuses."""
        backend, backend_id, state = await pipelined(
            self._read(f"{self.path}/backend"),
            self._read(f"{self.path}/backend-id"),
            self._read(f"{self.path}/state"),
        )
        if backend is None:
            raise FrontendError(f"no device {self.path} (or no backend node in it)")
        self.backend = backend
        try:
            self.backend_id = int(backend_id or "0")
        except ValueError:
            self.backend_id = 0
        self.state = XenbusState.parse(state)
        if self.state is not XenbusState.INITIALISING:
            # A reconnect after a close (or a stale state): start over as a new frontend,
            # and give a Closed backend the time to see us and go back to InitWait.
            await self._set_state(XenbusState.INITIALISING)
            self._reconnecting = True
        self._watch = self.client.watch(f"{self.backend}/state")
        await self._watch.start()
        loop = asyncio.get_running_loop()
        self._running = True
        self._tasks = [
            loop.create_task(self._forward(self._watch), name=f"{self.path} watch"),
            loop.create_task(self._run(), name=f"{self.path} frontend"),
        ]
        try:
            await self._wait(lambda: self.state is XenbusState.CONNECTED or self.closed.is_set())
        except FrontendError:
            await self._stop()
            raise
        if self.closed.is_set():
            error = await self._read(f"{self.backend}/hotplug-error")
            await self._stop()
            raise FrontendError(
                f"{self.path}: the backend closed the device" + (f": {error}" if error else "")
            )
        self.info = await self._read_dir(self.backend, self._backend_nodes)
        self.nodes = await self._read_dir(self.path, self._own_nodes)
        log.info("%s connected to %s", self.path, self.backend)

    async def close(self) -> None:
        """Go Closing, then Closed once the backend is closing too (or gone)."""
        try:
            if not self.closed.is_set() and self._running:
                self._closing = True
                self._kick.set()
                await self._wait(self.closed.is_set)
        finally:
            await self._stop()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the device is closed (e.g. the toolstack removed it)."""
        await self._wait(self.closed.is_set, timeout)

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._watch is not None:
            with contextlib.suppress(XenStoreError, ConnectionClosed, XenStoreTimeout):
                await self._watch.stop()
            self._watch = None

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit), self._cond:
                await self._cond.wait_for(lambda: predicate() or not self._running)
        except TimeoutError:
            raise FrontendError(
                f"{self.path}: stuck in {self.state.name} with the backend in "
                f"{self.backend_state.name} for {limit:g} s"
            ) from None
        if not predicate():
            raise FrontendError(f"{self.path}: lost the xenstore connection")

    # -- the state machine -------------------------------------------------------------------

    async def _forward(self, watch: Watch) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in watch:
                self._kick.set()
        self._kick.set()

    async def _run(self) -> None:
        try:
            while not self.closed.is_set():
                await self._kick.wait()
                self._kick.clear()
                await self._react()
                async with self._cond:
                    self._cond.notify_all()
        except ConnectionClosed:
            log.info("%s: xenstore connection closed", self.path)
        except (XenStoreError, XenStoreTimeout) as exc:
            log.error("%s: frontend stopped: %s", self.path, exc)
        finally:
            self._running = False
            async with self._cond:
                self._cond.notify_all()

    async def _react(self) -> None:
        """Follow the backend until no further step applies."""
        while not self.closed.is_set():
            raw = await self._read(f"{self.backend}/state")
            if raw is None and not await self._backend_exists():
                self._mark_closed("the backend directory was removed")
                return
            self.backend_state = be = XenbusState.parse(raw)
            if await self._replaced(be):
                self._mark_closed("the toolstack replaced the device")
                return
            if self._reconnecting:
                if (
                    be is XenbusState.CLOSED
                    and not self._closing
                    and not await self._backend_failed()
                ):
                    return  # the backend has not seen our Initialising yet
                self._reconnecting = False
            nxt = self._pci_step(be) if self.kind == "pci" else None
            if nxt is None:
                nxt = self._handshake.next_state(self.state, be, self._closing)
            if nxt is None:
                return
            try:
                if nxt is XenbusState.INITIALISED:
                    await self._publish_rings()
                else:
                    await self._set_state(nxt)
            except (NoEntry, PermissionDenied):
                self._mark_closed("our device directory was removed")
                return
            log.debug("%s: %s (backend %s)", self.path, nxt.name, be.name)
            if nxt is XenbusState.CLOSED:
                self._mark_closed(None)

    async def _replaced(self, be: XenbusState) -> bool:
        """A connected device whose backend starts over may be a new device at the same
        path (a detach and an attach before we looked): its frontend directory is new
        too, in state Initialising, which we never write once connected."""
        if self.state is not XenbusState.CONNECTED or be > XenbusState.INIT_WAIT:
            return False
        return await self._read(f"{self.path}/state") == str(int(XenbusState.INITIALISING))

    async def _backend_exists(self) -> bool:
        # A guest may not even learn that a node is missing once its parents are gone.
        try:
            return await self.client.exists(self.backend)
        except PermissionDenied:
            return False

    async def _backend_failed(self) -> bool:
        return await self._read(f"{self.backend}/hotplug-status") == "error"

    def _pci_step(self, be: XenbusState) -> XenbusState | None:
        """pcifront_watches: follow pciback into Reconfiguring and back to Connected."""
        if self._closing:
            return None
        if self.state is XenbusState.CONNECTED and be is XenbusState.RECONFIGURING:
            return XenbusState.RECONFIGURING
        if self.state is XenbusState.RECONFIGURING and be is XenbusState.RECONFIGURED:
            return XenbusState.CONNECTED
        return None

    def _mark_closed(self, why: str | None) -> None:
        if not self._closing:
            self.closed_by_backend = True
            log.info("%s: closed by the backend%s", self.path, f" ({why})" if why else "")
        self.closed.set()

    async def _publish_rings(self) -> None:
        nodes = _ring_nodes(self.kind)

        async def body(t: Transaction) -> None:
            for node, value in nodes.items():
                await t.write(f"{self.path}/{node}", value)
            await t.write(f"{self.path}/state", XenbusState.INITIALISED.node())

        await self.client.retry_transaction(body)
        self.state = XenbusState.INITIALISED

    async def _set_state(self, state: XenbusState) -> None:
        await self.client.write(f"{self.path}/state", state.node())
        self.state = state

    def _read(self, path: str) -> Awaitable[str | None]:
        """A node's value; None if it is missing or (its parents gone) unreadable."""
        return self.client.read_text(path, denied_as_absent=True)

    async def _read_dir(self, path: str, only: Collection[str] | None = None) -> dict[str, str]:
        """The nodes of ``path`` (``only`` those named, if given) that exist."""
        if only is not None:
            names = list(only)
        else:
            try:
                names = await self.client.list(path)
            except (NoEntry, PermissionDenied):
                return {}
        values = await pipelined(*(self._read(f"{path}/{name}") for name in names))
        return {name: v for name, v in zip(names, values, strict=True) if v is not None}

    # -- what the backend told us ----------------------------------------------------------------

    @property
    def mac(self) -> str:
        """vif: the MAC address (from our own ``mac``, as netfront reads it)."""
        return self.nodes.get("mac") or self.info.get("mac", "")

    @property
    def sectors(self) -> int:
        """vbd: the size in sectors of ``sector_size`` bytes."""
        return int(self.info.get("sectors", "0"))

    @property
    def sector_size(self) -> int:
        return int(self.info.get("sector-size", "512"))

    @property
    def readonly(self) -> bool:
        """vbd: VDISK_READONLY in ``info``, or mode ``r``."""
        try:
            info = int(self.info.get("info", "0"))
        except ValueError:
            info = 0
        return bool(info & 4) or self.info.get("mode") == "r"

    async def pci_functions(self) -> list[PciFunctionInfo]:
        """pcifront: every ``dev-N`` of the backend, read now (they change on hot-plug)."""
        try:
            num = int(await self._read(f"{self.backend}/num_devs") or "0")
        except ValueError:
            return []
        out = []
        for i in range(num):
            try:
                physical = Bdf.parse(await self._read(f"{self.backend}/dev-{i}") or "")
            except ValueError:
                continue
            vdev = await self._read(f"{self.backend}/vdev-{i}")
            try:
                virtual = Bdf.parse(vdev) if vdev else None
            except ValueError:
                virtual = None
            state = XenbusState.parse(await self._read(f"{self.backend}/state-{i}"))
            out.append(PciFunctionInfo(i, physical, virtual, state))
        return out

    async def physical_to_virtual(self, address: Bdf | str) -> Bdf | None:
        """Mini-OS ``pcifront_physical_to_virtual``: where the host function shows up."""
        if isinstance(address, str):
            address = Bdf.parse(address)
        for fn in await self.pci_functions():
            if fn.physical == address:
                return fn.virtual
        return None
