"""The save file: xl's header + a libxl v2 stream (emulator records), and the DM state check."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stubdom.devicemodel.stream import (
    SAVEVM_HEAD,
    SavevmError,
    check_savevm_complete,
    encode_state,
    savevm_stream,
)
from stubdom.protocol import Bdf
from stubdom.toolstack.config import (
    DiskFormat,
    DiskSpec,
    GuestConfig,
    NicSpec,
    NicType,
    PciSpec,
    RdmPolicy,
    VncConfig,
)
from stubdom.toolstack.savefile import (
    SaveFileError,
    SaveImage,
    check_dm_state_complete,
    check_dm_state_header,
    check_dm_stream,
    config_from_json,
    config_to_json,
    decode_save_image,
    encode_save_image,
    encode_save_image_frame,
    locate_save_image,
)


def realistic_config() -> GuestConfig:
    return GuestConfig(
        name="win7",
        uuid="5f1c2d9e-0000-4000-8000-123456789abc",
        memory_mb=2048,
        vcpus=2,
        maxvcpus=4,
        disks=[
            DiskSpec(vdev="hda", target="/dev/vg/win7", format=DiskFormat.RAW),
            DiskSpec(vdev="hdc", cdrom=True, format=DiskFormat.EMPTY, readwrite=False),
        ],
        nics=[NicSpec(devid=0, mac="00:16:3e:12:34:56", type=NicType.IOEMU, mtu=1500)],
        pcis=[
            PciSpec(bdf=Bdf(0, 3, 0, 0), vslot=5, msitranslate=True),
            PciSpec(bdf=Bdf(1, 0x0A, 0x1F, 0), all_functions=True, rdm_policy=RdmPolicy.STRICT),
        ],
        serial=["pty"],
        vnc=VncConfig(listen="0.0.0.0", display=3, password="s3cret"),
        usbdevice=["tablet"],
        device_model_args=["-extra"],
    )


DM_STATE = savevm_stream({"timer": b"\x00\x01\x02", "cirrus_vga": b"\0" * 100, "ide": b"\x01"})


def image(**kw: object) -> SaveImage:
    base: dict[str, object] = {
        "config_json": config_to_json(realistic_config()),
        "emulator_context": DM_STATE,
        "emulator_xenstore": {
            "physmap/f0000000/start_addr": "f0000000",
            "physmap/f0000000/size": "800000",
            "physmap/f0000000/name": "vga.vram",
        },
        "saved_at": 1700000000.5,
        "tool_version": "0.1.0",
        "guest_domid": 7,
    }
    base.update(kw)
    return SaveImage(**base)  # type: ignore[arg-type]


FILE = encode_save_image(image())


def offsets(data: bytes) -> dict[str, int]:
    """Where each part starts, computed independently of the codec."""
    (optlen,) = struct.unpack_from("<I", data, 44)
    stream = 48 + optlen
    recs = []
    pos = stream + 16
    while True:
        rtype, length = struct.unpack_from("<II", data, pos)
        recs.append(pos)
        pos += 8 + length + (-length % 8)
        if rtype == 0:
            break
    named = {"stream": stream, "end": recs[-1], "eof": pos}
    named.update({f"rec{i}": at for i, at in enumerate(recs[:-1])})
    return named


# -- golden bytes -----------------------------------------------------------------------


def test_first_48_bytes_are_what_xl_writes() -> None:
    config = FILE[52 : 52 + struct.unpack_from("<I", FILE, 48)[0]]
    meta_len = struct.unpack_from("<I", FILE, 52 + len(config))[0]
    assert FILE[:32] == b"Xen saved domain, xl format\n \x00 \r"
    assert FILE[32:48] == struct.pack("<IIII", 0x01020304, 3, 0, 4 + len(config) + 4 + meta_len)
    assert FILE[32:36] == b"\x04\x03\x02\x01"  # 0x01020304 on a little-endian host
    # optional data as xl: u32 config length including its NUL, then the JSON
    assert config.endswith(b"\0") and b"\0" not in config[:-1]
    assert json.loads(config[:-1]) == config_to_json(realistic_config())


def test_stream_layout_matches_libxl() -> None:
    o = offsets(FILE)
    s = o["stream"]
    assert FILE[s : s + 8] == b"LibxlFmt"  # big-endian ident
    assert FILE[s + 8 : s + 16] == b"\0\0\0\x02\0\0\0\0"  # BE version 2, options 0
    # EMULATOR_XENSTORE_DATA then EMULATOR_CONTEXT then END, as libxl_stream_write orders them
    assert struct.unpack_from("<IIII", FILE, o["rec0"])[0::2] == (2, 1)
    assert struct.unpack_from("<IIII", FILE, o["rec0"])[3] == 0
    t, length, emu, idx = struct.unpack_from("<IIII", FILE, o["rec1"])
    assert (t, length, emu, idx) == (3, 8 + len(DM_STATE), 1, 0)
    assert FILE[o["rec1"] + 16 : o["rec1"] + 16 + len(DM_STATE)] == DM_STATE
    assert FILE[o["end"] :] == b"\0" * 8
    assert (o["end"] - o["stream"]) % 8 == 0  # every record padded to 8
    xs_len = struct.unpack_from("<I", FILE, o["rec0"] + 4)[0]
    xs = FILE[o["rec0"] + 16 : o["rec0"] + 8 + xs_len]
    assert xs.startswith(b"physmap/f0000000/start_addr\0f0000000\0")
    assert xs.endswith(b"vga.vram\0")


def test_no_xenstore_record_when_there_are_no_keys() -> None:
    data = encode_save_image(image(emulator_xenstore={}))
    o = offsets(data)  # rec0 is now the context, then END
    assert struct.unpack_from("<I", data, o["rec0"])[0] == 3
    assert decode_save_image(data).emulator_xenstore == {}


# -- round trips ------------------------------------------------------------------------


def test_round_trip() -> None:
    img = decode_save_image(FILE)
    assert img == image()
    assert config_from_json(img.config_json) == realistic_config()


def test_round_trip_without_optional_metadata() -> None:
    img = image(saved_at=None, tool_version=None, guest_domid=None)
    assert decode_save_image(encode_save_image(img)) == img


def test_config_json_is_plain_json() -> None:
    d = config_to_json(realistic_config())
    assert json.loads(json.dumps(d)) == d
    assert d["pcis"][0]["bdf"] == {"domain": 0, "bus": 3, "dev": 0, "func": 0}
    assert d["disks"][1]["format"] == "empty"
    assert d["pcis"][1]["rdm_policy"] == "strict"


def test_config_from_json_fills_defaults_for_missing_fields() -> None:
    assert config_from_json({"name": "g"}).memory_mb == GuestConfig(name="g").memory_mb


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "config: required field 'name'"),
        (
            {"name": "g", "bogus": 1},
            "config: unknown field(s) bogus in GuestConfig: the file is damaged or was saved"
            " by a newer stubdom",
        ),
        ({"name": "g", "memory_mb": "128"}, "config: memory_mb: '128' is not an integer"),
        ({"name": "g", "acpi": 1}, "config: acpi: 1 is not a boolean"),
        ({"name": "g", "disks": [{"vdev": "hda", "format": "vmdk"}]}, "config: disks[0].format"),
        ({"name": "g", "pcis": [{"bdf": "00:02.0"}]}, "config: pcis[0].bdf"),
        ({"name": "g", "nics": {}}, "config: nics: {} is not a list"),
        ([], "config: [] is not an object"),
    ],
)
def test_config_from_json_errors(data: object, message: str) -> None:
    """The part is named once: no "config: config: ..." (issue 12)."""
    with pytest.raises(SaveFileError) as exc:
        config_from_json(data)
    assert str(exc.value).startswith(message)
    assert "config: config" not in str(exc.value)


# -- validation -------------------------------------------------------------------------


def err(data: bytes) -> str:
    with pytest.raises(SaveFileError) as exc:
        decode_save_image(data)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def test_foreign_magic() -> None:
    assert "not an xl save file" in err(b"LinuxGuestRecord" + FILE[16:])
    old_magic = b"Xen saved domain, xl format\n".ljust(32, b"\0")  # xl before Xen 4.1
    assert "not an xl save file" in err(old_magic + FILE[32:])
    assert "not an xl save file" in err(b"\x7fELF")
    assert "not an xl save file" in err(patch(FILE, 31, b"\n"))


def test_byte_swapped_header() -> None:
    swapped = FILE[:32] + b"".join(FILE[i : i + 4][::-1] for i in range(32, 48)) + FILE[48:]
    msg = err(swapped)
    assert msg.startswith("xl header: foreign byte order")


def test_unknown_mandatory_flag() -> None:
    msg = err(patch(FILE, 36, struct.pack("<I", 3 | 0x10)))
    assert msg.startswith("xl header: unsupported mandatory flag(s) 0x10")


def test_missing_mandatory_flags() -> None:
    assert "STREAMv2" in err(patch(FILE, 36, struct.pack("<I", 1)))
    assert "JSON flag clear" in err(patch(FILE, 36, struct.pack("<I", 2)))


def test_optional_flags_are_ignored_like_xl() -> None:
    assert decode_save_image(patch(FILE, 40, struct.pack("<I", 0xFFFF))) == image()


def test_optional_data_tail_is_skipped_like_xl() -> None:
    (optlen,) = struct.unpack_from("<I", FILE, 44)
    data = patch(FILE, 44, struct.pack("<I", optlen + 5))
    data = data[: 48 + optlen] + b"extra" + data[48 + optlen :]
    assert decode_save_image(data) == image()


def test_config_length_beyond_optional_data() -> None:
    msg = err(patch(FILE, 48, struct.pack("<I", 10**6)))
    assert msg.startswith("config: optional data too short")


def test_bad_json() -> None:
    (clen,) = struct.unpack_from("<I", FILE, 48)
    assert "config: bad JSON" in err(patch(FILE, 52, b"{oops"))
    assert "config: not NUL-terminated" in err(patch(FILE, 52 + clen - 1, b"}"))
    assert "config: contains a NUL" in err(patch(FILE, 53, b"\0"))
    assert "config: not UTF-8" in err(patch(FILE, 53, b"\xff"))


def test_config_must_be_an_object() -> None:
    data = encode_save_image(image(config_json={"x": 1}))
    cfg = b"[1, 2]\0"
    (clen,) = struct.unpack_from("<I", data, 48)
    (optlen,) = struct.unpack_from("<I", data, 44)
    rebuilt = (
        data[:44] + struct.pack("<II", optlen - clen + len(cfg), len(cfg)) + cfg + data[52 + clen :]
    )
    assert "config: expected a JSON object, got list" in err(rebuilt)


def test_metadata_from_another_tool() -> None:
    data = FILE.replace(b'"tool":"stubdom"', b'"tool":"xxxxxxx"')
    assert err(data).startswith("metadata: written by 'xxxxxxx'")


def test_bad_stream_header() -> None:
    s = offsets(FILE)["stream"]
    assert "bad ident" in err(patch(FILE, s, b"LibxcFmt"))
    assert "unsupported version 3" in err(patch(FILE, s + 8, struct.pack(">I", 3)))
    assert "big-endian stream" in err(patch(FILE, s + 12, struct.pack(">I", 1)))
    # the legacy bit alone is accepted, like libxl
    assert decode_save_image(patch(FILE, s + 12, struct.pack(">I", 2))) == image()


def test_corrupted_record_length() -> None:
    o = offsets(FILE)
    msg = err(patch(FILE, o["rec1"] + 4, struct.pack("<I", 10**6)))
    assert msg.startswith("record 1 (EMULATOR_CONTEXT): truncated")
    # shorter: the "END" is then read out of the blob / padding
    msg = err(patch(FILE, o["rec1"] + 4, struct.pack("<I", 16)))
    assert msg.startswith("record ")


def test_missing_end() -> None:
    o = offsets(FILE)
    assert "ends without an END record" in err(FILE[: o["end"]])


def test_trailing_data_after_end() -> None:
    assert "trailing data after END" in err(FILE + b"\0" * 8)


def test_nonzero_padding() -> None:
    o = offsets(FILE)
    # the context record's body is 8 + len(DM_STATE); its padding precedes END
    assert (8 + len(DM_STATE)) % 8  # make sure there is padding
    assert "padding is not zero" in err(patch(FILE, o["end"] - 1, b"\x01"))


def _with_records(*records: tuple[int, bytes]) -> bytes:
    o = offsets(FILE)
    out = bytearray(FILE[: o["stream"] + 16])
    for rtype, body in records:
        out += struct.pack("<II", rtype, len(body)) + body + b"\0" * (-len(body) % 8)
    return bytes(out)


def _emu(emu_id: int, index: int, payload: bytes) -> bytes:
    return struct.pack("<II", emu_id, index) + payload


def test_duplicate_emulator_context() -> None:
    ctx = (3, _emu(1, 0, DM_STATE))
    assert "duplicate emulator context" in err(_with_records(ctx, ctx, (0, b"")))


def test_missing_emulator_context() -> None:
    msg = err(_with_records((2, _emu(1, 0, b"a\0b\0")), (0, b"")))
    assert msg == "libxl stream: no EMULATOR_CONTEXT record (device-model state)"


def test_duplicate_xenstore_data() -> None:
    xs = (2, _emu(1, 0, b"a\0b\0"))
    assert "duplicate emulator xenstore data" in err(
        _with_records(xs, xs, (3, _emu(1, 0, DM_STATE)), (0, b""))
    )


@pytest.mark.parametrize(
    ("emu_id", "message"),
    [(2, "qemu-upstream"), (0, "legacy"), (9, "unknown emulator id 9")],
)
def test_other_emulators_refused(emu_id: int, message: str) -> None:
    msg = err(_with_records((3, _emu(emu_id, 0, DM_STATE)), (0, b"")))
    assert msg.startswith("record 0 (EMULATOR_CONTEXT): emulator is ")
    assert message in msg and "not qemu-traditional" in msg


def test_emulator_index_must_be_zero() -> None:
    assert "emulator index 1" in err(_with_records((3, _emu(1, 1, DM_STATE)), (0, b"")))


def test_emulator_record_too_short() -> None:
    assert "too short to contain the emulator header" in err(_with_records((3, b"\1\0\0\0")))


@pytest.mark.parametrize(
    ("rtype", "message"),
    [
        (1, "libxc (guest memory) stream"),
        (4, "unexpected checkpoint record"),
        (5, "unexpected checkpoint record"),
        (6, "record 0 (0x00000006): unrecognised (mandatory) record type"),
        (0x80000001, "unrecognised (optional) record type"),
    ],
)
def test_other_records_refused(rtype: int, message: str) -> None:
    assert message in err(_with_records((rtype, b""), (3, _emu(1, 0, DM_STATE)), (0, b"")))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"key\0value", "not NUL-terminated"),
        (b"key\0", "has no value"),
        (b"\0value\0", "empty key"),
        (b"/abs\0v\0", "not relative"),
        (b"k\0v\0k\0w\0", "duplicate key 'k'"),
        (b"k\xff\0v\0", "not UTF-8"),
    ],
)
def test_bad_xenstore_data(payload: bytes, message: str) -> None:
    data = _with_records((2, _emu(1, 0, payload)), (3, _emu(1, 0, DM_STATE)), (0, b""))
    msg = err(data)
    assert msg.startswith("record 0 (EMULATOR_XENSTORE_DATA): ") and message in msg


def test_encode_refuses_bad_xenstore_keys() -> None:
    with pytest.raises(ValueError, match="not relative"):
        encode_save_image(image(emulator_xenstore={"/local/domain/0": "x"}))
    with pytest.raises(ValueError, match="empty key"):
        encode_save_image(image(emulator_xenstore={"": "x"}))


def test_incomplete_dm_state_is_refused_on_read() -> None:
    data = encode_save_image(image(emulator_context=DM_STATE[:-1]))
    assert err(data).startswith("device-model state: truncated")
    assert decode_save_image(data, check_dm_state=False).emulator_context == DM_STATE[:-1]


# -- truncation and fuzzing -------------------------------------------------------------


def test_truncation_at_every_offset() -> None:
    data = encode_save_image(image(emulator_context=savevm_stream({"a": b"x"})))
    for n in range(len(data)):
        with pytest.raises(SaveFileError):
            decode_save_image(data[:n])


def test_truncation_messages_name_the_part() -> None:
    o = offsets(FILE)
    (clen,) = struct.unpack_from("<I", FILE, 48)
    assert err(FILE[:40]).startswith("xl header: truncated")
    assert err(FILE[:60]).startswith("xl optional data: truncated")
    assert err(FILE[: o["stream"] + 3]).startswith("libxl stream header: truncated")
    assert err(FILE[: o["rec0"] + 5]).startswith("record 0: truncated")
    assert err(FILE[: o["rec1"] + 20]).startswith("record 1 (EMULATOR_CONTEXT): truncated")
    assert err(FILE[: o["end"] - 1]).startswith("record 1 (EMULATOR_CONTEXT): truncated")
    assert err(FILE[: o["end"] + 4]).startswith("record 2: truncated")
    assert clen > 0


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(FILE) - 1))
def test_any_prefix_is_a_save_file_error(n: int) -> None:
    with pytest.raises(SaveFileError):
        decode_save_image(FILE[:n])


@settings(max_examples=500)
@given(st.data())
def test_corruption_is_a_save_file_error_or_a_valid_image(data: st.DataObject) -> None:
    blob = bytearray(FILE)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    try:
        decode_save_image(bytes(blob))
    except SaveFileError as exc:
        assert "\n" not in str(exc)


@given(st.binary(max_size=200))
def test_random_bytes_are_refused(blob: bytes) -> None:
    with pytest.raises(SaveFileError):
        decode_save_image(blob)


xs_key = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), min_size=1).filter(
    lambda k: not k.startswith("/")
)


@given(
    st.dictionaries(
        xs_key, st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"))
    ),
    st.dictionaries(
        st.text(alphabet="abcdefghij_", min_size=1, max_size=20),
        st.binary(max_size=40),
        min_size=1,
        max_size=5,
    ),
)
def test_round_trip_property(xs: dict[str, str], sections: dict[str, bytes]) -> None:
    img = image(emulator_xenstore=xs, emulator_context=savevm_stream(sections))
    assert decode_save_image(encode_save_image(img)) == img


# -- the device-model state -------------------------------------------------------------


def test_dm_state_errors_are_save_file_errors() -> None:
    """The savevm checks are the device model's (`stream.check_savevm_complete`); the
    toolstack sees their refusals as `SaveFileError`, same message, part and offset."""
    blob = b"QEVM\0\0\0\x02" + b"\0" * 9
    with pytest.raises(SavevmError) as dm:
        check_savevm_complete(blob)
    with pytest.raises(SaveFileError) as toolstack:
        check_dm_state_complete(blob)
    assert str(toolstack.value) == str(dm.value)
    assert (toolstack.value.part, toolstack.value.offset) == ("device-model state", 4)
    with pytest.raises(SaveFileError, match=r"^device-model state: checksum mismatch"):
        broken = bytearray(encode_state("sim", b"payload"))
        broken[-3] ^= 1
        check_dm_state_complete(bytes(broken))


# -- a state that is not held in memory -----------------------------------------------------


def test_the_frame_around_a_state_is_the_file() -> None:
    img = image()
    head, tail = encode_save_image_frame(img, len(DM_STATE))
    assert head + DM_STATE + tail == FILE
    for ctx in (b"", b"x", b"1234567", b"12345678"):  # every padding
        img = image(emulator_context=ctx)
        head, tail = encode_save_image_frame(img, len(ctx))
        assert head + ctx + tail == encode_save_image(img)


def test_locating_the_state_leaves_it_in_place() -> None:
    img, at, length = locate_save_image(memoryview(FILE))
    assert FILE[at : at + length] == DM_STATE
    assert img.emulator_context == b""
    img.emulator_context = DM_STATE
    assert img == image()


@settings(max_examples=300)
@given(st.data())
def test_checking_a_state_by_parts_is_checking_it_whole(data: st.DataObject) -> None:
    """What the toolstack does with a state in a file (`check_dm_state_header` on its head,
    size and last byte, then `check_dm_stream` on its pieces) refuses what
    `check_dm_state_complete` refuses, with the same message."""
    blob = bytearray(encode_state("sim", data.draw(st.binary(max_size=300))))
    for _ in range(data.draw(st.integers(0, 2))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    blob = blob[: data.draw(st.integers(0, len(blob)))]
    cut = data.draw(st.integers(0, len(blob)))

    def whole() -> str:
        try:
            check_dm_state_complete(bytes(blob))
        except SaveFileError as e:
            return str(e)
        return "ok"

    def by_parts() -> str:
        try:
            last = blob[-1] if blob else -1
            if check_dm_state_header(blob[:SAVEVM_HEAD], len(blob), last) == b"stubdom-dm":
                check_dm_stream([blob[:cut], blob[cut:]])
        except SaveFileError as e:
            return str(e)
        return "ok"

    assert by_parts() == whole()
