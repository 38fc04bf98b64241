"""A stubdomain that crashes or misbehaves: the toolstack says so at once and cleans up.

Every wait for the device model is given 600 s (`NO_TIMEOUT`) while the command runs
under a 120 s guard, so a failure can only be reported in time through a fast path (the
stub's death, a state that cannot be an answer), never by running out a timeout.  The
measured reaction times are in bench/protocol_faults.py, not asserted here.
"""

from __future__ import annotations

import pytest

from tests.faults.host import NO_TIMEOUT, FaultHost, host
from tests.support.daemons import on_every_daemon

__all__ = ["host"]

#: Where a crash lands, the operation that meets it, what it says, and whether the save
#: image was complete before the crash (``save -c`` writes it before ``continue``).
CRASHES = [
    ("crash-before-running", ("create",), "the stubdomain died before running", False),
    ("crash-on-pci-ins", ("pci-attach", "g", "03:00.0"), "died before pci-inserted", False),
    ("crash-on-save", ("save", "-c", "g", "SAVE"), "the stubdomain died before paused", False),
    ("crash-mid-save", ("save", "-c", "g", "SAVE"), "the stubdomain died before paused", False),
    ("crash-after-save", ("save", "-c", "g", "SAVE"), "the stubdomain died before running", True),
    ("crash-on-continue", ("save", "-c", "g", "SAVE"), "the stubdomain died before running", True),
]

# On cx and ox too (README, "On the real daemons"): every test marked @on_every_daemon,
# i.e. every stub fault met through xenstore (crashes, wrong or no answers, floods, a bad
# restore).  On ours alone: damaged save images, refused before any domain exists.


def stub_id(host: FaultHost, name: str) -> int:
    return host.domids()[f"{name}-dm"]


@on_every_daemon
@pytest.mark.parametrize(
    ("fault", "verb", "expected", "saved"), CRASHES, ids=[c[0] for c in CRASHES]
)
def test_a_crash_is_reported_at_once_with_the_stubs_last_words(
    host: FaultHost, fault: str, verb: tuple[str, ...], expected: str, saved: bool
) -> None:
    image = host.dir / "g.save"
    if verb == ("create",):
        r = host.run("create", str(host.config("g", fault)), "--timeout", NO_TIMEOUT, check=False)
        ids: tuple[int, ...] = (1, 2)
    else:
        host.create("g", fault)
        ids = (host.domids()["g"], stub_id(host, "g"))
        assert host.domain_processes(ids[1:]), "the stub runs before the fault"
        args = [a.replace("SAVE", str(image)) for a in verb]
        r = host.run(*args, "--timeout", NO_TIMEOUT, check=False)
    assert r.returncode == 1
    assert expected in r.stderr and "(it crashed)" in r.stderr
    assert "| CRITICAL faulty-stub: fault: crashing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    if saved:
        # The image was written before continue failed: it restores.
        host.run("destroy", "g")
        host.run("restore", str(image))
        ids = (*ids, host.domids()["g"], stub_id(host, "g"))
        assert host.run("xenstore", "read", f"/local/domain/{ids[3]}/device-model/"
                        f"{ids[2]}/state").stdout == "running\n"
    else:
        assert not image.exists(), "a failed save leaves no image"
    if verb != ("create",):
        if verb[0] == "save" and not saved:
            assert "is left paused without a device model; 'stubdom destroy" in r.stderr
        host.run("destroy", "g")
    host.assert_clean("g", ids=ids)


@on_every_daemon
def test_pci_detach_when_the_stub_crashes_on_pci_rem(host: FaultHost) -> None:
    host.create("g", "crash-on-pci-rem")
    ids = (host.domids()["g"], stub_id(host, "g"))
    host.run("pci-attach", "g", "03:00.0")
    r = host.run("pci-detach", "g", "03:00.0", "--timeout", NO_TIMEOUT, check=False)
    assert r.returncode == 1
    assert "the stubdomain died before pci-removed (it crashed)" in r.stderr
    assert "fault: crashing on pci-rem" in r.stderr
    host.run("destroy", "g")
    host.assert_clean("g", ids=ids)


# -- misbehaviour without a crash -----------------------------------------------------


@on_every_daemon
@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("garbage-state", "wrote an unknown state '\ufffd\\x00 not a state'"),
        ("delete-nodes", "pci-ins: the state node was removed"),
        ("garbage-parameter", "pci-ins: qemu refused to add device: '0xZZ\\x00'"),
    ],
)
def test_a_wrong_answer_fails_at_once_with_a_clear_line(
    host: FaultHost, fault: str, expected: str
) -> None:
    host.create("g", fault)
    ids = (host.domids()["g"], stub_id(host, "g"))
    r = host.run("pci-attach", "g", "03:00.0", "--timeout", NO_TIMEOUT, check=False)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert host.run("pci-list", "g").stdout.splitlines() == ["Vdev Device"]
    host.run("destroy", "g")
    host.assert_clean("g", ids=ids)


@on_every_daemon
@pytest.mark.parametrize("fault", ["silent", "running-twice"])
def test_a_stub_that_never_answers_ends_in_a_clear_timeout(host: FaultHost, fault: str) -> None:
    host.create("g", fault)
    r = host.run("pci-attach", "g", "03:00.0", "--timeout", "1", check=False)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "Error: guest 1: device model pci-ins: no pci-inserted within 1 s (state 'running'); "
        "0000:03:00.0 stays listed as unfinished, since the device model may still add it: "
        "'stubdom pci-detach g 0000:03:00.0' removes it"
    ]
    # The state was written back and the next operation is not blocked.
    state = host.run("xenstore", "read", "/local/domain/2/device-model/1/state").stdout
    assert state == "running\n"
    # Whether the device model took the function is unknown: the record says so (issue 12).
    assert host.run("pci-list", "g").stdout.splitlines()[1:] == [
        "??.? 0000:03:00.0 (an unfinished pci-attach; pci-detach removes it)"
    ]
    host.run("pci-detach", "-f", "g", "03:00.0")
    assert host.run("pci-list", "g").stdout.splitlines() == ["Vdev Device"]


@on_every_daemon
def test_a_silent_stub_does_not_hold_up_other_guests(host: FaultHost) -> None:
    host.create("bad", "silent")
    host.create("good")
    stuck = host.popen("pci-attach", "bad", "03:00.0", "--timeout", NO_TIMEOUT)
    try:
        # The healthy guest's whole life happens while the other waits.
        host.run("pci-attach", "good", "04:00.0")
        host.run("pci-detach", "good", "04:00.0")
        host.run("save", "-c", "good", str(host.dir / "good.save"))
        assert stuck.poll() is None, "the silent stub's command is still waiting"
    finally:
        stuck.kill()
        stuck.wait()
    ids = (host.domids()["good"], stub_id(host, "good"))
    host.run("destroy", "good")
    host.assert_clean("good", ids=ids)


@on_every_daemon
def test_a_flood_of_state_events_neither_hangs_nor_hurts_others(host: FaultHost) -> None:
    host.create("flood", "flood")
    host.create("good")
    flood = host.popen("pci-attach", "flood", "03:00.0", "--timeout", NO_TIMEOUT)
    host.run("pci-attach", "good", "04:00.0")
    _, err = flood.communicate(timeout=120)
    assert flood.returncode == 0, err
    for name, bdf in (("flood", "03"), ("good", "04")):
        rows = host.run("pci-list", name).stdout.splitlines()
        assert [r.split()[1] for r in rows[1:]] == [f"0000:{bdf}:00.0"]


@on_every_daemon
def test_destroy_of_a_crashed_stub_guest_by_domid(host: FaultHost) -> None:
    host.create("g", "crash-on-pci-ins")
    ids = (host.domids()["g"], stub_id(host, "g"))
    host.run("pci-attach", "g", "03:00.0", check=False)
    assert host.domids()["g-dm"] == ids[1]  # the crashed stub is still listed
    host.run("destroy", str(ids[0]))
    host.assert_clean("g", ids=ids)


# -- damaged device-model state --------------------------------------------------------


def saved_image(host: FaultHost, name: str = "g") -> bytes:
    """A good image of a healthy guest, which is destroyed by the save."""
    host.create(name)
    image = host.dir / f"{name}.save"
    host.run("save", name, str(image))
    return image.read_bytes()


@pytest.mark.parametrize("cut", ["truncated", "flipped"])
def test_a_damaged_save_image_is_refused_before_anything_is_created(
    host: FaultHost, cut: str
) -> None:
    data = saved_image(host)
    damaged = data[: len(data) - 40] if cut == "truncated" else (
        data[:-60] + bytes([data[-60] ^ 0x01]) + data[-59:])
    image = host.dir / "damaged.save"
    image.write_bytes(damaged)
    r = host.run("restore", str(image), "--timeout", NO_TIMEOUT, check=False)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"Error: {image}: ") and "nothing was restored" in r.stderr
    assert list(host.domids()) == ["Domain-0"]
    host.assert_clean("g", ids=(1, 2, 3, 4))


@on_every_daemon
@pytest.mark.parametrize("fault", ["short-restore", "corrupt-restore"])
def test_state_damaged_on_console_2_fails_the_restore_and_creates_nothing(
    host: FaultHost, fault: str
) -> None:
    saved_image(host)
    # The same image, restored by a stub whose console 2 delivers it damaged: the
    # image names the kernel file, which now injects the fault.
    host.config("g", fault)
    r = host.run("restore", str(host.dir / "g.save"), "--timeout", NO_TIMEOUT, check=False)
    assert r.returncode == 1
    expected = "state truncated: " if fault == "short-restore" else "checksum mismatch"
    assert "died before running (it crashed)" in r.stderr or "(it shut down)" in r.stderr
    assert expected in r.stderr, r.stderr
    assert list(host.domids()) == ["Domain-0"]
    host.assert_clean("g", ids=(1, 2, 3, 4))
