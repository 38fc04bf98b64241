"""Moving a saved device-model state between files without holding it in memory.

A state is hundreds of MB (the guest's RAM, with ``sim``): the toolstack reads it in
pieces of one reused buffer, checking each piece and writing it out in the same pass,
from console 1's file into the save image and from the image into the restore file.
(One pass through a small buffer costs less than a check then a ``copy_file_range``,
which copied at under 2 GB/s here.)
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from stubdom.devicemodel import stream
from stubdom.toolstack.savefile import (
    SaveImage,
    check_dm_state_header,
    check_dm_stream,
    locate_save_image,
)

#: Bytes read at a time when a state is checked.
CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedFile:
    """A file holding a checked device-model state, to be moved where it is wanted."""

    path: Path


@dataclass(frozen=True)
class FileRegion:
    """``length`` bytes at ``offset`` of the open file ``fd`` (not owned: not closed)."""

    fd: int
    offset: int
    length: int


def read_pieces(region: FileRegion, chunk: int | None = None) -> Iterator[memoryview]:
    """The region in pieces (of `CHUNK` bytes), read into one buffer: a piece is valid
    until the next one is asked for.  Ends early if the file is shorter than the region."""
    chunk = chunk or CHUNK
    buf = bytearray(min(chunk, region.length))
    with memoryview(buf) as view:
        done = 0
        while done < region.length:
            want = min(chunk, region.length - done)
            got = os.preadv(region.fd, [view[:want]], region.offset + done)
            if not got:
                return
            yield view[:got]
            done += got


def check_dm_state_file(region: FileRegion, out_fd: int | None = None) -> None:
    """`savefile.check_dm_state_complete` on a state that lies in a file: the same
    checks and errors, reading the state once in pieces.  With ``out_fd``, each piece
    is also written there as it is read (a copy in the same pass; incomplete if the
    check fails); OSError if the file is shorter than the region."""
    head = os.pread(region.fd, min(region.length, stream.SAVEVM_HEAD), region.offset)
    last = -1
    if region.length:
        end = os.pread(region.fd, 1, region.offset + region.length - 1)
        last = end[0] if end else -1
    stubdom_dm = check_dm_state_header(head, region.length, last) == stream.SECTION_IDSTR
    if not stubdom_dm and out_fd is None:
        return
    copied = 0

    def pieces() -> Iterator[memoryview]:
        nonlocal copied
        for piece in read_pieces(region):
            if out_fd is not None:
                _write_all(out_fd, piece)
            copied += piece.nbytes
            yield piece

    if stubdom_dm:
        check_dm_stream(pieces())
    else:
        for _ in pieces():
            pass
    if copied < region.length:
        raise OSError(errno.EIO, f"file ended after {copied} of {region.length} bytes")


class WriteError(OSError):
    """Writing the output failed (ENOSPC, EIO, EPIPE...), as opposed to reading the state."""


def _write_all(fd: int, data: bytes | memoryview) -> None:
    with memoryview(data) as view:
        while view:
            try:
                written = os.write(fd, view)
            except OSError as e:
                raise WriteError(e.errno, e.strerror) from e
            view = view[written:]


def write_checked(fd: int, head: bytes, state: FileRegion, tail: bytes) -> None:
    """Write ``head``, the region, then ``tail`` to ``fd``; the region is checked as a
    device-model state while it is copied (`check_dm_state_file`, one pass over it)."""
    _write_all(fd, head)
    check_dm_state_file(state, fd)
    _write_all(fd, tail)


def write_checked_file(
    path: os.PathLike[str] | str,
    head: bytes,
    state: FileRegion,
    tail: bytes,
    *,
    mode: int = 0o666,
) -> None:
    """Create (or truncate) ``path`` holding what `write_checked` writes.  On any error
    ``path`` is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            write_checked(fd, head, state, tail)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def locate_save_image_file(
    f: BinaryIO, *, check_dm_state: bool = True
) -> tuple[SaveImage, FileRegion]:
    """`savefile.locate_save_image` on an open save image, mapped rather than read: the
    image (with an empty ``emulator_context``) and where its device-model state lies."""
    fd = f.fileno()
    if os.fstat(fd).st_size == 0:
        image, at, length = locate_save_image(b"", check_dm_state=check_dm_state)
        return image, FileRegion(fd, at, length)
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        image, at, length = locate_save_image(view, check_dm_state=check_dm_state)
    finally:
        # An error's traceback may still hold views of the mapping: then it is unmapped
        # once they are gone.
        with contextlib.suppress(BufferError):
            view.release()
            mapped.close()
    return image, FileRegion(fd, at, length)
