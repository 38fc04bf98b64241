"""Moving a saved device-model state between files without holding it in memory.

A state is hundreds of MB (the guest's RAM, with ``sim``): the toolstack checks it in
pieces of one reused buffer and lets the kernel copy it (``copy_file_range``), from
console 1's file into the save image and from the image into the restore file.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from stubdom.devicemodel import stream
from stubdom.toolstack.savefile import (
    DM_STATE_HEAD,
    SaveImage,
    check_dm_state_header,
    check_dm_stream,
    locate_save_image,
)

#: Bytes read at a time when a state is checked.
CHUNK = 1 << 20


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


def check_dm_state_file(region: FileRegion) -> None:
    """`savefile.check_dm_state_complete` on a state that lies in a file: the same
    checks and errors, reading the state once in pieces."""
    head = os.pread(region.fd, min(region.length, DM_STATE_HEAD), region.offset)
    last = -1
    if region.length:
        tail = os.pread(region.fd, 1, region.offset + region.length - 1)
        last = tail[0] if tail else -1
    if check_dm_state_header(head, region.length, last) == stream.SECTION_IDSTR:
        check_dm_stream(read_pieces(region))


def copy_region(region: FileRegion, out_fd: int) -> None:
    """Append the region to ``out_fd`` (at its file position), in the kernel when it
    can (``copy_file_range``), else through a buffer; OSError if the file is shorter."""
    done = 0
    try:
        while done < region.length:
            n = os.copy_file_range(
                region.fd, out_fd, region.length - done, region.offset + done
            )
            if n == 0:
                break
            done += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        for piece in read_pieces(FileRegion(region.fd, region.offset + done,
                                            region.length - done)):  # fmt: skip
            _write_all(out_fd, piece)
            done += piece.nbytes
    if done < region.length:
        raise OSError(errno.EIO, f"file ended after {done} of {region.length} bytes")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view) :]


def write_file(path: os.PathLike[str] | str, head: bytes, body: FileRegion, tail: bytes) -> None:
    """Create (or truncate) ``path`` holding ``head``, the region, then ``tail``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _write_all(fd, head)
        copy_region(body, fd)
        _write_all(fd, tail)
    finally:
        os.close(fd)


def locate_save_image_file(f: BinaryIO) -> tuple[SaveImage, FileRegion]:
    """`savefile.locate_save_image` on an open save image, mapped rather than read: the
    image (with an empty ``emulator_context``) and where its device-model state lies."""
    fd = f.fileno()
    if os.fstat(fd).st_size == 0:
        image, at, length = locate_save_image(b"")
        return image, FileRegion(fd, at, length)
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        image, at, length = locate_save_image(view)
    finally:
        # An error's traceback may still hold views of the mapping: then it is unmapped
        # once they are gone.
        with contextlib.suppress(BufferError):
            view.release()
            mapped.close()
    return image, FileRegion(fd, at, length)
