"""Entry point of the ``stubdom`` command: one click group, one module per verb family."""

from __future__ import annotations

import logging

import click

from stubdom import __version__


@click.group()
@click.version_option(__version__, prog_name="stubdom")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
def cli(verbose: int) -> None:
    """stubdom: the Xen toolstack <-> device-model stubdomain protocol."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(name)s: %(message)s")


def main() -> None:
    from stubdom.cli import conformance as _conformance  # noqa: F401  (registers the verbs)
    from stubdom.cli import console as _console  # noqa: F401  (registers the verb)
    from stubdom.cli import demo as _demo  # noqa: F401  (registers the verb)
    from stubdom.cli import domains as _domains  # noqa: F401  (registers the verbs)
    from stubdom.cli import host as _host  # noqa: F401  (registers the verb)
    from stubdom.cli import info as _info  # noqa: F401  (registers the verbs)
    from stubdom.cli import lifecycle as _lifecycle  # noqa: F401  (registers the verbs)
    from stubdom.cli import pci as _pci  # noqa: F401  (registers the verbs)
    from stubdom.cli import saverestore as _saverestore  # noqa: F401  (registers the verbs)
    from stubdom.cli import trace as _trace  # noqa: F401  (registers the verbs)
    from stubdom.cli import xenstored as _xenstored  # noqa: F401  (registers the verb)
    from stubdom.cli import xs as _xs  # noqa: F401  (registers the verbs)

    cli()
