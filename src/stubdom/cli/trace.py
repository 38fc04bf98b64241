"""``stubdom trace show|render``: read a ``--trace`` file as a timeline or a picture."""

from __future__ import annotations

from pathlib import Path

import click

from stubdom.trace.model import Event, TraceError, load_trace
from stubdom.trace.svg import render_svg
from stubdom.trace.timeline import Filter, render_text


@click.group()
def trace() -> None:
    """Read a trace written by `stubdom xenstored --trace FILE`."""


_FILE = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@trace.command("show")
@_FILE
@click.option("--domain", type=int, default=None, help="Only this domain's connections.")
@click.option("--path", "prefix", default=None, help="Only paths under this prefix.")
@click.option("--since", type=float, default=None, help="From S seconds after the start.")
@click.option("--until", type=float, default=None, help="Up to S seconds after the start.")
def show(
    file: Path, domain: int | None, prefix: str | None, since: float | None, until: float | None
) -> None:
    """Print the trace as a timeline, protocol steps marked with ==."""
    events = _load(file)
    click.echo(render_text(events, Filter(domain, prefix, since, until)), nl=False)


@trace.command("render")
@_FILE
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--all", "all_events", is_flag=True, help="Every request, not only the protocol's.")
def render(file: Path, out: Path, all_events: bool) -> None:
    """Draw the trace as an SVG sequence diagram."""
    events = _load(file)
    try:
        render_svg(file, out, all_events, events)
    except OSError as e:
        raise click.ClickException(
            f"cannot write {out}: {e.strerror or e}; choose another -o/--output"
        ) from None
    click.echo(f"wrote {out}")


def _load(file: Path) -> list[Event]:
    try:
        return load_trace(file)
    except TraceError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot read {file}: {e.strerror or e}") from None
