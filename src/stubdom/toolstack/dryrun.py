"""``stubdom create -n``: the guest and the stubdomain create would build, as JSON.

xl's dry run prints the domain configuration libxl would be given.  Here the
configuration alone says little about the stubdomain, so the stubdomain is described
too: its name, memory, kernel and command line, devices, consoles and the dmargs
string written to ``/vm/<uuid>/image/dmargs``.  No host is needed.  The guest's domid
is only known once it is created: it shows as ``<domid>``.
"""

from __future__ import annotations

from typing import Any

from stubdom import protocol as proto
from stubdom.host.hypervisor import HypervisorError
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.dmargs import build_dm_argv
from stubdom.toolstack.savefile import config_to_json
from stubdom.toolstack.spawn import stubdom_kernel

#: Stands for the guest's domid while the argv is built (an id Xen never allocates).
_SENTINEL = 0x7FEF
DOMID = "<domid>"


def dm_argv(cfg: GuestConfig) -> list[str]:
    """The device model's argv, with ``<domid>`` where the guest's domid goes."""
    argv = build_dm_argv(cfg, _SENTINEL)
    argv = [a.replace(f"vif{_SENTINEL}.", f"vif{DOMID}.") for a in argv]
    argv[argv.index("-d") + 1] = DOMID
    return argv


def _consoles(cfg: GuestConfig) -> dict[str, str]:
    out = {
        str(proto.CONSOLE_LOGGING): f"log, file:<log dir>/{proto.log_file_name(cfg.name)}",
        str(proto.CONSOLE_SAVE): "device-model state on save, file:<state dir>/"
        + proto.save_file_name(_SENTINEL).replace(str(_SENTINEL), DOMID),
        str(proto.CONSOLE_RESTORE): "device-model state on restore (pty otherwise)",
    }
    for i, spec in enumerate(cfg.serial):
        out[str(proto.CONSOLE_SERIAL + i)] = f"the guest's serial port {i}, {spec}"
    return out


def describe(cfg: GuestConfig) -> dict[str, Any]:
    """What ``create`` would build for ``cfg``."""
    argv = dm_argv(cfg)
    return {
        "guest": {
            "name": cfg.name,
            "type": "hvm",
            "uuid": cfg.uuid,
            "max_memkb": cfg.max_memkb,
            "target_memkb": cfg.memkb,
            "vcpus": cfg.vcpus,
            "max_vcpus": cfg.max_vcpus,
            "config": config_to_json(cfg),
        },
        "stubdomain": {
            "name": proto.stubdom_name(cfg.name),
            "type": "pv",
            "max_memkb": cfg.stubdomain_memkb,
            "vcpus": proto.STUBDOM_VCPUS,
            "kernel": _kernel(cfg.stubdomain_kernel),
            "cmdline": cfg.stubdomain_cmdline,
            "disks": [d.vdev for d in cfg.disks],
            "nics": [n.mac for n in cfg.nics],
            "vfb": cfg.graphics,
            "consoles": _consoles(cfg),
            "dmargs": proto.encode_dmargs(argv),
            "device_model_argv": argv,
        },
        "pci": [str(p.bdf) for p in cfg.pcis],
    }


def _kernel(configured: str | None) -> str | None:
    """The program create would boot (a bare name resolved as create resolves it)."""
    try:
        return stubdom_kernel(configured)
    except HypervisorError:
        return configured
