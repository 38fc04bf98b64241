"""``stubdom-dm``: the executable the simulated host boots as a stubdomain kernel.

argv is the kernel command line (`stubdomain_cmdline`): the agent's own options
``--dm=sim|qemu``, ``--compat=qemu-trad``, ``--eject-delay=SECONDS|never`` (when the
sim's simulated guest acknowledges an eject) and ``--sim-ram=MIB`` (guest RAM contents
the sim carries in its saved state, for measuring large saves), and, as in the xend era,
any qemu options (they go before the dmargs words).  Exit status 0 on a clean stop
(SIGTERM), 1 after a fatal error, which is logged on console 0 first.

Every guest start pays for this process's start-up, so what only one device model
needs (QEMU's scratch directory, its QMP library) is imported when it is chosen.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import TYPE_CHECKING

from stubdom import compiled, eventloop

if TYPE_CHECKING:
    from pathlib import Path

    from stubdom.devicemodel.base import DeviceModel
    from stubdom.stubdomain.args import AgentOptions


def make_backend(options: AgentOptions, work_dir: Path | None = None) -> DeviceModel:
    """The device model ``--dm`` names (imported late: each has its own dependencies).
    QEMU needs ``work_dir`` for its socket and files."""
    if options.dm == "qemu":
        from stubdom.devicemodel.qemu import QemuDeviceModel

        if work_dir is None:
            raise ValueError("the qemu device model needs a work directory")
        return QemuDeviceModel(work_dir)
    from stubdom.devicemodel.sim import SimDeviceModel

    return SimDeviceModel(eject_delay=options.eject_delay, ram_mb=options.sim_ram_mb)


def quiet_log_records() -> None:
    """Log records without what no line of ours shows (the logging HOWTO's
    "Optimization"): no walk up the stack for the caller, no thread or process
    lookups.  A record is made on the path of every command's answer."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    compiled.install()  # before the agent's modules: they may load the mypyc build
    from stubdom.stubdomain.agent import run_agent
    from stubdom.stubdomain.args import AgentOptions, DmArgsError, split_agent_options
    from stubdom.stubdomain.consolelog import LINE_FORMAT

    quiet_log_records()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LINE_FORMAT)
    try:
        options, rest = split_agent_options(words)
    except DmArgsError as e:
        reason = f"bad kernel command line: {e}"
        return eventloop.run(run_agent(AgentOptions(), [], make_backend, fatal=reason))
    if options.dm != "qemu":
        return eventloop.run(run_agent(options, rest, make_backend))
    import tempfile
    from pathlib import Path

    # QEMU's socket and files live only as long as the agent.
    with tempfile.TemporaryDirectory(prefix="stubdom-dm-") as tmp:
        backend = functools.partial(make_backend, work_dir=Path(tmp))
        return eventloop.run(run_agent(options, rest, backend))


if __name__ == "__main__":
    sys.exit(main())
