"""Settings → GuestConfig: xl's value rules, libxl's checks, the example configs."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from stubdom.protocol import Bdf, encode_dmargs
from stubdom.toolstack.config import (
    DiskFormat,
    DiskSpec,
    GuestConfig,
    NicSpec,
    NicType,
    PciSpec,
    VncConfig,
)
from stubdom.toolstack.configure import load_config, parse_config, strtol
from stubdom.toolstack.dmargs import build_dm_argv
from stubdom.toolstack.xlcfg import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HVM = 'type = "hvm"\nname = "g"\n'


def cfg(extra: str = "", overrides: tuple[str, ...] = ()) -> GuestConfig:
    return parse_config(HVM + extra, "t.cfg", overrides, rng=random.Random(0))


def err(extra: str, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        cfg(extra, overrides)
    return ei.value


# -- the examples ------------------------------------------------------------------------------


def test_win7_example_is_the_dmargs_example_guest() -> None:
    c = load_config(EXAMPLES / "win7.cfg")
    assert c.name == "win7"
    assert (c.vcpus, c.serial, c.memory_mb, c.bios, c.vga) == (2, ["pty"], 128, "rombios", "cirrus")
    assert c.nics == [NicSpec(devid=0, mac="00:16:3e:12:34:56")]
    assert c.vnc == VncConfig()
    assert c.source.endswith("win7.cfg")
    assert encode_dmargs(build_dm_argv(c, 5)) == (
        " -d 5 -domain-name win7 -vnc 127.0.0.1:0 -vncunused -serial pty -videoram 4"
        " -boot cda -acpi -vcpus 2 -vcpu_avail 0x03"
        " -net nic,vlan=0,macaddr=00:16:3e:12:34:56,model=rtl8139"
        " -net tap,vlan=0,ifname=vif5.0-emu,bridge=xenbr0,script=no,downscript=no"
    )


def test_g1_example_has_every_kind_of_entry() -> None:
    c = load_config(EXAMPLES / "g1.cfg")
    assert (c.name, c.memory_mb, c.vcpus, c.stubdomain_memory_mb) == ("g1", 512, 1, 32)
    assert c.stubdomain_memkb == 32 * 1024 + 4 * 1024
    assert c.device_model_version == "qemu-xen-traditional"
    assert c.disks == [
        DiskSpec(vdev="hda", target=str(EXAMPLES / "images" / "g1.img")),
        DiskSpec(vdev="hdc", format=DiskFormat.EMPTY, readwrite=False, cdrom=True),
    ]
    assert c.nics == [NicSpec(devid=0, mac="00:16:3e:00:00:01", model="e1000")]
    assert c.pcis == [
        PciSpec(bdf=Bdf(0, 3, 0, 0), vslot=5, msitranslate=True),
        PciSpec(bdf=Bdf(0, 4, 0, 0), vslot=7, all_functions=True),
    ]
    assert c.vnc == VncConfig(enabled=True, listen="127.0.0.1", display=3)
    assert c.serial == ["pty"]


def test_legacy_example_uses_the_old_spellings() -> None:
    c = load_config(EXAMPLES / "legacy.cfg", rng=random.Random(3))
    assert (c.memory_mb, c.maxmem_mb, c.vcpus, c.maxvcpus) == (256, 256, 1, 2)
    assert (c.vga, c.videoram_mb, c.usb, c.usbdevice, c.boot) == (
        "stdvga",
        8,
        True,
        ["tablet"],
        "dc",
    )
    assert [(d.vdev, d.target, d.cdrom, d.readwrite) for d in c.disks] == [
        ("hda", str(EXAMPLES / "images" / "legacy.img"), False, True),
        ("hdc", str(EXAMPLES / "images" / "install.iso"), True, False),
        ("hdb", str(EXAMPLES / "images" / "data.img"), False, True),
    ]
    (nic,) = c.nics
    assert (nic.bridge, nic.model, nic.ifname) == ("xenbr1", "e1000", "legacy0")
    assert nic.mac.startswith("00:16:3e:")
    assert c.serial == ["file:/tmp/legacy-serial.log"]
    assert (c.on_crash, c.device_model_args) == ("preserve", ["-localtime"])


def test_relative_disk_images_are_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.cfg").write_text(
        HVM + "disk = [ 'a.img,raw,hda,rw', '/abs/b.img,raw,hdb,rw', ',hdc:cdrom,r' ]\n")
    c = load_config(tmp_path / "sub" / "g.cfg", ["disk=['../c.img,raw,hda,rw']"])
    assert [d.target for d in c.disks] == [str(tmp_path / "c.img")]
    c = load_config(tmp_path / "sub" / "g.cfg")
    assert [d.target for d in c.disks] == [str(tmp_path / "sub" / "a.img"), "/abs/b.img", ""]


def test_examples_take_overrides() -> None:
    c = load_config(EXAMPLES / "win7.cfg", ["vcpus=4; memory=1024", 'serial="vc"'])
    assert (c.vcpus, c.memory_mb, c.serial) == (4, 1024, ["vc"])


# -- values ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    c = cfg()
    assert c == GuestConfig(name="g", uuid=c.uuid, source="t.cfg")
    assert c.stubdomain_memory_mb is None  # 28 MiB (MiniOS) from the model
    assert c.stubdomain_memkb == 28 * 1024 + 4 * 1024


def test_numbers_as_xl_reads_them() -> None:
    assert cfg('memory = "512"').memory_mb == 512
    assert cfg("memory = 0x200").memory_mb == 512
    assert cfg("memory = 01000").memory_mb == 512
    assert [strtol(t) for t in (" 12", "-3", "+0x10", "08", "", "1k")] == [
        12,
        -3,
        16,
        None,
        None,
        None,
    ]


def test_booleans_are_numbers() -> None:
    c = cfg("vnc = 0\nsdl = 2\nopengl = '1'\nacpi = 0\nusb = 1\nnographic = 1")
    assert (c.vnc.enabled, c.sdl, c.opengl, c.acpi, c.usb, c.nographic) == (
        False,
        True,
        True,
        False,
        True,
        True,
    )


def test_everything_else() -> None:
    c = cfg(
        'uuid = "6B0C1E4C-74E4-4A28-9B4F-9A4B5E0BCB57"\nmemory = 1024\nmaxmem = 1024\n'
        "vcpus = 2\nmaxvcpus = 4\n"
        'vnclisten = "0.0.0.0:5"\nvncunused = 0\nvncpasswd = "s3cret"\nkeymap = "de"\n'
        'vga = "none"\nusbdevice = [ "tablet", "mouse" ]\nsoundhw = "ac97"\ngfx_passthru = 1\n'
        'boot = "dc"\ntimeoffset = "3600"\nserial = [ "pty", "file:/var/log/s1" ]\n'
        'stubdomain_kernel = "/usr/lib/xen/boot/ioemu-stubdom.gz"\n'
        'stubdomain_cmdline = "-d 9"\ndevice_model_args = [ "-a" ]\n'
        'device_model_args_hvm = [ "-b", "-c" ]\n'
        'on_poweroff = "preserve"\non_reboot = "destroy"\non_crash = "coredump-restart"\n'
        'pci_msitranslate = 1\npci_seize = 1\npci = [ "01:00.0,msitranslate=0" ]\n'
    )
    assert c.uuid == "6b0c1e4c-74e4-4a28-9b4f-9a4b5e0bcb57"
    assert (c.memory_mb, c.maxmem_mb, c.vcpus, c.maxvcpus, c.max_vcpus) == (1024, 1024, 2, 4, 4)
    assert c.vnc == VncConfig(listen="0.0.0.0:5", findunused=False, password="s3cret")
    assert (c.keymap, c.vga, c.usbdevice, c.soundhw) == ("de", "none", ["tablet", "mouse"], "ac97")
    assert (c.gfx_passthru, c.boot, c.timeoffset) == (True, "dc", "3600")
    assert c.serial == ["pty", "file:/var/log/s1"]
    assert c.stubdomain_kernel == "/usr/lib/xen/boot/ioemu-stubdom.gz"
    assert (c.stubdomain_cmdline, c.device_model_args, c.device_model_args_hvm) == (
        "-d 9",
        ["-a"],
        ["-b", "-c"],
    )
    assert (c.on_poweroff, c.on_reboot, c.on_crash) == ("preserve", "destroy", "coredump-restart")
    (p,) = c.pcis
    assert (p.msitranslate, p.seize, p.permissive) == (False, True, False)


def test_gfx_passthru_as_a_kind() -> None:
    assert cfg('gfx_passthru = "igd"').gfx_passthru is True
    assert "gfx_passthru" in err('gfx_passthru = "nvidia"').message


def test_stdvga_is_the_old_spelling_of_vga_and_vga_wins() -> None:
    assert cfg("stdvga = 1").vga == "stdvga"
    assert cfg("stdvga = 0").vga == "cirrus"
    assert cfg('stdvga = 1\nvga = "cirrus"').vga == "cirrus"


def test_vif_devids_are_positions_and_macs_are_seedable() -> None:
    c = cfg("vif = [ '', 'bridge=xenbr1', 'type=vif' ]")
    assert [n.devid for n in c.nics] == [0, 1, 2]
    assert [n.type for n in c.nics] == [NicType.IOEMU, NicType.IOEMU, NicType.VIF]
    assert [n.mac for n in c.nics] == [
        n.mac for n in cfg("vif = [ '', 'bridge=xenbr1', 'type=vif' ]").nics
    ]
    assert len({n.mac for n in c.nics}) == 3


def test_builder_hvm_is_accepted() -> None:
    assert parse_config('builder = "hvm"\nname = "x"').name == "x"


def test_unknown_keys_are_logged_at_info_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="stubdom.toolstack.configure"):
        c = cfg("cpus = \"0-3\"\nfrobnicate = 1\nvfb = [ 'vnc=1' ]")
    assert c.name == "g"
    records = {r.getMessage(): r.levelno for r in caplog.records}
    assert any("frobnicate" in m and lvl == logging.INFO for m, lvl in records.items())
    assert any("cpus" in m and lvl == logging.INFO for m, lvl in records.items())
    assert any("vfb" in m and lvl == logging.WARNING for m, lvl in records.items())


# -- rejected ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "line", "col", "needle"),
    [
        ('bios = "seabios"', 3, 8, "qemu-xen-traditional requires bios=rombios"),
        ('bios = "ovmf"', 3, 8, "qemu-xen-traditional requires bios=rombios"),
        ('bios = "uefi"', 3, 8, "invalid value 'uefi' for `bios'"),
        (
            'device_model_version = "qemu-xen"',
            3,
            24,
            "only qemu-xen-traditional stubdomains",
        ),
        ('device_model_version = "qemu-kvm"', 3, 24, "unknown device_model_version"),
        ("device_model_stubdomain_override = 0", 3, 36, "only in a stubdomain"),
        ("memory = [ 512 ]", 3, 10, "`memory' must be a number, not a list"),
        ('memory = "lots"', 3, 10, "`memory' is not a valid number: 'lots'"),
        ("memory = 0", 3, 10, "below its minimum of 1"),
        ("memory = 5\nmemory += 12", 4, 1, "can't use += with numbers for `memory'"),
        ("vcpus = 4\nmaxvcpus = 2", 4, 12, "maxvcpus (2) < vcpus (4)"),
        ("memory = 512\nmaxmem = 256", 4, 10, "maxmem (256) is below memory (512)"),
        ('keymap = [ "de" ]', 3, 10, "`keymap' must be a single value, not a list"),
        ('disk = "/x,,hda"', 3, 8, "`disk' must be a list"),
        ("disk = [ [ '/x,,hda' ] ]", 3, 10, "items must be strings"),
        ("disk = [ '/x,,hda', '/x,bad,hdb' ]", 3, 21, "disk specification '/x,bad,hdb'"),
        ("disk = [ '/x,,hda', '/y,,hda' ]", 3, 8, "vdev 'hda' is used by more than one disk"),
        ("vif = [ 'mac=1:2' ]", 3, 9, "vif specification 'mac=1:2': invalid mac"),
        ("vif = [ 'devid=1', '' ]", 3, 7, "devid 1 is used by more than one vif"),
        ("pci = [ '01:00.0,name=x' ]", 3, 9, "bdf and name= exclude each other"),
        ("serial = 'pty'\nserial_list = [ 'vc' ]", 4, 15, "serial and serial_list are both set"),
        ("serial = [ 'a b' ]", 3, 12, "contains a blank"),
        ('vnclisten = "0.0.0.0:1"\nvncdisplay = 2', 4, 14, "both in vnclisten and vncdisplay"),
        ('vga = "qxl"', 3, 7, "needs qemu-xen"),
        ('vga = "vmware"', 3, 7, "invalid value 'vmware' for `vga'"),
        ('vga = "stdvga"\nvideoram = 4', 4, 12, "at least 8 MB for stdvga"),
        ("spice = 1", 3, 9, "spice is not supported"),
        ("dm_restrict = 1", 3, 15, "dm_restrict is not supported"),
        ('kernel = "/boot/vmlinuz"', 3, 10, "direct kernel boot"),
        ('on_crash = "explode"', 3, 12, "unknown on_crash action 'explode'"),
        ('uuid = "not-a-uuid"', 3, 8, "failed to parse UUID"),
        ('boot = "c d"', 3, 8, "invalid boot order"),
        ("pci = [ '01:00.0' ]\nmemory = 512\nmaxmem = 1024", 5, 10, "PoD"),
        ('type = "pv"', 3, 8, 'only "hvm" guests'),
        ('builder = "generic"', 3, 11, "contradicting"),
        ('name = ""', 3, 8, "must not be empty"),
    ],
)
def test_rejected_with_position(extra: str, line: int, col: int, needle: str) -> None:
    e = err(extra)
    assert needle in e.message, str(e)
    assert (e.file, e.line, e.column) == ("t.cfg", line, col), str(e)


def test_type_and_name_are_required() -> None:
    with pytest.raises(ConfigError, match='type = "hvm" is required'):
        parse_config('name = "x"', "a.cfg")
    with pytest.raises(ConfigError, match="domain name must be specified"):
        parse_config('type = "hvm"', "a.cfg")
    with pytest.raises(ConfigError, match="generic"):
        parse_config('builder = "generic"\nname = "x"', "a.cfg")


def test_override_errors_point_at_the_command_line() -> None:
    e = err("", ("vcpus=2", 'bios="seabios"'))
    assert (e.file, e.line, e.column) == ("<command line>", 2, 6)
    assert str(e).startswith("<command line>:2:6: qemu-xen-traditional requires bios=rombios")


def test_grammar_errors_come_through_parse_config() -> None:
    e = err("memory = 1.5")
    assert str(e).startswith("t.cfg:3:11: lexical error")
    assert "Python" in e.message


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unable to open configuration file"):
        load_config(tmp_path / "missing.cfg")
    bad = tmp_path / "bad.cfg"
    bad.write_bytes(b'type = "hvm"\nname = "\xff"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert (ei.value.line, ei.value.column) == (2, 9)
    assert "UTF-8" in ei.value.message
