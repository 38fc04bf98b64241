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
