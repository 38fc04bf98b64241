"""dmargs as libxl builds and encodes them ([ts.dmargs], [TS-DMARGS-ORDER]), including the
example of docs/protocol.md#dmargs."""

from __future__ import annotations

import pytest

from stubdom.protocol import encode_dmargs
from stubdom.toolstack.config import GuestConfig, NicSpec, NicType, VncConfig
from stubdom.toolstack.dmargs import DmArgsError, build_dm_argv, vcpu_avail_hex

SPEC_EXAMPLE = (
    " -d 5 -domain-name win7 -vnc 127.0.0.1:0 -vncunused -serial pty -videoram 4"
    " -boot cda -acpi -vcpus 2 -vcpu_avail 0x03"
    " -net nic,vlan=0,macaddr=00:16:3e:12:34:56,model=rtl8139"
    " -net tap,vlan=0,ifname=vif5.0-emu,bridge=xenbr0,script=no,downscript=no"
)


def win7() -> GuestConfig:
    return GuestConfig(
        name="win7", vcpus=2, serial=["pty"], nics=[NicSpec(devid=0, mac="00:16:3e:12:34:56")]
    )


def test_the_example_of_docs_protocol() -> None:
    assert encode_dmargs(build_dm_argv(win7(), 5)) == SPEC_EXAMPLE


def test_restore_adds_loadvm_before_the_extras() -> None:
    cfg = win7()
    cfg.device_model_args = ["-extra"]
    argv = build_dm_argv(cfg, 5, saved_state="/var/lib/xen/qemu-resume.5")
    assert encode_dmargs(argv).endswith(
        " -loadvm /var/lib/xen/qemu-resume.5 -extra"
    )  # -M xenfv is dropped
    assert argv[-2:] == ["-M", "xenfv"]


def test_graphics_variants() -> None:
    cfg = GuestConfig(name="g", vnc=VncConfig(enabled=False))
    assert "-nographic" in build_dm_argv(cfg, 1)
    cfg = GuestConfig(name="g", vnc=VncConfig(enabled=False), sdl=True)
    argv = build_dm_argv(cfg, 1)
    assert "-nographic" not in argv and argv[5:7] == ["-sdl", "-disable-opengl"]
    assert "-sdl" not in encode_dmargs(argv)
    cfg = GuestConfig(name="g", vnc=VncConfig(listen="0.0.0.0:3", password="x"))
    assert build_dm_argv(cfg, 1)[5:7] == ["-vnc", "0.0.0.0:3,password"]
    cfg = GuestConfig(name="g", vnc=VncConfig(listen="0.0.0.0:3", display=2))
    with pytest.raises(DmArgsError, match="vncdisplay is set"):
        build_dm_argv(cfg, 1)


def test_vga_nics_and_vcpus() -> None:
    cfg = GuestConfig(
        name="g",
        vga="stdvga",
        videoram_mb=16,
        vcpus=1,
        maxvcpus=9,
        nics=[
            NicSpec(devid=0, mac="00:16:3e:00:00:01", type=NicType.VIF),
            NicSpec(devid=1, mac="00:16:3e:00:00:02", ifname="web", model="e1000"),
        ],
    )
    s = encode_dmargs(build_dm_argv(cfg, 7))
    assert " -videoram 16 -std-vga " in s
    assert " -vcpus 9 -vcpu_avail 0x0001 " in s
    assert "vlan=0" not in s  # a PV-only nic gets no emulated card
    assert "-net nic,vlan=1,macaddr=00:16:3e:00:00:02,model=e1000" in s
    assert "ifname=web-emu" in s
    none = encode_dmargs(build_dm_argv(GuestConfig(name="g", vga="none"), 1))
    assert " -vga none " in none and " -net none" in none and "-videoram" not in none


def test_vcpu_avail_bitmap() -> None:
    assert vcpu_avail_hex(1, 1) == "0x01"
    assert vcpu_avail_hex(2, 2) == "0x03"
    assert vcpu_avail_hex(9, 16) == "0x01ff"
