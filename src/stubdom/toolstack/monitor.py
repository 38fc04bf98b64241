"""The domain monitor: the process that applies ``on_poweroff``/``on_reboot``/``on_crash``.

As ``xl create`` leaves a daemon per domain waiting for its death (xl_vmcontrol.c
``create_domain``, ``handle_domain_death``), ``stubdom create`` and ``stubdom restore``
start one ``stubdom monitor DOMID`` process per guest (not with ``-e``; ``create -F``
runs it in the foreground).  It wakes on ``@releaseDomain`` and looks at its guest:

- the guest shut down or crashed: the action for the reason (`stubdom.toolstack.actions`)
  is applied to the guest and its stubdomain: destroy, restart (both created again from
  the recorded configuration, and monitored on), preserve, or rename-restart;
- the **stubdomain** crashed or shut down while its guest lives: a guest whose device
  model is gone cannot run, so this is a crash of the guest.  The dead stubdomain is
  destroyed first, the guest is marked crashed, and ``on_crash`` applies;
- the guest is gone (destroyed by anyone): the monitor exits.

It also exits when the host daemon goes away (its API socket closes) and on SIGTERM,
which ``stubdom host down`` sends before stopping the host.  Its pid file is
``DIR/monitors/<domid>.pid`` and its log ``DIR/log/xl-<name>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any

from stubdom import protocol as proto
from stubdom.host.hypervisor import DomainState, HypervisorError, NoSuchDomain, ShutdownReason
from stubdom.host.rundir import (
    RunDir,
    is_monitor,
    process_alive,
    read_pid,
    write_pid,
)
from stubdom.toolstack.actions import Decision, Outcome, decide, preserved_suffix
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.domain import rename_guest
from stubdom.toolstack.exchange import DeviceModelError
from stubdom.toolstack.operations import create_guest, recorded_config
from stubdom.toolstack.records import roperm
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.toolstack.spawn import CreateError, HostPaths, destroy_domain, destroy_guest
from stubdom.xenstore import Transaction, XenStoreError

log = logging.getLogger(__name__)


class _Look(enum.Enum):
    RUNNING = "running"
    GONE = "gone"


#: What may go wrong while acting, reported in the log rather than as a traceback.
_FAILURES = (
    HypervisorError, XenStoreError, ToolstackError, CreateError, DeviceModelError, OSError,
)


def log_file(paths: HostPaths, name: str) -> str:
    return str(paths.log_dir / f"xl-{name}.log")


class DomainMonitor:
    """Waits for one guest's death and applies its action; follows it across restarts."""

    def __init__(self, s: Session, guest: int) -> None:
        self.s = s
        self.guest = guest
        self._suspended = False

    @property
    def pid_file(self) -> Path:
        return self.s.run_dir.monitor_pid(self.guest)

    async def run(self) -> int:
        """Until there is nothing more to do; returns the exit status."""
        while True:
            log.info("Waiting for domain %d to die [pid %d]", self.guest, os.getpid())
            reason = await self._wait_for_shutdown()
            if reason is _Look.GONE:
                log.info("Domain %d has been destroyed.", self.guest)
                return 0
            assert isinstance(reason, ShutdownReason)
            log.info("Domain %d has shut down, reason code %d 0x%x", self.guest, reason, reason)
            decision, cfg = await self._decide(reason)
            if decision.outcome is Outcome.WAIT:
                log.info("Domain has suspended. Continue waiting for domain %d", self.guest)
                self._suspended = True
                continue
            if not await self._act(decision, cfg):
                log.info("Done. Exiting now")
                return 0
            log.info("Done. Rebooting now")
            assert cfg is not None
            created = await create_guest(self.s, cfg)
            self._moved(created.guest)
            log.info("Domain %s restarted as domain %d", cfg.name, created.guest)

    async def _decide(self, reason: ShutdownReason) -> tuple[Decision, GuestConfig | None]:
        try:
            cfg: GuestConfig | None = await recorded_config(self.s, self.guest)
        except ToolstackError as e:
            log.warning("%s: destroying it", e)
            return Decision(Outcome.DESTROY, "destroy", "no recorded configuration"), None
        assert cfg is not None
        decision = decide(reason, cfg)
        log.info("Action for shutdown reason code %d is %s", reason, decision.configured)
        if decision.note:
            log.info("Note: %s", decision.note)
        return decision, cfg

    async def _act(self, decision: Decision, cfg: GuestConfig | None) -> bool:
        """Apply the decision; True if the guest is to be created again."""
        s = self.s
        if decision.outcome is Outcome.PRESERVE:
            log.info("Preserving domain %d as it is", self.guest)
            return False
        if decision.outcome is Outcome.RENAME_RESTART and cfg is not None:
            await preserve_domain(s, self.guest, cfg.name)
            return True
        log.info("Domain %d needs to be cleaned up: destroying the domain", self.guest)
        await destroy_guest(s.hv, s.xs, self.guest, s.paths, s.channels)
        return decision.outcome.restarts and cfg is not None

    def _moved(self, guest: int) -> None:
        old = self.pid_file
        self.guest = guest
        self._suspended = False
        with contextlib.suppress(FileNotFoundError):
            os.replace(old, self.pid_file)

    async def _wait_for_shutdown(self) -> ShutdownReason | _Look:
        async with self.s.xs.watch(proto.RELEASE_DOMAIN) as watch:
            while True:
                look = await self._look()
                if look is not _Look.RUNNING:
                    return look
                await watch.get()

    async def _look(self) -> ShutdownReason | _Look:
        try:
            info = await self.s.hv.domain_info(self.guest)
        except NoSuchDomain:
            return _Look.GONE
        if info.state in (DomainState.SHUTDOWN, DomainState.CRASHED):
            reason = info.shutdown_reason
            if reason is None:  # (POWEROFF is 0: no ``or`` here)
                reason = ShutdownReason.CRASH
            if reason is ShutdownReason.SUSPEND and self._suspended:
                return _Look.RUNNING
            return reason
        if info.state is DomainState.DYING:
            return _Look.RUNNING  # gone at the next event
        self._suspended = False
        return await self._stubdom_died()

    async def _stubdom_died(self) -> ShutdownReason | _Look:
        """A dead stubdomain is a crash of its guest: destroy it, mark the guest crashed."""
        s = self.s
        stub = await s.stubdom_of(self.guest)
        if stub is None:
            return _Look.RUNNING
        try:
            info = await s.hv.domain_info(stub)
        except NoSuchDomain:
            return _Look.RUNNING  # destroyed with its guest, which goes next
        if info.state not in (DomainState.SHUTDOWN, DomainState.CRASHED):
            return _Look.RUNNING
        how = "crashed" if info.state is DomainState.CRASHED else "shut down"
        log.warning(
            "Stubdomain %s (domain %d) of domain %d has %s: a guest cannot run without its "
            "device model, so the guest has crashed; destroying the stubdomain",
            info.name, stub, self.guest, how,
        )
        await destroy_domain(s.hv, s.xs, stub, None, s.paths)
        await s.xs.rm(proto.device_model_domid_path(self.guest), missing_ok=True)
        await s.hv.shutdown(self.guest, ShutdownReason.CRASH)
        return ShutdownReason.CRASH


async def preserve_domain(s: Session, guest: int, name: str) -> None:
    """``libxl_domain_preserve``: the shut-down guest and its stubdomain stay, renamed
    ``<name>-<time>``, the guest under a new ``/vm/<uuid>`` (its uuid goes to the
    restarted guest)."""
    new_name = name + preserved_suffix()
    vm = f"/vm/{uuidlib.uuid4()}"

    async def body(t: Transaction) -> None:
        await t.rm(vm, missing_ok=True)
        await t.mkdir(vm)
        await t.set_perms(vm, roperm(guest))
        await t.write(proto.vm_path_node(guest), vm)
        await t.write(f"{vm}/uuid", vm.rsplit("/", 1)[1])

    log.info("Preserving domain %d %s with suffix%s", guest, name, new_name[len(name):])
    await s.xs.retry_transaction(body)
    await rename_guest(s, guest, new_name)


# -- the process --------------------------------------------------------------------------


async def _host_gone(rd: RunDir) -> None:
    """Returns once the host daemon closes its API socket (it is stopping or died)."""
    try:
        reader, writer = await asyncio.open_unix_connection(os.fspath(rd.host_socket))
    except OSError:
        return
    try:
        await reader.read()
    except (OSError, ConnectionError):
        pass
    finally:
        writer.close()


def _claim(rd: RunDir, guest: int) -> None:
    pid_file = rd.monitor_pid(guest)
    other = read_pid(pid_file)
    if other is not None and other != os.getpid() and is_monitor(other, rd):
        raise ToolstackError(f"domain {guest} already has a monitor (pid {other})")
    rd.monitors.mkdir(mode=0o700, exist_ok=True)
    write_pid(pid_file, os.getpid())


async def monitor_domain(s: Session, guest: int) -> int:
    """Run the monitor of ``guest`` in this process; returns the exit status."""
    rd = s.run_dir
    _claim(rd, guest)
    monitor = DomainMonitor(s, guest)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watching = loop.create_task(monitor.run())
    ends = [loop.create_task(_host_gone(rd)), loop.create_task(stop.wait())]
    tasks: list[asyncio.Task[Any]] = [watching, *ends]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not watching.done():
            why = "the host is going down" if ends[0].done() else "asked to"
            log.info("Monitor of domain %d stops: %s", monitor.guest, why)
            return 0
        return _status(watching)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if read_pid(rd.monitor_pid(monitor.guest)) == os.getpid():
            os.unlink(rd.monitor_pid(monitor.guest))


def _status(task: asyncio.Task[int]) -> int:
    exc = task.exception()
    if exc is None:
        return task.result()
    if isinstance(exc, _FAILURES):
        log.error("Monitor failed: %s", exc)
        return 1
    raise exc


def start_monitor(rd: RunDir, paths: HostPaths, guest: int, name: str) -> int:
    """Start ``stubdom monitor`` for ``guest`` in the background; returns its pid.

    The pid file is written here too, so that a ``host down`` right after the create
    finds the monitor even before it runs."""
    paths.ensure()
    rd.monitors.mkdir(mode=0o700, exist_ok=True)
    with open(log_file(paths, name), "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stubdom", "monitor", "--dir", str(rd.root), str(guest)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    if process_alive(proc.pid):  # not if it found nothing to watch and went already
        write_pid(rd.monitor_pid(guest), proc.pid)
    return proc.pid
