"""``stubdom conformance stubdomain``: the conformance kit's stubdomain mode."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stubdom.cli.common import SECONDS
from stubdom.cli.main import cli

if TYPE_CHECKING:
    from stubdom.conformance.report import Result

#: Where a report or trace goes: its directory must exist before a long run starts.
_OUTPUT = click.Path(dir_okay=False, path_type=Path)


@cli.group()
def conformance() -> None:
    """Check a peer against every clause of the protocol."""


@conformance.command("stubdomain")
@click.option("--kernel", "kernel", required=True,
              type=click.Path(exists=True, dir_okay=False, executable=True),
              help="The stubdomain program to boot.")
@click.option("--kernel-arg", "kernel_args", multiple=True, help="A kernel command-line word.")
@click.option("--report", "report", type=_OUTPUT, help="Also write the results as JSON.")
@click.option("--startup-timeout", type=SECONDS, default=10.0, show_default=True)
@click.option("--command-timeout", type=SECONDS, default=5.0, show_default=True)
@click.option("--refusal-timeout", type=SECONDS, default=1.5, show_default=True,
              help="How long a silent refusal is watched.")
def stubdomain(kernel: str, kernel_args: tuple[str, ...], report: Path | None,
               startup_timeout: float, command_timeout: float, refusal_timeout: float) -> None:
    """Boot KERNEL as a test guest's stubdomain and drive it clause by clause."""
    from stubdom.conformance import report as rep
    from stubdom.conformance.stubdomain import Timeouts, check_stubdomain

    _check_output(report, "--report")
    t = Timeouts(startup_timeout, command_timeout, refusal_timeout)
    results = asyncio.run(check_stubdomain(kernel, list(kernel_args), t))
    click.echo(rep.text(results))
    _write_report(results, report)
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
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def toolstack(command: tuple[str, ...], report: Path | None, agent_args: tuple[str, ...],
              timeout: float, keep: Path | None) -> None:
    """Run COMMAND (a shell line, or argv after --) as a toolstack's scenario against a
    traced host and check what it wrote.  COMMAND gets STUBDOM_HOST_DIR, XENSTORED_PATH,
    STUBDOM_CONFORMANCE_KERNEL (the reference stubdomain: our agent, qemu-trad compat)
    and STUBDOM_CONFORMANCE_CONFIG (a guest xl.cfg using it)."""
    from stubdom.conformance import report as rep
    from stubdom.conformance.toolstack import ScenarioError, check_toolstack

    _check_output(report, "--report")
    _check_output(keep, "--trace")
    try:
        run = check_toolstack(list(command), list(agent_args) or None, timeout, keep)
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


def _write_report(results: list[Result], report: Path | None) -> None:
    from stubdom.conformance import report as rep

    if report is None:
        return
    try:
        rep.write_json(results, report)
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
