"""Creating an HVM guest with its device-model stubdomain, in libxl's order.

The steps are those of ``libxl__spawn_stub_dm`` and its callbacks
(docs/protocol.md#setup-order); each is named, and a failure anywhere removes both
domains and every node and file they had, then says which step failed.  The dom0
"pvqemu" libxl starts for the stubdomain's consoles and framebuffer is not needed: the
host's backends serve them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from stubdom import protocol as proto
from stubdom.devicemodel.base import BytesLike
from stubdom.host.hypervisor import DomainConfig, Hypervisor, HypervisorError
from stubdom.host.xenbus import backend_root
from stubdom.programs import find_program
from stubdom.toolstack import devices
from stubdom.toolstack.channel import ChannelRegistry
from stubdom.toolstack.config import DiskSpec, GuestConfig
from stubdom.toolstack.devices import add_console
from stubdom.toolstack.dmargs import build_dm_argv
from stubdom.toolstack.fileio import StagedFile
from stubdom.toolstack.records import DomainRecord, introduce_domain, make_domain, remove_domain
from stubdom.wire.perms import Access, Perm
from stubdom.xenstore import Client, NoEntry, Transaction, XenStoreError
from stubdom.xenstore.pipeline import pipelined

log = logging.getLogger(__name__)

#: The executable the stubdomain boots unless ``stubdomain_kernel`` names another.
AGENT = "stubdom-dm"


class CreateError(Exception):
    """Creating the guest failed at ``step``; nothing of it is left behind."""

    def __init__(self, guest: str, step: str, reason: str) -> None:
        super().__init__(f"creating {guest!r} failed while {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass
class HostPaths:
    """Where the host keeps the files libxl keeps in /var/lib/xen and /var/log/xen."""

    state_dir: Path
    log_dir: Path
    lock_dir: Path

    @classmethod
    def under(cls, root: Path) -> HostPaths:
        return cls(root / "lib", root / "log", root / "lock")

    def ensure(self) -> None:
        for d in (self.state_dir, self.log_dir, self.lock_dir):
            d.mkdir(parents=True, exist_ok=True)

    def save_file(self, guest: int) -> Path:
        return self.state_dir / proto.save_file_name(guest)

    def restore_file(self, guest: int) -> Path:
        return self.state_dir / proto.restore_file_name(guest)

    def userdata(self, domid: int, uuid: str) -> Path:
        """libxl's ``userdata-d.<domid>.<uuid>.libxl-json``: the config a guest was made from."""
        return self.state_dir / f"userdata-d.{domid}.{uuid}.libxl-json"

    def userdata_files(self, domid: int) -> list[Path]:
        """Every userdata file of ``domid`` (libxl__userdata_destroyall's set)."""
        if not self.state_dir.is_dir():
            return []
        return list(self.state_dir.glob(f"userdata-d.{domid}.*"))

    def dm_log(self, guest_name: str) -> Path:
        return self.log_dir / proto.log_file_name(guest_name)


@dataclass
class Created:
    guest: int
    stubdom: int
    guest_uuid: str
    stub_uuid: str


def default_stubdom_kernel() -> str | None:
    """The project's device-model agent: beside this interpreter, else on PATH."""
    return find_program(AGENT)


def stubdom_kernel(configured: str | None) -> str:
    """The stubdomain's kernel: ``stubdomain_kernel`` as a path, or a bare name (no
    ``/``, such as ``stubdom-minios``) looked up as the default agent is; the agent
    when unset.  `HypervisorError` naming the fix if there is no such program."""
    name = configured or AGENT
    if "/" in name:
        return name
    found = find_program(name)
    if found is None:
        if configured is None:
            raise HypervisorError(
                f"the device-model agent {AGENT!r} is not installed; "
                "set stubdomain_kernel to an executable"
            )
        raise HypervisorError(
            f"stubdomain_kernel {name!r} is not a program on PATH; "
            "give its path or install it"
        )
    return found


def check_disks(cfg: GuestConfig) -> None:
    """Every disk image must be there before anything is built, as libxl stats each
    target while it prepares the domain (``libxl__device_disk_set_backend``)."""
    for disk in cfg.disks:
        if not disk.target:
            continue  # an empty cdrom drive
        if not os.path.isabs(disk.target):
            raise ValueError(f"disk {disk.vdev}: {disk.target!r} is not an absolute path")
        try:
            os.stat(disk.target)
        except OSError as e:
            raise ValueError(f"disk {disk.vdev}: {disk.target}: {e.strerror}") from None


@dataclass
class StubdomSpawner:
    """Runs the creation steps; ``wait_running`` is the control channel's startup wait."""

    hv: Hypervisor
    xs: Client
    paths: HostPaths
    wait_running: Callable[[int, int, float], Awaitable[None]]
    start_timeout: float = proto.STUBDOM_START_TIMEOUT
    #: Steps done so far, for messages and tests.
    steps: list[str] = field(default_factory=list)

    async def create(
        self,
        cfg: GuestConfig,
        *,
        paused: bool = False,
        restore_state: BytesLike | StagedFile | None = None,
        attach_pcis: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> Created:
        """Create the guest and its stubdomain; ``restore_state`` is a saved device-model
        state to resume from (``-loadvm``, fed through console 2)."""
        self.paths.ensure()
        made: list[tuple[int, str]] = []
        step = "starting"
        try:
            step = "checking the guest's disks"
            check_disks(cfg)
            step = "creating the guest domain"
            guest = await self.hv.create_domain(
                DomainConfig(
                    name=cfg.name,
                    hvm=True,
                    uuid=cfg.uuid,
                    max_vcpus=cfg.max_vcpus,
                    max_memkb=cfg.max_memkb,
                    domid=cfg.domid,
                )
            )
            made.append((guest, cfg.uuid))
            restore_file = self.paths.restore_file(guest) if restore_state is not None else None
            if restore_file is not None and restore_state is not None:
                step = "writing the saved device-model state"
                if isinstance(restore_state, StagedFile):
                    os.replace(restore_state.path, restore_file)
                else:
                    fd = os.open(restore_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(restore_state)
            step = "writing the guest's xenstore records"
            grec = DomainRecord(
                guest,
                cfg.name,
                cfg.uuid,
                hvm=True,
                max_memkb=cfg.max_memkb,
                target_memkb=cfg.memkb,
                vcpus=cfg.vcpus,
                max_vcpus=cfg.max_vcpus,
                platformdata={"device-model": proto.DM_VERSION_TRADITIONAL},
            )
            await make_domain(self.xs, grec)
            await self.xs.write(proto.timeoffset_path(grec.vm_path), cfg.timeoffset)
            step = "building the guest"
            await self.hv.build_hvm(guest, cfg.memkb, cfg.vcpus)
            await introduce_domain(self.xs, grec)
            step = "attaching the guest's disks"
            for disk in cfg.disks:
                await devices.add_device(self.xs, guest, _vbd(disk))

            step = "creating the stubdomain"
            stub_name = proto.stubdom_name(cfg.name)
            stub_uuid = str(uuidlib.uuid4())
            stub = await self.hv.create_domain(
                DomainConfig(
                    name=stub_name,
                    hvm=False,
                    uuid=stub_uuid,
                    max_vcpus=proto.STUBDOM_VCPUS,
                    max_memkb=cfg.stubdomain_memkb,
                )
            )
            made.append((stub, stub_uuid))
            srec = DomainRecord(
                stub,
                stub_name,
                stub_uuid,
                max_memkb=cfg.stubdomain_memkb,
                vcpus=proto.STUBDOM_VCPUS,
            )
            await make_domain(self.xs, srec)
            step = "building the stubdomain"
            kernel = stubdom_kernel(cfg.stubdomain_kernel)
            await self.hv.build_pv(stub, kernel, cfg.stubdomain_cmdline)
            await introduce_domain(self.xs, srec)

            step = "writing the device model's setup"
            saved = str(restore_file) if restore_file is not None else None
            argv = build_dm_argv(cfg, guest, saved_state=saved)
            await self.xs.write(proto.dm_version_path(guest), proto.DM_VERSION_TRADITIONAL)
            await self._write_dmargs(grec.vm_path, stub, proto.encode_dmargs(argv))
            # Back to back (a failure fails the create, whose undo removes all three).
            await pipelined(
                self.xs.write(proto.device_model_domid_path(guest), str(stub)),
                self.xs.write(proto.target_path(stub), str(guest)),
                self.xs.write(proto.allow_memory_relocate_path(guest), "1"),
            )
            step = "giving the stubdomain its target"
            await self.hv.set_target(stub, guest)
            await self.xs.set_target(stub, guest)
            await self._make_dm_dir(stub, guest)

            step = "attaching the stubdomain's disks"
            for disk in cfg.disks:
                ref = await devices.add_device(self.xs, stub, _vbd(disk))
                await devices.wait_device_connection(self.xs, ref)
            step = "adding the stubdomain's framebuffer, keyboard and consoles"
            if cfg.graphics:
                await devices.add_device(
                    self.xs,
                    stub,
                    devices.Vfb(
                        vnc=cfg.vnc.enabled,
                        vnclisten=cfg.vnc.listen,
                        vncdisplay=cfg.vnc.display,
                        vncunused=cfg.vnc.findunused,
                        sdl=cfg.sdl,
                    ),
                )
                await devices.add_device(self.xs, stub, devices.Vkbd())
            await self._add_consoles(cfg, guest, stub, restore_file)
            step = "attaching the stubdomain's nics"
            for nic in cfg.nics:
                ref = await devices.add_device(
                    self.xs,
                    stub,
                    devices.Vif(
                        handle=nic.devid,
                        mac=nic.mac,
                        bridge=nic.bridge,
                        ifname=f"{nic.ifname}-emu" if nic.ifname else None,
                    ),
                )
                await devices.wait_device_connection(self.xs, ref)

            step = "starting the stubdomain"
            await self.hv.unpause(stub)
            step = "waiting for the device model to report running"
            await self.wait_running(stub, guest, self.start_timeout)
            if attach_pcis is not None and cfg.pcis:
                step = "attaching the guest's PCI devices"
                await attach_pcis(guest, stub)
            if not paused:
                step = "unpausing the guest"
                await self.hv.unpause(guest)
            return Created(guest, stub, cfg.uuid, stub_uuid)
        except Exception as e:  # every failure is reported with its step
            reason = str(e) or f"no answer in time ({type(e).__name__})"
            log.info("creating %s failed while %s: %s", cfg.name, step, reason)
            await self._undo(made)
            raise CreateError(cfg.name, step, reason) from e
        except BaseException:
            await self._undo(made)
            raise

    async def _write_dmargs(self, vm_path: str, stub: int, dmargs: str) -> None:
        """One transaction: dmargs and rtc/timeoffset readable by the stubdomain only."""
        perms = [Perm(Access.NONE, 0), Perm(Access.READ, stub)]

        async def body(t: Transaction) -> None:
            requests: list[Awaitable[None]] = []
            for path, value in (
                (proto.dmargs_path(vm_path), dmargs),
                (proto.timeoffset_path(vm_path), ""),
            ):
                requests += [t.write(path, ""), t.set_perms(path, perms), t.write(path, value)]
            await pipelined(*requests)

        await self.xs.retry_transaction(body)

    async def _make_dm_dir(self, stub: int, guest: int) -> None:
        """``device-model/<G>`` owned by the stubdomain, readable by the guest."""
        perms = [Perm(Access.NONE, stub), Perm(Access.READ, guest)]

        async def body(t: Transaction) -> None:
            await pipelined(
                t.mkdir(proto.dm_path(stub, guest)), t.set_perms(proto.dm_path(stub, guest), perms)
            )

        await self.xs.retry_transaction(body)

    async def _add_consoles(
        self, cfg: GuestConfig, guest: int, stub: int, restore_file: Path | None
    ) -> None:
        log_file = self.paths.dm_log(cfg.name)
        save = self.paths.save_file(guest)
        await add_console(self.xs, stub, proto.CONSOLE_LOGGING, f"file:{log_file}")
        await add_console(self.xs, stub, proto.CONSOLE_SAVE, f"file:{save}")
        # Console 2 is fed the saved state only when restoring; otherwise libxl writes
        # no output spec and the backend falls back to a pty.
        restore = f"pipe:{restore_file}" if restore_file is not None else None
        await add_console(self.xs, stub, proto.CONSOLE_RESTORE, restore)
        for i, spec in enumerate(cfg.serial):
            await add_console(self.xs, stub, proto.CONSOLE_SERIAL + i, spec)

    async def _undo(self, made: list[tuple[int, str]]) -> None:
        """Remove every domain made so far, newest first, with its nodes and files."""
        for domid, uuid in reversed(made):
            await destroy_domain(self.hv, self.xs, domid, uuid, self.paths)


def _vbd(disk: DiskSpec) -> devices.Vbd:
    return devices.Vbd(
        vdev=disk.vdev, target=disk.target, readwrite=disk.readwrite, cdrom=disk.cdrom
    )


async def destroy_domain(
    hv: Hypervisor, xs: Client, domid: int, uuid: str | None, paths: HostPaths
) -> None:
    """``libxl__destroy_domid``: pause, devices, xenstore trees, files, the domain."""
    with contextlib.suppress(HypervisorError):
        await hv.pause(domid)
    with contextlib.suppress(XenStoreError, devices.DeviceError):
        await _force_remove_devices(xs, domid)
    with contextlib.suppress(HypervisorError):
        await hv.destroy(domid)
    with contextlib.suppress(XenStoreError):
        await remove_domain(xs, domid, uuid)
    for f in (paths.save_file(domid), paths.restore_file(domid), *paths.userdata_files(domid)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)


async def _force_remove_devices(xs: Client, domid: int) -> None:
    backend = backend_root()
    for kind in await _names(xs, backend):
        for devid in await _names(xs, f"{backend}/{kind}/{domid}"):
            ref = devices.DeviceRef(kind, domid, int(devid))
            await devices.remove_device(xs, ref, force=True)


async def _names(xs: Client, path: str) -> list[str]:
    try:
        return list(await xs.directory(path))
    except NoEntry:
        return []


async def destroy_guest(
    hv: Hypervisor,
    xs: Client,
    guest: int,
    paths: HostPaths,
    channels: ChannelRegistry | None = None,
) -> None:
    """Destroy a guest and its stubdomain, as ``libxl__domain_destroy`` does.

    It works on whatever a toolstack killed half-way left: the stubdomain is found from
    ``device-model-domid``, else from the hypervisor (see `stubdoms_of`); a domain
    without xenstore records still has its ``/vm`` tree named by the hypervisor's
    uuid.  The guest's save marker goes too; logs stay, as with libxl.  The watches
    ``channels`` (the session's) keep for the guest go first.
    """
    if channels is not None:
        await channels.forget(guest)
    for stub, stub_uuid in await stubdoms_of(hv, xs, guest):
        await destroy_domain(hv, xs, stub, stub_uuid, paths)
    await destroy_domain(hv, xs, guest, await _uuid_of(hv, xs, guest), paths)
    # A save marker outlives the save that wrote it (the save destroys the guest); the
    # record of the last command sent goes with the guest too.
    for marker in (f"dm-{guest}.saved", f"dm-{guest}.last"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.lock_dir / marker)


async def stubdoms_of(hv: Hypervisor, xs: Client, guest: int) -> list[tuple[int, str | None]]:
    """The stubdomain(s) of ``guest`` with their uuids: the one ``device-model-domid``
    names, and any domain the hypervisor knows as the guest's (its target is the guest,
    or it is the PV domain ``<guest name>-dm``: a create killed before it wrote
    ``device-model-domid`` leaves such a domain)."""
    found: dict[int, str | None] = {}
    raw = await xs.read_optional(proto.device_model_domid_path(guest))
    if raw is not None and raw.decode().isdigit():
        found[int(raw)] = None
    infos = await hv.list_domains()
    name = next((d.name for d in infos if d.domid == guest), None)
    for d in infos:
        if d.domid in (0, guest) or d.hvm:
            continue
        if d.target == guest or (
            name is not None and d.name == proto.stubdom_name(name) and d.target is None
        ):
            found[d.domid] = None
    return [(domid, await _uuid_of(hv, xs, domid)) for domid in sorted(found)]


async def _uuid_of(hv: Hypervisor, xs: Client, domid: int) -> str | None:
    """The uuid of the domain's /vm tree: as its home names it, else the hypervisor's."""
    vm = await xs.read_optional(proto.vm_path_node(domid))
    if vm:
        return vm.decode().rsplit("/", 1)[-1]
    try:
        return (await hv.domain_info(domid)).uuid
    except HypervisorError:
        return None
