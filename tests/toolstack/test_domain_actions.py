"""on_poweroff/on_reboot/on_crash, applied by the monitor 'stubdom create' leaves behind,
and a stubdomain's death as its guest's crash."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from stubdom.host.rundir import process_alive, read_pid
from tests.support.daemons import on_every_daemon
from tests.toolstack.clihost import Host, running_host

# On cx and ox too (README, "On the real daemons"): every test marked @on_every_daemon,
# the on_* actions a monitor takes on @releaseDomain, -F and restore's monitor.  On ours
# alone: a monitor's own life (ended by host down, absent with -e), no daemon's matter.


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    yield from running_host("tsxl-", xenstored)


def kill_stubdomain(host: Host, stub: int = 2) -> None:
    os.kill(host.pid_of(stub), signal.SIGKILL)


def guests(host: Host) -> list[tuple[str, int, str]]:
    return [(r.name, r.domid, r.state) for r in host.rows()[1:]]


@on_every_daemon
def test_a_dead_stubdomain_is_a_crash_of_its_guest(host: Host) -> None:
    host.run("create", str(host.config("win7")))  # on_crash's default: destroy
    monitor = read_pid(host.dir / "monitors" / "1.pid")
    assert monitor is not None and process_alive(monitor)
    kill_stubdomain(host)
    host.wait_for("the guest to be destroyed", lambda: host.names() == ["Domain-0"])
    host.wait_for("the monitor to exit", lambda: not process_alive(monitor))
    log = host.monitor_log()
    assert "Stubdomain win7-dm (domain 2) of domain 1 has crashed" in log
    assert "Action for shutdown reason code 3 is destroy" in log
    assert not (host.dir / "monitors" / "1.pid").exists()


@on_every_daemon
def test_on_crash_restart(host: Host) -> None:
    host.run("create", str(host.config("win7", 'on_crash = "restart"')))
    kill_stubdomain(host)
    host.wait_for("win7 to be created again", lambda: [g[:2] for g in guests(host)] == [
        ("win7", 3), ("win7-dm", 4)])
    host.wait_for("the monitor of domain 3", (host.dir / "monitors" / "3.pid").exists)
    kill_stubdomain(host, 4)  # the monitor follows the new domain
    host.wait_for("the second restart", lambda: [g[:2] for g in guests(host)] == [
        ("win7", 5), ("win7-dm", 6)])


@on_every_daemon
def test_on_crash_preserve_keeps_the_crashed_guest(host: Host) -> None:
    host.run("create", str(host.config("win7", 'on_crash = "preserve"')))
    kill_stubdomain(host)
    host.wait_for("the guest to show crashed", lambda: guests(host) == [("win7", 1, "----c-")])
    host.wait_for("the monitor to be done", lambda: "Done. Exiting now" in host.monitor_log())
    host.run("destroy", "win7")
    assert host.names() == ["Domain-0"]


@on_every_daemon
def test_on_reboot_rename_restart(host: Host) -> None:
    host.run("create", str(host.config("win7", 'on_reboot = "rename-restart"')))
    host.run("reboot", "win7")
    host.wait_for("the restarted win7", lambda: ("win7", 3) in [g[:2] for g in guests(host)])
    rows = guests(host)
    old = [r for r in rows if r[1] in (1, 2)]
    assert [r[0][:5] for r in old] == ["win7-", "win7-"]
    assert old[0][2] == "---sr-" and old[1][0] == old[0][0] + "-dm"
    vm = host.run("xenstore", "read", "/local/domain/1/vm").stdout.strip()
    assert host.run("xenstore", "read", f"{vm}/name").stdout.strip() == old[0][0]


def test_host_down_ends_the_monitor(host: Host) -> None:
    host.run("create", str(host.config("win7")))
    monitor = read_pid(host.dir / "monitors" / "1.pid")
    assert monitor is not None and process_alive(monitor)
    r = host.run("host", "down")
    assert not process_alive(monitor)
    assert "processes still use" not in r.stderr
    assert not (host.dir / "monitors").exists() or not list((host.dir / "monitors").iterdir())


def test_create_e_leaves_no_monitor(host: Host) -> None:
    host.run("create", "-e", str(host.config("win7")))
    assert not (host.dir / "monitors" / "1.pid").exists()


@on_every_daemon
def test_create_f_monitors_in_the_foreground(host: Host) -> None:
    proc = host.popen("create", "-F", str(host.config("win7")))
    host.wait_for("win7 to exist", lambda: "win7" in host.names())
    host.run("destroy", "win7")
    assert proc.wait(timeout=60) == 0
    assert proc.stderr is not None and b"Domain 1 has been destroyed." in proc.stderr.read()


@on_every_daemon
def test_restore_starts_a_monitor(host: Host) -> None:
    host.run("create", "-e", str(host.config("win7", 'on_crash = "restart"')))
    image = host.dir / "win7.save"
    host.run("save", "win7", str(image))
    host.run("restore", str(image))
    kill_stubdomain(host, 4)
    host.wait_for("the restored guest to be restarted",
                  lambda: [g[:2] for g in guests(host)] == [("win7", 5), ("win7-dm", 6)])
