"""The xenstore wire protocol as pure functions and data: no I/O happens here.

`constants` holds the numbers of ``xs_wire.h`` (Xen 4.17), `packet` the header codec
and the incremental decoder, `paths` the node-name rules and `perms` the permission
strings.  Both the client and the embedded xenstored build on this package.
"""

from stubdom.wire.constants import (
    ABS_PATH_MAX,
    DOMID_SELF,
    ERRNO_NAMES,
    HEADER_SIZE,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    Op,
)
from stubdom.wire.packet import (
    DecodeError,
    MissingTerminator,
    Packet,
    PacketDecoder,
    PayloadTooLong,
    UnknownType,
    WireError,
    encode,
    join_args,
    split_args,
)

__all__ = [
    "ABS_PATH_MAX",
    "DOMID_SELF",
    "ERRNO_NAMES",
    "HEADER_SIZE",
    "PAYLOAD_MAX",
    "REL_PATH_MAX",
    "DecodeError",
    "MissingTerminator",
    "Op",
    "Packet",
    "PacketDecoder",
    "PayloadTooLong",
    "UnknownType",
    "WireError",
    "encode",
    "join_args",
    "split_args",
]
