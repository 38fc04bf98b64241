"""The real Xen xenstored daemons (cxenstored, oxenstored 4.17), run without Xen.

An LD_PRELOAD shim (``shim.c``, built by :mod:`.build`) answers the daemons' few Xen
library calls from files in a directory (:class:`FakeXen`); :func:`start` runs a daemon
under it.  Used by the tests as the reference and by a host that serves the real daemon.
See docs/realxs.md.

The names are imported on first use, so that ``python -m stubdom.realxs.build`` runs
the build module once, not a second copy of it already imported by the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stubdom.realxs.build import build_shim, shim_library
    from stubdom.realxs.daemons import Flavour, RealXenstored, available, daemon_binary, start
    from stubdom.realxs.errors import RealXenstoredUnavailable
    from stubdom.realxs.fakexen import DomainState, FakeXen

_HOME = {
    "build_shim": "build",
    "shim_library": "build",
    "Flavour": "daemons",
    "RealXenstored": "daemons",
    "available": "daemons",
    "daemon_binary": "daemons",
    "start": "daemons",
    "RealXenstoredUnavailable": "errors",
    "DomainState": "fakexen",
    "FakeXen": "fakexen",
}

__all__ = [
    "DomainState",
    "FakeXen",
    "Flavour",
    "RealXenstored",
    "RealXenstoredUnavailable",
    "available",
    "build_shim",
    "daemon_binary",
    "shim_library",
    "start",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
