"""Entry point of the ``stubdom`` command: one click group, one module per verb family.

What every verb shares, so that no verb has to think of it:

- **A closed stdout is not an error.**  ``stubdom list | head -1`` exits quietly, with
  status 141, what a shell reports for a C tool (``yes | head -1``, ``xl list | head
  -1``) killed by SIGPIPE.  Python ignores SIGPIPE, so the write fails instead; the
  failure is caught once here, stdout is pointed at /dev/null (the interpreter's last
  flush must not fail again) and the process exits.  A broken pipe on anything else
  (a socket to a daemon that died) is still an error.
- **No traceback.**  An unexpected exception is a bug: `main` prints it in one line
  naming the exception; ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import click

from stubdom import __version__

#: ``128 + SIGPIPE``: the status of a process killed by SIGPIPE, as a shell reports it.
EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE


def stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is gone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a file descriptor (e.g. captured by a test runner)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _exit_stdout_closed() -> NoReturn:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise click.exceptions.Exit(EXIT_STDOUT_CLOSED)


@contextlib.contextmanager
def _quiet_when_stdout_closes() -> Iterator[None]:
    try:
        yield
        sys.stdout.flush()  # what is still buffered fails here, not at interpreter exit
    except BrokenPipeError:
        if not stdout_closed():
            raise
        _exit_stdout_closed()
    except click.ClickException as e:
        # A verb that turned every OSError into a one-line error got this one too.
        if isinstance(e.__context__, BrokenPipeError) and stdout_closed():
            _exit_stdout_closed()
        raise


class _Stubdom(click.Group):
    """The root group: every verb runs (and ``--help`` prints) under the stdout guard."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _quiet_when_stdout_closes():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _quiet_when_stdout_closes():
            return super().invoke(ctx)


@click.group(cls=_Stubdom)
@click.version_option(__version__, prog_name="stubdom")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
def cli(verbose: int) -> None:
    """stubdom: the Xen toolstack <-> device-model stubdomain protocol."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(name)s: %(message)s")


def load_verbs() -> None:
    """Import the verb modules: each registers its commands on `cli`."""
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


def main() -> None:
    load_verbs()
    try:
        cli()
    except Exception as e:
        if logging.getLogger().isEnabledFor(logging.INFO):
            raise  # -v: the traceback, for a bug report
        first = (str(e).splitlines() or [""])[0]
        click.echo(
            f"Error: internal error: {type(e).__name__}: {first} "
            "(please report it; 'stubdom -v ...' shows the traceback)",
            err=True,
        )
        sys.exit(1)
