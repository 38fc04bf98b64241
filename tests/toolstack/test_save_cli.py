"""``stubdom save`` as a user runs it: where the image goes, what the guest is left as.

Each test runs the CLI against a real `stubdom host` (the fast stub kernel of
`test_cli`).  "Left as it was" is checked three ways: the guest's state letters, the
device model's ``state`` node and the save marker.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.devicemodel.stream import encode_state
from stubdom.toolstack.savefile import SaveImage, decode_save_image, encode_save_image
from tests.support.daemons import on_every_daemon, short_tmpdir
from tests.toolstack.clihost import ROOT, STUBDOM, Host

MAGIC = b"Xen saved domain, xl format\n \0 \r"


# On cx and ox too (README, "On the real daemons"): every test marked @on_every_daemon,
# the saves that reach the device model (-p, -c, a failed or interrupted save, restore
# -D).  On ours alone: where the image goes and what a config file holds, checked before
# any request (the guest is only checked to run on as before).


@pytest.fixture
def host(xenstored: str) -> Iterator[Host]:
    h = Host(short_tmpdir("tssave-"), xenstored)
    h.run("host", "up", "--xenstored", xenstored)
    h.run("create", str(h.config()))
    yield h
    h.run("host", "down", check=False)


def letters(host: Host, name: str = "win7") -> str | None:
    for line in host.run("list").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == name:
            return fields[4]
    return None


def dm_state(host: Host, guest: int = 1, stub: int = 2) -> str:
    path = f"/local/domain/{stub}/device-model/{guest}/state"
    return host.run("xenstore", "read", path).stdout.strip()


def assert_running_as_before(host: Host) -> None:
    """The guest runs, its device model too, and no save is left in progress."""
    assert letters(host) in ("r-----", "-b----")
    assert dm_state(host) == "running"
    assert not (host.dir / "lock" / "dm-1.saved").exists()


def one_line_error(r: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line]
    assert len(lines) == 1, r.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert "[Errno" not in lines[0] and ".partial" not in lines[0]


def run_bytes(host: Host, *args: str, stdout: int) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "STUBDOM_HOST_DIR": str(host.dir)}
    return subprocess.run([*STUBDOM, *args], env=env, stdout=stdout, stderr=subprocess.PIPE,
                          cwd=host.dir, timeout=120, check=False)


# -- where the image goes -----------------------------------------------------------------


@pytest.fixture
def device(request: pytest.FixtureRequest, host: Host) -> Iterator[Path]:
    """A character device: /dev/full, or a node of our own that is the same device."""
    if request.param == "/dev/full":
        path = Path("/dev/full")
    else:
        path = host.dir / "full"
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 7))
        except PermissionError:
            pytest.skip("mknod needs CAP_MKNOD")
    yield path
    if path == Path("/dev/full") and not stat.S_ISCHR(os.lstat(path).st_mode):
        path.unlink()  # what a broken save did to the host: put the device back
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        pytest.fail("save replaced /dev/full with a regular file (now put back)")


@pytest.mark.parametrize("device", ["own node", "/dev/full"], indirect=True)
def test_a_device_is_refused_before_anything_happens(host: Host, device: Path) -> None:
    r = host.run("save", "-c", "win7", str(device), check=False)
    one_line_error(r, str(device), "is a device")
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert "Saved" not in r.stderr
    assert_running_as_before(host)


def test_a_directory_is_refused_before_anything_happens(host: Host) -> None:
    r = host.run("save", "win7", str(host.dir), check=False)
    one_line_error(r, str(host.dir), "is a directory")
    assert_running_as_before(host)


def test_a_missing_directory_is_refused_before_the_guest_is_paused(host: Host) -> None:
    r = host.run("save", "-c", "win7", "/nonexistent/x.save", check=False)
    one_line_error(r, "/nonexistent/x.save", "/nonexistent does not exist")
    assert_running_as_before(host)
    # and nothing is left for the next command to warn about
    r = host.run("save", "-c", "win7", str(host.dir / "x.save"))
    assert "died" not in r.stderr


def test_a_symlink_stays_a_symlink_and_its_target_gets_the_image(host: Host) -> None:
    target = host.dir / "images" / "target.save"
    target.parent.mkdir()
    target.write_bytes(b"an older image")
    link = host.dir / "link.save"
    link.symlink_to(target)
    host.run("save", "-c", "win7", str(link))
    assert link.is_symlink() and link.readlink() == target
    assert target.read_bytes().startswith(MAGIC)
    decode_save_image(target.read_bytes())
    assert sorted(p.name for p in target.parent.iterdir()) == ["target.save"]  # no temp
    assert_running_as_before(host)


def test_a_fifo_is_written_as_a_stream(host: Host) -> None:
    fifo = host.dir / "image.fifo"
    os.mkfifo(fifo)
    got = host.dir / "got"
    with open(got, "wb") as out:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=out)
        try:
            r = host.run("save", "-c", "win7", str(fifo))
            assert reader.wait(timeout=60) == 0
        finally:
            reader.kill()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    decode_save_image(got.read_bytes())
    assert f"({got.stat().st_size} bytes)" in r.stderr
    assert_running_as_before(host)


def test_dash_is_standard_output_and_nothing_else_goes_there(host: Host) -> None:
    r = run_bytes(host, "save", "-c", "win7", "-", stdout=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    decode_save_image(r.stdout)  # the image and nothing else
    assert b"Saved win7 to standard output" in r.stderr
    assert not (host.dir / "-").exists()
    assert_running_as_before(host)


@on_every_daemon
def test_a_reader_gone_is_a_failed_save_and_the_guest_runs_on(host: Host) -> None:
    read, write = os.pipe()
    os.close(read)  # EPIPE on the first write, after the guest was paused
    try:
        r = run_bytes(host, "save", "-c", "win7", "-", stdout=write)
    finally:
        os.close(write)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Saved" not in err
    assert len(err.splitlines()) == 1, err
    assert "cannot write the image to standard output: Broken pipe" in err
    assert "the guest is running again" in err
    assert_running_as_before(host)


# -- interrupted ----------------------------------------------------------------------------

#: Runs the CLI with the save stopping for good once the device model has paused.
HANG_AFTER_PAUSED = """\
import sys
sys.path[:0] = [{root!r} + "/src", {root!r}]
from pathlib import Path
from stubdom.toolstack import saverestore

async def hang(*args, **kwargs):
    Path({flag!r}).write_text("paused")
    import asyncio
    await asyncio.Event().wait()

saverestore._emulator_xenstore = hang
from stubdom.cli.main import main
sys.argv = ["stubdom", *sys.argv[1:]]
main()
"""


@on_every_daemon
def test_ctrl_c_after_the_pause_leaves_the_guest_as_it_was(host: Host) -> None:
    flag = host.dir / "flag"
    script = host.dir / "hang.py"
    script.write_text(HANG_AFTER_PAUSED.format(root=str(ROOT), flag=str(flag)))
    env = {**os.environ, "STUBDOM_HOST_DIR": str(host.dir)}
    image = host.dir / "win7.save"
    proc = subprocess.Popen([sys.executable, str(script), "save", "win7", str(image)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.02)
        assert dm_state(host) == "paused" and letters(host) == "--p---"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Aborted" in err, err
    assert "the guest is running again" in err
    assert not image.exists() and not list(host.dir.glob(".win7.save.*"))
    assert_running_as_before(host)


# -- what the guest is left as ----------------------------------------------------------


@on_every_daemon
def test_p_leaves_the_guest_paused_not_destroyed(host: Host) -> None:
    """xl's save_domain: -p pauses the guest and resumes the device model, -c or not."""
    for options in (["-p"], ["-c", "-p"]):
        image = host.dir / "win7.save"
        host.run("save", *options, "win7", str(image))
        decode_save_image(image.read_bytes())
        assert letters(host) == "--p---", options
        assert dm_state(host) == "running"
        assert not (host.dir / "lock" / "dm-1.saved").exists()
        host.run("unpause", "win7")
        assert_running_as_before(host)


@on_every_daemon
def test_a_failed_save_leaves_a_paused_guest_paused(host: Host) -> None:
    host.run("pause", "win7")
    read, write = os.pipe()
    os.close(read)
    try:
        r = run_bytes(host, "save", "-c", "win7", "-", stdout=write)
    finally:
        os.close(write)
    assert r.returncode == 1 and "the guest is paused, as it was" in r.stderr.decode()
    assert letters(host) == "--p---" and dm_state(host) == "running"


@on_every_daemon
def test_D_restores_the_guest_with_its_domid(host: Host) -> None:
    image = host.dir / "win7.save"
    host.run("save", "-D", "win7", str(image))
    assert decode_save_image(image.read_bytes()).config_json["domid"] == 1
    host.run("create", str(host.config("other")))  # domains 3 and 4: the next free is 5
    host.run("restore", str(image))
    listing = host.run("list").stdout.splitlines()[1:]
    rows = {line.split()[0]: int(line.split()[1]) for line in listing}
    assert rows["win7"] == 1 and rows["win7-dm"] == 5
    image2 = host.dir / "again.save"
    host.run("save", "-c", "win7", str(image2))  # without -D: no domid recorded
    assert decode_save_image(image2.read_bytes()).config_json["domid"] is None


def test_a_config_file_is_stored_instead_of_the_guests(host: Host) -> None:
    other = host.config("win8")
    image = host.dir / "win7.save"
    host.run("save", "win7", str(image), str(other))
    assert decode_save_image(image.read_bytes()).config_json["name"] == "win8"
    host.run("restore", str(image))
    assert letters(host, "win8") in ("r-----", "-b----") and letters(host, "win7") is None


def test_a_bad_config_file_is_one_line_and_nothing_happens(host: Host) -> None:
    bad = host.dir / "bad.cfg"
    bad.write_text('name = "x"\nmemory = (1)\n')
    image = host.dir / "win7.save"
    r = host.run("save", "win7", str(image), str(bad), check=False)
    one_line_error(r, f"{bad}:2:")
    assert not image.exists()
    assert_running_as_before(host)
    r = host.run("save", "win7", str(image), str(host.dir / "missing.cfg"), check=False)
    one_line_error(r, "missing.cfg")
    assert_running_as_before(host)


# -- restore ------------------------------------------------------------------------------


def test_a_save_file_with_unknown_config_fields_names_the_file(host: Host) -> None:
    image = host.dir / "newer.save"
    state = encode_state("sim", b"\0" * 64)
    image.write_bytes(encode_save_image(SaveImage({"name": "g", "bogus": 1}, state)))
    r = host.run("restore", str(image), check=False)
    one_line_error(r, str(image), "unknown field(s) bogus",
                   "the file is damaged or was saved by a newer stubdom")
    assert "config: config" not in r.stderr
    assert letters(host, "g") is None
