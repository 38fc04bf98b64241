"""Domain-0 as ``xl list`` shows it: the host itself.

There is no domain 0 to ask, so its row is this process (the host daemon) with the
host's memory and CPUs.
"""

from __future__ import annotations

import os
import time

from stubdom.host.hypervisor import DomainInfo, DomainState

DOM0_UUID = "00000000-0000-0000-0000-000000000000"


def dom0_info() -> DomainInfo:
    return DomainInfo(
        domid=0,
        name="Domain-0",
        uuid=DOM0_UUID,
        hvm=False,
        state=DomainState.RUNNING,
        paused=False,
        shutdown_reason=None,
        max_memkb=_host_memkb(),
        max_vcpus=os.cpu_count() or 1,
        cpu_time=time.process_time(),
        pid=os.getpid(),
    )


def _host_memkb() -> int:
    """Domain-0 is the host: it has the host's memory (0 if that cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
