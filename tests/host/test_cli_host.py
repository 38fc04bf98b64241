"""``stubdom host up/status/list/down`` as a user runs them: real subprocesses.

Each test gets its own short run directory (``--dir``), so hosts never meet, and the
teardown stops whatever a failing test left behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.cli.common import XL_LIST_HEADER
from stubdom.host.api import RemoteHypervisor
from stubdom.host.hypervisor import DomainConfig
from stubdom.host.rundir import RunDir, process_alive, processes_using
from stubdom.toolstack.records import DomainRecord, make_domain
from stubdom.xenstore import Client
from tests.support.daemons import need_peer, short_tmpdir

#: A row of ``xl list``: "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f".
ROW = re.compile(r"^(.{40}) ([ \d]{5}) ([ \d]{5}) ([ \d]{5})     ([-rbpscwSd]{6})  ([ \d.]{8})$")


def stubdom(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("STUBDOM_HOST_DIR", "XENSTORED_PATH")}
    return subprocess.run(
        [sys.executable, "-m", "stubdom", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
    )


def pids(rd: RunDir) -> tuple[int, int]:
    return int(rd.host_pid.read_text()), int(rd.xenstored_pid.read_text())


def wait_gone(pid: int) -> None:
    """Failure guard only: an orphan we killed may take a moment to be reaped."""
    deadline = time.monotonic() + 30
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not process_alive(pid), f"process {pid} is still alive"


@pytest.fixture
def rd() -> Iterator[RunDir]:
    d = RunDir.at(short_tmpdir("h-"))
    yield d
    stubdom("host", "down", "--dir", str(d.root))
    for pid in processes_using(d):  # only if down itself failed
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d.root, ignore_errors=True)


def up(rd: RunDir) -> subprocess.CompletedProcess[str]:
    r = stubdom("host", "up", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    return r


def assert_nothing_left(rd: RunDir, recorded: tuple[int, ...]) -> None:
    for pid in recorded:
        assert not process_alive(pid), f"pid {pid} survived 'host down'"
    assert processes_using(rd) == []
    for p in (*rd.pid_files(), *rd.sockets(), rd.xenstored_socket.parent):
        assert not p.exists(), f"{p} survived 'host down'"
    sockets = [p for p in rd.root.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
    assert sockets == []


def test_up_prints_the_exports_and_is_idempotent(rd: RunDir) -> None:
    first = up(rd)
    assert first.stdout == (
        f"export XENSTORED_PATH={rd.xenstored_socket}\nexport STUBDOM_HOST_DIR={rd.root}\n"
    )
    assert f"started in {rd.root}" in first.stderr
    recorded = pids(rd)
    assert all(process_alive(p) for p in recorded)
    assert stat.S_ISSOCK(rd.xenstored_socket.stat().st_mode)
    assert stat.S_ISSOCK(rd.host_socket.stat().st_mode)

    second = up(rd)
    assert second.stdout == first.stdout
    assert "already running" in second.stderr
    assert pids(rd) == recorded


def test_up_on_a_running_host_refuses_options_it_cannot_apply(rd: RunDir) -> None:
    """A second ``up --trace`` would otherwise trace nothing while saying nothing."""
    up(rd)
    recorded = pids(rd)
    other = rd.root / "other.jsonl"
    r = stubdom("host", "up", "--dir", str(rd.root), "--trace", str(other))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"Error: the host in {rd.root} is already running and traces nothing, so --trace "
        f"{other} cannot apply; run 'stubdom host down' first\n"
    )
    r = stubdom("host", "up", "--dir", str(rd.root), "--durable")
    assert r.returncode == 1 and "without --durable" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert pids(rd) == recorded  # the running host is left alone
    assert not other.exists()


def test_up_again_with_the_same_trace_is_idempotent(rd: RunDir) -> None:
    trace = rd.root / "t.jsonl"
    assert stubdom("host", "up", "--dir", str(rd.root), "--trace", str(trace)).returncode == 0
    again = stubdom("host", "up", "--dir", str(rd.root), "--trace", str(trace))
    assert again.returncode == 0 and "already running" in again.stderr
    r = stubdom("host", "up", "--dir", str(rd.root), "--trace", str(rd.root / "t2.jsonl"))
    assert r.returncode == 1 and f"traces to {trace}, so --trace" in r.stderr


@pytest.mark.peer
def test_eval_of_up_points_xenstore_tools_at_the_host(rd: RunDir) -> None:
    need_peer(shutil.which("xenstore-ls") is not None, "xenstore-ls (Debian xenstore-utils)")
    script = (
        f'eval "$({sys.executable} -m stubdom host up --dir {rd.root} 2>/dev/null)" && '
        f"xenstore-ls -f /local/domain/0 && {sys.executable} -m stubdom host status"
    )
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '/local/domain/0/name = "Domain-0"' in r.stdout
    assert f"stubdom host running in {rd.root}" in r.stdout  # found via STUBDOM_HOST_DIR


def test_status_while_running_and_after_down(rd: RunDir) -> None:
    up(rd)
    host_pid, xs_pid = pids(rd)
    r = stubdom("host", "status", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"stubdom host running in {rd.root}"
    assert f"pid {host_pid}," in lines[1] and str(rd.host_socket) in lines[1]
    assert f"pid {xs_pid}," in lines[2] and f"XENSTORED_PATH={rd.xenstored_socket}" in lines[2]
    assert lines[3].split() == ["domains", "0"]
    assert lines[5] == XL_LIST_HEADER
    assert lines[6].startswith("Domain-0 ")

    assert stubdom("host", "down", "--dir", str(rd.root)).returncode == 0
    r = stubdom("host", "status", "--dir", str(rd.root))
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        f"Error: no stubdom host is running in {rd.root}; start one with 'stubdom host up'\n"
    )


def test_list_has_the_xl_format_with_domain0_first(rd: RunDir) -> None:
    up(rd)
    r = stubdom("host", "list", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    m = ROW.match(rows[0])
    assert m, rows[0]
    assert m[1].rstrip() == "Domain-0" and int(m[2]) == 0 and m[5] == "r-----"


def test_down_leaves_no_process_socket_or_pid_file(rd: RunDir) -> None:
    up(rd)
    recorded = pids(rd)
    r = stubdom("host", "down", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert f"stopped the host in {rd.root}" in r.stderr
    assert "warning" not in r.stderr
    assert_nothing_left(rd, recorded)
    assert rd.host_log.exists() and rd.xenstored_log.exists()  # logs stay
    assert "host daemon stopped" in rd.host_log.read_text()


def test_down_when_nothing_runs(rd: RunDir) -> None:
    r = stubdom("host", "down", "--dir", str(rd.root))
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == f"stubdom host: nothing is running in {rd.root}\n"
    missing = rd.root / "never"
    r = stubdom("host", "down", "--dir", str(missing))
    assert (r.returncode, r.stderr) == (0, f"stubdom host: nothing is running in {missing}\n")
    assert not missing.exists()


def test_stale_pid_files_of_a_crashed_host(rd: RunDir) -> None:
    up(rd)
    recorded = pids(rd)
    for pid in recorded:
        os.kill(pid, signal.SIGKILL)
    for pid in recorded:
        wait_gone(pid)
    assert rd.host_pid.exists()

    r = stubdom("host", "status", "--dir", str(rd.root))
    assert r.returncode == 1
    assert "no stubdom host is running" in r.stderr and "stale" in r.stderr
    assert len(r.stderr.splitlines()) == 1

    r = stubdom("host", "down", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    assert "removed stale pid files and sockets" in r.stderr
    assert_nothing_left(rd, recorded)

    # ... and up after a crash starts afresh.
    up(rd)
    assert pids(rd) != recorded


def test_stale_pid_of_an_unrelated_process_is_not_signalled(rd: RunDir) -> None:
    rd.root.mkdir(exist_ok=True)
    rd.host_pid.write_text(f"{os.getpid()}\n")  # reused by someone else: us
    r = stubdom("host", "down", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    assert not rd.host_pid.exists()
    assert process_alive(os.getpid())


def test_up_cleans_up_a_half_dead_host(rd: RunDir) -> None:
    up(rd)
    host_pid, xs_pid = pids(rd)
    os.kill(host_pid, signal.SIGKILL)
    wait_gone(host_pid)
    r = stubdom("host", "up", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    assert "cleaning up" in r.stderr
    assert not process_alive(xs_pid)
    new_host, new_xs = pids(rd)
    assert process_alive(new_host) and process_alive(new_xs)


def test_a_dir_too_long_for_unix_sockets(tmp_path: Path) -> None:
    long_dir = Path("/tmp") / ("d" * 90)
    for verb in ("up", "status", "down"):
        r = stubdom("host", verb, "--dir", str(long_dir))
        assert r.returncode == 1, verb
        assert len(r.stderr.splitlines()) == 1
        assert f"run directory {long_dir} is too long for unix sockets" in r.stderr
        assert "use a --dir of at most" in r.stderr
    assert not long_dir.exists()


def test_the_environment_variable_names_the_dir(rd: RunDir) -> None:
    env = {"STUBDOM_HOST_DIR": str(rd.root)}
    r = stubdom("host", "up", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"export XENSTORED_PATH={rd.xenstored_socket}\n"
    assert stubdom("host", "status", env=env).returncode == 0
    assert stubdom("host", "down", env=env).returncode == 0
    assert not rd.host_pid.exists()


def test_host_without_arguments_shows_its_verbs() -> None:
    r = stubdom("host", "--help")
    assert r.returncode == 0
    for verb in ("up", "status", "list", "down"):
        assert f"  {verb} " in r.stdout
    assert "daemon" not in r.stdout  # internal


# -- with domains ---------------------------------------------------------------------


KERNEL = "#!/bin/sh\nexec sleep 1000\n"


async def _create_running_domain(rd: RunDir, kernel: Path, name: str) -> tuple[int, int]:
    """What a toolstack does: create, build, write the records, unpause."""
    async with await RemoteHypervisor.connect(rd.root) as hv:
        domid = await hv.create_domain(DomainConfig(name, max_memkb=131072))
        await hv.build_pv(domid, str(kernel))
        info = await hv.domain_info(domid)
        async with await Client.connect(str(rd.xenstored_socket)) as xs:
            await make_domain(xs, DomainRecord(domid, name, info.uuid, max_memkb=131072))
        await hv.unpause(domid)
        info = await hv.domain_info(domid)
        assert info.pid is not None
        return domid, info.pid


def test_domains_show_in_list_and_xenstore_and_die_with_down(rd: RunDir) -> None:
    up(rd)
    kernel = rd.root / "kernel.sh"
    kernel.write_text(KERNEL)
    kernel.chmod(0o755)
    domid, dom_pid = asyncio.run(_create_running_domain(rd, kernel, "guest1"))
    assert process_alive(dom_pid)

    r = stubdom("host", "list", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    rows = [ROW.match(line) for line in r.stdout.splitlines()[1:]]
    assert all(rows), r.stdout
    assert [(m[1].rstrip(), int(m[2])) for m in rows if m] == [("Domain-0", 0), ("guest1", domid)]
    guest = rows[1]
    assert guest is not None and int(guest[3]) == 128 and int(guest[4]) == 1
    assert guest[5] in ("r-----", "-b----")

    status = stubdom("host", "status", "--dir", str(rd.root))
    assert status.stdout.splitlines()[3].split() == ["domains", "1"]

    if shutil.which("xenstore-ls") is not None:
        ls = subprocess.run(
            ["xenstore-ls", "-f", f"/local/domain/{domid}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "XENSTORED_PATH": str(rd.xenstored_socket)},
        )
        assert ls.returncode == 0, ls.stderr
        assert f'/local/domain/{domid}/name = "guest1"' in ls.stdout

    recorded = pids(rd)
    r = stubdom("host", "down", "--dir", str(rd.root))
    assert r.returncode == 0, r.stderr
    assert_nothing_left(rd, (*recorded, dom_pid))  # the domain's process too


def test_a_daemon_that_cannot_start_is_a_one_line_error(rd: RunDir) -> None:
    (rd.root / "host.sock").mkdir()
    (rd.root / "host.sock" / "in-the-way").write_text("")  # the API cannot bind
    r = stubdom("host", "up", "--dir", str(rd.root))
    assert r.returncode == 1
    assert r.stdout == ""
    error = r.stderr.splitlines()[-1]
    assert error.startswith(f"Error: the host daemon did not start in {rd.root}")
    assert error.endswith(f"(see {rd.host_log})")
    assert processes_using(rd) == []  # xenstored, started first, was stopped again
    assert not rd.xenstored_pid.exists()


def test_a_run_dir_that_cannot_be_created(rd: RunDir) -> None:
    blocker = rd.root / "file"
    blocker.write_text("")
    r = stubdom("host", "up", "--dir", str(blocker / "sub"))
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: cannot create run directory {blocker / 'sub'}: Not a directory; "
        "choose another with --dir or $STUBDOM_HOST_DIR\n"
    )


def test_sigterm_stops_the_daemon_cleanly(rd: RunDir) -> None:
    up(rd)
    host_pid, xs_pid = pids(rd)
    os.kill(host_pid, signal.SIGTERM)
    wait_gone(host_pid)
    assert not rd.host_socket.exists() and not rd.host_pid.exists()
    assert "host daemon stopped" in rd.host_log.read_text()
    r = stubdom("host", "down", "--dir", str(rd.root))  # xenstored is left to stop
    assert r.returncode == 0, r.stderr
    assert_nothing_left(rd, (host_pid, xs_pid))


def test_status_says_when_xenstored_died(rd: RunDir) -> None:
    up(rd)
    _, xs_pid = pids(rd)
    os.kill(xs_pid, signal.SIGKILL)
    wait_gone(xs_pid)
    r = stubdom("host", "status", "--dir", str(rd.root))
    assert r.returncode == 1
    assert "xenstored    NOT RUNNING" in r.stdout
    assert r.stderr.startswith("Error: xenstored of the host in")
