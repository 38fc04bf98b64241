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
from dataclasses import dataclass
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
        c = _Creation(self, cfg, paused, restore_state, attach_pcis)
        step = "starting"
        try:
            for s in _STEPS:
                if s.when(c):
                    step = s.name
                    await s.run(c)
            return Created(c.guest, c.stub, cfg.uuid, c.stub_uuid)
        except Exception as e:  # every failure is reported with its step
            reason = str(e) or f"no answer in time ({type(e).__name__})"
            log.info("creating %s failed while %s: %s", cfg.name, step, reason)
            await self._undo(c.made)
            raise CreateError(cfg.name, step, reason) from e
        except BaseException:
            await self._undo(c.made)
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


class _Creation:
    """One `StubdomSpawner.create` under way: what was asked, and what its steps have
    made so far for the later steps (``made``: the domains a failure removes)."""

    # Each set by the step that makes it; a later step may rely on it.
    guest: int
    guest_rec: DomainRecord
    stub: int
    stub_uuid: str
    stub_rec: DomainRecord

    def __init__(
        self,
        sp: StubdomSpawner,
        cfg: GuestConfig,
        paused: bool,
        restore_state: BytesLike | StagedFile | None,
        attach_pcis: Callable[[int, int], Awaitable[None]] | None,
    ) -> None:
        self.sp = sp
        self.cfg = cfg
        self.paused = paused
        self.restore_state = restore_state
        self.attach_pcis = attach_pcis
        self.made: list[tuple[int, str]] = []

    @property
    def restore_file(self) -> Path | None:
        """Where console 2 reads the saved state from, when restoring."""
        if self.restore_state is None:
            return None
        return self.sp.paths.restore_file(self.guest)

    # -- when a step applies ---------------------------------------------------------------

    def restoring(self) -> bool:
        return self.restore_state is not None

    def has_pcis_to_attach(self) -> bool:
        return self.attach_pcis is not None and bool(self.cfg.pcis)

    def unpausing(self) -> bool:
        return not self.paused

    # -- the steps ---------------------------------------------------------------------------

    async def check_disks(self) -> None:
        check_disks(self.cfg)

    async def create_guest(self) -> None:
        cfg = self.cfg
        self.guest = await self.sp.hv.create_domain(
            DomainConfig(
                name=cfg.name,
                hvm=True,
                uuid=cfg.uuid,
                max_vcpus=cfg.max_vcpus,
                max_memkb=cfg.max_memkb,
                domid=cfg.domid,
            )
        )
        self.made.append((self.guest, cfg.uuid))

    async def write_saved_state(self) -> None:
        restore_file, state = self.restore_file, self.restore_state
        assert restore_file is not None and state is not None  # see `restoring`
        if isinstance(state, StagedFile):
            os.replace(state.path, restore_file)
        else:
            fd = os.open(restore_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(state)

    async def write_guest_records(self) -> None:
        cfg = self.cfg
        self.guest_rec = DomainRecord(
            self.guest,
            cfg.name,
            cfg.uuid,
            hvm=True,
            max_memkb=cfg.max_memkb,
            target_memkb=cfg.memkb,
            vcpus=cfg.vcpus,
            max_vcpus=cfg.max_vcpus,
            platformdata={"device-model": proto.DM_VERSION_TRADITIONAL},
        )
        await make_domain(self.sp.xs, self.guest_rec)
        await self.sp.xs.write(proto.timeoffset_path(self.guest_rec.vm_path), cfg.timeoffset)

    async def build_guest(self) -> None:
        await self.sp.hv.build_hvm(self.guest, self.cfg.memkb, self.cfg.vcpus)
        await introduce_domain(self.sp.xs, self.guest_rec)

    async def attach_guest_disks(self) -> None:
        for disk in self.cfg.disks:
            await devices.add_device(self.sp.xs, self.guest, _vbd(disk))

    async def create_stubdomain(self) -> None:
        cfg = self.cfg
        stub_name = proto.stubdom_name(cfg.name)
        self.stub_uuid = str(uuidlib.uuid4())
        self.stub = await self.sp.hv.create_domain(
            DomainConfig(
                name=stub_name,
                hvm=False,
                uuid=self.stub_uuid,
                max_vcpus=proto.STUBDOM_VCPUS,
                max_memkb=cfg.stubdomain_memkb,
            )
        )
        self.made.append((self.stub, self.stub_uuid))
        self.stub_rec = DomainRecord(
            self.stub,
            stub_name,
            self.stub_uuid,
            max_memkb=cfg.stubdomain_memkb,
            vcpus=proto.STUBDOM_VCPUS,
        )
        await make_domain(self.sp.xs, self.stub_rec)

    async def build_stubdomain(self) -> None:
        kernel = stubdom_kernel(self.cfg.stubdomain_kernel)
        await self.sp.hv.build_pv(self.stub, kernel, self.cfg.stubdomain_cmdline)
        await introduce_domain(self.sp.xs, self.stub_rec)

    async def write_dm_setup(self) -> None:
        sp, guest, stub = self.sp, self.guest, self.stub
        saved = str(self.restore_file) if self.restore_file is not None else None
        argv = build_dm_argv(self.cfg, guest, saved_state=saved)
        await sp.xs.write(proto.dm_version_path(guest), proto.DM_VERSION_TRADITIONAL)
        await sp._write_dmargs(self.guest_rec.vm_path, stub, proto.encode_dmargs(argv))
        # Back to back (a failure fails the create, whose undo removes all three).
        await pipelined(
            sp.xs.write(proto.device_model_domid_path(guest), str(stub)),
            sp.xs.write(proto.target_path(stub), str(guest)),
            sp.xs.write(proto.allow_memory_relocate_path(guest), "1"),
        )

    async def give_target(self) -> None:
        await self.sp.hv.set_target(self.stub, self.guest)
        await self.sp.xs.set_target(self.stub, self.guest)
        await self.sp._make_dm_dir(self.stub, self.guest)

    async def attach_stubdomain_disks(self) -> None:
        for disk in self.cfg.disks:
            ref = await devices.add_device(self.sp.xs, self.stub, _vbd(disk))
            await devices.wait_device_connection(self.sp.xs, ref)

    async def add_display_and_consoles(self) -> None:
        cfg, xs = self.cfg, self.sp.xs
        if cfg.graphics:
            vfb = devices.Vfb(
                vnc=cfg.vnc.enabled,
                vnclisten=cfg.vnc.listen,
                vncdisplay=cfg.vnc.display,
                vncunused=cfg.vnc.findunused,
                sdl=cfg.sdl,
            )
            await devices.add_device(xs, self.stub, vfb)
            await devices.add_device(xs, self.stub, devices.Vkbd())
        await self.sp._add_consoles(cfg, self.guest, self.stub, self.restore_file)

    async def attach_stubdomain_nics(self) -> None:
        for nic in self.cfg.nics:
            vif = devices.Vif(
                handle=nic.devid,
                mac=nic.mac,
                bridge=nic.bridge,
                ifname=f"{nic.ifname}-emu" if nic.ifname else None,
            )
            ref = await devices.add_device(self.sp.xs, self.stub, vif)
            await devices.wait_device_connection(self.sp.xs, ref)

    async def start_stubdomain(self) -> None:
        await self.sp.hv.unpause(self.stub)

    async def wait_running(self) -> None:
        await self.sp.wait_running(self.stub, self.guest, self.sp.start_timeout)

    async def attach_guest_pcis(self) -> None:
        assert self.attach_pcis is not None  # see `has_pcis_to_attach`
        await self.attach_pcis(self.guest, self.stub)

    async def unpause_guest(self) -> None:
        await self.sp.hv.unpause(self.guest)


def _always(c: _Creation) -> bool:
    return True


@dataclass(frozen=True)
class _Step:
    """A step of the creation: ``name`` completes "failed while …" in its error."""

    name: str
    run: Callable[[_Creation], Awaitable[None]]
    when: Callable[[_Creation], bool] = _always


#: ``libxl__spawn_stub_dm``'s order (docs/protocol.md#setup-order).
_STEPS: tuple[_Step, ...] = (
    _Step("checking the guest's disks", _Creation.check_disks),
    _Step("creating the guest domain", _Creation.create_guest),
    _Step("writing the saved device-model state", _Creation.write_saved_state, _Creation.restoring),
    _Step("writing the guest's xenstore records", _Creation.write_guest_records),
    _Step("building the guest", _Creation.build_guest),
    _Step("attaching the guest's disks", _Creation.attach_guest_disks),
    _Step("creating the stubdomain", _Creation.create_stubdomain),
    _Step("building the stubdomain", _Creation.build_stubdomain),
    _Step("writing the device model's setup", _Creation.write_dm_setup),
    _Step("giving the stubdomain its target", _Creation.give_target),
    _Step("attaching the stubdomain's disks", _Creation.attach_stubdomain_disks),
    _Step(
        "adding the stubdomain's framebuffer, keyboard and consoles",
        _Creation.add_display_and_consoles,
    ),
    _Step("attaching the stubdomain's nics", _Creation.attach_stubdomain_nics),
    _Step("starting the stubdomain", _Creation.start_stubdomain),
    _Step("waiting for the device model to report running", _Creation.wait_running),
    _Step(
        "attaching the guest's PCI devices",
        _Creation.attach_guest_pcis,
        _Creation.has_pcis_to_attach,
    ),
    _Step("unpausing the guest", _Creation.unpause_guest, _Creation.unpausing),
)


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
