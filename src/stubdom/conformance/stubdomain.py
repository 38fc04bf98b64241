"""Stubdomain mode: boot PROGRAM as the stubdomain of a test guest and drive it, the
way libxl does, through every clause; what the DM wrote is read from the xenstored
request trace (exact order, by connection domain)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stubdom import protocol as proto
from stubdom.conformance.host import Recorder, Request, TracedHost, traced_host
from stubdom.conformance.report import Result, Verdict
from stubdom.host import devices
from stubdom.toolstack import operations as ops
from stubdom.toolstack import saverestore
from stubdom.toolstack.config import DiskSpec, GuestConfig, NicSpec
from stubdom.toolstack.control import (
    DeviceModelChannel,
    DeviceModelError,
    DeviceModelTimeout,
    PciInsertError,
    PciRemoveError,
)
from stubdom.toolstack.session import ToolstackError
from stubdom.toolstack.spawn import Created, CreateError

P = Verdict.PASS
F = Verdict.FAIL
N = Verdict.UNSUPPORTED
B1, B2, B3 = proto.Bdf(0, 3, 0, 0), proto.Bdf(0, 4, 0, 0), proto.Bdf(0, 5, 0, 0)


@dataclass
class Timeouts:
    startup: float = 10.0
    command: float = 5.0
    refusal: float = 1.5  # how long a silent refusal is watched


class _Run:
    def __init__(self, h: TracedHost, kernel: str, args: list[str], t: Timeouts) -> None:
        self.h, self.kernel, self.args, self.t = h, kernel, args, t
        self.rec: Recorder = h.recorder
        self.results: list[Result] = []
        self.c: Created | None = None

    def add(self, clause: str, verdict: Verdict, seen: str, style: str = "") -> None:
        self.results.append(Result(clause, verdict, seen, style))

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

    def chan(self, timeout: float) -> DeviceModelChannel:
        assert self.c is not None
        return ops.channel(self.h.session, self.c.stubdom, self.c.guest, timeout)

    def dm_writes(self, mark: int, node: str) -> list[Request]:
        """Writes/removes of ``device-model/G/<node>`` by the stubdomain since ``mark``."""
        assert self.c is not None
        path = proto.dm_path(self.c.stubdom, self.c.guest, node)
        return [
            r for r in self.rec.since(mark)
            if r.dom == self.c.stubdom and r.path == path and r.type in ("WRITE", "RM")
        ]

    async def guarded(self, clauses: list[str], body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body``; any clause it did not decide fails with the error seen."""
        before = {r.clause for r in self.results}
        try:
            await body()
        except (DeviceModelError, OSError, ValueError, TimeoutError) as e:
            for c in clauses:
                if c not in before and c not in {r.clause for r in self.results}:
                    self.add(c, F, f"{type(e).__name__}: {e}")

    # -- clauses -----------------------------------------------------------------------

    async def startup(self) -> bool:
        s = self.h.session
        try:
            self.c = await ops.create_guest(s, self.cfg(), timeout=self.t.startup)
        except CreateError as e:
            self.add("startup.running", F, f"create failed: {e}")
            return False
        c = self.c
        reads = {r.path for r in self.rec.requests if r.dom == c.stubdom and r.type == "READ"}
        vm = (await s.xs.read(proto.vm_path_node(c.guest))).decode()
        want = [proto.target_path(c.stubdom), proto.vm_path_node(c.guest), proto.dmargs_path(vm)]
        missing = [p for p in want if p not in reads]
        self.add("setup.reads", F if missing else P,
                 f"not read: {missing}" if missing else "target, vm, dmargs read")
        states = [r.value for r in self.dm_writes(0, "state")]
        ok = states[:1] == [proto.State.RUNNING.value]
        self.add("startup.running", P if ok else F, f"state writes before ready: {states}")
        first = next((r.seq for r in self.dm_writes(0, "state")), None)
        watched = {r.path for r in self.rec.requests[: first or 0] if r.type == "WATCH"
                   and r.dom == c.stubdom}
        need = [proto.command_path(c.stubdom, c.guest),
                proto.logdirty_path(c.stubdom, c.guest, "cmd")]
        miss = [p for p in need if p not in watched]
        self.add("startup.watch-first", F if miss else P,
                 f"not watched before running: {miss}" if miss else "both watched")
        return True

    async def pci(self) -> None:
        c, xs = self.c, self.h.session.xs
        assert c is not None
        for b in (B1, B2, B3):
            await devices.add_pci(xs, c.stubdom, devices.PciFunction(b), domain_name="conf-dm")
        ch = self.chan(self.t.command)
        devfn = -1

        async def insert() -> None:
            nonlocal devfn
            m = self.rec.mark()
            devfn = await ch.pci_insert(B1)
            cmd = self.dm_writes(m, "command")
            self.add("command.deleted", P if any(r.type == "RM" for r in cmd) else F,
                     "command removed by the DM" if cmd else "the DM never removed command")
            seq = [(r.path.rsplit("/", 1)[1], r.value) for r in
                   self.dm_writes(m, "state") + self.dm_writes(m, "parameter")]
            ordered = sorted(self.dm_writes(m, "state") + self.dm_writes(m, "parameter"),
                             key=lambda r: r.seq)
            names = [r.path.rsplit("/", 1)[1] for r in ordered]
            ok = "parameter" in names and "state" in names and \
                names.index("parameter") < names.index("state")
            self.add("pci-ins.order", P if ok else F, f"DM wrote {names}")
            fmt = f"0x{devfn:02x}"
            self.add("pci-ins.result", P if ("parameter", fmt) in seq else F,
                     f"writes {seq}")

        await self.guarded(["command.deleted", "pci-ins.order", "pci-ins.result"], insert)

        async def requested() -> None:
            got = await ch.pci_insert(B2, vdevfn=0x38)
            self.add("pci-ins.vdevfn", P if got == 0x38 else F, f"asked 0x38, got 0x{got:02x}")

        await self.guarded(["pci-ins.vdevfn"], requested)

        m = self.rec.mark()
        short = self.chan(self.t.refusal)
        try:
            await short.pci_insert(B3, vdevfn=0x38)
            self.add("pci-ins.refusal", F, "a second insert at devfn 0x38 succeeded")
        except (PciInsertError, DeviceModelTimeout) as e:
            await self.settle(m, "state")
            states = [r.value for r in self.dm_writes(m, "state")]
            params = [r.value for r in self.dm_writes(m, "parameter")]
            if proto.State.PCI_INSERT_FAILED.value in states:
                self.add("pci-ins.refusal", P, f"state pci-insert-failed, parameter {params}")
            elif not states and any(p in proto.PCI_INS_ERRORS for p in params):
                self.add("pci-ins.refusal", P, f"parameter {params}, state unchanged",
                         "qemu-trad style")
            else:
                self.add("pci-ins.refusal", F, f"{e}; DM wrote state {states} parameter {params}")
        except DeviceModelError as e:  # e.g. a result left by a DM that broke the order
            self.add("pci-ins.refusal", F, f"{type(e).__name__}: {e}")
        await self.reset_running()

        async def remove() -> None:
            await ch.pci_remove(B1, vdevfn=devfn)
            self.add("pci-rem.result", P, "pci-removed")

        if devfn >= 0:
            await self.guarded(["pci-rem.result"], remove)
        else:
            self.add("pci-rem.result", F, "not run: no inserted device")
        await self.reset_running()

        m = self.rec.mark()
        try:
            await short.exchange(proto.Command.PCI_REM, "0000:09:00.0", proto.State.PCI_REMOVED)
            self.add("pci-rem.refusal", F, "pci-removed for a device never inserted")
        except PciRemoveError as e:
            self.add("pci-rem.refusal", P, str(e))
        except DeviceModelTimeout:
            states = [r.value for r in self.dm_writes(m, "state")]
            ok = proto.State.PCI_REMOVED.value not in states
            self.add("pci-rem.refusal", P if ok else F, f"state writes {states}",
                     "qemu-trad style" if ok else "")
        await self.reset_running()

    async def settle(self, mark: int, node: str, limit: float = 0.5) -> None:
        """Give the DM a moment to write ``node`` (a result may follow the error text)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(limit, self.t.refusal)):
                while not self.dm_writes(mark, node):
                    await asyncio.sleep(0.02)

    async def reset_running(self) -> None:
        c = self.c
        assert c is not None
        await self.h.session.xs.write(proto.state_path(c.stubdom, c.guest), "running")

    async def unknown(self) -> None:
        c, xs = self.c, self.h.session.xs
        assert c is not None
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

    async def save_continue(self) -> None:
        from stubdom.toolstack.savefile import SaveFileError, check_dm_state_complete

        c, s = self.c, self.h.session
        assert c is not None
        ch = self.chan(self.t.command)
        m = self.rec.mark()
        try:
            await ch.save()
        except DeviceModelError as e:
            for cl in ("save.paused", "save.console-closed", "save.complete",
                       "paused.logdirty", "continue.running"):
                self.add(cl, F, f"save: {e}")
            return
        f = s.paths.save_file(c.guest)
        blob = f.read_bytes() if f.exists() else b""
        self.add("save.paused", P, "paused")
        try:
            check_dm_state_complete(blob)
            self.add("save.complete", P, f"{len(blob)} bytes, complete")
        except SaveFileError as e:
            self.add("save.complete", F, f"{len(blob)} bytes at paused: {e}")
        con = f"/local/domain/{c.stubdom}/device/console/{proto.CONSOLE_SAVE}/state"
        paused = next(r.seq for r in self.dm_writes(m, "state") if r.value == "paused")
        closed = [r for r in self.rec.since(m) if r.path == con and r.dom == c.stubdom
                  and r.value == "6" and r.seq < paused]
        self.add("save.console-closed", P if closed else F,
                 "console 1 Closed before paused" if closed else
                 "console 1 not Closed when paused was written")
        await self.guarded(["paused.logdirty"], self._paused_logdirty)

        async def cont() -> None:
            sent = await ch.resume()
            st = await s.xs.read(proto.state_path(c.stubdom, c.guest))
            ok = sent and st == b"running"
            self.add("continue.running", P if ok else F, f"state {st!r}")

        await self.guarded(["continue.running"], cont)

    async def _paused_logdirty(self) -> None:
        await self.chan(self.t.command).logdirty(True)
        self.add("paused.logdirty", P, "enable answered while paused")

    async def logdirty(self) -> None:
        async def body() -> None:
            ch = self.chan(self.t.command)
            await ch.logdirty(True)
            await ch.logdirty(False)
            self.add("logdirty.echo", P, "enable and disable echoed")

        await self.guarded(["logdirty.echo"], body)

    async def vcpu(self) -> None:
        c, xs = self.c, self.h.session.xs
        assert c is not None
        m = self.rec.mark()
        path = proto.vcpu_availability_path(c.guest, 2)
        await xs.write(path, "online")
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

    async def loadvm(self) -> None:
        c, s = self.c, self.h.session
        assert c is not None
        image = self.h.root / "conf.save"
        try:
            await saverestore.save_guest(s, c.guest, image, timeout=self.t.command)
            m = self.rec.mark()
            r = await saverestore.restore_guest(s, image, timeout=self.t.startup)
        except (DeviceModelError, CreateError, ToolstackError, OSError) as e:
            self.add("loadvm.running", F, f"{type(e).__name__}: {e}")
            return
        self.c = r
        states = [x.value for x in self.dm_writes(m, "state")]
        con2 = f"/local/domain/{r.stubdom}/device/console/{proto.CONSOLE_RESTORE}"
        read2 = any(x.dom == r.stubdom and x.path.startswith(con2) and x.type == "WRITE"
                    for x in self.rec.since(m))
        ok = states[:1] == ["running"] and "paused" not in states and read2
        self.add("loadvm.running", P if ok else F,
                 f"state writes {states}, console 2 used={read2}")


async def check_stubdomain(kernel: str, args: list[str], t: Timeouts | None = None) -> list[Result]:
    """Every stubdomain clause against ``kernel`` (booted with ``args``)."""
    async with traced_host() as h:
        run = _Run(h, kernel, args, t or Timeouts())
        if await run.startup():
            await run.pci()
            await run.unknown()
            await run.logdirty()
            await run.vcpu()
            await run.save_continue()
            await run.loadvm()
        from stubdom.conformance.clauses import STUBDOMAIN_CLAUSES

        done = {r.clause for r in run.results}
        for cl in STUBDOMAIN_CLAUSES:
            if cl.id not in done:
                run.add(cl.id, F, "not run: the stubdomain did not start")
        order = {cl.id: i for i, cl in enumerate(STUBDOMAIN_CLAUSES)}
        return sorted(run.results, key=lambda r: order[r.clause])
