"""The bare-client orders `bench/pci_ins.py` measures against are what they say.

Each replay runs in a child process (importing the bench loads the compiled core).

On ours alone: what is checked is the bench's own bare client, not a daemon (the
bench runs it on cx and ox itself; the daemons' answers to such requests are compared
by tests/differential)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import Daemon, start_ours

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = start_ours()
    try:
        yield d
    finally:
        d.stop()


def run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("absolute", [True, False], ids=["dm dom0", "dm guest"])
def test_consfront_save_opens_and_closes_console_1_as_mini_os(
    daemon: Daemon, absolute: bool
) -> None:
    """Twice in a row (the bench repeats it): the frontend's nodes written, and its
    state back at Closed each time (a failed request would end the child)."""
    sock = daemon.socket if absolute else f"{daemon.socket}.d/2"
    out = run(f"""
        import sys
        sys.path.insert(0, "bench")
        import pci_ins as b
        b.prepare_daemon({daemon.socket!r})
        dm = b.Raw({sock!r})
        for _ in range(2):
            b.consfront_save(dm, {absolute!r})
        ts = b.Raw({daemon.socket!r})
        fe = "/local/domain/2/" + b.CONSOLE_FE
        print([ts.rpc("READ", f"{{fe}}/{{n}}").decode() for n in
               ("state", "ring-ref", "port", "protocol")])
    """)
    assert out.splitlines() == ["['6', '8', '3', 'x86_64-abi']"]
