"""Whatever a stub does, the stubdomain mode ends in a report: every clause with a
verdict and a one-line reason, the JSON written, the exit status saying it failed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stubdom.conformance.clauses import STUBDOMAIN_CLAUSES
from stubdom.conformance.probes import Probes
from stubdom.conformance.report import Result, Verdict
from stubdom.conformance.stubdomain import PCI_CLAUSES, Timeouts, check_stubdomain
from tests.support.daemons import on_every_daemon

HERE = Path(__file__).resolve().parent
STUBDOM = str(Path(sys.executable).with_name("stubdom"))
AGENT = str(Path(sys.executable).with_name("stubdom-dm"))
ALL = {c.id for c in STUBDOMAIN_CLAUSES}
FAST = Timeouts(startup=3.0, command=2.0, refusal=1.0)


# Every stub judged here runs on ours, cx and ox.  On ours alone: the kit's own time
# bound and its own failing step (the kit's logic, not the stub's exchange), and the
# command line's options, reports and Ctrl-C (the CLI's; `--xenstored` has its own tests
# in test_stubdomain_mode.py and test_toolstack_mode.py).


def hostile_kernel(tmp_path: Path, variant: str) -> str:
    k = tmp_path / f"hostile-{variant}"
    k.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'hostile_dm.py'} {variant} \"$@\"\n")
    k.chmod(k.stat().st_mode | stat.S_IXUSR)
    return str(k)


async def judged(kernel: str, xenstored: str) -> dict[str, Result]:
    """The stubdomain mode's verdicts on ``kernel``, on the host's ``xenstored``."""
    return by_clause(await check_stubdomain(kernel, [], FAST, xenstored=xenstored))


def by_clause(results: list[Result]) -> dict[str, Result]:
    res = {r.clause: r for r in results}
    assert set(res) == ALL
    assert all(r.seen and "\n" not in r.seen for r in res.values()), res
    return res


@on_every_daemon
async def test_no_frontends_fails_the_pci_clauses_with_the_reason(
    tmp_path: Path, xenstored: str
) -> None:
    res = await judged(hostile_kernel(tmp_path, "no-frontends"), xenstored)
    assert res["startup.running"].verdict is Verdict.PASS
    for c in PCI_CLAUSES:
        assert res[c].verdict is Verdict.FAIL
        assert "pcifront did not come up" in res[c].seen, res[c]


@on_every_daemon
async def test_a_crash_after_running_fails_the_rest_as_dead(
    tmp_path: Path, xenstored: str
) -> None:
    k = hostile_kernel(tmp_path, "crash-after-running")
    res = by_clause(await check_stubdomain(k, [], FAST, xenstored=xenstored))
    assert res["startup.running"].verdict is Verdict.PASS, res["startup.running"]
    # The crash can come before create is done (create then fails on it) or after.
    dead = ("the stubdomain is dead (it crashed)",
            "the stubdomain died after its device model reported running (it crashed)")
    for c in ("pci-ins.result", "command.unknown", "save.paused", "loadvm.running"):
        assert res[c].verdict is Verdict.FAIL
        assert any(d in res[c].seen for d in dead), res[c]


@on_every_daemon
async def test_garbage_everywhere_is_judged(
    tmp_path: Path, xenstored: str
) -> None:
    res = await judged(hostile_kernel(tmp_path, "garbage"), xenstored)
    assert res["scope.writes"].verdict is Verdict.FAIL
    assert "changes to nodes it must not touch" in res["scope.writes"].seen
    assert res["save.paused"].verdict is Verdict.FAIL
    assert "unknown state" in res["save.paused"].seen


@on_every_daemon
async def test_a_silent_stub_fails_every_clause_but_scope(
    tmp_path: Path, xenstored: str
) -> None:
    res = await judged(hostile_kernel(tmp_path, "silent"), xenstored)
    assert {c for c, r in res.items() if r.verdict is Verdict.FAIL} == ALL - {"scope.writes"}
    assert "no running within 3 s" in res["startup.running"].seen
    assert "did not start" in res["pci-ins.result"].seen


@on_every_daemon
async def test_a_write_into_the_guest_and_target_is_caught(
    tmp_path: Path, xenstored: str
) -> None:
    res = await judged(hostile_kernel(tmp_path, "trespass"), xenstored)
    assert res["scope.writes"].verdict is Verdict.FAIL
    assert "/data/trespass" in res["scope.writes"].seen
    assert "/target" in res["scope.writes"].seen
    assert res["pci-ins.result"].verdict is Verdict.PASS


async def test_the_time_bound_fails_what_it_did_not_reach(tmp_path: Path) -> None:
    class Spent(Timeouts):
        def bound(self) -> float:
            return 0.0

    res = by_clause(await check_stubdomain(AGENT, [], Spent()))
    for c in ALL - {"scope.writes"}:
        assert res[c].verdict is Verdict.FAIL
        assert res[c].seen.startswith("not reached (time bound)"), res[c]


async def test_a_failing_step_of_the_kit_is_a_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Probes) -> None:
        raise RuntimeError("the kit's own bug")

    monkeypatch.setattr(Probes, "vcpu", broken)
    res = by_clause(await check_stubdomain(AGENT, [], FAST))
    assert res["vcpu-set"].verdict is Verdict.FAIL
    assert "the kit's step 'vcpu-set' failed" in res["vcpu-set"].seen
    assert res["loadvm.running"].verdict is Verdict.PASS


def test_bound_is_the_sum_of_the_step_budgets() -> None:
    from stubdom.conformance.stubdomain import _Run

    t = Timeouts(startup=7.0, command=3.0, refusal=2.0)
    run = _Run.__new__(_Run)
    run.t = t
    assert sum(s.budget for s in run.steps()) == pytest.approx(t.bound())
    out = subprocess.run([STUBDOM, "conformance", "stubdomain", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"{Timeouts().bound():g} s with the defaults" in " ".join(out.split())
    readme = (HERE.parents[1] / "README.md").read_text()
    assert f"({Timeouts().bound():g} s with the defaults)" in " ".join(readme.split())


def test_cli_reports_a_stub_without_frontends(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = subprocess.run([STUBDOM, "conformance", "stubdomain", "--report", str(report),
                        "--kernel", hostile_kernel(tmp_path, "no-frontends"),
                        "--startup-timeout", "3", "--command-timeout", "2",
                        "--refusal-timeout", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ")
    doc = json.loads(report.read_text())
    assert doc["failed"] is True and doc["ended"] == "complete"
    rows = {row["id"]: row for row in doc["results"]}
    assert set(rows) == ALL
    assert rows["pci-ins.result"]["verdict"] == "fail"
    assert "pcifront did not come up" in rows["pci-ins.result"]["seen"]
    assert any(line.startswith("fail") and " pci-ins.result " in line
               for line in r.stdout.splitlines())


def test_ctrl_c_still_writes_the_report(tmp_path: Path) -> None:
    report, marker = tmp_path / "r.json", tmp_path / "booted"
    p = subprocess.Popen([STUBDOM, "conformance", "stubdomain", "--report", str(report),
                          "--kernel", hostile_kernel(tmp_path, "silent"),
                          "--kernel-arg", str(marker), "--startup-timeout", "600"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(marker, p)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out + err
    assert "Traceback" not in err
    doc = json.loads(report.read_text())
    assert doc["ended"] == "interrupted" and doc["failed"] is True
    rows = {row["id"]: row for row in doc["results"]}
    assert set(rows) == ALL
    assert rows["startup.running"]["seen"] == "not reached (interrupted)"


def _wait_for(path: Path, p: subprocess.Popen[str]) -> None:
    """Until the stub has booted (it touches ``path``); the kit must not end first."""
    import time

    while not path.exists():
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)


@pytest.mark.parametrize("bad", [["--app-arg", "x"], ["--kernel-arg", "x", "--app", AGENT]])
def test_kernel_and_app_options_go_together(bad: list[str]) -> None:
    r = subprocess.run([STUBDOM, "conformance", "stubdomain", "--kernel", AGENT, *bad],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert os.linesep.join(r.stderr.splitlines()[-1:]).startswith("Error: ")


def faulty_kernel(tmp_path: Path, fault: str) -> str:
    k = tmp_path / f"faulty-{fault}"
    k.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE.parent / 'faults' / 'faulty_stub.py'} "
                 f"{HERE.parents[1]} {fault} \"$@\"\n")
    k.chmod(k.stat().st_mode | stat.S_IXUSR)
    return str(k)


@on_every_daemon
@pytest.mark.parametrize(
    ("fault", "clause"),
    [
        ("crash-before-running", "startup.running"),
        ("crash-on-pci-ins", "pci-ins.result"),
        ("garbage-parameter", "pci-ins.result"),
        ("running-twice", "pci-ins.result"),
        ("flood", "pci-ins.order"),
        ("delete-nodes", "scope.writes"),
        ("crash-mid-save", "save.complete"),
        ("short-save", "save.complete"),
        ("corrupt-restore", "loadvm.running"),
    ],
)
async def test_a_faulty_stub_is_caught_on_its_clause(tmp_path: Path, fault: str,
                                                     clause: str, xenstored: str) -> None:
    res = await judged(faulty_kernel(tmp_path, fault), xenstored)
    assert res[clause].verdict is Verdict.FAIL, res[clause]


def test_a_failure_of_the_kit_itself_still_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib
    from collections.abc import AsyncIterator

    from click.testing import CliRunner

    from stubdom.cli.conformance import conformance  # the verb, registered on import
    from stubdom.conformance import stubdomain

    @contextlib.asynccontextmanager
    async def no_host(*_: object) -> AsyncIterator[None]:
        raise OSError("no room for a host")
        yield  # pragma: no cover

    monkeypatch.setattr(stubdomain, "traced_host", no_host)
    report = tmp_path / "r.json"
    r = CliRunner().invoke(conformance, ["stubdomain", "--kernel", AGENT,
                                         "--report", str(report)])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    doc = json.loads(report.read_text())
    assert doc["ended"] == "kit error: OSError: no room for a host"
    assert {row["seen"] for row in doc["results"]} \
        == {"not reached (the kit failed: OSError: no room for a host)"}
