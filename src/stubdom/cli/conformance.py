"""``stubdom conformance stubdomain``: the conformance kit's stubdomain mode."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from stubdom.cli.main import cli


@cli.group()
def conformance() -> None:
    """Check a peer against every clause of the protocol."""


@conformance.command("stubdomain")
@click.option("--kernel", "kernel", required=True, help="The stubdomain program to boot.")
@click.option("--kernel-arg", "kernel_args", multiple=True, help="A kernel command-line word.")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results as JSON.")
@click.option("--startup-timeout", default=10.0, show_default=True)
@click.option("--command-timeout", default=5.0, show_default=True)
@click.option("--refusal-timeout", default=1.5, show_default=True,
              help="How long a silent refusal is watched.")
def stubdomain(kernel: str, kernel_args: tuple[str, ...], report: Path | None,
               startup_timeout: float, command_timeout: float, refusal_timeout: float) -> None:
    """Boot KERNEL as a test guest's stubdomain and drive it clause by clause."""
    from stubdom.conformance import report as rep
    from stubdom.conformance.stubdomain import Timeouts, check_stubdomain

    t = Timeouts(startup_timeout, command_timeout, refusal_timeout)
    results = asyncio.run(check_stubdomain(kernel, list(kernel_args), t))
    click.echo(rep.text(results))
    if report is not None:
        rep.write_json(results, report)
    sys.exit(1 if rep.failed(results) else 0)


@conformance.command(
    "toolstack", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results as JSON.")
@click.option("--agent-arg", "agent_args", multiple=True,
              help="An extra word for the reference stubdomain (default --eject-delay=0.2).")
@click.option("--timeout", default=120.0, show_default=True, help="Limit for COMMAND.")
@click.option("--trace", "keep", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the xenstored trace here.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def toolstack(command: tuple[str, ...], report: Path | None, agent_args: tuple[str, ...],
              timeout: float, keep: Path | None) -> None:
    """Run COMMAND (a shell line, or argv after --) as a toolstack's scenario against a
    traced host and check what it wrote.  COMMAND gets STUBDOM_HOST_DIR, XENSTORED_PATH,
    STUBDOM_CONFORMANCE_KERNEL (the reference stubdomain: our agent, qemu-trad compat)
    and STUBDOM_CONFORMANCE_CONFIG (a guest xl.cfg using it)."""
    from stubdom.conformance import report as rep
    from stubdom.conformance.toolstack import check_toolstack

    run = check_toolstack(list(command), list(agent_args) or None, timeout, keep)
    click.echo(rep.text(run.results))
    if report is not None:
        rep.write_json(run.results, report)
    if run.status != 0:
        click.echo(f"the scenario exited with status {run.status}:\n{run.output}", err=True)
    sys.exit(1 if rep.failed(run.results) or run.status != 0 else 0)
