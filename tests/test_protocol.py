"""The shared facts of the stubdomain protocol (docs/protocol.md)."""

from __future__ import annotations

import pytest

from stubdom import protocol as p


def test_paths() -> None:
    assert p.dm_path(6, 5) == "/local/domain/6/device-model/5"
    assert p.state_path(6, 5) == "/local/domain/6/device-model/5/state"
    assert p.command_path(6, 5).endswith("/command")
    assert p.target_path(6) == "/local/domain/6/target"
    assert p.device_model_domid_path(5) == "/local/domain/5/image/device-model-domid"
    assert p.dmargs_path("/vm/u") == "/vm/u/image/dmargs"
    assert p.dm_version_path(5) == "/libxl/5/dm-version"


def test_dmargs_encoding_follows_libxl_and_mini_os_splits_it_back() -> None:
    argv = ["stubdom-dm", "-d", "5", "-domain-name", "win7", "-sdl", "-M", "xenfv", "-acpi"]
    encoded = p.encode_dmargs(argv)
    assert encoded == " -d 5 -domain-name win7 -acpi"
    assert p.split_dmargs(encoded) == ["-d", "5", "-domain-name", "win7", "-acpi"]
    # Nothing is quoted: a space in an argument splits it (a known libxl limitation).
    assert p.split_dmargs(p.encode_dmargs(["x", "-domain-name", "my vm"])) == [
        "-domain-name",
        "my",
        "vm",
    ]
    assert p.split_dmargs(" a  'b c' \"d\" ''") == ["a", "b c", "d", ""]


def test_qemu_trad_prefix_dispatch() -> None:
    assert p.qemu_trad_dispatch("") is p.Command.SAVE
    assert p.qemu_trad_dispatch("pci-") is p.Command.PCI_REM
    assert p.qemu_trad_dispatch("pci-ins") is p.Command.PCI_INS
    assert p.qemu_trad_dispatch("flr") is None


def test_pci_formats() -> None:
    bdf = p.parse_bdf("0000:03:00.0")
    assert str(bdf) == "0000:03:00.0" and bdf.devfn == 0
    assert (
        p.pci_ins_parameter(bdf, 0x28, False, False)
        == "0000:03:00.0@28,msitranslate=0,power_mgmt=0"
    )
    assert p.pci_ins_parameter(p.parse_bdf("3:0.1"), 0, True, False) == (
        "0000:03:00.1,msitranslate=1,power_mgmt=0"
    )
    assert p.pci_rem_parameter(bdf) == "0000:03:00.0"
    assert p.pci_inserted_parameter(0x28) == "0x28"
    assert p.parse_pci_inserted("0x28") == 0x28
    with pytest.raises(ValueError, match="wrong format for the vdevfn"):
        p.parse_pci_inserted("no free hotplug devfn")
    for bad in ("03:00", "0000:03:20.0", "zz:00.0", "03:00.8"):
        with pytest.raises(ValueError, match=r"not a PCI address|exceeds"):
            p.parse_bdf(bad)
