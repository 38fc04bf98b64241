"""The toolstack's side of the qemu-trad control channel
(docs/protocol.md#the-command-channel, docs/protocol.md#timing-and-ordering).

One implementation of libxl's command sequence ([TS-EXCHANGE]): wait for ``running``, remember
the state, write ``parameter``, write ``command``, wait for the result, read
``parameter``, restore the state.  It differs from libxl where libxl is known to hurt:

* **Serialised per guest**, in-process (an `asyncio.Lock` of the session's
  `ChannelRegistry`) and across processes (`stubdom.toolstack.locks`) around the whole
  sequence: libxl has no lock and two commands written close together merge into one
  ([ts.serialised]).
* **Fails fast**: one watch set on ``state``, ``parameter`` and ``@releaseDomain``; the
  error texts qemu-trad writes to ``parameter``, a ``pci-insert-failed`` or
  ``pci-remove-failed`` state and the stubdomain's death end the wait at once.  The
  timeout (60 s, libxl's) is only the last resort.
* **Recovers** from the states that make libxl fail every later operation
  ([TIME-STALE]); see `DeviceModelChannel` for the exact rules.

The order is libxl's, in as few round trips as it allows: the parameter (with the
note of the last command that has one), then the command, one look (``state`` and
``parameter`` read together) per event that came after the previous look's replies,
the state written back.  ``state`` as the channel last read or wrote it stands for
libxl's reads of it (the wait for ``running``, the state to restore) while no event on
it arrived since (`ChannelWatches.known_state`; the watches are kept across
commands): a read then would show the same.

The decision "succeeded, failed or keep waiting" is the sans-IO
`stubdom.toolstack.exchange`; `DeviceModelChannel` is the asyncio shell around it, and
waits on its watches (`stubdom.xenstore.WatchGroup.changed_after`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from stubdom.protocol import (
    DEVICE_MODEL_TIMEOUT,
    LOGDIRTY_DISABLE,
    LOGDIRTY_ENABLE,
    LOGDIRTY_TIMEOUT,
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
from stubdom.toolstack.exchange import (
    STALE_RESULTS,
    CommandExchange,
    DeviceModelDied,
    DeviceModelError,
    DeviceModelTimeout,
    InsertOutcome,
    Restore,
    Snapshot,
    Verdict,
    insert_answer,
    names_function,
)
from stubdom.toolstack.locks import (
    GuestLock,
    SaveMarker,
    lock_path,
    new_stamp,
    save_marker_path,
)
from stubdom.xenstore import Client, Transaction, WaitTimeout, WatchGroup
from stubdom.xenstore.pipeline import Batch, pipelined

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["ChannelRegistry", "ChannelWatches", "DeviceModelChannel"]


@dataclass(eq=False)
class ChannelWatches:
    """A channel's watches on ``state``, ``parameter`` and ``@releaseDomain``, and what
    they tell of the stubdomain: one found alive stays so until ``@releaseDomain``
    fires (xenstored fires it when a domain is released, shuts down or crashes), which
    spares a liveness query per look."""

    group: WatchGroup
    #: ``releases`` when the last liveness query that found the stubdomain alive began
    #: (None: no such query, or a later one found it dead).
    alive_as_of: int | None = None
    #: The last value of ``state`` we read or wrote, and the `Reply.seq` of that reply.
    state_seen: tuple[str | None, int] | None = None

    @property
    def releases(self) -> int:
        return self.group.fired(RELEASE_DOMAIN)

    def saw_state(self, value: str | None, seq: int) -> None:
        self.state_seen = (value, seq)

    def known_state(self, path: str) -> str | None:
        """``state`` (at ``path``) as last read or written, if no event on it came
        since (`WatchGroup.changed_since`): what a read would show, without the round
        trip.  None: not known, read it."""
        if self.state_seen is None:
            return None
        value, seq = self.state_seen
        return None if self.group.changed_since(path, seq) else value


#: (client, stubdom, guest, lock path) of a channel.
ChannelKey = tuple[Client, int, int, str]
#: What one look at the channel showed, and the `Reply.seq` it read each path at.
Look = tuple[Snapshot, dict[str, int]]


class ChannelRegistry:
    """What a toolstack session keeps for the channels it opens: each guest's
    in-process lock, and the watches of each channel across its commands (registered
    by the first command and used under the lock), so a command costs no WATCH and
    UNWATCH and no initial events.  Channels made for the same guest on the same
    client share them."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._kept: dict[ChannelKey, ChannelWatches] = {}
        self._stamps: dict[ChannelKey, bytes] = {}

    @property
    def kept(self) -> Mapping[ChannelKey, ChannelWatches]:
        """The watches kept now."""
        return MappingProxyType(self._kept)

    def hold(self, key: ChannelKey) -> GuestLock:
        """The guest's lock for one command of the channel ``key``, under the key's own
        stamp (`GuestLock.stamp`: one per key, as what it knows of ``state`` is kept per
        key).  If another holder came between the key's last hold and this one, what
        its kept watches knew of ``state`` is forgotten once the lock is taken: that
        holder's changes fired events at us, but they may still be on their way
        (unread, or not even sent yet), and only a read shows what it left."""
        stamp = self._stamps.get(key)
        if stamp is None:
            stamp = self._stamps[key] = new_stamp()
        path = key[3]
        return GuestLock(path, self.lock(path), stamp, functools.partial(self._taken, key))

    def _taken(self, key: ChannelKey, lock: GuestLock) -> None:
        kept = self._kept.get(key)
        if kept is not None and lock.previous != lock.stamp:
            kept.state_seen = None

    def lock(self, path: str) -> asyncio.Lock:
        """The in-process lock that goes with the flock on ``path``."""
        lock = self._locks.get(path)
        if lock is None:
            lock = self._locks[path] = asyncio.Lock()
        return lock

    async def watches(self, key: ChannelKey, paths: Sequence[str]) -> ChannelWatches:
        """The channel's kept watches (its lock is held), registered on first use."""
        kept = self._kept.get(key)
        if kept is not None and kept.group.active:
            return kept
        kept = ChannelWatches(WatchGroup(key[0], paths))
        await kept.group.start()
        self._kept[key] = kept
        return kept

    async def drop(self, key: ChannelKey, kept: ChannelWatches) -> None:
        """Remove ``kept`` if it is still the channel's (its stubdomain died)."""
        if self._kept.get(key) is kept:
            del self._kept[key]
            await kept.group.stop()

    async def forget(self, guest: int) -> None:
        """Remove the watches kept for ``guest``: its domains are going, and no later
        command would find them dead and remove them."""
        for key in [k for k in self._stamps if k[2] == guest]:
            del self._stamps[key]
        for key in [k for k in self._kept if k[2] == guest]:
            await self._kept.pop(key).group.stop()


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

    ``channels`` is the session's `ChannelRegistry`, which keeps the channel's watches
    and in-process lock beyond this object.
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
        *,
        channels: ChannelRegistry,
    ) -> None:
        self.client = client
        self.channels = channels
        #: Asks the hypervisor whether a domain still runs (None: xenstore only).
        self.running = running
        #: Says how the stubdomain ended and what it last logged, for `DeviceModelDied`.
        self.postmortem = postmortem
        self.stubdom = stubdom
        self.guest = guest
        self.lock_dir = Path(lock_dir)
        self.timeout = timeout
        self.logdirty_timeout = logdirty_timeout
        self.lock_path = lock_path(self.lock_dir, guest)
        self.save_marker = save_marker_path(self.lock_dir, guest)
        self._marker = SaveMarker(self.save_marker, guest)
        #: The last command any toolstack of ours sent this guest's device model, and its
        #: parameter (written under the lock, in the round trip of the parameter).
        self.last_sent = dm_last_sent_path(guest)
        self._state = state_path(stubdom, guest)
        self._parameter = parameter_path(stubdom, guest)
        self._command = command_path(stubdom, guest)
        self._watched = [self._state, self._parameter, RELEASE_DOMAIN]
        #: This channel's entry in the registry's kept watches.
        #: The lock file's path as a string: the lock and kept watches are looked up by it
        #: on every command, and a `Path` hashes in Python.
        self._lock_file = str(self.lock_path)
        self._watches_key: ChannelKey = (client, stubdom, guest, self._lock_file)

    # -- public operations ------------------------------------------------------------

    async def wait_running(self) -> None:
        """Wait until ``state`` is ``running`` (libxl's pre-wait; no lock, no recovery,
        so with watches of its own, removed when it returns)."""
        async with WatchGroup(self.client, self._watched) as group:
            ex = CommandExchange(self.guest, State.RUNNING)
            await self._wait(ex, watches=ChannelWatches(group))

    async def pci_insert(
        self, bdf: Bdf, vdevfn: int = 0, msitranslate: bool = False, power_mgmt: bool = False
    ) -> int:
        """Hot-plug ``bdf`` into the guest; the devfn qemu chose.  `PciInsertError` carries
        qemu's refusal.  The state is written back whatever happened (libxl)."""
        parameter = pci_ins_parameter(bdf, vdevfn, msitranslate, power_mgmt)
        async with self.locked():
            await self._prepare(Command.PCI_INS)
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
            await self._prepare(Command.PCI_REM)
            if send:
                await self._exchange(
                    Command.PCI_REM, pci_rem_parameter(bdf), State.PCI_REMOVED, Restore.ON_SUCCESS
                )
                log.info("guest %d: %s removed", self.guest, bdf)
            else:
                orig = await self.client.read_text(self._state)
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

        Known only if that was the last command with a parameter we sent (``save`` and
        ``continue`` leave ``parameter`` alone) and the device model took it (``command``
        is gone): it answers one command at a time, so ``parameter`` then holds its
        answer to it -- qemu's refusal text, or the devfn.  A refused function
        needs no ``pci-rem``, which qemu-trad would not answer at all."""
        async with self.locked():
            sent = await self.client.read_text(self.last_sent)
            if sent is None:
                return InsertOutcome.UNKNOWN
            name, _, sent_parameter = sent.strip().partition(" ")
            if name != Command.PCI_INS or not names_function(sent_parameter, bdf):
                return InsertOutcome.UNKNOWN

            async def look(t: Transaction) -> tuple[str | None, str | None]:
                command, answer = await pipelined(
                    t.read_text(self._command), t.read_text(self._parameter)
                )
                return command, answer

            return insert_answer(*await self.client.retry_transaction(look))

    async def save(self) -> None:
        """Pause the device model and have it dump its state (-> ``paused``); no state
        restore.  Leaves the save marker until `resume`."""
        async with self.locked():
            state = await self._current_state(await self._watches())
            if state == State.PAUSED and self._marker.in_progress(self.stubdom):
                log.info("guest %d: device model already paused by a save", self.guest)
                return
            await self._prepare(Command.SAVE)
            await self._exchange(Command.SAVE, None, State.PAUSED, Restore.NEVER)
            self._marker.hold(self.stubdom)
            log.info("guest %d: device model saved and paused", self.guest)

    async def resume(self) -> bool:
        """``continue`` if the state is ``paused`` and wait for ``running``; whether it
        was sent.  Ends the save in progress either way."""
        async with self.locked():
            sent = await self._current_state(await self._watches()) == State.PAUSED
            if sent:
                await self._exchange(Command.CONTINUE, None, State.RUNNING, Restore.NEVER)
                log.info("guest %d: device model resumed", self.guest)
            else:
                log.info("guest %d: device model not paused, no continue sent", self.guest)
            self._marker.remove()
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
                await self._prepare(command)
            return await self._exchange(command, parameter, expect, restore)

    async def logdirty(self, enable: bool) -> None:
        """Switch log-dirty mode ([TS-LOGDIRTY]): ``logdirty/cmd`` -> wait for the same ``ret``."""
        cmd = LOGDIRTY_ENABLE if enable else LOGDIRTY_DISABLE
        what = f"logdirty {cmd}"
        cmd_path = logdirty_path(self.stubdom, self.guest, "cmd")
        ret_path = logdirty_path(self.stubdom, self.guest, "ret")

        async def send(t: Transaction) -> None:
            old = await t.read_text(cmd_path)
            if old is not None:
                if await t.read_text(ret_path) != old:
                    raise DeviceModelError(
                        self.guest, what, f"qemu was already sent command {old!r} (no answer yet)"
                    )
                await t.rm(cmd_path)
            if await t.exists(ret_path):
                await t.rm(ret_path)
            await t.write(cmd_path, cmd)

        async def answered(t: Transaction) -> bool | None:
            got = await t.read_text(ret_path)
            if got is None:
                return None
            if got != cmd:
                raise DeviceModelError(self.guest, what, f"qemu answered {got!r}")
            await t.rm(cmd_path)
            await t.rm(ret_path)
            return True

        async with self.locked(), WatchGroup(self.client, [ret_path, RELEASE_DOMAIN]) as group:
            await self.client.retry_transaction(send)
            w = ChannelWatches(group)

            async def look() -> bool | None:
                if not await self._alive(w):
                    died = DeviceModelDied(self.guest, what, "the stubdomain died")
                    raise await self._explained(died)
                return await self.client.retry_transaction(answered)

            async def timed_out() -> DeviceModelError:
                detail = f"no answer in ret within {self.logdirty_timeout:g} s"
                return DeviceModelTimeout(self.guest, what, detail)

            await self._until(w, look, self.logdirty_timeout, timed_out)
        log.info("guest %d: %s done", self.guest, what)

    # -- the lock ----------------------------------------------------------------------

    def locked(self) -> GuestLock:
        """The guest's lock: in-process, then the ``flock`` other processes see."""
        return self.channels.hold(self._watches_key)

    # -- steps ---------------------------------------------------------------------------

    async def _prepare(self, what: str) -> None:
        """The recovery of the class docstring, then libxl's wait for ``running``."""
        watches = await self._watches()
        state = await self._current_state(watches)
        if state in STALE_RESULTS:
            await self._reset_stale(state)
        elif state == State.PAUSED:
            if self._marker.in_progress(self.stubdom):
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

    async def _current_state(self, w: ChannelWatches) -> str | None:
        """``state``: as we last saw it if no event says it changed since, else read."""
        known = w.known_state(self._state)
        if known is not None:
            return known
        batch = Batch(self.client)
        state = batch.read_text(self._state)
        await batch.send()
        w.saw_state(state.value, state.seq)
        return state.value

    async def _reset_stale(self, stale: str) -> None:
        """Write ``running`` over a stale result, if it is still there."""

        async def reset(t: Transaction) -> bool:
            if await t.read_text(self._state) != stale:
                return False
            await t.write(self._state, State.RUNNING)
            return True

        if await self.client.retry_transaction(reset):
            log.warning(
                "guest %d: state was a stale %r (a result never written back, e.g. a late "
                "guest eject); wrote running",
                self.guest,
                stale,
            )

    async def _exchange(
        self, command: Command, parameter: str | None, expect: State, restore: Restore
    ) -> Snapshot:
        """[TS-EXCHANGE] steps 2-7 (the lock is held)."""
        ex = CommandExchange(self.guest, expect, command, parameter)
        orig: str | None = None

        async def send(w: ChannelWatches) -> Look:
            """The state to restore (read, unless known: `ChannelWatches.known_state`),
            the note of the last command and the parameter in one round trip, then the
            command, only once those were written (a failed note leaves no command
            sent).  A command without a parameter is not noted: its answer is in
            ``state`` alone, so ``parameter`` still holds the answer the note names
            (`unanswered_insert`).  The first look is what those show."""
            nonlocal orig
            first = Batch(self.client)
            known = w.known_state(self._state)  # libxl's read, if no event says otherwise
            state = first.read_text(self._state) if known is None else None
            param = None
            if parameter is not None:
                first.write(self.last_sent, f"{command} {parameter}")
                param = first.write(self._parameter, parameter)
            if state is not None or param is not None:
                await first.send()
            if state is not None:
                orig = state.value
                w.saw_state(orig, state.seq)
            else:
                orig = known
            second = Batch(self.client)
            sent = second.write(self._command, command)
            await second.send()
            log.debug("guest %d: sent %s %r", self.guest, command, parameter)
            assert w.state_seen is not None
            seen = {self._state: w.state_seen[1],
                    self._parameter: (sent if param is None else param).seq,
                    RELEASE_DOMAIN: sent.seq}
            return Snapshot(orig, parameter), seen

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
        batch = Batch(self.client)
        written = batch.write(self._state, orig)
        await batch.send()
        kept = self.channels.kept.get(self._watches_key)
        if kept is not None:
            kept.saw_state(orig, written.seq)

    async def _wait(
        self,
        ex: CommandExchange,
        send: Callable[[ChannelWatches], Awaitable[Look]] | None = None,
        watches: ChannelWatches | None = None,
    ) -> Snapshot:
        """With state, parameter and @releaseDomain watched (``watches``, else the
        channel's, which need the lock), run ``send`` (the first look), and look again
        at each event until ``ex`` decides."""
        w = watches if watches is not None else await self._watches()
        first = send
        seen: dict[str, int] = {}

        async def look() -> Snapshot | None:
            nonlocal first
            # The next look waits for an event that came after this one's reads (or
            # writes) were answered: the events before them, our own writes' included,
            # announced what this look sees.  @releaseDomain is also counted (`_alive`).
            if first is not None:
                (snap, got), first = await first(w), None
            else:
                snap, got = await self._look(w)
            seen.update(got)
            alive = await self._alive(w)
            if snap.state is None and alive:
                # The stub's nodes go with it, before @releaseDomain fires.
                alive = await self._alive(w, fresh=True)
            out = ex.observe(Snapshot(snap.state, snap.parameter, alive))
            if out.error is not None:
                log.info("%s", out.error)
                raise await self._explained(out.error)
            return out.snapshot if out.verdict is Verdict.DONE else None

        async def timed_out() -> DeviceModelError:
            pending = send is not None and await self.client.read_text(self._command) is not None
            return ex.timed_out(self.timeout, pending)

        return await self._until(w, look, self.timeout, timed_out, seen)

    async def _look(self, w: ChannelWatches) -> Look:
        """``state`` and ``parameter`` read in one round trip."""
        batch = Batch(self.client)
        state = batch.read_text(self._state)
        param = batch.read_text(self._parameter)
        await batch.send()
        w.saw_state(state.value, state.seq)
        seen = {self._state: state.seq, self._parameter: param.seq, RELEASE_DOMAIN: param.seq}
        return Snapshot(state.value, param.value), seen

    async def _until(
        self,
        w: ChannelWatches,
        look: Callable[[], Awaitable[T | None]],
        timeout: float,
        timed_out: Callable[[], Awaitable[DeviceModelError]],
        seen: Mapping[str, int] | None = None,
    ) -> T:
        """Every wait of the channel: ``look`` until it finds something, and the error
        ``timed_out`` makes of the last resort.  With ``seen`` (what the last look
        read, by path: `WatchGroup.changed_after`), only an event after it brings
        another look; else any event since the look began does."""
        if seen is None:
            try:
                return await w.group.until(look, timeout)
            except WaitTimeout:
                error = await timed_out()
                log.info("%s", error)
                raise error from None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while True:
                    found = await look()
                    if found is not None:
                        return found
                    await w.group.changed_after(seen)
        except TimeoutError:
            if not deadline.expired():
                raise  # a request timed out, not the wait
        error = await timed_out()
        log.info("%s", error)
        raise error from None

    async def _watches(self) -> ChannelWatches:
        """This channel's kept watches (the lock is held)."""
        return await self.channels.watches(self._watches_key, self._watched)

    async def _alive(self, w: ChannelWatches, fresh: bool = False) -> bool:
        """`_stub_alive`, asked only if @releaseDomain fired since the stubdomain was
        last found alive (or ``fresh``).  A dead stubdomain's kept watches are removed."""
        if not fresh and w.alive_as_of is not None and w.alive_as_of == w.releases:
            return True
        start = w.releases
        alive = await self._stub_alive()
        if alive:
            w.alive_as_of = start
        else:
            w.alive_as_of = None
            await self.channels.drop(self._watches_key, w)
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
