"""The toolstack side of PV devices: the xenstore records libxl writes to add and remove them.

Adding a device is ``libxl__device_generic_add``: in one transaction the backend
directory ``/local/domain/0/backend/<kind>/<domid>/<devid>`` (perms ``n0,r<domid>``:
only dom0 writes, the guest reads), the frontend directory (perms ``n<domid>,r0``: the
guest owns it) with its read-only entries (``n0,r<domid>``), and libxl's private copy
``/libxl/<domid>/device/<kind>/<devid>``.  Each side points at the other (``backend``,
``frontend``) and both start in state 1 (Initialising).  The entries per kind are the
ones of ``libxl_disk.c``, ``libxl_nic.c``, ``libxl_console.c``, ``libxl_vkb.c`` and
``libxl_pci.c``.

Removing one is ``libxl__initiate_device_generic_remove``: ``online`` = 0 and state 5
(Closing) in one transaction, a wait (a watch, 10 s) for the backend to reach 6
(Closed), then ``libxl__device_destroy`` removes the frontend, backend and libxl
directories.  A backend that never closes gets libxl's escalation: the frontend is
removed (so the backend sees its peer gone) and the wait is repeated once.

PCI functions are added to and removed from the one pciback device (devid 0) of a
domain as ``libxl__device_pci_add_xenstore`` / ``..._remove_xenstore`` do: ``dev-N``,
``state-N`` ... plus ``num_devs``, and state 7 (Reconfiguring) once the backend is
connected, which pciback answers with 8 (Reconfigured) and then 4 again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from stubdom.host.xenbus import (
    BACKEND_DOMID,
    XENCONSOLE_LIMIT,
    XENCONSOLE_PROTOCOL,
    XenbusState,
    backend_path,
    frontend_path,
    valid_mac,
)
from stubdom.protocol import Bdf
from stubdom.wire.paths import domain_path
from stubdom.xenstore import Client, NoEntry, Transaction, WaitTimeout
from stubdom.xenstore.pipeline import pipelined

T = TypeVar("T")

log = logging.getLogger(__name__)


#: libxl_internal.h: how long libxl waits for a backend to close or to come up.
LIBXL_DESTROY_TIMEOUT = 10.0
LIBXL_INIT_TIMEOUT = 10.0
#: libxl__wait_for_backend (pci) waits this long for Connected.
LIBXL_PCI_BACKEND_TIMEOUT = 10.0

XEN_SCRIPT_DIR = "/etc/xen/scripts"

#: ``struct xs_permissions`` vectors of libxl__device_generic_add, as wire strings.
Perms = list[str]


class DeviceError(Exception):
    """A device could not be added or removed; the message names it and the cause."""


class DeviceExists(DeviceError):
    """libxl's ERROR_DEVICE_EXISTS: the libxl directory of the device is already there."""


class DeviceTimeout(DeviceError, TimeoutError):
    """A backend did not reach the awaited state in time."""


class DeviceFailed(DeviceError):
    """The backend gave up on the device (Closing/Closed or ``hotplug-status`` error)."""


class BackendGone(DeviceError):
    """The node being waited on was removed."""


def libxl_path(domid: int, kind: str, devid: int) -> str:
    return f"/libxl/{domid}/device/{kind}/{devid}"


@dataclass(frozen=True)
class DeviceRef:
    """Which device: its kind, guest (frontend) domain, devid and backend domain."""

    kind: str
    domid: int
    devid: int
    backend_domid: int = BACKEND_DOMID

    @property
    def backend(self) -> str:
        return backend_path(self.domid, self.kind, self.devid, self.backend_domid)

    @property
    def frontend(self) -> str:
        return frontend_path(self.domid, self.kind, self.devid)

    @property
    def libxl(self) -> str:
        return libxl_path(self.domid, self.kind, self.devid)

    def __str__(self) -> str:
        return f"{self.kind} {self.devid} of domain {self.domid}"


# -- device specifications ----------------------------------------------------------------


@dataclass
class Device:
    """One device of a guest config; subclasses add the kind's own entries.

    ``backend_entries`` / ``frontend_entries`` / ``ro_frontend_entries`` are the
    ``back`` / ``front`` / ``ro_front`` flexarrays of libxl, without the common entries
    that `add_device` adds (``frontend-id``, ``online``, ``state``, ``backend-id``).
    """

    kind: ClassVar[str] = ""

    @property
    def devid(self) -> int:
        raise NotImplementedError

    backend_domid: int = field(default=BACKEND_DOMID, kw_only=True)

    def ref(self, domid: int) -> DeviceRef:
        return DeviceRef(self.kind, domid, self.devid, self.backend_domid)

    def backend_entries(self, domid: int) -> dict[str, str]:
        return {}

    def frontend_entries(self, domid: int) -> dict[str, str]:
        return {}

    def ro_frontend_entries(self, domid: int) -> dict[str, str]:
        return {}


_IDE_MAJORS = (3, 22, 33, 34, 56, 57, 88, 89, 90, 91)


def _disk_letters(text: str) -> int:
    """``a`` -> 0, ``z`` -> 25, ``aa`` -> 26 (bijective base 26, as libxl)."""
    n = 0
    for ch in text:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def disk_devid(vdev: str) -> int:
    """The devid of a virtual disk name: ``libxl__device_disk_dev_number``.

    ``xvda`` -> 51712, ``hda`` -> 768, ``sdb`` -> 2064, ``d0p1`` -> 51713, a plain
    number is taken as is.  Raises ValueError for anything else.
    """
    if vdev.isdigit():
        return int(vdev)
    m = re.fullmatch(r"(xvd|hd|sd)([a-z]+)(\d*)", vdev)
    if m:
        prefix, letters, part_text = m.groups()
        disk = _disk_letters(letters)
        part = int(part_text) if part_text else 0
    else:
        m = re.fullmatch(r"d(\d+)(?:p(\d+))?", vdev)
        if not m:
            raise ValueError(f"invalid or unsupported virtual disk identifier {vdev!r}")
        prefix, disk, part = "xvd", int(m.group(1)), int(m.group(2) or 0)
    if prefix == "hd":
        if disk >= 2 * len(_IDE_MAJORS) or part > 63:
            raise ValueError(f"IDE disk {vdev!r} out of range")
        return (_IDE_MAJORS[disk // 2] << 8) | ((disk % 2) << 6) | part
    if prefix == "sd":
        if disk > 15 or part > 15:
            raise ValueError(f"SCSI disk {vdev!r} out of range")
        return (8 << 8) | (disk << 4) | part
    if disk <= 15 and part <= 15:
        return (202 << 8) | (disk << 4) | part
    if disk > (1 << 20) - 1 or part > 255:
        raise ValueError(f"xen disk {vdev!r} out of range")
    return (1 << 28) | (disk << 8) | part


@dataclass
class Vbd(Device):
    """A disk (``libxl_device_disk``), backend ``phy``: ``target`` is the image path.

    An empty ``target`` is an empty CD-ROM drive (``cdrom`` must be set).
    """

    kind: ClassVar[str] = "vbd"
    vdev: str = "xvda"
    target: str = ""
    readwrite: bool = True
    cdrom: bool = False
    removable: bool = False
    discard: bool | None = None  # libxl defaults discard-enable to readwrite
    script: str = "block"
    direct_io_safe: bool = False

    @property
    def devid(self) -> int:
        return disk_devid(self.vdev)

    def backend_entries(self, domid: int) -> dict[str, str]:
        discard = self.readwrite if self.discard is None else self.discard
        e = {
            "params": self.target,
            "script": _abs_script(self.script),
            "removable": "1" if self.removable else "0",
            "bootable": "1",
            "dev": self.vdev,
            "type": "phy",
            "mode": "w" if self.readwrite else "r",
            "device-type": "cdrom" if self.cdrom else "disk",
        }
        if self.direct_io_safe:
            e["direct-io-safe"] = "1"
        e["discard-enable"] = "1" if discard else "0"
        return e

    def frontend_entries(self, domid: int) -> dict[str, str]:
        return {
            "virtual-device": str(self.devid),
            "device-type": "cdrom" if self.cdrom else "disk",
            "trusted": "1",
        }


@dataclass
class Vif(Device):
    """A network interface (``libxl_device_nic``) on netback."""

    kind: ClassVar[str] = "vif"
    handle: int = 0
    mac: str = "00:16:3e:00:00:01"
    bridge: str = "xenbr0"
    script: str | None = "vif-bridge"
    nictype: str = "vif"  # or "vif_ioemu"
    ip: str | None = None
    ifname: str | None = None
    mtu: int = 1500

    def __post_init__(self) -> None:
        if not valid_mac(self.mac):
            raise ValueError(f"invalid MAC address {self.mac!r} (want xx:xx:xx:xx:xx:xx)")

    @property
    def devid(self) -> int:
        return self.handle

    def backend_entries(self, domid: int) -> dict[str, str]:
        e: dict[str, str] = {}
        if self.script:
            e["script"] = _abs_script(self.script)
        if self.ifname:
            e["vifname"] = self.ifname
        e["mac"] = self.mac.lower()
        if self.ip:
            e["ip"] = self.ip
        if self.mtu != 1500:
            e["mtu"] = str(self.mtu)
        e.update(
            {
                "bridge": self.bridge,
                "handle": str(self.handle),
                "type": self.nictype,
                "hotplug-status": "",
            }
        )
        return e

    def frontend_entries(self, domid: int) -> dict[str, str]:
        return {"handle": str(self.handle), "mac": self.mac.lower(), "trusted": "1"}

    def ro_frontend_entries(self, domid: int) -> dict[str, str]:
        return {"mtu": str(self.mtu)}


@dataclass
class Vfb(Device):
    """A PV framebuffer (``libxl_device_vfb``); vnc defaults as libxl's setdefault."""

    kind: ClassVar[str] = "vfb"
    id: int = 0
    vnc: bool = True
    vnclisten: str = "127.0.0.1"
    vncpasswd: str | None = None
    vncdisplay: int = 0
    vncunused: bool = True
    sdl: bool = False
    opengl: bool = False
    display: str | None = None
    xauthority: str | None = None

    @property
    def devid(self) -> int:
        return self.id

    def backend_entries(self, domid: int) -> dict[str, str]:
        e = {"vnc": _b(self.vnc), "vnclisten": self.vnclisten}
        if self.vncpasswd is not None:
            e["vncpasswd"] = self.vncpasswd
        e.update(
            {
                "vncdisplay": str(self.vncdisplay),
                "vncunused": _b(self.vncunused),
                "sdl": _b(self.sdl),
                "opengl": _b(self.opengl),
            }
        )
        if self.xauthority:
            e["xauthority"] = self.xauthority
        if self.display:
            e["display"] = self.display
        return e


@dataclass
class Vkbd(Device):
    """A PV keyboard/mouse (``libxl_device_vkb``); xenstore kind ``vkbd``."""

    kind: ClassVar[str] = "vkbd"
    id: int = 0
    backend_type: str = "qemu"
    unique_id: str | None = None

    @property
    def devid(self) -> int:
        return self.id

    def backend_entries(self, domid: int) -> dict[str, str]:
        e = {"backend-type": self.backend_type}
        if self.unique_id:
            e["unique-id"] = self.unique_id
        return e


@dataclass
class Console(Device):
    """A console (``libxl__device_console``); console 0 lives at ``/local/domain/D/console``.

    ``port``/``ring_ref`` are the build state of a console 0 (ring set up by the domain
    builder); without them the console is a PV device with its own handshake.
    """

    kind: ClassVar[str] = "console"
    number: int = 0
    #: None writes no ``output`` node (libxl's restore console when not restoring).
    output: str | None = "pty"
    consback: str = "ioemu"  # or "xenconsoled"
    name: str | None = None
    connection: str | None = None
    path: str | None = None
    port: int | None = None
    ring_ref: int | None = None
    tty: str = ""

    @property
    def devid(self) -> int:
        return self.number

    @property
    def has_build_state(self) -> bool:
        return self.port is not None and self.ring_ref is not None

    def backend_entries(self, domid: int) -> dict[str, str]:
        e = {"protocol": XENCONSOLE_PROTOCOL}
        if self.name:
            e["name"] = self.name
        if self.connection:
            e["connection"] = self.connection
        if self.path:
            e["path"] = self.path
        return e

    def frontend_entries(self, domid: int) -> dict[str, str]:
        if self.has_build_state:
            return {}
        return {"state": XenbusState.INITIALISING.node().decode(), "protocol": XENCONSOLE_PROTOCOL}

    def ro_frontend_entries(self, domid: int) -> dict[str, str]:
        e: dict[str, str] = {}
        if self.name:
            e["name"] = self.name
        e.update(
            {
                "limit": str(XENCONSOLE_LIMIT),
                "type": "xenconsoled" if self.consback == "xenconsoled" else "ioemu",
            }
        )
        if self.output is not None:
            e["output"] = self.output
        e["tty"] = self.tty
        if self.has_build_state:
            e["port"] = str(self.port)
            e["ring-ref"] = str(self.ring_ref)
        return e


def _b(flag: bool) -> str:
    return "1" if flag else "0"


def _abs_script(script: str) -> str:
    """libxl__abs_path(script, libxl__xen_script_dir_path())."""
    return script if script.startswith("/") else f"{XEN_SCRIPT_DIR}/{script}"


# -- generic add / remove --------------------------------------------------------------------


def backend_perms(ref: DeviceRef) -> Perms:
    return [f"n{ref.backend_domid}", f"r{ref.domid}"]


def frontend_perms(ref: DeviceRef) -> Perms:
    return [f"n{ref.domid}", f"r{ref.backend_domid}"]


def ro_frontend_perms(ref: DeviceRef) -> Perms:
    return [f"n{ref.backend_domid}", f"r{ref.domid}"]


async def _rm(t: Transaction, path: str) -> None:
    """``libxl__xs_rm_checked``: a node that is already gone is fine."""
    await t.rm(path, missing_ok=True)


def _writev_requests(
    t: Transaction, base: str, entries: Mapping[str, str], perms: Perms | None
) -> list[Awaitable[None]]:
    """``libxl__xs_writev`` (and each node's ``perms``) as requests for `pipelined`."""
    out: list[Awaitable[None]] = []
    for key, value in entries.items():
        out.append(t.write(f"{base}/{key}", value))
        if perms is not None:
            out.append(t.set_perms(f"{base}/{key}", perms))
    return out


async def generic_add(
    t: Transaction,
    ref: DeviceRef,
    back: Mapping[str, str],
    front: Mapping[str, str] | None,
    ro_front: Mapping[str, str] | None,
) -> None:
    """``libxl__device_generic_add`` inside the caller's transaction (its requests
    pipelined: one round trip, not one per node)."""
    fe, be, lx = ref.frontend, ref.backend, ref.libxl
    requests: list[Awaitable[None]] = [
        _rm(t, lx),
        t.write(f"{lx}/frontend", fe),
        t.write(f"{lx}/backend", be),
    ]
    if front or ro_front:
        # Console 0's directory holds toolstack data the guest must not change.
        dir_perms = (
            ro_frontend_perms(ref)
            if ref.kind == "console" and ref.devid == 0
            else frontend_perms(ref)
        )
        requests += [
            _rm(t, fe),
            t.mkdir(fe),
            t.set_perms(fe, dir_perms),
            t.write(f"{fe}/backend", be),
        ]
        if front:
            requests += _writev_requests(t, fe, front, frontend_perms(ref))
        if ro_front:
            requests += _writev_requests(t, fe, ro_front, ro_frontend_perms(ref))
    requests += [
        _rm(t, be),
        t.mkdir(be),
        t.set_perms(be, backend_perms(ref)),
        t.write(f"{be}/frontend", fe),
    ]
    requests += _writev_requests(t, be, back, None)
    requests += _writev_requests(t, lx, back, None)
    await pipelined(*requests)


def device_entries(
    device: Device, domid: int
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(back, front, ro_front) as ``libxl__device_add_async`` assembles them."""
    ref = device.ref(domid)
    back = {
        "frontend-id": str(domid),
        "online": "1",
        "state": XenbusState.INITIALISING.node().decode(),
    }
    front: dict[str, str] = {"backend-id": str(ref.backend_domid)}
    if not isinstance(device, Console):
        front["state"] = XenbusState.INITIALISING.node().decode()
    back.update(device.backend_entries(domid))
    front.update(device.frontend_entries(domid))
    return back, front, device.ro_frontend_entries(domid)


async def add_device(client: Client, domid: int, device: Device) -> DeviceRef:
    """Write a device's records in one transaction; raises `DeviceExists` if present.

    Does not wait for the backend: see `wait_device_connection`.
    """
    ref = device.ref(domid)
    back, front, ro_front = device_entries(device, domid)

    async def body(t: Transaction) -> None:
        if await t.exists(ref.libxl):
            raise DeviceExists(f"{ref}: device already exists in xenstore ({ref.libxl})")
        await generic_add(t, ref, back, front, ro_front)

    await client.retry_transaction(body)
    log.debug("added %s: %s", ref, ref.backend)
    return ref


async def wait_for_state(
    client: Client,
    path: str,
    states: XenbusState | Collection[XenbusState],
    timeout: float,
    *,
    fail: Collection[XenbusState] = (),
) -> XenbusState:
    """Wait (on a watch, never polling) until the state node ``path`` is one of ``states``.

    Returns the state reached.  Raises `DeviceTimeout` after ``timeout`` seconds,
    `BackendGone` if the node is removed, `DeviceFailed` on a state in ``fail``.
    """
    wanted = {states} if isinstance(states, XenbusState) else set(states)

    def reached(raw: str | None) -> XenbusState | None:
        if raw is None:
            raise BackendGone(f"{path} was removed while waiting for its state")
        state = XenbusState.parse(raw)
        if state in wanted:
            return state
        if state in fail:
            raise DeviceFailed(f"{path} went to {state.name} ({int(state)})")
        return None

    try:
        return await client.wait_until(path, reached, timeout)
    except WaitTimeout as err:
        seen = None if err.last is None else XenbusState.parse(err.last[0])
        raise DeviceTimeout(_stuck(path, seen, wanted, timeout)) from None


def _stuck(
    path: str, state: XenbusState | None, wanted: Collection[XenbusState], timeout: float
) -> str:
    """A state wait that ran out, in words: what the node held and what was awaited."""
    awaited = " or ".join(s.label for s in sorted(wanted))
    if state is None:
        return f"{path}: not even read within {timeout:g} s (waiting for {awaited})"
    return f"{path} is {state.label} after {timeout:g} s, not {awaited}"


async def wait_device_connection(
    client: Client, ref: DeviceRef, timeout: float = LIBXL_INIT_TIMEOUT
) -> XenbusState:
    """``libxl__wait_device_connection``: the backend set up the device (InitWait or later).

    For devices with a hotplug ``script`` it then waits for ``hotplug-status``
    ``connected``.  A backend that closes instead raises `DeviceFailed` with its
    ``hotplug-error``.
    """
    be = ref.backend
    try:
        state = await wait_for_state(
            client,
            f"{be}/state",
            (XenbusState.INIT_WAIT, XenbusState.INITIALISED, XenbusState.CONNECTED),
            timeout,
            fail=(XenbusState.CLOSING, XenbusState.CLOSED),
        )
    except DeviceFailed as exc:
        error = await client.read_text(f"{be}/hotplug-error")
        raise DeviceFailed(f"{ref}: backend failed: {error or exc}") from None
    if await client.read_text(f"{be}/script") is not None:
        status = await _wait_hotplug_status(client, ref, timeout)
        if status != "connected":
            error = await client.read_text(f"{be}/hotplug-error")
            raise DeviceFailed(f"{ref}: hotplug status {status!r}: {error or 'no hotplug-error'}")
    return state


async def _wait_hotplug_status(client: Client, ref: DeviceRef, timeout: float) -> str:
    path = f"{ref.backend}/hotplug-status"
    try:
        return await client.wait_until(path, lambda status: status or None, timeout)
    except WaitTimeout:
        raise DeviceTimeout(f"{path}: no hotplug status within {timeout:g} s") from None


async def _path_cleanup(t: Transaction, path: str, stop: str) -> None:
    """``libxl__xs_path_cleanup``: rm ``path`` and then its parents while empty.

    Stops below ``stop`` (we never remove ``/local/domain/D`` itself or ``/libxl``).
    """
    await _rm(t, path)
    parent = path.rsplit("/", 1)[0]
    while parent.startswith(stop + "/"):
        try:
            if await t.directory(parent):
                return
        except NoEntry:
            pass
        await _rm(t, parent)
        parent = parent.rsplit("/", 1)[0]


async def destroy_device(client: Client, ref: DeviceRef) -> None:
    """``libxl__device_destroy``: remove frontend, backend and libxl dirs in one transaction."""

    async def body(t: Transaction) -> None:
        await _path_cleanup(t, ref.frontend, domain_path(ref.domid))
        await _path_cleanup(t, ref.libxl, "/libxl")
        await _path_cleanup(t, ref.backend, f"{domain_path(ref.backend_domid)}/backend")

    await client.retry_transaction(body)
    log.debug("destroyed %s", ref)


async def _initiate_close(client: Client, ref: DeviceRef, remove_frontend: bool) -> bool:
    """online=0 and (unless already Closed) state=5; False if the backend is gone."""
    be = ref.backend

    async def body(t: Transaction) -> bool:
        if remove_frontend:
            await _path_cleanup(t, ref.frontend, domain_path(ref.domid))
        state = await t.read_text(f"{be}/state")
        if state is None:
            return False
        await t.write(f"{be}/online", "0")
        if XenbusState.parse(state) is not XenbusState.CLOSED:
            await t.write(f"{be}/state", XenbusState.CLOSING.node())
        return True

    return await client.retry_transaction(body)


async def remove_device(
    client: Client, ref: DeviceRef, *, force: bool = False, timeout: float = LIBXL_DESTROY_TIMEOUT
) -> bool:
    """Remove a device as ``xl <kind>-detach`` does; True if the backend closed in time.

    ``force`` skips the handshake and just removes the records (a dying domain).
    Otherwise the backend is asked to close; if it does not within ``timeout``, the
    frontend is removed and the wait repeated once (libxl's "initiating forced
    remove"); the records are removed in any case.
    """
    if force:
        await destroy_device(client, ref)
        return False
    clean = True
    for attempt in (1, 2):
        if not await _initiate_close(client, ref, remove_frontend=attempt == 2):
            log.info("backend %s already removed, cleanup frontend only", ref.backend)
            break
        try:
            await wait_for_state(client, f"{ref.backend}/state", XenbusState.CLOSED, timeout)
            break
        except BackendGone:
            break
        except DeviceTimeout:
            clean = False
            if attempt == 1:
                log.warning("%s: backend did not close; timeout reached, forcing removal", ref)
            else:
                log.error("%s: unable to remove device with path %s", ref, ref.backend)
    await destroy_device(client, ref)
    return clean


# -- consoles ------------------------------------------------------------------------------


async def add_console(
    client: Client,
    domid: int,
    n: int,
    output: str | None,
    name: str | None = None,
    *,
    backend_domid: int = 0,
    port: int = 0,
    ring_ref: int = 0,
) -> None:
    """Write console ``n`` of ``domid`` as ``libxl__device_console_add`` does, atomically.

    ``output`` None writes no ``output`` node (libxl's restore console when not
    restoring), which the backend treats as ``pty``.  Console 0 gets the read-only
    ``port``/``ring-ref`` (placeholders here) instead of a frontend ``state``.
    """
    build = n == 0
    await add_device(
        client,
        domid,
        Console(
            number=n,
            output=output,
            name=name,
            backend_domid=backend_domid,
            port=port if build else None,
            ring_ref=ring_ref if build else None,
        ),
    )


async def remove_console(
    client: Client,
    domid: int,
    n: int,
    force: bool = False,
    *,
    backend_domid: int = 0,
    timeout: float = LIBXL_DESTROY_TIMEOUT,
) -> None:
    """Remove console ``n`` of ``domid`` like libxl's generic device removal: Closing,
    wait for Closed (forcing the removal after ``timeout`` s), then the records go."""
    ref = DeviceRef("console", domid, n, backend_domid)
    await remove_device(client, ref, force=force, timeout=timeout)
    log.info("console %d of domain %d removed", n, domid)


# -- PCI ---------------------------------------------------------------------------------------


@dataclass
class PciFunction:
    """One passed-through function (``libxl_device_pci``) as pciback is told about it."""

    address: Bdf
    vdevfn: int = 0
    msitranslate: bool = False
    power_mgmt: bool = False
    permissive: bool = False
    rdm_policy: str = "relaxed"
    name: str | None = None

    def entries(self, num: int) -> dict[str, str]:
        """``libxl_create_pci_backend_device``."""
        e = {f"key-{num}": str(self.address), f"dev-{num}": str(self.address)}
        if self.vdevfn:
            e[f"vdevfn-{num}"] = f"{self.vdevfn:x}"
        if self.name:
            e[f"name-{num}"] = self.name
        e[f"opts-{num}"] = (
            f"msitranslate={int(self.msitranslate)},power_mgmt={int(self.power_mgmt)},"
            f"permissive={int(self.permissive)},rdm_policy={self.rdm_policy}"
        )
        e[f"state-{num}"] = XenbusState.INITIALISING.node().decode()
        return e


PCI_PER_FUNCTION = ("state", "key", "dev", "vdev", "opts", "vdevfn", "name")


def pci_ref(domid: int) -> DeviceRef:
    return DeviceRef("pci", domid, 0)


async def add_pci(
    client: Client,
    domid: int,
    function: PciFunction,
    *,
    domain_name: str,
    starting: bool = False,
    timeout: float = LIBXL_PCI_BACKEND_TIMEOUT,
) -> int:
    """``libxl__device_pci_add_xenstore`` for a PV domain (a stubdom): returns N of dev-N.

    The first function creates the pciback device (no libxl directory for pci).  A
    later one, unless ``starting``, waits for the backend to be Connected, adds its
    entries, bumps ``num_devs`` and sets state 7 (Reconfiguring), then waits for the
    backend to be Connected again.
    """
    ref = pci_ref(domid)
    be = ref.backend

    async def body(t: Transaction) -> int:
        raw = await t.read_text(f"{be}/num_devs")
        num = int(raw) if raw else 0
        if num and not starting:
            await _require_connected(t, be)
        if raw is None:
            back = {
                "frontend": ref.frontend,
                "frontend-id": str(domid),
                "online": "1",
                "state": XenbusState.INITIALISING.node().decode(),
                "domain": domain_name,
            }
            await _rm(t, be)
            await t.mkdir(be)
            await t.set_perms(be, backend_perms(ref))
            await pipelined(*_writev_requests(t, be, back, None))
            fe = ref.frontend
            await _rm(t, fe)
            await t.mkdir(fe)
            await t.set_perms(fe, frontend_perms(ref))
            front = {
                "backend": be,
                "backend-id": "0",
                "state": XenbusState.INITIALISING.node().decode(),
            }
            await pipelined(*_writev_requests(t, fe, front, None))
        entries = function.entries(num)
        entries["num_devs"] = str(num + 1)
        if num and not starting:
            entries["state"] = XenbusState.RECONFIGURING.node().decode()
        await pipelined(*_writev_requests(t, be, entries, None))
        return num

    num = await _when_connected(client, be, timeout, body)
    log.debug("pci %s added to domain %d as dev-%d", function.address, domid, num)
    if num and not starting:
        await wait_for_state(client, f"{be}/state", XenbusState.CONNECTED, timeout)
    return num


class _NotConnected(Exception):
    """pciback left Connected between the wait and the transaction."""


async def _require_connected(t: Transaction, be: str) -> None:
    """Read pciback's state inside ``t``: the commit then fails if anyone changes it."""
    if XenbusState.parse(await t.read_text(f"{be}/state")) is not XenbusState.CONNECTED:
        raise _NotConnected


async def _when_connected(
    client: Client, be: str, timeout: float, body: Callable[[Transaction], Awaitable[T]]
) -> T:
    """Run ``body`` (which calls `_require_connected`) in a transaction that commits only
    while pciback is Connected, waiting for Connected again whenever it is not.

    libxl waits for Connected and then, in a separate transaction, sets Reconfiguring;
    two hot-plugs at once could both pass the wait, and the second would write
    Reconfiguring into the first's reconfiguration, racing pciback's own writes.  Here
    the state is read in the transaction, so such hot-plugs reconfigure in turn.
    """
    while True:
        try:
            return await client.retry_transaction(body)
        except _NotConnected:
            await wait_for_state(client, f"{be}/state", XenbusState.CONNECTED, timeout)


async def remove_pci(
    client: Client, domid: int, address: Bdf, *, timeout: float = LIBXL_PCI_BACKEND_TIMEOUT
) -> None:
    """``libxl__device_pci_remove_xenstore`` for a PV domain.

    Waits for Connected, sets ``state-N`` = 5 and state 7, waits for Connected
    again, then removes the function's entries and renumbers the later ones.  The
    last function takes the whole device with it (``libxl__device_destroy``).  N is
    looked up inside each transaction, since a concurrent removal renumbers.
    """
    ref = pci_ref(domid)
    be = ref.backend

    async def find(t: Transaction) -> tuple[int, int]:
        raw = await t.read_text(f"{be}/num_devs")
        if raw is None:
            raise DeviceError(f"domain {domid} has no pci device")
        num = int(raw)
        for i in range(num):
            dev = await t.read_text(f"{be}/dev-{i}")
            try:
                if dev is not None and Bdf.parse(dev) == address:
                    return num, i
            except ValueError:
                continue
        raise DeviceError(f"pci {address} of domain {domid}: couldn't find the device on xenstore")

    async def mark(t: Transaction) -> None:
        _, index = await find(t)
        await _require_connected(t, be)
        await t.write(f"{be}/state-{index}", XenbusState.CLOSING.node())
        await t.write(f"{be}/state", XenbusState.RECONFIGURING.node())

    await _when_connected(client, be, timeout, mark)

    async def drop(t: Transaction) -> int:
        num, index = await find(t)
        await _require_connected(t, be)
        for key in PCI_PER_FUNCTION:
            await _rm(t, f"{be}/{key}-{index}")
        await t.write(f"{be}/num_devs", str(num - 1))
        for j in range(index + 1, num):
            for key in PCI_PER_FUNCTION:
                value = await t.read_text(f"{be}/{key}-{j}")
                if value is not None:
                    await t.write(f"{be}/{key}-{j - 1}", value)
                    await _rm(t, f"{be}/{key}-{j}")
        return num

    if await _when_connected(client, be, timeout, drop) == 1:
        await destroy_device(client, ref)
    log.debug("pci %s removed from domain %d", address, domid)


__all__ = [
    "LIBXL_DESTROY_TIMEOUT",
    "LIBXL_INIT_TIMEOUT",
    "BackendGone",
    "Console",
    "Device",
    "DeviceError",
    "DeviceExists",
    "DeviceFailed",
    "DeviceRef",
    "DeviceTimeout",
    "PciFunction",
    "Vbd",
    "Vfb",
    "Vif",
    "Vkbd",
    "add_console",
    "add_device",
    "add_pci",
    "destroy_device",
    "device_entries",
    "disk_devid",
    "generic_add",
    "pci_ref",
    "remove_console",
    "remove_device",
    "remove_pci",
    "wait_device_connection",
    "wait_for_state",
]
