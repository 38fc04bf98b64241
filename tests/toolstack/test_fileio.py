"""Moving a device-model state between files: checked in pieces while it is copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stubdom.devicemodel.stream import encode_state
from stubdom.toolstack import fileio
from stubdom.toolstack.fileio import (
    FileRegion,
    check_dm_state_file,
    locate_save_image_file,
    read_pieces,
    write_checked_file,
)
from stubdom.toolstack.savefile import (
    SaveFileError,
    SaveImage,
    check_dm_state_complete,
    encode_save_image,
)

STATE = encode_state("sim", bytes(range(256)) * 40)
BEFORE = b"an earlier save's state, console 1's file is appended to"


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "CHUNK", 1000)  # many pieces, a cut inside the header


def region_of(path: Path, blob: bytes) -> tuple[int, FileRegion]:
    path.write_bytes(BEFORE + blob)
    fd = os.open(path, os.O_RDONLY)
    return fd, FileRegion(fd, len(BEFORE), len(blob))


def outcome(f: object) -> str:
    try:
        f()  # type: ignore[operator]
    except SaveFileError as e:
        return str(e)
    return "ok"


@pytest.mark.parametrize(
    "blob",
    [
        STATE,
        b"",
        STATE[:5],
        STATE[:40],
        STATE[:60],
        STATE[:-1],
        STATE[:3000],
        STATE[:-1] + b"\x01",
        STATE[:100] + bytes([STATE[100] ^ 1]) + STATE[101:],
        STATE[:-1] + b"\0\0",
        STATE.replace(b"STUBDMSS", b"STUBDMSX"),
    ],
)
def test_a_state_in_a_file_is_checked_as_in_memory(tmp_path: Path, blob: bytes) -> None:
    fd, region = region_of(tmp_path / "state", blob)
    try:
        whole = outcome(lambda: check_dm_state_complete(blob))
        assert outcome(lambda: check_dm_state_file(region)) == whole
    finally:
        os.close(fd)
    assert (whole == "ok") == (blob == STATE)


def test_pieces_cover_the_region(tmp_path: Path) -> None:
    fd, region = region_of(tmp_path / "state", STATE)
    try:
        assert b"".join(bytes(p) for p in read_pieces(region)) == STATE
        longer = FileRegion(fd, region.offset, region.length + 10)  # the file ends first
        assert b"".join(bytes(p) for p in read_pieces(longer)) == STATE
    finally:
        os.close(fd)


def test_a_checked_copy_is_the_region_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd, region = region_of(tmp_path / "state", STATE)
    try:
        write_checked_file(out, b"head", region, b"tail")
        assert out.read_bytes() == b"head" + STATE + b"tail"
        damaged = FileRegion(fd, region.offset - 1, region.length)  # not the state
        with pytest.raises(SaveFileError):
            write_checked_file(out, b"head", damaged, b"tail")
        assert not out.exists()
        longer = FileRegion(fd, 0, len(BEFORE) + len(STATE) + 1)  # the file ends first
        with pytest.raises(SaveFileError):
            write_checked_file(out, b"", longer, b"")
        assert not out.exists()
    finally:
        os.close(fd)


def test_a_state_not_ours_is_copied_whole(tmp_path: Path) -> None:
    from stubdom.devicemodel.stream import savevm_stream

    blob = savevm_stream({"timer": b"\x01" * 3000})
    out = tmp_path / "out"
    fd, region = region_of(tmp_path / "state", blob)
    try:
        write_checked_file(out, b"", region, b"")
        assert out.read_bytes() == blob
    finally:
        os.close(fd)


def test_a_mapped_image_gives_where_its_state_lies(tmp_path: Path) -> None:
    img = SaveImage(config_json={"name": "g"}, emulator_context=STATE)
    path = tmp_path / "g.save"
    path.write_bytes(encode_save_image(img))
    with open(path, "rb") as f:
        found, region = locate_save_image_file(f)
        assert found.config_json == {"name": "g"} and found.emulator_context == b""
        assert os.pread(region.fd, region.length, region.offset) == STATE
    for bad in (b"", encode_save_image(img)[:-20], encode_save_image(img)[:-1000]):
        path.write_bytes(bad)
        with open(path, "rb") as f, pytest.raises(SaveFileError):
            locate_save_image_file(f)
