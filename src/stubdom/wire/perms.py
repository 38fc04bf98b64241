"""Permission strings: ``n0``, ``r5``, ``w3``, ``b7`` (``xs_strings_to_perms``).

A node's permissions are a vector: entry 0 names the owner and its letter is the
access of every domain not listed later; the remaining entries are an ACL.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class Access(enum.IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3
    #: Only ever granted by ownership or privilege, never by a permission string.
    OWNER = 4


_LETTER_ACCESS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}
_ACCESS_LETTER = {v: k for k, v in _LETTER_ACCESS.items()}


class InvalidPermission(ValueError):
    """A permission string that the daemons reject with EINVAL."""


@dataclass(frozen=True, slots=True)
class Perm:
    access: Access
    domid: int

    def __str__(self) -> str:
        # cx prints the domid with %i: 4294967295 reads back as -1.
        domid = self.domid - (1 << 32) if self.domid >= 1 << 31 else self.domid
        return f"{_ACCESS_LETTER[self.access & Access.BOTH]}{domid}"

    @property
    def letter(self) -> str:
        return _ACCESS_LETTER[self.access & Access.BOTH]


def c_strtol(text: str, base: int = 0) -> tuple[int, str]:
    """C ``strtol(text, &end, base)`` on a 64-bit ``long``: (value, rest of the string).

    Leading white space and a sign are accepted, ``0x`` means hex and a leading ``0``
    octal; overflow saturates.  A string with no digits gives (0, text).
    """
    i = 0
    n = len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and text[i] in "+-":
        neg = text[i] == "-"
        i += 1
    if base == 0:
        base = 10
        hexdigit = i + 2 < n and text[i + 2] in "0123456789abcdefABCDEF"
        if text[i : i + 2].lower() == "0x" and hexdigit:
            base, i = 16, i + 2
        elif text[i : i + 1] == "0":
            base = 8
    digits = "0123456789abcdef"[:base]
    start = i
    while i < n and text[i].lower() in digits:
        i += 1
    if i == start:
        return 0, text
    value = int(text[start:i], base)
    value = -value if neg else value
    value = max(min(value, 2**63 - 1), -(2**63))
    return value, text[i:]


def parse_perm(text: str) -> Perm:
    """One permission string, parsed as cxenstored does (``010`` is octal 8).

    The domid is stored as a C ``unsigned int``, so ``n-1`` names domain 4294967295.
    """
    if not text or text[0] not in _LETTER_ACCESS:
        raise InvalidPermission(f"permission {text!r} must start with one of n, r, w, b")
    rest = text[1:]
    if not rest:
        raise InvalidPermission(f"permission {text!r} has no domain id")
    value, tail = c_strtol(rest)
    if tail:
        raise InvalidPermission(f"permission {text!r} has trailing characters {tail!r}")
    return Perm(_LETTER_ACCESS[text[0]], value & 0xFFFFFFFF)


def parse_perms(texts: Iterable[str]) -> list[Perm]:
    return [parse_perm(t) for t in texts]


def format_perms(perms: Sequence[Perm]) -> list[str]:
    return [str(p) for p in perms]


def perm(text: str) -> Perm:
    """Shorthand for tests and callers: ``perm("r5")``."""
    return parse_perm(text)


__all__ = [
    "Access",
    "InvalidPermission",
    "Perm",
    "c_strtol",
    "format_perms",
    "parse_perm",
    "parse_perms",
    "perm",
]
