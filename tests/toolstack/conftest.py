"""Fixtures the toolstack tests share."""

from tests.support.device_host import host
from tests.support.xsenv import XsEnv, xsenv

__all__ = ["XsEnv", "host", "xsenv"]
