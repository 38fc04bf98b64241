"""The stubdomain mode with a device model under the Mini-OS layer (``--app``): the
qemu-trad-faithful model passes every clause qemu-trad satisfies and is "not supported"
on the rest, and each defect is caught on its clause."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stubdom.cli.conformance import find_program, minios_layer
from stubdom.conformance.report import Verdict
from stubdom.conformance.stubdomain import Timeouts, check_stubdomain
from tests.conformance.judging import assert_judged_as_qemu_trad, by_clause
from tests.support.daemons import on_every_daemon

HERE = Path(__file__).resolve().parent
STUBDOM = str(Path(sys.executable).with_name("stubdom"))
FAST = Timeouts(startup=5.0, command=3.0, refusal=1.0)
#: What qemu-traditional never does.


def layer() -> str:
    found = minios_layer()
    if found is None or qemu_trad() is None:
        pytest.skip("the Mini-OS layer (stubdom-minios) and its qemu-trad model are not here")
    return found


def qemu_trad() -> str | None:
    """The layer's qemu-trad-faithful device model (``stubdom-qemu-trad-dm``)."""
    return find_program("stubdom-qemu-trad-dm")


# Every run of the kit here, the full clause run and the broken and hostile apps, on
# every xenstored.
@on_every_daemon
async def test_the_qemu_trad_model_passes_what_qemu_trad_does(xenstored: str) -> None:
    res = by_clause(await check_stubdomain(layer(), [str(qemu_trad())], FAST,
                                           xenstored=xenstored))
    assert_judged_as_qemu_trad(res)


@on_every_daemon
@pytest.mark.parametrize(
    ("variant", "clause"),
    [
        ("keep-command", "command.deleted"),
        ("state-first", "pci-ins.order"),
        ("never-running", "startup.running"),
        ("paused-early", "save.complete"),
        ("truncated-save", "save.complete"),
        ("crash-on-pci-ins", "pci-ins.result"),
        ("silent", "pci-ins.result"),
        ("garbage-state", "pci-ins.result"),
    ],
)
async def test_a_broken_app_is_caught(variant: str, clause: str, xenstored: str) -> None:
    t = Timeouts(startup=2.0, command=2.0, refusal=1.0)
    args = [sys.executable, str(HERE / "broken_app.py"), variant]
    res = by_clause(await check_stubdomain(layer(), args, t, xenstored=xenstored))
    assert res[clause].verdict is Verdict.FAIL, res[clause]


def test_cli_app_option(tmp_path: Path) -> None:
    layer()
    report = tmp_path / "r.json"
    r = subprocess.run([STUBDOM, "conformance", "stubdomain", "--app", "stubdom-qemu-trad-dm",
                        "--report", str(report)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["id"]: row for row in json.loads(report.read_text())["results"]}
    assert rows["pci-ins.failed-state"]["verdict"] == "not supported"
    assert any(line.startswith("not supported") and " pci-rem.failed-state " in line
               for line in r.stdout.splitlines())


def test_cli_app_refuses_a_word_with_a_space(tmp_path: Path) -> None:
    r = subprocess.run([STUBDOM, "conformance", "stubdomain", "--app", sys.executable,
                        "--app-arg", "two words"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot hold one" in r.stderr


@on_every_daemon
@pytest.mark.parametrize(
    ("variant", "clause", "seen"),
    [
        # The layer may still be ending when the kit hot-plugs: then pcifront's half-done
        # reconfiguration is the reason instead of the death.  Either way: a failure.
        ("crash-after-running", "pci-ins.result",
         ("the stubdomain is dead (it crashed)", "backend/pci/")),
        ("silent", "startup.running", ("no running within 2 s",)),
        ("garbage", "scope.writes", ("changes to nodes it must not touch",)),
    ],
)
async def test_a_hostile_app_is_judged(
    variant: str, clause: str, seen: tuple[str, ...], xenstored: str) -> None:
    t = Timeouts(startup=2.0, command=2.0, refusal=1.0)
    args = [sys.executable, str(HERE / "hostile_dm.py"), variant]
    res = by_clause(await check_stubdomain(layer(), args, t, xenstored=xenstored))
    assert res[clause].verdict is Verdict.FAIL, res[clause]
    assert any(s in res[clause].seen for s in seen), res[clause]
