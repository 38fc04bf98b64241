"""The ``qemu`` device model: upstream QEMU (TCG, no guest) driven over QMP.

The stubdomain agent speaks qemu-trad's xenstore protocol; this backend carries each
command out on a real ``qemu-system-x86_64`` the way libxl drives qemu-xen over QMP
(libxl_qmp.c, libxl_pci.c ``device_add``), with stand-ins that work without Xen (tried
on Debian's QEMU 7.2):

* the machine is ``q35`` with one ``pcie-root-port`` per hot-plug slot and the ICH9's
  ACPI hot-plug switched off, so a ``device_del`` completes with native PCIe hot-plug
  (``DEVICE_DELETED`` in tens of ms) although no guest acknowledges the eject;
* a passed-through host function is stood in for by a ``pci-testdev`` (``e1000`` on
  request) whose id is libxl's ``PCI_PT_QDEV_ID`` (``pci-pt-BB_DD.F``), because
  ``xen-pci-passthrough`` is not built into a QEMU without Xen;
* ``save`` is ``stop`` + ``xen-save-devices-state`` (device state only, like Xen) with
  the three migration globals of Xen's accelerator and ``suppress-vmdesc=on``, and a
  restore is ``-incoming defer`` + the same hot-plugs + ``migrate-incoming`` (never
  ``xen-load-devices-state``: it aborts under TCG);
* the firmware is a page of HLT instructions (`HALT_FIRMWARE`): no guest runs, so the
  machine never changes by itself and a device-state-only restore is exact.

The guest's view of a hot-plug slot is the root port's slot on ``pcie.0``: a function
inserted at slot ``s`` has devfn ``s << 3``.  Each root port holds one function
(function 0); multi-function slots are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import struct
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError

from stubdom.devicemodel.base import (
    BytesLike,
    DeviceModel,
    DeviceModelError,
    DiskBus,
    LogFn,
    MachineConfig,
    PciInsertFailed,
    PciRemoveFailed,
    PciRequest,
)
from stubdom.devicemodel.stream import (
    QEMU_VM_FILE_MAGIC,
    DecodedState,
    decode_state_for,
    encode_state,
)
from stubdom.protocol import AUTO_PHP_SLOT, PCI_INS_BAD_BDF, PCI_INS_NO_FREE_DEVFN, Bdf

log = logging.getLogger(__name__)

BACKEND = "qemu"

#: Guest RAM: no guest runs, only the firmware; the device state does not include RAM.
MEMORY_MB = 32
#: Fixed places of the cold-plugged devices on ``pcie.0`` (xenfv also has VGA at 02.0);
#: the NICs follow, then the hot-plug root ports.  Slot 0x1f is the ICH9's.
VGA_SLOT = 0x02
SCSI_SLOT = 0x03
FIRST_NIC_SLOT = 0x04
LAST_USABLE_SLOT = 0x1E

#: NIC models of qemu-trad's ``-net nic,model=`` and their upstream device names.
NIC_DEVICES = {
    "rtl8139": "rtl8139",
    "e1000": "e1000",
    "ne2k_pci": "ne2k_pci",
    "pcnet": "pcnet",
    "i82551": "i82551",
    "i82557b": "i82557b",
    "i82559er": "i82559er",
    "virtio": "virtio-net-pci",
}
VGA_DEVICES = {"cirrus": "cirrus-vga", "stdvga": "VGA"}

#: The compat properties Xen's accelerator sets (xen_accel_class_init): the device-state
#: file then has the layout Xen's QEMU writes.
XEN_MIGRATION_GLOBALS = (
    "migration.send-configuration=off",
    "migration.store-global-state=off",
    "migration.send-section-footer=off",
)
#: Native PCIe hot-plug on q35 root ports: removal needs no guest (tried on QEMU 7.2).
NATIVE_HOTPLUG_GLOBAL = "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"

# Guards against a wedged QEMU, not timing assumptions: every step takes milliseconds.
START_TIMEOUT = 15.0
COMMAND_TIMEOUT = 15.0
MIGRATION_TIMEOUT = 30.0
QUIT_TIMEOUT = 5.0

#: The firmware: 64 KiB of HLT (interrupts are off at reset, so the vCPU stays halted at
#: the reset vector).  No guest runs, so nothing in the machine changes by itself:
#: SeaBIOS would power on the occupied hot-plug slots (a removal would then wait for a
#: guest that never comes), reboot after 60 s without a boot disk (same effect), and its
#: state lives in RAM, which a device-state-only restore does not bring back (the
#: restored vCPU would run on zeroed memory, and the TPR-patching vapic it enables fails
#: to load).  A halted CPU in ROM restores exactly.
HALT_FIRMWARE = b"\xf4" * 65536
FIRMWARE_NAME = "halt.bin"

#: The version of the payload layout below.
STATE_VERSION = 1
_HEADER_LEN = struct.Struct(">I")

T = TypeVar("T")


def pci_pt_qdev_id(bdf: Bdf) -> str:
    """libxl's ``PCI_PT_QDEV_ID`` (``pci-pt-%02x_%02x.%01x``): the id of a passed-through
    function in QEMU, so the id names the host function as libxl would."""
    return f"pci-pt-{bdf.bus:02x}_{bdf.dev:02x}.{bdf.func:01x}"


def port_id(slot: int) -> str:
    return f"hp{slot}"


@dataclass(frozen=True)
class HotPlugged:
    """A function we inserted: where it sits and what stands in for it (kept in the
    state, because a restore must re-add it before QEMU accepts the stream)."""

    devfn: int
    bdf: Bdf
    driver: str

    @property
    def qdev_id(self) -> str:
        return pci_pt_qdev_id(self.bdf)

    def to_json(self) -> dict[str, object]:
        return {"devfn": self.devfn, "bdf": str(self.bdf), "driver": self.driver}

    @classmethod
    def from_json(cls, obj: object) -> HotPlugged:
        if not isinstance(obj, dict):
            raise ValueError(f"hot-plug entry is not an object: {obj!r}")
        devfn, bdf, driver = obj.get("devfn"), obj.get("bdf"), obj.get("driver")
        if not isinstance(devfn, int) or not isinstance(bdf, str) or not isinstance(driver, str):
            raise ValueError(f"hot-plug entry lacks devfn/bdf/driver: {obj!r}")
        return cls(devfn, Bdf.parse(bdf), driver)


def hotplug_slots(machine: MachineConfig, ports: int) -> list[int]:
    """The guest slots of the hot-plug root ports: right after the NICs, like qemu-trad
    whose first free hot-plug slot follows the emulated devices."""
    first = FIRST_NIC_SLOT + len(machine.nics)
    slots = list(range(first, first + ports))
    if ports < 0 or (slots and slots[-1] > LAST_USABLE_SLOT):
        raise DeviceModelError(
            f"{len(machine.nics)} NICs and {ports} hot-plug ports do not fit on pcie.0 "
            f"(slots {FIRST_NIC_SLOT:#x}-{LAST_USABLE_SLOT:#x})"
        )
    return slots


def machine_argv(machine: MachineConfig, ports: int) -> list[str]:
    """The machine part of the command line (what a saved state must be restored on)."""
    argv = [
        "-machine", "q35,accel=tcg,suppress-vmdesc=on",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-m", str(MEMORY_MB),
    ]  # fmt: skip
    online = max(1, sum(1 for n in range(machine.vcpus) if machine.vcpu_avail >> n & 1))
    argv += ["-smp", f"cpus={online},maxcpus={max(machine.vcpus, online)}"]
    for glob in (*XEN_MIGRATION_GLOBALS, NATIVE_HOTPLUG_GLOBAL):
        argv += ["-global", glob]
    if machine.vga != "none":
        vga = VGA_DEVICES.get(machine.vga)
        if vga is None:
            raise DeviceModelError(f"unknown vga {machine.vga!r} (cirrus, stdvga or none)")
        argv += ["-device", f"{vga},bus=pcie.0,addr={VGA_SLOT:#x}"]
    argv += _disk_argv(machine)
    for n, nic in enumerate(machine.nics):
        model = NIC_DEVICES.get(nic.model)
        if model is None:
            raise DeviceModelError(f"unknown NIC model {nic.model!r} ({', '.join(NIC_DEVICES)})")
        # User-mode networking with restrict=on: runnable without privileges, no traffic out.
        argv += ["-netdev", f"user,id=net{n},restrict=on"]
        argv += [
            "-device",
            f"{model},netdev=net{n},mac={nic.mac},bus=pcie.0,addr={FIRST_NIC_SLOT + n:#x}",
        ]
    for slot in hotplug_slots(machine, ports):
        argv += [
            "-device",
            f"pcie-root-port,id={port_id(slot)},bus=pcie.0,addr={slot:#x},"
            f"chassis={slot},slot={slot}",
        ]
    return argv


def _disk_argv(machine: MachineConfig) -> list[str]:
    """Disks whose path is a readable file become drives (``file.locking=off``: the image
    belongs to dom0's backend, and a restore may start while the saved QEMU still runs);
    other paths (devices of the simulated host) are only recorded.  An empty CD-ROM
    drive is kept, since it is part of the machine."""
    argv: list[str] = []
    scsi = False
    for disk in machine.disks:
        readable = os.path.isfile(disk.path) and os.access(disk.path, os.R_OK)
        if not readable and not disk.cdrom:
            log.info("disk %s: %r is not a readable file; recorded only", disk.vdev, disk.path)
            continue
        opts = [f"id=disk-{disk.vdev}", f"media={'cdrom' if disk.cdrom else 'disk'}"]
        if readable:
            opts += [f"file={disk.path}", "format=raw", "file.locking=off"]
            if disk.readonly or disk.cdrom:
                opts.append("readonly=on")
        if disk.bus is DiskBus.IDE:
            # q35's AHCI has one unit per port: qemu-trad's IDE index becomes the port.
            argv += ["-drive", ",".join([*opts, "if=ide", f"index={disk.index}"])]
            continue
        if not scsi:
            argv += ["-device", f"lsi53c895a,id=scsi0,bus=pcie.0,addr={SCSI_SLOT:#x}"]
            scsi = True
        argv += ["-drive", ",".join([*opts, "if=none"])]
        kind = "scsi-cd" if disk.cdrom else "scsi-hd"
        argv += ["-device", f"{kind},bus=scsi0.0,scsi-id={disk.index},drive=disk-{disk.vdev}"]
    return argv


def pack_payload(header: dict[str, object], blob: bytes) -> bytes:
    """The backend's payload in the state stream: a length-prefixed JSON header (the
    hot-plug table, the machine, the recorded vCPUs and USB devices), then QEMU's
    ``xen-save-devices-state`` bytes."""
    head = json.dumps({**header, "qemu_len": len(blob)}, sort_keys=True).encode()
    return _HEADER_LEN.pack(len(head)) + head + blob


def unpack_payload(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """Split and check a payload; `DeviceModelError` saying what is wrong."""
    if len(payload) < _HEADER_LEN.size:
        raise DeviceModelError("qemu state: truncated before its header")
    (size,) = _HEADER_LEN.unpack_from(payload)
    end = _HEADER_LEN.size + size
    if len(payload) < end:
        raise DeviceModelError(f"qemu state: truncated header ({len(payload) - 4} of {size})")
    try:
        header = json.loads(payload[_HEADER_LEN.size : end])
    except ValueError as e:
        raise DeviceModelError(f"qemu state: corrupt header: {e}") from e
    if not isinstance(header, dict) or header.get("version") != STATE_VERSION:
        raise DeviceModelError(f"qemu state: unsupported header (want version {STATE_VERSION})")
    blob = payload[end:]
    if header.get("qemu_len") != len(blob):
        raise DeviceModelError(
            f"qemu state: device state is {len(blob)} bytes, the header says "
            f"{header.get('qemu_len')}"
        )
    if not blob.startswith(QEMU_VM_FILE_MAGIC):
        raise DeviceModelError("qemu state: the device state is not a QEMU (QEVM) stream")
    return header, blob


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """PR_SET_PDEATHSIG: a QEMU whose agent is killed outright goes with it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class QemuDeviceModel(DeviceModel):
    """One QEMU process; every request is a QMP exchange."""

    name = BACKEND

    def __init__(
        self,
        run_dir: Path,
        qemu_binary: str = "qemu-system-x86_64",
        hotplug_ports: int = 8,
        passthrough_driver: str = "pci-testdev",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.qemu_binary = qemu_binary
        self.hotplug_ports = hotplug_ports
        self.passthrough_driver = passthrough_driver
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pump_task: asyncio.Task[None] | None = None
        self._output: list[str] = []  # QEMU's last lines, for error messages
        self._log: LogFn = lambda line: None
        self._machine: MachineConfig | None = None
        self._slots: list[int] = []
        self._hotplugged: dict[int, HotPlugged] = {}  # by devfn
        self._ejecting: dict[int, asyncio.Future[None]] = {}  # by devfn
        self._migration: asyncio.Future[str] | None = None
        self._vcpus: set[int] = set()
        self._usb: list[str] = []
        self._snapshot: dict[str, object] = {"backend": BACKEND, "status": "stopped"}
        self._stopped = False
        self._exited: asyncio.Future[int] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def firmware_path(self) -> Path:
        return self.run_dir / FIRMWARE_NAME

    async def start(
        self, machine: MachineConfig, log: LogFn, state: BytesLike | DecodedState | None = None
    ) -> None:
        if self._proc is not None or self._stopped:
            raise DeviceModelError("this QEMU device model was already started")
        header: dict[str, Any] | None = None
        blob = b""
        if state is not None:
            header, blob = self._decode(state)  # refuse a bad state before QEMU starts
        self._log = log
        self._machine = machine
        argv = self.command_line(machine, incoming=state is not None)
        if header is not None:
            _check_fits(header.get("machine_argv"), machine_argv(machine, self.hotplug_ports))
        try:
            await self._spawn(argv)
            await self._connect()
            if header is not None:
                await self._restore(header, blob)
            self._vcpus = (
                set(header["vcpus"])
                if header is not None
                else {n for n in range(machine.vcpus) if machine.vcpu_avail >> n & 1} or {0}
            )
            if header is not None:
                self._usb = list(header.get("usb", []))
            await self._execute("cont")
            await self._refresh()
        except BaseException:
            await self.stop()
            raise

    def command_line(self, machine: MachineConfig, incoming: bool = False) -> list[str]:
        """The full QEMU argv: ``-S`` always (we ``cont`` once set up), ``-incoming defer``
        for a restore."""
        self._slots = hotplug_slots(machine, self.hotplug_ports)
        qmp = f"unix:{self.socket_path},server=on,wait=off"
        argv = [self.qemu_binary, *machine_argv(machine, self.hotplug_ports)]
        argv += ["-bios", str(self.firmware_path), "-S", "-qmp", qmp]
        if machine.name:
            argv += ["-name", machine.name]
        if incoming:
            argv += ["-incoming", "defer"]
        return argv

    async def _spawn(self, argv: list[str]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path).encode()) > 107:
            raise DeviceModelError(f"QMP socket path too long for AF_UNIX: {self.socket_path}")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.firmware_path.write_bytes(HALT_FIRMWARE)
        log.info("starting %s", shlex.join(argv))
        self._log("qemu: " + shlex.join(argv))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise DeviceModelError(f"cannot run QEMU {self.qemu_binary!r}: {e}") from e
        assert self._proc.stdout is not None and self._proc.stderr is not None
        readers = [
            asyncio.create_task(self._forward(self._proc.stdout)),
            asyncio.create_task(self._forward(self._proc.stderr)),
        ]
        self._exited = _future()
        watch = asyncio.create_task(self._watch_exit(self._proc, self._exited, readers))
        self._tasks += [*readers, watch]

    async def _forward(self, stream: asyncio.StreamReader) -> None:
        """QEMU's output goes to the device-model log (console 0)."""
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self._output = [*self._output[-19:], text]
            self._log(text)

    async def _watch_exit(
        self,
        proc: asyncio.subprocess.Process,
        exited: asyncio.Future[int],
        readers: list[asyncio.Task[None]],
    ) -> None:
        """An exiting QEMU fails whatever waits on it (ejects, a migration) at once."""
        code = await proc.wait()
        await asyncio.wait(readers, timeout=1.0)  # QEMU's last words make the message
        exited.set_result(code)
        err = self._exit_error(code)
        for fut in [*self._ejecting.values(), self._migration]:
            if fut is not None and not fut.done():
                fut.set_exception(err)
        if not self._stopped:
            log.warning("%s", err)
            self._log(f"qemu: {err}")
        self._snapshot = {
            **self._snapshot,
            "status": "exited",
            "running": False,
            "run_state": "stopped",
        }

    def _exit_error(self, code: int) -> DeviceModelError:
        last = "; ".join(line for line in self._output[-3:] if line)
        return DeviceModelError(f"QEMU exited with status {code}" + (f": {last}" if last else ""))

    async def _connect(self) -> None:
        """Poll for the QMP socket until QEMU listens, exits, or the guard expires."""
        assert self._exited is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            if self._exited.done():
                raise self._exit_error(self._exited.result())
            if self.socket_path.exists():
                qmp = QMPClient(f"stubdom-{self._machine.name if self._machine else ''}")
                try:
                    await qmp.connect(str(self.socket_path))
                except (ConnectError, OSError) as e:
                    log.debug("QMP connect: %s", e)
                else:
                    self._qmp = qmp
                    break
            if loop.time() > deadline:
                raise DeviceModelError(f"QEMU did not open {self.socket_path} in {START_TIMEOUT}s")
            await asyncio.sleep(0.01)
        listener = EventListener(("DEVICE_DELETED", "MIGRATION", "STOP", "RESUME"))
        self._qmp.register_listener(listener)
        self._pump_task = asyncio.create_task(self._pump(listener))

    async def _pump(self, listener: EventListener) -> None:
        """Events may arrive before the reply of the command that caused them, so they
        resolve futures created before the command is sent."""
        async for event in listener:
            data: dict[str, object] = dict(event.get("data") or {})  # type: ignore[call-overload]
            name = event["event"]
            if name == "DEVICE_DELETED":
                for devfn, plugged in list(self._hotplugged.items()):
                    if plugged.qdev_id == data.get("device"):
                        del self._hotplugged[devfn]
                        fut = self._ejecting.pop(devfn, None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                        self._log(f"qemu: {plugged.bdf} ejected from devfn {devfn:#04x}")
            elif name == "MIGRATION":
                status = data.get("status")
                fut2 = self._migration
                if fut2 is not None and not fut2.done() and status in ("completed", "failed"):
                    fut2.set_result(str(status))

    async def stop(self) -> None:
        """``quit``, then wait for the process (kill it if it lingers); never leaves a
        QEMU behind, whatever state start() got to."""
        self._stopped = True
        proc, qmp = self._proc, self._qmp
        self._qmp = None
        if qmp is not None:
            if proc is not None and proc.returncode is None and self._exited is not None:
                # QEMU may hang up before its reply to quit arrives: its exit is enough.
                quit = asyncio.ensure_future(qmp.execute("quit"))
                exited: asyncio.Future[Any] = self._exited
                await asyncio.wait(
                    [quit, exited], timeout=QUIT_TIMEOUT, return_when=FIRST_COMPLETED
                )
                quit.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await quit
            # disconnect() re-raises how the session ended (EOFError after quit).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(qmp.disconnect(), QUIT_TIMEOUT)
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), QUIT_TIMEOUT)
            except TimeoutError:
                log.warning("QEMU %d ignored quit; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pump_task is not None:
            self._pump_task.cancel()  # a listener never ends by itself
        if self._tasks:  # the output readers and the exit watch end with the process
            await asyncio.wait(self._tasks, timeout=QUIT_TIMEOUT)
        for task in [*self._tasks, *([self._pump_task] if self._pump_task else [])]:
            task.cancel()
        self._tasks = []
        self._pump_task = None
        for fut in self._ejecting.values():
            if not fut.done():
                fut.set_exception(DeviceModelError("the device model stopped"))
        self._ejecting.clear()
        with contextlib.suppress(OSError):
            self.socket_path.unlink(missing_ok=True)
            self.firmware_path.unlink(missing_ok=True)
        self._snapshot = {
            **self._snapshot,
            "status": "stopped",
            "running": False,
            "run_state": "stopped",
        }

    # -- QMP helpers ----------------------------------------------------------------------

    async def _execute(self, cmd: str, args: dict[str, object] | None = None) -> Any:
        """One QMP command; every failure is a `DeviceModelError` naming it."""
        if self._qmp is None:
            raise DeviceModelError(f"{cmd}: QEMU is not running")
        try:
            return await self._guard(self._qmp.execute(cmd, args), COMMAND_TIMEOUT, cmd)
        except ExecuteError as e:
            raise DeviceModelError(f"{cmd}: {e}") from e
        except QMPError as e:
            if self._exited is not None:  # a hang-up is most often QEMU exiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), 1.0)
                if self._exited.done():
                    raise self._exit_error(self._exited.result()) from e
            raise DeviceModelError(f"{cmd}: QMP failed: {e}") from e

    async def _guard(self, aw: Awaitable[T], timeout: float, what: str) -> T:
        try:
            return await asyncio.wait_for(aw, timeout)
        except TimeoutError as e:
            raise DeviceModelError(f"{what}: no answer from QEMU in {timeout}s") from e

    async def _status(self) -> str:
        return str((await self._execute("query-status"))["status"])

    async def _refresh(self) -> None:
        """Update the cached snapshot from QEMU itself (snapshot() is synchronous)."""
        status = await self._status()
        buses = await self._execute("query-pci")
        pci: dict[str, list[str]] = {}
        for dev in next((b["devices"] for b in buses if b["bus"] == 0), []):
            desc = dev.get("qdev_id") or dev.get("class_info", {}).get("desc", "?")
            pci.setdefault(f"{dev['slot']:02x}", []).append(f"{dev['function']}:{desc}")
        hotplug: dict[str, str] = {}
        for child in await self._execute("qom-list", {"path": "/machine/peripheral"}):
            if not str(child.get("name", "")).startswith("pci-pt-"):
                continue
            hotplug[await self._parent_port(str(child["name"]))] = str(child["name"])
        self._snapshot = {
            "backend": BACKEND,
            "status": status,
            "running": status == "running",
            "run_state": "running" if status == "running" else "paused",
            "pci": pci,
            "hotplug": dict(sorted(hotplug.items())),
            "vcpus": sorted(self._vcpus),
            "usb": list(self._usb),
        }

    def snapshot(self) -> dict[str, object]:
        """Bus 0 from ``query-pci`` (slot -> ``func:qdev_id-or-class``), the hot-plug
        ports' occupants from QOM (behind a port ``query-pci`` shows nothing until the
        firmware numbers the bus), the run state, the recorded vCPUs and USB devices;
        as of the last operation."""
        return dict(self._snapshot)

    # -- PCI ------------------------------------------------------------------------------

    async def pci_insert(self, req: PciRequest) -> int:
        if any(p.bdf == req.bdf for p in self._hotplugged.values()):
            self._log(f"qemu: {req.bdf} is already passed through")
            raise PciInsertFailed(PCI_INS_BAD_BDF)
        if req.devfn == AUTO_PHP_SLOT:
            free = [s for s in self._slots if (s << 3) not in self._hotplugged]
            if not free:
                raise PciInsertFailed(PCI_INS_NO_FREE_DEVFN)
            slot = free[0]
        else:
            slot, func = req.devfn >> 3, req.devfn & 7
            if not 0 <= req.devfn < 0x100 or slot not in self._slots:
                self._log(f"qemu: devfn {req.devfn:#x} is not a hot-plug slot")
                raise PciInsertFailed(PCI_INS_BAD_BDF)
            if func != 0:
                self._log("qemu: one function per hot-plug slot; only function 0 is supported")
                raise PciInsertFailed(PCI_INS_BAD_BDF)
            if req.devfn in self._hotplugged:
                raise PciInsertFailed(PCI_INS_BAD_BDF)
        plugged = HotPlugged(slot << 3, req.bdf, self.passthrough_driver)
        self._hotplugged[plugged.devfn] = plugged  # taken now: a concurrent insert skips it
        try:
            await self._device_add(plugged)
        except BaseException:
            if self._hotplugged.get(plugged.devfn) is plugged:
                del self._hotplugged[plugged.devfn]
            raise
        await self._refresh()
        self._log(f"qemu: {req.bdf} inserted at devfn {plugged.devfn:#04x} as {plugged.driver}")
        return plugged.devfn

    async def _device_add(self, plugged: HotPlugged) -> None:
        """``device_add`` on the slot's root port, then ``query-pci`` to confirm it."""
        slot = plugged.devfn >> 3
        args: dict[str, object] = {
            "driver": plugged.driver,
            "id": plugged.qdev_id,
            "bus": port_id(slot),
            "addr": "0.0",
        }
        if plugged.driver == "e1000":
            args["mac"] = f"00:16:3e:{plugged.bdf.bus:02x}:{plugged.bdf.dev:02x}:{slot:02x}"
        await self._execute("device_add", args)
        buses = await self._execute("query-pci")
        top: list[dict[str, Any]] = next((b["devices"] for b in buses if b["bus"] == 0), [])
        port = next((d for d in top if d["qdev_id"] == port_id(slot)), None)
        if port is None:
            raise DeviceModelError(f"query-pci: no root port {port_id(slot)}")
        bridge = port.get("pci_bridge", {})
        if bridge.get("bus", {}).get("secondary"):
            seen = [d["qdev_id"] for d in bridge.get("devices", [])]
            if plugged.qdev_id not in seen:
                raise DeviceModelError(f"query-pci: {plugged.qdev_id} not behind {port_id(slot)}")
        else:  # bus not numbered by firmware yet: query-pci lists nothing behind the port
            parent = await self._parent_port(plugged.qdev_id)
            if parent != port_id(slot):
                raise DeviceModelError(f"{plugged.qdev_id} landed on {parent}, not {port_id(slot)}")

    async def _parent_port(self, qdev_id: str) -> str:
        """The id of the bus a device sits on (a root port's bus is named like it)."""
        path = await self._execute(
            "qom-get", {"path": f"/machine/peripheral/{qdev_id}", "property": "parent_bus"}
        )
        return str(path).rsplit("/", 1)[-1]

    async def pci_remove(self, bdf: Bdf) -> int:
        """qemu-trad's ``do_pci_del``: the host function (segment ignored) picks the slot."""
        found = [
            p
            for p in self._hotplugged.values()
            if (p.bdf.bus, p.bdf.dev, p.bdf.func) == (bdf.bus, bdf.dev, bdf.func)
        ]
        if not found:
            raise PciRemoveFailed(f"{bdf}: no such passed-through device")
        plugged = found[0]
        if plugged.devfn & 7:
            raise PciRemoveFailed(f"{bdf}: attempt to remove non-zero function")
        if plugged.devfn not in self._ejecting:
            # Created before device_del: DEVICE_DELETED may come before its reply.
            self._ejecting[plugged.devfn] = _future()
            try:
                await self._execute("device_del", {"id": plugged.qdev_id})
            except DeviceModelError:
                self._ejecting.pop(plugged.devfn).cancel()
                raise
        self._log(f"qemu: eject of {bdf} at devfn {plugged.devfn:#04x} requested")
        return plugged.devfn

    async def wait_ejected(self, devfn: int) -> None:
        """Native PCIe hot-plug completes without a guest: DEVICE_DELETED in tens of ms."""
        fut = self._ejecting.get(devfn)
        if fut is None:
            if devfn in self._hotplugged:
                raise DeviceModelError(f"devfn {devfn:#04x}: no eject was requested")
            return
        await asyncio.shield(fut)
        await self._refresh()

    # -- run state and save/restore -------------------------------------------------------

    async def pause(self) -> None:
        await self._execute("stop")
        await self._refresh()
        self._log("qemu: paused")

    async def resume(self) -> None:
        await self._execute("cont")
        await self._refresh()
        self._log("qemu: running")

    async def save_state(self) -> bytes:
        """``stop`` (if running) + ``xen-save-devices-state``, wrapped with the hot-plug
        table a restore must re-create."""
        assert self._machine is not None
        if await self._status() == "running":
            await self._execute("stop")
        path = self.run_dir / "save.qemu"
        try:
            await self._execute("xen-save-devices-state", {"filename": str(path), "live": False})
            blob = path.read_bytes()
        except OSError as e:
            raise DeviceModelError(f"reading QEMU's device state: {e}") from e
        finally:
            path.unlink(missing_ok=True)
        await self._refresh()
        header: dict[str, object] = {
            "version": STATE_VERSION,
            "hotplug": [p.to_json() for p in sorted(self._hotplugged.values(), key=_devfn)],
            "machine": asdict(self._machine),
            "machine_argv": machine_argv(self._machine, self.hotplug_ports),
            "vcpus": sorted(self._vcpus),
            "usb": list(self._usb),
        }
        self._log(f"qemu: saved {len(blob)} bytes of device state")
        return encode_state(BACKEND, pack_payload(header, blob))

    def _decode(self, state: BytesLike | DecodedState) -> tuple[dict[str, Any], bytes]:
        payload = decode_state_for(BACKEND, state)  # a StreamError is a DeviceModelError
        header, blob = unpack_payload(payload)
        try:
            header["hotplug"] = [HotPlugged.from_json(h) for h in header.get("hotplug", [])]
        except ValueError as e:
            raise DeviceModelError(f"qemu state: {e}") from e
        vcpus = header.get("vcpus", [])
        if not isinstance(vcpus, list) or not all(isinstance(v, int) for v in vcpus):
            raise DeviceModelError("qemu state: bad vcpus")
        return header, blob

    async def _restore(self, header: dict[str, Any], blob: bytes) -> None:
        """Re-add the hot-plugged functions (QEMU refuses a stream with unknown RAM blocks
        or devices), then ``migrate-incoming`` from the device state."""
        for plugged in header["hotplug"]:
            if plugged.devfn >> 3 not in self._slots:
                raise DeviceModelError(f"saved devfn {plugged.devfn:#04x} is not a hot-plug slot")
            await self._device_add(plugged)
            self._hotplugged[plugged.devfn] = plugged
        path = self.run_dir / "restore.qemu"
        path.write_bytes(blob)
        try:
            await self._execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "events", "state": True}]},
            )
            self._migration = _future()
            await self._execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(path))}"})
            status = await self._guard(
                asyncio.shield(self._migration), MIGRATION_TIMEOUT, "migrate-incoming"
            )
            if status != "completed":
                # QEMU exits after a failed incoming migration: give its reason.
                assert self._exited is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), 2.0)
                await asyncio.sleep(0.05)  # its last output lines
                last = "; ".join(line for line in self._output[-3:] if line)
                raise DeviceModelError(f"migrate-incoming: {status}: {last or 'no reason given'}")
        finally:
            self._migration = None
            path.unlink(missing_ok=True)
        self._log(f"qemu: restored {len(blob)} bytes of device state")

    # -- recorded only ----------------------------------------------------------------------

    async def set_vcpus(self, online: set[int]) -> None:
        """Recorded only: without a guest to online them, QEMU's CPU hot-plug would show
        nothing, and a hot-removal would never complete."""
        self._vcpus = set(online)
        self._log(f"qemu: vcpus online {sorted(online)} (recorded; not hot-plugged in QEMU)")
        await self._refresh()

    async def usb_add(self, spec: str) -> None:
        self._usb.append(spec)
        self._log(f"qemu: usb-add {spec} (recorded only)")
        await self._refresh()

    async def usb_del(self, spec: str) -> None:
        if spec not in self._usb:
            raise DeviceModelError(f"usb-del: no USB device {spec!r}")
        self._usb.remove(spec)
        self._log(f"qemu: usb-del {spec} (recorded only)")
        await self._refresh()


def _check_fits(saved: object, here: list[str]) -> None:
    """Refuse, before QEMU starts, a state saved on another machine (QEMU would take some
    differences silently, e.g. a NIC's MAC, and fail on others)."""
    if saved == here:
        return
    if not isinstance(saved, list):
        raise DeviceModelError("qemu state: no machine description")
    diff = next(
        (i for i, (a, b) in enumerate(zip(saved, here, strict=False)) if a != b),
        min(len(saved), len(here)),
    )
    was = saved[diff] if diff < len(saved) else "(end)"
    now = here[diff] if diff < len(here) else "(end)"
    raise DeviceModelError(f"qemu state does not fit this machine: saved {was!r}, here {now!r}")


def _future() -> asyncio.Future[Any]:
    """A future whose failure counts as seen even if nobody awaits it (an eject nobody
    waits for fails quietly when QEMU goes)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


def _devfn(p: HotPlugged) -> int:
    return p.devfn
