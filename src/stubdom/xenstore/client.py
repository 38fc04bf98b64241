"""The asyncio xenstore client: a thin I/O shell around `ClientProtocol`.

One reader task per connection feeds received bytes to the sans-IO protocol and
hands out what comes back: replies complete the future of their request, watch
events go to the `Watch` registered for their token.  Many requests may be in
flight at once; see `stubdom.xenstore.protocol` for how replies are matched, which
also copes with servers that echo ``req_id`` 0 or answer strictly in order.

Usage::

    async with await Client.connect() as xs:           # libxenstore's path lookup
        await xs.write("/local/domain/0/x", b"1")
        async with xs.watch("/local/domain/0/x") as w:
            async for ev in w:                          # the initial event comes first
                ...
        async with xs.transaction() as t:               # commit on exit, abort on error
            await t.write("/a", await t.read("/b"))

Every request has a timeout (`Client.timeout`, default 10 s, or ``timeout=`` per
call; None waits for ever) and raises `XenStoreTimeout` when it expires.  The
request stays on the wire; its late reply is recognised and dropped.

``reconnect=SECONDS`` makes the client outlive a restart of the daemon (one with a
state directory, which keeps the tree and the introductions), as a ring outlives cx's
live update: when the connection drops, the client connects again for up to that many
seconds, registers its watches again (each fires once, so every watcher looks again at
what it watches) and re-sends the requests that had no reply.  Requests of a
transaction cannot be re-sent (the daemon forgot the transaction): they fail with
`TransactionConflict`, which `Client.retry_transaction` answers by running the block
again.  A re-sent request may have been applied once already: WRITE, MKDIR and
SET_PERMS do not mind; an RM may then answer ENOENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from stubdom.wire.constants import PAYLOAD_MAX, Op
from stubdom.wire.packet import op_name
from stubdom.wire.paths import check_client_path
from stubdom.wire.perms import Perm
from stubdom.xenstore.errors import (
    ConnectionClosed,
    NoEntry,
    NotSupported,
    PermissionDenied,
    ProtocolError,
    TooBig,
    TransactionConflict,
    XenStoreError,
    XenStoreTimeout,
    no_reply,
    request_too_big,
)
from stubdom.xenstore.inflight import Call, Deadlines
from stubdom.xenstore.protocol import (
    DEFAULT_MAX_REPLY,
    ClientProtocol,
    DirectoryPager,
    DirectoryPart,
    Reply,
    Request,
    WatchEvent,
    args_payload,
    parse_bool,
    parse_perms,
    parse_single,
    parse_strings,
    parse_tx_id,
    perms_payload,
    reply_payload,
)
from stubdom.xenstore.recovery import (
    DEFAULT_TIMEOUT,
    RECONNECT,
    Backoff,
    forgotten,
    retry_pause,
)
from stubdom.xenstore.ringtransport import RingTransport
from stubdom.xenstore.transport import Transport, open_transport
from stubdom.xenstore.waiting import wait_until

log = logging.getLogger(__name__)

T = TypeVar("T")



class _Default(enum.Enum):
    TOKEN = 0


#: "Use the client's timeout" (as opposed to None, "no timeout").
DEFAULT = _Default.TOKEN
TimeoutArg = float | None | _Default

#: Where a `Watch` made with ``sink=`` hands its events (and its `ConnectionClosed`).
WatchSink = Callable[["WatchEvent | ConnectionClosed"], None]

#: How many valid paths a client remembers (`Client._check_path`).
_VALID_PATHS_MAX = 4096

# Aliases so that annotations inside classes with a ``list`` method stay unambiguous.
Names = list[str]
Perms = list[Perm]


def _value(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class _NodeOps:
    """The node requests, shared by `Client` (no transaction) and `Transaction`."""

    _client: Client
    _tx_id: int

    async def _rpc(self, op: Op, payload: bytes, what: str | None, timeout: TimeoutArg) -> bytes:
        (reply,) = await self._client.roundtrips(
            ((op, payload, what),), tx_id=self._tx_id, timeout=timeout
        )
        return reply_payload(reply, what)

    def _path(self, path: str) -> bytes:
        """The payload of a request on ``path`` alone, the path checked first."""
        client = self._client
        if client.check_paths and path not in client._valid_paths:
            client._check_path(path)
        return path.encode("utf-8", "surrogateescape") + b"\0"  # as `wire_bytes`

    async def read(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> bytes:
        """The node's value (raw bytes, NULs allowed)."""
        return await self._rpc(Op.READ, self._path(path), path, timeout)

    async def read_optional(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> bytes | None:
        """The node's value, or None if it does not exist (other errors propagate)."""
        try:
            return await self.read(path, timeout=timeout)
        except NoEntry:
            return None

    async def read_text(
        self, path: str, *, denied_as_absent: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> str | None:
        """The node's value as text, or None if it does not exist -- or, with
        ``denied_as_absent``, if we may not read it (a guest cannot even learn that a
        node is gone once its parents are).  Bytes that are not UTF-8 are replaced, not
        raised: the nodes read as text are ASCII, and a stray byte a peer wrote must
        not kill the reader."""
        try:
            raw = await self.read_optional(path, timeout=timeout)
        except PermissionDenied:
            if not denied_as_absent:
                raise
            return None
        return None if raw is None else raw.decode("utf-8", "replace")

    async def exists(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> bool:
        """Whether READ finds the node (ENOENT -> False; other errors propagate)."""
        try:
            await self.read(path, timeout=timeout)
        except NoEntry:
            return False
        return True

    async def write(self, path: str, value: bytes | str, *, timeout: TimeoutArg = DEFAULT) -> None:
        """Set the value, creating the node and missing parents; str is sent as UTF-8."""
        await self._rpc(Op.WRITE, self._path(path) + _value(value), path, timeout)

    async def mkdir(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        """Create the node (empty value) if missing; an existing node is left alone."""
        await self._rpc(Op.MKDIR, self._path(path), path, timeout)

    async def rm(
        self, path: str, *, missing_ok: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> None:
        """Remove the node and everything below it; ``missing_ok``: ENOENT is no error."""
        try:
            await self._rpc(Op.RM, self._path(path), path, timeout)
        except NoEntry:
            if not missing_ok:
                raise

    async def directory(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> Names:
        """Raw DIRECTORY: the child names, or `TooBig` if they exceed one reply."""
        return parse_strings(await self._rpc(Op.DIRECTORY, self._path(path), path, timeout))

    async def directory_part(
        self, path: str, offset: int = 0, *, timeout: TimeoutArg = DEFAULT
    ) -> DirectoryPart:
        """Raw DIRECTORY_PART: the generation and child-list bytes from byte ``offset``."""
        self._path(path)
        payload = args_payload(path, str(offset))
        return DirectoryPart.parse(await self._rpc(Op.DIRECTORY_PART, payload, path, timeout))

    async def list(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> Names:
        """The child names, however many (libxenstore ``xs_directory``).

        DIRECTORY first; on E2BIG the list is paged with DIRECTORY_PART, restarting
        whenever the node's generation changes.  A server without DIRECTORY_PART
        (ENOSYS, e.g. oxenstored) leaves the E2BIG standing.  ``timeout`` applies to
        each request, not to the whole listing.
        """
        try:
            return await self.directory(path, timeout=timeout)
        except TooBig:
            log.debug("DIRECTORY %s: E2BIG, paging with DIRECTORY_PART", path)
        pager = DirectoryPager()
        while True:
            payload = args_payload(path, str(pager.offset))
            try:
                reply = await self._rpc(Op.DIRECTORY_PART, payload, path, timeout)
            except NotSupported as exc:
                raise TooBig(
                    op="DIRECTORY", path=path, message="child list too long and no DIRECTORY_PART"
                ) from exc
            if pager.feed(reply):
                return pager.names

    async def get_perms(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> Perms:
        """The permission vector; entry 0 is the owner and the default access."""
        return parse_perms(await self._rpc(Op.GET_PERMS, self._path(path), path, timeout))

    async def set_perms(
        self, path: str, perms: Sequence[Perm | str], *, timeout: TimeoutArg = DEFAULT
    ) -> None:
        """Replace the permission vector (`Perm` objects or strings like ``"r5"``)."""
        if not perms:
            raise ValueError("set_perms needs at least the owner entry")
        self._path(path)
        await self._rpc(Op.SET_PERMS, perms_payload(path, perms), path, timeout)


class Client(_NodeOps):
    """One connection to a xenstore server; construct inside a running event loop.

    ``check_paths`` validates paths locally (`stubdom.wire.paths.check_client_path`)
    before sending, for clearer errors; turn it off to send anything.
    ``max_reply`` bounds the reply payloads accepted (ox's socket may exceed 4096).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_paths: bool = True,
        max_reply: int = DEFAULT_MAX_REPLY,
        reconnect: float | None = None,
        path: str | None = None,
        opener: Callable[[], Awaitable[Transport]] | None = None,
    ) -> None:
        self.timeout = timeout
        self.check_paths = check_paths
        self._client = self
        self._tx_id = 0
        self._transport = transport
        self._max_reply = max_reply
        self._proto = ClientProtocol(max_reply=max_reply)
        #: Seconds to keep trying to connect again after the connection drops.
        self.reconnect = reconnect
        #: What `Client.connect` was given, to connect again the same way.
        self._connect_path = path
        #: How to connect again, if not as `Client.connect` does (a ring).
        self._opener = opener
        #: Bumped on each reconnection: transactions of an older epoch are void.
        self.epoch = 0
        self._online = asyncio.Event()
        self._online.set()
        self._loop = asyncio.get_running_loop()
        #: The call waiting for each req_id's reply, and the reply's place in it.
        self._waiters: dict[int, tuple[Call, int]] = {}
        #: The calls made with the client's own timeout (`Deadlines`), if any yet.
        self._deadlines: Deadlines | None = None
        #: Paths `check_client_path` passed: a client names the same few nodes again
        #: and again, and a set lookup is cheaper than the check.
        self._valid_paths: set[str] = set()
        self._watches: dict[str, Watch] = {}
        self._tokens = itertools.count(1)
        self._token_prefix = f"stubdom-{id(self):x}-"
        self._closed: ConnectionClosed | None = None
        #: Serialises this client's retries after a conflict (see `retry_transaction`).
        self._retry_lock = asyncio.Lock()
        self._retry_owner: asyncio.Task[Any] | None = None
        self._reader = self._loop.create_task(
            self._read_loop(), name=f"xenstore-reader {transport.description}"
        )

    @classmethod
    async def connect(
        cls,
        path: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_paths: bool = True,
        max_reply: int = DEFAULT_MAX_REPLY,
        reconnect: float | None = None,
    ) -> Client:
        """Connect like libxenstore ``xs_open``: ``path``, else socket, else xenbus."""
        transport = await open_transport(path)
        log.debug("connected to %s", transport.description)
        return cls(
            transport,
            timeout=timeout,
            check_paths=check_paths,
            max_reply=max_reply,
            reconnect=reconnect,
            path=path,
        )

    @classmethod
    async def connect_ring(
        cls,
        page: Path,
        evtchn: Path,
        port: int,
        notify: Path | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_paths: bool = True,
        max_reply: int = DEFAULT_MAX_REPLY,
        reconnect: float | None = None,
        reset: bool | None = False,
    ) -> Client:
        """Connect over a xenstore ring page, as a guest does (`RingTransport.open`:
        ``page`` mapped shared, one kick byte ``port`` to the ``evtchn`` FIFO, wake-ups
        from the ``notify`` FIFO or else by polling).  With ``reconnect``, a ring that
        fails is opened again and reset if the server offers ring reconnection."""

        async def reopen() -> Transport:
            return await RingTransport.open(page, evtchn, port, notify, reset=None)

        transport = await RingTransport.open(page, evtchn, port, notify, reset=reset)
        log.debug("connected to %s", transport.description)
        return cls(
            transport,
            timeout=timeout,
            check_paths=check_paths,
            max_reply=max_reply,
            reconnect=reconnect,
            opener=reopen,
        )

    @property
    def description(self) -> str:
        return self._transport.description

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self) -> None:
        """Close the connection; pending requests and watches get `ConnectionClosed`."""
        self._shutdown(ConnectionClosed(f"xenstore connection {self.description} closed"))
        if not self._reader.done():
            self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._transport.wait_closed()

    def stop_reconnecting(self) -> None:
        """From now on a lost connection stays lost, and one being made again is
        given up: for a process on its way out, which must not wait for a daemon."""
        self.reconnect = None
        if not self._online.is_set() and self._closed is None:
            self._shutdown(ConnectionClosed(f"xenstore connection {self.description} lost"))
            self._reader.cancel()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the reader task -------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = ConnectionClosed(f"xenstore connection {self.description} closed")
        try:
            while True:
                lost = await self._pump()
                if self.reconnect is None or self._closed is not None:
                    reason = lost
                    break
                back = await self._reestablish(lost)
                if back is not None:
                    reason = back
                    break
        except asyncio.CancelledError:
            reason = ConnectionClosed(f"xenstore connection {self.description} closed")
            raise
        except Exception as exc:  # a bug must not look like a clean close
            log.exception("xenstore connection %s: reader failed", self.description)
            reason = ConnectionClosed(f"xenstore connection {self.description} failed: {exc!r}")
            reason.__cause__ = exc
        finally:
            self._shutdown(reason)

    async def _pump(self) -> ConnectionClosed:
        """Read and dispatch until the connection ends; why it ended."""
        try:
            await self._transport.run(self._received)
            return ConnectionClosed(f"xenstore connection {self.description} closed by the server")
        except (OSError, ProtocolError) as exc:
            log.warning("xenstore connection %s failed: %s", self.description, exc)
            reason = ConnectionClosed(f"xenstore connection {self.description} failed: {exc}")
            reason.__cause__ = exc
            return reason

    async def _reestablish(self, lost: ConnectionClosed) -> ConnectionClosed | None:
        """Connect again, re-register the watches, re-send what had no reply.

        Returns None once connected again, or why the client gives up.
        """
        assert self.reconnect is not None
        log.info("%s; connecting again (for up to %g s)", lost, self.reconnect)
        self._online.clear()
        self._transport.close()
        outstanding = self._proto.clear()
        loop = asyncio.get_running_loop()
        backoff = Backoff(lost, self.reconnect, loop.time() + self.reconnect)
        while True:
            try:
                if self._opener is not None:
                    transport = await self._opener()
                else:
                    transport = await open_transport(self._connect_path)
            except OSError as e:
                try:
                    delay = backoff.failed(e, loop.time())
                except ConnectionClosed as why:
                    return why
                await asyncio.sleep(delay)
                continue
            try:
                self._resume_on(transport, outstanding)
                break
            except OSError as e:  # the new connection failed at once: try again
                log.info("xenstore connection %s failed again: %s", transport.description, e)
                transport.close()
        self._online.set()
        log.info("connected to %s again", transport.description)
        return None

    def _resume_on(self, transport: Transport, outstanding: list[Request]) -> None:
        """Carry on over a new connection: the watches again first (their initial
        events make every watcher look again), then the requests that had no reply.
        Writes everything at once; changes nothing if the write fails."""
        proto = ClientProtocol(max_reply=self._max_reply, received=self._proto.received)
        data: list[bytes] = []
        in_flight_watches = {
            req.payload for req in outstanding if req.op == Op.WATCH and not req.abandoned
        }
        for watch in self._watches.values():
            payload = args_payload(watch.path, watch.token)
            if payload not in in_flight_watches:
                req, message = proto.send(Op.WATCH, payload)
                proto.abandon(req)  # nobody waits for this reply
                data.append(message)
        moved: list[tuple[int, Request, Call, int]] = []
        void: list[tuple[Request, Call]] = []
        for req in outstanding:
            entry = self._waiters.get(req.req_id)
            if entry is None or entry[0].future.done() or req.abandoned:
                continue
            if req.tx_id:
                void.append((req, entry[0]))
                continue
            new, message = proto.send(req.op, req.payload)
            moved.append((req.req_id, new, *entry))
            data.append(message)
        transport.write(b"".join(data))  # OSError: nothing above is visible yet
        self._transport = transport
        self._proto = proto
        self.epoch += 1
        for old_id, new, call, index in moved:
            del self._waiters[old_id]
            self._waiters[new.req_id] = (call, index)
            call.requests[index] = new
        for req, call in void:
            del self._waiters[req.req_id]
            if not call.future.done():
                call.future.set_exception(forgotten(op_name(req.op), req.tx_id))
                call.future.exception()

    def _received(self, data: bytes) -> None:
        waiters = self._waiters
        for event in self._proto.receive(data):
            if type(event) is Reply:
                entry = waiters.pop(event.request.req_id, None)
                if entry is None:
                    continue
                call, index = entry
                call.replies[index] = event
                call.left -= 1
                if not call.left and not call.future.done():
                    call.future.set_result(call.replies)  # type: ignore[arg-type]  # all in
            else:
                self._event(event)  # type: ignore[arg-type]  # the other kind
        if self._proto.orphans:
            self._end_orphans()

    def _event(self, event: WatchEvent) -> None:
        """To its `Watch`'s sink, or else its queue."""
        watch = self._watches.get(event.token)
        if watch is None:
            log.debug("dropping event %s for unknown token %r", event.path, event.token)
        elif watch._sink is not None:
            watch._sink(event)
        else:
            watch._queue.put_nowait(event)

    def _shutdown(self, reason: ConnectionClosed) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        self._online.set()  # requests waiting for a reconnection see the closure
        self._transport.close()
        self._proto.clear()
        waiters, self._waiters = self._waiters, {}
        for call, _ in waiters.values():
            if not call.future.done():
                call.future.set_exception(reason)
                call.future.exception()  # mark retrieved: the waiter may have gone
        if self._deadlines is not None:
            self._deadlines.cancel()
        for watch in list(self._watches.values()):
            watch._lost(reason)
        self._watches.clear()

    # -- requests --------------------------------------------------------------

    def _check_path(self, path: str) -> None:
        """`check_client_path`, remembering the paths that pass (a bounded number)."""
        check_client_path(path)
        if len(self._valid_paths) >= _VALID_PATHS_MAX:
            self._valid_paths.clear()
        self._valid_paths.add(path)

    def _raise_closed(self) -> None:
        if self._closed is not None:
            raise ConnectionClosed(str(self._closed)) from self._closed

    async def roundtrip(
        self,
        op: int,
        payload: bytes,
        *,
        tx_id: int = 0,
        timeout: TimeoutArg = DEFAULT,
        what: str | None = None,
    ) -> Reply:
        """Send one request and return its reply, ERROR replies included.

        The request is on the wire before the first suspension, so requests issued back
        to back (`stubdom.xenstore.pipeline.pipelined`) share one round trip.
        """
        (reply,) = await self.roundtrips(((op, payload, what),), tx_id=tx_id, timeout=timeout)
        return reply

    async def roundtrips(
        self,
        requests: Sequence[tuple[int, bytes, str | None]],
        *,
        tx_id: int = 0,
        timeout: TimeoutArg = DEFAULT,
    ) -> list[Reply]:
        """Send ``requests`` (op, payload, what) back to back in one write where the
        transport allows, and return their replies in order, ERROR replies included.

        xenstored serves a connection's requests in order, so this changes the store
        exactly as the same requests sent one by one; it costs one round trip and no
        task.  ``timeout`` bounds the whole batch.  The requests are on the wire before
        the first suspension.  No requests: no round trip, no replies.
        """
        if self._closed is not None:
            self._raise_closed()
        if not requests:
            return []
        for op, payload, what in requests:
            if len(payload) > PAYLOAD_MAX:
                raise request_too_big(op_name(op), what, len(payload))
        limit = self.timeout if timeout is DEFAULT else timeout
        if not self._online.is_set():
            await self._wait_online(requests[0][0], limit)
        call, messages = self._submit(requests, tx_id, limit)
        try:
            try:
                self._transport.write_many(messages)
                if self._transport.must_drain():
                    await self._drain(call.deadline)
            except ConnectionClosed:
                if self.reconnect is None:
                    raise
                # The reader connects again and re-sends these requests.
            return await call.future
        except asyncio.CancelledError:
            fut = call.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._proto.orphaned(fut.result())  # replied, but the caller will not see it
                self._end_orphans()
            raise
        except TimeoutError:
            op, _, what = requests[0]
            raise no_reply(op_name(op), what, limit) from None
        finally:
            if call.left:
                self._abandon(call)
            if call.timer is not None:
                call.timer.cancel()
            elif call.deadline is not None and self._deadlines is not None:
                self._deadlines.finished()

    async def _drain(self, deadline: float | None) -> None:
        """The transport's flow control, within the call's deadline."""
        async with asyncio.timeout_at(deadline):
            await self._transport.drain()

    def _abandon(self, call: Call) -> None:
        """The call ends with replies still out: drop them when they come."""
        waiters = self._waiters
        for index, req in enumerate(call.requests):
            entry = waiters.get(req.req_id)
            if entry is not None and entry[0] is call and entry[1] == index:
                del waiters[req.req_id]
                self._proto.abandon(req)
        fut = call.future
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            fut.exception()  # mark retrieved: the write or the drain raised first

    async def _wait_online(self, op: int, limit: float | None) -> None:
        """Until the connection is back (or `XenStoreTimeout`, or closed for good)."""
        try:
            async with asyncio.timeout(limit):
                await self._online.wait()
        except TimeoutError:
            raise XenStoreTimeout(
                f"xenstore {op_name(op)}: not connected again within {limit:g} s"
            ) from None
        self._raise_closed()

    def _submit(
        self, requests: Sequence[tuple[int, bytes, str | None]], tx_id: int, limit: float | None
    ) -> tuple[Call, list[bytes]]:
        """Record the requests, their call and its deadline; the messages to write."""
        proto = self._proto
        waiters = self._waiters
        debug = log.isEnabledFor(logging.DEBUG)
        call = Call(self._loop.create_future(), len(requests))
        messages: list[bytes] = []
        for index, (op, payload, what) in enumerate(requests):
            req, data = proto.send(op, payload, tx_id)
            if debug:
                log.debug(
                    "%s: -> %s req_id=%d tx_id=%d %s",
                    self.description,
                    op_name(op),
                    req.req_id,
                    tx_id,
                    what or "",
                )
            waiters[req.req_id] = (call, index)
            call.requests.append(req)
            messages.append(data)
        if limit is None:
            pass
        elif limit == self.timeout:  # in the `Deadlines` of the client's timeout
            deadlines = self._deadlines
            if deadlines is None or deadlines.limit != limit:
                deadlines = self._deadlines = Deadlines(self._loop, limit)
            deadlines.add(call)
        else:  # under a timer of its own
            call.deadline = self._loop.time() + limit
            call.timer = self._loop.call_at(call.deadline, call.expire)
        return call, messages

    async def request(
        self,
        op: int,
        payload: bytes,
        *,
        tx_id: int = 0,
        timeout: TimeoutArg = DEFAULT,
        what: str | None = None,
    ) -> bytes:
        """Send one request; the reply payload, or the ERROR as `XenStoreError`.

        ``what`` (a path, a domid) only makes error messages clearer.
        """
        reply = await self.roundtrip(op, payload, tx_id=tx_id, timeout=timeout, what=what)
        return reply_payload(reply, what)

    # -- watches ---------------------------------------------------------------

    def watch(
        self, path: str, token: str | None = None, *, sink: WatchSink | None = None
    ) -> Watch:
        """A watch on ``path``, not yet sent: use ``async with`` or ``await``.

        Without ``token`` a unique one is generated.  Tokens route events, so a token
        may only be in use once per client at a time.  With ``sink``, events (and the
        `ConnectionClosed` that ends the watch) are handed to it as they arrive, from
        the reader, instead of being queued for iteration.
        """
        if self.check_paths and path not in self._valid_paths:
            self._check_path(path)
        if token is None:
            token = f"{self._token_prefix}{next(self._tokens)}"
        return Watch(self, path, token, sink)

    @overload
    async def wait_until(
        self, paths: str, check: Callable[[str | None], T | None], timeout: float | None
    ) -> T: ...
    @overload
    async def wait_until(
        self,
        paths: Sequence[str],
        check: Callable[[tuple[str | None, ...]], T | None],
        timeout: float | None,
    ) -> T: ...

    async def wait_until(
        self,
        paths: str | Sequence[str],
        check: Callable[[str | None], T | None] | Callable[[tuple[str | None, ...]], T | None],
        timeout: float | None,
    ) -> T:
        """Watch ``paths``, then read them (as `read_text`: None for a node that does not
        exist) now and after each event until ``check`` of what was read is not None;
        return that.

        ``check`` gets the value of a single path, or the tuple of values of a sequence
        of paths; it may raise to end the wait.  After ``timeout`` seconds (None: no
        limit) `WaitTimeout` says so; its ``last`` is the values of the last look.  The
        watches are registered before the first read (a change in between is not lost)
        and removed however the wait ends, cancellation included.
        """
        if isinstance(paths, str):
            one = cast("Callable[[str | None], T | None]", check)
            return await wait_until(self, (paths,), lambda values: one(values[0]), timeout)
        many = cast("Callable[[tuple[str | None, ...]], T | None]", check)
        return await wait_until(self, paths, many, timeout)

    async def unwatch(self, path: str, token: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        """Raw UNWATCH; also stops routing events for ``token`` to its `Watch`."""
        await self.request(Op.UNWATCH, args_payload(path, token), timeout=timeout, what=path)
        watch = self._watches.get(token)
        if watch is not None and watch.path == path:
            watch._stopped()

    def _register_watch(self, watch: Watch) -> None:
        self._raise_closed()
        if watch.token in self._watches:
            raise ValueError(f"watch token {watch.token!r} is already in use on this client")
        self._watches[watch.token] = watch

    def _unregister_watch(self, watch: Watch) -> None:
        if self._watches.get(watch.token) is watch:
            del self._watches[watch.token]

    async def reset_watches(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        """RESET_WATCHES: the server drops all our watches *and transactions*.

        Local `Watch` objects are stopped too (their iterators end).
        """
        await self.request(Op.RESET_WATCHES, b"\0", timeout=timeout)
        for watch in list(self._watches.values()):
            watch._stopped()

    # -- transactions ----------------------------------------------------------

    def transaction(self) -> Transaction:
        """A new transaction: ``async with client.transaction() as t``."""
        return Transaction(self)

    def bind(self, tx_id: int) -> Transaction:
        """A `Transaction` for an id already started (e.g. by `transaction_start`)."""
        return Transaction(self, tx_id)

    async def transaction_start(self, *, timeout: TimeoutArg = DEFAULT) -> int:
        """Raw TRANSACTION_START: the new tx_id.

        Given up on once sent (cancelled, timed out), the transaction may still open on
        the server; it is aborted when its reply comes (`ClientProtocol.orphans`), as it
        would otherwise hold one of the connection's few transactions until the
        connection closes."""
        return parse_tx_id(await self.request(Op.TRANSACTION_START, b"\0", timeout=timeout))

    def _end_orphans(self) -> None:
        """TRANSACTION_END F for each transaction nobody waits for (`transaction_start`)."""
        for tx_id in self._proto.take_orphans():
            log.debug("%s: aborting transaction %d, started for a caller that gave up",
                      self.description, tx_id)  # fmt: skip
            self._post(Op.TRANSACTION_END, b"F\0", tx_id)

    def _post(self, op: int, payload: bytes, tx_id: int = 0) -> None:
        """Send a request whose reply nobody reads (undoing what a cancelled request may
        have done); nothing when the connection is down, which undoes it anyway."""
        if self._closed is not None or not self._online.is_set():
            return
        req, message = self._proto.send(op, payload, tx_id)
        self._proto.abandon(req)
        with contextlib.suppress(ConnectionClosed):
            self._transport.write(message)

    async def transaction_end(
        self, tx_id: int, commit: bool = True, *, timeout: TimeoutArg = DEFAULT
    ) -> None:
        """Raw TRANSACTION_END: commit ("T") or abort ("F").

        A commit that conflicts raises `TransactionConflict`.
        """
        await self.request(
            Op.TRANSACTION_END,
            b"T\0" if commit else b"F\0",
            tx_id=tx_id,
            timeout=timeout,
            what=f"transaction {tx_id}",
        )

    async def retry_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], attempts: int | None = None
    ) -> T:
        """Run ``await fn(t)`` in a fresh transaction until it commits.

        On `TransactionConflict` the whole block runs again: at most ``attempts`` times
        in all if given, else (as libxl does, for ever) until `RETRY_PATIENCE` seconds
        have passed; then the last conflict is raised.  ``fn`` must therefore be safe
        to repeat: do all reads through ``t``.  Returns what ``fn`` returned.

        Contention: after a conflict, the retries of one client run one at a time
        (many transactions of one process on the same parents, e.g. N creates at once,
        would otherwise conflict again in lock step until every one gives up), after a
        random pause of up to `RETRY_BACKOFF` doubled per conflict (against other
        processes: N ``stubdom create`` at once all add children to /local/domain).
        """
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be at least 1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt == 1 or self._retry_owner is asyncio.current_task():
                    async with self.transaction() as t:
                        return await fn(t)
                async with self._retry_lock:
                    self._retry_owner = asyncio.current_task()
                    try:
                        async with self.transaction() as t:
                            return await fn(t)
                    finally:
                        self._retry_owner = None
            except TransactionConflict:
                pause = retry_pause(attempt, attempts, loop.time() - started)
                if pause is None:
                    raise
                log.debug("transaction conflict, attempt %d", attempt)
                await asyncio.sleep(pause)

    # -- domains and control ---------------------------------------------------

    async def introduce(
        self, domid: int, gfn: int, port: int, *, timeout: TimeoutArg = DEFAULT
    ) -> None:
        """INTRODUCE a domain's ring (``gfn``) and event channel (``port``) to the server."""
        payload = args_payload(str(domid), str(gfn), str(port))
        await self.request(Op.INTRODUCE, payload, timeout=timeout, what=f"domain {domid}")

    async def release(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        """RELEASE: the server forgets the domain and fires ``@releaseDomain``."""
        await self._domain_op(Op.RELEASE, domid, timeout)

    async def get_domain_path(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> str:
        """``/local/domain/<domid>`` as the server computes it."""
        return parse_single(await self._domain_op(Op.GET_DOMAIN_PATH, domid, timeout))

    async def is_domain_introduced(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> bool:
        return parse_bool(await self._domain_op(Op.IS_DOMAIN_INTRODUCED, domid, timeout))

    async def resume(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        """RESUME: re-arm ``@releaseDomain`` for a domain that shut down."""
        await self._domain_op(Op.RESUME, domid, timeout)

    async def set_target(self, domid: int, target: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        """SET_TARGET: give ``domid`` (a stubdom) privilege over ``target``."""
        payload = args_payload(str(domid), str(target))
        await self.request(Op.SET_TARGET, payload, timeout=timeout, what=f"domain {domid}")

    async def _domain_op(self, op: Op, domid: int, timeout: TimeoutArg) -> bytes:
        return await self.request(
            op, args_payload(str(domid)), timeout=timeout, what=f"domain {domid}"
        )

    async def control(self, *args: str | bytes, timeout: TimeoutArg = DEFAULT) -> bytes:
        """CONTROL (XS_DEBUG) with the given strings; the reply without its final NUL."""
        what = " ".join(a if isinstance(a, str) else a.decode("utf-8", "replace") for a in args)
        reply = await self.request(Op.CONTROL, args_payload(*args), timeout=timeout, what=what)
        return reply[:-1] if reply.endswith(b"\0") else reply


class _End(enum.Enum):
    STOPPED = 0


class Watch:
    """One registered watch and its queue of events; an async iterator.

    Events are queued without bound: servers already limit what they send, and a
    dropped event would be a silent correctness bug.  A consumer that stops reading
    while the watch is active lets the queue grow; leave the context to stop it.
    """

    def __init__(
        self, client: Client, path: str, token: str, sink: WatchSink | None = None
    ) -> None:
        self.client = client
        self.path = path
        self.token = token
        self._sink = sink
        self._queue: asyncio.Queue[WatchEvent | _End | ConnectionClosed] = asyncio.Queue()
        self._active = False
        self._ended = False

    @property
    def active(self) -> bool:
        return self._active

    @property
    def pending(self) -> int:
        """Events received and not yet consumed."""
        return self._queue.qsize()

    async def start(self, *, timeout: TimeoutArg = DEFAULT) -> Watch:
        """Send WATCH; events (the initial one first) are queued from now on."""
        if self._active:
            return self
        if self._ended:
            raise RuntimeError(f"watch on {self.path} has already ended")
        # Route events before sending: the initial event follows the reply at once.
        self.client._register_watch(self)
        self._active = True
        try:
            await self.client.request(
                Op.WATCH, args_payload(self.path, self.token), timeout=timeout, what=self.path
            )
        except BaseException as err:
            self._active = False
            self.client._unregister_watch(self)
            if not isinstance(err, XenStoreError):  # cancelled, timed out: it may be set
                self.client._post(Op.UNWATCH, args_payload(self.path, self.token))
            raise
        return self

    async def stop(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        """Send UNWATCH; iteration ends once the queued events are consumed."""
        if not self._active:
            return
        try:
            if not self.client.closed:
                await self.client.request(
                    Op.UNWATCH,
                    args_payload(self.path, self.token),
                    timeout=timeout,
                    what=self.path,
                )
        finally:
            self._stopped()

    def __await__(self) -> Generator[Any, None, Watch]:
        return self.start().__await__()

    async def __aenter__(self) -> Watch:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.stop()
            return
        try:
            await self.stop()
        except (XenStoreError, ConnectionClosed, XenStoreTimeout) as err:
            log.debug("UNWATCH %s after an error failed: %s", self.path, err)

    def _stopped(self) -> None:
        if self._active:
            self._active = False
            self.client._unregister_watch(self)
            self._queue.put_nowait(_End.STOPPED)

    def _lost(self, reason: ConnectionClosed) -> None:
        self._active = False
        if self._sink is not None:
            self._sink(reason)
        self._queue.put_nowait(reason)

    async def next_event(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None once the watch has stopped and drained."""
        if not self._active and not self._ended and self._queue.empty():
            raise RuntimeError(f"watch on {self.path} was never started")
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise XenStoreTimeout(
                f"xenstore watch {self.path}: no event within {timeout:g} s"
            ) from None
        if isinstance(item, WatchEvent):
            return item
        self._ended = True
        self._queue.put_nowait(item)  # keep the end marker for later calls
        if isinstance(item, ConnectionClosed):
            raise ConnectionClosed(str(item)) from item
        return None

    async def get(self, timeout: float | None = None) -> WatchEvent:
        """The next event, waiting at most ``timeout`` seconds (None: for ever).

        Raises `XenStoreTimeout`, `ConnectionClosed`, or RuntimeError once stopped.
        """
        event = await self.next_event(timeout)
        if event is None:
            raise RuntimeError(f"watch on {self.path} is stopped")
        return event

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        event = await self.next_event(None)
        if event is None:
            raise StopAsyncIteration
        return event

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"<Watch {self.path!r} token={self.token!r} {state}>"


class Transaction(_NodeOps):
    """A transaction: the node requests of `Client`, bound to one tx_id.

    As a context manager it starts on entry, commits on normal exit (raising
    `TransactionConflict` on EAGAIN) and aborts when the block raises.  Watch events
    for its changes are delivered only after the commit.
    """

    def __init__(self, client: Client, tx_id: int | None = None) -> None:
        self._client = client
        self._tx_id = tx_id or 0
        self._open = tx_id is not None
        self._epoch = client.epoch

    @property
    def tx_id(self) -> int:
        return self._tx_id

    @property
    def open(self) -> bool:
        return self._open

    async def start(self, *, timeout: TimeoutArg = DEFAULT) -> Transaction:
        if self._open:
            raise RuntimeError(f"transaction {self._tx_id} is already open")
        self._tx_id = await self._client.transaction_start(timeout=timeout)
        self._epoch = self._client.epoch
        self._open = True
        return self

    async def commit(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        """END "T": raises `TransactionConflict` if another change got in first."""
        self._check_open()
        self._open = False
        self._check_epoch("TRANSACTION_END")
        await self._client.transaction_end(self._tx_id, True, timeout=timeout)

    async def abort(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        """END "F": discard every change made in the transaction."""
        self._check_open()
        self._open = False
        if self._epoch != self._client.epoch:
            return  # the restarted daemon never knew it
        await self._client.transaction_end(self._tx_id, False, timeout=timeout)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"transaction {self._tx_id or '(not started)'} is not open")

    def _check_epoch(self, op: str) -> None:
        if self._epoch != self._client.epoch:
            raise forgotten(op, self._tx_id)

    async def _rpc(self, op: Op, payload: bytes, what: str | None, timeout: TimeoutArg) -> bytes:
        if not self._open:
            self._check_open()
        if self._epoch != self._client.epoch:
            raise forgotten(op_name(op), self._tx_id)
        (reply,) = await self._client.roundtrips(
            ((op, payload, what),), tx_id=self._tx_id, timeout=timeout
        )
        return reply_payload(reply, what)

    async def __aenter__(self) -> Transaction:
        if not self._open:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            return
        if exc_type is None:
            await self.commit()
            return
        try:
            await self.abort()
        except (XenStoreError, ConnectionClosed, XenStoreTimeout) as err:
            log.debug("aborting transaction %d failed: %s", self._tx_id, err)

    def __repr__(self) -> str:
        return f"<Transaction {self._tx_id} {'open' if self._open else 'closed'}>"


async def open_client(
    path: str | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    check_paths: bool = True,
    max_reply: int = DEFAULT_MAX_REPLY,
    reconnect: float | None = None,
) -> Client:
    """Shorthand for `Client.connect`."""
    return await Client.connect(
        path, timeout=timeout, check_paths=check_paths, max_reply=max_reply, reconnect=reconnect
    )


__all__ = [
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "RECONNECT",
    "Client",
    "TimeoutArg",
    "Transaction",
    "Watch",
    "WatchSink",
    "open_client",
]
