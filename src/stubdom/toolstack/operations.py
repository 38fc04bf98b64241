"""The toolstack's operations on a guest: create, PCI hot-plug, and the records of both.

Each operation goes through `DeviceModelChannel` for the device model and through
`stubdom.host.devices` for the stubdomain's pciback, in libxl's order (reference §3.3,
§3.4).  The guest's configuration is kept as JSON next to the save files, as libxl keeps
its userdata, so that save and pci-list know what the guest was made from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stubdom import protocol as proto
from stubdom.host import devices
from stubdom.host.hypervisor import DomainState, HypervisorError
from stubdom.toolstack.config import GuestConfig, PciSpec
from stubdom.toolstack.control import (
    DeviceModelChannel,
    DeviceModelDied,
    DeviceModelError,
    DeviceModelTimeout,
    PciRemoveError,
)
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.toolstack.spawn import Created, StubdomSpawner
from stubdom.xenstore import NoEntry, Transaction

if TYPE_CHECKING:
    from stubdom.devicemodel.base import BytesLike
    from stubdom.toolstack.fileio import StagedFile

log = logging.getLogger(__name__)


#: A restore's checked copy of the state: ``<this>.<pid>.<id>`` in the state directory.
RESTORE_STAGED = "restore-staged"


def _remove_dead_stages(state_dir: Path) -> None:
    """Staged states of restores whose toolstack died (killed mid-copy), up to 256 MB."""
    for path in state_dir.glob(f"{RESTORE_STAGED}.*"):
        pid = path.name.split(".")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing %s, left by a restore that did not finish", path)
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


def channel(s: Session, stub: int, guest: int, timeout: float | None = None) -> DeviceModelChannel:
    async def running(domid: int) -> bool:
        try:
            info = await s.hv.domain_info(domid)
        except HypervisorError:
            return False
        return info.state not in (DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING)

    return DeviceModelChannel(
        s.xs,
        stub,
        guest,
        s.paths.lock_dir,
        timeout=timeout or proto.DEVICE_MODEL_TIMEOUT,
        running=running,
        postmortem=lambda: stub_postmortem(s, stub, guest),
    )


#: Lines of the stubdomain's console 0 quoted when it dies.
POSTMORTEM_LINES = 5
_ENDED = {
    DomainState.CRASHED: "it crashed",
    DomainState.SHUTDOWN: "it shut down",
    DomainState.DYING: "it is being destroyed",
}


async def stub_postmortem(s: Session, stub: int, guest: int) -> str:
    """How the stubdomain ended and the last lines it wrote on console 0 (its log)."""
    how = "it is gone"
    with contextlib.suppress(HypervisorError):
        how = _ENDED.get((await s.hv.domain_info(stub)).state, "it stopped answering")
    try:
        name = (await s.hv.domain_info(guest)).name
    except HypervisorError:
        return f" ({how})"
    log_file = s.paths.dm_log(name)
    lines = tail_lines(log_file, POSTMORTEM_LINES)
    if not lines:
        return f" ({how}); its log {log_file} is empty"
    quoted = "".join(f"\n    | {line}" for line in lines)
    return f" ({how}); the end of its log {log_file}:{quoted}"


def tail_lines(path: Path, count: int, window: int = 8192) -> list[str]:
    """The last ``count`` lines of a file (reading at most ``window`` bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - window))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > window and lines:
        lines = lines[1:]  # the first may be cut
    return [line for line in lines if line.strip()][-count:]


async def create_guest(
    s: Session,
    cfg: GuestConfig,
    *,
    paused: bool = False,
    timeout: float | None = None,
    restore_state: BytesLike | StagedFile | None = None,
) -> Created:
    """``xl create``: the guest, its stubdomain, then the configured PCI devices."""

    async def wait_running(stub: int, guest: int, limit: float) -> None:
        await channel(s, stub, guest, limit).wait_running()

    async def attach_pcis(guest: int, stub: int) -> None:
        for spec in cfg.pcis:
            await pci_attach(s, guest, spec, starting=True)

    spawner = StubdomSpawner(
        s.hv, s.xs, s.paths, wait_running, timeout or proto.STUBDOM_START_TIMEOUT
    )
    created = await spawner.create(
        cfg, paused=paused, restore_state=restore_state, attach_pcis=attach_pcis
    )
    from stubdom.toolstack.savefile import config_to_json

    s.paths.userdata(created.guest, cfg.uuid).write_text(json.dumps(config_to_json(cfg)))
    return created


# -- PCI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachedPci:
    """One row of ``pci-list``: the host function and the guest slot qemu chose."""

    bdf: proto.Bdf
    #: None: an attach that never finished (its toolstack was killed).
    vdevfn: int | None

    def row(self) -> str:
        if self.vdevfn is None:
            return f"??.? {self.bdf} (an unfinished pci-attach; pci-detach removes it)"
        return f"{self.vdevfn >> 3:02x}.{self.vdevfn & 7:01x} {self.bdf}"


def _pci_record(guest: int, bdf: proto.Bdf) -> str:
    """Our note of what the device model inserted, in libxl's private area."""
    return f"/libxl/{guest}/device/pci/{bdf.domain:04x}-{bdf.bus:02x}-{bdf.dev:02x}-{bdf.func}"


async def _stub_of(s: Session, guest: int) -> int:
    stub = await s.stubdom_of(guest)
    if stub is None:
        raise ToolstackError(
            f"domain {guest} has no device-model stubdomain (a create that did not finish?); "
            f"'stubdom destroy {guest}' removes it"
        )
    if (await s.hv.domain_info(stub)).paused:
        # Only a create that did not finish leaves it so: nothing would ever answer.
        raise ToolstackError(
            f"the stubdomain of domain {guest} (domain {stub}) is paused and cannot answer "
            f"(a create that did not finish?); 'stubdom destroy {guest}' removes both"
        )
    return stub


def assignable(s: Session) -> list[proto.Bdf]:
    """The host's assignable PCI functions (``xl pci-assignable-list``).

    The simulated host has no PCI hardware: the list is the file ``pci-assignable`` in
    its run directory, one BDF per line, if someone wrote one.
    """
    path = s.run_dir.root / "pci-assignable"
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return []
    return [proto.parse_bdf(line) for line in lines]


def _functions(s: Session, spec: PciSpec) -> list[tuple[proto.Bdf, int]]:
    """(host function, guest vdevfn) to insert, function 7 first: function 0 raises the
    guest's hot-plug event, so it goes last (libxl).  ``BB:DD.*`` takes every assignable
    function of the device, each at the same virtual slot."""
    if not spec.all_functions:
        return [(spec.bdf, spec.vdevfn)]
    if spec.vslot is None:
        raise ToolstackError(
            f"{spec.bdf.domain:04x}:{spec.bdf.bus:02x}:{spec.bdf.dev:02x}.*: "
            "passing all functions needs a virtual slot (@VSLOT)"
        )
    funcs = [
        b
        for b in assignable(s)
        if (b.domain, b.bus, b.dev) == (spec.bdf.domain, spec.bdf.bus, spec.bdf.dev)
    ]
    if not funcs:
        raise ToolstackError(
            f"no assignable function of {spec.bdf.domain:04x}:"
            f"{spec.bdf.bus:02x}:{spec.bdf.dev:02x} on this host "
            f"(see {s.run_dir.root / 'pci-assignable'})"
        )
    return [(b, (spec.vslot << 3) | b.func) for b in sorted(funcs, key=lambda b: -b.func)]


async def pci_attach(
    s: Session, guest: int, spec: PciSpec, *, starting: bool = False, timeout: float | None = None
) -> list[AttachedPci]:
    """``xl pci-attach``: the stubdomain's pciback first, then ``pci-ins`` per function."""
    stub = await _stub_of(s, guest)
    info = await s.hv.domain_info(guest)
    done: list[AttachedPci] = []
    for bdf, vdevfn in _functions(s, spec):
        record = _pci_record(guest, bdf)
        if await s.xs.exists(f"{record}/vdevfn"):
            raise ToolstackError(f"{bdf} is already attached to {info.name!r}")
        if await s.xs.exists(record):
            raise ToolstackError(
                f"an earlier pci-attach of {bdf} to {info.name!r} did not finish; "
                f"'stubdom pci-detach {info.name} {bdf}' removes it"
            )
        # The record is made first, so that an attach killed half-way leaves a trace
        # that pci-list shows and pci-detach undoes; vdevfn completes it.
        await s.xs.mkdir(record)
        fn = devices.PciFunction(
            bdf,
            vdevfn=vdevfn,
            msitranslate=spec.msitranslate,
            power_mgmt=spec.power_mgmt,
            permissive=spec.permissive,
            rdm_policy=spec.rdm_policy.value,
        )
        await devices.add_pci(
            s.xs, stub, fn, domain_name=f"{info.name}{proto.STUBDOM_SUFFIX}", starting=starting
        )
        try:
            devfn = await channel(s, stub, guest, timeout).pci_insert(
                bdf, vdevfn, spec.msitranslate, spec.power_mgmt
            )
        except DeviceModelDied:
            raise  # the pciback entry goes with the stubdomain; no one would answer
        except BaseException:
            with contextlib.suppress(Exception):
                await devices.remove_pci(s.xs, stub, fn.address)
            with contextlib.suppress(Exception):
                await s.xs.rm(record)
            raise
        await s.xs.write(f"{record}/vdevfn", f"0x{devfn:02x}")
        done.append(AttachedPci(bdf, devfn))
    return done


async def pci_detach(
    s: Session, guest: int, bdf: proto.Bdf, *, force: bool = False, timeout: float | None = None
) -> None:
    """``xl pci-detach``: ``pci-rem`` (function 0, not forced), then the pciback entry."""
    stub = await _stub_of(s, guest)
    record = _pci_record(guest, bdf)
    raw = await s.xs.read_optional(f"{record}/vdevfn")
    if raw is not None:
        await channel(s, stub, guest, timeout).pci_remove(
            bdf, force=force, vdevfn=int(raw, 16)
        )
    elif await s.xs.exists(record):
        # An unfinished attach: the device model may or may not have the function.
        # One that never had it refuses (ours) or stays silent (qemu-trad).
        try:
            await channel(s, stub, guest, timeout).pci_remove(bdf, force=force)
        except (PciRemoveError, DeviceModelTimeout) as e:
            log.info("%s was never inserted (%s); removing what the attach left", bdf, e)
    else:
        raise ToolstackError(f"{bdf} is not attached to domain {guest}; see 'stubdom pci-list'")
    with contextlib.suppress(devices.DeviceError):
        await devices.remove_pci(s.xs, stub, bdf)

    async def drop(t: Transaction) -> None:
        with contextlib.suppress(NoEntry):
            await t.rm(record)

    await s.xs.retry_transaction(drop)


async def pci_list(s: Session, guest: int) -> list[AttachedPci]:
    base = f"/libxl/{guest}/device/pci"
    try:
        names = await s.xs.directory(base)
    except NoEntry:
        return []
    out = []
    for name in names:
        raw = await s.xs.read_optional(f"{base}/{name}/vdevfn")
        dom, bus, dev, func = name.split("-")
        bdf = proto.Bdf(int(dom, 16), int(bus, 16), int(dev, 16), int(func))
        out.append(AttachedPci(bdf, int(raw, 16) if raw is not None else None))
    return sorted(out, key=lambda a: (a.vdevfn is None, a.vdevfn or 0))


# -- save and restore ----------------------------------------------------------------------

#: Keys of the control directory that belong to the live exchange, not to saved state.
_LIVE_KEYS = frozenset({"state", "command", "parameter", "logdirty"})


async def _guest_config(s: Session, guest: int) -> GuestConfig:
    from stubdom.toolstack.savefile import config_from_json

    info = await s.hv.domain_info(guest)
    path = s.paths.userdata(guest, info.uuid)
    try:
        return config_from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ToolstackError(
            f"no configuration recorded for {info.name!r} ({path}); "
            "was it created with 'stubdom create'?"
        ) from None


async def _emulator_xenstore(s: Session, stub: int, guest: int) -> dict[str, str]:
    """The device model's own nodes (libxl's EMULATOR_XENSTORE_DATA), relative keys."""
    out: dict[str, str] = {}
    base = proto.dm_path(stub, guest)
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            names = await s.xs.directory(f"{base}/{rel}".rstrip("/"))
        except NoEntry:
            continue
        for name in names:
            key = f"{rel}/{name}".lstrip("/")
            if key.split("/", 1)[0] in _LIVE_KEYS:
                continue
            value = await s.xs.read_optional(f"{base}/{key}")
            if value:
                out[key] = value.decode("utf-8", "replace")
            stack.append(key)
    return out


async def save_guest(
    s: Session,
    guest: int,
    file: Path,
    *,
    keep: bool = False,
    leave_paused: bool = False,
    timeout: float | None = None,
) -> int:
    """``xl save``: ``save`` -> ``paused``, the device-model state once complete, the
    save image; then the guest is destroyed unless ``keep``.  Returns the image size."""
    from stubdom.toolstack.fileio import FileRegion, write_checked_file
    from stubdom.toolstack.savefile import (
        SaveFileError,
        SaveImage,
        config_to_json,
        encode_save_image_frame,
    )
    from stubdom.toolstack.spawn import destroy_guest

    stub = await _stub_of(s, guest)
    cfg = await _guest_config(s, guest)
    attached = await pci_list(s, guest)
    if attached:
        # A passed-through function's state lives in the host device, not in the device
        # model's stream: saving would lose it.  Refuse before touching anything.
        functions = ", ".join(str(a.bdf) for a in attached)
        raise ToolstackError(
            f"domain {guest} has PCI functions attached ({functions}); "
            "detach them with 'stubdom pci-detach' before saving"
        )
    state_file = s.paths.save_file(guest)
    # Console 1's file is appended to across saves: this save's state is what it adds.
    start = state_file.stat().st_size if state_file.exists() else 0
    await s.hv.pause(guest)
    chan = channel(s, stub, guest, timeout)
    try:
        await chan.save()
    except DeviceModelDied as e:
        raise ToolstackError(
            f"{e}\ndomain {guest} is left paused without a device model; "
            f"'stubdom destroy {guest}' removes it"
        ) from None
    except DeviceModelError as e:
        raise ToolstackError(f"{e}; {await _carry_on(s, chan, guest)}") from None
    # libxl trusts ``paused`` alone; we also check that the state is a whole stream.
    # The device model closes console 1 before it writes ``paused``, and a console's
    # close returns only once the backend has the data on disk: one look suffices.
    # The state (hundreds of MB with guest RAM) is never held in memory: it is checked
    # while it is copied into the image, in one pass (an unusable one leaves no image).
    with contextlib.ExitStack() as files:
        try:
            fd = files.enter_context(open(state_file, "rb", buffering=0)).fileno()
        except FileNotFoundError:
            fd = os.open(os.devnull, os.O_RDONLY)
            files.callback(os.close, fd)
        blob = FileRegion(fd, start, max(0, os.fstat(fd).st_size - start))
        image = SaveImage(
            config_json=config_to_json(cfg),
            emulator_xenstore=await _emulator_xenstore(s, stub, guest),
            emulator_context=b"",
        )
        head, tail = encode_save_image_frame(image, blob.length)
        tmp = file.with_name(file.name + ".partial")
        try:
            write_checked_file(tmp, head, blob, tail)
        except SaveFileError as e:
            raise ToolstackError(
                f"the device model of domain {guest} reported paused, but its "
                f"saved state in {state_file} is unusable: {e}; nothing was saved, "
                f"{await _carry_on(s, chan, guest)}"
            ) from None
        tmp.replace(file)
    if keep:
        await chan.resume()
        if not leave_paused:
            await s.hv.unpause(guest)
    else:
        await destroy_guest(s.hv, s.xs, guest, s.paths)
    return len(head) + blob.length + len(tail)


async def _carry_on(s: Session, chan: DeviceModelChannel, guest: int) -> str:
    """After a failed save: the device model continues and the guest runs again."""
    try:
        await chan.resume()
        await s.hv.unpause(guest)
    except (DeviceModelError, HypervisorError) as e:
        return f"and the guest could not be resumed ({e})"
    return "the guest is running again"


async def restore_guest(
    s: Session, file: Path, *, paused: bool = False, timeout: float | None = None
) -> Created:
    """``xl restore``: validate the image, recreate both domains from the saved state.

    The image is mapped, not read, and its device-model state is checked while it is
    copied out (one pass) into a staged file, which the spawner moves into place as the
    restore file: nothing is created unless the whole image is good."""
    from stubdom.toolstack.fileio import StagedFile, locate_save_image_file, write_checked_file
    from stubdom.toolstack.savefile import SaveFileError, config_from_json

    try:
        f = open(file, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise ToolstackError(f"cannot read {file}: {e.strerror or e}") from None
    s.paths.ensure()
    _remove_dead_stages(s.paths.state_dir)
    staged = s.paths.state_dir / f"{RESTORE_STAGED}.{os.getpid()}.{id(f):x}"
    try:
        with f:
            problem = None
            try:
                image, state = locate_save_image_file(f, check_dm_state=False)
                write_checked_file(staged, b"", state, b"", mode=0o600)
            except SaveFileError as e:
                problem = f"{file}: {e}; nothing was restored"
            except (OSError, ValueError) as e:
                problem = f"cannot read {file}: {getattr(e, 'strerror', None) or e}"
            if problem is not None:
                # Raised here, once the error (whose frames may hold views of the
                # mapped file) is gone.
                raise ToolstackError(problem)
        cfg = config_from_json(image.config_json)
        return await create_guest(
            s, cfg, paused=paused, timeout=timeout, restore_state=StagedFile(staged)
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
