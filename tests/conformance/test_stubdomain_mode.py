"""The stubdomain mode passes our agent (both modes) and catches broken variants."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stubdom.conformance.report import Verdict
from stubdom.conformance.stubdomain import Timeouts, check_stubdomain
from tests.conformance.judging import assert_judged_as_qemu_trad, by_clause
from tests.support.daemons import need_xenstored, on_every_daemon

AGENT = str(Path(sys.executable).with_name("stubdom-dm"))
STUBDOM = str(Path(sys.executable).with_name("stubdom"))
HERE = Path(__file__).resolve().parent
FAST = Timeouts(startup=5.0, command=3.0, refusal=1.0)


# Every clause run goes on every xenstored (cx's and ox's trace is the host's proxy's
# and relays'), the broken variants too.
@on_every_daemon
async def test_our_agent_passes_every_clause(xenstored: str) -> None:
    res = by_clause(await check_stubdomain(AGENT, [], FAST, xenstored=xenstored))
    assert all(r.verdict is Verdict.PASS for r in res.values()), res
    assert res["pci-ins.refusal"].style == ""


@on_every_daemon
async def test_compat_agent_passes_qemu_trad_style(xenstored: str) -> None:
    res = by_clause(await check_stubdomain(AGENT, ["--compat=qemu-trad"], FAST,
                                           xenstored=xenstored))
    assert_judged_as_qemu_trad(res)


def broken_kernel(tmp_path: Path, variant: str) -> str:
    k = tmp_path / f"broken-{variant}"
    k.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'broken_dm.py'} {variant} \"$@\"\n")
    k.chmod(k.stat().st_mode | stat.S_IXUSR)
    return str(k)


@on_every_daemon
@pytest.mark.parametrize(
    ("variant", "clause"),
    [
        ("keep-command", "command.deleted"),
        ("state-first", "pci-ins.order"),
        ("never-running", "startup.running"),
        ("paused-early", "save.complete"),
        ("paused-early", "save.console-closed"),
        ("truncated-save", "save.complete"),
    ],
)
async def test_broken_variant_is_caught(
    tmp_path: Path, variant: str, clause: str, xenstored: str
) -> None:
    t = Timeouts(startup=2.0, command=3.0, refusal=1.0)
    kernel = broken_kernel(tmp_path, variant)
    res = by_clause(await check_stubdomain(kernel, [], t, xenstored=xenstored))
    assert res[clause].verdict is Verdict.FAIL, res[clause]


def test_cli_exit_status_and_json(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    ok = subprocess.run([STUBDOM, "conformance", "stubdomain", "--kernel", AGENT,
                         "--kernel-arg", "--compat=qemu-trad", "--report", str(report)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pass (qemu-trad style)" in ok.stdout
    assert json.loads(report.read_text())["failed"] is False
    bad = subprocess.run([STUBDOM, "conformance", "stubdomain", "--kernel",
                          broken_kernel(tmp_path, "state-first"), "--command-timeout", "3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert any(line.startswith("fail") and "pci-ins.order" in line
               for line in bad.stdout.splitlines())


@pytest.mark.peer
def test_cli_xenstored_option(tmp_path: Path) -> None:
    need_xenstored("cx")
    report = tmp_path / "r.json"
    r = subprocess.run([STUBDOM, "conformance", "stubdomain", "--kernel", AGENT,
                        "--xenstored", "cx", "--report", str(report)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(report.read_text())["failed"] is False
