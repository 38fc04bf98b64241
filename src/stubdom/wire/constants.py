"""Numbers and names fixed by ``xen/include/public/io/xs_wire.h`` as of Xen 4.17."""

from __future__ import annotations

import enum
from typing import Final


class Op(enum.IntEnum):
    """``enum xsd_sockmsg_type``: the message types, with their wire numbers."""

    CONTROL = 0  # alias XS_DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20  # removed from Xen; every daemon answers ENOSYS
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


#: ``XS_TYPE_COUNT`` in 4.17: types at or above it are answered with ENOSYS.
TYPE_COUNT: Final = 23

HEADER_SIZE: Final = 16
PAYLOAD_MAX: Final = 4096
ABS_PATH_MAX: Final = 3072
REL_PATH_MAX: Final = 2048

#: ``DOMID_SELF``: IS_DOMAIN_INTRODUCED answers T for it.
DOMID_SELF: Final = 0x7FF0
#: First domid reserved by the hypervisor (``DOMID_FIRST_RESERVED``).
DOMID_FIRST_RESERVED: Final = 0x7FF0

#: ``xsd_errors[]``: the errno names that may appear in an ERROR reply, in table order.
ERRNO_NAMES: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)

#: The reply payload of every request that succeeds without returning data.
OK: Final = b"OK\0"
