"""Entry point of the ``stubdom`` command: one click group, one module per verb family.

**A verb imports only what it runs.**  The root group knows every verb by name from
`VERBS` (its module, its attribute, its one-line help) and imports the verb's module
only when that verb runs: ``stubdom --version`` or ``stubdom xenstore read`` must not
pay for the toolstack, the conformance kit, asyncio or the daemon, as ``xl list`` and
``xenstore-read`` pay for nothing they do not use.  ``stubdom --help`` lists the verbs
from the table, so it imports none of them either; tests/cli/test_lazy.py checks that
the table says what the commands say.

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
import importlib
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


#: Every verb of the root group: name -> ("module:attribute", its one-line help, or None
#: for a hidden verb).  The help is the command's own first sentence (a test keeps them
#: equal); ``stubdom --help`` shortens it as click would.
VERBS: dict[str, tuple[str, str | None]] = {
    "conformance": ("stubdom.cli.conformance:conformance",
                    "Check a peer against every clause of the protocol."),
    "console": ("stubdom.cli.console:console",
                "Attach to a guest's serial console; Ctrl+] detaches."),
    "create": ("stubdom.cli.domains:create",
               "Create an HVM guest and its device-model stubdomain from an xl.cfg file."),
    "demo": ("stubdom.cli.demo:demo", "Host up, create with a stubdomain, PCI hot-plug, save, "
             "restore, destroy, host down."),
    "destroy": ("stubdom.cli.domains:destroy", "Destroy a guest, its stubdomain, their nodes "
                "and their save/restore files."),
    "dmesg": ("stubdom.cli.info:dmesg", "Print the hypervisor's log: here the host daemon's "
              "(host.log in the run directory)."),
    "host": ("stubdom.cli.host:host", "Run a simulated Xen host: xenstored, the hypervisor "
             "and dom0's backends."),
    "info": ("stubdom.cli.info:info", "Print xl info's 'key : value' lines for the simulated "
             "host; with NAME, only the values of the keys starting with it (e.g."),
    "list": ("stubdom.cli.domains:list_",
             "List domains in xl's layout; a stubdomain shows as <guest>-dm."),
    "mem-set": ("stubdom.cli.lifecycle:mem_set", "Set a guest's current memory (its "
                "memory/target) to MEMORY: MiB, or a number with a b, k, m, g or t suffix."),
    "monitor": ("stubdom.cli.domains:monitor", None),
    "pause": ("stubdom.cli.domains:pause",
              "Pause a domain's vCPUs (xl pause); its device model is not told."),
    "pci-assignable-add": ("stubdom.cli.pci:pci_assignable_add", "Make a function assignable "
                           "(one BDF; adding it twice only warns, as xl)."),
    "pci-assignable-list": ("stubdom.cli.pci:pci_assignable_list",
                            "The functions that can be passed through and that no guest holds."),
    "pci-assignable-remove": ("stubdom.cli.pci:pci_assignable_remove", "Take a function off "
                              "the assignable list (refused while a guest holds it)."),
    "pci-attach": ("stubdom.cli.pci:pci_attach", "Hot-plug a PCI function into a running "
                   "guest (PCI_SPEC_STRING as xl)."),
    "pci-detach": ("stubdom.cli.pci:pci_detach", "Hot-unplug a PCI function, or every one of "
                   "``BB:DD.*`` (only the BDF matters)."),
    "pci-list": ("stubdom.cli.pci:pci_list",
                 "The guest's PCI functions and the virtual slot the device model chose."),
    "reboot": ("stubdom.cli.lifecycle:reboot", "Ask a guest to reboot: control/shutdown = "
               "reboot, which the simulated host obeys for the guest; then on_reboot applies "
               "(by default, guest and stubdomain are created again)."),
    "rename": ("stubdom.cli.lifecycle:rename",
               "Rename a guest, and its stubdomain to NEW_NAME-dm."),
    "restore": ("stubdom.cli.saverestore:restore",
                "Recreate a guest and its stubdomain from a file written by 'stubdom save'."),
    "save": ("stubdom.cli.saverestore:save",
             "Save a guest's device-model state and configuration to FILE, as 'xl save'."),
    "shutdown": ("stubdom.cli.lifecycle:shutdown", "Ask a guest to power off: "
                 "control/shutdown = poweroff, which the simulated host obeys for the guest "
                 "(an HVM guest here has no OS); then on_poweroff applies."),
    "trace": ("stubdom.cli.trace:trace",
              "Read a trace written by `stubdom xenstored --trace FILE`."),
    "unpause": ("stubdom.cli.domains:unpause", "Unpause a domain (xl unpause): e.g. a guest "
                "a killed 'stubdom save' left paused."),
    "vcpu-set": ("stubdom.cli.lifecycle:vcpu_set", "Set how many vCPUs a guest has online (at "
                 "most its maxvcpus); its device model hot-plugs them."),
    "xenstore": ("stubdom.cli.xs:xenstore", "Read and change the host's xenstore (like "
                 "xenstore-read, -write, -ls ...)."),
    "xenstored": ("stubdom.cli.xenstored:xenstored",
                  "Run a xenstored compatible with cxenstored 4.17, in the foreground."),
}


#: The verbs that run the control channel: they load the mypyc build of its modules
#: (`stubdom.compiled`, which is not imported for the others: it costs a start-up).
CHANNEL_VERBS = frozenset({"create", "pci-attach", "pci-detach", "restore", "save"})


def load_verb(name: str) -> click.Command:
    """Import the module of verb ``name`` and return its command."""
    module, attr = VERBS[name][0].split(":")
    if name in CHANNEL_VERBS:
        from stubdom import compiled

        compiled.install()  # before the verb imports the channel's compiled modules
    command = getattr(importlib.import_module(module), attr)
    if not isinstance(command, click.Command):
        raise TypeError(f"VERBS[{name!r}] names {command!r}, not a click command")
    return command


class _Stubdom(click.Group):
    """The root group: its verbs are loaded on first use (`VERBS`), and every verb runs
    (and ``--help`` prints) under the stdout guard."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*VERBS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in VERBS:
            self.add_command(load_verb(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, from `VERBS` for the verbs not loaded yet."""
        listed: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                short = VERBS[name][1]
                command = click.Command(name, help=short, hidden=short is None)
            if not command.hidden:
                listed.append((name, command))
        if listed:
            limit = formatter.width - 6 - max(len(name) for name, _ in listed)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in listed])

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
    # click loads the verb's module before this runs.  A verb whose modules never
    # import logging (the xenstore verbs: their start-up is a C tool's) has nothing to
    # configure, unless -v asks for output; importing logging costs it ~15% of its time.
    if verbose or "logging" in sys.modules:
        _configure_logging(verbose)


def _configure_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(name)s: %(message)s")


def _verbose() -> bool:
    """-v was given (logging configured at INFO or below)."""
    logging = sys.modules.get("logging")
    return logging is not None and logging.getLogger().isEnabledFor(logging.INFO)


def load_verbs() -> None:
    """Load every verb now (tests and tools that walk the whole command tree)."""
    for name in VERBS:
        if name not in cli.commands:
            cli.add_command(load_verb(name), name)


def main() -> None:
    try:
        cli()
    except Exception as e:
        if _verbose():
            raise  # -v: the traceback, for a bug report
        first = (str(e).splitlines() or [""])[0]
        click.echo(
            f"Error: internal error: {type(e).__name__}: {first} "
            "(please report it; 'stubdom -v ...' shows the traceback)",
            err=True,
        )
        sys.exit(1)
