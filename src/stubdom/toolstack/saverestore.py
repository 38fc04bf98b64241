"""``xl save`` and ``xl restore``: the device model's state between a guest and a file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from stubdom import protocol as proto
from stubdom.toolstack.channel import DeviceModelChannel
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.exchange import DeviceModelDied, DeviceModelError
from stubdom.toolstack.operations import (
    UnusableRecord,
    channel,
    create_guest,
    recorded_config,
    stub_of,
)
from stubdom.toolstack.pci import pci_list
from stubdom.toolstack.savetarget import SaveTarget
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.toolstack.spawn import Created
from stubdom.xenstore import NoEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between looks for a reader of a FIFO the image is to go to.
FIFO_POLL = 0.05

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
    try:
        return await recorded_config(s, guest)
    except UnusableRecord as e:
        raise ToolstackError(f"{e}; give one as CONFIGFILE") from None


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
    file: str | os.PathLike[str],
    *,
    keep: bool = False,
    leave_paused: bool = False,
    preserve_domid: bool = False,
    config: GuestConfig | None = None,
    timeout: float | None = None,
) -> int:
    """``xl save``: ``save`` -> ``paused``, the device-model state once complete, the
    save image into ``file`` (`savetarget`: a regular file is replaced atomically, a
    FIFO or ``-`` is a stream).  Afterwards the guest is destroyed; with ``keep`` (``-c``)
    it runs on; with ``leave_paused`` (``-p``, with or without ``-c``) it stays paused and
    the device model runs on, as xl's ``save_domain`` does.

    ``config`` is stored instead of the guest's own configuration (xl's ConfigFile);
    ``preserve_domid`` records the guest's domid in its own one, which restore then asks
    for (``-D``; xl ignores it with a ConfigFile, so do we).  Every check that can fail
    is made before the guest is paused; any failure after that (a write error, Ctrl-C)
    continues the device model and leaves the guest as it was.  Returns the image size."""
    stub = await stub_of(s, guest)
    if config is None:
        config = replace(await _guest_config(s, guest), domid=guest if preserve_domid else None)
    await _refuse_passthrough(s, guest)
    was_paused = (await s.hv.domain_info(guest)).paused
    target = await _open_target(os.fspath(file))
    try:
        chan = channel(s, stub, guest, timeout)
        try:
            await s.hv.pause(guest)
            size = await _write_image(s, chan, stub, guest, config, target)
        except DeviceModelDied as e:
            raise ToolstackError(
                f"{e}\ndomain {guest} is left paused without a device model; "
                f"'stubdom destroy {guest}' removes it"
            ) from None
        except BaseException as e:
            outcome = await _uninterrupted(_carry_on(s, chan, guest, was_paused))
            raise _failed(e, guest, target, outcome) from None
    finally:
        target.discard()  # nothing left to discard once committed
    await _uninterrupted(_after_save(s, chan, guest, keep or leave_paused, leave_paused))
    return size


async def _refuse_passthrough(s: Session, guest: int) -> None:
    """A passed-through function's state lives in the host device, not in the device
    model's stream: saving would lose it."""
    attached = await pci_list(s, guest)
    if attached:
        functions = ", ".join(str(a.bdf) for a in attached)
        raise ToolstackError(
            f"domain {guest} has PCI functions attached ({functions}); "
            "detach them with 'stubdom pci-detach' before saving"
        )


async def _open_target(name: str) -> SaveTarget:
    """`open_save_target`, waiting (nothing paused yet) for a FIFO's reader as xl's
    blocking open would."""
    from stubdom.toolstack.savetarget import NoReaderYet, SaveTargetError, open_save_target

    waiting = False
    while True:
        try:
            return open_save_target(name)
        except NoReaderYet:
            if not waiting:
                log.warning("%s: waiting for a reader of this FIFO (the guest runs on)", name)
                waiting = True
            await asyncio.sleep(FIFO_POLL)
        except SaveTargetError as e:
            raise ToolstackError(str(e)) from None


async def _write_image(
    s: Session,
    chan: DeviceModelChannel,
    stub: int,
    guest: int,
    cfg: GuestConfig,
    target: SaveTarget,
) -> int:
    """The device model saves; its state, with ``cfg``, goes into ``target`` as an image."""
    from stubdom.toolstack.fileio import FileRegion, WriteError, write_checked
    from stubdom.toolstack.savefile import (
        SaveFileError,
        SaveImage,
        config_to_json,
        encode_save_image_frame,
    )

    state_file = s.paths.save_file(guest)
    # Console 1's file is appended to across saves: this save's state is what it adds.
    start = state_file.stat().st_size if state_file.exists() else 0
    await chan.save()
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
        try:
            write_checked(target.fd, head, blob, tail)
        except SaveFileError as e:
            raise ToolstackError(
                f"the device model of domain {guest} reported paused, but its "
                f"saved state in {state_file} is unusable: {e}; nothing was saved"
            ) from None
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError  # interrupted while writing: no image after all
    try:
        target.commit()
    except OSError as e:
        raise WriteError(e.errno, e.strerror) from e
    return len(head) + blob.length + len(tail)


def _failed(error: BaseException, guest: int, target: SaveTarget, outcome: str) -> BaseException:
    """The error to report for a save that failed after the guest was paused."""
    from stubdom.toolstack.fileio import WriteError

    if isinstance(error, ToolstackError | DeviceModelError):
        return ToolstackError(f"{error}; {outcome}")
    if isinstance(error, OSError):
        left = "the image is incomplete" if target.stream else f"{target.name} is as it was"
        why = error.strerror or str(error)
        if isinstance(error, WriteError):
            return ToolstackError(
                f"cannot write the image to {target.label}: {why}; {left}; {outcome}"
            )
        where = f" ({error.filename})" if error.filename else ""
        return ToolstackError(f"saving domain {guest} failed: {why}{where}; {left}; {outcome}")
    log.warning("the save of domain %d did not finish (%r); %s", guest, error, outcome)
    return error


async def _carry_on(s: Session, chan: DeviceModelChannel, guest: int, was_paused: bool) -> str:
    """After a failed save: the device model continues (ending the save, its marker
    goes) and the guest is as it was before, running or paused."""
    try:
        await chan.resume()
        if not was_paused:
            await s.hv.unpause(guest)
    except Exception as e:  # reported with the error that brought us here
        return f"the guest could not be resumed ({e})"
    return "the guest is paused, as it was" if was_paused else "the guest is running again"


async def _after_save(
    s: Session, chan: DeviceModelChannel, guest: int, keep: bool, leave_paused: bool
) -> None:
    """xl's ``save_domain`` once the image is written: destroy, or resume the device
    model and, unless ``leave_paused``, the guest."""
    from stubdom.toolstack.spawn import destroy_guest

    if keep:
        await chan.resume()
        if not leave_paused:
            await s.hv.unpause(guest)
    else:
        await destroy_guest(s.hv, s.xs, guest, s.paths, s.channels)


async def _uninterrupted(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if this task is cancelled meanwhile (Ctrl-C cancels
    a command's task): what puts a guest back must not be cut short.  The cancellation
    is raised once ``aw`` is done."""
    inner = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def restore_guest(
    s: Session, file: Path, *, paused: bool = False, timeout: float | None = None
) -> Created:
    """``xl restore``: validate the image, recreate both domains from the saved state.

    The image is mapped, not read, and its device-model state is checked while it is
    copied out (one pass) into a staged file, which the spawner moves into place as the
    restore file: nothing is created unless the whole image is good."""
    from stubdom.toolstack.fileio import (
        StagedFile,
        WriteError,
        locate_save_image_file,
        write_checked_file,
    )
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
                cfg = config_from_json(image.config_json)
                write_checked_file(staged, b"", state, b"", mode=0o600)
            except SaveFileError as e:
                problem = f"{file}: {e}; nothing was restored"
            except WriteError as e:
                problem = f"cannot stage the state of {file} in {staged.parent}: {e.strerror}"
            except (OSError, ValueError) as e:
                problem = f"cannot read {file}: {getattr(e, 'strerror', None) or e}"
            if problem is not None:
                # Raised here, once the error (whose frames may hold views of the
                # mapped file) is gone.
                raise ToolstackError(problem)
        return await create_guest(
            s, cfg, paused=paused, timeout=timeout, restore_state=StagedFile(staged)
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()

