"""disk, vif, PCI and serial spec strings, per their man pages and libxlu/xl."""

from __future__ import annotations

import random

import pytest

from stubdom.protocol import Bdf
from stubdom.toolstack.config import DiskFormat, DiskSpec, NicType, PciSpec, RdmPolicy
from stubdom.toolstack.specs import (
    SpecError,
    parse_disk,
    parse_mac,
    parse_pci,
    parse_serial,
    parse_vif,
    random_mac,
)

# -- disk ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "vdev=hda,/dev/vg/guest-volume",
        "phy:/dev/vg/guest-volume,hda,w",
        "raw:/dev/vg/guest-volume,hda,w",
    ],
)
def test_man_page_equivalents_plain_disk(spec: str) -> None:
    assert parse_disk(spec) == DiskSpec(vdev="hda", target="/dev/vg/guest-volume")


@pytest.mark.parametrize(
    "spec",
    [
        "/root/image.iso,,hdc,cdrom",
        "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
        "file:/root/image.iso,hdc:cdrom,r",
        "/root/image.iso,,hdc,devtype=cdrom",
    ],
)
def test_man_page_equivalents_cdrom(spec: str) -> None:
    assert parse_disk(spec) == DiskSpec(
        vdev="hdc", target="/root/image.iso", readwrite=False, cdrom=True
    )


def test_empty_cdrom() -> None:
    d = parse_disk(",hdc:cdrom,r")
    assert d == DiskSpec(
        vdev="hdc", target="", format=DiskFormat.EMPTY, readwrite=False, cdrom=True
    )
    assert parse_disk("vdev=hdc,devtype=cdrom") == d
    # A cdrom is read-only whatever access says (libxlu forces it).
    assert parse_disk(",hdc:cdrom,w").readwrite is False


def test_target_eats_the_rest_including_commas() -> None:
    d = parse_disk("vdev=xvda, format=qcow2, target=/images/a,b=c,d.img")
    assert (d.vdev, d.format, d.target) == ("xvda", DiskFormat.QCOW2, "/images/a,b=c,d.img")
    # One trailing comma is stripped, as libxlu does.
    assert parse_disk("vdev=xvda,target=/x,").target == "/x"


def test_keywords_and_flags() -> None:
    d = parse_disk(
        "vdev=xvdb,backend=driverdom,backendtype=qdisk,script=block-iscsi,"
        "direct-io-safe,no-discard,untrusted,specification=xen,access=r,format=vhd,"
        "target=iqn.x:y"
    )
    assert d == DiskSpec(
        vdev="xvdb",
        target="iqn.x:y",
        format=DiskFormat.VHD,
        readwrite=False,
        backend="driverdom",
        backendtype="qdisk",
        script="block-iscsi",
        direct_io_safe=True,
        discard=False,
        trusted=False,
    )
    assert parse_disk("/x,,hda,discard").discard is True


def test_deprecated_prefixes() -> None:
    assert parse_disk("tap:aio:/img,xvda,w").target == "/img"
    assert parse_disk("tap2:qcow2:/img,xvda,w").format == DiskFormat.QCOW2
    d = parse_disk("iscsi:iqn.2001-05.com.example:disk,hda,w")
    assert (d.script, d.target) == ("block-iscsi", "iqn.2001-05.com.example:disk")
    assert parse_disk("nbd:host:1234,hda,r").script == "block-nbd"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("/x,,", "no vdev specified"),
        ("vdev=hda", "no target specified"),
        (
            "/x,bogus,hda",
            "unknown value for format (raw, qcow, qcow2, vhd, qed or empty) near `bogus'",
        ),
        ("/x,raw,hda,rx", "unknown value for access (r, ro, w or rw) near `rx'"),
        ("/x,raw,hda,rw,extra", "too many positional parameters near `extra'"),
        ("/x,,hda,colour=blue", "unknown parameter near `colour=blue'"),
        ("/x,,hda,devtype=floppy", "unknown value for type"),
        ("/x,,hda:tape,w", "unknown deprecated type (cdrom or disk) near `tape'"),
        (",hda:tape", "unknown deprecated type (cdrom or disk) near `tape'"),
        ("foo:/x,hda,w", "unknown deprecated disk prefix near `foo:'"),
        ("vdev=hda,vdev=hdb,target=/x", "vdev respecified near `hdb'"),
        ("/x,raw,hda,format=qcow2", "format respecified near `qcow2'"),
        ("/a=b,,hda", "bad disk syntax near `/a=b'"),
        ("/x,,hda,backendtype=nfs", "unknown value for backendtype near `nfs'"),
        ("/x,,hda,specification=scsi", "unknown value for specification"),
        # Without a deprecated prefix the second positional is the format (libxlu).
        ("/x,hda,w", "near `hda'"),
    ],
)
def test_disk_errors_name_the_spec_and_the_part(spec: str, needle: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse_disk(spec)
    assert needle in str(ei.value)
    assert repr(spec) in str(ei.value)
    assert str(ei.value).startswith("disk specification ")


# -- vif ---------------------------------------------------------------------------------------


def test_empty_vif_gets_defaults_and_a_random_xen_mac() -> None:
    nic = parse_vif("", 0, random.Random(1))
    assert (nic.devid, nic.bridge, nic.model, nic.type) == (0, "xenbr0", "rtl8139", NicType.IOEMU)
    assert nic.mac.startswith("00:16:3e:")
    assert nic.mac == parse_vif("", 0, random.Random(1)).mac  # seedable


def test_random_macs_stay_in_the_lower_half_of_the_oui() -> None:
    rng = random.Random(7)
    for _ in range(200):
        mac = random_mac(rng)
        octets = [int(x, 16) for x in mac.split(":")]
        assert octets[:3] == [0x00, 0x16, 0x3E]
        assert octets[3] < 0x80
    assert random_mac().startswith("00:16:3e:")  # unseeded: system randomness


def test_vif_keys() -> None:
    nic = parse_vif(
        "mac=00:16:3E:74:3d:76, model=e1000,bridge=xenbr1,type=vif,vifname=web0,"
        "script=vif-route,ip=10.0.0.2,backend=netdom,mtu=9000",
        3,
    )
    assert nic.devid == 3
    assert nic.mac == "00:16:3e:74:3d:76"
    assert (nic.model, nic.bridge, nic.type, nic.ifname) == ("e1000", "xenbr1", NicType.VIF, "web0")
    assert (nic.script, nic.ip, nic.backend, nic.mtu) == ("vif-route", "10.0.0.2", "netdom", 9000)


def test_vif_devid_key_and_ignored_keys(caplog: pytest.LogCaptureFixture) -> None:
    nic = parse_vif("devid=7,rate=10Mb/s@20ms,accel=x,,frobnicate=1", 0, random.Random(0))
    assert nic.devid == 7
    assert "frobnicate" in caplog.text


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("mac=00:16:3e:zz:00:01", "invalid mac '00:16:3e:zz:00:01'"),
        ("mac=00:16:3e:00:01", "invalid mac"),
        ("mac=00:16:3e:100:00:01", "invalid mac"),
        ("type=tap", "invalid type 'tap': must be 'vif' or 'ioemu'"),
        ("mtu=big", "mtu='big' is not a number"),
        ("bridge", "`bridge' is not key=value"),
    ],
)
def test_vif_errors(spec: str, needle: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse_vif(spec, 0)
    assert needle in str(ei.value)
    assert str(ei.value).startswith(f"vif specification {spec!r}: ")


def test_parse_mac_normalises() -> None:
    assert parse_mac("0:16:3E:1:2:ab") == "00:16:3e:01:02:ab"


# -- pci ------------------------------------------------------------------------------------------


def test_pci_equivalent_forms() -> None:
    want = PciSpec(bdf=Bdf(0, 0x36, 0, 0), vslot=0x1A, seize=True)
    for spec in ("36:00.0@1a,seize=1", "36:00.0,vslot=1a,seize=1", "bdf=36:00.0,vslot=1a,seize=1"):
        assert parse_pci(spec) == want
    assert want.vdevfn == 0x1A << 3


def test_a_single_function_sits_at_function_0_of_its_slot() -> None:
    """As libxl: only function 0 raises the guest's hot-plug event, and pci-rem of a
    guest function other than 0 is never sent, so 03:00.1@06 goes to 06.0, not 06.1."""
    assert parse_pci("03:00.1@06").vdevfn == 0x06 << 3
    assert parse_pci("03:00.*@06").vdevfn == 0x06 << 3
    assert parse_pci("03:00.1").vdevfn == 0


def test_vslot_is_always_hex() -> None:
    assert parse_pci("01:00.0@10").vslot == 0x10
    assert parse_pci("01:00.0,vslot=0x1f").vslot == 0x1F


def test_vslot_above_0x1f_is_refused_as_libxlu_does() -> None:
    # The man page's own example uses @20, which libxlu's parse_vslot rejects (> 0x1f).
    with pytest.raises(SpecError, match="vslot '20' exceeds 0x1f"):
        parse_pci("36:00.0@20,seize=1")


def test_pci_domain_options_and_all_functions() -> None:
    p = parse_pci("0000:03:00.0@5,msitranslate=1,power_mgmt=0,permissive=1,rdm_policy=strict")
    assert p == PciSpec(
        bdf=Bdf(0, 3, 0, 0),
        vslot=5,
        msitranslate=True,
        permissive=True,
        rdm_policy=RdmPolicy.STRICT,
    )
    star = parse_pci("04:00.*")
    assert (star.bdf, star.all_functions) == (Bdf(0, 4, 0, 0), True)
    assert parse_pci("bdf=0001:04:1f.*").bdf == Bdf(1, 4, 0x1F, 0)


def test_pci_defaults_come_from_the_domain_wide_keys() -> None:
    p = parse_pci("01:00.0,power_mgmt=0", msitranslate=True, power_mgmt=True, seize=True)
    assert (p.msitranslate, p.power_mgmt, p.permissive, p.seize) == (True, False, False, True)


def test_pci_name() -> None:
    p = parse_pci("name=gpu0,seize=1")
    assert (p.name, p.seize) == ("gpu0", True)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("01:00.0,name=gpu", "bdf and name= exclude each other"),
        ("seize=1", "no device"),
        ("01:20.0", "device number '20'"),
        ("01:00.8", "`01:00.8' is not a PCI address"),
        ("01:00.0@xyz", "vslot 'xyz' is not a hex slot number"),
        ("01:00.0,colour=red", "unknown PCI_SPEC_STRING option 'colour'"),
        ("01:00.0,rdm_policy=loose", "must be 'strict' or 'relaxed'"),
        ("01:00.0,seize=yes", "seize='yes' is not a number"),
        ("bdf=1:2:3", "bdf='1:2:3' is not a PCI address"),
        ("01:00.0,bdf=02:00.0", "bdf given twice"),
        ("01:00.0,junk", "`junk' is not key=value"),
    ],
)
def test_pci_errors(spec: str, needle: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse_pci(spec)
    assert needle in str(ei.value)
    assert str(ei.value).startswith(f"PCI specification {spec!r}: ")


# -- serial ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["pty", "vc", "null", "none", "file:/var/log/dm-serial.log", "/dev/ttyS0", "tcp:0:4555"]
)
def test_serial_accepted(spec: str) -> None:
    assert parse_serial(spec) == spec


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty device"),
        ("file:/tmp/a b.log", "contains a blank"),
        ("file:", "lacks its argument"),
        ("teletype", "unknown device"),
    ],
)
def test_serial_refused(spec: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_serial(spec)
