"""Exceptions raised by the xenstore client.

The tree::

    OSError
     +-- XenStoreError            an ERROR reply from the server; .name is the errno name
     |    +-- NoEntry             ENOENT
     |    +-- PermissionDenied    EACCES
     |    +-- TransactionConflict EAGAIN (a commit lost a race: retry the transaction)
     |    +-- TooBig              E2BIG
     |    +-- ...                 one subclass per name of ``xsd_errors[]``, plus EQUOTA
     +-- ConnectionError
     |    +-- ConnectionClosed    the connection ended; every pending request fails with it
     +-- TimeoutError
          +-- XenStoreTimeout     no reply (or no watch event) within the allowed time
    Exception
     +-- ProtocolError            the server sent something the protocol does not allow

Servers send the errno *name*, not the number, and oxenstored sends ``EQUOTA`` which
has no errno; like libxenstore's ``get_error()`` such names get EINVAL's number but
keep their name, so ``e.name`` is always what the server said.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import ClassVar

from stubdom.wire.constants import PAYLOAD_MAX


class XenStoreError(OSError):
    """The server answered a request with ERROR.

    ``name`` is the errno name from the wire, ``errno`` the matching Python errno
    number (EINVAL's for names Python does not know), ``op`` the request type and
    ``path`` the node or argument the request was about, when there is one.
    """

    #: The errno name a subclass stands for; the base class has none.
    error_name: ClassVar[str] = ""

    def __init__(
        self,
        name: str | None = None,
        *,
        op: str | None = None,
        path: str | None = None,
        message: str | None = None,
    ) -> None:
        name = name or self.error_name or "EINVAL"
        number = getattr(_errno, name, None)
        if not isinstance(number, int):
            number = _errno.EINVAL
        super().__init__(number, os.strerror(number))
        self.name = name
        self.op = op
        self.path = path
        self.message = message

    def __str__(self) -> str:
        where = " ".join(x for x in ("xenstore", self.op, self.path) if x)
        text = f"{where}: {self.name} ({self.strerror})"
        if self.message:
            text += f": {self.message}"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.name, self.op, self.path, self.message))


def _rebuild(
    cls: type[XenStoreError], name: str, op: str | None, path: str | None, message: str | None
) -> XenStoreError:
    return cls(name, op=op, path=path, message=message)


class InvalidArgument(XenStoreError):
    error_name = "EINVAL"


class PermissionDenied(XenStoreError):
    error_name = "EACCES"


class AlreadyExists(XenStoreError):
    error_name = "EEXIST"


class IsADirectory(XenStoreError):
    error_name = "EISDIR"


class NoEntry(XenStoreError):
    error_name = "ENOENT"


class OutOfMemory(XenStoreError):
    """ENOMEM: a memory quota, or committing a transaction the server marked failed."""

    error_name = "ENOMEM"


class NoSpace(XenStoreError):
    """ENOSPC: most cxenstored quotas."""

    error_name = "ENOSPC"


class ServerIOError(XenStoreError):
    """EIO: oxenstored's answer to unexpected conditions such as an unknown tx_id."""

    error_name = "EIO"


class NotEmpty(XenStoreError):
    error_name = "ENOTEMPTY"


class NotSupported(XenStoreError):
    """ENOSYS: the server does not know the request type (e.g. DIRECTORY_PART on ox)."""

    error_name = "ENOSYS"


class ReadOnly(XenStoreError):
    error_name = "EROFS"


class Busy(XenStoreError):
    """EBUSY: e.g. TRANSACTION_START inside a transaction."""

    error_name = "EBUSY"


class TransactionConflict(XenStoreError):
    """EAGAIN: the transaction conflicted with another change; run it again."""

    error_name = "EAGAIN"


class AlreadyConnected(XenStoreError):
    error_name = "EISCONN"


class TooBig(XenStoreError):
    """E2BIG: a reply would exceed 4096 bytes, a value is too large, or a watch quota."""

    error_name = "E2BIG"


class NotPermitted(XenStoreError):
    error_name = "EPERM"


class QuotaExceeded(XenStoreError):
    """EQUOTA: oxenstored's quota error (not in ``xsd_errors[]``; errno is EINVAL's)."""

    error_name = "EQUOTA"


#: errno name -> the exception class raised for it.
ERROR_CLASSES: dict[str, type[XenStoreError]] = {
    cls.error_name: cls
    for cls in (
        InvalidArgument,
        PermissionDenied,
        AlreadyExists,
        IsADirectory,
        NoEntry,
        OutOfMemory,
        NoSpace,
        ServerIOError,
        NotEmpty,
        NotSupported,
        ReadOnly,
        Busy,
        TransactionConflict,
        AlreadyConnected,
        TooBig,
        NotPermitted,
        QuotaExceeded,
    )
}


def error_from_name(
    name: str, *, op: str | None = None, path: str | None = None, message: str | None = None
) -> XenStoreError:
    """The exception for an ERROR reply carrying ``name`` (base class if unknown)."""
    cls = ERROR_CLASSES.get(name, XenStoreError)
    return cls(name, op=op, path=path, message=message)


class ConnectionClosed(ConnectionError):
    """The connection to the server is gone (EOF, I/O error or `Client.close`)."""


class RingUnsupported(OSError):
    """The server does not offer what was asked of a ring (reconnection)."""


class XenStoreTimeout(TimeoutError):
    """No reply to a request, or no watch event, within the allowed time."""


class WaitTimeout(XenStoreTimeout):
    """A condition on nodes did not hold in time (`Client.wait_until`); a request that
    timed out meanwhile is a plain `XenStoreTimeout`, so callers can tell the two apart.
    ``last`` holds the values the last look read (None: no look finished), so the
    caller can say what it saw."""

    def __init__(self, message: str, last: tuple[str | None, ...] | None = None) -> None:
        super().__init__(message)
        self.last = last


class ProtocolError(Exception):
    """The server sent bytes or a reply that the xenstore protocol does not allow."""


__all__ = [
    "ERROR_CLASSES",
    "AlreadyConnected",
    "AlreadyExists",
    "Busy",
    "ConnectionClosed",
    "InvalidArgument",
    "IsADirectory",
    "NoEntry",
    "NoSpace",
    "NotEmpty",
    "NotPermitted",
    "NotSupported",
    "OutOfMemory",
    "PermissionDenied",
    "ProtocolError",
    "QuotaExceeded",
    "ReadOnly",
    "ServerIOError",
    "TooBig",
    "TransactionConflict",
    "WaitTimeout",
    "XenStoreError",
    "XenStoreTimeout",
    "error_from_name",
]


def request_too_big(op: str, path: str | None, size: int) -> TooBig:
    """A request no daemon takes, refused before it is sent (every client of ours)."""
    return TooBig(op=op, path=path, message=f"request of {size} bytes exceeds {PAYLOAD_MAX}")


def no_reply(op: str, path: str | None, limit: float | None) -> XenStoreTimeout:
    """A request whose reply did not come within ``limit`` seconds."""
    where = " ".join(x for x in ("xenstore", op, path) if x)
    within = "" if limit is None else f" within {limit:g} s"
    return XenStoreTimeout(f"{where}: no reply{within}")
