"""The stubdomain mode's probes of the command channel: each drives one exchange the way
libxl does and decides its clauses from what the stub wrote (the request trace).

A probe may raise anything; `steps.StepRunner` turns that into failed clauses."""

from __future__ import annotations

import asyncio
import contextlib

from stubdom import protocol as proto
from stubdom.conformance.host import Recorder, Request, TracedHost
from stubdom.conformance.report import Ledger, Verdict
from stubdom.conformance.timeouts import Timeouts
from stubdom.host.hypervisor import DomainState, HypervisorError
from stubdom.host.xenbus import XenbusState
from stubdom.toolstack import devices
from stubdom.toolstack import operations as ops
from stubdom.toolstack.channel import DeviceModelChannel
from stubdom.toolstack.config import DiskSpec, GuestConfig, NicSpec
from stubdom.toolstack.exchange import (
    DeviceModelError,
    DeviceModelTimeout,
    PciInsertError,
    PciRemoveError,
)
from stubdom.toolstack.spawn import Created

P, F, N = Verdict.PASS, Verdict.FAIL, Verdict.UNSUPPORTED
B1, B2, B3 = proto.Bdf(0, 3, 0, 0), proto.Bdf(0, 4, 0, 0), proto.Bdf(0, 5, 0, 0)
_DEAD = frozenset({DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING})


class Probes:
    def __init__(self, h: TracedHost, kernel: str, args: list[str], t: Timeouts,
                 ledger: Ledger) -> None:
        self.h, self.kernel, self.args, self.t = h, kernel, args, t
        self.ledger = ledger
        self.rec: Recorder = h.recorder
        self.c: Created | None = None
        #: Why there is no stubdomain to talk to, once creation failed (None before).
        self.not_started: str | None = None
        self.devfn = -1
        self.saved = False

    def add(self, clause: str, verdict: Verdict, seen: str, style: str = "") -> None:
        self.ledger.add(clause, verdict, seen, style)

    def cfg(self) -> GuestConfig:
        disk = self.h.root / "conf.img"
        disk.write_bytes(b"\0" * 4096)
        return GuestConfig(
            name="conf",
            vcpus=2,
            maxvcpus=4,
            stubdomain_kernel=self.kernel,
            stubdomain_cmdline=" ".join(self.args),
            disks=[DiskSpec(vdev="hda", target=str(disk))],
            nics=[NicSpec(devid=0, mac="00:16:3e:12:34:56")],
        )

    def created(self) -> Created:
        if self.c is None:
            raise DeviceModelError(0, "probe", self.not_started or "no stubdomain yet")
        return self.c

    def chan(self, timeout: float) -> DeviceModelChannel:
        c = self.created()
        ch = ops.channel(self.h.session, c.stubdom, c.guest, timeout)
        ch.logdirty_timeout = timeout
        return ch

    def dm_writes(self, mark: int, node: str, stub: int | None = None,
                  guest: int | None = None) -> list[Request]:
        """Writes/removes of ``device-model/G/<node>`` by the stubdomain since ``mark``."""
        if stub is None or guest is None:
            c = self.created()
            stub, guest = c.stubdom, c.guest
        path = proto.dm_path(stub, guest, node)
        return [r for r in self.rec.since(mark)
                if r.dom == stub and r.path == path and r.type in ("WRITE", "RM")]

    async def gone(self) -> str | None:
        """Why the stubdomain cannot be driven any more (None while it runs)."""
        if self.c is None:
            return self.not_started
        try:
            state = (await self.h.session.hv.domain_info(self.c.stubdom)).state
        except HypervisorError:
            return "the stubdomain is gone"
        if state not in _DEAD:
            return None
        tail = await ops.stub_postmortem(self.h.session, self.c.stubdom, self.c.guest)
        return f"the stubdomain is dead{tail}"

    # -- PCI --------------------------------------------------------------------------

    async def pciback(self) -> None:
        """Give the stub three functions as libxl does, waiting for pcifront each time."""
        c, xs = self.created(), self.h.session.xs
        be = f"{devices.pci_ref(c.stubdom).backend}/state"
        for i, b in enumerate((B1, B2, B3)):
            fn = devices.PciFunction(b)
            await devices.add_pci(xs, c.stubdom, fn, domain_name="conf-dm",
                                  timeout=self.t.command)
            if i == 0:
                try:
                    await devices.wait_for_state(xs, be, XenbusState.CONNECTED, self.t.command)
                except devices.DeviceError as e:
                    raise devices.DeviceError(f"pcifront did not come up: {e}") from None

    async def insert(self) -> None:
        ch = self.chan(self.t.command)
        m = self.rec.mark()
        self.devfn = await ch.pci_insert(B1)
        cmd = self.dm_writes(m, "command")
        self.add("command.deleted", P if any(r.type == "RM" for r in cmd) else F,
                 "command removed by the DM" if cmd else "the DM never removed command")
        writes = sorted(self.dm_writes(m, "state") + self.dm_writes(m, "parameter"),
                        key=lambda r: r.seq)
        names = [r.path.rsplit("/", 1)[1] for r in writes]
        ok = "parameter" in names and "state" in names and \
            names.index("parameter") < names.index("state")
        self.add("pci-ins.order", P if ok else F, f"DM wrote {names}")
        seq = [(r.path.rsplit("/", 1)[1], r.value) for r in writes]
        fmt = f"0x{self.devfn:02x}"
        self.add("pci-ins.result", P if ("parameter", fmt) in seq else F, f"writes {seq}")

    async def insert_at(self) -> None:
        got = await self.chan(self.t.command).pci_insert(B2, vdevfn=0x38)
        self.add("pci-ins.vdevfn", P if got == 0x38 else F, f"asked 0x38, got 0x{got:02x}")

    async def insert_refused(self) -> None:
        m = self.rec.mark()
        try:
            await self.chan(self.t.refusal).pci_insert(B3, vdevfn=0x38)
            self.add("pci-ins.refusal", F, "a second insert at devfn 0x38 succeeded")
            self.add("pci-ins.failed-state", F, "a second insert at devfn 0x38 succeeded")
        except (PciInsertError, DeviceModelTimeout) as e:
            await self.settle(m, "state")
            self._judge_insert_refusal(m, str(e))
        finally:
            await self.reset_running()

    def _judge_insert_refusal(self, m: int, error: str) -> None:
        states = [r.value for r in self.dm_writes(m, "state")]
        params = [r.value for r in self.dm_writes(m, "parameter")]
        if proto.State.PCI_INSERT_FAILED.value in states:
            self.add("pci-ins.refusal", P, f"state pci-insert-failed, parameter {params}")
            self.add("pci-ins.failed-state", P, f"state writes {states}")
        elif not states and any(p in proto.PCI_INS_ERRORS for p in params):
            self.add("pci-ins.refusal", P, f"parameter {params}, state unchanged",
                     "qemu-trad style")
            self.add("pci-ins.failed-state", N,
                     "qemu-trad's refusal: the error text in parameter, no failure state")
        else:
            why = f"{error}; DM wrote state {states} parameter {params}"
            self.add("pci-ins.refusal", F, why)
            self.add("pci-ins.failed-state", F, why)

    async def remove(self) -> None:
        try:
            if self.devfn < 0:
                self.add("pci-rem.result", F, "not run: no inserted device")
                return
            await self.chan(self.t.command).pci_remove(B1, vdevfn=self.devfn)
            self.add("pci-rem.result", P, "pci-removed")
        finally:
            await self.reset_running()

    async def remove_refused(self) -> None:
        m = self.rec.mark()
        try:
            await self.chan(self.t.refusal).exchange(
                proto.Command.PCI_REM, "0000:09:00.0", proto.State.PCI_REMOVED)
            self.add("pci-rem.refusal", F, "pci-removed for a device never inserted")
            self.add("pci-rem.failed-state", F, "pci-removed for a device never inserted")
        except PciRemoveError as e:
            params = [r.value for r in self.dm_writes(m, "parameter")]
            self.add("pci-rem.refusal", P, str(e))
            self.add("pci-rem.failed-state", P if params else F,
                     f"reason in parameter: {params}" if params else "no reason in parameter")
        except DeviceModelTimeout:
            states = [r.value for r in self.dm_writes(m, "state")]
            ok = proto.State.PCI_REMOVED.value not in states
            self.add("pci-rem.refusal", P if ok else F, f"state writes {states}",
                     "qemu-trad style" if ok else "")
            self.add("pci-rem.failed-state", N if ok else F,
                     "qemu-trad's refusal: nothing written" if ok else f"state writes {states}")
        finally:
            await self.reset_running()

    async def settle(self, mark: int, node: str, limit: float = 0.5) -> None:
        """Give the DM a moment to write ``node`` (a result may follow the error text)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(limit, self.t.refusal)):
                while not self.dm_writes(mark, node):
                    await asyncio.sleep(0.02)

    async def reset_running(self) -> None:
        if self.c is not None:
            await self.h.session.xs.write(proto.state_path(self.c.stubdom, self.c.guest),
                                          "running")

    # -- the rest of the channel ------------------------------------------------------

    async def unknown(self) -> None:
        c, xs = self.created(), self.h.session.xs
        m = self.rec.mark()
        await xs.write(proto.command_path(c.stubdom, c.guest), "flr")
        deleted = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.t.refusal):
                while not deleted:
                    await asyncio.sleep(0.05)
                    deleted = any(r.type == "RM" for r in self.dm_writes(m, "command"))
        states = [r.value for r in self.dm_writes(m, "state")]
        ok = deleted and not states
        self.add("command.unknown", P if ok else F, f"deleted={deleted}, state writes {states}")
        with contextlib.suppress(Exception):
            await xs.rm(proto.command_path(c.stubdom, c.guest))

    async def logdirty(self) -> None:
        ch = self.chan(self.t.command)
        await ch.logdirty(True)
        await ch.logdirty(False)
        self.add("logdirty.echo", P, "enable and disable echoed")

    async def vcpu(self) -> None:
        c, xs = self.created(), self.h.session.xs
        m = self.rec.mark()
        await xs.write(proto.vcpu_availability_path(c.guest, 2), "online")
        seen = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.t.refusal):
                while not seen:
                    await asyncio.sleep(0.05)
                    seen = any(r.dom == c.stubdom and r.path.startswith(
                        proto.vcpu_dir_path(c.guest)) for r in self.rec.since(m))
        if seen:
            self.add("vcpu-set", P, "the DM read the cpu directory after the change")
        else:
            self.add("vcpu-set", N, "the DM did not look at /local/domain/G/cpu")

    async def save(self) -> None:
        from stubdom.toolstack.savefile import SaveFileError, check_dm_state_complete

        c = self.created()
        m = self.rec.mark()
        await self.chan(self.t.command).save()
        self.saved = True
        f = self.h.session.paths.save_file(c.guest)
        blob = f.read_bytes() if f.exists() else b""
        self.add("save.paused", P, "paused")
        try:
            check_dm_state_complete(blob)
            self.add("save.complete", P, f"{len(blob)} bytes, complete")
        except SaveFileError as e:
            self.add("save.complete", F, f"{len(blob)} bytes at paused: {e}")
        con = f"/local/domain/{c.stubdom}/device/console/{proto.CONSOLE_SAVE}/state"
        paused = next((r.seq for r in self.dm_writes(m, "state") if r.value == "paused"),
                      len(self.rec.requests))
        closed = [r for r in self.rec.since(m) if r.path == con and r.dom == c.stubdom
                  and r.value == "6" and r.seq < paused]
        self.add("save.console-closed", P if closed else F,
                 "console 1 Closed before paused" if closed else
                 "console 1 not Closed when paused was written")

    async def paused_logdirty(self) -> None:
        if not self.saved:
            self.add("paused.logdirty", F, "not run: the save did not reach paused")
            return
        await self.chan(self.t.command).logdirty(True)
        self.add("paused.logdirty", P, "enable answered while paused")

    async def cont(self) -> None:
        c = self.created()
        if not self.saved:
            self.add("continue.running", F, "not run: the save did not reach paused")
            return
        sent = await self.chan(self.t.command).resume()
        st = await self.h.session.xs.read(proto.state_path(c.stubdom, c.guest))
        self.add("continue.running", P if sent and st == b"running" else F, f"state {st!r}")
