"""argv as Mini-OS builds it and the qemu-trad options libxl writes (sans-IO)."""

from __future__ import annotations

import pytest

from stubdom.devicemodel.base import Nic
from stubdom.stubdomain.args import (
    AgentOptions,
    DmArgsError,
    build_argv,
    parse_dm_args,
    split_agent_options,
)

WIN7 = (
    " -d 5 -domain-name win7 -vnc 127.0.0.1:0 -vncunused -serial pty -videoram 4"
    " -boot cda -acpi -vcpus 2 -vcpu_avail 0x03"
    " -net nic,vlan=0,macaddr=00:16:3e:12:34:56,model=rtl8139"
    " -net tap,vlan=0,ifname=vif5.0-emu,bridge=xenbr0,script=no,downscript=no"
)


def test_the_dmargs_example_of_docs_protocol() -> None:
    opts = parse_dm_args(build_argv([], WIN7))
    assert opts.domid == 5 and opts.name == "win7"
    assert opts.serial == ["pty"] and opts.videoram_mb == 4 and opts.boot == "cda"
    assert opts.acpi and opts.vcpus == 2 and opts.vcpu_avail == 3 and opts.graphics
    assert [n.mac for n in opts.nics] == ["00:16:3e:12:34:56"] and opts.taps == [0]
    assert any("-vnc" in n for n in opts.notes)
    m = opts.machine(5)
    assert (m.guest_domid, m.vcpus, m.vcpu_avail, m.acpi, m.vga) == (5, 2, 3, True, "cirrus")
    assert opts.bind_nics([0]) == [Nic(0, "00:16:3e:12:34:56", "rtl8139", 0)]


def test_cmdline_words_come_first_and_quotes_group() -> None:
    argv = build_argv(["-d", "7"], " -domain-name 'my guest' -serial \"tcp:x y\"")
    assert argv == ["-d", "7", "-domain-name", "my guest", "-serial", "tcp:x y"]


def test_the_nth_tap_binds_the_nth_vif_by_index() -> None:
    opts = parse_dm_args(
        [
            "-net",
            "nic,vlan=3,macaddr=00:16:3e:00:00:03",
            "-net",
            "nic,vlan=1,macaddr=00:16:3e:00:00:01",
            "-net",
            "tap,vlan=3",
            "-net",
            "tap,vlan=1",
        ]
    )
    nics = opts.bind_nics([2, 7])
    assert [(n.vlan, n.vif) for n in nics] == [(3, 2), (1, 7)]
    opts = parse_dm_args(["-net", "nic,vlan=0", "-net", "tap,vlan=0", "-net", "tap,vlan=1"])
    assert opts.bind_nics([4])[0].vif == 4
    assert any("no vif number 1" in n for n in opts.notes)


def test_other_options() -> None:
    opts = parse_dm_args(
        [
            "-std-vga",
            "-usb",
            "-usbdevice",
            "tablet",
            "-soundhw",
            "es1370",
            "-gfx_passthru",
            "-nographic",
            "-loadvm",
            "/var/lib/xen/qemu-resume.5",
            "-net",
            "none",
            "-k",
            "en-us",
            "-M",
            "xenfv",
        ]
    )
    assert opts.vga == "stdvga" and opts.usb and opts.usbdevices == ["tablet"]
    assert opts.soundhw == "es1370" and opts.gfx_passthru and not opts.graphics
    assert opts.loadvm == "/var/lib/xen/qemu-resume.5" and opts.net_none
    assert opts.keymap == "en-us" and any("-M" in n for n in opts.notes)
    assert parse_dm_args(["-vga", "none"]).vga == "none"


def test_cannot_honour_is_a_note_not_an_error() -> None:
    opts = parse_dm_args(["-sdl", "-frobnicate", "disk.img", "-net", "user"])
    assert len(opts.notes) == 4


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["-d"], "-d: missing argument"),
        (["-d", "five"], "not a number"),
        (["-vcpus", "0"], "between 1 and 128"),
        (["-vcpu_avail", "3"], "0x<hex>"),
        (["-videoram", "-4"], "negative"),
        (["-boot", "xyz"], "-boot"),
        (["-vga", "fancy"], "-vga"),
        (["-net", "nic,macaddr=00:16:3e"], "bad macaddr"),
        (["-net", "nic,vlan"], "not key=value"),
    ],
)
def test_malformed_options(argv: list[str], match: str) -> None:
    with pytest.raises(DmArgsError, match=match):
        parse_dm_args(argv)


def test_agent_options() -> None:
    opts, rest = split_agent_options(["--dm=qemu", "-d", "3", "--compat=qemu-trad"])
    assert opts == AgentOptions("qemu", True, AgentOptions.eject_delay) and rest == ["-d", "3"]
    assert split_agent_options(["--eject-delay=never"])[0].eject_delay is None
    assert split_agent_options(["--eject-delay=1.5"])[0].eject_delay == 1.5
    assert split_agent_options(["--sim-ram=64"])[0].sim_ram_mb == 64
    assert split_agent_options([])[0].sim_ram_mb == 0
    for bad in ("--dm=bochs", "--compat=xend", "--eject-delay=soon", "--frob=1",
                "--sim-ram=256", "--sim-ram=-1", "--sim-ram=1.5", "--sim-ram=\u0661"):
        with pytest.raises(DmArgsError):
            split_agent_options([bad])
