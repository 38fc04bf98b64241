"""``stubdom-dm``: the executable the simulated host boots as a stubdomain kernel.

argv is the kernel command line (`stubdomain_cmdline`): the agent's own options
``--dm=sim|qemu``, ``--compat=qemu-trad``, ``--eject-delay=SECONDS|never`` (when the
sim's simulated guest acknowledges an eject) and ``--sim-ram=MIB`` (guest RAM contents
the sim carries in its saved state, for measuring large saves), and, as in the xend era,
any qemu options (they go before the dmargs words).  Exit status 0 on a clean stop
(SIGTERM), 1 after a fatal error, which is logged on console 0 first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import tempfile
from pathlib import Path

from stubdom.devicemodel.base import DeviceModel
from stubdom.stubdomain.agent import run_agent
from stubdom.stubdomain.args import AgentOptions, DmArgsError, split_agent_options

log = logging.getLogger(__name__)


def make_backend(options: AgentOptions, work_dir: Path) -> DeviceModel:
    """The device model ``--dm`` names (imported late: each has its own dependencies)."""
    if options.dm == "qemu":
        from stubdom.devicemodel.qemu import QemuDeviceModel

        return QemuDeviceModel(work_dir)
    from stubdom.devicemodel.sim import SimDeviceModel

    return SimDeviceModel(eject_delay=options.eject_delay, ram_mb=options.sim_ram_mb)


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # QEMU's socket and files live only as long as the agent.
    with tempfile.TemporaryDirectory(prefix="stubdom-dm-") as tmp:
        backend = functools.partial(make_backend, work_dir=Path(tmp))
        try:
            options, rest = split_agent_options(words)
        except DmArgsError as e:
            reason = f"bad kernel command line: {e}"
            return asyncio.run(run_agent(AgentOptions(), [], backend, fatal=reason))
        return asyncio.run(run_agent(options, rest, backend))



if __name__ == "__main__":
    sys.exit(main())
