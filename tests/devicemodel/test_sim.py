"""The ``sim`` device model: layout, qemu-trad's hot-plug rules, eject, save/restore."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubdom.devicemodel.base import (
    DeviceModelError,
    Disk,
    DiskBus,
    MachineConfig,
    Nic,
    PciInsertFailed,
    PciRemoveFailed,
    PciRequest,
)
from stubdom.devicemodel.sim import SimDeviceModel
from stubdom.devicemodel.stream import (
    DecodedState,
    StreamError,
    StreamReader,
    decode_state,
    decode_state_view_for,
    encode_state,
)
from stubdom.protocol import AUTO_PHP_SLOT, PCI_INS_BAD_BDF, PCI_INS_NO_FREE_DEVFN, Bdf

MAC1 = "00:16:3e:00:00:01"
MAC2 = "00:16:3e:00:00:02"


def machine(**kw: object) -> MachineConfig:
    return MachineConfig(guest_domid=5, **kw)  # type: ignore[arg-type]


def req(bdf: str, devfn: int = AUTO_PHP_SLOT) -> PciRequest:
    return PciRequest(Bdf.parse(bdf), devfn)


async def started(
    cfg: MachineConfig | None = None,
    state: bytes | bytearray | DecodedState | None = None,
    **kw: object,
) -> tuple[SimDeviceModel, list[str]]:
    lines: list[str] = []
    dm = SimDeviceModel(**kw)  # type: ignore[arg-type]
    await dm.start(cfg or machine(), lines.append, state)
    return dm, lines


# -- fixed layout -------------------------------------------------------------------------


async def test_default_machine_layout() -> None:
    dm, lines = await started(machine(nics=[Nic(0, MAC1)]))
    assert dm.layout() == {
        "00.0": "host-bridge",
        "01.0": "piix3-isa",
        "01.1": "piix3-ide",
        "02.0": "cirrus-vga",
        "03.0": "xen-platform",
        "04.0": "rtl8139",
    }
    assert dm.snapshot()["php_slots"] == list(range(5, 32))
    assert dm.snapshot()["run_state"] == "running"
    assert any("running" in line for line in lines)


async def test_full_machine_layout() -> None:
    cfg = machine(
        acpi=True,
        usb=True,
        vga="stdvga",
        videoram_mb=16,
        soundhw="es1370",
        nics=[Nic(0, MAC1, "e1000"), Nic(1, MAC2, "rtl8139")],
        disks=[
            Disk("hda", DiskBus.IDE, 0, "/img/a"),
            Disk("hdc", DiskBus.IDE, 2, "/img/c", cdrom=True, readonly=True),
            Disk("sdb", DiskBus.SCSI, 1, "/img/s"),
        ],
    )
    dm, _ = await started(cfg)
    assert dm.layout() == {
        "00.0": "host-bridge",
        "01.0": "piix3-isa",
        "01.1": "piix3-ide",
        "01.2": "piix3-uhci",
        "01.3": "piix4-acpi",
        "02.0": "std-vga",
        "03.0": "xen-platform",
        "04.0": "e1000",
        "05.0": "rtl8139",
        "06.0": "es1370",
        "07.0": "lsi53c895a",
    }
    snap = dm.snapshot()
    disks = snap["disks"]
    assert isinstance(disks, list)
    assert [(d["vdev"], d["bus"], d["index"]) for d in disks] == [
        ("hda", "ide", 0),
        ("hdc", "ide", 2),
        ("sdb", "scsi", 1),
    ]
    assert (disks[1]["ide_bus"], disks[1]["ide_unit"], disks[1]["cdrom"]) == (1, 0, True)
    assert snap["nics"] == [
        {"mac": MAC1, "model": "e1000", "vlan": 0},
        {"mac": MAC2, "model": "rtl8139", "vlan": 1},
    ]
    assert snap["php_slots"] == list(range(8, 32))


async def test_vga_none_moves_the_platform_device_up() -> None:
    dm, _ = await started(machine(vga="none", nics=[Nic(0, MAC1)]))
    assert dm.layout() == {
        "00.0": "host-bridge",
        "01.0": "piix3-isa",
        "01.1": "piix3-ide",
        "02.0": "xen-platform",
        "03.0": "rtl8139",
    }


async def test_gfx_passthru_keeps_slot_2_for_the_igd() -> None:
    dm, _ = await started(machine(gfx_passthru=True, nics=[Nic(0, MAC1)]))
    layout = dm.layout()
    assert "02.0" not in layout and layout["03.0"] == "xen-platform"
    assert await dm.pci_insert(req("00:02.0")) == 0x10  # the IGD at its host devfn
    assert await dm.pci_insert(req("05:00.0")) == 5 << 3  # AUTO never picks slot 2


async def test_out_of_range_disks_are_skipped_and_logged() -> None:
    cfg = machine(disks=[Disk("hde", DiskBus.IDE, 4, "/x"), Disk("hda", DiskBus.IDE, 0, "/a")])
    dm, lines = await started(cfg)
    assert [d["vdev"] for d in dm.snapshot()["disks"]] == ["hda"]  # type: ignore[attr-defined]
    assert any("hde" in line and "out of range" in line for line in lines)


async def test_unsupported_nic_and_vga() -> None:
    with pytest.raises(DeviceModelError, match="Unsupported NIC: virtio-net-pci"):
        await started(machine(nics=[Nic(0, MAC1, "virtio-net-pci")]))
    with pytest.raises(DeviceModelError, match="unknown VGA type"):
        await started(machine(vga="qxl"))


# -- pci-ins ------------------------------------------------------------------------------


async def test_auto_takes_function_0_of_the_first_free_hotplug_slot() -> None:
    dm, _ = await started()  # php slots 04-1f
    assert await dm.pci_insert(req("03:00.0")) == 0x20
    assert await dm.pci_insert(req("03:00.1")) == 0x28  # AUTO: always function 0
    assert dm.layout()["04.0"] == "passthrough 0000:03:00.0"


async def test_requested_devfn_and_a_second_function_in_its_slot() -> None:
    dm, _ = await started()
    assert await dm.pci_insert(req("03:00.1", 0x31)) == 0x31
    assert await dm.pci_insert(req("03:00.0", 0x30)) == 0x30
    # AUTO skips a slot with any function used
    assert await dm.pci_insert(req("04:00.0")) == 0x20
    assert await dm.pci_insert(req("04:00.1")) == 0x28
    assert await dm.pci_insert(req("04:00.2")) == 0x38


async def test_requested_devfn_in_use_is_wrong_bdf_or_vdevfn() -> None:
    dm, _ = await started()
    await dm.pci_insert(req("03:00.0", 0x40))
    with pytest.raises(PciInsertFailed) as e:
        await dm.pci_insert(req("04:00.0", 0x40))
    assert e.value.text == PCI_INS_BAD_BDF == "wrong bdf or vdevfn"
    # an emulated device's devfn, and one outside the hot-plug slots, likewise
    for devfn in (0x18, 0x09):
        with pytest.raises(PciInsertFailed, match=r"^wrong bdf or vdevfn$"):
            await dm.pci_insert(req("04:00.0", devfn))
    # the same host function twice
    with pytest.raises(PciInsertFailed, match=r"^wrong bdf or vdevfn$"):
        await dm.pci_insert(req("0000:03:00.0"))


async def test_all_slots_used_is_no_free_hotplug_devfn() -> None:
    dm, _ = await started(php_slots=[6, 7])
    assert await dm.pci_insert(req("03:00.0")) == 0x30
    assert await dm.pci_insert(req("03:00.1")) == 0x38
    with pytest.raises(PciInsertFailed) as e:
        await dm.pci_insert(req("03:00.2"))
    assert e.value.text == PCI_INS_NO_FREE_DEVFN == "no free hotplug devfn"
    # the slot set is configurable: slot 8 is free but not a hot-plug slot
    with pytest.raises(PciInsertFailed, match=PCI_INS_BAD_BDF):
        await dm.pci_insert(req("03:00.2", 0x40))
    # a function still free in a used slot can be requested
    assert await dm.pci_insert(req("03:00.2", 0x32)) == 0x32


def test_bad_php_slots() -> None:
    with pytest.raises(ValueError, match="outside"):
        SimDeviceModel(php_slots=[32])


# -- pci-rem and the guest's eject --------------------------------------------------------


async def test_pci_remove_refuses_unknown_and_non_zero_function() -> None:
    dm, _ = await started(eject_delay=None)
    with pytest.raises(PciRemoveFailed, match="not a passed-through device"):
        await dm.pci_remove(Bdf.parse("09:00.0"))
    await dm.pci_insert(req("03:00.1", 0x29))
    await dm.pci_insert(req("03:00.0", 0x28))
    with pytest.raises(PciRemoveFailed, match="non-zero function"):
        await dm.pci_remove(Bdf.parse("03:00.1"))
    assert dm.snapshot()["eject_pending"] == []
    assert await dm.pci_remove(Bdf.parse("7:03:00.0")) == 0x28  # the segment is ignored
    assert dm.snapshot()["eject_pending"] == [5]


async def test_the_guest_ejects_the_whole_slot_after_the_delay() -> None:
    slept: list[float] = []

    async def sleep(t: float) -> None:
        slept.append(t)

    dm, lines = await started(eject_delay=2.5, sleep=sleep)
    await dm.pci_insert(req("03:00.1", 0x29))
    await dm.pci_insert(req("03:00.0", 0x28))
    await dm.pci_insert(req("04:00.0"))
    devfn = await dm.pci_remove(Bdf.parse("03:00.0"))
    await asyncio.wait_for(dm.wait_ejected(devfn), 5)
    assert slept == [2.5]
    layout = dm.layout()  # 05.0 and 05.1 powered off, 04.0 stays
    assert "05.0" not in layout and "05.1" not in layout and "04.0" in layout
    assert dm.snapshot()["eject_pending"] == []
    assert any("ejected slot 05" in line for line in lines)
    await dm.wait_ejected(devfn)  # already ejected: returns at once
    assert await dm.pci_insert(req("03:00.0")) == 0x28  # the slot is free again


async def test_a_guest_that_never_ejects() -> None:
    dm, _ = await started(eject_delay=None)
    devfn = await dm.pci_insert(req("03:00.0"))
    assert await dm.pci_remove(Bdf.parse("03:00.0")) == devfn
    # A bound on the wait, not a timing assumption: nothing would ever complete it.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(dm.wait_ejected(devfn), 0.05)
    assert dm.layout()["04.0"] == "passthrough 0000:03:00.0"
    waiter = asyncio.ensure_future(dm.wait_ejected(devfn))
    await asyncio.sleep(0)
    await dm.stop()
    with pytest.raises(DeviceModelError, match="stopped before slot 04 was ejected"):
        await waiter


async def test_a_paused_guest_does_not_eject() -> None:
    dm, _ = await started(eject_delay=0)
    devfn = await dm.pci_insert(req("03:00.0"))
    await dm.pause()
    await dm.pci_remove(Bdf.parse("03:00.0"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert dm.snapshot()["eject_pending"] == [4]
    await dm.resume()
    await asyncio.wait_for(dm.wait_ejected(devfn), 5)
    assert dm.snapshot()["passthrough"] == []


# -- run state, vcpus, usb ----------------------------------------------------------------


async def test_pause_resume_stop() -> None:
    dm = SimDeviceModel()
    assert dm.snapshot()["run_state"] == "created"
    with pytest.raises(DeviceModelError, match="not started"):
        await dm.pause()
    await dm.start(machine(), lambda _l: None)
    await dm.pause()
    await dm.pause()  # idempotent
    assert dm.snapshot()["run_state"] == "paused" and not dm.running
    await dm.resume()
    assert dm.snapshot()["run_state"] == "running" and dm.running
    await dm.stop()
    await dm.stop()
    assert dm.snapshot()["run_state"] == "stopped"
    with pytest.raises(DeviceModelError, match="stopped"):
        await dm.pci_insert(req("03:00.0"))
    with pytest.raises(DeviceModelError, match="already started"):
        await dm.start(machine(), lambda _l: None)


async def test_vcpus() -> None:
    dm, _ = await started(machine(vcpus=4, vcpu_avail=0b0101))
    assert dm.snapshot()["vcpus_online"] == [0, 2]
    await dm.set_vcpus({0, 1, 2, 3})
    assert dm.snapshot()["vcpus_online"] == [0, 1, 2, 3]
    with pytest.raises(DeviceModelError, match=r"vcpus \[4\] out of range"):
        await dm.set_vcpus({0, 4})
    assert dm.snapshot()["vcpus_online"] == [0, 1, 2, 3]


async def test_usb() -> None:
    dm, lines = await started(machine(usb=True, usbdevices=["tablet", "bogus"]))
    assert dm.snapshot()["usb_devices"] == ["tablet"]
    assert any("bogus" in line for line in lines)
    await dm.usb_add("host:1234:5678")
    await dm.usb_add("tablet")
    assert dm.snapshot()["usb_devices"] == ["tablet", "host:1234:5678", "tablet"]
    await dm.usb_del("tablet")
    assert dm.snapshot()["usb_devices"] == ["host:1234:5678", "tablet"]
    with pytest.raises(DeviceModelError, match="no such USB device"):
        await dm.usb_del("mouse")
    with pytest.raises(DeviceModelError, match="unknown USB device spec"):
        await dm.usb_add("frobnicator")
    nousb, _ = await started()
    with pytest.raises(DeviceModelError, match="no USB controller"):
        await nousb.usb_add("tablet")


# -- save / restore -----------------------------------------------------------------------

RICH = machine(
    vcpus=4,
    vcpu_avail=0b11,
    acpi=True,
    usb=True,
    nics=[Nic(0, MAC1), Nic(1, MAC2, "e1000")],
    disks=[Disk("hda", DiskBus.IDE, 0, "/a"), Disk("sda", DiskBus.SCSI, 0, "/s")],
)


async def test_save_pauses_and_restore_gives_the_machine_back() -> None:
    dm, _ = await started(RICH, eject_delay=None)
    await dm.pci_insert(req("03:00.0"))
    await dm.pci_insert(PciRequest(Bdf.parse("03:00.1"), 0x49, msitranslate=True))
    await dm.pci_remove(Bdf.parse("03:00.0"))
    await dm.set_vcpus({0, 3})
    await dm.usb_add("mouse")
    before = dm.snapshot()
    state = await dm.save_state()
    assert dm.snapshot()["run_state"] == "paused"  # like do_savevm's vm_stop
    assert decode_state(state)[0] == "sim"
    again, lines = await started(RICH, state, eject_delay=None)
    assert again.snapshot() == before
    assert await again.save_state() == state
    assert any("restored" in line for line in lines)


async def test_guest_ram_travels_in_the_state_bit_for_bit() -> None:
    """``ram_mb`` (the agent's --sim-ram): the RAM is in the state and comes back as is."""
    dm, _ = await started(RICH, ram_mb=1)
    state = await dm.save_state()
    plain, _ = await started(RICH)
    assert len(state) > (1 << 20) > len(await plain.save_state())
    again, _ = await started(dataclasses.replace(RICH, guest_domid=9), state, ram_mb=1)
    assert await again.save_state() == state  # a new domid does not change the RAM
    with pytest.raises(DeviceModelError, match="ram_mb differs"):
        await started(RICH, state, ram_mb=2)
    with pytest.raises(DeviceModelError, match="ram_mb differs"):
        await started(RICH, state)
    payload = decode_state(state)[1]
    with pytest.raises(StreamError, match="bytes of RAM for a machine of 1 MiB"):
        await started(RICH, encode_state("sim", payload[:-1]), ram_mb=1)


async def test_the_state_in_pieces_is_the_state() -> None:
    """What the agent writes to console 1 (`save_state_parts`: the RAM not copied) and
    what it hands back from console 2 (the stream in a bytearray) are the same state."""
    dm, _ = await started(RICH, ram_mb=1)
    parts = await dm.save_state_parts()
    state = b"".join(parts)
    assert state == await dm.save_state()
    again, _ = await started(RICH, bytearray(state), ram_mb=1)
    assert b"".join(await again.save_state_parts()) == state
    reader = StreamReader()
    reader.feed(state)
    decoded = reader.result()  # checked as it was read: not decoded again
    third, _ = await started(RICH, decoded, ram_mb=1)
    assert b"".join(await third.save_state_parts()) == state
    with pytest.raises(StreamError, match="written by the 'sim' device model, not 'qemu'"):
        decode_state_view_for("qemu", decoded)


async def test_restored_pending_eject_completes() -> None:
    dm, _ = await started(RICH, eject_delay=None)
    devfn = await dm.pci_insert(req("03:00.0"))
    await dm.pci_remove(Bdf.parse("03:00.0"))
    state = await dm.save_state()
    again, _ = await started(RICH, state, eject_delay=0)
    await asyncio.wait_for(again.wait_ejected(devfn), 5)
    assert again.snapshot()["passthrough"] == []


async def test_toolstack_reattach_after_restore_finds_the_function_in_place() -> None:
    """[RESTORE-TS]: after a restore the toolstack re-inserts its PCI devices."""
    dm, _ = await started(RICH)
    a = await dm.pci_insert(req("03:00.0"))
    b = await dm.pci_insert(req("04:00.0", 0x60))
    state = await dm.save_state()
    again, _ = await started(RICH, state)
    assert again.awaiting_reattach == {a, b}
    assert await again.pci_insert(req("03:00.0")) == a
    assert await again.pci_insert(req("04:00.0", 0x60)) == b
    assert again.awaiting_reattach == set()
    with pytest.raises(PciInsertFailed, match=PCI_INS_BAD_BDF):
        await again.pci_insert(req("03:00.0"))  # now it is a duplicate


async def test_state_from_another_backend_is_refused() -> None:
    with pytest.raises(StreamError, match="written by the 'qemu' device model, not 'sim'"):
        await started(RICH, encode_state("qemu", b"QEVM..."))


async def test_state_from_another_machine_is_refused() -> None:
    dm, _ = await started(RICH)
    state = await dm.save_state()
    other = dataclasses.replace(RICH, guest_domid=9, nics=[Nic(0, MAC1)])
    with pytest.raises(DeviceModelError, match="does not fit this machine: fixed_pci"):
        await started(other, state)
    # a new domid alone is fine: restore makes a new guest
    same = dataclasses.replace(RICH, guest_domid=9)
    await started(same, state)


async def test_cut_or_damaged_state_is_refused() -> None:
    dm, _ = await started(RICH)
    state = await dm.save_state()
    with pytest.raises(StreamError, match="truncated"):
        await started(RICH, state[:-1])
    with pytest.raises(StreamError, match="checksum"):
        await started(RICH, state[:-10] + b"?" + state[-9:])


async def test_malformed_payload_is_refused() -> None:
    dm, _ = await started(RICH)
    _, payload = decode_state(await dm.save_state())
    doc = json.loads(payload)
    doc["vcpus_online"] = [7]
    bad = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(StreamError, match="malformed"):
        await started(RICH, encode_state("sim", bad))
    with pytest.raises(StreamError, match="not JSON"):
        await started(RICH, encode_state("sim", b"\xff"))
    pretty = json.dumps(json.loads(payload), indent=1).encode()
    with pytest.raises(StreamError, match="canonical"):
        await started(RICH, encode_state("sim", pretty))


# A random history of hot-plug, eject, vcpu and usb changes.
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("ins"),
            st.integers(0, 5),
            st.integers(0, 7),
            st.sampled_from([AUTO_PHP_SLOT, 0x30, 0x31, 0x37, 0x48, 0x49, 0xF8, 0x18]),
        ),
        st.tuples(st.just("rem"), st.integers(0, 5), st.integers(0, 7)),
        st.tuples(st.just("eject"), st.integers(0, 31)),
        st.tuples(st.just("vcpus"), st.sets(st.integers(0, 3))),
        st.tuples(st.just("usb-add"), st.sampled_from(["tablet", "mouse", "host:1.2", "x"])),
        st.tuples(st.just("usb-del"), st.sampled_from(["tablet", "mouse", "host:1.2"])),
        st.tuples(st.just("pause")),
        st.tuples(st.just("resume")),
    ),
    max_size=25,
)


async def _apply(dm: SimDeviceModel, op: tuple[object, ...]) -> None:
    kind = op[0]
    try:
        if kind == "ins":
            _, bus, func, devfn = op
            await dm.pci_insert(PciRequest(Bdf(0, int(bus), 0, int(func)), int(devfn)))  # type: ignore[call-overload]
        elif kind == "rem":
            _, bus, func = op
            await dm.pci_remove(Bdf(0, int(bus), 0, int(func)))  # type: ignore[call-overload]
        elif kind == "eject":
            # the guest ejects whatever is pending in that slot (delay 0 in this machine)
            await asyncio.sleep(0)
        elif kind == "vcpus":
            await dm.set_vcpus(op[1])  # type: ignore[arg-type]
        elif kind == "usb-add":
            await dm.usb_add(str(op[1]))
        elif kind == "usb-del":
            await dm.usb_del(str(op[1]))
        elif kind == "pause":
            await dm.pause()
        elif kind == "resume":
            await dm.resume()
    except DeviceModelError:
        pass


@settings(max_examples=60, deadline=None)
@given(ops, st.sampled_from([None, 0.0]))
def test_save_restore_equality_over_random_histories(
    history: list[tuple[object, ...]], delay: float | None
) -> None:
    async def run() -> None:
        dm, _ = await started(RICH, eject_delay=delay)
        for op in history:
            await _apply(dm, op)
        await dm.resume()
        before = dm.snapshot()
        state = await dm.save_state()
        again, _ = await started(RICH, state, eject_delay=None)
        assert again.snapshot() == before
        assert await again.save_state() == state
        # the same machine saved twice gives the same bytes
        await dm.resume()
        assert dm.snapshot() == before
        assert await dm.save_state() == state
        await dm.stop()
        await again.stop()

    asyncio.run(run())
