"""The per-user cache where stubdom keeps what it builds on a machine: the realxs shim
(`stubdom.realxs.build`) and the compiled xenstored core (`stubdom.compiled`), each in
an entry named by a hash of what it was built from."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/stubdom``, else ``~/.cache/stubdom``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stubdom"
