"""The toolstack mode passes our toolstack CLI and catches broken toolstacks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from stubdom.conformance.report import Result, Verdict
from stubdom.conformance.toolstack import check_toolstack
from tests.support.daemons import need_xenstored, on_every_daemon

STUBDOM = str(Path(sys.executable).with_name("stubdom"))
BROKEN = Path(__file__).resolve().parent / "broken_ts.py"


def scenario(tool: str) -> str:
    return (
        f"{tool} create $STUBDOM_CONFORMANCE_CONFIG && {tool} pci-attach conf 03:00.0 && "
        f"{tool} pci-detach conf 03:00.0; {tool} destroy conf"
    )


def verdicts(results: list[Result]) -> dict[str, Result]:
    return {r.clause: r for r in results}


# The full clause run and the broken toolstacks on every xenstored.
@on_every_daemon
def test_our_toolstack_passes(xenstored: str) -> None:
    run = check_toolstack([scenario("stubdom")], timeout=30, xenstored=xenstored)
    assert run.status == 0, run.output
    res = verdicts(run.results)
    assert res.pop("ts.continue-paused").verdict is Verdict.NOT_EXERCISED
    assert all(r.verdict is Verdict.PASS for r in res.values()), res


def test_cli_report_and_exit_status(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    p = subprocess.run(
        [
            STUBDOM,
            "conformance",
            "toolstack",
            "--report",
            str(report),
            "--timeout",
            "30",
            "--",
            "sh",
            "-c",
            'stubdom create "$STUBDOM_CONFORMANCE_CONFIG" && stubdom destroy conf',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(report.read_text())
    rows = {r["clause"]: r["verdict"] for r in data["results"]}
    assert rows["ts.dmargs-perms"] == "pass" and rows["ts.pci-ins.format"] == "not exercised"
    assert "ts.consoles" in p.stdout


def test_no_guest_is_not_exercised_and_failed_scenario_exits_nonzero() -> None:
    p = subprocess.run(
        [STUBDOM, "conformance", "toolstack", "--", "false"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "no guest with a stubdomain" in p.stdout


@on_every_daemon
@pytest.mark.parametrize(
    ("variant", "clause"),
    [
        ("dmargs-no-space", "ts.dmargs"),
        ("dmargs-perms", "ts.dmargs-perms"),
        ("dm-dir-perms", "ts.dm-dir"),
        ("no-restore", "ts.state-restored"),
        ("command-first", "ts.pci-ins.format"),
        ("pci-ins-format", "ts.pci-ins.format"),
    ],
)
def test_broken_toolstack_is_caught(variant: str, clause: str, xenstored: str) -> None:
    tool = " ".join(shlex.quote(w) for w in [sys.executable, str(BROKEN), variant])
    # command-first: when the stub reads the command before the parameter lands, our
    # toolstack waits out the device model's timeout; the clause is judged by then.
    timeout = 10 if variant == "command-first" else 30
    run = check_toolstack([scenario(tool)], timeout=timeout, xenstored=xenstored)
    res = verdicts(run.results)
    assert res[clause].verdict is Verdict.FAIL, (res[clause], run.output)
    others = [c for c, r in res.items() if r.verdict is Verdict.FAIL and c != clause]
    allowed = {"no-restore": {"ts.serialised"}, "command-first": {"ts.pci-rem.format"}}
    assert set(others) <= allowed.get(variant, set()), others


@pytest.mark.peer
def test_cli_xenstored_option() -> None:
    need_xenstored("ox")
    p = subprocess.run(
        [STUBDOM, "conformance", "toolstack", "--xenstored", "ox", "--timeout", "30", "--",
         "sh", "-c", 'stubdom create "$STUBDOM_CONFORMANCE_CONFIG" && stubdom destroy conf'],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert any(line.startswith("pass") and "ts.dmargs-perms" in line
               for line in p.stdout.splitlines())
