"""The ``stubdom save`` / ``stubdom restore`` state file: xl's header, then a libxl v2 stream.

A sans-IO codec: bytes in, bytes out; the caller reads and writes the file.

File layout (offsets in bytes; ``C`` and ``M`` are the NUL-terminated JSON lengths):

==========  ====  ==========================================================================
offset      size  field
==========  ====  ==========================================================================
0           32    xl magic ``"Xen saved domain, xl format\\n \\0 \\r"`` (``savefileheader_magic``)
32          4     byte order word 0x01020304 (little-endian, i.e. native on x86 and arm)
36          4     mandatory flags: 3 = JSON (bit 0) | STREAMv2 (bit 1)
40          4     optional flags: 0
44          4     optional data length = 4 + C + 4 + M
48          4     C, the config length (including its NUL), as xl writes it
52          C     the guest config as JSON, NUL-terminated (`config_to_json`)
52+C        4     M, the metadata length (our addition; xl skips any optional data after
                  the config: "skip, or skip tail, if not understood")
56+C        M     metadata JSON, NUL-terminated: tool, tool_version, saved_at, guest_domid
H=56+C+M    8     libxl stream ident 0x4c6962786c466d74 "LibxlFmt", **big-endian**
H+8         4     stream version 2, big-endian
H+12        4     stream options 0 (little-endian records, not legacy), big-endian
H+16        ...   records, each ``type u32, body_length u32`` (little-endian), the body,
                  then zero padding to a multiple of 8 (the length excludes the padding):
                  EMULATOR_XENSTORE_DATA (2), only if there are keys, like libxl;
                  EMULATOR_CONTEXT (3); END (0, empty body).  The two emulator records'
                  bodies start with ``emulator_id u32 = 1`` (qemu-traditional) and
                  ``index u32 = 0``, and ``body_length`` includes those 8 bytes.
==========  ====  ==========================================================================

Sources: tools/xl/xl.h and xl_saverestore.c / xl_vmcontrol.c (header, flags, optional data),
tools/libs/light/libxl_sr_stream_format.h, libxl_stream_write.c, libxl_stream_read.c and
docs/specs/libxl-migration-stream.pandoc (stream).  The emulator id 1 is marked
"Dropped in Xen 4.21" there: Xen 4.21 removed qemu-traditional, so only Xen <= 4.20 could
ever have read such a record.

**Deviation from libxl:** libxl writes, for an HVM guest, the stream header, an empty
LIBXC_CONTEXT record followed by the libxc stream (guest memory, "XENF" image format),
then the emulator records and END.  We save no guest memory (the guest has none of ours
to save), so no LIBXC_CONTEXT record is written and none is accepted on read.  The config
is our `GuestConfig` as JSON, not libxl's ``libxl_domain_config``.  Hence xl cannot restore
our files and we cannot restore xl's; the header and the stream framing are xl's.

What `decode_save_image` verifies: every length against the data present (truncation
anywhere is an error naming the part), the magic, the byte-order word, the mandatory flags
(unknown bits refused as xl does; JSON and STREAMv2 both required), the config (NUL
termination, UTF-8, a JSON object), the metadata, the stream ident/version/endianness,
each record's type (unknown types refused as libxl does, even in the "optional" range),
zero padding, the emulator header (id must be qemu-traditional, index 0), the xenstore
pairs (libxl's rules: NUL-terminated, non-empty, relative keys; no duplicates), exactly one
EMULATOR_CONTEXT and at most one EMULATOR_XENSTORE_DATA, an END record, nothing after
END, and (by default) `check_dm_state_complete` on the device-model state.
Optional flags are ignored, as xl does (its comment says otherwise; its code does not check).
"""

from __future__ import annotations

import contextlib
import enum
import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stubdom import typedjson
from stubdom.devicemodel import stream
from stubdom.devicemodel.base import BytesLike
from stubdom.toolstack.config import GuestConfig

# -- xl's header (tools/xl/xl.h) ---------------------------------------------------------

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
assert len(XL_MAGIC) == 32
XL_BYTEORDER = 0x01020304
XL_MANDATORY_FLAG_JSON = 1 << 0
XL_MANDATORY_FLAG_STREAMV2 = 1 << 1
XL_MANDATORY_FLAG_ALL = XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2
_XL_HEADER = struct.Struct("<32sIIII")  # magic, byteorder, mandatory, optional, optdata len
_U32 = struct.Struct("<I")

# -- libxl migration stream v2 (libxl_sr_stream_format.h) -------------------------------

LIBXL_STREAM_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_STREAM_VERSION = 2
LIBXL_OPT_BIG_ENDIAN = 1 << 0
_STREAM_HEADER = struct.Struct(">QII")  # always big-endian
_REC_HEADER = struct.Struct("<II")  # type, body_length: the stream's (little) endianness
_EMU_HEADER = struct.Struct("<II")  # emulator_id, index
REC_ALIGN = 8


class RecType(enum.IntEnum):
    END = 0x00000000
    LIBXC_CONTEXT = 0x00000001
    EMULATOR_XENSTORE_DATA = 0x00000002
    EMULATOR_CONTEXT = 0x00000003
    CHECKPOINT_END = 0x00000004
    CHECKPOINT_STATE = 0x00000005


class EmulatorId(enum.IntEnum):
    UNKNOWN = 0x00000000  # a stream converted from the legacy format
    QEMU_TRADITIONAL = 0x00000001  # "Dropped in Xen 4.21"
    QEMU_UPSTREAM = 0x00000002


TOOL_NAME = "stubdom"


class SaveFileError(ValueError):
    """A save file (or device-model state) that cannot be used; one line, naming the part.

    ``part`` is the part of the file ("xl header", "config", "stream header",
    "record 2 (EMULATOR_CONTEXT)", "device-model state", ...); ``offset`` the file offset
    where the problem was found, when known.
    """

    def __init__(self, part: str, detail: str, offset: int | None = None) -> None:
        self.part = part
        self.detail = detail
        self.offset = offset
        where = f" (at offset {offset})" if offset is not None else ""
        super().__init__(f"{part}: {detail}{where}")


@dataclass
class SaveImage:
    """Everything ``stubdom save`` keeps, decoded."""

    #: The guest config as JSON data (`config_to_json` / `config_from_json`).
    config_json: dict[str, Any]
    #: The device model's state: a qemu savevm stream (what console 1 delivered).
    emulator_context: bytes
    #: Keys relative to ``/local/domain/$dm_domid/device-model/$domid/`` and their values.
    emulator_xenstore: dict[str, str] = field(default_factory=dict)
    #: When the state was taken (seconds since the epoch), if known.
    saved_at: float | None = None
    #: The version of the tool that wrote the file, if known.
    tool_version: str | None = None
    #: The guest's domid when it was saved (informational: restore makes a new one).
    guest_domid: int | None = None


# -- encoding ---------------------------------------------------------------------------


def _json_nul(obj: object) -> bytes:
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
        + b"\0"
    )


def _check_xs_key(key: str) -> str | None:
    if not key:
        return "empty key"
    if key.startswith("/"):
        return f"key {key!r} is not relative"
    if "\0" in key:
        return f"key {key!r} contains NUL"
    return None


def encode_xenstore_data(pairs: Mapping[str, str]) -> bytes:
    """libxl's EMULATOR_XENSTORE_DATA payload: ``key\\0value\\0`` for each pair."""
    out = bytearray()
    for key, value in pairs.items():
        problem = _check_xs_key(key)
        if problem is None and "\0" in value:
            problem = f"value of {key!r} contains NUL"
        if problem is not None:
            raise ValueError(f"emulator xenstore data: {problem}")
        out += key.encode("utf-8") + b"\0" + value.encode("utf-8") + b"\0"
    return bytes(out)


def _record(rtype: int, *body: bytes) -> list[bytes]:
    """A record's pieces (joined once by the caller: the body may be hundreds of MB)."""
    size = sum(len(b) for b in body)
    return [_REC_HEADER.pack(rtype, size), *body, b"\0" * (-size % REC_ALIGN)]


def _emulator_record(rtype: RecType, payload: bytes) -> list[bytes]:
    return _record(rtype, _EMU_HEADER.pack(EmulatorId.QEMU_TRADITIONAL, 0), payload)


def encode_save_image(img: SaveImage) -> bytes:
    """The whole file (see the module docstring for the layout)."""
    head, tail = encode_save_image_frame(img, len(img.emulator_context))
    return b"".join((head, img.emulator_context, tail))


def encode_save_image_frame(img: SaveImage, context_length: int) -> tuple[bytes, bytes]:
    """The file around a device-model state of ``context_length`` bytes: it is ``head``,
    the state, then ``tail`` (``img.emulator_context`` itself is not used), so that a
    state of hundreds of MB can be copied into the file from where it lies."""
    config = _json_nul(img.config_json)
    meta: dict[str, Any] = {"tool": TOOL_NAME}
    if img.tool_version is not None:
        meta["tool_version"] = img.tool_version
    if img.saved_at is not None:
        meta["saved_at"] = img.saved_at
    if img.guest_domid is not None:
        meta["guest_domid"] = img.guest_domid
    meta_bytes = _json_nul(meta)
    optdata = _U32.pack(len(config)) + config + _U32.pack(len(meta_bytes)) + meta_bytes
    out = [
        _XL_HEADER.pack(XL_MAGIC, XL_BYTEORDER, XL_MANDATORY_FLAG_ALL, 0, len(optdata)),
        optdata,
        _STREAM_HEADER.pack(LIBXL_STREAM_IDENT, LIBXL_STREAM_VERSION, 0),
    ]
    xs = encode_xenstore_data(img.emulator_xenstore)
    if xs:  # libxl: "No record? - All done."
        out += _emulator_record(RecType.EMULATOR_XENSTORE_DATA, xs)
    size = _EMU_HEADER.size + context_length
    out += [
        _REC_HEADER.pack(RecType.EMULATOR_CONTEXT, size),
        _EMU_HEADER.pack(EmulatorId.QEMU_TRADITIONAL, 0),
    ]
    tail = [b"\0" * (-size % REC_ALIGN), *_record(RecType.END)]
    return b"".join(out), b"".join(tail)


# -- decoding ---------------------------------------------------------------------------


class _Cursor:
    """Reads a view: what it takes is a view too (a record body is never copied)."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, part: str, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise SaveFileError(
                part,
                f"truncated: {what} needs {n} bytes, only {len(self.data) - self.pos} left",
                self.pos,
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk


def _parse_json_nul(view: memoryview, part: str, offset: int) -> Any:
    raw = view.tobytes()
    if not raw or raw[-1] != 0:
        raise SaveFileError(part, "not NUL-terminated", offset)
    text = raw[:-1]
    if b"\0" in text:
        raise SaveFileError(part, "contains a NUL before its end", offset + text.index(b"\0"))
    try:
        return json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SaveFileError(part, f"not UTF-8 ({exc.reason})", offset + exc.start) from None
    except RecursionError:
        raise SaveFileError(part, "bad JSON: nested too deeply", offset) from None
    except json.JSONDecodeError as exc:
        raise SaveFileError(
            part, f"bad JSON: {exc.msg} (line {exc.lineno} column {exc.colno})", offset
        ) from None


def _record_name(rtype: int) -> str:
    try:
        return RecType(rtype).name
    except ValueError:
        return f"0x{rtype:08x}"


def decode_xenstore_data(
    raw: BytesLike, part: str = "emulator xenstore data"
) -> dict[str, str]:
    """Parse ``key\\0value\\0...`` with libxl's checks (and refuse duplicate keys)."""
    pairs: dict[str, str] = {}
    items = bytes(raw).split(b"\0")
    if items[-1] != b"":
        raise SaveFileError(part, "last string not NUL-terminated")
    items.pop()
    if len(items) % 2:
        raise SaveFileError(part, f"key {items[-1]!r} has no value")
    for i in range(0, len(items), 2):
        try:
            key, value = items[i].decode("utf-8"), items[i + 1].decode("utf-8")
        except UnicodeDecodeError:
            raise SaveFileError(part, f"pair {i // 2} is not UTF-8") from None
        problem = _check_xs_key(key)
        if problem is not None:
            raise SaveFileError(part, problem)
        if key in pairs:
            raise SaveFileError(part, f"duplicate key {key!r}")
        pairs[key] = value
    return pairs


def _decode_meta(meta: Any, offset: int) -> tuple[float | None, str | None, int | None]:
    part = "metadata"
    if not isinstance(meta, dict):
        raise SaveFileError(part, f"expected a JSON object, got {type(meta).__name__}", offset)
    if meta.get("tool") != TOOL_NAME:
        raise SaveFileError(part, f"written by {meta.get('tool')!r}, not {TOOL_NAME!r}", offset)
    saved_at = meta.get("saved_at")
    version = meta.get("tool_version")
    domid = meta.get("guest_domid")
    if saved_at is not None and (
        isinstance(saved_at, bool) or not isinstance(saved_at, int | float)
    ):
        raise SaveFileError(part, f"saved_at {saved_at!r} is not a number", offset)
    if version is not None and not isinstance(version, str):
        raise SaveFileError(part, f"tool_version {version!r} is not a string", offset)
    if domid is not None and (isinstance(domid, bool) or not isinstance(domid, int)):
        raise SaveFileError(part, f"guest_domid {domid!r} is not an integer", offset)
    return (None if saved_at is None else float(saved_at)), version, domid


def _take_block(opt: _Cursor, base: int, part: str, what: str) -> tuple[int, memoryview]:
    """A u32-length-prefixed block of xl's optional data: (file offset of its body, body).
    Running out of optional data is reported as that, at the file offset."""
    try:
        (length,) = _U32.unpack(opt.take(4, part, f"the {what} length"))
        at = base + opt.pos
        return at, opt.take(length, part, f"the {what} ({length} bytes)")
    except SaveFileError as exc:
        raise SaveFileError(
            exc.part,
            exc.detail.replace("truncated", "optional data too short"),
            base + (exc.offset or 0),
        ) from None


def decode_save_image(data: BytesLike, *, check_dm_state: bool = True) -> SaveImage:
    """Parse and validate a whole file; `SaveFileError` (and nothing else) if unusable."""
    with memoryview(data) as whole, whole.cast("B") as view:
        image, at, length = locate_save_image(view, check_dm_state=check_dm_state)
        image.emulator_context = view[at : at + length].tobytes()
    return image


def locate_save_image(
    data: BytesLike, *, check_dm_state: bool = True
) -> tuple[SaveImage, int, int]:
    """`decode_save_image` without copying the device-model state out of ``data`` (a
    file mapped in memory, say): the image with an empty ``emulator_context``, and the
    offset and length of the state in ``data``."""
    with memoryview(data) as whole:
        view = whole.cast("B")
    try:
        return _decode(view, check_dm_state)
    finally:
        view.release()


def _decode(data: memoryview, check_dm_state: bool) -> tuple[SaveImage, int, int]:
    cur = _Cursor(data)
    optlen = _decode_xl_header(cur)
    optdata_at = cur.pos
    optdata = cur.take(optlen, "xl optional data", f"the optional data ({optlen} bytes)")
    config, (saved_at, version, domid) = _decode_optional_data(optdata, optdata_at)
    _decode_stream_header(cur)
    records = _Records()
    index = 0
    while not _decode_record(cur, index, records):
        index += 1
    if records.context is None:
        raise SaveFileError("libxl stream", "no EMULATOR_CONTEXT record (device-model state)")
    if check_dm_state:
        check_dm_state_complete(records.context)
    image = SaveImage(
        config_json=config,
        emulator_context=b"",
        emulator_xenstore=records.xenstore or {},
        saved_at=saved_at,
        tool_version=version,
        guest_domid=domid,
    )
    return image, records.context_at, records.context.nbytes


def _decode_xl_header(cur: _Cursor) -> int:
    """Check xl's header; the length of the optional data that follows it."""
    part = "xl header"
    if cur.data[:32] != XL_MAGIC[: len(cur.data)]:
        raise SaveFileError(part, "not an xl save file (wrong magic)", 0)
    _magic, byteorder, mandatory, _optional, optlen = _XL_HEADER.unpack(
        cur.take(_XL_HEADER.size, part, "the xl header")
    )
    if byteorder != XL_BYTEORDER:
        if byteorder == 0x04030201:
            raise SaveFileError(part, "foreign byte order (written on a big-endian host)", 32)
        raise SaveFileError(part, f"bad byte-order word 0x{byteorder:08x}", 32)
    bad = mandatory & ~XL_MANDATORY_FLAG_ALL
    if bad:
        raise SaveFileError(
            part, f"unsupported mandatory flag(s) 0x{bad:x} (need a newer tool)", 36
        )
    if not mandatory & XL_MANDATORY_FLAG_STREAMV2:
        raise SaveFileError(part, "legacy (pre-v2) stream: STREAMv2 flag clear", 36)
    if not mandatory & XL_MANDATORY_FLAG_JSON:
        raise SaveFileError(
            part, "config is not JSON (JSON flag clear): xl.cfg text unsupported", 36
        )
    return int(optlen)


def _decode_optional_data(
    optdata: memoryview, base: int
) -> tuple[dict[str, Any], tuple[float | None, str | None, int | None]]:
    """The config and the metadata (saved_at, tool_version, guest_domid) from xl's
    optional data, which starts at file offset ``base``."""
    opt = _Cursor(optdata)
    _, config_raw = _take_block(opt, base, "config", "config")
    if len(config_raw) == 0:
        raise SaveFileError("config", "the save file holds no guest config", base)
    config = _parse_json_nul(config_raw, "config", base + 4)
    if not isinstance(config, dict):
        raise SaveFileError(
            "config", f"expected a JSON object, got {type(config).__name__}", base + 4
        )
    if opt.pos == len(optdata):
        return config, (None, None, None)
    meta_at, meta_raw = _take_block(opt, base, "metadata", "metadata")
    # Anything after it: skipped, as xl does with optional data it does not understand.
    return config, _decode_meta(_parse_json_nul(meta_raw, "metadata", meta_at), meta_at)


def _decode_stream_header(cur: _Cursor) -> None:
    part = "libxl stream header"
    at = cur.pos
    ident, sversion, options = _STREAM_HEADER.unpack(
        cur.take(_STREAM_HEADER.size, part, "the stream header")
    )
    if ident != LIBXL_STREAM_IDENT:
        raise SaveFileError(
            part, f'bad ident 0x{ident:016x}, expected 0x{LIBXL_STREAM_IDENT:016x} ("LibxlFmt")', at
        )
    if sversion != LIBXL_STREAM_VERSION:
        raise SaveFileError(part, f"unsupported version {sversion}, expected 2", at + 8)
    if options & LIBXL_OPT_BIG_ENDIAN:
        raise SaveFileError(part, "big-endian stream (libxl cannot read those either)", at + 12)


@dataclass
class _Records:
    """What the records of a stream held, as they are read."""

    xenstore: dict[str, str] | None = None
    context: memoryview | None = None
    #: The file offset of ``context``.
    context_at: int = 0


def _decode_record(cur: _Cursor, index: int, records: _Records) -> bool:
    """Read record ``index`` into ``records``; True if it was the END record."""
    at = cur.pos
    if at == len(cur.data):
        raise SaveFileError("libxl stream", "truncated: ends without an END record", at)
    rtype, length = _REC_HEADER.unpack(
        cur.take(_REC_HEADER.size, f"record {index}", "the record header")
    )
    part = f"record {index} ({_record_name(rtype)})"
    padded = length + (-length % REC_ALIGN)
    body_at = cur.pos
    chunk = cur.take(padded, part, f"a body of {length} bytes padded to {padded}")
    if bytes(chunk[length:]).strip(b"\0"):
        raise SaveFileError(part, "padding is not zero", body_at + length)
    if rtype == RecType.END:
        if length:
            raise SaveFileError(part, f"END record has a {length}-byte body", at)
        if cur.pos != len(cur.data):
            raise SaveFileError(
                part, f"{len(cur.data) - cur.pos} bytes of trailing data after END", cur.pos
            )
        return True
    if rtype == RecType.LIBXC_CONTEXT:
        raise SaveFileError(
            part, "a libxc (guest memory) stream: an xl save file, not one of ours", at
        )
    if rtype in (RecType.CHECKPOINT_END, RecType.CHECKPOINT_STATE):
        raise SaveFileError(part, "unexpected checkpoint record in a saved image", at)
    if rtype not in (RecType.EMULATOR_XENSTORE_DATA, RecType.EMULATOR_CONTEXT):
        kind = "optional" if rtype & 0x80000000 else "mandatory"
        raise SaveFileError(part, f"unrecognised ({kind}) record type; libxl refuses it", at)
    payload = _emulator_payload(chunk[:length], part, at, body_at)
    if rtype == RecType.EMULATOR_XENSTORE_DATA:
        if records.xenstore is not None:
            raise SaveFileError(part, "duplicate emulator xenstore data", at)
        records.xenstore = decode_xenstore_data(payload, part)
    else:
        if records.context is not None:
            raise SaveFileError(part, "duplicate emulator context", at)
        records.context = payload
        records.context_at = body_at + _EMU_HEADER.size
    return False


def _emulator_payload(body: memoryview, part: str, at: int, body_at: int) -> memoryview:
    """An emulator record's body past its header, which must name qemu-traditional."""
    if len(body) < _EMU_HEADER.size:
        raise SaveFileError(part, "too short to contain the emulator header", at)
    emu_id, emu_index = _EMU_HEADER.unpack(body[: _EMU_HEADER.size])
    if emu_id != EmulatorId.QEMU_TRADITIONAL:
        what = {
            EmulatorId.QEMU_UPSTREAM: "qemu-upstream (qemu-xen)",
            EmulatorId.UNKNOWN: "unknown (a converted legacy stream)",
        }.get(emu_id, f"unknown emulator id {emu_id}")
        raise SaveFileError(part, f"emulator is {what}, not qemu-traditional (id 1)", body_at)
    if emu_index != 0:
        raise SaveFileError(
            part, f"emulator index {emu_index}: only one device model (index 0)", body_at + 4
        )
    return body[_EMU_HEADER.size :]


# -- the device model's state -----------------------------------------------------------


def check_dm_state_complete(blob: BytesLike) -> None:
    """`stream.check_savevm_complete`, its errors a `SaveFileError`."""
    with _dm_state_errors():
        stream.check_savevm_complete(blob)


def check_dm_state_header(head: BytesLike, size: int, last: int) -> bytes:
    """`stream.check_savevm_header`, its errors a `SaveFileError`."""
    with _dm_state_errors():
        return stream.check_savevm_header(head, size, last)


def check_dm_stream(chunks: Iterable[BytesLike]) -> None:
    """stubdom-dm's self-describing record (`stubdom.devicemodel.stream`), given in
    pieces that make the whole state (read from a file, say): its length and CRC-32 are
    checked, nothing is kept.  `SaveFileError` as `check_dm_state_complete` raises it."""
    with _dm_state_errors():
        stream.check_pieces(chunks)


@contextlib.contextmanager
def _dm_state_errors() -> Iterator[None]:
    """A device-model state the stream module refuses, as the save file's error."""
    try:
        yield
    except stream.SavevmError as e:
        raise SaveFileError("device-model state", e.detail, e.offset) from None
    except stream.StreamError as e:
        raise SaveFileError(
            "device-model state", str(e).removeprefix("device-model state: ")
        ) from None


# -- GuestConfig <-> JSON ---------------------------------------------------------------


def config_to_json(cfg: GuestConfig) -> dict[str, Any]:
    """The config as JSON data: generic over dataclass fields (``init`` ones), enums as
    their values, `Bdf` as ``{"domain", "bus", "dev", "func"}`` (libxl's JSON shape)."""
    out = typedjson.to_json(cfg, "config")
    assert isinstance(out, dict)
    return out


def config_from_json(data: Any) -> GuestConfig:
    """The inverse of `config_to_json`; `SaveFileError` (part ``config``) on any mismatch.
    Fields missing from the data take their defaults (a file from an older version)."""
    try:
        return typedjson.dataclass_from_json(GuestConfig, data)
    except typedjson.UnknownFields as exc:
        raise SaveFileError(
            "config", f"{exc}: the file is damaged or was saved by a newer stubdom"
        ) from None
    except typedjson.JsonTypeError as exc:
        raise SaveFileError("config", str(exc)) from None
