"""Stubdomain mode: boot PROGRAM as the stubdomain of a test guest and drive it, the
way libxl does, through every clause; what the DM wrote is read from the xenstored
request trace (exact order, by connection domain).

The peer is not trusted to do anything: the steps run under `steps.StepRunner`, so a
stub that crashes, hangs, stays silent or writes garbage gets a verdict with a reason
on every clause, within `Timeouts.bound` seconds.
"""

from __future__ import annotations

import logging

from stubdom import protocol as proto
from stubdom.conformance import scope
from stubdom.conformance.clauses import STUBDOMAIN_CLAUSES
from stubdom.conformance.host import traced_host
from stubdom.conformance.probes import Probes
from stubdom.conformance.report import Ledger, Result, Verdict
from stubdom.conformance.steps import Step, StepRunner
from stubdom.conformance.timeouts import Timeouts
from stubdom.host.xslink import Daemon
from stubdom.toolstack import operations as ops
from stubdom.toolstack import saverestore
from stubdom.toolstack.spawn import CreateError

__all__ = ["Timeouts", "check_stubdomain", "new_ledger"]

log = logging.getLogger(__name__)

P, F, N = Verdict.PASS, Verdict.FAIL, Verdict.UNSUPPORTED

PCI_CLAUSES = ("command.deleted", "pci-ins.order", "pci-ins.result", "pci-ins.vdevfn",
               "pci-ins.refusal", "pci-ins.failed-state", "pci-rem.result",
               "pci-rem.refusal", "pci-rem.failed-state")


def new_ledger() -> Ledger:
    """An empty ledger of the stubdomain clauses, for `check_stubdomain` to fill."""
    return Ledger(STUBDOMAIN_CLAUSES)


class _Run(Probes):
    """The steps that need the whole host (creation, save, restore); the command
    probes are in `Probes`."""

    async def startup(self) -> None:
        try:
            self.c = await ops.create_guest(self.h.session, self.cfg(), timeout=self.t.startup)
        except CreateError as e:
            self.not_started = f"the stubdomain did not start (create failed: {e.reason})"
            targets = scope.stub_targets(self.rec.requests)
            if not targets:
                self.add("startup.running", F, f"create failed: {e}")
                return
            # A stub that wrote running and died before create was done did start:
            # startup.running is judged by its writes, as for any other stub.
            stub, guest = next(iter(targets.items()))
            await self.judge_setup(stub, guest, vm=None, failure=f"create failed: {e}")
            return
        await self.judge_setup(self.c.stubdom, self.c.guest,
                               vm=(await self.h.session.xs.read(
                                   proto.vm_path_node(self.c.guest))).decode())

    async def judge_setup(self, stub: int, guest: int, vm: str | None,
                          failure: str | None = None) -> None:
        """The setup clauses from what the stub did; ``failure`` (create's error) is
        what a startup.running that failed saw."""
        reads = {r.path for r in self.rec.requests if r.dom == stub and r.type == "READ"}
        want = [proto.target_path(stub), proto.vm_path_node(guest)]
        if vm is not None:
            want.append(proto.dmargs_path(vm))
        missing = [p for p in want if p not in reads]
        self.add("setup.reads", F if missing else P,
                 f"not read: {missing}" if missing else "target, vm, dmargs read")
        states = [r.value for r in self.dm_writes(0, "state", stub, guest)]
        ok = states[:1] == [proto.State.RUNNING.value]
        seen = f"state writes before ready: {states}"
        self.add("startup.running", P if ok else F, seen if ok or failure is None else failure)
        first = next((r.seq for r in self.dm_writes(0, "state", stub, guest)), None)
        if first is None:
            self.add("startup.watch-first", F, "never wrote state")
            return
        watched = {r.path for r in self.rec.requests[:first] if r.type == "WATCH"
                   and r.dom == stub}
        need = [proto.command_path(stub, guest), proto.logdirty_path(stub, guest, "cmd")]
        miss = [p for p in need if p not in watched]
        self.add("startup.watch-first", F if miss else P,
                 f"not watched before running: {miss}" if miss else "both watched")

    async def loadvm(self) -> None:
        c, s = self.c, self.h.session
        assert c is not None
        if not self.saved:
            self.add("loadvm.running", F, "not run: the save did not reach paused")
            return
        image = self.h.root / "conf.save"
        await saverestore.save_guest(s, c.guest, image, timeout=self.t.command)
        m = self.rec.mark()
        self.c = None  # the saved guest is gone: a failed restore leaves no stub to ask
        self.not_started = "the restored stubdomain did not start"
        r = await saverestore.restore_guest(s, image, timeout=self.t.startup)
        self.c = r
        states = [x.value for x in self.dm_writes(m, "state")]
        con2 = f"/local/domain/{r.stubdom}/device/console/{proto.CONSOLE_RESTORE}"
        read2 = any(x.dom == r.stubdom and x.path.startswith(con2) and x.type == "WRITE"
                    for x in self.rec.since(m))
        ok = states[:1] == ["running"] and "paused" not in states and read2
        self.add("loadvm.running", P if ok else F,
                 f"state writes {states}, console 2 used={read2}")

    async def judge_scope(self) -> None:
        ok, seen = scope.judge(self.rec.requests)
        self.add("scope.writes", P if ok else F, seen)

    def steps(self) -> list[Step]:
        t = self.t
        c, r = t.command, t.refusal
        return [
            Step("startup", ("setup.reads", "startup.running", "startup.watch-first"),
                 t.startup + c, self.startup),
            Step("pcifront", PCI_CLAUSES, 3 * c, self.pciback),
            Step("pci-ins", ("command.deleted", "pci-ins.order", "pci-ins.result"), c,
                 self.insert),
            Step("pci-ins @vdevfn", ("pci-ins.vdevfn",), c, self.insert_at),
            Step("refused pci-ins", ("pci-ins.refusal", "pci-ins.failed-state"),
                 r + 1.5, self.insert_refused),
            Step("pci-rem", ("pci-rem.result",), c, self.remove),
            Step("refused pci-rem", ("pci-rem.refusal", "pci-rem.failed-state"), r + 1,
                 self.remove_refused),
            Step("unknown command", ("command.unknown",), r + 1, self.unknown),
            Step("logdirty", ("logdirty.echo",), 2 * c, self.logdirty),
            Step("vcpu-set", ("vcpu-set",), r + 1, self.vcpu),
            Step("save", ("save.paused", "save.console-closed", "save.complete"), c + 1,
                 self.save),
            Step("logdirty while paused", ("paused.logdirty",), c, self.paused_logdirty),
            Step("continue", ("continue.running",), c, self.cont),
            Step("save and restore", ("loadvm.running",), 3 * c + t.startup, self.loadvm),
            Step("what it wrote", ("scope.writes",), 0, self.judge_scope, needs_peer=False),
        ]


async def check_stubdomain(
    kernel: str,
    args: list[str],
    t: Timeouts | None = None,
    ledger: Ledger | None = None,
    xenstored: Daemon | str = Daemon.OURS,
) -> list[Result]:
    """Every stubdomain clause against ``kernel`` (booted with ``args``), on a host whose
    xenstored is ``xenstored`` (ours, cx or ox).

    Every clause gets a verdict, whatever the stub does.  A caller that must report
    even when this is cancelled (Ctrl-C) passes its own ``ledger`` and closes it."""
    t = t or Timeouts()
    ledger = ledger if ledger is not None else new_ledger()
    async with traced_host(xenstored) as h:
        run = _Run(h, kernel, args, t, ledger)
        runner = StepRunner(ledger, t.bound(), run.gone)
        for step in run.steps():
            await runner.run(step)
    ledger.close("not reached")
    return ledger.results()

