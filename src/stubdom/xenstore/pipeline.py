"""Several requests on one connection without waiting for each reply in turn.

`Batch` is the lean form for hot paths: its requests leave in one write and their
replies are awaited together, with no task per request, and each result says where
its reply arrived among the connection's packets (`Result.seq`).  `pipelined` takes
any awaitables (the client's own methods, a transaction's), one task each.

xenstored serves a connection's requests one at a time, in the order they arrive, so a
batch of writes issued back to back (`pipelined`) changes the store exactly as the same
writes awaited one by one would -- inside a transaction, even on failure: the first
failure (in issue order) is raised, the transaction is then aborted, and whatever the
later requests did goes with it.  What it saves is one round trip per request.

The order holds because `Client.roundtrip` puts a request on the wire before its first
suspension, and the tasks `asyncio.gather` makes start in argument order.  Outside a
transaction, pipeline only requests that do not depend on one another's success
(reads, or writes whose failure fails the whole operation anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from stubdom.wire.constants import Op
from stubdom.xenstore.errors import NoEntry, XenStoreError
from stubdom.xenstore.protocol import Reply, reply_payload

if TYPE_CHECKING:
    from stubdom.xenstore.client import Client

T = TypeVar("T")
_READ, _WRITE, _RM = int(Op.READ), int(Op.WRITE), int(Op.RM)
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@overload
async def pipelined(a: Awaitable[A], b: Awaitable[B], /) -> tuple[A, B]: ...
@overload
async def pipelined(a: Awaitable[A], b: Awaitable[B], c: Awaitable[C], /) -> tuple[A, B, C]: ...
@overload
async def pipelined(*requests: Awaitable[T]) -> tuple[T, ...]: ...


async def pipelined(*requests: Awaitable[Any]) -> tuple[Any, ...]:
    """Await ``requests`` issued back to back; their results in order.  The first one
    that failed (in issue order) raises, after every one has finished."""
    if len(requests) == 1:
        return (await requests[0],)
    results = await asyncio.gather(*requests, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return tuple(results)


class Result(Generic[T]):
    """What one request of a `Batch` gave, once the batch is sent."""

    __slots__ = ("_error", "_value", "seq")

    def __init__(self) -> None:
        self._value: T | None = None
        self._error: XenStoreError | None = None
        #: The reply's place on the connection (`stubdom.xenstore.protocol.Reply.seq`).
        self.seq = 0

    @property
    def value(self) -> T:
        if self._error is not None:
            raise self._error
        if self.seq == 0:
            raise RuntimeError("the batch was not sent")
        return self._value  # type: ignore[return-value]


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")


def _wire(path: str) -> bytes:
    """The path as the wire carries it (`stubdom.xenstore.payloads.wire_bytes`)."""
    return path.encode("utf-8", "surrogateescape")


class Batch:
    """Requests on ``client`` (outside any transaction) that go out in one write,
    in the order they were added (`Client.roundtrips`); `send` waits for every reply
    and raises the first failure in that order.  As with `pipelined`, batch only
    requests that do not depend on one another's success."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._requests: list[tuple[int, bytes, str | None]] = []
        self._results: list[tuple[Result[Any], Callable[[Reply, str | None], Any]]] = []

    def _add(self, op: int, payload: bytes, path: str, parse: Callable[[Reply, str | None], T]
             ) -> Result[T]:
        client = self.client
        if client.check_paths and path not in client._valid_paths:
            client._check_path(path)
        result: Result[T] = Result()
        self._requests.append((op, payload, path))
        self._results.append((result, parse))
        return result

    def read(self, path: str) -> Result[bytes]:
        return self._add(_READ, _wire(path) + b"\0", path, reply_payload)

    def read_text(self, path: str) -> Result[str | None]:
        """As `Client.read_text`: None for a node that does not exist."""
        return self._add(_READ, _wire(path) + b"\0", path, _optional_text)

    def write(self, path: str, value: bytes | str) -> Result[None]:
        raw = value.encode() if isinstance(value, str) else value
        return self._add(_WRITE, _wire(path) + b"\0" + raw, path, _nothing)

    def rm(self, path: str, *, missing_ok: bool = False) -> Result[bool]:
        """Whether the node was there to remove (with ``missing_ok``; else an
        absent node fails the batch)."""
        parse = _removed_if_there if missing_ok else _removed
        return self._add(_RM, _wire(path) + b"\0", path, parse)

    async def send(self) -> None:
        """Send every request and wait for every reply (the client's timeout bounds
        the whole batch); the first failure raises."""
        replies = await self.client.roundtrips(self._requests)
        first: XenStoreError | None = None
        for (result, parse), reply, (_, _, what) in zip(
            self._results, replies, self._requests, strict=True
        ):
            result.seq = reply.seq
            try:
                result._value = parse(reply, what)
            except XenStoreError as err:
                result._error = err
                first = first or err
        if first is not None:
            raise first


def _optional_text(reply: Reply, what: str | None) -> str | None:
    try:
        return _text(reply_payload(reply, what))
    except NoEntry:
        return None


def _nothing(reply: Reply, what: str | None) -> None:
    reply_payload(reply, what)


def _removed(reply: Reply, what: str | None) -> bool:
    reply_payload(reply, what)
    return True


def _removed_if_there(reply: Reply, what: str | None) -> bool:
    try:
        reply_payload(reply, what)
    except NoEntry:
        return False
    return True
