"""Where ``stubdom save`` writes its image: into the path the user named, as ``xl save``.

xl's ``save_domain`` opens the named path (``O_WRONLY|O_CREAT|O_TRUNC``) and writes into
it, so a symlink, a FIFO or a pipe work.  We do the same, except where that could damage
what the path names:

* a regular file, or a path that does not exist yet, is written as a temporary file next
  to the resolved target, flushed to disk, then renamed over that target: a failed save
  leaves the old file as it was, and a symlink on the way stays a symlink;
* a FIFO, a pipe (``/dev/stdout``...) and ``-`` (standard output) are written as
  streams; a reader that goes away (EPIPE) fails the save like any other write error;
* a device, a directory or a socket is refused, and so is a terminal as standard output.

Everything here happens before the guest is paused, so a refusal costs the guest nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass
from glob import escape
from pathlib import Path

log = logging.getLogger(__name__)

#: The name that means standard output.
STDOUT = "-"
#: How a temporary image is named, in the directory of the file it will replace.
PARTIAL = ".{name}.{pid}.partial"


class SaveTargetError(ValueError):
    """A destination that cannot take an image; one line naming it and the fix."""


class NoReaderYet(Exception):
    """A FIFO nobody reads yet: opening it again later may work."""


@dataclass
class SaveTarget:
    """An open destination: ``fd`` receives the image, `commit` makes it what the named
    path holds, `discard` undoes what can be undone."""

    name: str
    fd: int
    #: For a regular file: the temporary file, and the resolved target it replaces.
    temp: Path | None = None
    final: Path | None = None

    @property
    def stream(self) -> bool:
        """Whether bytes written are gone for good (a FIFO, a pipe, standard output)."""
        return self.final is None

    @property
    def label(self) -> str:
        return "standard output" if self.name == STDOUT else self.name

    def commit(self) -> None:
        """Flush the image to disk, close, and rename a temporary file into place."""
        if stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.fsync(self.fd)  # a replaced image is never an empty one after a crash
        fd, self.fd = self.fd, -1
        os.close(fd)
        if self.temp is not None and self.final is not None:
            os.replace(self.temp, self.final)
            self.temp = None

    def discard(self) -> None:
        """Close, and remove the temporary file if any (a no-op after `commit`)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
            self.temp = None


def open_save_target(name: str) -> SaveTarget:
    """Open the destination ``name`` names.  `SaveTargetError` if it cannot take an
    image; `NoReaderYet` for a FIFO that nobody has opened for reading yet."""
    if name == STDOUT:
        return _stdout()
    try:
        st = os.stat(name)  # follows symlinks, /dev/stdout and /proc/self/fd/N too
    except FileNotFoundError:
        return _temp_file(name, None)
    except OSError as e:
        raise SaveTargetError(f"cannot save to {name}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return _temp_file(name, st)
    if stat.S_ISFIFO(st.st_mode):
        return _fifo(name)
    raise SaveTargetError(
        f"cannot save to {name}: it is {_kind(st.st_mode)}; "
        f"name a regular file, a FIFO or '{STDOUT}' for standard output"
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _stdout() -> SaveTarget:
    try:
        fd = os.dup(1)
    except OSError:
        raise SaveTargetError("cannot save to standard output: it is closed") from None
    if os.isatty(fd):
        os.close(fd)
        raise SaveTargetError(
            "cannot save to standard output: it is a terminal; redirect it to a file or a pipe"
        )
    return SaveTarget(STDOUT, fd)


def _fifo(name: str) -> SaveTarget:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise NoReaderYet(name) from None
        raise SaveTargetError(f"cannot save to {name}: {e.strerror}") from None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise SaveTargetError(f"cannot save to {name}: it was replaced while opened; try again")
    os.set_blocking(fd, True)
    return SaveTarget(name, fd)


def _temp_file(name: str, existing: os.stat_result | None) -> SaveTarget:
    """A temporary file next to the file ``name`` resolves to, with that file's mode and
    owner if it exists (the rename gives the path a new inode)."""
    final = Path(os.path.realpath(name))
    remove_dead_partials(final)
    temp = final.with_name(PARTIAL.format(name=final.name, pid=os.getpid()))
    with contextlib.suppress(OSError):
        os.unlink(temp)  # ours by its pid: left by a dead process that had it
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        where = final.parent
        why = "does not exist" if e.errno == errno.ENOENT else f"refuses a new file: {e.strerror}"
        raise SaveTargetError(f"cannot save to {name}: the directory {where} {why}") from None
    if existing is not None:
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IMODE(existing.st_mode))
        with contextlib.suppress(OSError):
            os.fchown(fd, existing.st_uid, existing.st_gid)
    return SaveTarget(name, fd, temp=temp, final=final)


def remove_dead_partials(final: Path) -> None:
    """Temporary images of ``final`` left by saves that were killed (pid not alive)."""
    with contextlib.suppress(OSError):
        for path in final.parent.glob(PARTIAL.format(name=escape(final.name), pid="*")):
            pid = path.name[len(final.name) + 2 : -len(".partial")]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                log.info("removing %s, left by a save that did not finish", path)
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's
    return True
