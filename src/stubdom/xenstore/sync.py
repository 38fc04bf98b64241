"""A blocking facade over the asyncio client, for scripts and threaded callers.

`SyncClient` runs a private event loop in a background thread and forwards each
call to it, so the async client's concurrency, reply matching and timeouts apply
unchanged.  Any number of threads may share one `SyncClient`; calling it from the
loop thread itself (e.g. from inside a coroutine it runs) would deadlock and raises.

Usage::

    with SyncClient() as xs:
        xs.write("/local/domain/0/x", b"1")
        with xs.watch("/local/domain/0/x", timeout=5) as w:
            for ev in w:            # raises XenStoreTimeout after 5 s without an event
                ...
        with xs.transaction() as t:
            t.write("/a", t.read("/b"))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

from stubdom.wire.perms import Perm
from stubdom.xenstore.client import (
    DEFAULT,
    Client,
    Names,
    Perms,
    TimeoutArg,
    Transaction,
    Watch,
    _NodeOps,
)
from stubdom.xenstore.errors import TransactionConflict
from stubdom.xenstore.protocol import DEFAULT_MAX_REPLY, DirectoryPart, WatchEvent
from stubdom.xenstore.recovery import DEFAULT_TIMEOUT, retry_pause

T = TypeVar("T")


class _LoopThread:
    """An event loop running for ever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="xenstore-sync-loop", daemon=True
        )
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("SyncClient called from its own event loop thread")
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("SyncClient is closed")
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt in the caller: stop the coroutine too
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _SyncNodeOps:
    """Blocking versions of the node requests of `Client` and `Transaction`."""

    _runner: _LoopThread

    def _ops(self) -> _NodeOps:
        raise NotImplementedError

    def read(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> bytes:
        return self._runner.call(self._ops().read(path, timeout=timeout))

    def read_optional(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> bytes | None:
        return self._runner.call(self._ops().read_optional(path, timeout=timeout))

    def read_text(
        self, path: str, *, denied_as_absent: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> str | None:
        return self._runner.call(
            self._ops().read_text(path, denied_as_absent=denied_as_absent, timeout=timeout)
        )

    def exists(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> bool:
        return self._runner.call(self._ops().exists(path, timeout=timeout))

    def write(self, path: str, value: bytes | str, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._ops().write(path, value, timeout=timeout))

    def mkdir(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._ops().mkdir(path, timeout=timeout))

    def rm(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._ops().rm(path, timeout=timeout))

    def directory(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> Names:
        return self._runner.call(self._ops().directory(path, timeout=timeout))

    def directory_part(
        self, path: str, offset: int = 0, *, timeout: TimeoutArg = DEFAULT
    ) -> DirectoryPart:
        return self._runner.call(self._ops().directory_part(path, offset, timeout=timeout))

    def list(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> Names:
        return self._runner.call(self._ops().list(path, timeout=timeout))

    def get_perms(self, path: str, *, timeout: TimeoutArg = DEFAULT) -> Perms:
        return self._runner.call(self._ops().get_perms(path, timeout=timeout))

    def set_perms(
        self, path: str, perms: Sequence[Perm | str], *, timeout: TimeoutArg = DEFAULT
    ) -> None:
        self._runner.call(self._ops().set_perms(path, perms, timeout=timeout))


class SyncTransaction(_SyncNodeOps):
    """Blocking `Transaction`: commit on normal exit, abort on an exception."""

    def __init__(self, runner: _LoopThread, tx: Transaction) -> None:
        self._runner = runner
        self._tx = tx

    def _ops(self) -> _NodeOps:
        return self._tx

    @property
    def tx_id(self) -> int:
        return self._tx.tx_id

    def commit(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._tx.commit(timeout=timeout))

    def abort(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._tx.abort(timeout=timeout))

    def __enter__(self) -> SyncTransaction:
        self._runner.call(self._tx.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._runner.call(self._tx.__aexit__(exc_type, exc, tb))


class SyncWatch:
    """Blocking `Watch`; iterating waits at most ``timeout`` s per event (None: for ever)."""

    def __init__(self, runner: _LoopThread, watch: Watch, timeout: float | None) -> None:
        self._runner = runner
        self._watch = watch
        self.timeout = timeout

    @property
    def path(self) -> str:
        return self._watch.path

    @property
    def token(self) -> str:
        return self._watch.token

    def start(self) -> SyncWatch:
        self._runner.call(self._watch.start())
        return self

    def stop(self) -> None:
        self._runner.call(self._watch.stop())

    def get(self, timeout: float | None = None) -> WatchEvent:
        """The next event; `XenStoreTimeout` after ``timeout`` s (None: for ever)."""
        return self._runner.call(self._watch.get(timeout))

    def __iter__(self) -> Iterator[WatchEvent]:
        while True:
            event = self._runner.call(self._watch.next_event(self.timeout))
            if event is None:
                return
            yield event

    def __enter__(self) -> SyncWatch:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._runner.call(self._watch.__aexit__(exc_type, exc, tb))


class SyncClient(_SyncNodeOps):
    """A blocking xenstore client with the method names of `Client`.

    Connects on construction, like libxenstore ``xs_open`` (``path`` first if given).
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_paths: bool = True,
        max_reply: int = DEFAULT_MAX_REPLY,
    ) -> None:
        self._start(
            Client.connect(path, timeout=timeout, check_paths=check_paths, max_reply=max_reply)
        )

    def _start(self, connect: Coroutine[Any, Any, Client]) -> None:
        self._runner = _LoopThread()
        try:
            self._client = self._runner.call(connect)
        except BaseException:
            self._runner.stop()
            raise

    @classmethod
    def connect_ring(
        cls,
        page: Path,
        evtchn: Path,
        port: int,
        notify: Path | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        check_paths: bool = True,
        max_reply: int = DEFAULT_MAX_REPLY,
    ) -> SyncClient:
        """A blocking client over a xenstore ring page (`Client.connect_ring`)."""
        self = cls.__new__(cls)
        self._start(
            Client.connect_ring(
                page, evtchn, port, notify,
                timeout=timeout, check_paths=check_paths, max_reply=max_reply,
            )
        )
        return self

    def _ops(self) -> _NodeOps:
        return self._client

    @property
    def client(self) -> Client:
        """The underlying async client (use only from its loop)."""
        return self._client

    @property
    def closed(self) -> bool:
        return self._client.closed

    @property
    def timeout(self) -> float | None:
        return self._client.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._client.timeout = value

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        if self._runner.loop.is_closed():
            return
        self._runner.call(self._client.close())
        self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- watches ---------------------------------------------------------------

    def watch(
        self, path: str, token: str | None = None, *, timeout: float | None = None
    ) -> SyncWatch:
        """A watch, started by ``with`` or `SyncWatch.start`."""
        return SyncWatch(self._runner, self._runner.call(self._make_watch(path, token)), timeout)

    async def _make_watch(self, path: str, token: str | None) -> Watch:
        return self._client.watch(path, token)  # builds its queue inside the loop

    @overload
    def wait_until(
        self, paths: str, check: Callable[[str | None], T | None], timeout: float | None
    ) -> T: ...
    @overload
    def wait_until(
        self,
        paths: Sequence[str],
        check: Callable[[tuple[str | None, ...]], T | None],
        timeout: float | None,
    ) -> T: ...

    def wait_until(self, paths: Any, check: Any, timeout: float | None) -> Any:
        """`Client.wait_until`; ``check`` runs in the loop thread, so keep it quick."""
        return self._runner.call(self._client.wait_until(paths, check, timeout))

    def unwatch(self, path: str, token: str, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._client.unwatch(path, token, timeout=timeout))

    def reset_watches(self, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._client.reset_watches(timeout=timeout))

    # -- transactions ----------------------------------------------------------

    def transaction(self) -> SyncTransaction:
        return SyncTransaction(self._runner, self._client.transaction())

    def bind(self, tx_id: int) -> SyncTransaction:
        return SyncTransaction(self._runner, self._client.bind(tx_id))

    def transaction_start(self, *, timeout: TimeoutArg = DEFAULT) -> int:
        return self._runner.call(self._client.transaction_start(timeout=timeout))

    def transaction_end(
        self, tx_id: int, commit: bool = True, *, timeout: TimeoutArg = DEFAULT
    ) -> None:
        self._runner.call(self._client.transaction_end(tx_id, commit, timeout=timeout))

    def retry_transaction(
        self, fn: Callable[[SyncTransaction], T], attempts: int | None = None
    ) -> T:
        """Run ``fn(t)`` in fresh transactions until one commits: at most ``attempts``
        times, else for `RETRY_PATIENCE` seconds, with `Client`'s random back-off."""
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be at least 1")
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.transaction() as t:
                    return fn(t)
            except TransactionConflict:
                pause = retry_pause(attempt, attempts, time.monotonic() - started)
                if pause is None:
                    raise
                time.sleep(pause)

    # -- domains and control ---------------------------------------------------

    def introduce(self, domid: int, gfn: int, port: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._client.introduce(domid, gfn, port, timeout=timeout))

    def release(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._client.release(domid, timeout=timeout))

    def get_domain_path(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> str:
        return self._runner.call(self._client.get_domain_path(domid, timeout=timeout))

    def is_domain_introduced(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> bool:
        return self._runner.call(self._client.is_domain_introduced(domid, timeout=timeout))

    def resume(self, domid: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._client.resume(domid, timeout=timeout))

    def set_target(self, domid: int, target: int, *, timeout: TimeoutArg = DEFAULT) -> None:
        self._runner.call(self._client.set_target(domid, target, timeout=timeout))

    def control(self, *args: str | bytes, timeout: TimeoutArg = DEFAULT) -> bytes:
        return self._runner.call(self._client.control(*args, timeout=timeout))


__all__ = ["SyncClient", "SyncTransaction", "SyncWatch"]
