"""Domains of a host whose daemons were killed with SIGKILL die with the next up or down.

Domain processes are sessions of their own, so they outlive a host daemon killed by
SIGKILL.  ``host down`` (or the clean-up of ``host up``) must find them, and return
only once they are gone: a left-over stubdomain would reconnect to the next host's
xenstored as whichever domain gets its domid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.host.api import RemoteHypervisor
from stubdom.host.hypervisor import DomainConfig
from stubdom.host.rundir import RunDir, process_alive, processes_using
from tests.support.daemons import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]

#: A domain that ignores SIGTERM and has a child of its own.
STUBBORN = "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\nwait\n"


def stubdom(rd: RunDir, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STUBDOM_HOST_DIR": str(rd.root)}
    return subprocess.run([sys.executable, "-m", "stubdom", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def marked(rd: RunDir) -> list[int]:
    """Processes whose environment names one of the host's domain sockets (scan of /proc,
    written here rather than borrowed from the code under test)."""
    marker = f"XENSTORED_PATH={rd.xenstored_socket}.d/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(v.startswith(marker) for v in env) and process_alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.fixture
def rd() -> Iterator[RunDir]:
    d = RunDir.at(short_tmpdir("orph-"))
    yield d
    stubdom(d, "host", "down")
    for pid in {*processes_using(d), *marked(d)}:  # only if the code under test failed
        os.kill(pid, signal.SIGKILL)


def guest_config(rd: RunDir) -> Path:
    """A guest whose stubdomain is the CLI tests' stub kernel (the fake qemu-trad)."""
    kernel = rd.root / "stub-kernel"
    kernel.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT}/tests/toolstack/stub_kernel.py"
                      f" {ROOT}\n")
    kernel.chmod(0o755)
    cfg = rd.root / "g.cfg"
    cfg.write_text('type = "hvm"\nname = "g"\nmemory = 128\n'
                   'device_model_version = "qemu-xen-traditional"\n'
                   "device_model_stubdomain_override = 1\n"
                   f'stubdomain_kernel = "{kernel}"\n')
    return cfg


async def _stubborn_domains(rd: RunDir) -> list[int]:
    """One running and one paused domain that ignore SIGTERM; their pids."""
    kernel = rd.root / "stubborn.sh"
    kernel.write_text(STUBBORN)
    kernel.chmod(0o755)
    async with await RemoteHypervisor.connect(rd.root) as hv:
        for name in ("running", "paused"):
            domid = await hv.create_domain(DomainConfig(name, max_memkb=65536))
            await hv.build_pv(domid, str(kernel))
            await hv.unpause(domid)
        await hv.pause(domid)
        return [d.pid for d in await hv.list_domains() if d.pid and d.name in ("running", "paused")]


@pytest.mark.parametrize("verb", ["down", "up"])
def test_domains_of_a_killed_host_are_gone_when_the_next_verb_returns(
    rd: RunDir, verb: str
) -> None:
    assert stubdom(rd, "host", "up").returncode == 0
    created = stubdom(rd, "create", str(guest_config(rd)))
    assert created.returncode == 0, created.stderr
    stubborn = asyncio.run(_stubborn_domains(rd))
    before = marked(rd)  # the stubdomain g-dm, the stubborn ones and their children
    assert len(stubborn) == 2 and set(stubborn) < set(before)

    for pid_file in (rd.host_pid, rd.xenstored_pid):
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
    assert all(process_alive(pid) for pid in stubborn)  # orphans now

    r = stubdom(rd, "host", verb)
    assert r.returncode == 0, r.stderr
    assert [pid for pid in before if process_alive(pid)] == []
    assert marked(rd) == []
    assert not list(rd.domains.glob("*.tmp"))  # their TMPDIRs went too
    if verb == "up":
        assert "cleaning up" in r.stderr
        assert stubdom(rd, "host", "down").returncode == 0
    else:
        # How many: those that had not ended by themselves once xenstored was gone.
        assert re.fullmatch(f"stubdom host: nothing was running in {re.escape(str(rd.root))}; "
                            r"killed [1-9]\d* domain process\(es\) a dead host left, removed "
                            "stale pid files and sockets\n", r.stderr), r.stderr


def test_a_shell_pointed_at_a_domain_socket_is_not_taken_for_a_domain(rd: RunDir) -> None:
    """Someone's ``XENSTORED_PATH=DIR/xenstored/socket.d/5 sh`` is not a domain of ours."""
    env = {"PATH": os.defpath, "XENSTORED_PATH": f"{rd.xenstored_socket}.d/5"}
    bystander = subprocess.Popen(["sleep", "1000"], env=env, start_new_session=True)
    try:
        r = stubdom(rd, "host", "down")
        assert (r.returncode, r.stderr) == (0, f"stubdom host: nothing is running in {rd.root}\n")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
