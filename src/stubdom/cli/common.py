"""What the verbs share: running a command on the host, its errors, options, xl's list.

DOMAIN is a name or a domid everywhere.  Exit status 0 on success; otherwise one line
on stderr naming what failed and how to fix it, and status 1.

The toolstack and asyncio are imported by `run`, not here: every verb module imports
this one, and a verb that needs neither (``xenstore read``, ``list``) must not pay for
them (see `stubdom.cli.main`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn

import click

from stubdom.cli.main import stdout_closed
from stubdom.host.rundir import ENV_VAR

if TYPE_CHECKING:
    from stubdom.host.hypervisor import DomainInfo
    from stubdom.toolstack.session import Session


def run(body: Callable[[Session], Awaitable[None]], directory: str | None) -> None:
    """Run one command against the host; every expected failure is a one-line error."""
    from stubdom import eventloop
    from stubdom.toolstack.session import open_session

    async def main() -> None:
        async with open_session(directory) as session:
            await body(session)

    try:
        eventloop.run(main())
    except expected_errors() as e:
        one_line(e)


def one_line(e: Exception) -> NoReturn:
    """Raise ``e`` as click's one-line error (a closed stdout is no error: the root group
    exits quietly)."""
    if isinstance(e, BrokenPipeError) and stdout_closed():
        raise e
    raise click.ClickException(str(e)) from None


def explain_unreachable(directory: str | None) -> None:
    """Raise what the toolstack says when the host cannot be reached (no host running,
    or its xenstored down), for the verbs that reach it without the toolstack, so they
    say it in the same words; returns if the toolstack does reach it.  Only on this
    error path do those verbs pay for the toolstack."""
    from stubdom import eventloop
    from stubdom.toolstack.session import open_session

    async def probe() -> None:
        async with open_session(directory):
            pass

    try:
        eventloop.run(probe())
    except expected_errors() as e:
        one_line(e)


def require_xenstored(socket_path: str, directory: str | None) -> None:
    """Fail, as the toolstack does, if the host's xenstored does not answer: xl will not
    work without xenstore, and neither do the verbs that need only the hypervisor."""
    import _socket  # `socket` converts its constants to enums at import: too slow here

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(socket_path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    explain_unreachable(directory)


def expected_errors() -> tuple[type[Exception], ...]:
    """Failures a user can act on: reported in one line, never as a traceback."""
    from stubdom.host.hypervisor import HypervisorError
    from stubdom.toolstack.devices import DeviceError
    from stubdom.toolstack.exchange import DeviceModelError
    from stubdom.toolstack.session import ToolstackError
    from stubdom.toolstack.spawn import CreateError
    from stubdom.toolstack.xlcfg import ConfigError
    from stubdom.xenstore import XenStoreError

    return (
        ToolstackError, HypervisorError, XenStoreError, DeviceError, DeviceModelError,
        CreateError, ConfigError, ValueError, OSError,
    )


class Seconds(click.ParamType[float]):
    """A duration: a positive, finite number of seconds (no nan, inf or negatives)."""

    name = "seconds"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, float):
            seconds = value
        else:
            try:
                seconds = float(str(value))
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r}: give a positive number of seconds", param, ctx)
        return seconds


SECONDS = Seconds()


timeout_option = click.option(
    "--timeout",
    type=SECONDS,
    default=None,
    help="Seconds to wait for the device model (default 60, libxl's).",
)



dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help=f"Run directory (default: ${ENV_VAR}, else $XDG_RUNTIME_DIR/stubdom, "
    "else /run/stubdom if writable, else /tmp/stubdom-UID).",
)


#: ``xl list`` (tools/xl/xl_info.c@4.17.7).
XL_LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def xl_list_row(d: DomainInfo) -> str:
    """``"%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"``: current memory in MiB and
    online vCPUs, as xl prints them (not the maximums)."""
    return (
        f"{d.name:<40} {d.domid:5d} {d.memkb // 1024:5d} {d.vcpus:5d}"
        f"     {d.state_letters}  {d.cpu_time:8.1f}"
    )
