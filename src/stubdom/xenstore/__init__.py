"""An asyncio xenstore client, with a sans-IO core and a blocking facade.

Layers, bottom up: `protocol` (sans-IO: requests to bytes, bytes to replies and
watch events, reply matching, DIRECTORY_PART paging), `transport` (Unix socket or
xenbus device, chosen like libxenstore), `ring` and `ringtransport` (a guest's shared
ring page: the sans-IO ring and its asyncio shell), `client` (the asyncio `Client`, `Watch`,
`Transaction`), `waiting` (`Client.wait_until`: watch nodes until a condition on them
holds), `sync` (`SyncClient`).  Errors are in `errors`.

The names below are imported on first use: a program that needs only the sans-IO
parts or `blocking` (``stubdom xenstore read``) must not pay for asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stubdom.wire.perms import Access, Perm, parse_perm
    from stubdom.xenstore.client import (
        DEFAULT,
        Client,
        Transaction,
        Watch,
        WatchSink,
        open_client,
    )
    from stubdom.xenstore.errors import (
        ERROR_CLASSES,
        AlreadyConnected,
        AlreadyExists,
        Busy,
        ConnectionClosed,
        InvalidArgument,
        IsADirectory,
        NoEntry,
        NoSpace,
        NotEmpty,
        NotPermitted,
        NotSupported,
        OutOfMemory,
        PermissionDenied,
        ProtocolError,
        QuotaExceeded,
        ReadOnly,
        RingUnsupported,
        ServerIOError,
        TooBig,
        TransactionConflict,
        WaitTimeout,
        XenStoreError,
        XenStoreTimeout,
        error_from_name,
    )
    from stubdom.xenstore.protocol import (
        ClientProtocol,
        DirectoryPager,
        DirectoryPart,
        Reply,
        Request,
        WatchEvent,
    )
    from stubdom.xenstore.recovery import DEFAULT_TIMEOUT, RECONNECT
    from stubdom.xenstore.ringtransport import RingTransport
    from stubdom.xenstore.transport import (
        FdTransport,
        StreamTransport,
        Transport,
        daemon_socket_path,
        domain_dev_path,
        open_transport,
    )
    from stubdom.xenstore.waiting import WatchGroup

#: Where each name of `__all__` lives.
_WHERE: dict[str, str] = {
    "Access": "stubdom.wire.perms",
    "Perm": "stubdom.wire.perms",
    "parse_perm": "stubdom.wire.perms",
    "DEFAULT": "stubdom.xenstore.client",
    "DEFAULT_TIMEOUT": "stubdom.xenstore.recovery",
    "RECONNECT": "stubdom.xenstore.recovery",
    "Client": "stubdom.xenstore.client",
    "Transaction": "stubdom.xenstore.client",
    "Watch": "stubdom.xenstore.client",
    "WatchSink": "stubdom.xenstore.client",
    "open_client": "stubdom.xenstore.client",
    "ERROR_CLASSES": "stubdom.xenstore.errors",
    "AlreadyConnected": "stubdom.xenstore.errors",
    "AlreadyExists": "stubdom.xenstore.errors",
    "Busy": "stubdom.xenstore.errors",
    "ConnectionClosed": "stubdom.xenstore.errors",
    "InvalidArgument": "stubdom.xenstore.errors",
    "IsADirectory": "stubdom.xenstore.errors",
    "NoEntry": "stubdom.xenstore.errors",
    "NoSpace": "stubdom.xenstore.errors",
    "NotEmpty": "stubdom.xenstore.errors",
    "NotPermitted": "stubdom.xenstore.errors",
    "NotSupported": "stubdom.xenstore.errors",
    "OutOfMemory": "stubdom.xenstore.errors",
    "PermissionDenied": "stubdom.xenstore.errors",
    "ProtocolError": "stubdom.xenstore.errors",
    "QuotaExceeded": "stubdom.xenstore.errors",
    "ReadOnly": "stubdom.xenstore.errors",
    "ServerIOError": "stubdom.xenstore.errors",
    "TooBig": "stubdom.xenstore.errors",
    "TransactionConflict": "stubdom.xenstore.errors",
    "WaitTimeout": "stubdom.xenstore.errors",
    "XenStoreError": "stubdom.xenstore.errors",
    "XenStoreTimeout": "stubdom.xenstore.errors",
    "error_from_name": "stubdom.xenstore.errors",
    "ClientProtocol": "stubdom.xenstore.protocol",
    "DirectoryPager": "stubdom.xenstore.protocol",
    "DirectoryPart": "stubdom.xenstore.protocol",
    "Reply": "stubdom.xenstore.protocol",
    "Request": "stubdom.xenstore.protocol",
    "WatchEvent": "stubdom.xenstore.protocol",
    "RingTransport": "stubdom.xenstore.ringtransport",
    "RingUnsupported": "stubdom.xenstore.errors",
    "FdTransport": "stubdom.xenstore.transport",
    "StreamTransport": "stubdom.xenstore.transport",
    "Transport": "stubdom.xenstore.transport",
    "daemon_socket_path": "stubdom.xenstore.transport",
    "domain_dev_path": "stubdom.xenstore.transport",
    "open_transport": "stubdom.xenstore.transport",
    "WatchGroup": "stubdom.xenstore.waiting",
}


def __getattr__(name: str) -> object:
    """Import a name of `__all__` from its module on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "ERROR_CLASSES",
    "RECONNECT",
    "Access",
    "AlreadyConnected",
    "AlreadyExists",
    "Busy",
    "Client",
    "ClientProtocol",
    "ConnectionClosed",
    "DirectoryPager",
    "DirectoryPart",
    "FdTransport",
    "InvalidArgument",
    "IsADirectory",
    "NoEntry",
    "NoSpace",
    "NotEmpty",
    "NotPermitted",
    "NotSupported",
    "OutOfMemory",
    "Perm",
    "PermissionDenied",
    "ProtocolError",
    "QuotaExceeded",
    "ReadOnly",
    "Reply",
    "Request",
    "RingTransport",
    "RingUnsupported",
    "ServerIOError",
    "StreamTransport",
    "TooBig",
    "Transaction",
    "TransactionConflict",
    "Transport",
    "WaitTimeout",
    "Watch",
    "WatchEvent",
    "WatchGroup",
    "WatchSink",
    "XenStoreError",
    "XenStoreTimeout",
    "daemon_socket_path",
    "domain_dev_path",
    "error_from_name",
    "open_client",
    "open_transport",
    "parse_perm",
]
