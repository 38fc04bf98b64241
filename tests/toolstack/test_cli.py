"""The toolstack's verbs as a user runs them, on a real `stubdom host`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.daemons import on_every_daemon
from tests.toolstack.clihost import ROOT, STUBDOM, Host, running_host

# On cx and ox too (README, "On the real daemons"): every test marked @on_every_daemon,
# i.e. every one that crosses xenstore (create, pci, save, restore, consoles, a dying
# stub, an unfinished attach).  On ours alone: the errors caught before any request
# (config, unknown domain, corrupt image) and pause (the hypervisor's, not xenstore's).


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    yield from running_host("tscli-", xenstored)


@on_every_daemon
def test_create_list_pci_save_restore_destroy(host: Host) -> None:
    host.run("create", str(host.config()))
    listing = host.run("list").stdout.splitlines()
    names = [line.split()[0] for line in listing[1:]]
    assert names == ["Domain-0", "win7", "win7-dm"]
    log = (host.dir / "log" / "qemu-dm-win7.log").read_text()
    assert "dmargs: -d 1 -domain-name win7 -vnc 127.0.0.1:0 -vncunused -serial pty" in log

    host.run("pci-attach", "win7", "0000:03:00.0@06,msitranslate=1")
    host.run("pci-attach", "1", "04:00.0")
    rows = host.run("pci-list", "win7").stdout.splitlines()
    assert rows == ["Vdev Device", "04.0 0000:04:00.0", "06.0 0000:03:00.0"]
    host.run("pci-detach", "-f", "win7", "04:00.0")
    assert host.run("pci-list", "win7").stdout.splitlines()[1:] == ["06.0 0000:03:00.0"]
    refused = host.run("pci-attach", "win7", "05:00.0@06", check=False)
    assert refused.returncode == 1
    assert "wrong bdf or vdevfn" in refused.stderr and len(refused.stderr.splitlines()) == 1

    image = host.dir / "win7.save"
    r = host.run("save", "win7", str(image), check=False)
    assert r.returncode == 1 and "detach them with 'stubdom pci-detach'" in r.stderr
    assert not image.exists()
    host.run("pci-detach", "-f", "win7", "03:00.0")
    host.run("save", "win7", str(image))
    assert image.read_bytes().startswith(b"Xen saved domain, xl format\n \0 \r")
    assert [line.split()[0] for line in host.run("list").stdout.splitlines()[1:]] == [
        "Domain-0"]
    host.run("restore", str(image))
    log = (host.dir / "log" / "qemu-dm-win7.log").read_text()
    assert "-loadvm" in log and "restored" in log
    names = [line.split()[0] for line in host.run("list").stdout.splitlines()[1:]]
    assert names == ["Domain-0", "win7", "win7-dm"]

    host.run("destroy", "win7")
    assert [line.split()[0] for line in host.run("list").stdout.splitlines()[1:]] == [
        "Domain-0"]
    ls = host.run("xenstore", "ls", "/local/domain").stdout
    assert ls.splitlines()[0] == '0 = ""' and "win7" not in ls


def test_errors_are_one_line(host: Host) -> None:
    bad = host.dir / "bad.cfg"
    bad.write_text('name = "x"\nmemory = (1)\n')
    r = host.run("create", str(bad), check=False)
    assert r.returncode != 0 and f"{bad}:2:" in r.stderr
    r = host.run("destroy", "nosuch", check=False)
    assert r.returncode == 1 and "no domain 'nosuch'" in r.stderr
    corrupt = host.dir / "corrupt.save"
    corrupt.write_bytes(b"not a save file at all" * 4)
    r = host.run("restore", str(corrupt), check=False)
    assert r.returncode == 1 and "not an xl save file" in r.stderr
    assert [line.split()[0] for line in host.run("list").stdout.splitlines()[1:]] == [
        "Domain-0"]


@on_every_daemon
def test_console_reaches_the_guest_serial_port(host: Host) -> None:
    host.run("create", str(host.config()))
    env = {**os.environ, "STUBDOM_HOST_DIR": str(host.dir)}
    proc = subprocess.Popen([*STUBDOM, "console", "win7"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"hello\r")
    proc.stdin.flush()
    seen = b""
    while b"hello" not in seen:
        chunk = proc.stdout.read1(4096)
        assert chunk, proc.stderr.read() if proc.stderr else b""
        seen += chunk
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
    r = host.run("console", "-n", "1", "win7", check=False)
    assert r.returncode == 1 and "no serial port 1" in r.stderr


@on_every_daemon
def test_concurrent_pci_attach_loses_nothing(host: Host) -> None:
    host.run("create", str(host.config()))
    env = {**os.environ, "STUBDOM_HOST_DIR": str(host.dir)}
    procs = [subprocess.Popen([*STUBDOM, "pci-attach", "win7", bdf], env=env,
                              stderr=subprocess.PIPE, text=True)
             for bdf in ("03:00.0", "04:00.0", "05:00.0")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    rows = host.run("pci-list", "win7").stdout.splitlines()[1:]
    assert sorted(r.split()[1] for r in rows) == ["0000:03:00.0", "0000:04:00.0",
                                                  "0000:05:00.0"]
    assert len({r.split()[0] for r in rows}) == 3  # three different slots


@on_every_daemon
def test_a_stubdomain_that_dies_fails_the_create_at_once(host: Host) -> None:
    # With a 600 s wait for `running`, only the fast failure can finish within the
    # subprocess guard of Host.run.
    r = host.run("create", str(host.config()), "stubdomain_kernel='/bin/false'",
                 "--timeout", "600", check=False)
    assert r.returncode == 1
    assert "waiting for the device model to report running" in r.stderr
    assert "died" in r.stderr
    assert [line.split()[0] for line in host.run("list").stdout.splitlines()[1:]] == [
        "Domain-0"]


@on_every_daemon
def test_all_functions_of_a_device(host: Host) -> None:
    host.run("create", str(host.config()))
    r = host.run("pci-attach", "win7", "07:00.*@05", check=False)
    assert r.returncode == 1 and "no assignable function of 0000:07:00" in r.stderr
    (host.dir / "pci-assignable").write_text("0000:07:00.0\n0000:07:00.1\n0000:08:00.0\n")
    r = host.run("pci-attach", "win7", "07:00.*", check=False)
    assert r.returncode == 1 and "needs a virtual slot" in r.stderr
    host.run("pci-attach", "win7", "07:00.*@05")
    rows = host.run("pci-list", "win7").stdout.splitlines()[1:]
    assert rows == ["05.0 0000:07:00.0", "05.1 0000:07:00.1"]


@on_every_daemon
def test_the_default_stubdomain_kernel_is_the_agent(host: Host) -> None:
    host.run("create", str(ROOT / "examples" / "win7.cfg"))
    log = (host.dir / "log" / "qemu-dm-win7.log").read_text()
    assert "stubdom.stubdomain.agent" in log and "running" in log
    host.run("pci-attach", "win7", "03:00.0")
    assert host.run("pci-list", "win7").stdout.splitlines()[1:] == ["05.0 0000:03:00.0"]
    host.run("destroy", "win7")


def test_pause_and_unpause(host: Host) -> None:
    host.run("create", str(host.config()))

    def state() -> str:
        rows = host.run("list", "win7").stdout.splitlines()
        return rows[1].split()[4]

    assert "p" not in state()
    host.run("pause", "win7")
    assert state() == "--p---"
    host.run("unpause", "1")
    assert "p" not in state()
    r = host.run("pause", "nope", check=False)
    assert r.returncode == 1
    assert r.stderr == "Error: no domain 'nope'; 'stubdom list' shows the domains\n"


@on_every_daemon
def test_an_unfinished_attach_the_device_model_never_saw_is_undone(host: Host) -> None:
    # What a pci-attach killed before its pci-ins leaves: the record, no vdevfn.
    host.run("create", str(host.config()))
    host.run("xenstore", "write", "/libxl/1/device/pci/0000-05-00-0", "")
    rows = host.run("pci-list", "win7").stdout.splitlines()
    assert rows == ["Vdev Device",
                    "??.? 0000:05:00.0 (an unfinished pci-attach; pci-detach removes it)"]
    # qemu-trad says nothing to a pci-rem of a device it never had: the wait ends.
    host.run("pci-detach", "win7", "05:00.0", "--timeout", "1")
    assert host.run("pci-list", "win7").stdout.splitlines() == ["Vdev Device"]
    host.run("pci-attach", "win7", "05:00.0")
