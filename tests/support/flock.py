"""Whether a lock file is free, as another process would find it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def flock_free(path: Path) -> bool:
    """Whether another open file could take the flock on ``path`` now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
