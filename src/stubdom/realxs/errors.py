"""The one error a caller of ``stubdom.realxs`` handles: the machine lacks a piece."""

from __future__ import annotations


class RealXenstoredUnavailable(RuntimeError):
    """A real daemon cannot run here: a Debian package (its name is in the message) is
    missing.  Distinct from a daemon that starts and fails, which is a ``RuntimeError``."""
