"""The files that serialise device-model commands across toolstack processes.

``<lock_dir>/dm-<G>.lock`` is flocked around each command to guest G's device model:
libxl takes no lock, and two commands written close together merge into one
([ts.serialised]).  The lock file also names its last holder (`GuestLock.stamp`), so a
holder knows whether anyone else held it since.  ``<lock_dir>/dm-<G>.saved``
marks a save in progress: it names the stubdomain and stays flocked while the process
that saved lives, so a marker nobody holds is a dead toolstack's, not a reason to refuse
a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

#: How often a process waiting for another process's flock retries (local lock only).
LOCK_POLL = 0.02

#: Numbers the holders this process names (`new_stamp`).
_holders = itertools.count(1)


def lock_path(lock_dir: Path, guest: int) -> Path:
    return lock_dir / f"dm-{guest}.lock"


def save_marker_path(lock_dir: Path, guest: int) -> Path:
    return lock_dir / f"dm-{guest}.saved"


def new_stamp() -> bytes:
    """A name for a holder of guest locks that no other holder has: our pid and a
    number, fixed width (it is written over the last one, with no truncate)."""
    return b"%10d %20d\n" % (os.getpid(), next(_holders))


def _open_lock_file(path: str) -> int:
    """The lock file, created (with its directory) if missing: the directory is made
    only when the open says it is missing, not before every command."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o600)


class GuestLock:
    """A guest's lock: the in-process ``lock``, then an exclusive ``flock`` on ``path``
    (created if missing) that other processes see.  The flock is polled with LOCK_NB:
    waiting for it never blocks the event loop, and a cancelled wait holds nothing.

    ``stamp`` names the holder.  Once held, the lock file's stamp is read into
    ``previous``, and ours written over it unless it is ours already, before anything
    is done under the lock (a stamp that cannot be written fails the hold).  So a
    holder that finds its own stamp knows no one else held the lock since its last
    hold; a holder's consecutive holds write nothing.  ``taken`` is called then, once
    per hold, with the lock.

    An async context manager written out, not an async generator: every command takes
    it, and an async generator also costs its loop's bookkeeping on each use.  A flock
    nobody holds is taken without a coroutine of its own."""

    __slots__ = ("_fd", "_taken", "lock", "path", "previous", "stamp")

    def __init__(
        self,
        path: str | Path,
        lock: asyncio.Lock,
        stamp: bytes | None = None,
        taken: Callable[[GuestLock], None] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.lock = lock
        self._fd = -1
        self._taken = taken
        #: The stamp the last holder left (empty: none).
        self.previous = b""
        #: Our holder's (a fresh one if not given).
        self.stamp = new_stamp() if stamp is None else stamp

    async def __aenter__(self) -> None:
        await self.lock.acquire()
        try:
            fd = _open_lock_file(self.path)
            try:
                if not _try_flock(fd):
                    await _wait_for_flock(fd, self.path)
                self._restamp(fd)
                if self._taken is not None:
                    self._taken(self)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except BaseException:
            self.lock.release()
            raise

    def _restamp(self, fd: int) -> None:
        try:
            self.previous = os.pread(fd, 64, 0)
            if self.previous != self.stamp:
                os.pwrite(fd, self.stamp, 0)
        except OSError as e:
            raise OSError(e.errno, f"cannot stamp the lock file: {e.strerror}", self.path) from e

    async def __aexit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)  # releases the flock
        finally:
            self.lock.release()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _wait_for_flock(fd: int, path: str) -> None:
    """Poll until ``fd`` (``path``, held by another process) holds the flock."""
    log.debug("waiting for %s", path)
    while True:
        await asyncio.sleep(LOCK_POLL)
        if _try_flock(fd):
            return


class SaveMarker:
    """The save marker of one guest, as one toolstack process sees it (use it under
    the guest's lock)."""

    def __init__(self, path: Path, guest: int) -> None:
        self.path = path
        self.guest = guest
        #: Our own marker, flocked until `release` or this process's end.
        self._held: IO[str] | None = None

    def hold(self, stubdom: int) -> None:
        """Write the marker for ``stubdom`` and keep it flocked: it dies with this
        process, so a marker nobody holds is a dead toolstack's."""
        self.release()
        f = open(self.path, "a+")  # noqa: SIM115 -- held until release
        with contextlib.suppress(BlockingIOError):  # another channel of ours holds it
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(f.fileno()).st_size:
            # Only when there is something to cut: on ext4 a truncate to 0 makes the
            # file's close flush it to disk (auto_da_alloc), milliseconds on `resume`.
            f.truncate(0)
        f.write(f"{stubdom}\n")
        f.flush()
        self._held = f

    def release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def remove(self) -> None:
        """The save is over: the marker goes, and our hold on it."""
        self.path.unlink(missing_ok=True)
        self.release()

    def in_progress(self, stubdom: int) -> bool:
        """The marker names ``stubdom`` and the process that saved still holds it."""
        try:
            f = open(self.path)  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            return False
        with f:
            if f.read().strip() != str(stubdom):
                return False
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        log.warning(
            "guest %d: the save marker %s is left by a toolstack that died", self.guest, self.path
        )
        return False
