"""Fixtures the toolstack tests share."""

from tests.support.xsenv import XsEnv, xsenv

__all__ = ["XsEnv", "xsenv"]
