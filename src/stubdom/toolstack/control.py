"""The toolstack's side of the qemu-trad control channel
(docs/protocol.md#the-command-channel, docs/protocol.md#timing-and-ordering).

One implementation of libxl's command sequence ([TS-EXCHANGE]): wait for ``running``, remember
the state, write ``parameter``, write ``command``, wait for the result, read
``parameter``, restore the state.  It differs from libxl where libxl is known to hurt:

* **Serialised per guest**, in-process (an `asyncio.Lock`) and across processes (an
  ``flock`` on ``<lock_dir>/dm-<G>.lock``) around the whole sequence: libxl has no lock
  and two commands written close together merge into one ([ts.serialised]).
* **Fails fast**: one watch set on ``state``, ``parameter`` and ``@releaseDomain``; the
  error texts qemu-trad writes to ``parameter``, a ``pci-insert-failed`` or
  ``pci-remove-failed`` state and the stubdomain's death end the wait at once.  The
  timeout (60 s, libxl's) is only the last resort.
* **Recovers** from the states that make libxl fail every later operation
  ([TIME-STALE]); see `DeviceModelChannel` for the exact rules.

The decision "succeeded, failed or keep waiting" is the sans-IO `CommandExchange`;
`DeviceModelChannel` is the asyncio shell around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stubdom.protocol import (
    DEVICE_MODEL_TIMEOUT,
    FAILURE_STATE,
    FAILURE_STATES,
    LOGDIRTY_DISABLE,
    LOGDIRTY_ENABLE,
    LOGDIRTY_TIMEOUT,
    PCI_INS_ERRORS,
    RELEASE_DOMAIN,
    Bdf,
    Command,
    State,
    command_path,
    dm_last_sent_path,
    logdirty_path,
    parameter_path,
    parse_pci_inserted,
    pci_ins_parameter,
    pci_rem_parameter,
    state_path,
)
from stubdom.xenstore import (
    Client,
    ConnectionClosed,
    Transaction,
    Watch,
    WatchEvent,
    XenStoreError,
    XenStoreTimeout,
)
from stubdom.xenstore.pipeline import pipelined

log = logging.getLogger(__name__)

__all__ = [
    "STALE_RESULTS",
    "CommandExchange",
    "DeviceModelChannel",
    "DeviceModelDied",
    "DeviceModelError",
    "DeviceModelTimeout",
    "InsertOutcome",
    "Outcome",
    "PciInsertError",
    "PciRemoveError",
    "Restore",
    "Snapshot",
    "Verdict",
    "forget_channel_watches",
]

#: Results nobody reset: the device model is running, the toolstack never wrote the
#: state back (a guest eject after the toolstack gave up, a toolstack that died).
STALE_RESULTS = frozenset(
    {
        State.PCI_INSERTED,
        State.PCI_REMOVED,
        State.USB_ADDED,
        State.USB_DELETED,
        State.PCI_INSERT_FAILED,
        State.PCI_REMOVE_FAILED,
    }
)

#: How often a process waiting for another process's flock retries (local lock only).
LOCK_POLL = 0.02


# -- errors -------------------------------------------------------------------------------


#: Every value a device model may write to ``state``.
KNOWN_STATES = frozenset(State)
#: Longest text from a device model quoted in an error.
QUOTE_MAX = 120


def printable(text: str) -> str:
    """Text a device model wrote, safe to put in a one-line error: as is when plain,
    quoted with escapes when it holds control characters, clipped when long."""
    clipped = text[:QUOTE_MAX]
    shown = clipped if clipped.isprintable() and clipped.strip() == clipped else repr(clipped)
    return shown + ("..." if len(text) > QUOTE_MAX else "")


class DeviceModelError(Exception):
    """A control-channel operation failed; the message is one line naming the guest,
    the operation and what happened."""

    def __init__(self, guest: int, what: str, detail: str) -> None:
        self.guest = guest
        self.what = what
        self.detail = detail
        super().__init__(f"guest {guest}: device model {what}: {detail}")


class DeviceModelTimeout(DeviceModelError):
    """No result within the timeout (the last resort, after every fast path)."""


class DeviceModelDied(DeviceModelError):
    """The stubdomain went away (``@releaseDomain``) while we waited for it."""


class PciInsertError(DeviceModelError):
    """qemu refused ``pci-ins``; ``reason`` is its text from ``parameter``."""

    def __init__(self, guest: int, reason: str) -> None:
        self.reason = reason
        super().__init__(
            guest, Command.PCI_INS.value, f"qemu refused to add device: {printable(reason)}"
        )


class PciRemoveError(DeviceModelError):
    """The device model reported ``pci-remove-failed``."""


# -- the sans-IO core -------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What one look at the channel showed: ``state``, ``parameter`` (None: absent) and
    whether the stubdomain is still introduced."""

    state: str | None
    parameter: str | None
    stub_alive: bool = True


class InsertOutcome(enum.Enum):
    """What became of a ``pci-ins`` whose sender stopped waiting (`unanswered_insert`)."""

    REFUSED = "refused"  # qemu's text answered it: the device model does not hold it
    INSERTED = "inserted"
    UNKNOWN = "unknown"  # not answered yet, or not the last command sent


class Verdict(enum.Enum):
    WAIT = "wait"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    snapshot: Snapshot
    error: DeviceModelError | None = None


class CommandExchange:
    """Decides, from each observed `Snapshot`, whether a wait succeeded, failed or goes on.

    ``command`` None is a plain wait for ``expect`` (e.g. ``running``); ``purpose``
    names the command it prepares, if any.  ``parameter`` is what the toolstack wrote,
    so a different text the device model put there can be recognised as its answer.
    """

    def __init__(
        self,
        guest: int,
        expect: State,
        command: Command | None = None,
        parameter: str | None = None,
        *,
        purpose: str | None = None,
    ) -> None:
        self.guest = guest
        self.expect = expect
        self.command = command
        self.parameter = parameter
        self.purpose = purpose
        self.last: Snapshot | None = None

    @property
    def what(self) -> str:
        if self.command is not None:
            return self.command.value
        return self.purpose or f"wait for {self.expect}"

    def observe(self, snap: Snapshot) -> Outcome:
        self.last = snap
        if not snap.stub_alive:
            return self._fail(snap, DeviceModelDied(self.guest, self.what, self._death(snap)))
        if snap.state is None and self.command is not None:
            return self._fail(
                snap, DeviceModelError(self.guest, self.what, "the state node was removed")
            )
        if snap.state is not None and snap.state not in KNOWN_STATES:
            detail = f"the device model wrote an unknown state {printable(snap.state)}"
            return self._fail(snap, DeviceModelError(self.guest, self.what, detail))
        if self.command is Command.PCI_INS:
            refused = self._pci_ins_refusal(snap)
            if refused is not None:
                return self._fail(snap, PciInsertError(self.guest, refused))
        own_failure = FAILURE_STATE.get(self.command) if self.command else None
        if snap.state in FAILURE_STATES and snap.state != own_failure:
            # Another command's answer, late: a stub that writes its refusal text and
            # then the state apart can land the state after we wrote the old one back.
            log.info("guest %d: %s: ignoring a late %s", self.guest, self.what, snap.state)
            return Outcome(Verdict.WAIT, snap)
        if snap.state in FAILURE_STATES:
            cls = PciRemoveError if snap.state == State.PCI_REMOVE_FAILED else DeviceModelError
            return self._fail(snap, cls(self.guest, self.what, f"state {snap.state}"))
        if snap.state == self.expect:
            if self.command is Command.PCI_INS:
                try:
                    parse_pci_inserted(snap.parameter or "")
                except ValueError as err:
                    return self._fail(snap, DeviceModelError(self.guest, self.what, str(err)))
            return Outcome(Verdict.DONE, snap)
        return Outcome(Verdict.WAIT, snap)

    def _death(self, snap: Snapshot) -> str:
        """What the stubdomain was doing when it died, as far as ``state`` tells."""
        if self.command is None and snap.state in KNOWN_STATES:
            # A state is there, so the device model had started: it died afterwards,
            # not while starting (the wait before a command, a stub killed meanwhile).
            return f"the stubdomain died after its device model reported {snap.state}"
        return f"the stubdomain died before {self.expect}"

    def _pci_ins_refusal(self, snap: Snapshot) -> str | None:
        """qemu's error text, if ``parameter``/``state`` carry one ([pci-ins.refusal])."""
        if snap.state == State.PCI_INSERT_FAILED:
            return snap.parameter or "(no reason given)"
        p = snap.parameter
        if p is None or p == self.parameter:
            return None
        if p in PCI_INS_ERRORS:
            return p
        try:
            parse_pci_inserted(p)  # the devfn, written just before pci-inserted
        except ValueError:
            return p  # any other text qemu wrote instead of our parameter
        return None

    def _fail(self, snap: Snapshot, error: DeviceModelError) -> Outcome:
        return Outcome(Verdict.FAILED, snap, error)

    def timed_out(self, timeout: float, command_pending: bool = False) -> DeviceModelTimeout:
        """The error for a wait that ran out, saying what was last seen."""
        state = self.last.state if self.last is not None else None
        seen = "no state node" if state is None else f"state {state!r}"
        detail = f"no {self.expect} within {timeout:g} s ({seen})"
        if command_pending:
            detail += "; the device model never read the command"
        elif self.command is Command.PCI_REM:
            detail += "; the guest did not eject the device"
        return DeviceModelTimeout(self.guest, self.what, detail)


# -- the asyncio shell --------------------------------------------------------------------


class Restore(enum.Enum):
    """When the state read before a command is written back (libxl's rules, [ts.state-restored])."""

    ALWAYS = "always"  # pci-ins
    ON_SUCCESS = "on-success"  # pci-rem
    NEVER = "never"  # save, continue


_Event = str | ConnectionClosed


@contextlib.asynccontextmanager
async def _watch_set(client: Client, paths: Sequence[str]) -> AsyncIterator[asyncio.Queue[_Event]]:
    """Watches on ``paths`` feeding one queue of the paths that fired (registered when
    this is entered, so nothing written afterwards is missed)."""
    queue: asyncio.Queue[_Event] = asyncio.Queue()

    async def forward(watch_path: str, it: AsyncIterator[object]) -> None:
        try:
            async for _ in it:
                queue.put_nowait(watch_path)
        except ConnectionClosed as err:
            queue.put_nowait(err)

    async with contextlib.AsyncExitStack() as stack:
        tasks: list[asyncio.Task[None]] = []
        for p in paths:
            w = await stack.enter_async_context(client.watch(p))
            tasks.append(asyncio.create_task(forward(p, w)))

        async def cancel() -> None:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(cancel)
        yield queue


class _ChannelWatches:
    """A channel's watches on ``state``, ``parameter`` and ``@releaseDomain``, registered
    by its first operation and kept on the client across operations (one set per
    client, guest and lock, used under that lock), so a command costs no WATCH and
    UNWATCH and no initial events.

    ``events`` gets the path of each event (or the `ConnectionClosed` that ends the
    watches); they only say "look again", and every look reads the nodes afresh.
    ``releases`` counts the ``@releaseDomain`` events: a stubdomain found alive stays so
    until one arrives (xenstored fires it when a domain is released, shuts down or
    crashes), which spares a liveness query per look.
    """

    def __init__(self, client: Client, paths: Sequence[str]) -> None:
        self.client = client
        self.paths = list(paths)
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.releases = 0
        #: ``releases`` when the last liveness query that found the stubdomain alive
        #: began (None: no such query, or a later one found it dead).
        self.alive_as_of: int | None = None
        self.watches: list[Watch] = []

    def _sink(self, path: str) -> Callable[[WatchEvent | ConnectionClosed], None]:
        def sink(event: WatchEvent | ConnectionClosed) -> None:
            if isinstance(event, ConnectionClosed):
                self.events.put_nowait(event)
                return
            if path == RELEASE_DOMAIN:
                self.releases += 1
            self.events.put_nowait(path)

        return sink

    async def start(self) -> None:
        try:
            for p in self.paths:
                w = self.client.watch(p, sink=self._sink(p))
                await w.start()
                self.watches.append(w)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        watches, self.watches = self.watches, []
        for w in watches:
            try:
                await w.stop()
            except (XenStoreError, ConnectionClosed, XenStoreTimeout) as err:
                log.debug("UNWATCH %s failed: %s", w.path, err)

    def take(self) -> list[_Event]:
        """The events queued so far."""
        out: list[_Event] = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


#: (stubdom, guest, lock path) of a channel -> the watches it keeps on that client.
_KeptWatches = dict[tuple[int, int, Path], _ChannelWatches]
_KEPT: weakref.WeakKeyDictionary[Client, _KeptWatches] = weakref.WeakKeyDictionary()


def kept_watches(client: Client) -> _KeptWatches:
    """The watches channels keep on ``client`` across commands."""
    return _KEPT.setdefault(client, {})


async def forget_channel_watches(client: Client, guest: int) -> None:
    """Remove the watches that channels of ``guest`` keep on ``client``: its domains are
    going, and no later command would find them dead and remove them."""
    kept = kept_watches(client)
    for key in [k for k in kept if k[1] == guest]:
        await kept.pop(key).stop()


_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _in_process_lock(path: Path) -> asyncio.Lock:
    locks = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(path, asyncio.Lock())


class DeviceModelChannel:
    """The control channel of guest ``guest``'s device model in stubdomain ``stubdom``.

    Every operation holds the guest's lock (in-process and ``flock`` on
    ``<lock_dir>/dm-<G>.lock``) from the first read to the state restore.

    Recovery, before ``pci_insert``, ``pci_remove`` and ``save`` (under the lock, so no
    exchange of ours is in progress):

    * state absent or unknown: wait for ``running`` (the device model is starting);
    * a stale result (`STALE_RESULTS`: e.g. a ``pci-removed`` written when the guest
      ejected after the wait had timed out, or a ``pci-inserted`` left by a toolstack
      that died before restoring): write ``running`` back, in a transaction that only
      does so if the state is still that value, and log a warning.  The device model
      never reads ``state``, and it writes results only while running, so this is the
      restore the earlier operation owed;
    * ``paused`` with a save in progress (`save` leaves a marker
      ``<lock_dir>/dm-<G>.saved`` naming the stubdomain until `resume`, and holds an
      ``flock`` on it as long as its process lives): refuse with `DeviceModelError` at
      once instead of waiting 60 s for ``running``; a second ``save`` returns at once
      (the device model is already paused and saved);
    * ``paused`` with no save in progress (a left-over: a save whose toolstack died,
      whose marker nobody holds any more, a marker from another stubdomain): send
      ``continue``, wait for ``running``, log a warning.  A following ``save`` thus
      dumps fresh device state.

    ``resume`` and ``logdirty`` need no recovery: ``continue`` is sent only if the state
    is ``paused`` (libxl), and logdirty has its own channel that works while paused.
    """

    def __init__(
        self,
        client: Client,
        stubdom: int,
        guest: int,
        lock_dir: Path,
        timeout: float = DEVICE_MODEL_TIMEOUT,
        logdirty_timeout: float = LOGDIRTY_TIMEOUT,
        running: Callable[[int], Awaitable[bool]] | None = None,
        postmortem: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.client = client
        #: Asks the hypervisor whether a domain still runs (None: xenstore only).
        self.running = running
        #: Says how the stubdomain ended and what it last logged, for `DeviceModelDied`.
        self.postmortem = postmortem
        self.stubdom = stubdom
        self.guest = guest
        self.lock_dir = Path(lock_dir)
        self.timeout = timeout
        self.logdirty_timeout = logdirty_timeout
        self.lock_path = self.lock_dir / f"dm-{guest}.lock"
        self.save_marker = self.lock_dir / f"dm-{guest}.saved"
        #: The last command any toolstack of ours sent this guest's device model, and its
        #: parameter (written under the lock, in the round trip of the parameter).
        self.last_sent = dm_last_sent_path(guest)
        #: The marker of our own save, flocked until `resume` or this process's end.
        self._marker_held: IO[str] | None = None
        self._state = state_path(stubdom, guest)
        self._parameter = parameter_path(stubdom, guest)
        self._command = command_path(stubdom, guest)
        self._watched = [self._state, self._parameter, RELEASE_DOMAIN]
        #: This channel's entry in `kept_watches`.
        self._watches_key = (stubdom, guest, self.lock_path)

    # -- public operations ------------------------------------------------------------

    async def wait_running(self) -> None:
        """Wait until ``state`` is ``running`` (libxl's pre-wait; no lock, no recovery,
        so with watches of its own, removed when it returns)."""
        w = _ChannelWatches(self.client, self._watched)
        await w.start()
        try:
            await self._wait(CommandExchange(self.guest, State.RUNNING), watches=w)
        finally:
            await w.stop()

    async def pci_insert(
        self, bdf: Bdf, vdevfn: int = 0, msitranslate: bool = False, power_mgmt: bool = False
    ) -> int:
        """Hot-plug ``bdf`` into the guest; the devfn qemu chose.  `PciInsertError` carries
        qemu's refusal.  The state is written back whatever happened (libxl)."""
        parameter = pci_ins_parameter(bdf, vdevfn, msitranslate, power_mgmt)
        async with self.locked():
            await self._prepare(Command.PCI_INS.value)
            snap = await self._exchange(
                Command.PCI_INS, parameter, State.PCI_INSERTED, Restore.ALWAYS
            )
        devfn = parse_pci_inserted(snap.parameter or "")
        log.info("guest %d: %s inserted at devfn 0x%02x", self.guest, bdf, devfn)
        return devfn

    async def pci_remove(self, bdf: Bdf, force: bool = False, vdevfn: int | None = None) -> bool:
        """Hot-unplug ``bdf``; whether ``pci-rem`` was sent.

        As libxl: ``parameter`` is always written, the command only when not ``force``
        and the guest function (``vdevfn & 7``, else ``bdf.func``) is 0; the state is
        written back only on success or when no command was sent.  The wait ends only
        when the guest ejects the slot.
        """
        func = (vdevfn & 7) if vdevfn is not None else bdf.func
        send = not force and func == 0
        async with self.locked():
            await self._prepare(Command.PCI_REM.value)
            if send:
                await self._exchange(
                    Command.PCI_REM, pci_rem_parameter(bdf), State.PCI_REMOVED, Restore.ON_SUCCESS
                )
                log.info("guest %d: %s removed", self.guest, bdf)
            else:
                orig = await self._read(self._state)
                await self.client.write(self._parameter, pci_rem_parameter(bdf))
                if orig is not None:
                    await self.client.write(self._state, orig)
                log.info(
                    "guest %d: %s: no pci-rem sent (%s)",
                    self.guest,
                    bdf,
                    "forced" if force else f"function {func}",
                )
        return send

    async def unanswered_insert(self, bdf: Bdf) -> InsertOutcome:
        """What the device model made of an interrupted attach's ``pci-ins`` of ``bdf``.

        Known only if that was the last command we sent and the device model took it
        (``command`` is gone): it answers one command at a time, so ``parameter`` then
        holds its answer to it -- qemu's refusal text, or the devfn.  A refused function
        needs no ``pci-rem``, which qemu-trad would not answer at all."""
        async with self.locked():
            sent = _text(await self.client.read_optional(self.last_sent))
            if sent is None:
                return InsertOutcome.UNKNOWN
            name, _, sent_parameter = sent.strip().partition(" ")
            if name != Command.PCI_INS or not _names_function(sent_parameter, bdf):
                return InsertOutcome.UNKNOWN

            async def look(t: Transaction) -> tuple[bytes | None, bytes | None]:
                command, param = await pipelined(
                    t.read_optional(self._command), t.read_optional(self._parameter)
                )
                return command, param

            command, raw = await self.client.retry_transaction(look)
            answer = _text(raw)
            if command is not None or answer is None:
                return InsertOutcome.UNKNOWN
            if answer in PCI_INS_ERRORS:
                return InsertOutcome.REFUSED
            if answer.startswith("0x"):
                return InsertOutcome.INSERTED
            return InsertOutcome.UNKNOWN

    async def save(self) -> None:
        """Pause the device model and have it dump its state (-> ``paused``); no state
        restore.  Leaves the save marker until `resume`."""
        async with self.locked():
            if await self._read(self._state) == State.PAUSED and self._save_in_progress():
                log.info("guest %d: device model already paused by a save", self.guest)
                return
            await self._prepare(Command.SAVE.value)
            await self._exchange(Command.SAVE, None, State.PAUSED, Restore.NEVER)
            self._hold_save_marker()
            log.info("guest %d: device model saved and paused", self.guest)

    async def resume(self) -> bool:
        """``continue`` if the state is ``paused`` and wait for ``running``; whether it
        was sent.  Ends the save in progress either way."""
        async with self.locked():
            sent = await self._read(self._state) == State.PAUSED
            if sent:
                await self._exchange(Command.CONTINUE, None, State.RUNNING, Restore.NEVER)
                log.info("guest %d: device model resumed", self.guest)
            else:
                log.info("guest %d: device model not paused, no continue sent", self.guest)
            self.save_marker.unlink(missing_ok=True)
            self._release_save_marker()
        return sent

    async def exchange(
        self,
        command: Command,
        parameter: str | None,
        expect: State,
        restore: Restore = Restore.ALWAYS,
        prepare: bool = True,
    ) -> Snapshot:
        """One command under the guest's lock (after the recovery unless ``prepare`` is
        false); the snapshot that ended the wait."""
        async with self.locked():
            if prepare:
                await self._prepare(command.value)
            return await self._exchange(command, parameter, expect, restore)

    async def logdirty(self, enable: bool) -> None:
        """Switch log-dirty mode ([TS-LOGDIRTY]): ``logdirty/cmd`` -> wait for the same ``ret``."""
        cmd = LOGDIRTY_ENABLE if enable else LOGDIRTY_DISABLE
        what = f"logdirty {cmd}"
        cmd_path = logdirty_path(self.stubdom, self.guest, "cmd")
        ret_path = logdirty_path(self.stubdom, self.guest, "ret")

        async def send(t: Transaction) -> None:
            old = await _read_text(t, cmd_path)
            if old is not None:
                if await _read_text(t, ret_path) != old:
                    raise DeviceModelError(
                        self.guest, what, f"qemu was already sent command {old!r} (no answer yet)"
                    )
                await t.rm(cmd_path)
            if await t.exists(ret_path):
                await t.rm(ret_path)
            await t.write(cmd_path, cmd)

        async def answered(t: Transaction) -> bool:
            got = await _read_text(t, ret_path)
            if got is None:
                return False
            if got != cmd:
                raise DeviceModelError(self.guest, what, f"qemu answered {got!r}")
            await t.rm(cmd_path)
            await t.rm(ret_path)
            return True

        async with self.locked(), _watch_set(self.client, [ret_path, RELEASE_DOMAIN]) as events:
            await self.client.retry_transaction(send)
            alive = await self._stub_alive()
            cm = asyncio.timeout(self.logdirty_timeout)
            try:
                async with cm:
                    while True:
                        if not alive:
                            raise await self._explained(
                                DeviceModelDied(self.guest, what, "the stubdomain died")
                            )
                        if await self.client.retry_transaction(answered):
                            break
                        alive = await self._next_events(events, alive)
            except TimeoutError:
                if not cm.expired():
                    raise  # a xenstore request timed out, not our wait
                error = DeviceModelTimeout(
                    self.guest, what, f"no answer in ret within {self.logdirty_timeout:g} s"
                )
                log.info("%s", error)
                raise error from None
        log.info("guest %d: %s done", self.guest, what)

    # -- the lock ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """The guest's lock: in-process, then ``flock`` (polled with LOCK_NB, so waiting
        never blocks the event loop nor leaks a lock when cancelled)."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        async with _in_process_lock(self.lock_path):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                logged = False
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not logged:
                            log.debug("guest %d: waiting for %s", self.guest, self.lock_path)
                            logged = True
                        await asyncio.sleep(LOCK_POLL)
                yield
            finally:
                os.close(fd)  # releases the flock

    # -- steps ---------------------------------------------------------------------------

    def _hold_save_marker(self) -> None:
        """Write the save marker and keep it flocked: it dies with this process, so a
        marker nobody holds is a dead toolstack's (called under the guest's lock)."""
        self._release_save_marker()
        f = open(self.save_marker, "a+")  # noqa: SIM115 -- held until resume
        with contextlib.suppress(BlockingIOError):  # another channel of ours holds it
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.truncate(0)
        f.write(f"{self.stubdom}\n")
        f.flush()
        self._marker_held = f

    def _release_save_marker(self) -> None:
        if self._marker_held is not None:
            self._marker_held.close()
            self._marker_held = None

    def _save_in_progress(self) -> bool:
        """The marker names our stubdomain and the process that saved still holds it."""
        try:
            f = open(self.save_marker)  # noqa: SIM115 -- closed below
        except FileNotFoundError:
            return False
        with f:
            if f.read().strip() != str(self.stubdom):
                return False
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        log.warning(
            "guest %d: the save marker %s is left by a toolstack that died",
            self.guest,
            self.save_marker,
        )
        return False

    async def _prepare(self, what: str) -> None:
        """The recovery of the class docstring, then libxl's wait for ``running``."""
        watches = await self._watches()
        state = await self._read(self._state)
        if state in STALE_RESULTS:
            stale = state

            async def reset(t: Transaction) -> bool:
                if await _read_text(t, self._state) != stale:
                    return False
                await t.write(self._state, State.RUNNING.value)
                return True

            if await self.client.retry_transaction(reset):
                log.warning(
                    "guest %d: state was a stale %r (a result never written back, e.g. a late "
                    "guest eject); wrote running",
                    self.guest,
                    stale,
                )
        elif state == State.PAUSED:
            if self._save_in_progress():
                raise DeviceModelError(
                    self.guest, what, "the device model is paused by a save; resume it first"
                )
            log.warning(
                "guest %d: device model left paused with no save in progress; sending continue",
                self.guest,
            )
            self.save_marker.unlink(missing_ok=True)
            await self._exchange(Command.CONTINUE, None, State.RUNNING, Restore.NEVER)
        elif state == State.RUNNING and await self._alive(watches):
            return  # what wait_running would find at once
        await self._wait(CommandExchange(self.guest, State.RUNNING, purpose=what))

    async def _exchange(
        self, command: Command, parameter: str | None, expect: State, restore: Restore
    ) -> Snapshot:
        """[TS-EXCHANGE] steps 2-7 (the lock is held)."""
        ex = CommandExchange(self.guest, expect, command, parameter)
        orig: str | None = None

        async def send(w: _ChannelWatches) -> Snapshot:
            """Read the state to restore, write parameter, then command (only if the
            parameter was written), then look at state and parameter; the READs go in
            the same round trip as the write before them."""
            nonlocal orig
            note = self.client.write(self.last_sent, f"{command.value} {parameter or ''}")
            if parameter is None:
                raw, _ = await pipelined(self.client.read_optional(self._state), note)
            else:
                raw, _, _ = await pipelined(
                    self.client.read_optional(self._state),
                    note,
                    self.client.write(self._parameter, parameter),
                )
            orig = _text(raw)
            _raise_closed(w.take())  # before the reads are sent
            _, state, param = await pipelined(
                self.client.write(self._command, command.value),
                self.client.read_optional(self._state),
                self.client.read_optional(self._parameter),
            )
            log.debug("guest %d: sent %s %r", self.guest, command, parameter)
            return Snapshot(_text(state), _text(param))

        ok = died = False
        try:
            snap = await self._wait(ex, send)
            ok = True
            return snap
        except DeviceModelDied:
            died = True  # nobody to restore the state for
            raise
        finally:
            if (
                orig is not None
                and not died
                and (restore is Restore.ALWAYS or (restore is Restore.ON_SUCCESS and ok))
            ):
                await self._restore(orig)

    async def _restore(self, orig: str) -> None:
        await self.client.write(self._state, orig)

    async def _wait(
        self,
        ex: CommandExchange,
        send: Callable[[_ChannelWatches], Awaitable[Snapshot]] | None = None,
        watches: _ChannelWatches | None = None,
    ) -> Snapshot:
        """With state, parameter and @releaseDomain watched (``watches``, else the
        channel's, which need the lock), run ``send``, and look again at each event
        until ``ex`` decides."""
        w = watches if watches is not None else await self._watches()
        # Each look (send ends with one) drops the events received before its reads are
        # sent: the server sent them before it got the reads (a connection keeps its
        # order), so the reads see what they announce.  @releaseDomain is still
        # counted (`_alive`).
        first = await send(w) if send is not None else None
        cm = asyncio.timeout(self.timeout)
        try:
            async with cm:
                while True:
                    if first is not None:
                        state, param = first.state, first.parameter
                        first = None
                    else:
                        _raise_closed(w.take())  # before the reads are sent
                        state, param = (_text(v) for v in await pipelined(
                            self.client.read_optional(self._state),
                            self.client.read_optional(self._parameter),
                        ))
                    alive = await self._alive(w)
                    if state is None and alive:
                        # The stub's nodes go with it, before @releaseDomain fires.
                        alive = await self._alive(w, fresh=True)
                    out = ex.observe(Snapshot(state, param, alive))
                    if out.verdict is Verdict.DONE:
                        return out.snapshot
                    if out.error is not None:
                        log.info("%s", out.error)
                        raise await self._explained(out.error)
                    _raise_closed([await w.events.get()])
        except TimeoutError:
            if not cm.expired():
                raise  # a xenstore request timed out, not our wait
            pending = send is not None and await self._read(self._command) is not None
            error = ex.timed_out(self.timeout, pending)
            log.info("%s", error)
            raise error from None

    async def _next_events(self, events: asyncio.Queue[_Event], alive: bool) -> bool:
        """Wait for the next event (and take the ones already queued); re-check the
        stubdomain on @releaseDomain.  Returns whether it is alive."""
        fired = [await events.get()]
        while not events.empty():
            fired.append(events.get_nowait())
        _raise_closed(fired)
        if RELEASE_DOMAIN in fired:
            alive = await self._stub_alive()
        return alive

    async def _watches(self) -> _ChannelWatches:
        """This channel's watches (the lock is held), registered on first use."""
        kept = kept_watches(self.client)
        w = kept.get(self._watches_key)
        if w is not None and w.watches:
            return w
        w = _ChannelWatches(self.client, self._watched)
        await w.start()
        kept[self._watches_key] = w
        return w

    async def _alive(self, w: _ChannelWatches, fresh: bool = False) -> bool:
        """`_stub_alive`, asked only if @releaseDomain fired since the stubdomain was
        last found alive (or ``fresh``).  A dead stubdomain's watches are removed."""
        if not fresh and w.alive_as_of is not None and w.alive_as_of == w.releases:
            return True
        start = w.releases
        alive = await self._stub_alive()
        if alive:
            w.alive_as_of = start
        else:
            w.alive_as_of = None
            kept = kept_watches(self.client)
            if kept.get(self._watches_key) is w:
                del kept[self._watches_key]
                await w.stop()
        return alive

    async def _explained(self, error: DeviceModelError) -> DeviceModelError:
        """A death gets the stubdomain's last words (a timeout would say far less)."""
        if not isinstance(error, DeviceModelDied) or self.postmortem is None:
            return error
        try:
            detail = await self.postmortem()
        except Exception as e:  # the report must not hide the death
            detail = f"(no post-mortem: {e})"
        return DeviceModelDied(error.guest, error.what, f"{error.detail}{detail}")

    async def stub_alive(self) -> bool:
        """Whether the stubdomain still runs (the check a wait makes on ``@releaseDomain``)."""
        return await self._stub_alive()

    async def _stub_alive(self) -> bool:
        """Still introduced, and (if we can ask the hypervisor) not shut down or crashed:
        ``@releaseDomain`` also fires for a domain that merely stopped running."""
        if not await self.client.is_domain_introduced(self.stubdom):
            return False
        return self.running is None or await self.running(self.stubdom)

    async def _read(self, path: str) -> str | None:
        return await _read_text(self.client, path)


def _raise_closed(events: list[_Event]) -> None:
    for ev in events:
        if isinstance(ev, ConnectionClosed):
            raise ev


def _names_function(parameter: str, bdf: Bdf) -> bool:
    """Whether a ``pci-ins`` parameter (``PCI_BDF[@vdevfn],options``) is for ``bdf``."""
    head = parameter.partition(",")[0].partition("@")[0]
    return head == str(bdf)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


async def _read_text(xs: Client | Transaction, path: str) -> str | None:
    value = await xs.read_optional(path)
    return None if value is None else value.decode("utf-8", "replace")
