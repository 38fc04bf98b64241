"""Finding the project's programs by bare name, for the toolstack and the stubdomain."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_program(name: str, path: str | None = None) -> str | None:
    """``name`` beside this interpreter (a venv's scripts are there, whatever PATH
    says), else on ``path`` (default: PATH); None if neither has it."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    return shutil.which(name, path=path)
