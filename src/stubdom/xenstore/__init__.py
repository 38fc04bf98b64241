"""An asyncio xenstore client, with a sans-IO core and a blocking facade.

Layers, bottom up: `protocol` (sans-IO: requests to bytes, bytes to replies and
watch events, reply matching, DIRECTORY_PART paging), `transport` (Unix socket or
xenbus device, chosen like libxenstore), `ring` and `ringtransport` (a guest's shared
ring page: the sans-IO ring and its asyncio shell), `client` (the asyncio `Client`, `Watch`,
`Transaction`), `waiting` (`Client.wait_until`: watch nodes until a condition on them
holds), `sync` (`SyncClient`).  Errors are in `errors`.
"""

from stubdom.wire.perms import Access, Perm, parse_perm
from stubdom.xenstore.client import (
    DEFAULT,
    DEFAULT_TIMEOUT,
    RECONNECT,
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
from stubdom.xenstore.ringtransport import RingTransport, RingUnsupported
from stubdom.xenstore.transport import (
    FdTransport,
    StreamTransport,
    Transport,
    daemon_socket_path,
    domain_dev_path,
    open_transport,
)
from stubdom.xenstore.waiting import WatchGroup

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
