"""`stubdom.host.supervisor` called from Python: real host processes, this process their parent.

Each test has its own short run directory; the teardown stops whatever a failing test
left behind.  The CLI around the same calls is tested in test_cli_host.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.host import supervisor
from stubdom.host.rundir import RunDir, process_alive, processes_using
from stubdom.host.supervisor import SupervisorError
from stubdom.trace import load_trace
from stubdom.xenstore import Client
from tests.support.daemons import have_cx, have_ox, need_peer, short_tmpdir


@pytest.fixture
def rd() -> Iterator[RunDir]:
    d = RunDir.at(short_tmpdir("sup-"))
    yield d
    supervisor.stop(d)
    for pid in processes_using(d):  # only if stop itself failed
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d.root, ignore_errors=True)


def kill(pid: int) -> None:
    """SIGKILL, then wait (a failure guard only) until it is gone or a zombie."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not process_alive(pid)


async def _write_then_read(rd: RunDir, path: str, value: bytes | None) -> bytes | None:
    async with await Client.connect(str(rd.xenstored_socket)) as xs:
        if value is not None:
            await xs.write(path, value)
        return await xs.read_optional(path)


def test_probe_of_an_empty_directory_finds_nothing(rd: RunDir) -> None:
    found = supervisor.probe(rd)
    assert (found.healthy, found.anything) == (False, False)
    assert found.files == () and found.domains == ()


def test_start_probe_start_again_stop(rd: RunDir) -> None:
    notes: list[str] = []
    started = supervisor.start(rd, say=notes.append)
    assert not started.already_running and notes == []
    assert started.summary == (f"started in {rd.root} (host pid {started.host_pid}, "
                               f"xenstored pid {started.xenstored_pid})")
    found = supervisor.probe(rd)
    assert found.healthy
    assert (found.host_pid, found.xenstored_pid) == (started.host_pid, started.xenstored_pid)
    assert found.status is not None and found.status.pid == started.host_pid
    assert supervisor.live_xenstored(rd) == started.xenstored_pid

    again = supervisor.start(rd)
    assert again.already_running
    assert (again.host_pid, again.xenstored_pid) == (started.host_pid, started.xenstored_pid)
    assert again.summary.startswith(f"already running in {rd.root} (host pid")

    stopped = supervisor.stop(rd, say=notes.append)
    assert stopped == supervisor.Stopped(f"stopped the host in {rd.root}")
    assert notes == []
    for pid in (started.host_pid, started.xenstored_pid):
        assert not Path(f"/proc/{pid}").exists()  # gone, and reaped: no zombie of ours
    assert not supervisor.probe(rd).anything
    assert rd.host_log.exists() and rd.xenstored_log.exists()


def test_status_lists_domain0_and_refuses_a_host_that_is_not_running(rd: RunDir) -> None:
    supervisor.start(rd)
    status, domains = supervisor.host_status(rd)
    assert [d.domid for d in domains] == [0] and status.domains == 0
    supervisor.stop(rd)
    with pytest.raises(SupervisorError) as e:
        supervisor.host_status(rd)
    assert str(e.value) == (
        f"no stubdom host is running in {rd.root}; start one with 'stubdom host up'"
    )


def test_stop_when_nothing_runs_creates_nothing(rd: RunDir) -> None:
    assert supervisor.stop(rd).summary == f"nothing is running in {rd.root}"
    missing = RunDir.at(rd.root / "never")
    assert supervisor.stop(missing).summary == f"nothing is running in {missing.root}"
    assert not missing.root.exists()


def test_a_crashed_host_is_tidied_by_stop(rd: RunDir) -> None:
    started = supervisor.start(rd)
    kill(started.host_pid)
    kill(started.xenstored_pid)
    with pytest.raises(SupervisorError, match="stale files are left"):
        supervisor.host_status(rd)
    stopped = supervisor.stop(rd)
    assert stopped.summary == (
        f"nothing was running in {rd.root}; removed stale pid files and sockets"
    )
    assert not supervisor.probe(rd).anything


def test_start_cleans_up_a_half_dead_host_and_says_so(rd: RunDir) -> None:
    first = supervisor.start(rd)
    kill(first.host_pid)
    notes: list[str] = []
    second = supervisor.start(rd, say=notes.append)
    assert notes == [f"cleaning up what is left of an earlier host in {rd.root}"]
    assert not second.already_running
    assert not process_alive(first.xenstored_pid)
    assert process_alive(second.host_pid) and process_alive(second.xenstored_pid)


def test_a_running_host_refuses_options_it_cannot_apply(rd: RunDir) -> None:
    trace = rd.root / "t.jsonl"
    started = supervisor.start(rd, trace=str(trace))
    assert trace.stat().st_size > 0  # the host daemon's own requests
    assert supervisor.start(rd, trace=str(trace)).already_running
    other = rd.root / "other.jsonl"
    with pytest.raises(SupervisorError) as e:
        supervisor.start(rd, trace=str(other))
    assert str(e.value) == (
        f"the host in {rd.root} is already running and traces to {trace}, so --trace "
        f"{other} cannot apply; run 'stubdom host down' first"
    )
    with pytest.raises(SupervisorError, match="without --durable, so --durable cannot apply"):
        supervisor.start(rd, durable=True)
    assert supervisor.probe(rd).host_pid == started.host_pid
    assert not other.exists()


@pytest.mark.peer
@pytest.mark.parametrize("daemon", ["cx", "ox"])
def test_a_real_daemon_is_traced_through_the_host_daemons_proxy(rd: RunDir, daemon: str) -> None:
    need_peer(have_cx() if daemon == "cx" else have_ox(), f"{daemon} and gcc")
    with pytest.raises(SupervisorError, match=f"--durable needs our xenstored, which {daemon}"):
        supervisor.start(rd, durable=True, xenstored=daemon)
    with pytest.raises(SupervisorError) as refused:
        supervisor.start(rd, trace="/nonexistent/t.jsonl", xenstored=daemon)
    assert str(refused.value) == ("cannot open the trace file /nonexistent/t.jsonl: "
                                  "No such file or directory; choose another --trace")
    assert not supervisor.probe(rd).anything
    trace = rd.root / "t.jsonl"
    started = supervisor.start(rd, trace=str(trace), xenstored=daemon)
    # The daemon's own socket moved aside; dom0's is the proxy's, in the host daemon.
    assert rd.real_xenstored_socket.is_socket() and rd.xenstored_socket.is_socket()
    assert supervisor.start(rd, trace=str(trace), xenstored=daemon).already_running
    with pytest.raises(SupervisorError, match=f"already running and traces to {trace}, so"):
        supervisor.start(rd, trace=str(rd.root / "other.jsonl"), xenstored=daemon)

    async def write() -> None:
        xs = await Client.connect(str(rd.xenstored_socket))
        try:
            await xs.write("/traced", "yes")
        finally:
            await xs.close()

    asyncio.run(write())
    supervisor.stop(rd)
    assert not process_alive(started.xenstored_pid)
    events = load_trace(trace)
    assert any(e.op == "WRITE" and e.path == "/local/domain/0/name" for e in events)
    mine = [e for e in events if e.path == "/traced"]
    assert [(e.op, e.dom, e.value, e.reply_type) for e in mine] == [("WRITE", 0, "yes", "WRITE")]
    assert all(e.reply_type is not None for e in events if e.kind != "event")


def test_restart_needs_a_durable_host(rd: RunDir) -> None:
    supervisor.start(rd)
    with pytest.raises(SupervisorError) as e:
        supervisor.restart_xenstored(rd)
    assert str(e.value) == (
        f"the xenstored of the host in {rd.root} keeps no state, so a restart would lose "
        "the tree; start the host with 'stubdom host up --durable'"
    )


def test_restart_of_a_host_that_is_not_running(rd: RunDir) -> None:
    with pytest.raises(SupervisorError) as e:
        supervisor.restart_xenstored(rd)
    assert str(e.value) == (
        f"xenstored of the host in {rd.root} is not running; "
        "'stubdom host down' then 'stubdom host up --durable'"
    )
    missing = RunDir.at(rd.root / "never")
    with pytest.raises(SupervisorError) as e:
        supervisor.restart_xenstored(missing)
    assert str(e.value).startswith(f"no stubdom host is running in {missing.root};")


@pytest.mark.parametrize("crash", [False, True])
def test_restart_keeps_the_tree_of_a_durable_host(rd: RunDir, crash: bool) -> None:
    started = supervisor.start(rd, durable=True)
    asyncio.run(_write_then_read(rd, "/kept", b"yes"))
    restarted = supervisor.restart_xenstored(rd, kill=crash)
    assert restarted.old_pid == started.xenstored_pid != restarted.new_pid
    assert restarted.summary == (
        f"xenstored restarted in {rd.root} (pid {restarted.old_pid} -> {restarted.new_pid})"
    )
    assert not Path(f"/proc/{started.xenstored_pid}").exists()
    assert supervisor.live_xenstored(rd) == restarted.new_pid
    assert asyncio.run(_write_then_read(rd, "/kept", None)) == b"yes"


def test_a_daemon_that_cannot_start_leaves_nothing_running(rd: RunDir) -> None:
    (rd.root / "host.sock").mkdir()
    (rd.root / "host.sock" / "in-the-way").write_text("")  # the API cannot bind
    with pytest.raises(SupervisorError) as e:
        supervisor.start(rd)
    assert str(e.value).startswith(f"the host daemon did not start in {rd.root}")
    assert str(e.value).endswith(f"(see {rd.host_log})")
    assert len(str(e.value).splitlines()) == 1
    assert processes_using(rd) == []
    assert not rd.xenstored_pid.exists()


def test_a_directory_too_long_for_sockets_is_refused() -> None:
    long = RunDir.at(Path("/tmp") / ("s" * 90))
    for call in (supervisor.start, supervisor.stop, supervisor.host_status):
        with pytest.raises(SupervisorError, match="is too long for unix sockets"):
            call(long)
    assert not long.root.exists()
