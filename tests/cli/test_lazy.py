"""The CLI imports only what a verb runs (issue 16, part 4).

``stubdom --version`` must start like a click tool and ``stubdom xenstore read`` like
``xenstore-read``: the root group loads a verb's module only when that verb runs
(`stubdom.cli.main.VERBS`), and the xenstore verbs use the blocking client.  The
import-graph checks run the real entry point in a fresh interpreter and look at
``sys.modules`` when it exits; the table checks keep `VERBS` equal to the commands.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import socket
import subprocess
import sys
import threading

import click
import pytest

import stubdom.cli
from stubdom.cli.main import VERBS, cli, load_verb
from tests.support.daemons import short_tmpdir

#: Packages no verb of the list below may load; asyncio is what costs most.
HEAVY = ("stubdom.toolstack", "stubdom.conformance", "stubdom.xenstored", "stubdom.host.api",
         "stubdom.host.supervisor", "stubdom.demo", "stubdom.xenstore.client", "asyncio")

#: Runs the entry point with ``sys.argv`` and prints the modules loaded once it exits.
PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
from stubdom.cli.main import main
sys.argv = ["stubdom", *sys.argv[1:]]
main()
"""


def run_probe(*args: str, env: dict[str, str] | None = None
              ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=60)
    modules: list[str] = json.loads(r.stderr.strip().splitlines()[-1])
    return r, set(modules)


def loaded_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    return run_probe(*args, env=env)[1]


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("xenstore", "--help"),
                                  ("list", "--help")])
def test_help_and_version_load_no_verb_machinery(args: tuple[str, ...]) -> None:
    modules = loaded_by(*args)
    assert "click" in modules  # the probe saw the run
    assert heavy(modules) == []


def test_version_loads_no_verb_module() -> None:
    verbs = {m for m in loaded_by("--version") if m.startswith("stubdom.cli.")}
    assert verbs == {"stubdom.cli.main"}


def test_xenstore_read_runs_without_asyncio_or_the_toolstack() -> None:
    from tests.support.daemons import start_ours

    d = short_tmpdir("lazy-")
    xs = start_ours(d / "xenstored")  # DIR/xenstored/socket: the host's layout
    try:
        modules = loaded_by("xenstore", "read", "/", env={"STUBDOM_HOST_DIR": str(d)})
    finally:
        xs.stop()
    assert "stubdom.xenstore.blocking" in modules  # it did read
    assert heavy(modules) == []
    assert "logging" not in modules  # nothing to configure: nothing of it logs


def test_verbose_configures_logging_for_any_verb() -> None:
    assert "logging" not in loaded_by("--version")
    r, modules = run_probe("-v", "xenstore", "read", "/",
                           env={"STUBDOM_HOST_DIR": str(short_tmpdir("lazy-"))})
    assert r.returncode == 1 and "logging" in modules


def test_list_runs_without_asyncio_or_the_toolstack() -> None:
    """``stubdom list`` asks the host daemon over a plain socket (a stand-in here that
    answers one `ListDomains` with Domain-0's row), and checks that xenstored answers."""
    from stubdom.host.apicodec import ListDomains, encode_ok
    from stubdom.host.dom0 import dom0_info

    d = short_tmpdir("lazy-")
    (d / "xenstored").mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as xenstored:
        xenstored.bind(str(d / "xenstored" / "socket"))  # list only checks it answers
        xenstored.listen(1)
        server.bind(str(d / "host.sock"))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(encode_ok(1, ListDomains(), [dom0_info()]))

        daemon = threading.Thread(target=answer, daemon=True)
        daemon.start()
        r, modules = run_probe("list", "--dir", str(d))
        daemon.join(10)
    assert r.stdout.splitlines()[1].startswith("Domain-0 ")
    assert "stubdom.host.apiblocking" in modules
    assert heavy(modules) == []


def test_the_table_names_every_verb_with_its_own_help() -> None:
    for name, (_, short) in VERBS.items():
        command = load_verb(name)
        assert command.name == name
        assert command.hidden == (short is None), name
        if short is not None:
            assert short == command.get_short_help_str(10**6), name


def test_every_command_of_the_cli_modules_is_reachable() -> None:
    """A command defined in a module of `stubdom.cli` and not under one of its groups is
    a root verb, and the root group finds a verb only through `VERBS`: one missing from
    the table would be unreachable, and missing from ``--help``."""
    targets = {target for target, _ in VERBS.values()}
    for mod in pkgutil.iter_modules(stubdom.cli.__path__):
        module = importlib.import_module(f"stubdom.cli.{mod.name}")
        commands = {name: obj for name, obj in vars(module).items()
                    if isinstance(obj, click.Command) and obj.callback is not None
                    and obj.callback.__module__ == module.__name__}
        nested = {id(sub) for obj in commands.values() if isinstance(obj, click.Group)
                  for sub in obj.commands.values()}
        for name, command in commands.items():
            if command is not cli and id(command) not in nested:
                assert f"{module.__name__}:{name}" in targets, command.name
    listed = set(cli.list_commands(click.Context(cli)))
    assert set(VERBS) <= listed
