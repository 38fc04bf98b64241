"""The device-model state stream: round trips, every cut detected, damage detected."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubdom.devicemodel.base import DeviceModelError
from stubdom.devicemodel.stream import (
    FORMAT_VERSION,
    MAGIC,
    OVERHEAD,
    PROLOGUE_SIZE,
    SavevmError,
    StreamError,
    StreamReader,
    check_pieces,
    check_savevm_complete,
    decode_state,
    decode_state_for,
    encode_state,
    encode_state_parts,
    is_complete,
    savevm_stream,
)

backends = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
backends = backends.filter(lambda s: len(s) <= 32)
payloads = st.binary(max_size=600)


@given(backends, payloads)
def test_round_trip(backend: str, payload: bytes) -> None:
    data = encode_state(backend, payload)
    assert len(data) == OVERHEAD + len(backend) + len(payload)
    assert decode_state(data) == (backend, payload)
    assert is_complete(data)


@given(backends, payloads)
def test_the_toolstack_accepts_it_as_a_qemu_savevm_stream(backend: str, payload: bytes) -> None:
    check_savevm_complete(encode_state(backend, payload))


def test_byte_layout() -> None:
    data = encode_state("sim", b"xyz")
    assert data[:4] == b"QEVM"
    assert struct.unpack(">I", data[4:8]) == (3,)
    assert data[8] == 0x04  # QEMU_VM_SECTION_FULL
    assert data[13] == 10 and data[14:24] == b"stubdom-dm"
    assert data[PROLOGUE_SIZE : PROLOGUE_SIZE + 8] == MAGIC
    assert struct.unpack(">H", data[40:42]) == (FORMAT_VERSION,)
    assert data[42] == 3 and data[43:46] == b"sim"
    length, crc = struct.unpack(">II", data[46:54])
    assert length == 3 and data[54:57] == b"xyz"
    assert crc == zlib.crc32(b"xyz", zlib.crc32(data[32:50]))
    assert data[-1] == 0 and len(data) == 58


@settings(max_examples=30)
@given(backends, st.binary(max_size=80))
def test_every_truncation_is_detected(backend: str, payload: bytes) -> None:
    data = encode_state(backend, payload)
    for cut in range(len(data)):
        short = data[:cut]
        assert not is_complete(short)
        with pytest.raises(StreamError, match="truncated") as e:
            decode_state(short)
        assert "\n" not in str(e.value)


def test_truncation_says_how_many_bytes_are_missing() -> None:
    data = encode_state("sim", b"0123456789")
    with pytest.raises(StreamError, match=r"\b3 missing"):
        decode_state(data[:-3])
    with pytest.raises(StreamError, match="inside the header"):
        decode_state(data[:20])


@settings(max_examples=40)
@given(backends, st.binary(max_size=60), st.data())
def test_any_damaged_byte_is_detected(backend: str, payload: bytes, data: st.DataObject) -> None:
    good = encode_state(backend, payload)
    at = data.draw(st.integers(0, len(good) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(good)
    bad[at] ^= flip
    with pytest.raises(StreamError):
        decode_state(bytes(bad))


def test_corrupted_payload_is_a_checksum_mismatch() -> None:
    data = bytearray(encode_state("sim", b"some device state"))
    data[-5] ^= 0x40
    with pytest.raises(StreamError, match="checksum mismatch"):
        decode_state(bytes(data))


def test_wrong_magic() -> None:
    data = encode_state("sim", b"x")
    with pytest.raises(StreamError, match=r"wrong magic.*QEVM"):
        decode_state(b"XEVM" + data[4:])
    inner = data[:PROLOGUE_SIZE] + b"NOTSTUBD" + data[PROLOGUE_SIZE + 8 :]
    with pytest.raises(StreamError, match="wrong magic b'NOTSTUBD'"):
        decode_state(inner)
    # Early: the first wrong byte suffices.
    with pytest.raises(StreamError, match="wrong magic"):
        StreamReader().feed(b"Z")


def test_a_real_qemu_savevm_stream_is_not_ours() -> None:
    with pytest.raises(StreamError, match="not a stubdom device-model section"):
        decode_state(savevm_stream({"timer": b"\x00" * 8}))


def test_unknown_versions() -> None:
    data = bytearray(encode_state("sim", b"x"))
    data[40:42] = struct.pack(">H", 7)
    with pytest.raises(StreamError, match="unknown format version 7"):
        decode_state(bytes(data))
    data = bytearray(encode_state("sim", b"x"))
    data[4:8] = struct.pack(">I", 2)
    with pytest.raises(StreamError, match="unknown savevm version 2"):
        decode_state(bytes(data))


def test_trailing_bytes() -> None:
    data = encode_state("sim", b"x")
    with pytest.raises(StreamError, match="2 trailing bytes"):
        decode_state(data + b"\0\0")
    assert not is_complete(data + b"\0")


def test_absurd_length_is_refused_at_once() -> None:
    data = bytearray(encode_state("sim", b"x"))
    data[46:50] = struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(StreamError, match="exceeds"):
        StreamReader().feed(bytes(data[:54]))


def test_stream_error_is_a_device_model_error() -> None:
    assert issubclass(StreamError, DeviceModelError)


def test_state_from_another_backend() -> None:
    data = encode_state("qemu", b"x")
    assert decode_state_for("qemu", data) == b"x"
    with pytest.raises(StreamError, match="written by the 'qemu' device model, not 'sim'"):
        decode_state_for("sim", data)


def test_encode_refuses_bad_names() -> None:
    for name in ("", "a b", "x" * 33, "é"):
        with pytest.raises(ValueError):
            encode_state(name, b"")


# -- the incremental reader ---------------------------------------------------------------


@given(backends, payloads, st.binary(max_size=20))
def test_reading_exactly_needed_stops_at_the_end(
    backend: str, payload: bytes, after: bytes
) -> None:
    """What the agent does on console 2: read `needed` bytes until done; the bytes after
    the stream are never asked for."""
    data = encode_state(backend, payload)
    pipe = data + after
    reader = StreamReader()
    pos = 0
    while not reader.done:
        want = reader.needed
        assert want > 0
        assert pos + want <= len(data)  # never past the end of the stream
        assert reader.feed(pipe[pos : pos + want]) == want
        pos += want
    assert pos == len(data) and reader.needed == 0
    assert reader.total == len(data)
    assert reader.result().backend == backend and reader.result().payload == payload


@given(backends, payloads, st.lists(st.integers(1, 17), min_size=1), st.binary(max_size=9))
def test_feeding_in_any_chunks(
    backend: str, payload: bytes, sizes: list[int], after: bytes
) -> None:
    data = encode_state(backend, payload) + after
    reader = StreamReader()
    pos = 0
    i = 0
    while not reader.done:
        chunk = data[pos : pos + sizes[i % len(sizes)]]
        i += 1
        taken = reader.feed(chunk)
        pos += taken
        if taken < len(chunk):
            assert reader.done
    assert pos == len(data) - len(after)
    assert reader.feed(b"more") == 0
    assert (reader.result().backend, reader.result().payload) == (backend, payload)


def test_header_known_gives_the_exact_remainder() -> None:
    data = encode_state("sim", b"x" * 100)
    reader = StreamReader()
    reader.feed(data[:10])
    assert not reader.header_known and reader.total is None
    reader.feed(data[10:60])
    assert reader.header_known and reader.needed == len(data) - 60
    with pytest.raises(StreamError, match=f"{len(data) - 60} missing"):
        reader.result()


# -- pieces: writing without joining, checking without keeping ------------------------------


@given(backends, st.lists(st.binary(max_size=50), max_size=6))
def test_encoding_in_parts_is_encoding_the_joined_payload(
    backend: str, parts: list[bytes]
) -> None:
    pieces = encode_state_parts(backend, [memoryview(p) for p in parts])
    assert b"".join(pieces) == encode_state(backend, b"".join(parts))


@given(backends, payloads)
def test_the_reader_keeps_the_stream_in_one_buffer(backend: str, payload: bytes) -> None:
    data = encode_state(backend, payload)
    reader = StreamReader()
    assert reader.feed(data + b"after") == len(data)
    assert reader.stream == data
    assert reader.result().view == payload and reader.result().payload == payload
    checker = StreamReader(keep=False)
    checker.feed(data)
    assert checker.result().backend == backend
    with pytest.raises(ValueError, match="did not keep"):
        checker.result().view  # noqa: B018


def _outcome(f: Callable[[], object]) -> object:
    try:
        return f()
    except StreamError as e:
        return str(e)


@settings(max_examples=300)
@given(st.data())
def test_checking_in_pieces_is_decoding_the_whole(data: st.DataObject) -> None:
    """`check_pieces` (the toolstack reading a state from a file in pieces) gives what
    `decode_state` gives for the same bytes, whole or damaged, however they are cut."""
    backend = data.draw(backends)
    blob = bytearray(encode_state(backend, data.draw(payloads)))
    for _ in range(data.draw(st.integers(0, 2))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    blob = blob[: data.draw(st.integers(0, len(blob)))] + data.draw(st.binary(max_size=3))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
    whole = _outcome(lambda: decode_state(bytes(blob))[0])
    assert _outcome(lambda: check_pieces(pieces)) == whole
    assert is_complete(blob) == (whole == backend)


# -- any qemu-traditional savevm stream -------------------------------------------------


def test_savevm_stream_layout() -> None:
    blob = savevm_stream({"timer": b"\x01\x02"})
    assert blob == (
        b"QEVM"
        + b"\0\0\0\x03"
        + b"\x04"
        + b"\0\0\0\0"
        + b"\x05timer"
        + b"\0\0\0\0"
        + b"\0\0\0\x01"
        + b"\x01\x02"
        + b"\x00"
    )
    check_savevm_complete(blob)


def test_savevm_stream_refuses_bad_sections() -> None:
    with pytest.raises(ValueError):
        savevm_stream({})
    with pytest.raises(ValueError):
        savevm_stream({"": b""})
    with pytest.raises(ValueError):
        savevm_stream({"x" * 256: b""})


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "truncated: 0 bytes"),
        (b"QEVM\0\0", "truncated: 6 bytes"),
        (b"QEVM\0\0\0\x03", "no section and no EOF"),
        (b"QEVM\0\0\0\x03\0", "empty: EOF right after the header"),
        (b"QEVM\0\0\0\x02" + b"\0" * 9, "unsupported savevm version 2"),
        (b"\x7fELF\x02\x01\x01\0\0\0", "not a QEMU savevm stream"),
        (b"QEVM\0\0\0\x03\x02\0\0\0\0\0", "not START/FULL"),
        (b"QEVM\0\0\0\x03\x04\0\0\0\0\x05tim", "truncated inside the first section header"),
        (b"QEVM\0\0\0\x03\x04\0\0\0\0\x00" + b"\0" * 9, "empty idstr"),
        (b"QEVM\0\0\0\x03\x04\0\0\0\0\x02a\n" + b"\0" * 9, "not printable ASCII"),
        (b"QEVM\0\0\0\x03\x04\0\0\0\0\x01a" + b"\0" * 8, "does not end with QEMU_VM_EOF"),
    ],
)
def test_check_dm_state_refuses(blob: bytes, message: str) -> None:
    with pytest.raises(SavevmError, match=r"^device-model state: ") as exc:
        check_savevm_complete(blob)
    assert message in str(exc.value)


def test_check_dm_state_truncations() -> None:
    blob = savevm_stream({"timer": b"\x05\x06\x07", "vga": b"\x08" * 20})
    check_savevm_complete(blob)
    for n in range(len(blob)):
        # every prefix here ends in a non-zero byte or inside the header, so all are caught;
        # a cut right after a zero byte in a body would not be (documented gap)
        if n > 0 and blob[n - 1] == 0 and n > 8 + 1 + 4 + 1 + 5 + 8:
            continue
        with pytest.raises(SavevmError):
            check_savevm_complete(blob[:n])


def test_dm_state_gap_a_cut_after_a_zero_byte_passes() -> None:
    """Documented limitation: a body byte of zero at the cut looks like QEMU_VM_EOF."""
    check_savevm_complete(savevm_stream({"a": b"\x07\x00\x09"})[:-2])
