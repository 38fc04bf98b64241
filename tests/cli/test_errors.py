"""Every verb of ``stubdom`` fed bad input: never a traceback, never a hang, one line.

The sweep walks the click command tree, so a verb added later is covered without
touching this file.  For each leaf command it builds invocations from the command's own
parameters: an unknown option, the required arguments missing, and each parameter in
turn given bad values (a domain that does not exist, a garbage file, a path below a
regular file, bad numbers, a bad choice, an invalid string) while the other required
ones get their first bad value.  Every verb runs them with ``STUBDOM_HOST_DIR`` naming
nothing; the verbs that find a host (``--dir``) run them against a real one as well.

The contract checked for every invocation:

- no exception escapes the command (in-process, this is what a subprocess prints as a
  ``Traceback``), and no ``Traceback`` text appears;
- status 2 is a usage error exactly as click prints it (``Usage: ...``, a ``Try`` hint,
  and a last line ``Error: ...``);
- status 1 is exactly one line on stderr, starting ``Error: ``;
- status 0 (e.g. ``host down`` of a directory where nothing runs) has no error text;
- no other status; and no hang (each verb's cases are under a failure-guard timeout).

The sweep runs in-process with click's `CliRunner` to stay fast; the subprocess tests at
the end check what only a real process shows (the interpreter's own error output, a
closed stdout, ``python -m stubdom``).
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import stubdom.cli
from tests.support.daemons import short_tmpdir

STUBDOM = [sys.executable, "-m", "stubdom"]


def load_tree() -> click.Group:
    """The whole command tree: every module of `stubdom.cli` imported, every verb of the
    root group loaded (it loads them lazily, on first use)."""
    for mod in pkgutil.iter_modules(stubdom.cli.__path__):
        importlib.import_module(f"stubdom.cli.{mod.name}")
    from stubdom.cli.main import cli, load_verbs

    load_verbs()
    return cli


def leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], click.Command]
]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


CLI = load_tree()
LEAVES = dict(leaves(CLI))

# Placeholders, replaced by real paths when a case runs.
GARBAGE = "{garbage}"  # a file of binary garbage, not valid UTF-8
UNDER_FILE = "{under-file}"  # a path below a regular file: it cannot exist or be created
BAD_STRING = "no such!"  # not a domain name, path, BDF, KEY=VALUE or command
NO_DOMAIN = "nosuch"

DOMAIN_PARAMS = {"domain", "domains"}


def bad_values(param: click.Parameter) -> list[str]:
    """Values of ``param`` that must be refused, each on its own."""
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return []
    if isinstance(t, click.Path):
        return [UNDER_FILE, GARBAGE]
    if isinstance(t, click.Choice):
        return ["bogus"]
    if isinstance(t, click.types.IntParamType):
        return ["-1", "abc"]
    if isinstance(t, click.types.FloatParamType):
        return ["-1", "nan", "abc"]
    if param.name in DOMAIN_PARAMS:
        return [NO_DOMAIN, BAD_STRING]
    return [BAD_STRING]


def _words(param: click.Parameter, value: str) -> list[str]:
    if isinstance(param, click.Option):
        return [param.opts[0], value]
    return [value]


def cases(path: tuple[str, ...], cmd: click.Command) -> list[list[str]]:
    """The invocations of one leaf command, each with at least one bad input."""
    out = [[*path, "--no-such-option"]]
    params = [p for p in cmd.params if p.expose_value]
    required = {p.name: bad_values(p)[0] for p in params if p.required and bad_values(p)}
    if required:
        out.append(list(path))
    for p in params:
        for value in bad_values(p):
            args: list[str] = []
            options: list[str] = []
            for q in params:
                v = value if q is p else required.get(q.name)
                if v is None:
                    continue
                (options if isinstance(q, click.Option) else args).extend(_words(q, v))
            # Options first: a variadic argument would swallow them.
            out.append([*path, *options, *args])
    return out


@dataclass
class Env:
    """Where the cases run: a work directory and the host they see (or no host)."""

    work: Path
    env: dict[str, str]

    def expand(self, args: list[str]) -> list[str]:
        subs = {GARBAGE: str(self.work / "garbage"), UNDER_FILE: str(self.work / "afile" / "x")}
        return [subs.get(a, a) for a in args]


def _work_dir() -> Path:
    work = short_tmpdir("clierr-")
    _refresh(work)
    return work


def _refresh(work: Path) -> None:
    """Fresh bad files for each case: a verb may have written over them."""
    (work / "garbage").write_bytes(b"\xff\xfe garbage \x00\x01\n{not json\n" * 50)
    (work / "afile").write_text("a regular file\n")


@pytest.fixture(scope="module")
def no_host() -> Env:
    work = _work_dir()
    nothing = work / "afile" / "run"
    return Env(work, {"STUBDOM_HOST_DIR": str(nothing),
                      "XENSTORED_PATH": str(nothing / "xenstored" / "socket")})


@pytest.fixture(scope="module")
def real_host() -> Iterator[Env]:
    work = _work_dir()
    run_dir = work / "host"
    env = {**os.environ, "STUBDOM_HOST_DIR": str(run_dir)}
    up = subprocess.run([*STUBDOM, "host", "up"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stderr
    yield Env(work, {"STUBDOM_HOST_DIR": str(run_dir),
                     "XENSTORED_PATH": str(run_dir / "xenstored" / "socket")})
    subprocess.run([*STUBDOM, "host", "down"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """Let each invocation's ``logging.basicConfig`` write to the runner's stderr."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def violation(args: list[str], result: click.testing.Result) -> str | None:
    """What is wrong with one invocation's outcome, or None."""
    err = result.stderr
    lines = err.splitlines()
    where = f"stubdom {' '.join(args)} -> {result.exit_code}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        e = result.exception
        return f"{where}: raised {type(e).__name__}: {e}"
    if "Traceback" in err or "Traceback" in result.stdout:
        return f"{where}: traceback:\n{err}"
    code = result.exit_code
    if code == 2:
        if not (lines and lines[0].startswith("Usage: ") and lines[-1].startswith("Error: ")):
            return f"{where}: not a click usage error:\n{err}"
    elif code == 1:
        if len(lines) != 1 or not lines[0].startswith("Error: "):
            return f"{where}: not one 'Error: ' line:\n{err}"
        if "internal error" in lines[0]:
            return f"{where}: {lines[0]}"
    elif code == 0:
        if "Error" in err:
            return f"{where}: error text with status 0:\n{err}"
    else:
        return f"{where}: unexpected status:\n{err}"
    return None


def sweep(verb: tuple[str, ...], env: Env) -> list[str]:
    runner = CliRunner()
    problems = []
    cwd = os.getcwd()
    os.chdir(env.work)  # whatever a verb writes to a relative path lands here
    try:
        for case in cases(verb, LEAVES[verb]):
            args = env.expand(case)
            _refresh(env.work)
            root = logging.getLogger()
            root.handlers.clear()
            result = runner.invoke(CLI, args, env=env.env)
            problem = violation(args, result)
            if problem:
                problems.append(problem)
    finally:
        os.chdir(cwd)
    return problems


VERBS = sorted(LEAVES)
IDS = [" ".join(v) for v in VERBS]
#: Verbs that find a host (by --dir or STUBDOM_HOST_DIR); the others run without one.
HOST_VERBS = [v for v in VERBS if any(p.name == "directory" for p in LEAVES[v].params)]


@pytest.mark.timeout(60)  # failure guard: a verb that hangs on bad input
@pytest.mark.parametrize("verb", VERBS, ids=IDS)
def test_bad_input_without_a_host(verb: tuple[str, ...], no_host: Env,
                                  isolated_logging: None) -> None:
    problems = sweep(verb, no_host)
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("verb", HOST_VERBS, ids=[" ".join(v) for v in HOST_VERBS])
def test_bad_input_with_a_host(verb: tuple[str, ...], real_host: Env,
                               isolated_logging: None) -> None:
    problems = sweep(verb, real_host)
    assert not problems, "\n".join(problems)


def test_the_sweep_covers_every_verb() -> None:
    """The tree walk finds nested verbs, hidden ones included (a guard on the walk)."""
    assert {("list",), ("host", "up"), ("host", "daemon"), ("trace", "render"),
            ("xenstore", "write")} <= set(LEAVES)
    for verb in LEAVES:
        assert len(cases(verb, LEAVES[verb])) >= 2


# -- what only a real process shows ----------------------------------------------------


def stubdom(*args: str, env: Env, stdout: int | None = subprocess.PIPE
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STUBDOM, *args], env={**os.environ, **env.env}, cwd=env.work,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_trace_show_of_a_garbage_file(no_host: Env) -> None:
    garbage = no_host.work / "garbage.save"
    garbage.write_bytes(b"Xen saved domain\xff\xfe\x00" * 100)
    line = one_error_line(stubdom("trace", "show", str(garbage), env=no_host))
    assert f"{garbage} is not a trace" in line


def test_trace_render_into_a_missing_directory(no_host: Env) -> None:
    trace = no_host.work / "t.jsonl"
    trace.write_text('{"t": 0.5, "dir": "in", "conn": 1, "dom": 0, "type": "READ", '
                     '"req_id": 1, "tx_id": 0, "payload": "/a\\u0000"}\n')
    out = no_host.work / "missing" / "x.svg"
    line = one_error_line(stubdom("trace", "render", str(trace), "-o", str(out), env=no_host))
    assert line == (f"Error: cannot write {out}: No such file or directory; "
                    "choose another -o/--output")


def test_a_damaged_line_in_a_trace_is_one_warning(no_host: Env) -> None:
    trace = no_host.work / "cut.jsonl"
    good = ('{"t": 0.5, "dir": "in", "conn": 1, "dom": 0, "type": "READ", '
            '"req_id": 1, "tx_id": 0, "payload": "/a\\u0000"}\n')
    trace.write_text(good + "{not json\n" * 500 + '{"t": 1.0, "di')  # cut by a crash
    r = stubdom("trace", "show", str(trace), env=no_host)
    assert r.returncode == 0, r.stderr
    assert "READ /a" in r.stdout
    assert r.stderr.splitlines() == [
        f"stubdom.trace.model: {trace}: skipped 501 damaged line(s), the first: line 2: "
        "not a trace record: '{not json\\n': Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)"]


@pytest.mark.parametrize("args", [("list",), ("host", "list"), ("xenstore", "ls", "/"),
                                  ("--help",), ("list", "--help")])
def test_a_closed_stdout_exits_quietly_with_141(args: tuple[str, ...], real_host: Env) -> None:
    """``stubdom list | head -1``: head has gone before we write; as ``yes | head -1``."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE: no race with a reader
    try:
        r = stubdom(*args, env=real_host, stdout=write_end)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, "")


def test_an_unexpected_exception_is_one_line_and_v_shows_the_traceback(no_host: Env) -> None:
    script = (
        "import sys\n"
        "from stubdom.cli.main import cli, main\n"
        "@cli.command('boom')\n"
        "def boom() -> None:\n"
        "    raise ZeroDivisionError('a bug\\nsecond line')\n"
        "sys.argv[0] = 'stubdom'\n"
        "main()\n"
    )
    run = [sys.executable, "-c", script]
    r = subprocess.run([*run, "boom"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == ("Error: internal error: ZeroDivisionError: a bug (please report it; "
                        "'stubdom -v ...' shows the traceback)\n")
    r = subprocess.run([*run, "-v", "boom"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ZeroDivisionError: a bug" in r.stderr
