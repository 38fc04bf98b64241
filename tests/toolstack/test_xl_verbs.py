"""The xl verbs people reach for, on a real `stubdom host`: list's columns, shutdown,
reboot, mem-set, vcpu-set, rename, info, dmesg, console, create -n/-c/-V."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from tests.support.daemons import on_every_daemon
from tests.toolstack.clihost import Host, Row, read_until, running_host

# On cx and ox too (README, "On the real daemons"): every test marked @on_every_daemon,
# the verbs that write or watch xenstore (mem-set, vcpu-set, shutdown, reboot, rename,
# consoles).  On ours alone: list, info, dmesg and create -n, answered by the
# hypervisor or the host's log without a xenstore request of their own.


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    yield from running_host("tsxl-", xenstored)


BIG = ("memory = 128", "maxmem = 256", "maxvcpus = 4")


def test_list_shows_current_memory_and_online_vcpus(host: Host) -> None:
    host.run("create", str(host.config("win7", *BIG)))
    win7 = host.row("win7")
    assert win7 is not None and (win7.mem, win7.vcpus) == (128, 2)  # not maxmem, maxvcpus


@on_every_daemon
def test_mem_set(host: Host) -> None:
    host.run("create", str(host.config("win7", *BIG)))
    host.run("mem-set", "win7", "200")
    win7 = host.row("win7")
    assert win7 is not None and win7.mem == 200
    assert host.run("xenstore", "read", "/local/domain/1/memory/target").stdout == "204800\n"
    vm = host.run("xenstore", "read", "/local/domain/1/vm").stdout.strip()
    assert host.run("xenstore", "read", f"{vm}/memory").stdout == "200\n"
    host.run("mem-set", "win7", "131072k")
    assert host.row("win7") == Row("win7", 1, 128, 2, win7.state)
    r = host.run("mem-set", "win7", "1g", check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "above its maximum memory of 256 MiB" in r.stderr
    r = host.run("mem-set", "win7", "lots", check=False)
    assert r.returncode == 1 and "invalid memory size 'lots'" in r.stderr


@on_every_daemon
def test_vcpu_set_reaches_the_device_model(host: Host) -> None:
    host.run("create", str(host.config("win7", agent=True)))  # the real agent
    host.run("vcpu-set", "win7", "1")
    cpu = "/local/domain/1/cpu"
    assert host.run("xenstore", "read", f"{cpu}/0/availability").stdout == "online\n"
    assert host.run("xenstore", "read", f"{cpu}/1/availability").stdout == "offline\n"
    dm_log = host.dir / "log" / "qemu-dm-win7.log"
    host.wait_for("the agent to take vCPU 1 offline",
                  lambda: "vcpus online: 0" in dm_log.read_text())
    host.wait_for("list to show 1 vCPU", lambda: getattr(host.row("win7"), "vcpus", 0) == 1)
    r = host.run("vcpu-set", "win7", "3", check=False)
    assert r.returncode == 1 and "its maxvcpus is 2" in r.stderr
    assert len(r.stderr.splitlines()) == 1


@on_every_daemon
def test_shutdown_wait_and_the_acknowledged_request(host: Host) -> None:
    host.run("create", str(host.config("win7", 'on_poweroff = "preserve"')))
    r = host.run("shutdown", "-w", "win7")
    assert "Domain 1 has been shut down, reason code 0" in r.stderr
    win7 = host.row("win7")
    assert win7 is not None and win7.state == "---s--"
    # The guest's side took the request: the node is empty again, as Linux leaves it.
    assert host.run("xenstore", "read", "/local/domain/1/control/shutdown").stdout == "\n"
    r = host.run("shutdown", "win7", check=False)
    assert r.returncode == 1 and "has shut down already" in r.stderr


@on_every_daemon
def test_shutdown_all_and_the_default_action(host: Host) -> None:
    host.run("create", str(host.config("win7")))
    host.run("create", str(host.config("xp")))
    r = host.run("shutdown", "-a", "-ww")
    assert "Domain 1 has been destroyed" in r.stderr and "Domain 3 has been destroyed" in r.stderr
    assert host.names() == ["Domain-0"]  # on_poweroff's default is destroy
    r = host.run("shutdown", check=False)
    assert r.returncode == 1 and "give -a" in r.stderr


@on_every_daemon
def test_reboot_restarts_guest_and_stubdomain(host: Host) -> None:
    host.run("create", str(host.config("win7")))
    r = host.run("reboot", "-w", "win7")
    assert "Domain 1 has been shut down, reason code 1" in r.stderr
    host.wait_for("win7 to be back", lambda: [(x.name, x.domid) for x in host.rows()[1:]] == [
        ("win7", 3), ("win7-dm", 4)])
    assert "Action for shutdown reason code 1 is restart" in host.monitor_log()
    # The new domains are listed before the new device model has started and logged.
    log = host.dir / "log" / "qemu-dm-win7.log"
    host.wait_for("the new device model's dmargs", lambda: log.exists() and (
        "dmargs: -d 3 -domain-name win7" in log.read_text()))


@on_every_daemon
def test_rename(host: Host) -> None:
    host.run("create", str(host.config("win7")))
    host.run("create", str(host.config("other")))
    host.run("rename", "win7", "xp")
    assert host.names() == ["Domain-0", "xp", "xp-dm", "other", "other-dm"]
    for domid, name in ((1, "xp"), (2, "xp-dm")):
        assert host.run("xenstore", "read", f"/local/domain/{domid}/name").stdout == f"{name}\n"
        vm = host.run("xenstore", "read", f"/local/domain/{domid}/vm").stdout.strip()
        assert host.run("xenstore", "read", f"{vm}/name").stdout == f"{name}\n"
    r = host.run("rename", "xp", "other", check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "domain 3 is called 'other'" in r.stderr
    assert host.names() == ["Domain-0", "xp", "xp-dm", "other", "other-dm"]
    host.run("destroy", "xp")  # the recorded config follows the name


def test_info(host: Host) -> None:
    lines = host.run("info").stdout.splitlines()
    keys = [line.split(":", 1)[0].rstrip() for line in lines]
    assert keys[:5] == ["host", "release", "version", "machine", "nr_cpus"]
    for key in ("total_memory", "free_memory", "xen_version", "xen_commandline"):
        assert key in keys
    assert all(line[23:25] == ": " for line in lines)  # xl's "%-23s: "
    commandline = lines[keys.index("xen_commandline")]
    assert f"host daemon --dir {host.dir}" in commandline
    assert host.run("info", "nr_cpus").stdout.strip().isdigit()
    assert "no hypervisor" in host.run("info", "xen_caps").stdout


def test_dmesg(host: Host) -> None:
    assert "host daemon" in host.run("dmesg", "-c").stdout
    assert "host daemon" not in host.run("dmesg").stdout


def test_create_dry_run_builds_nothing(host: Host) -> None:
    r = host.run("create", "-n", str(host.config("win7")))
    out = json.loads(r.stdout)
    stub = out["stubdomain"]
    assert stub["name"] == "win7-dm" and stub["max_memkb"] == 32 * 1024
    assert stub["dmargs"].startswith(" -d <domid> -domain-name win7 ")
    assert "ifname=vif<domid>.0-emu" in stub["dmargs"]
    assert out["guest"]["config"]["name"] == "win7"
    assert host.names() == ["Domain-0"]


@on_every_daemon
def test_console_says_what_it_is_attached_to(host: Host) -> None:
    host.run("create", str(host.config("win7")))
    proc = host.popen("console", "win7")
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
    banner = proc.stderr.read().decode()
    assert banner.startswith("Connected to win7 serial 0 (/") and "Ctrl-] to leave" in banner
    for args, fragment in (
        (("-t", "pv", "win7"), "has no PV console; use -t serial"),
        (("-t", "pv", "win7-dm"), "PV console 0 of win7-dm goes to 'file:"),
        (("-t", "vuart", "win7"), "Arm guests only"),
    ):
        r = host.run("console", *args, check=False)
        assert r.returncode == 1 and fragment in r.stderr and len(r.stderr.splitlines()) == 1


@on_every_daemon
def test_create_c_attaches_the_console(host: Host) -> None:
    proc = host.popen("create", "-c", str(host.config("win7")))
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(b"hello\r")
    proc.stdin.flush()
    read_until(proc, b"hello")
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0
    assert b"Connected to win7 serial 0" in proc.stderr.read()


@on_every_daemon
def test_create_v_without_a_display_warns(host: Host) -> None:
    r = host.run("create", "-V", str(host.config("win7")))
    assert "Warning: no vncviewer" in r.stderr and "console/vnc-port" in r.stderr
    assert "win7" in host.names()


@on_every_daemon
def test_a_renamed_guests_dead_stub_is_quoted_from_its_log(host: Host) -> None:
    host.run("create", "-e", str(host.config("win7")))  # -e: no monitor cleans up
    host.run("rename", "win7", "xp")
    os.kill(host.pid_of(2), signal.SIGKILL)
    r = host.run("pci-attach", "xp", "03:00.0", check=False)
    assert r.returncode == 1 and "the stubdomain of xp (domain 2) crashed" in r.stderr
    assert "qemu-dm-win7.log:" in r.stderr and "| dmargs: -d 1 -domain-name win7" in r.stderr
