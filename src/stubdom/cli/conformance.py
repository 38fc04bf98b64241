"""``stubdom conformance stubdomain``: the conformance kit's stubdomain mode."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stubdom import eventloop
from stubdom.cli.common import SECONDS
from stubdom.conformance.timeouts import BOUND_FORMULA, Timeouts
from stubdom.programs import find_program

if TYPE_CHECKING:
    from stubdom.conformance.report import Result

log = logging.getLogger(__name__)

#: Where a report or trace goes: its directory must exist before a long run starts.
_OUTPUT = click.Path(dir_okay=False, path_type=Path)

_XENSTORED = click.option(
    "--xenstored", "xenstored", type=click.Choice(["ours", "cx", "ox"]), default="ours",
    show_default=True,
    help="The test host's xenstored: ours, or Xen 4.17's cxenstored (cx) or oxenstored (ox) "
    "(Debian packages xen-utils-4.17 and gcc).")


@click.group()
def conformance() -> None:
    """Check a peer against every clause of the protocol."""


_STUBDOMAIN_HELP = f"""Boot a stubdomain for a test guest and drive it clause by clause, as
libxl does.

Give --kernel PROGRAM (a whole kernel) or --app PROGRAM (a device model under the
Mini-OS layer).  Every clause gets pass, fail or not supported with a one-line reason,
whatever the stubdomain does.

The run is bounded: every clause has its verdict within {BOUND_FORMULA},
{Timeouts().bound():g} s with the defaults; a clause not reached by then
fails as "not reached (time bound)".  Tearing the test host down follows.

Exit status 0 when no clause failed, 1 otherwise, 130 on Ctrl-C.  The report is
printed, and written to --report, however the run ends.
"""


@conformance.command("stubdomain", help=_STUBDOMAIN_HELP)
@click.option("--kernel", "kernel",
              type=click.Path(exists=True, dir_okay=False, executable=True),
              help="A whole stubdomain kernel (a program that does everything itself).")
@click.option("--kernel-arg", "kernel_args", multiple=True, help="A kernel command-line word.")
@click.option("--app", "app", metavar="PROGRAM",
              help="A device model to run under the Mini-OS layer (stubdom-minios), "
              "which brings the devices and consoles up for it: a path, or a bare name "
              "looked up beside stubdom, then on PATH.")
@click.option("--app-arg", "app_args", multiple=True, help="A word of PROGRAM's argv.")
@click.option("--report", "report", type=_OUTPUT,
              help="Also write the results as JSON (always written, even when interrupted).")
@click.option("--startup-timeout", type=SECONDS, default=10.0, show_default=True)
@click.option("--command-timeout", type=SECONDS, default=5.0, show_default=True)
@click.option("--refusal-timeout", type=SECONDS, default=1.5, show_default=True,
              help="How long a silent refusal is watched.")
@_XENSTORED
def stubdomain(kernel: str | None, kernel_args: tuple[str, ...], app: str | None,
               app_args: tuple[str, ...], report: Path | None, startup_timeout: float,
               command_timeout: float, refusal_timeout: float, xenstored: str) -> None:
    _check_output(report, "--report")
    argv = _boot_argv(kernel, kernel_args, app, app_args)
    _check_xenstored(xenstored)
    t = Timeouts(startup_timeout, command_timeout, refusal_timeout)
    _run_stubdomain(argv, t, report, xenstored)


def _boot_argv(kernel: str | None, kernel_args: tuple[str, ...], app: str | None,
               app_args: tuple[str, ...]) -> list[str]:
    """The stubdomain's kernel and command-line words: KERNEL ARGS, or the Mini-OS layer
    with ``PROGRAM ARGS`` as its command line."""
    if (kernel is None) == (app is None):
        raise click.UsageError("give either --kernel PROGRAM or --app PROGRAM")
    if kernel is not None:
        if app_args:
            raise click.UsageError("--app-arg goes with --app; use --kernel-arg")
        return [kernel, *kernel_args]
    if kernel_args:
        raise click.UsageError("--kernel-arg goes with --kernel; use --app-arg")
    assert app is not None
    words = [_app_path(app), *app_args]
    spaced = next((w for w in words if not w or any(c.isspace() for c in w)), None)
    if spaced is not None:
        raise click.BadParameter(f"{spaced!r}: a kernel command line is split at spaces, "
                                 "so a word cannot hold one (or be empty)",
                                 param_hint="--app/--app-arg")
    layer = minios_layer()
    if layer is None:
        raise click.ClickException(
            f"--app needs the Mini-OS layer {MINIOS!r}, which is not installed beside "
            f"{sys.executable} or on PATH; install it, or give a whole kernel with --kernel"
        )
    return [layer, *words]


def _app_path(app: str) -> str:
    """``--app``'s program as an absolute path: a path as given, a bare name looked up
    as the layer looks up its program."""
    found = os.path.abspath(app) if "/" in app else find_program(app)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        where = "is not an executable file" if "/" in app else \
            f"is not a program beside {sys.executable} or on PATH"
        raise click.BadParameter(f"{app!r} {where}", param_hint="--app")
    return found


#: The Mini-OS layer's executable: a stubdomain kernel that runs an app.
MINIOS = "stubdom-minios"


def minios_layer() -> str | None:
    """The Mini-OS layer, found as the toolstack finds a bare kernel name."""
    return find_program(MINIOS)


def _check_xenstored(xenstored: str) -> None:
    """A real daemon that cannot run is refused before a run that takes minutes."""
    if xenstored == "ours":
        return
    from stubdom import realxs

    if not realxs.available(xenstored):
        raise click.BadParameter(
            f"{xenstored} cannot run here: install the Debian packages xen-utils-4.17 and "
            "gcc, or choose --xenstored ours", param_hint="--xenstored")


def _run_stubdomain(argv: list[str], t: Timeouts, report: Path | None, xenstored: str
                    ) -> None:
    """Run the kit; the report is printed and written however the run ends."""
    from stubdom.conformance import report as rep
    from stubdom.conformance.stubdomain import check_stubdomain, new_ledger

    ledger = new_ledger()
    kit_error: str | None = None
    interrupted = False
    try:
        eventloop.run(check_stubdomain(argv[0], argv[1:], t, ledger, xenstored))
    except KeyboardInterrupt:
        interrupted = True
        ledger.ended = "interrupted"
        ledger.close("not reached (interrupted)")
    except Exception as e:  # the report comes first; then the error
        log.debug("the conformance kit failed", exc_info=True)
        kit_error = f"{type(e).__name__}: {e}"
        ledger.ended = f"kit error: {kit_error}"
        ledger.close(f"not reached (the kit failed: {kit_error})")
    results = ledger.results()
    click.echo(rep.text(results))
    _write_report(results, report, ledger.ended)
    if interrupted:
        click.echo("Error: interrupted; the clauses not reached are failed", err=True)
        sys.exit(130)
    if kit_error is not None:
        raise click.ClickException(f"the conformance kit failed: {kit_error}")
    _verdict(results)


@conformance.command(
    "toolstack", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--report", "report", type=_OUTPUT, help="Also write the results as JSON.")
@click.option("--agent-arg", "agent_args", multiple=True,
              help="An extra word for the reference stubdomain (default --eject-delay=0.2).")
@click.option("--timeout", type=SECONDS, default=120.0, show_default=True,
              help="Limit for COMMAND.")
@click.option("--trace", "keep", type=_OUTPUT, help="Keep the xenstored trace here.")
@_XENSTORED
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def toolstack(command: tuple[str, ...], report: Path | None, agent_args: tuple[str, ...],
              timeout: float, keep: Path | None, xenstored: str) -> None:
    """Run COMMAND (a shell line, or argv after --) as a toolstack's scenario against a
    traced host and check what it wrote.  COMMAND gets STUBDOM_HOST_DIR, XENSTORED_PATH,
    STUBDOM_CONFORMANCE_KERNEL (the reference stubdomain: our agent, qemu-trad compat)
    and STUBDOM_CONFORMANCE_CONFIG (a guest xl.cfg using it)."""
    from stubdom.conformance import report as rep
    from stubdom.conformance.toolstack import ScenarioError, check_toolstack

    _check_output(report, "--report")
    _check_output(keep, "--trace")
    _check_xenstored(xenstored)
    try:
        run = check_toolstack(list(command), list(agent_args) or None, timeout, keep, xenstored)
    except ScenarioError as e:
        raise click.ClickException(str(e)) from None
    click.echo(rep.text(run.results))
    _write_report(run.results, report)
    if run.status != 0:
        # The scenario's output goes with the report: stderr keeps one line.
        click.echo(f"--- output of the scenario (exit status {run.status}) ---")
        click.echo(run.output.rstrip("\n"))
        raise click.ClickException(
            f"the scenario exited with status {run.status} (its output is above)"
        )
    _verdict(run.results)


def _check_output(path: Path | None, option: str) -> None:
    """Refuse an output path that cannot be written before a run that takes minutes."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise click.BadParameter(f"{str(path)!r}: {parent} is not a writable directory",
                                 param_hint=option)


def _write_report(results: list[Result], report: Path | None, ended: str = "complete"
                  ) -> None:
    from stubdom.conformance import report as rep

    if report is None:
        return
    try:
        rep.write_json(results, report, ended)
    except OSError as e:
        raise click.ClickException(f"cannot write the report {report}: {e.strerror or e}"
                                   ) from None


def _verdict(results: list[Result]) -> None:
    """Exit status 1 with one line when a clause failed (the report above says which)."""
    from stubdom.conformance.report import Verdict

    failed = [r for r in results if r.verdict is Verdict.FAIL]
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(results)} clauses failed, the first: {failed[0].clause}"
        )
