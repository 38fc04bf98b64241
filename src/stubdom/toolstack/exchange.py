"""The sans-IO core of the qemu-trad control channel: what a look at the channel means.

`CommandExchange` decides, from each `Snapshot` of ``state`` and ``parameter`` (and
whether the stubdomain still lives), whether a command succeeded, failed or is still
pending; the errors it returns name the guest, the command and what was seen, so a
caller can report them as they are.  No I/O happens here: `stubdom.toolstack.channel`
does the reading, writing and waiting, and is tested against a fake device model,
while this is tested with plain values.
"""

from __future__ import annotations

import enum
import logging
from typing import NamedTuple

from stubdom.protocol import (
    FAILURE_STATE,
    FAILURE_STATES,
    PCI_INS_ERRORS,
    Bdf,
    Command,
    State,
    parse_pci_inserted,
)

log = logging.getLogger(__name__)

__all__ = [
    "KNOWN_STATES",
    "STALE_RESULTS",
    "CommandExchange",
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
    "insert_answer",
    "names_function",
    "printable",
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


class Snapshot(NamedTuple):
    """What one look at the channel showed: ``state``, ``parameter`` (None: absent) and
    whether the stubdomain is still introduced.  A named tuple, as `Outcome`: a few are
    made per event the channel waits on, and a frozen dataclass's ``__init__`` costs
    several times more."""

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


class Outcome(NamedTuple):
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
        if not snap.stub_alive and not self._answered(snap):
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

    def _answered(self, snap: Snapshot) -> bool:
        """The command's answer is there: a stub that dies right after writing it (the
        look saw both at once) did answer, as libxl, which reads only ``state``, sees.
        A plain wait has no command to answer: a dead stub's old state is no news."""
        return self.command is not None and snap.state == self.expect

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


class Restore(enum.Enum):
    """When the state read before a command is written back (libxl's rules, [ts.state-restored])."""

    ALWAYS = "always"  # pci-ins
    ON_SUCCESS = "on-success"  # pci-rem
    NEVER = "never"  # save, continue


def names_function(parameter: str, bdf: Bdf) -> bool:
    """Whether a ``pci-ins`` parameter (``PCI_BDF[@vdevfn],options``) is for ``bdf``."""
    head = parameter.partition(",")[0].partition("@")[0]
    return head == str(bdf)


def insert_answer(command: str | None, answer: str | None) -> InsertOutcome:
    """What ``parameter`` says of the last ``pci-ins`` sent, given ``command`` is what
    the command node holds (the device model removes it when it takes the command)."""
    if command is not None or answer is None:
        return InsertOutcome.UNKNOWN
    if answer in PCI_INS_ERRORS:
        return InsertOutcome.REFUSED
    if answer.startswith("0x"):
        return InsertOutcome.INSERTED
    return InsertOutcome.UNKNOWN
