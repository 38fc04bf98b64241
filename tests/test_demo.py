"""`make demo` (`stubdom demo`): the whole protocol story, end to end, on both backends.

Every step must pass, the summary table must list them, the output directory must hold
what the demo wrote, and nothing may be left behind: no process whose command line
names the output directory, no socket or pid file in the host's run directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stubdom.demo import DemoError, DemoResult, NodeWrite, Step, run_demo
from tests.support.daemons import (
    need_peer,
    on_every_daemon,
    short_tmpdir,
)

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "host up", "create (stubdomain)", "wait for running", "pci-attach 04:00.0", "pci-list",
    "pci-detach 04:00.0", "pci-detach 03:00.0", "save", "restore", "destroy", "host down",
]


def processes_naming(text: str) -> list[int]:
    """Pids whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def check_story(out: Path, backend: str, config: Path | None = None, name: str = "demo",
                xenstored: str = "ours") -> None:
    lines: list[str] = []
    result = asyncio.run(run_demo(out, backend, config=config, echo=lines.append,
                                  xenstored=xenstored))
    text = "\n".join(lines)
    assert result.ok
    assert [s.name for s in result.steps] == STEPS
    assert all(s.ok and s.seconds >= 0 for s in result.steps)
    # Steps are shown as they happen, with who wrote which node.
    assert "dom0       wrote /local/domain/2/device-model/1/command = 'pci-ins'" in text
    assert "stub d2    wrote /local/domain/2/device-model/1/state = 'pci-inserted'  (n2,r1)" in text
    assert "stub d2    wrote /local/domain/2/device-model/1/state = 'pci-removed'" in text
    assert "stub d2    wrote /local/domain/2/device-model/1/state = 'paused'" in text
    assert "a saved guest cannot keep them" in text
    assert f"/image/dmargs = ' -d 1 -domain-name {name}" in text and "(n0,r2)" in text
    # The summary table, after the steps.
    table = result.table()
    assert table in text
    for s in result.steps:
        assert re.search(rf"^ *{s.number} +{re.escape(s.name)} ", table, re.M), s.name
    assert table.endswith(f"{len(STEPS)} steps, {sum(s.seconds for s in result.steps):.2f}s, "
                          "all steps passed")
    # The output directory holds what the demo wrote; the run directory is in it.
    assert result.run_dir == out / "host"
    assert (out / "demo.save").read_bytes().startswith(b"Xen saved domain, xl format")
    assert result.trace == out / "trace.jsonl" and result.trace.stat().st_size > 0
    assert result.picture == out / "trace.svg"
    assert result.picture.read_text().lstrip().startswith(("<svg", "<?xml"))
    # Nothing is left behind.
    assert processes_naming(str(out)) == []
    run = out / "host"
    assert not any(p.is_socket() for p in run.rglob("*"))
    assert not list(run.glob("*.pid")) and not (run / "host.sock").exists()


@on_every_daemon
def test_the_story_on_the_sim_device_model(xenstored: str) -> None:
    """On every daemon: cx's and ox's trace comes from the host's proxy and relays."""
    check_story(short_tmpdir("demo-"), "sim", xenstored=xenstored)


def test_the_story_with_a_channel_only_device_model_under_stubdom_minios() -> None:
    check_story(short_tmpdir("demo-m-"), "sim", ROOT / "examples" / "minios.cfg", "minios")


@pytest.mark.peer
def test_the_story_on_qemu() -> None:
    need_peer(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    check_story(short_tmpdir("demo-q-"), "qemu")


def test_a_failed_step_fails_the_demo_and_still_stops_the_host() -> None:
    out = short_tmpdir("demo-f-")
    cfg = out / "bad.cfg"
    shutil.copytree(ROOT / "examples" / "images", out / "images")
    cfg.write_text((ROOT / "examples" / "demo.cfg").read_text()
                   + "\nstubdomain_kernel = '/bin/false'\n")
    lines: list[str] = []
    with pytest.raises(DemoError) as e:
        asyncio.run(run_demo(out, "sim", cfg, echo=lines.append))
    result = e.value.result
    assert result is not None and not result.ok
    assert [s.name for s in result.steps] == ["host up", "create (stubdomain)", "host down"]
    assert [s.ok for s in result.steps] == [True, False, True]
    assert "step 2 (create (stubdomain)) failed" in str(e.value)
    assert "FAILED" in result.table()
    assert processes_naming(str(out)) == []


def test_the_command_exits_non_zero_on_failure_and_zero_on_success() -> None:
    out = short_tmpdir("demo-c-")
    ok = subprocess.run([sys.executable, "-m", "stubdom", "demo", "--out", str(out)],
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "all steps passed" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "stubdom", "demo", "--out", str(out),
                          "--backend", "nope"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2


def test_the_xenstore_demo_still_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "xenstore_demo.py")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "perms n1" in out and "EACCES" in out
    assert out.count("@releaseDomain fired, socket removed: True") == 2


@pytest.mark.parametrize("width", [60, 80, 132, 250])
def test_the_summary_fits_the_terminal_and_cuts_no_word(width: int) -> None:
    long = ("stubdomain = domain 4, from the saved device-model state of "
            "/a/rather/long/output/directory/with/many/parts/demo.save")
    result = DemoResult(Path("/o"), Path("/o/host"), "sim", steps=[
        Step(1, "host up", ok=True, result="started", seconds=0.31),
        Step(2, "restore", ok=True, result=long, seconds=0.24, nodes=[
            NodeWrite("stub d4", "/local/domain/4/device-model/3/state", "running")]),
        Step(3, "destroy", ok=False, result="x" * 150, seconds=1.5),
    ])
    table = result.table(width)
    lines = table.splitlines()
    assert all(len(line) <= max(width, 60) for line in lines), table

    def column(name: str, until: str) -> str:
        start, end = lines[0].index(name), lines[0].index(until) - 1
        return "".join(line[start:end] for line in lines[2:-1]).replace(" ", "")

    results, nodes = column("result", "time"), column("last protocol node", "result")
    for text in (long, "x" * 150, "FAILED:"):
        assert text.replace(" ", "") in results, text
    assert "stubd4:state=running" in nodes
    assert lines[-1] == "3 steps, 2.05s, FAILED"


def test_a_step_reads_only_whole_trace_lines_written_after_it_began(tmp_path: Path) -> None:
    """xenstored may be writing a line as a step begins or ends: neither half is read."""
    from stubdom.demo import _traced_since

    def line(n: int) -> bytes:
        return (json.dumps({"t": 0, "dir": "in", "conn": 1, "dom": 0, "type": "WRITE",
                            "req_id": n, "tx_id": 0, "payload": f"/n{n}\0v"}) + "\n").encode()

    def ids(offset: int) -> list[int]:
        return [ev.req_id for ev in _traced_since(trace, offset)]

    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(line(1) + line(2) + line(3)[:10])
    assert ids(0) == [1, 2]
    assert ids(len(line(1))) == [2]
    assert ids(len(line(1)) + 5) == []  # in the middle of line 2: not the step's
    assert ids(trace.stat().st_size) == []
