"""`make demo` runs examples/xenstore_demo.py: it must keep working and say what it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "xenstore_demo.py"


def test_demo_runs_and_tells_the_story() -> None:
    out = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "perms n1" in out  # the guest owns what it creates
    assert "EACCES" in out  # dom0's home is hidden from the guest
    assert "b'only mine'" in out  # the stubdomain reads its target's node
    assert "2 attempts, counter = 11" in out  # EAGAIN, then the retry wins
    assert out.count("@releaseDomain fired, socket removed: True") == 2
