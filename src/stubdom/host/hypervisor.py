"""The domctl-like operations a toolstack needs from a hypervisor.

`SimulatedHypervisor` (domains as processes) is the implementation we ship; a real-Xen
implementation would fill in the same interface with libxenctrl calls.  The host
daemon serves this interface to other processes (`stubdom.host.api`).
"""

from __future__ import annotations

import dataclasses
import enum
import uuid as uuidlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class DomainState(enum.Enum):
    """What ``xl list`` shows, one letter each (r b p s c d)."""

    RUNNING = "r"
    BLOCKED = "b"
    PAUSED = "p"
    SHUTDOWN = "s"
    CRASHED = "c"
    DYING = "d"


class ShutdownReason(enum.IntEnum):
    """``SHUTDOWN_*`` of xen/include/public/sched.h; xl prints ``-rscwS`` by it."""

    POWEROFF = 0
    REBOOT = 1
    SUSPEND = 2
    CRASH = 3
    WATCHDOG = 4
    SOFT_RESET = 5


class HypervisorError(Exception):
    """A domctl failed; the message names the domain and what to do."""

    errno_name = "EINVAL"


class NoSuchDomain(HypervisorError):
    errno_name = "ESRCH"

    def __init__(self, domid: int) -> None:
        super().__init__(f"domain {domid} does not exist (see 'stubdom host list')")
        self.domid = domid


class DomainExists(HypervisorError):
    errno_name = "EEXIST"


@dataclass
class DomainConfig:
    """What ``xc_domain_create`` is told: the type and identity of the domain."""

    name: str
    hvm: bool = False
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    max_vcpus: int = 1
    max_memkb: int = 0
    #: The domain id wanted (libxl's ``c_info.domid``, set by ``xl save -D``); None lets
    #: the hypervisor choose.  A wanted id that is in use fails the creation.
    domid: int | None = None


@dataclass(frozen=True)
class DomainInfo:
    """One row of ``xl list``, plus what a toolstack needs to find the domain."""

    domid: int
    name: str
    uuid: str
    hvm: bool
    state: DomainState
    paused: bool
    shutdown_reason: ShutdownReason | None
    max_memkb: int
    max_vcpus: int
    cpu_time: float
    target: int | None = None
    kernel: str | None = None
    pid: int | None = None
    #: The memory the domain has now (``current_memkb``; None: its maximum).
    current_memkb: int | None = None
    #: vCPUs the guest has online (``vcpu_online``; None: all of ``max_vcpus``).
    online_vcpus: int | None = None

    @property
    def memkb(self) -> int:
        """What ``xl list`` shows as Mem: the current memory, not the maximum."""
        return self.max_memkb if self.current_memkb is None else self.current_memkb

    @property
    def vcpus(self) -> int:
        """What ``xl list`` shows as VCPUs: those online, not the maximum."""
        return self.max_vcpus if self.online_vcpus is None else self.online_vcpus

    @property
    def ended(self) -> bool:
        """Shut down, crashed or dying: it will not run again."""
        return self.state in (DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING)

    @property
    def state_letters(self) -> str:
        """The six letters of ``xl list``: r b p s, the shutdown reason, d."""
        running = self.state is DomainState.RUNNING and not self.paused
        blocked = self.state is DomainState.BLOCKED and not self.paused
        shut = self.state in (DomainState.SHUTDOWN, DomainState.CRASHED)
        reason = (
            "-rscwS"[self.shutdown_reason] if shut and self.shutdown_reason is not None else "-"
        )
        if self.state is DomainState.CRASHED:
            reason = "c"
        return "".join(
            (
                "r" if running else "-",
                "b" if blocked else "-",
                "p" if self.paused else "-",
                "s" if self.state is DomainState.SHUTDOWN else "-",
                reason if shut else "-",
                "d" if self.state is DomainState.DYING else "-",
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for the host's local API."""
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        d["shutdown_reason"] = None if self.shutdown_reason is None else int(self.shutdown_reason)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DomainInfo:
        """Keys this version does not know are ignored and missing optional ones take
        their defaults, so hosts and clients of neighbouring versions understand each
        other."""
        reason = d.get("shutdown_reason")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{
                **{k: v for k, v in d.items() if k in known},
                "state": DomainState(d["state"]),
                "shutdown_reason": None if reason is None else ShutdownReason(reason),
            }
        )


class Hypervisor(ABC):
    """Domain control, as libxenctrl offers it to libxl.  All methods are async."""

    @abstractmethod
    async def create_domain(self, config: DomainConfig) -> int:
        """Create a domain, paused; returns its domid (from 1, never re-used while alive)."""

    @abstractmethod
    async def set_max_mem(self, domid: int, memkb: int) -> None: ...

    @abstractmethod
    async def set_max_vcpus(self, domid: int, vcpus: int) -> None: ...

    @abstractmethod
    async def build_pv(
        self, domid: int, kernel: str, cmdline: str = "", env: dict[str, str] | None = None
    ) -> None:
        """Load a PV kernel (an executable here) with its command line; no ramdisk."""

    @abstractmethod
    async def build_hvm(self, domid: int, target_memkb: int, vcpus: int) -> None:
        """Build an HVM domain (``libxl__build_hvm``): ``target_memkb`` of memory
        populated (the PoD target) and vCPUs 0..``vcpus``-1 online at boot."""

    @abstractmethod
    async def set_memory_target(self, domid: int, memkb: int) -> None:
        """``xc_domain_set_pod_target``: the memory an HVM domain has from now on."""

    @abstractmethod
    async def rename(self, domid: int, name: str) -> None:
        """Give the domain another name; `DomainExists` if another domain has it.

        On Xen, names live in xenstore only and this does nothing; the simulated
        hypervisor keeps them for its own list."""

    @abstractmethod
    async def set_target(self, domid: int, target: int) -> None:
        """Give ``domid`` (a stubdomain) privilege over ``target`` (its guest)."""

    @abstractmethod
    async def pause(self, domid: int) -> None: ...

    @abstractmethod
    async def unpause(self, domid: int) -> None:
        """Run the domain; the first unpause of a PV domain boots its kernel."""

    @abstractmethod
    async def shutdown(self, domid: int, reason: ShutdownReason) -> None:
        """``xc_domain_shutdown``: mark the domain shut down (a toolstack or a DM asks)."""

    @abstractmethod
    async def destroy(self, domid: int) -> None:
        """End the domain: its process is killed and xenstored is told it is gone."""

    @abstractmethod
    async def list_domains(self) -> Sequence[DomainInfo]: ...

    @abstractmethod
    async def domain_info(self, domid: int) -> DomainInfo: ...

    async def find(self, name: str) -> DomainInfo:
        """The domain called ``name`` (names are unique)."""
        for info in await self.list_domains():
            if info.name == name:
                return info
        raise HypervisorError(f"no domain is called {name!r} (see 'stubdom host list')")
