"""Domain-0's row: the host itself."""

from __future__ import annotations

import os
from pathlib import Path

from stubdom.host.dom0 import DOM0_UUID, dom0_info


def test_dom0_is_this_process_with_the_hosts_memory() -> None:
    info = dom0_info()
    assert (info.domid, info.name, info.uuid, info.pid) == (0, "Domain-0", DOM0_UUID, os.getpid())
    assert info.state_letters == "r-----"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next(ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemTotal:"))
        assert info.max_memkb == int(total.split()[1])
