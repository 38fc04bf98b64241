"""What xl does to a running guest through xenstore: shutdown and reboot requests, the
memory target, the vCPUs online, a new name.

Each follows its libxl function (named in the docstring).  The guest's side is played
by the simulated host (`stubdom.host.hvmguest`): it obeys ``control/shutdown`` and
follows ``cpu/<n>/availability``; the device model in the stubdomain watches the
latter too (qemu-trad's vcpu-set).  Changes a restart must keep (the name, memory,
vCPUs) also go into the recorded configuration, as libxl retrieves them at a reboot.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stubdom import protocol as proto
from stubdom.host.hypervisor import DomainState, NoSuchDomain
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.operations import update_recorded_config
from stubdom.toolstack.session import Session, ToolstackError
from stubdom.wire.paths import control_shutdown_path, memory_path, name_path
from stubdom.xenstore import Transaction

log = logging.getLogger(__name__)


# -- shutdown and reboot ---------------------------------------------------------------


async def request_shutdown(s: Session, guest: int, *, reboot: bool) -> None:
    """``libxl_domain_shutdown``/``libxl_domain_reboot``: write ``control/shutdown``."""
    info = await s.hv.domain_info(guest)
    if info.ended:
        how = {DomainState.SHUTDOWN: "has shut down", DomainState.CRASHED: "has crashed"}
        raise ToolstackError(
            f"{info.name} (domain {guest}) {how.get(info.state, 'is being destroyed')} "
            f"already; 'stubdom destroy {info.name}' removes it"
        )
    await s.xs.write(control_shutdown_path(guest), "reboot" if reboot else "poweroff")


async def wait_for_deaths(
    s: Session, domids: Iterable[int], *, death_only: bool, say: Callable[[str], None]
) -> None:
    """xl's ``wait_for_domain_deaths``: until each domain has shut down or is destroyed
    (``death_only``: is destroyed), woken by ``@releaseDomain``."""
    pending = set(domids)
    say(f"Waiting for {len(pending)} domains")
    async with s.xs.watch(proto.RELEASE_DOMAIN) as watch:
        while True:
            for domid in sorted(pending):
                try:
                    info = await s.hv.domain_info(domid)
                except NoSuchDomain:
                    say(f"Domain {domid} has been destroyed")
                    pending.discard(domid)
                    continue
                if not death_only and info.state in (DomainState.SHUTDOWN, DomainState.CRASHED):
                    code = int(info.shutdown_reason) if info.shutdown_reason is not None else 0
                    say(f"Domain {domid} has been shut down, reason code {code}")
                    pending.discard(domid)
            if not pending:
                return
            await watch.get()


# -- memory ----------------------------------------------------------------------------

_MEM_SHIFT = {"t": 30, "g": 20, "m": 10, "": 10, "k": 0, "b": -10}


def parse_mem_size_kb(text: str) -> int | None:
    """xl's ``parse_mem_size_kb``: a number of MiB, or with a b/k/m/g/t suffix."""
    m = re.fullmatch(r"(\d+)([bkmgt]?)", text.strip(), re.IGNORECASE)
    if m is None:
        return None
    value, shift = int(m[1]), _MEM_SHIFT[m[2].lower()]
    return value << shift if shift >= 0 else value >> -shift


async def set_memory_target(s: Session, guest: int, memkb: int) -> int:
    """``libxl_set_memory_target(enforce=1)`` as ``xl mem-set`` calls it: the new target
    (less video RAM) must not exceed ``memory/static-max``; the hypervisor's maximum
    and PoD target follow, then ``memory/target`` and ``/vm/<uuid>/memory``.  Returns
    the target in KiB."""
    info = await s.hv.domain_info(guest)

    async def body(t: Transaction) -> int:
        if await t.read_optional(memory_path(guest, "target")) is None:
            raise ToolstackError(f"{info.name} has no memory/target; is it a stubdom guest?")
        static_max = int(await t.read(memory_path(guest, "static-max")))
        videoram = int(await t.read_optional(memory_path(guest, "videoram")) or b"0")
        target = memkb - videoram
        if target > static_max:
            raise ToolstackError(
                f"{info.name}: {memkb // 1024} MiB is above its maximum memory of "
                f"{static_max // 1024} MiB (maxmem); ask for at most that"
            )
        await s.hv.set_max_mem(guest, target + videoram)
        await s.hv.set_memory_target(guest, target)
        vm = (await t.read(proto.vm_path_node(guest))).decode()
        await t.write(memory_path(guest, "target"), str(target))
        await t.write(f"{vm}/memory", str(target // 1024))
        return target

    target = await s.xs.retry_transaction(body)

    def keep(cfg: GuestConfig) -> None:
        cfg.maxmem_mb = cfg.maxmem_mb or cfg.memory_mb
        cfg.memory_mb = max(1, target // 1024)

    await update_recorded_config(s, guest, keep)
    return target


# -- vCPUs -------------------------------------------------------------------------------


async def set_vcpus(s: Session, guest: int, count: int, *, check_host: bool = True) -> None:
    """xl's ``vcpuset`` and ``libxl__set_vcpuonline_xenstore``: vCPUs 0..count-1 online,
    the others offline, in one transaction; the device model hot-plugs them."""
    info = await s.hv.domain_info(guest)
    if count < 1:
        raise ToolstackError(f"{info.name}: a guest needs at least 1 vCPU online")
    if count > info.max_vcpus:
        raise ToolstackError(
            f"{info.name}: {count} vCPUs requested, but its maxvcpus is {info.max_vcpus}; "
            f"ask for at most {info.max_vcpus}"
        )
    if check_host:
        host = (await s.hv.domain_info(0)).max_vcpus
        if count > info.vcpus and count > host:
            raise ToolstackError(
                f"{info.name}: {count} vCPUs is more than the host's {host} CPUs; "
                "add -i (--ignore-host) to overcommit"
            )

    async def body(t: Transaction) -> None:
        for n in range(info.max_vcpus):
            value = "online" if n < count else "offline"
            await t.write(proto.vcpu_availability_path(guest, n), value)

    await s.xs.retry_transaction(body)

    def keep(cfg: GuestConfig) -> None:
        cfg.maxvcpus = cfg.maxvcpus or cfg.vcpus
        cfg.vcpus = count

    await update_recorded_config(s, guest, keep)


# -- names -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Renaming:
    domid: int
    old: str
    new: str


async def rename_guest(s: Session, guest: int, new: str) -> None:
    """``libxl__domain_rename``: the guest and its stubdomain (``<new>-dm``) get their
    new names in the hypervisor, ``/local/domain/<id>/name`` and ``/vm/<uuid>/name``.
    A name another domain has is refused before anything changes."""
    infos = await s.domains()
    me = next(d for d in infos if d.domid == guest)
    if not new or new == "Domain-0" or "/" in new:
        raise ToolstackError(f"{new!r} cannot name a guest; choose a non-empty name without '/'")
    stub = await s.stubdom_of(guest)
    plan = [_Renaming(guest, me.name, new)]
    stub_info = next((d for d in infos if d.domid == stub), None)
    if stub_info is not None:
        plan.append(_Renaming(stub_info.domid, stub_info.name, proto.stubdom_name(new)))
    taken = {d.name: d.domid for d in infos}
    for r in plan:
        other = taken.get(r.new)
        if other is not None and other != r.domid:
            raise ToolstackError(
                f"cannot rename {me.name!r} to {new!r}: domain {other} is called "
                f"{r.new!r}; choose another name"
            )
    await _rename_all(s, plan)

    def keep(cfg: GuestConfig) -> None:
        cfg.name = new

    await update_recorded_config(s, guest, keep)


async def _rename_all(s: Session, plan: list[_Renaming]) -> None:
    done: list[_Renaming] = []
    try:
        for r in plan:
            await s.hv.rename(r.domid, r.new)
            done.append(r)
    except BaseException:
        for r in reversed(done):
            await s.hv.rename(r.domid, r.old)
        raise

    async def body(t: Transaction) -> None:
        for r in plan:
            await t.write(name_path(r.domid), r.new)
            vm = await t.read_optional(proto.vm_path_node(r.domid))
            if vm:
                await t.write(f"{vm.decode()}/name", r.new)

    await s.xs.retry_transaction(body)
    for r in plan:
        log.info("domain %d renamed from %s to %s", r.domid, r.old, r.new)
