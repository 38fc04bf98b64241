"""pyxs (Debian's python3-pyxs, an independent client) against our server and against cx.

The session itself is ``pyxs_scenario.py``, run with the system interpreter because pyxs
is a Debian package, not a venv dependency.  It prints a JSON transcript; both servers
must produce the same transcript, and some entries are pinned to explicit values so the
comparison cannot pass by both sides being wrong in the same trivial way (e.g. empty).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import SYSTEM_PYTHON, Daemon, need_peer

SCENARIO = Path(__file__).with_name("pyxs_scenario.py")
# pyxs has no timeouts: the scenario has its own watchdog, this is the outer guard.
TIMEOUT = 90

pytestmark = pytest.mark.peer


def have_pyxs() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import pyxs"], capture_output=True, check=False)
    return r.returncode == 0


def run_scenario(d: Daemon) -> list[list[Any]]:
    need_peer(have_pyxs(), "pyxs for /usr/bin/python3 (Debian python3-pyxs)")
    r = subprocess.run(
        [SYSTEM_PYTHON, str(SCENARIO)],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert r.returncode == 0, f"scenario against {d.kind} failed ({r.returncode}):\n{r.stderr}"
    transcript: list[list[Any]] = json.loads(r.stdout)
    return transcript


def as_dict(transcript: list[list[Any]]) -> dict[str, Any]:
    steps = [name for name, _ in transcript]
    assert len(steps) == len(set(steps)), "step names must be unique"
    return {name: outcome for name, outcome in transcript}


# Values the transcript must contain whichever server answers: from the xenstore protocol
# (docs/misc/xenstore.txt) and what the real cxenstored 4.17 does.
EXPECTED: dict[str, Any] = {
    "read /pyxs/a": {"ok": "1"},
    "read /pyxs/empty": {"ok": ""},
    "read /pyxs/missing": {"err": "ENOENT"},
    "read /pyxs/missing default": {"ok": "dflt"},
    "read /pyxs (implicit parent)": {"ok": ""},
    "read /pyxs/a after mkdir": {"ok": "1"},
    "list /pyxs": {"ok": ["a", "empty", "dir"]},
    "list /pyxs/missing": {"err": "ENOENT"},
    "exists /pyxs/a": {"ok": True},
    "exists /pyxs/missing": {"ok": False},
    "read /local/domain/0/data/x": {"ok": "rel"},
    "get_perms /pyxs/a": {"ok": ["n0"]},
    "get_perms /pyxs/a after": {"ok": ["n0", "r5", "b7"]},
    "get_perms /pyxs/a/child": {"ok": ["n0", "r5", "b7"]},
    "transaction (commit)": {"ok": True},
    "tx read /pyxs/tx": {"ok": "in-tx"},
    "outside read /pyxs/tx": {"err": "ENOENT"},
    "commit": {"ok": True},
    "read /pyxs/tx after commit": {"ok": "in-tx"},
    "read /pyxs/rolled": {"err": "ENOENT"},
    "conflict tx read /pyxs/tx": {"ok": "in-tx"},
    "commit (conflict)": {"ok": False},
    "read /pyxs/tx after conflict": {"ok": "outside"},
    "initial event": {"ok": ["/pyxs/w", "tok-w"]},
    "change event": {"ok": ["/pyxs/w/child", "tok-w"]},
    "rm event": {"ok": ["/pyxs/w", "tok-w"]},
    "unwatch again": {"err": "ENOENT"},
    "get_domain_path 0": {"ok": "/local/domain/0"},
    "get_domain_path 7": {"ok": "/local/domain/7"},
    "is_domain_introduced 0": {"ok": True},
    "is_domain_introduced 5": {"ok": False},
    "initial @introduceDomain event": {"ok": ["@introduceDomain", "intro"]},
    "introduce_domain 5 port 6": {"ok": None},
    "@introduceDomain event": {"ok": ["@introduceDomain", "intro"]},
    "is_domain_introduced 5 after": {"ok": True},
    "release_domain 5": {"ok": None},
    "@releaseDomain event": {"ok": ["@releaseDomain", "release"]},
    "is_domain_introduced 5 released": {"ok": False},
    "release_domain 5 again": {"err": "ENOENT"},
    "exists /pyxs/a/child": {"ok": False},
    "delete /nope/deeper": {"err": "ENOENT"},
    "list /": {"ok": ["tool", "local"]},
}


def check_expected(transcript: list[list[Any]]) -> None:
    got = as_dict(transcript)
    wrong = {k: (got.get(k, "<missing>"), v) for k, v in EXPECTED.items() if got.get(k) != v}
    assert not wrong, "unexpected outcomes (got, expected):\n" + "\n".join(
        f"  {k}: {g!r} != {e!r}" for k, (g, e) in wrong.items()
    )


def test_pyxs_session_against_ours(ours: Daemon) -> None:
    transcript = run_scenario(ours)
    check_expected(transcript)
    assert ours.alive(), "our server died during the pyxs session"


def test_pyxs_session_against_cx(cx: Daemon) -> None:
    """Sanity check of the scenario and of EXPECTED against the real daemon."""
    check_expected(run_scenario(cx))


def test_pyxs_transcript_ours_equals_cx(ours: Daemon, cx: Daemon) -> None:
    mine, theirs = run_scenario(ours), run_scenario(cx)
    diffs = [
        f"  {a[0]}: ours {a[1]!r} / cx {b[1]!r}"
        for a, b in zip(mine, theirs, strict=True)
        if a != b
    ]
    assert not diffs, "pyxs transcript differs from cx:\n" + "\n".join(diffs)
    assert mine == theirs
