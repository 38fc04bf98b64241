"""``sim``: a pure-Python model of the machine qemu-traditional builds for an HVM guest.

No emulation happens; what is modelled is what the control protocol can observe and
what a save must carry: which PCI function sits where on bus 0 (32 slots x 8
functions), the disks and NICs, the vCPUs that are online, the USB devices, the
passed-through functions in the hot-plug slots, a pending ACPI eject, and whether the
machine runs.  The whole of it serialises to canonical JSON (sorted keys, no spaces),
so equal machines give equal bytes and a restored machine re-saves bit for bit.

Fixed layout (qemu-trad's xenfv ``pc_init1``: PIIX3 at slot 1, every other device at
the next free slot, in the order they are created)::

    00.0  host-bridge   i440FX
    01.0  piix3-isa     ISA bridge
    01.1  piix3-ide     IDE controller (hda-hdd: bus = index // 2, unit = index % 2)
    01.2  piix3-uhci    USB controller       (only with -usb or -usbdevice)
    01.3  piix4-acpi    power management     (only with -acpi)
    02.0  cirrus-vga / std-vga                (none with -vga none or gfx_passthru:
                                               slot 2 is then kept for the IGD)
    next  xen-platform  Xen platform device (PV drivers)
    next  NIC per -net nic, in order: rtl8139, e1000, ne2k_pci, pcnet, ...
    next  es1370 / ac97  PCI sound cards of -soundhw
    next  lsi53c895a    SCSI controller      (only with an sdX disk; ids 0-6)

So a machine with -usb, -acpi and one NIC is 00.0, 01.0-01.3, 02.0 VGA, 03.0 platform,
04.0 NIC.  The hot-plug (php) slots are by default every slot left free (05-1f there);
the set can be narrowed.  ``pci-ins`` follows qemu-trad ([DM-PCI-INS-SLOT]): a requested devfn must
lie in a hot-plug slot and be free, else -2 ``wrong bdf or vdevfn``; AUTO takes
function 0 of the first hot-plug slot whose 8 functions are all free (slot 2 skipped
with gfx_passthru), else -1 ``no free hotplug devfn``; the IGD (host 00:02.x) with
gfx_passthru goes to 02.x.

Guest RAM: with ``ram_mb`` (the agent's ``--sim-ram=MIB``) the machine also holds that
many MiB of RAM contents (pseudo-random, seeded by the guest's domid), so that a save
has the size of a real one.  The payload is then the JSON, a NUL and the RAM bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from stubdom.devicemodel.base import (
    BytesLike,
    DeviceModel,
    DeviceModelError,
    Disk,
    DiskBus,
    LogFn,
    MachineConfig,
    Nic,
    PciInsertFailed,
    PciRemoveFailed,
    PciRequest,
)
from stubdom.devicemodel.stream import (
    DecodedState,
    StreamError,
    decode_state_view_for,
    encode_state_parts,
)
from stubdom.protocol import (
    AUTO_PHP_SLOT,
    PCI_INS_BAD_BDF,
    PCI_INS_NO_FREE_DEVFN,
    Bdf,
)

log = logging.getLogger(__name__)

NR_SLOTS = 32
NR_FUNCS = 8
IDE_MAX_DISKS = 4  # hda-hdd
SCSI_MAX_ID = 6  # id 7 is the LSI controller itself
IGD_SLOT = 2

#: What the sim's payload says it is (inside the stream that says "sim").
PAYLOAD_FORMAT = "stubdom-sim-machine"
PAYLOAD_VERSION = 1

NIC_MODELS = frozenset(
    {"rtl8139", "e1000", "ne2k_pci", "pcnet", "i82551", "i82557b", "i82559er", "virtio"}
)
PCI_SOUND = ("es1370", "ac97")
VGA_KINDS = {"cirrus": "cirrus-vga", "stdvga": "std-vga", "std": "std-vga", "none": None}
USB_NAMED = frozenset({"mouse", "tablet", "keyboard", "wacom-tablet", "braille"})
USB_PREFIXES = ("host:", "disk:", "serial:", "net:", "bt:")

#: Keys of the payload that the machine's configuration decides; a state is restored
#: only into a machine whose configuration gives the same values.
FIXED_KEYS = ("fixed_pci", "php_slots", "disks", "nics", "vcpus", "videoram_mb", "usb")

SleepFn = Callable[[float], Awaitable[None]]


def devfn_text(devfn: int) -> str:
    """``SS.F`` as lspci shows a devfn on bus 0."""
    return f"{devfn >> 3:02x}.{devfn & 7:x}"


@dataclass
class _Passthrough:
    host: Bdf
    msitranslate: bool
    power_mgmt: bool
    permissive: bool

    def describe(self, devfn: int) -> dict[str, Any]:
        return {
            "devfn": devfn,
            "host": str(self.host),
            "msitranslate": self.msitranslate,
            "power_mgmt": self.power_mgmt,
            "permissive": self.permissive,
        }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class SimDeviceModel(DeviceModel):
    """The ``sim`` backend.

    ``eject_delay``: seconds the simulated guest takes to answer an ACPI eject request
    (``None``: it never does).  ``php_slots``: the hot-plug slots (default: every slot
    the fixed devices leave free).  ``sleep``: injected for the eject delay.  ``ram_mb``:
    MiB of guest RAM contents carried in the saved state (0: none).
    """

    name = "sim"

    def __init__(
        self,
        *,
        eject_delay: float | None = 0.0,
        php_slots: Iterable[int] | None = None,
        sleep: SleepFn = asyncio.sleep,
        ram_mb: int = 0,
    ) -> None:
        if eject_delay is not None and eject_delay < 0:
            raise ValueError(f"eject_delay {eject_delay} is negative")
        if ram_mb < 0:
            raise ValueError(f"ram_mb {ram_mb} is negative")
        self._ram_mb = ram_mb
        #: The RAM contents: never copied (a restored machine's is a view of the state).
        self._ram = memoryview(b"")
        self._php_request: tuple[int, ...] | None = None
        if php_slots is not None:
            slots = tuple(sorted(set(php_slots)))
            bad = [s for s in slots if not 0 <= s < NR_SLOTS]
            if bad:
                raise ValueError(f"hot-plug slots {bad} outside 0-{NR_SLOTS - 1}")
            self._php_request = slots
        self.eject_delay = eject_delay
        self._sleep = sleep
        #: Where the machine's messages go (qemu's stderr); the module log until `start`.
        self._log: LogFn = lambda line: log.info("%s", line)
        self._started = False
        self._stopped = False
        self._running = asyncio.Event()
        self._machine: MachineConfig | None = None
        self._gfx_passthru = False
        # -- the machine's state (what a save carries) --
        self._fixed: dict[int, dict[str, Any]] = {}
        self._php: tuple[int, ...] = ()
        self._disks: list[dict[str, Any]] = []
        self._nics: list[dict[str, Any]] = []
        self._vcpus = 1
        self._videoram_mb = 0
        self._usb = False
        self._pt: dict[int, _Passthrough] = {}
        self._eject_pending: set[int] = set()  # slots
        self._vcpus_online: set[int] = set()
        self._usb_devices: list[str] = []
        # -- runtime only --
        self._ejected: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Passed-through functions that came back from a saved state and that the
        #: toolstack has not re-attached yet (it re-inserts its PCI devices after a
        #: restore, [RESTORE-TS]; such a pci-ins finds its function in place).
        self.awaiting_reattach: set[int] = set()

    # -- building ----------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        self._log(line)

    def _build(self, machine: MachineConfig) -> None:
        """The fixed devices, disks, NICs and vCPUs the dmargs describe."""
        # With gfx_passthru slot 2 is kept for the IGD: no next-free device goes there.
        bus = _Bus(reserved={IGD_SLOT} if machine.gfx_passthru else set())
        self._usb = machine.usb or bool(machine.usbdevices)
        _place_chipset(bus, machine, usb=self._usb)
        nics = _place_nics(bus, machine.nics)
        _place_sound(bus, machine.soundhw)
        disks = self._place_disks(machine.disks)
        if any(d["bus"] == DiskBus.SCSI.value for d in disks):
            bus.place("lsi53c895a")

        self._fixed = dict(sorted(bus.fixed.items()))
        self._php = self._hotplug_slots()
        self._disks = disks
        self._nics = nics
        self._gfx_passthru = machine.gfx_passthru
        self._videoram_mb = machine.videoram_mb
        self._vcpus = max(1, machine.vcpus)
        self._vcpus_online = {i for i in range(self._vcpus) if machine.vcpu_avail >> i & 1}
        self._usb_devices = self._usable_usb_devices(machine.usbdevices)

    def _hotplug_slots(self) -> tuple[int, ...]:
        """The slots asked for, else every slot no fixed device took."""
        if self._php_request is not None:
            return self._php_request
        used = {devfn >> 3 for devfn in self._fixed}
        return tuple(s for s in range(NR_SLOTS) if s not in used)

    def _usable_usb_devices(self, specs: Iterable[str]) -> list[str]:
        """The ``-usbdevice`` devices qemu-trad would add; each other one is logged as
        qemu-trad does, and the machine starts without it."""
        usable = []
        for spec in specs:
            problem = self._usb_problem(spec)
            if problem:
                self._emit(f"Could not add USB device '{spec}': {problem}")
            else:
                usable.append(spec)
        return usable

    def _place_disks(self, disks: Iterable[Disk]) -> list[dict[str, Any]]:
        """IDE by index (bus/unit), SCSI by id; what qemu-trad skips is logged."""
        placed: dict[tuple[str, int], dict[str, Any]] = {}
        for d in disks:
            limit = IDE_MAX_DISKS - 1 if d.bus == DiskBus.IDE else SCSI_MAX_ID
            if not 0 <= d.index <= limit:
                self._emit(f"disk {d.vdev}: {d.bus.value} index {d.index} out of range, ignored")
                continue
            key = (d.bus.value, d.index)
            if key in placed:
                self._emit(f"disk {d.vdev}: {d.bus.value} {d.index} already used, ignored")
                continue
            entry: dict[str, Any] = {
                "vdev": d.vdev,
                "bus": d.bus.value,
                "index": d.index,
                "cdrom": d.cdrom,
                "readonly": d.readonly,
                "sectors": d.sectors,
            }
            if d.bus == DiskBus.IDE:
                entry["ide_bus"], entry["ide_unit"] = divmod(d.index, 2)
            placed[key] = entry
        return [placed[k] for k in sorted(placed)]

    # -- the interface -----------------------------------------------------------------

    async def start(
        self, machine: MachineConfig, log: LogFn, state: BytesLike | DecodedState | None = None
    ) -> None:
        if self._started:
            raise DeviceModelError("the sim device model was already started")
        self._log = log
        self._build(machine)
        self._machine = machine
        if state is not None:
            self._restore(state)
        elif self._ram_mb:
            import random  # only for --sim-ram: not on every agent's start-up path

            ram = random.Random(machine.guest_domid).randbytes(self._ram_mb << 20)
            self._ram = memoryview(ram)
        self._started = True
        self._running.set()
        self._emit(
            f"sim: machine for domain {machine.guest_domid} running: "
            + ", ".join(f"{devfn_text(d)} {f['kind']}" for d, f in self._fixed.items())
        )
        for slot in sorted(self._eject_pending):
            self._arm_eject(slot)

    def _check_live(self) -> None:
        if not self._started:
            raise DeviceModelError("the sim device model is not started")
        if self._stopped:
            raise DeviceModelError("the sim device model has stopped")

    def _used(self, devfn: int) -> bool:
        return devfn in self._fixed or devfn in self._pt

    def _used_slots(self) -> set[int]:
        """Slots with any function in use, in one pass (a slot-by-slot probe of every
        function made each insert quadratic in the devices passed through)."""
        return {d >> 3 for d in self._fixed} | {d >> 3 for d in self._pt}

    async def pci_insert(self, req: PciRequest) -> int:
        self._check_live()
        host = req.bdf
        devfn = self._choose_devfn(req)
        if devfn < 0:
            text = PCI_INS_NO_FREE_DEVFN if devfn == -1 else PCI_INS_BAD_BDF
            raise PciInsertFailed(text)
        self._pt[devfn] = _Passthrough(host, req.msitranslate, req.power_mgmt, req.permissive)
        self._emit(f"pci-ins: {host} at {devfn_text(devfn)} (0x{devfn:02x})")
        return devfn

    def _choose_devfn(self, req: PciRequest) -> int:
        """qemu-trad's ``__insert_to_pci_devfn``: the devfn, or -1 / -2."""
        host = req.bdf
        same = [d for d, p in self._pt.items() if _same_function(p.host, host)]
        if same:
            devfn = same[0]
            if devfn in self.awaiting_reattach and req.devfn in (AUTO_PHP_SLOT, devfn):
                self.awaiting_reattach.discard(devfn)
                self._emit(f"pci-ins: {host} re-attached at {devfn_text(devfn)} (restored)")
                return devfn
            self._emit(f"pci-ins: {host} is already passed through at {devfn_text(devfn)}")
            return -2
        if self._gfx_passthru and host.bus == 0 and host.dev == IGD_SLOT:
            devfn = host.devfn
            return -2 if self._used(devfn) else devfn
        if req.devfn != AUTO_PHP_SLOT:
            devfn = req.devfn
            if not 0 <= devfn < NR_SLOTS * NR_FUNCS:
                self._emit(f"pci-ins: devfn 0x{devfn:x} out of range")
                return -2
            if (devfn >> 3) not in self._php:
                self._emit(f"pci-ins: {devfn_text(devfn)} is not a hot-plug slot")
                return -2
            if self._used(devfn):
                self._emit(f"pci-ins: {devfn_text(devfn)} is in use")
                return -2
            return devfn
        used = self._used_slots()
        for slot in self._php:
            if self._gfx_passthru and slot == IGD_SLOT:
                continue
            if slot not in used:
                return slot << 3
        self._emit("pci-ins: every hot-plug slot is in use")
        return -1

    async def pci_remove(self, bdf: Bdf) -> int:
        self._check_live()
        found = [d for d, p in self._pt.items() if _same_function(p.host, bdf)]
        if not found:
            raise PciRemoveFailed(f"pci-rem: {bdf} is not a passed-through device here")
        devfn = found[0]
        if devfn & 7:
            raise PciRemoveFailed(
                f"pci-rem: {bdf} is function {devfn & 7} of slot {devfn >> 3:02x}: Attempt "
                "to remove non-zero function (only function 0 ejects the slot)"
            )
        slot = devfn >> 3
        if slot not in self._eject_pending:
            self._eject_pending.add(slot)
            self._emit(f"pci-rem: {bdf} at {devfn_text(devfn)}: eject requested (SCI)")
            self._arm_eject(slot)
        return devfn

    def _arm_eject(self, slot: int) -> None:
        if self.eject_delay is None:
            return  # this guest never answers the SCI
        task = asyncio.get_running_loop().create_task(self._guest_ejects(slot, self.eject_delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guest_ejects(self, slot: int, delay: float) -> None:
        """The guest's ACPI eject: after ``delay`` of running, power the slot off."""
        await self._sleep(delay)
        await self._running.wait()  # a paused guest runs no ACPI code
        if self._stopped or slot not in self._eject_pending:
            return
        gone = sorted(d for d in self._pt if d >> 3 == slot)
        for devfn in gone:
            del self._pt[devfn]
            self.awaiting_reattach.discard(devfn)
        self._eject_pending.discard(slot)
        self._emit(
            f"guest ejected slot {slot:02x}: powered off " + ", ".join(devfn_text(d) for d in gone)
        )
        event = self._ejected.pop(slot, None)
        if event is not None:
            event.set()

    async def wait_ejected(self, devfn: int) -> None:
        self._check_live()
        slot = devfn >> 3
        while any(d >> 3 == slot for d in self._pt):
            if self._stopped:
                raise DeviceModelError(
                    f"the sim device model stopped before slot {slot:02x} was ejected"
                )
            event = self._ejected.setdefault(slot, asyncio.Event())
            await event.wait()

    async def pause(self) -> None:
        self._check_live()
        if self._running.is_set():
            self._running.clear()
            self._emit("sim: paused")

    async def resume(self) -> None:
        self._check_live()
        if not self._running.is_set():
            self._running.set()
            self._emit("sim: running")

    async def save_state(self) -> bytes:
        """Like qemu-trad's ``do_savevm``, which stops the VM before it saves."""
        return b"".join(await self.save_state_parts())

    async def save_state_parts(self) -> Sequence[BytesLike]:
        """`save_state` in pieces: the RAM is handed out as it is, not copied."""
        self._check_live()
        await self.pause()
        payload: list[BytesLike] = [_canonical(self._describe())]
        if self._ram_mb:
            payload += [b"\0", self._ram]
        parts = encode_state_parts(self.name, payload)
        size = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
        self._emit(f"sim: saved {size} bytes of device state")
        return parts

    async def set_vcpus(self, online: set[int]) -> None:
        self._check_live()
        bad = sorted(v for v in online if not 0 <= v < self._vcpus)
        if bad:
            raise DeviceModelError(
                f"vcpu-set: vcpus {bad} out of range (the machine has {self._vcpus})"
            )
        if online != self._vcpus_online:
            self._vcpus_online = set(online)
            self._emit(f"vcpu-set: online {sorted(online)}")

    def _usb_problem(self, spec: str) -> str | None:
        if not self._usb:
            return "the machine has no USB controller (-usb)"
        if spec in USB_NAMED or (spec.startswith(USB_PREFIXES) and spec.partition(":")[2]):
            return None
        return "unknown USB device spec"

    async def usb_add(self, spec: str) -> None:
        self._check_live()
        problem = self._usb_problem(spec)
        if problem:
            raise DeviceModelError(f"usb-add {spec!r}: {problem}")
        self._usb_devices.append(spec)
        self._emit(f"usb-add: {spec}")

    async def usb_del(self, spec: str) -> None:
        self._check_live()
        if spec not in self._usb_devices:
            raise DeviceModelError(f"usb-del {spec!r}: no such USB device")
        self._usb_devices.remove(spec)
        self._emit(f"usb-del: {spec}")

    async def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        for event in self._ejected.values():
            event.set()  # waiters see _stopped and raise
        self._ejected.clear()
        self._running.clear()
        self._emit("sim: stopped")

    # -- state -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self._running.is_set()

    def _describe(self) -> dict[str, Any]:
        """The whole machine as JSON data, every collection in a canonical order."""
        out: dict[str, Any] = {
            "format": PAYLOAD_FORMAT,
            "version": PAYLOAD_VERSION,
            "fixed_pci": list(self._fixed.values()),
            "php_slots": list(self._php),
            "disks": self._disks,
            "nics": self._nics,
            "vcpus": self._vcpus,
            "videoram_mb": self._videoram_mb,
            "usb": self._usb,
            "passthrough": [p.describe(d) for d, p in sorted(self._pt.items())],
            "eject_pending": sorted(self._eject_pending),
            "vcpus_online": sorted(self._vcpus_online),
            "usb_devices": list(self._usb_devices),
        }
        if self._ram_mb:
            out["ram_mb"] = self._ram_mb
        return out

    def snapshot(self) -> dict[str, object]:
        snap: dict[str, object] = json.loads(_canonical(self._describe()))
        if not self._started:
            run = "created"
        elif self._stopped:
            run = "stopped"
        else:
            run = "running" if self._running.is_set() else "paused"
        snap["run_state"] = run
        return snap

    def layout(self) -> dict[str, str]:
        """``{"SS.F": kind}`` for every populated function (passthrough as its host BDF)."""
        out = {devfn_text(d): str(f["kind"]) for d, f in self._fixed.items()}
        out.update({devfn_text(d): f"passthrough {p.host}" for d, p in self._pt.items()})
        return dict(sorted(out.items()))

    def _restore(self, state: BytesLike | DecodedState) -> None:
        """Load a saved state into the machine just built; refuse one from another
        machine (its fixed part must be what this configuration builds)."""
        payload, nul, ram = _split_nul(decode_state_view_for(self.name, state))
        saved = _load_payload(payload)
        self._check_fits(saved, ram, has_ram=nul)
        got = self._read_changing_part(saved)
        self._pt = got.pt
        self._eject_pending = got.eject_pending
        self._vcpus_online = got.vcpus_online
        self._usb_devices = got.usb_devices
        self.awaiting_reattach = set(got.pt)
        self._ram = ram
        if _canonical(self._describe()) != payload:
            raise StreamError("sim state: not in canonical form (re-encoding differs)")
        self._emit(
            f"sim: restored {len(payload)} bytes of state: {len(got.pt)} passed-through "
            f"function(s), vcpus {sorted(got.vcpus_online)}, usb {got.usb_devices}"
        )

    def _check_fits(self, saved: dict[str, Any], ram: memoryview, *, has_ram: bool) -> None:
        """The saved fixed part and RAM size must be this machine's."""
        here = self._describe()
        for key in FIXED_KEYS:
            if saved.get(key) != here[key]:
                raise DeviceModelError(
                    f"sim state does not fit this machine: {key} differs "
                    f"(saved {json.dumps(saved.get(key))}, here {json.dumps(here[key])})"
                )
        if saved.get("ram_mb", 0) != self._ram_mb:
            raise DeviceModelError(
                f"sim state does not fit this machine: ram_mb differs "
                f"(saved {json.dumps(saved.get('ram_mb', 0))}, here {self._ram_mb})"
            )
        if ram.nbytes != self._ram_mb << 20 or has_ram != bool(self._ram_mb):
            raise StreamError(
                f"sim state: {ram.nbytes} bytes of RAM for a machine of {self._ram_mb} MiB"
            )

    def _read_changing_part(self, saved: dict[str, Any]) -> _ChangingPart:
        """What the guest's run changed: checked against the machine, nothing set yet."""
        try:
            pt = self._read_passthrough(saved["passthrough"])
            pending = {_int(s, 0, NR_SLOTS - 1) for s in saved["eject_pending"]}
            if not all(any(d >> 3 == s for d in pt) for s in pending):
                raise ValueError("eject pending for an empty slot")
            online = {_int(v, 0, self._vcpus - 1) for v in saved["vcpus_online"]}
            usb = [_str(s) for s in saved["usb_devices"]]
        except (KeyError, TypeError, ValueError) as e:
            raise StreamError(f"sim state: malformed: {e}") from None
        return _ChangingPart(pt, pending, online, usb)

    def _read_passthrough(self, entries: Any) -> dict[int, _Passthrough]:
        pt: dict[int, _Passthrough] = {}
        for entry in entries:
            devfn = _int(entry["devfn"], 0, NR_SLOTS * NR_FUNCS - 1)
            if self._used(devfn) or devfn in pt:
                raise ValueError(f"passthrough at {devfn_text(devfn)} collides")
            pt[devfn] = _Passthrough(
                Bdf.parse(_str(entry["host"])),
                _bool(entry["msitranslate"]),
                _bool(entry["power_mgmt"]),
                _bool(entry["permissive"]),
            )
        return pt


@dataclass(frozen=True)
class _ChangingPart:
    """The part of a saved state a guest's run changes (the rest is `FIXED_KEYS`)."""

    pt: dict[int, _Passthrough]
    eject_pending: set[int]
    vcpus_online: set[int]
    usb_devices: list[str]


def _load_payload(payload: bytes) -> dict[str, Any]:
    """The payload's JSON object, of this sim's format and version."""
    try:
        saved = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StreamError(f"sim state: payload is not JSON: {e}") from None
    if not isinstance(saved, dict):
        raise StreamError("sim state: payload is not a JSON object")
    if saved.get("format") != PAYLOAD_FORMAT or saved.get("version") != PAYLOAD_VERSION:
        raise StreamError(
            f"sim state: format {saved.get('format')!r} version {saved.get('version')!r}, "
            f"expected {PAYLOAD_FORMAT!r} version {PAYLOAD_VERSION}"
        )
    return saved


class _Bus:
    """PCI bus 0 while the machine is built: each device at its fixed devfn, or at
    function 0 of the first free slot that is not ``reserved``."""

    def __init__(self, reserved: set[int]) -> None:
        self.fixed: dict[int, dict[str, Any]] = {}
        self.reserved = reserved

    def place(self, kind: str, devfn: int | None = None, **attrs: Any) -> None:
        if devfn is None:
            free = [
                s for s in range(NR_SLOTS) if (s << 3) not in self.fixed and s not in self.reserved
            ]
            if not free:
                raise DeviceModelError(f"no PCI slot left for {kind}")
            devfn = free[0] << 3
        self.fixed[devfn] = {"devfn": devfn, "kind": kind, **attrs}


def _place_chipset(bus: _Bus, machine: MachineConfig, *, usb: bool) -> None:
    """PIIX3 (with its USB and ACPI functions), the VGA and the Xen platform device."""
    bus.place("host-bridge", 0x00)
    bus.place("piix3-isa", 0x08)
    bus.place("piix3-ide", 0x09)
    if usb:
        bus.place("piix3-uhci", 0x0A)
    if machine.acpi:
        bus.place("piix4-acpi", 0x0B)
    if machine.vga not in VGA_KINDS:
        raise DeviceModelError(f"unknown VGA type {machine.vga!r} (cirrus, stdvga, none)")
    vga = None if machine.gfx_passthru else VGA_KINDS[machine.vga]
    if vga is not None:
        bus.place(vga, IGD_SLOT << 3, vram_mb=machine.videoram_mb)
    bus.place("xen-platform")


def _place_nics(bus: _Bus, nics: Iterable[Nic]) -> list[dict[str, Any]]:
    """A PCI NIC per ``-net nic``, in order; what a save records of each."""
    described: list[dict[str, Any]] = []
    for nic in nics:
        if nic.model not in NIC_MODELS:
            raise DeviceModelError(f"qemu: Unsupported NIC: {nic.model}")
        bus.place(nic.model, mac=nic.mac.lower(), vlan=nic.vlan)
        described.append({"mac": nic.mac.lower(), "model": nic.model, "vlan": nic.vlan})
    return described


def _place_sound(bus: _Bus, soundhw: str | None) -> None:
    """The PCI cards of ``-soundhw`` (a comma list, or ``all``), in qemu's order."""
    sound = (soundhw or "").split(",")
    for card in PCI_SOUND:
        if card in sound or "all" in sound:
            bus.place(card)


def _split_nul(view: memoryview, piece: int = 1 << 16) -> tuple[bytes, bool, memoryview]:
    """``bytes.partition(b"\\0")`` for a view: what is before the first NUL (copied),
    whether there is one, and what is after it (a view, not copied)."""
    at = 0
    while at < view.nbytes:
        found = bytes(view[at : at + piece]).find(b"\0")
        if found >= 0:
            nul = at + found
            return view[:nul].tobytes(), True, view[nul + 1 :]
        at += piece
    return view.tobytes(), False, view[view.nbytes :]


def _same_function(a: Bdf, b: Bdf) -> bool:
    """qemu-trad matches bus/dev/func; the segment is dropped when parsing."""
    return (a.bus, a.dev, a.func) == (b.bus, b.dev, b.func)


def _int(v: object, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{v!r} is not an integer in {lo}-{hi}")
    return v


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not a boolean")
    return v
