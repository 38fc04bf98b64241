"""What to do when a guest shuts down: xl's ``handle_domain_death``, as a pure choice.

The configured action for the shutdown reason (``on_poweroff``, ``on_reboot``,
``on_crash``, ``on_watchdog``, ``on_soft_reset``) becomes one of four things the domain
monitor (`stubdom.toolstack.monitor`) does to the guest and its stubdomain: destroy
them, destroy and create them again, keep them (preserve), or keep them under a new
name and create them again (rename-restart).  A suspended guest is waited on.

Where the simulated host cannot do what xl does, the choice says so in a note:
``coredump-*`` has no guest memory to dump (destroy or restart without a core), and
``soft-reset`` is done as a restart (a fresh guest and stubdomain).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from stubdom.host.hypervisor import ShutdownReason
from stubdom.toolstack.config import GuestConfig


class Outcome(enum.Enum):
    DESTROY = "destroy"
    RESTART = "restart"
    RENAME_RESTART = "rename-restart"
    PRESERVE = "preserve"
    #: ``DOMAIN_RESTART_SUSPENDED``: nothing to do, keep waiting.
    WAIT = "wait"

    @property
    def restarts(self) -> bool:
        return self in (Outcome.RESTART, Outcome.RENAME_RESTART)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    #: The action as configured (``coredump-destroy`` ...), for the log.
    configured: str
    note: str | None = None


_NO_CORE = "no core dump: the simulated host has no guest memory to dump"
#: xl.cfg's actions that the host does as another one, with why.
_AS = {
    "coredump-destroy": (Outcome.DESTROY, _NO_CORE),
    "coredump-restart": (Outcome.RESTART, _NO_CORE),
    "soft-reset": (Outcome.RESTART, "soft-reset is done as a restart with a fresh stubdomain"),
}


def configured_action(reason: ShutdownReason | None, cfg: GuestConfig) -> str:
    """The ``on_*`` setting for ``reason``; an unknown reason is destroyed, as in xl."""
    return {
        ShutdownReason.POWEROFF: cfg.on_poweroff,
        ShutdownReason.REBOOT: cfg.on_reboot,
        ShutdownReason.CRASH: cfg.on_crash,
        ShutdownReason.WATCHDOG: cfg.on_watchdog,
        ShutdownReason.SOFT_RESET: cfg.on_soft_reset,
    }.get(reason, "destroy") if reason is not None else "destroy"


def decide(reason: ShutdownReason | None, cfg: GuestConfig) -> Decision:
    """What the monitor does after the guest shut down for ``reason``."""
    if reason is ShutdownReason.SUSPEND:
        return Decision(Outcome.WAIT, "suspend")
    action = configured_action(reason, cfg)
    if action in _AS:
        outcome, note = _AS[action]
        return Decision(outcome, action, note)
    try:
        return Decision(Outcome(action), action)
    except ValueError:
        return Decision(Outcome.DESTROY, action, f"unknown action {action!r}: destroying")


def preserved_suffix(now: float | None = None) -> str:
    """``preserve_domain``'s suffix: ``-%Y%m%dT%H%MZ`` in UTC."""
    return time.strftime("-%Y%m%dT%H%MZ", time.gmtime(now))
