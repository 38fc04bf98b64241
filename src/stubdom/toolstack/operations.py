"""What every operation on a guest starts from: its channel, its stubdomain, create.

PCI hot-plug lives in `stubdom.toolstack.pci`, save and restore in
`stubdom.toolstack.saverestore`.  The guest's configuration is kept as JSON next to the
save files, as libxl keeps its userdata, so that save and pci-list know what the guest
was made from.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from stubdom import protocol as proto
from stubdom.host.hypervisor import DomainState, HypervisorError
from stubdom.toolstack.channel import DeviceModelChannel
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.toolstack.spawn import Created, StubdomSpawner
from stubdom.xenstore import XenStoreError

if TYPE_CHECKING:
    from stubdom.devicemodel.base import BytesLike
    from stubdom.toolstack.fileio import StagedFile

log = logging.getLogger(__name__)


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
        channels=s.channels,
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
    return f" ({how}){await _log_tail(s, stub, guest)}"


async def _log_tail(s: Session, stub: int, guest: int) -> str:
    """``; the end of its log FILE:`` and its last lines quoted, one a line."""
    try:
        name = (await s.hv.domain_info(guest)).name
    except HypervisorError:
        return ""
    log_file = await _console0_file(s, stub) or s.paths.dm_log(name)
    lines = tail_lines(log_file, POSTMORTEM_LINES)
    if not lines:
        return f"; its log {log_file} is empty"
    quoted = "".join(f"\n    | {line}" for line in lines)
    return f"; the end of its log {log_file}:{quoted}"


async def _console0_file(s: Session, stub: int) -> Path | None:
    """The file console 0 of ``stub`` writes to (named at create: a rename keeps it)."""
    from stubdom.toolstack.console import console_frontend

    with contextlib.suppress(XenStoreError):
        output = await s.xs.read_optional(f"{console_frontend(stub, 0)}/output")
        if output is not None and output.startswith(b"file:"):
            return Path(output[5:].decode())
    return None


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

    from stubdom.toolstack.pci import check_config, pci_attach

    async def attach_pcis(guest: int, stub: int) -> None:
        for spec in cfg.pcis:
            await pci_attach(s, guest, spec, starting=True)

    try:
        await check_config(s, cfg.pcis)  # before anything is built, not once it all is
    except ToolstackError as e:
        raise ToolstackError(f"{cfg.name!r} not created, nothing was built: pci: {e}") from None

    spawner = StubdomSpawner(
        s.hv, s.xs, s.paths, wait_running, timeout or proto.STUBDOM_START_TIMEOUT
    )
    created = await spawner.create(
        cfg, paused=paused, restore_state=restore_state, attach_pcis=attach_pcis
    )
    from stubdom.toolstack.savefile import config_to_json

    s.paths.userdata(created.guest, cfg.uuid).write_text(json.dumps(config_to_json(cfg)))
    return created


class UnusableRecord(ToolstackError):
    """The recorded configuration of a guest is there but cannot be read back."""


async def recorded_config(s: Session, guest: int) -> GuestConfig:
    """The configuration ``guest`` was created from, with the changes made since (its
    userdata, as ``libxl_retrieve_domain_configuration`` gives it)."""
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
    except ValueError as e:  # SaveFileError, or not JSON at all
        raise UnusableRecord(
            f"the configuration recorded for {info.name!r} ({path}) is unusable: {e}"
        ) from None


async def update_recorded_config(
    s: Session, guest: int, change: Callable[[GuestConfig], None]
) -> None:
    """Apply ``change`` to the recorded configuration, so that a restart or a save sees
    the guest as it is now (renamed, another memory target, other vCPUs)."""
    from stubdom.toolstack.savefile import config_to_json

    try:
        cfg = await recorded_config(s, guest)
    except ToolstackError as e:
        log.info("not recording the change: %s", e)
        return
    change(cfg)
    path = s.paths.userdata(guest, cfg.uuid)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config_to_json(cfg)))
    tmp.replace(path)


async def stub_of(s: Session, guest: int, *, hint: bool = True) -> int:
    """The guest's stubdomain, refused at once if it cannot answer (dead or never
    started).  ``hint``: the error tells how to clean up (not while creating, which
    cleans up by itself)."""
    stub = await s.stubdom_of(guest)
    if stub is None:
        raise ToolstackError(
            f"domain {guest} has no device-model stubdomain (a create that did not finish?); "
            f"'stubdom destroy {guest}' removes it"
        )
    if not await channel(s, stub, guest).stub_alive():
        raise ToolstackError(await dead_stub_message(s, stub, guest, hint=hint))
    if (await s.hv.domain_info(stub)).paused:
        # Only a create that did not finish leaves it so: nothing would ever answer.
        raise ToolstackError(
            f"the stubdomain of domain {guest} (domain {stub}) is paused and cannot answer "
            f"(a create that did not finish?); 'stubdom destroy {guest}' removes both"
        )
    return stub


_ENDED_VERB = {
    DomainState.CRASHED: "crashed",
    DomainState.SHUTDOWN: "shut down",
    DomainState.DYING: "is being destroyed",
}


async def dead_stub_message(s: Session, stub: int, guest: int, *, hint: bool = True) -> str:
    """A stubdomain that ended after it had started: which, how, what to do, its log."""
    ended = "is gone"
    with contextlib.suppress(HypervisorError):
        ended = _ENDED_VERB.get((await s.hv.domain_info(stub)).state, ended)
    name = str(guest)
    with contextlib.suppress(HypervisorError):
        name = (await s.hv.domain_info(guest)).name
    fix = f"; 'stubdom destroy {name}' removes both" if hint else ""
    return (
        f"the stubdomain of {name} (domain {stub}) {ended} after it had started: "
        f"{name} has no device model any more{fix}{await _log_tail(s, stub, guest)}"
    )
