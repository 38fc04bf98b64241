"""``xl save`` and ``xl restore``: the device model's state between a guest and a file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from stubdom import protocol as proto
from stubdom.host.hypervisor import HypervisorError
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.control import DeviceModelChannel, DeviceModelDied, DeviceModelError
from stubdom.toolstack.operations import channel, create_guest, stub_of
from stubdom.toolstack.pci import pci_list
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.toolstack.spawn import Created
from stubdom.xenstore import NoEntry

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

    stub = await stub_of(s, guest)
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

