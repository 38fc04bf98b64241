"""Where a save image goes: the named path, never damaged by a failed save."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.devicemodel.stream import encode_state
from stubdom.toolstack.fileio import FileRegion, WriteError, write_checked
from stubdom.toolstack.savetarget import (
    NoReaderYet,
    SaveTarget,
    SaveTargetError,
    open_save_target,
    remove_dead_partials,
)

STATE = encode_state("sim", bytes(range(256)) * 40)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[FileRegion]:
    path = tmp_path / "console1"
    path.write_bytes(STATE)
    fd = os.open(path, os.O_RDONLY)
    yield FileRegion(fd, 0, len(STATE))
    os.close(fd)


def write(target: SaveTarget, state: FileRegion) -> None:
    write_checked(target.fd, b"head", state, b"tail")


def test_a_regular_file_is_replaced_only_by_a_whole_image(
    tmp_path: Path, state: FileRegion
) -> None:
    old = tmp_path / "g.save"
    old.write_bytes(b"the last good image")
    old.chmod(0o600)
    target = open_save_target(str(old))
    assert not target.stream and target.temp is not None and target.temp.parent == tmp_path
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, target.fd)  # the disk fills up
    os.close(full)
    with pytest.raises(WriteError) as exc:
        write(target, state)
    assert exc.value.errno == errno.ENOSPC
    target.discard()
    assert old.read_bytes() == b"the last good image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console1", "g.save"]

    target = open_save_target(str(old))
    write(target, state)
    assert old.read_bytes() == b"the last good image"  # not yet
    target.commit()
    assert old.read_bytes() == b"head" + STATE + b"tail"
    assert stat.S_IMODE(old.stat().st_mode) == 0o600  # the replaced file's mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console1", "g.save"]


def test_a_symlink_is_followed_and_stays_a_symlink(tmp_path: Path, state: FileRegion) -> None:
    (tmp_path / "images").mkdir()
    final = tmp_path / "images" / "g.save"
    link = tmp_path / "link.save"
    link.symlink_to(final)  # dangling: the image creates its target
    target = open_save_target(str(link))
    assert target.final == final and target.temp is not None
    assert target.temp.parent == final.parent
    write(target, state)
    target.commit()
    assert link.is_symlink() and final.read_bytes() == b"head" + STATE + b"tail"


def test_devices_directories_and_missing_directories_are_refused(tmp_path: Path) -> None:
    node = tmp_path / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 7))
    except PermissionError:
        node = Path("/dev/full")
    for path, why in ((node, "it is a device"), (tmp_path, "it is a directory")):
        with pytest.raises(SaveTargetError, match=f"^cannot save to {path}: {why}; "):
            open_save_target(str(path))
        assert stat.S_ISCHR(os.lstat(node).st_mode)
    missing = tmp_path / "nowhere" / "g.save"
    with pytest.raises(SaveTargetError) as exc:
        open_save_target(str(missing))
    why = f"the directory {missing.parent} does not exist"
    assert str(exc.value) == f"cannot save to {missing}: {why}"


def test_a_fifo_is_a_stream_once_someone_reads_it(tmp_path: Path, state: FileRegion) -> None:
    fifo = tmp_path / "g.fifo"
    os.mkfifo(fifo)
    with pytest.raises(NoReaderYet):
        open_save_target(str(fifo))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        target = open_save_target(str(fifo))
        assert target.stream and target.final is None
        os.write(target.fd, b"x")
        assert os.read(reader, 10) == b"x"
        os.close(reader)
        reader = -1
        with pytest.raises(WriteError) as exc:  # the reader went away
            write(target, state)
        assert exc.value.errno == errno.EPIPE
        target.discard()
    finally:
        if reader >= 0:
            os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_full_device_is_a_write_error(state: FileRegion) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(WriteError) as exc:
            write_checked(fd, b"head", state, b"tail")
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_temporary_images_of_dead_saves_are_removed(tmp_path: Path) -> None:
    final = tmp_path / "g[1].save"
    dead = tmp_path / ".g[1].save.4194305.partial"  # above any pid_max
    alive = tmp_path / f".g[1].save.{os.getppid()}.partial"
    other = tmp_path / ".h.save.4194305.partial"
    for p in (dead, alive, other):
        p.write_bytes(b"")
    remove_dead_partials(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
