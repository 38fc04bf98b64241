"""The hypervisor we ship: every PV domain is a process, its kernel an executable.

Booting a PV domain runs its kernel with the command line words as arguments and
``XENSTORED_PATH`` naming the domain's own xenstore connection (``<socket>.d/<domid>``);
nothing else of the host's environment is passed on.  Pause and unpause stop and
continue the process group; the process ending is the domain shutting down (exit 0)
or crashing (anything else).  What the real hypervisor signals to xenstored with
VIRQ_DOM_EXC we report through the `XenstoredLink` of the daemon that runs (which also
gives each domain its socket).  An HVM guest has no kernel of ours: it is a domain
without a process, whose state is what the toolstack makes it, and whose PV drivers
the host plays (`stubdom.host.hvmguest`: it obeys ``control/shutdown`` and brings
vCPUs on- and offline as ``cpu/<n>/availability`` says).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.host.dom0 import dom0_info
from stubdom.host.hvmguest import HvmGuestDrivers
from stubdom.host.hypervisor import (
    DomainConfig,
    DomainExists,
    DomainInfo,
    DomainState,
    Hypervisor,
    HypervisorError,
    NoSuchDomain,
    ShutdownReason,
)
from stubdom.host.xslink import OursLink, XenstoredLink
from stubdom.wire.constants import DOMID_FIRST_RESERVED
from stubdom.xenstore import Client

log = logging.getLogger(__name__)

#: What a domain process inherits of the host: enough to run an interpreter, no more.
_BASE_ENV = {"PATH": os.defpath, "LANG": "C.UTF-8"}


@dataclass
class _Domain:
    domid: int
    config: DomainConfig
    paused: bool = True
    state: DomainState = DomainState.RUNNING
    shutdown_reason: ShutdownReason | None = None
    kernel: str | None = None
    cmdline: str = ""
    env: dict[str, str] = field(default_factory=dict)
    target: int | None = None
    process: asyncio.subprocess.Process | None = None
    waiter: asyncio.Task[None] | None = None
    created: float = field(default_factory=time.monotonic)
    ended_cpu: float = 0.0
    current_memkb: int | None = None
    online_vcpus: int | None = None
    drivers: HvmGuestDrivers | None = None


class SimulatedHypervisor(Hypervisor):
    def __init__(
        self,
        xenstore: Client,
        xenstored_socket: str | os.PathLike[str],
        run_dir: Path,
        link: XenstoredLink | None = None,
    ) -> None:
        self.xenstore = xenstore
        self.xenstored_socket = str(xenstored_socket)
        self.link = link or OursLink(xenstore, self.xenstored_socket)
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "domains"
        self._domains: dict[int, _Domain] = {}
        self._rover = 0
        self._lock = asyncio.Lock()

    # -- life cycle ---------------------------------------------------------------------

    async def create_domain(self, config: DomainConfig) -> int:
        if not config.name:
            raise HypervisorError("a domain needs a name")
        self._check_name_free(config.name)
        domid = self._allocate_domid() if config.domid is None else self._wanted(config)
        dom = self._domains[domid] = _Domain(domid, config)
        # xenstored asks the hypervisor whether a domain exists (permissions naming a
        # domain that does not are ignored); there is no hypervisor to ask, so tell it.
        await self._tell_xenstored(domid, "running")
        if config.hvm:
            dom.drivers = HvmGuestDrivers(
                self.xenstore,
                domid,
                shutdown=lambda reason: self.shutdown(domid, reason),
                set_online_vcpus=lambda n: setattr(dom, "online_vcpus", n),
                paused=lambda: dom.paused,
            )
            dom.drivers.start()
        log.info("created domain %d (%s), paused", domid, config.name)
        return domid

    def _check_name_free(self, name: str, domid: int | None = None) -> None:
        if name == "Domain-0" or any(
            d.config.name == name and d.domid != domid for d in self._domains.values()
        ):
            raise DomainExists(
                f"a domain called {name!r} already exists; "
                "choose another name or destroy it first"
            )

    def _allocate_domid(self) -> int:
        """Like Xen: increasing from 1, wrapping below the reserved ids, never a live one."""
        for _ in range(DOMID_FIRST_RESERVED):
            self._rover = self._rover % (DOMID_FIRST_RESERVED - 1) + 1
            if self._rover not in self._domains:
                return self._rover
        raise HypervisorError("no free domain id: destroy some domains")

    def _wanted(self, config: DomainConfig) -> int:
        """The id a creation asks for (xc_domain_create with a domid): free, or refused."""
        domid = config.domid
        assert domid is not None
        if not 1 <= domid < DOMID_FIRST_RESERVED:
            raise HypervisorError(
                f"domain id {domid} for {config.name!r} is not a guest's "
                f"(1..{DOMID_FIRST_RESERVED - 1}); leave it to the hypervisor"
            )
        taken = self._domains.get(domid)
        if taken is not None:
            raise DomainExists(
                f"domain id {domid} for {config.name!r} is in use by {taken.config.name!r}; "
                "destroy that domain first"
            )
        return domid

    def scratch_dir(self, domid: int) -> Path:
        return self.log_dir / f"{domid}.tmp"

    def _get(self, domid: int) -> _Domain:
        dom = self._domains.get(domid)
        if dom is None:
            raise NoSuchDomain(domid)
        return dom

    async def set_max_mem(self, domid: int, memkb: int) -> None:
        if memkb < 0:
            raise HypervisorError(f"domain {domid}: max memory {memkb} KiB is negative")
        self._get(domid).config.max_memkb = memkb

    async def set_max_vcpus(self, domid: int, vcpus: int) -> None:
        if not 1 <= vcpus <= 128:
            raise HypervisorError(f"domain {domid}: {vcpus} vcpus is out of range 1..128")
        self._get(domid).config.max_vcpus = vcpus

    async def build_pv(
        self, domid: int, kernel: str, cmdline: str = "", env: dict[str, str] | None = None
    ) -> None:
        dom = self._get(domid)
        if dom.config.hvm:
            raise HypervisorError(f"domain {domid} is HVM; only PV domains boot a kernel here")
        if dom.process is not None:
            raise HypervisorError(f"domain {domid} has already booted")
        path = Path(kernel)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise HypervisorError(
                f"kernel {kernel!r} for domain {domid} is not an executable "
                "file; a simulated PV kernel is a program"
            )
        dom.kernel = str(path.resolve())
        dom.cmdline = cmdline
        dom.env = dict(env or {})

    async def build_hvm(self, domid: int, target_memkb: int, vcpus: int) -> None:
        dom = self._get(domid)
        if not dom.config.hvm:
            raise HypervisorError(f"domain {domid} is PV; build it with a kernel")
        if not 1 <= vcpus <= dom.config.max_vcpus:
            raise HypervisorError(
                f"domain {domid}: {vcpus} vcpus online is out of range 1..{dom.config.max_vcpus}"
            )
        await self.set_memory_target(domid, target_memkb)
        dom.online_vcpus = vcpus

    async def set_memory_target(self, domid: int, memkb: int) -> None:
        dom = self._get(domid)
        if not 0 <= memkb <= dom.config.max_memkb:
            raise HypervisorError(
                f"domain {domid}: memory target {memkb} KiB is outside 0..{dom.config.max_memkb}"
                " (its maximum)"
            )
        dom.current_memkb = memkb

    async def rename(self, domid: int, name: str) -> None:
        dom = self._get(domid)
        if not name:
            raise HypervisorError(f"domain {domid}: a domain needs a name")
        self._check_name_free(name, domid)
        log.info("domain %d renamed from %s to %s", domid, dom.config.name, name)
        dom.config.name = name

    async def set_target(self, domid: int, target: int) -> None:
        self._get(target)
        self._get(domid).target = target

    async def pause(self, domid: int) -> None:
        dom = self._get(domid)
        self._signal(dom, signal.SIGSTOP)
        dom.paused = True
        await self._settle(dom, stopped=True)

    async def unpause(self, domid: int) -> None:
        dom = self._get(domid)
        if dom.state in (DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING):
            raise HypervisorError(
                f"domain {domid} has {dom.state.name.lower()}; it cannot run again, destroy it"
            )
        if dom.kernel is not None and dom.process is None:
            await self._boot(dom)
        else:
            self._signal(dom, signal.SIGCONT)
            await self._settle(dom, stopped=False)
        dom.paused = False
        if dom.drivers is not None:
            dom.drivers.unpaused()

    async def _boot(self, dom: _Domain) -> None:
        assert dom.kernel is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # A scratch directory of the domain's own (its "tmpfs"), gone when it is.
        scratch = self.scratch_dir(dom.domid)
        scratch.mkdir(parents=True, exist_ok=True)
        env = {
            **_BASE_ENV,
            **dom.env,
            "XENSTORED_PATH": await self.link.domain_socket(dom.domid),
            "TMPDIR": str(scratch),
        }
        log_path = self.log_dir / f"{dom.domid}-{dom.config.name}.log"
        with open(log_path, "ab") as out:
            dom.process = await asyncio.create_subprocess_exec(
                dom.kernel,
                *dom.cmdline.split(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd=self.log_dir,
                start_new_session=True,
            )
        log.info(
            "domain %d (%s) booted %s as pid %d",
            dom.domid,
            dom.config.name,
            dom.kernel,
            dom.process.pid,
        )
        dom.waiter = asyncio.get_running_loop().create_task(self._wait_exit(dom))

    async def _wait_exit(self, dom: _Domain) -> None:
        assert dom.process is not None
        code = await dom.process.wait()
        dom.ended_cpu = _cpu_seconds(dom.process.pid) or dom.ended_cpu
        if dom.state is DomainState.DYING or dom.domid not in self._domains:
            return
        if dom.state in (DomainState.SHUTDOWN, DomainState.CRASHED):
            return  # a shutdown we ordered
        if code == 0:
            dom.state, dom.shutdown_reason = DomainState.SHUTDOWN, ShutdownReason.POWEROFF
            how = "shutdown"
        else:
            dom.state, dom.shutdown_reason = DomainState.CRASHED, ShutdownReason.CRASH
            how = "crashed"
        log.info("domain %d (%s) %s (exit status %d)", dom.domid, dom.config.name, how, code)
        await self._tell_xenstored(dom.domid, how)

    async def shutdown(self, domid: int, reason: ShutdownReason) -> None:
        dom = self._get(domid)
        if dom.state in (DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING):
            return
        crashed = reason is ShutdownReason.CRASH
        dom.state = DomainState.CRASHED if crashed else DomainState.SHUTDOWN
        dom.shutdown_reason = reason
        await self._kill(dom)
        await self._tell_xenstored(domid, "crashed" if crashed else "shutdown")

    async def destroy(self, domid: int) -> None:
        dom = self._get(domid)
        dom.state = DomainState.DYING
        if dom.drivers is not None:
            await dom.drivers.stop()
        await self._kill(dom)
        del self._domains[domid]
        shutil.rmtree(self.scratch_dir(domid), ignore_errors=True)
        await self._tell_xenstored(domid, "gone")
        log.info("destroyed domain %d (%s)", domid, dom.config.name)

    async def close(self) -> None:
        """Destroy every domain: no process of ours outlives the host."""
        for domid in list(self._domains):
            with contextlib.suppress(HypervisorError):
                await self.destroy(domid)
        await self.link.close()

    # -- processes --------------------------------------------------------------------

    def _signal(self, dom: _Domain, sig: signal.Signals) -> None:
        proc = dom.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _settle(self, dom: _Domain, stopped: bool) -> None:
        """Return once the signal took effect: like xc_domain_pause, pausing is synchronous."""
        proc = dom.process
        if proc is None:
            return
        for _ in range(2000):
            fields = _stat_fields(proc.pid)
            if fields is None or fields[0] in ("Z", "X") or (fields[0] == "T") == stopped:
                return
            await asyncio.sleep(0.001)
        log.warning(
            "domain %d: process %d did not %s",
            dom.domid,
            proc.pid,
            "stop" if stopped else "continue",
        )

    async def _kill(self, dom: _Domain) -> None:
        proc = dom.process
        if proc is None:
            return
        if proc.returncode is None:
            self._signal(dom, signal.SIGKILL)
            self._signal(dom, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # children the kernel left behind, too
        if dom.waiter is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await dom.waiter
        else:
            await proc.wait()

    async def _tell_xenstored(self, domid: int, state: str) -> None:
        await self.link.domain_state(domid, state)

    # -- information ------------------------------------------------------------------

    async def list_domains(self) -> Sequence[DomainInfo]:
        return [dom0_info()] + [
            self._info(d) for d in sorted(self._domains.values(), key=lambda d: d.domid)
        ]

    async def domain_info(self, domid: int) -> DomainInfo:
        if domid == 0:
            return dom0_info()
        return self._info(self._get(domid))

    def _info(self, dom: _Domain) -> DomainInfo:
        proc = dom.process
        pid = proc.pid if proc is not None and proc.returncode is None else None
        state = dom.state
        if state is DomainState.RUNNING and not dom.paused:
            state = _process_state(pid) if pid is not None else DomainState.RUNNING
        cpu = _cpu_seconds(pid) or dom.ended_cpu if pid is not None else dom.ended_cpu
        return DomainInfo(
            domid=dom.domid,
            name=dom.config.name,
            uuid=dom.config.uuid,
            hvm=dom.config.hvm,
            state=state,
            paused=dom.paused and state is DomainState.RUNNING,
            shutdown_reason=dom.shutdown_reason,
            max_memkb=dom.config.max_memkb,
            max_vcpus=dom.config.max_vcpus,
            cpu_time=cpu,
            target=dom.target,
            kernel=dom.kernel,
            pid=pid,
            current_memkb=dom.current_memkb,
            online_vcpus=dom.online_vcpus,
        )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_state(pid: int) -> DomainState:
    """A running process is ``r``; one waiting for something is ``b`` (blocked)."""
    fields = _stat_fields(pid)
    if fields is None:
        return DomainState.RUNNING
    return DomainState.RUNNING if fields[0] == "R" else DomainState.BLOCKED


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")
