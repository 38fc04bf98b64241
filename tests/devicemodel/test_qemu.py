"""The ``qemu`` device model against a real ``qemu-system-x86_64`` (TCG, no guest).

Each test starts its own QEMU (tens of ms) in a short run directory (the QMP socket path
must fit AF_UNIX) and checks that none is left behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
from stubdom.devicemodel.qemu import (
    FIRST_NIC_SLOT,
    NATIVE_HOTPLUG_GLOBAL,
    XEN_MIGRATION_GLOBALS,
    QemuDeviceModel,
    pack_payload,
    unpack_payload,
)
from stubdom.devicemodel.stream import decode_state, encode_state
from stubdom.protocol import PCI_INS_BAD_BDF, PCI_INS_NO_FREE_DEVFN, Bdf
from tests.support.daemons import need_peer, short_tmpdir

QEMU = "qemu-system-x86_64"
BDF_A = Bdf(0, 3, 0, 0)
BDF_B = Bdf(0, 4, 0, 0)
BDF_C = Bdf(0, 5, 0, 0)
#: One NIC, so the hot-plug ports are at slots 5 and 6.
SLOT0 = FIRST_NIC_SLOT + 1


def machine() -> MachineConfig:
    return MachineConfig(
        guest_domid=7, name="g7", vcpus=2, vcpu_avail=1, nics=[Nic(0, "00:16:3e:00:00:07")]
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Log(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


def need_qemu() -> None:
    need_peer(shutil.which(QEMU) is not None, f"{QEMU} (Debian qemu-system-x86)")


async def started(run_dir: Path, log: Log, state: bytes | None = None) -> QemuDeviceModel:
    dm = QemuDeviceModel(run_dir, hotplug_ports=2)
    await dm.start(machine(), log, state)
    return dm


@pytest.fixture
async def dm() -> AsyncIterator[QemuDeviceModel]:
    need_qemu()
    model = await started(short_tmpdir("qdm-"), Log())
    pid = model.pid
    assert pid is not None
    yield model
    await model.stop()
    assert gone(pid)


# -- without QEMU -----------------------------------------------------------------------


def test_command_line() -> None:
    dm = QemuDeviceModel(Path("/run/x"), qemu_binary="/q", hotplug_ports=2)
    argv = dm.command_line(machine(), incoming=True)
    assert argv[0] == "/q"
    text = " ".join(argv)
    assert "-machine q35,accel=tcg,suppress-vmdesc=on" in text
    for glob in (*XEN_MIGRATION_GLOBALS, NATIVE_HOTPLUG_GLOBAL):
        assert f"-global {glob}" in text
    assert "-S" in argv and "-nodefaults" in argv
    assert "-qmp unix:/run/x/qmp.sock,server=on,wait=off" in text
    assert "-incoming defer" in text
    assert "-bios /run/x/halt.bin" in text
    assert "-smp cpus=1,maxcpus=2" in text
    assert "-netdev user,id=net0,restrict=on" in text
    assert "pcie-root-port,id=hp5,bus=pcie.0,addr=0x5,chassis=5,slot=5" in text
    assert "pcie-root-port,id=hp6,bus=pcie.0,addr=0x6,chassis=6,slot=6" in text
    assert "-incoming" not in dm.command_line(machine())


def test_too_many_ports() -> None:
    with pytest.raises(DeviceModelError, match="do not fit"):
        QemuDeviceModel(Path("/run/x"), hotplug_ports=40).command_line(machine())


def test_payload_checks() -> None:
    payload = pack_payload({"version": 1, "hotplug": []}, b"QEVM\0\0\0\3rest")
    header, blob = unpack_payload(payload)
    assert blob == b"QEVM\0\0\0\3rest" and header["qemu_len"] == len(blob)
    for cut in (2, 10, len(payload) - 1):
        with pytest.raises(DeviceModelError, match="qemu state"):
            unpack_payload(payload[:cut])


async def test_refuses_bad_state_before_starting() -> None:
    run_dir = short_tmpdir("qdm-")
    for state, why in [
        (b"QEVM\0\0\0\3", "truncated"),
        (encode_state("sim", b"{}"), "'sim' device model"),
        (encode_state("qemu", b"junk"), "qemu state"),
    ]:
        dm = QemuDeviceModel(run_dir, qemu_binary="/nonexistent/qemu")
        with pytest.raises(DeviceModelError, match=why):
            await dm.start(machine(), Log(), state)
        assert dm.pid is None  # refused before any QEMU was run


async def test_bad_binary() -> None:
    dm = QemuDeviceModel(short_tmpdir("qdm-"), qemu_binary="/nonexistent/qemu")
    with pytest.raises(DeviceModelError, match="cannot run QEMU '/nonexistent/qemu'"):
        await dm.start(machine(), Log())
    await dm.stop()  # idempotent after a failed start


async def test_binary_that_exits() -> None:
    dm = QemuDeviceModel(short_tmpdir("qdm-"), qemu_binary="/bin/false")
    with pytest.raises(DeviceModelError, match="exited with status 1"):
        await dm.start(machine(), Log())


# -- with QEMU --------------------------------------------------------------------------


@pytest.mark.peer
async def test_start_stop() -> None:
    need_qemu()
    log = Log()
    dm = await started(short_tmpdir("qdm-"), log)
    pid = dm.pid
    assert pid is not None and not gone(pid)
    snap = dm.snapshot()
    assert snap["status"] == "running" and snap["vcpus"] == [0]
    pci = snap["pci"]
    assert isinstance(pci, dict)
    assert pci["05"] == ["0:hp5"] and pci["06"] == ["0:hp6"]
    assert any(line.startswith("qemu: ") and "-machine" in line for line in log)
    await dm.stop()
    assert gone(pid)
    assert not dm.socket_path.exists() and not dm.firmware_path.exists()
    assert dm.snapshot()["run_state"] == "stopped"
    await dm.stop()
    with pytest.raises(DeviceModelError):
        await dm.pause()


@pytest.mark.peer
async def test_qemu_rejects_command_line() -> None:
    need_qemu()
    dm = QemuDeviceModel(short_tmpdir("qdm-"))
    m = machine()
    m.nics[0] = Nic(0, "not-a-mac")
    with pytest.raises(DeviceModelError, match=r"exited with status 1: .*mac"):
        await dm.start(m, Log())
    assert dm.pid is not None and gone(dm.pid)


@pytest.mark.peer
async def test_pci_insert(dm: QemuDeviceModel) -> None:
    assert await dm.pci_insert(PciRequest(BDF_A)) == SLOT0 << 3
    assert await dm.pci_insert(PciRequest(BDF_B, devfn=(SLOT0 + 1) << 3)) == (SLOT0 + 1) << 3
    assert dm.snapshot()["hotplug"] == {"hp5": "pci-pt-03_00.0", "hp6": "pci-pt-04_00.0"}
    with pytest.raises(PciInsertFailed) as e:
        await dm.pci_insert(PciRequest(BDF_C))
    assert e.value.text == PCI_INS_NO_FREE_DEVFN


@pytest.mark.peer
async def test_pci_insert_refusals(dm: QemuDeviceModel) -> None:
    await dm.pci_insert(PciRequest(BDF_A, devfn=SLOT0 << 3))
    for req in [
        PciRequest(BDF_B, devfn=SLOT0 << 3),  # slot in use
        PciRequest(BDF_B, devfn=2 << 3),  # not a hot-plug slot (VGA)
        PciRequest(BDF_B, devfn=(SLOT0 + 1) << 3 | 1),  # function 1: not supported
        PciRequest(BDF_A),  # already passed through
    ]:
        with pytest.raises(PciInsertFailed) as e:
            await dm.pci_insert(req)
        assert e.value.text == PCI_INS_BAD_BDF, req
    assert dm.snapshot()["hotplug"] == {"hp5": "pci-pt-03_00.0"}


@pytest.mark.peer
async def test_pci_remove(dm: QemuDeviceModel) -> None:
    devfn = await dm.pci_insert(PciRequest(BDF_A))
    await dm.pause()  # native hot-plug completes paused as well as running
    assert await dm.pci_remove(Bdf(0x1, 3, 0, 0)) == devfn  # the segment is ignored
    await dm.wait_ejected(devfn)
    assert dm.snapshot()["hotplug"] == {}
    await dm.wait_ejected(devfn)  # already gone: returns at once
    assert await dm.pci_insert(PciRequest(BDF_B)) == devfn  # the slot is free again
    await dm.resume()
    assert await dm.pci_remove(BDF_B) == devfn
    await dm.wait_ejected(devfn)
    assert dm.snapshot()["hotplug"] == {}


@pytest.mark.peer
async def test_pci_remove_refusals(dm: QemuDeviceModel) -> None:
    with pytest.raises(PciRemoveFailed, match="no such"):
        await dm.pci_remove(BDF_A)
    devfn = await dm.pci_insert(PciRequest(BDF_A))
    with pytest.raises(PciRemoveFailed, match="no such"):
        await dm.pci_remove(Bdf(0, 3, 0, 1))  # another function of the same device
    with pytest.raises(DeviceModelError, match="no eject was requested"):
        await dm.wait_ejected(devfn)


@pytest.mark.peer
async def test_pause_resume(dm: QemuDeviceModel) -> None:
    await dm.pause()
    assert dm.snapshot()["status"] == "paused"
    await dm.resume()
    assert dm.snapshot()["status"] == "running"


@pytest.mark.peer
async def test_recorded_only(dm: QemuDeviceModel) -> None:
    await dm.set_vcpus({0, 1})
    await dm.usb_add("tablet")
    assert dm.snapshot()["vcpus"] == [0, 1] and dm.snapshot()["usb"] == ["tablet"]
    await dm.usb_del("tablet")
    with pytest.raises(DeviceModelError):
        await dm.usb_del("tablet")


@pytest.mark.peer
async def test_save_restore(dm: QemuDeviceModel) -> None:
    await dm.pci_insert(PciRequest(BDF_A, devfn=(SLOT0 + 1) << 3))
    await dm.set_vcpus({0, 1})
    state = await dm.save_state()
    assert dm.snapshot()["status"] == "paused"
    backend, payload = decode_state(state)
    header, blob = unpack_payload(payload)
    assert backend == "qemu" and blob.startswith(b"QEVM\0\0\0\3")
    assert header["hotplug"] == [{"devfn": 0x30, "bdf": "0000:03:00.0", "driver": "pci-testdev"}]
    await dm.resume()
    before = dm.snapshot()

    log = Log()
    copy = await started(short_tmpdir("qdm-"), log, state)  # the source still runs
    try:
        assert copy.snapshot() == before
        assert any("restored" in line for line in log)
        # The re-added function is really there: QEMU ejects it.
        assert await copy.pci_remove(BDF_A) == 0x30
        await copy.wait_ejected(0x30)
        # And the restored machine saves again.
        again = await copy.save_state()
        assert unpack_payload(decode_state(again)[1])[0]["hotplug"] == []
    finally:
        await copy.stop()


@pytest.mark.peer
async def test_restore_of_damaged_device_state(dm: QemuDeviceModel) -> None:
    await dm.pci_insert(PciRequest(BDF_A))
    header, blob = unpack_payload(decode_state(await dm.save_state())[1])
    del header["qemu_len"]
    bad = encode_state("qemu", pack_payload(header, blob[: len(blob) // 2]))
    copy = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=2)
    with pytest.raises(DeviceModelError, match=r"migrate-incoming: failed: .*load"):
        await copy.start(machine(), Log(), bad)
    assert copy.pid is not None and gone(copy.pid)


@pytest.mark.peer
async def test_machine_with_disks() -> None:
    """Readable images become drives (IDE on q35's AHCI, SCSI on an LSI), an empty CD-ROM
    stays, a path that is no file is recorded only; the machine saves and restores."""
    need_qemu()
    images = short_tmpdir("qimg-")
    (images / "hda.img").write_bytes(bytes(1 << 20))
    (images / "sda.img").write_bytes(bytes(1 << 20))
    m = machine()
    m.vga = "stdvga"
    m.disks = [
        Disk("hda", DiskBus.IDE, 0, str(images / "hda.img")),
        Disk("hdb", DiskBus.IDE, 1, "/dev/vg/not-here"),
        Disk("hdc", DiskBus.IDE, 2, "", cdrom=True),
        Disk("sda", DiskBus.SCSI, 0, str(images / "sda.img"), readonly=True),
    ]
    text = " ".join(QemuDeviceModel(Path("/r")).command_line(m))
    assert "id=disk-hda,media=disk,file=" in text and "if=ide,index=0" in text
    assert "disk-hdb" not in text
    assert "id=disk-hdc,media=cdrom,if=ide,index=2" in text
    assert "scsi-hd,bus=scsi0.0,scsi-id=0,drive=disk-sda" in text
    dm = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=1)
    await dm.start(m, Log())
    try:
        pci = dm.snapshot()["pci"]
        assert isinstance(pci, dict)
        assert pci["02"] == ["0:VGA controller"] and pci["03"] == ["0:scsi0"]
        await dm.pci_insert(PciRequest(BDF_A))
        state = await dm.save_state()
        copy = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=1)
        await copy.start(m, Log(), state)
        try:
            assert copy.snapshot()["hotplug"] == {"hp5": "pci-pt-03_00.0"}
            assert copy.snapshot()["pci"] == pci
        finally:
            await copy.stop()
    finally:
        await dm.stop()


@pytest.mark.peer
async def test_e1000_stand_in() -> None:
    """An e1000 has a ROM (a RAM block in the stream): the restore re-adds it first."""
    need_qemu()
    dm = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=2, passthrough_driver="e1000")
    await dm.start(machine(), Log())
    try:
        await dm.pci_insert(PciRequest(BDF_A, devfn=(SLOT0 + 1) << 3))
        state = await dm.save_state()
    finally:
        await dm.stop()
    copy = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=2)  # the state says e1000
    await copy.start(machine(), Log(), state)
    try:
        assert copy.snapshot()["hotplug"] == {"hp6": "pci-pt-03_00.0"}
        assert copy.snapshot()["status"] == "running"
    finally:
        await copy.stop()


@pytest.mark.peer
async def test_failed_restore_leaves_no_qemu(dm: QemuDeviceModel) -> None:
    header, blob = unpack_payload(decode_state(await dm.save_state())[1])
    del header["qemu_len"]
    header["hotplug"] = [{"devfn": 2 << 3, "bdf": "0000:03:00.0", "driver": "pci-testdev"}]
    state = encode_state("qemu", pack_payload(header, blob))
    copy = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=2)
    with pytest.raises(DeviceModelError, match="not a hot-plug slot"):
        await copy.start(machine(), Log(), state)
    assert copy.pid is not None and gone(copy.pid)  # QEMU ran, and was stopped


@pytest.mark.peer
async def test_qemu_dies(dm: QemuDeviceModel) -> None:
    assert dm.pid is not None
    os.kill(dm.pid, signal.SIGKILL)
    with pytest.raises(DeviceModelError, match="QEMU exited with status -9"):
        await dm.pause()
    assert dm.snapshot()["status"] == "exited"


@pytest.mark.peer
async def test_state_of_another_machine_refused(dm: QemuDeviceModel) -> None:
    state = await dm.save_state()
    other = machine()
    other.nics.append(Nic(1, "00:16:3e:00:00:08"))
    copy = QemuDeviceModel(short_tmpdir("qdm-"), hotplug_ports=2)
    with pytest.raises(DeviceModelError, match="does not fit this machine"):
        await copy.start(other, Log(), state)
    assert copy.pid is None


@pytest.mark.peer
async def test_concurrent_inserts_take_different_slots(dm: QemuDeviceModel) -> None:
    got = await asyncio.gather(dm.pci_insert(PciRequest(BDF_A)), dm.pci_insert(PciRequest(BDF_B)))
    assert sorted(got) == [SLOT0 << 3, (SLOT0 + 1) << 3]
