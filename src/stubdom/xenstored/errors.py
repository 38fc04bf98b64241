"""The failure a request ends with, and what the daemon tells its shell."""

from __future__ import annotations

from dataclasses import dataclass


class XsError(Exception):
    """A request failed; the reply is ERROR with this errno name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class NodeQuotaExceeded(XsError):
    """The node-count quota; unlike other failures it does not fail a transaction."""


@dataclass(frozen=True)
class DomainIntroduced:
    domid: int


@dataclass(frozen=True)
class DomainReleased:
    domid: int


Notification = DomainIntroduced | DomainReleased
