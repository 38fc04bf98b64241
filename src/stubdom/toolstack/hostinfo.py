"""``xl info`` for the simulated host: xl's ``key : value`` lines, in xl_info.c's order.

The node and physical facts are the machine's, as the host daemon sees it.  The Xen
fields describe what stands in for Xen here: the version is that of the interfaces we
follow (4.17) with ``-stubdom-sim`` as its extra, the command line is the host daemon's,
and a field with nothing behind it says so instead of inventing a value.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Sequence
from dataclasses import dataclass

from stubdom import __version__

#: xl's ``"%-23s: %s"``.
KEY_WIDTH = 23
NOT_HERE = "n/a (simulated host: no hypervisor)"


@dataclass(frozen=True)
class HostFacts:
    nr_cpus: int
    total_memkb: int
    #: Memory the domains other than Domain-0 have now (their current memory).
    domains_memkb: int
    host_cmdline: Sequence[str]


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _mhz(cpu: dict[str, str]) -> str:
    try:
        khz = round(float(cpu["cpu MHz"]) * 1000)
    except (KeyError, ValueError):
        return "n/a (not reported by this machine)"
    return f"{khz // 1000}.{khz % 1000:03d}"


def info_lines(facts: HostFacts) -> list[tuple[str, str]]:
    """Every line of ``xl info`` (without ``-n``), as (key, value)."""
    uts = os.uname()
    cpu = _cpuinfo()
    cores = int(cpu.get("cpu cores", "0") or 0) or facts.nr_cpus
    siblings = int(cpu.get("siblings", "0") or 0) or cores
    free = max(0, facts.total_memkb - facts.domains_memkb)
    return [
        ("host", uts.nodename),
        ("release", uts.release),
        ("version", uts.version),
        ("machine", uts.machine),
        ("nr_cpus", str(facts.nr_cpus)),
        ("max_cpu_id", str(facts.nr_cpus - 1)),
        ("nr_nodes", "1"),
        ("cores_per_socket", str(cores)),
        ("threads_per_core", str(max(1, siblings // cores))),
        ("cpu_mhz", _mhz(cpu)),
        ("hw_caps", NOT_HERE),
        ("virt_caps", "pv hvm (PV domains are processes; HVM domains have no OS)"),
        ("total_memory", str(facts.total_memkb // 1024)),
        ("free_memory", str(free // 1024)),
        ("sharing_freed_memory", "0"),
        ("sharing_used_memory", "0"),
        ("outstanding_claims", "0"),
        ("free_cpus", "0"),
        ("xen_major", "4"),
        ("xen_minor", "17"),
        ("xen_extra", "-stubdom-sim"),
        ("xen_version", "4.17-stubdom-sim"),
        ("xen_caps", NOT_HERE),
        ("xen_scheduler", "none (domains are host processes, scheduled by Linux)"),
        ("xen_pagesize", str(resource.getpagesize())),
        ("platform_params", NOT_HERE),
        ("xen_changeset", f"stubdom {__version__}"),
        ("xen_commandline", " ".join(facts.host_cmdline) or "n/a (host daemon not found)"),
        ("cc_compiler", f"Python {platform.python_version()} ({platform.python_compiler()})"),
        ("cc_compile_by", NOT_HERE),
        ("cc_compile_domain", NOT_HERE),
        ("cc_compile_date", NOT_HERE),
        ("build_id", NOT_HERE),
        ("xend_config_format", "4"),
    ]


def render(lines: Sequence[tuple[str, str]], name: str | None = None) -> list[str]:
    """xl's ``maybe_printf``: every line, or with ``name`` the values of the lines whose
    key starts with it."""
    if name is None:
        return [f"{key:<{KEY_WIDTH}}: {value}" for key, value in lines]
    return [value for key, value in lines if key.startswith(name)]
