"""An optional mypyc build of our sans-IO cores, and the finder that loads it.

Two hot paths are typed and do no I/O, so mypyc compiles them to C unchanged:
xenstored's request (the packet codec, the tree, watches, transactions, connections and
the dispatch), which runs a sixth to a third fewer instructions compiled; and the
control channel's synchronous parts (the client's codec and call table, the
toolstack's command decisions, the agent's dispatch), about a twelfth of what the
toolstack and the agent execute per exchange.  The build goes to a per-user cache,
outside the source tree, keyed by a hash of every source it was typed against and of
the Python it was built for: an edited source changes the key, and the processes then
run pure Python until ``python -m stubdom.compiled build`` (``make venv``) builds again.
`install` is called by ``stubdom xenstored``, by the stubdomain agent and by the verbs
that talk to a device model (`stubdom.cli.main.CHANNEL_VERBS`), each before it imports
a compiled module; every other process, the in-process host and the tests included,
stays pure Python.  ``STUBDOM_PURE_PYTHON=1`` forces pure Python.

This module imports nothing of stubdom's: loading it must not import the core early.
Every agent and channel verb imports it at start-up, so what only a build needs
(`subprocess`, `tempfile`, `shutil`) is imported by the build, the key needs no
`hashlib`, and the finder is a plain class: `importlib.abc` alone costs 18-27 ms here,
for it imports `importlib.resources`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from stubdom.usercache import cache_dir

log = logging.getLogger(__name__)

#: The compiled modules.  xenstored's: the hot path of a request, the epoll shell's turn
#: included (compiled, it runs a fifth fewer instructions per request:
#: `bench/xsinstr.py`), not the rarely used requests (CONTROL, domains).  The channel's:
#: only modules without coroutines.  A coroutine compiled by mypyc loses the exception
#: it propagates when a cancellation (an `asyncio.timeout` running out) has been
#: thrown through two compiled frames and the inner one awaits while unwinding (an
#: UNWATCH in ``__aexit__``): the task dies with "invalid exception object" and its
#: caller waits for ever.  The agent's console-0 formatter (a `logging.Formatter`
#: subclass) crashed the garbage collector compiled.  Both stay pure Python.
MODULES = (
    "stubdom.wire.packet",
    "stubdom.wire.paths",
    "stubdom.xenstored.server",
    "stubdom.xenstored.core",
    "stubdom.xenstored.node_requests",
    "stubdom.xenstored.store",
    "stubdom.xenstored.connection",
    "stubdom.xenstored.watches",
    "stubdom.xenstored.transaction",
    "stubdom.protocol",
    "stubdom.xenstore.protocol",
    "stubdom.xenstore.inflight",
    "stubdom.xenstore.payloads",
    "stubdom.toolstack.exchange",
    "stubdom.stubdomain.commands",
)
#: The packages whose sources the key covers whole: the xenstored modules import nothing
#: of stubdom's outside them, and mypyc types (and inlines the constants of) all they
#: import.
PACKAGES = ("wire", "xenstored")
#: The other sources the key covers besides `PACKAGES` and the `MODULES` themselves
#: (``stubdom/<a>/<b>.py`` for ``a.b``): what the shell and the channel's modules import.
MORE_SOURCES = ("fdio", "ratelimit", "xenstore.errors", "devicemodel.base", "devicemodel.stream")
OPT_LEVEL = "3"
ENV_PURE = "STUBDOM_PURE_PYTHON"
ROOT = Path(__file__).parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
#: mypyc's shared library: one per build, holding every module's code.
GROUP_TAIL = "__mypyc"
#: A build's directory in the cache: this and the key.
BUILD_PREFIX = "mypyc-"
#: Builds kept in the cache (the newest; one per checkout a user switches between).
KEEP_BUILDS = 3

_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="stubdom-compiled-core",
    ext_modules=mypycify({paths!r}, opt_level={opt!r}, target_dir="c"),
    script_args=["build_ext", "--build-lib", {lib!r}, "--build-temp", "obj"],
)
"""


class CompiledCoreUnavailable(Exception):
    """The compiled core cannot be built here (no gcc, mypyc or Python headers)."""


def source_key() -> str:
    """What a build depends on: the sources, the build's recipe and this Python's ABI.

    The hash is the one Python trusts for its hash-checked ``.pyc`` files (PEP 552,
    `importlib.util.source_hash`, 64 bits): computed at every start of an agent or a
    channel verb, it must not cost `hashlib`'s import of OpenSSL (2-3 ms here)."""
    parts = [f"{MODULES}|{OPT_LEVEL}|{sys.version}|{SUFFIX}".encode()]
    sources = [s for package in PACKAGES for s in sorted((ROOT / package).glob("*.py"))]
    outside = [m.removeprefix("stubdom.") for m in MODULES
               if m.split(".")[1] not in PACKAGES]
    sources += [_source(name) for name in (*outside, *MORE_SOURCES)]
    for source in sources:
        parts.append(f"\0{source.relative_to(ROOT)}\0".encode())
        parts.append(importlib.util.source_hash(source.read_bytes()))
    return importlib.util.source_hash(b"".join(parts)).hex()


def _source(name: str) -> Path:
    """``stubdom/<a>/<b>.py`` for ``a.b``."""
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def build_dir() -> Path:
    """Where the build for the current sources is, or would be."""
    return cache_dir() / f"{BUILD_PREFIX}{source_key()}"


def artefacts(directory: Path) -> dict[str, Path] | None:
    """Module name -> extension file of a whole build in ``directory``, else None."""
    found = {m: directory.joinpath(*m.split(".")).with_name(m.rpartition(".")[2] + SUFFIX)
             for m in MODULES}
    try:
        groups = [p for p in directory.iterdir() if p.name.endswith(GROUP_TAIL + SUFFIX)]
    except OSError:
        return None
    if len(groups) != 1 or not all(p.is_file() for p in found.values()):
        return None
    found[groups[0].name.removesuffix(SUFFIX)] = groups[0]
    return found


def _check_tools() -> None:
    import shutil

    if shutil.which(os.environ.get("CC") or "gcc") is None:
        raise CompiledCoreUnavailable("gcc not found: install the Debian package gcc")
    if importlib.util.find_spec("mypyc") is None:
        raise CompiledCoreUnavailable("mypyc not found: install mypy (pip install -e '.[test]')")


def _failure(output: str) -> CompiledCoreUnavailable:
    lines = output.strip().splitlines() or ["no message"]
    first = next((x for x in lines if "error" in x.lower()), lines[-1]).strip()
    hint = " (install the Debian package python3-dev)" if "Python.h" in output else ""
    return CompiledCoreUnavailable(f"mypyc build of the stubdom core failed: {first}{hint}")


def build() -> Path:
    """Build the core for the current sources into the cache, unless it is there already.

    The build runs in a scratch directory (mypy's cache and the C files land there) and
    appears in the cache by one rename, so concurrent builds each leave a whole one.
    """
    import subprocess
    import tempfile

    final = build_dir()
    if artefacts(final) is not None:
        return final
    _check_tools()
    final.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(_source(m.removeprefix("stubdom."))) for m in MODULES]
    with tempfile.TemporaryDirectory(prefix=f".{BUILD_PREFIX}", dir=final.parent) as tmp:
        scratch = Path(tmp)
        setup = _SETUP.format(paths=paths, opt=OPT_LEVEL, lib=str(scratch / "lib"))
        (scratch / "setup.py").write_text(setup, encoding="utf-8")
        log.info("compiling %d modules with mypyc into %s", len(MODULES), final)
        done = subprocess.run([sys.executable, "setup.py"], cwd=scratch, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0 or artefacts(scratch / "lib") is None:
            raise _failure(done.stdout)
        try:
            os.rename(scratch / "lib", final)
        except OSError:
            if artefacts(final) is None:  # not a concurrent build that won the rename
                raise
    _prune(final.parent)
    return final


def _prune(cache: Path) -> None:
    """Remove all but the `KEEP_BUILDS` newest builds (and those of older releases, named
    ``xenstored-mypyc-*``): every edit of a keyed source makes a new one.  A process
    running an old build keeps its mapped files."""
    import shutil

    builds = sorted((d for d in cache.iterdir()
                     if d.name.startswith((BUILD_PREFIX, "xenstored-mypyc-")) and d.is_dir()),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS:]:
        log.info("removing the old build %s", old)
        shutil.rmtree(old, ignore_errors=True)


class CompiledCoreFinder:
    """Finds exactly the modules of one build (and mypyc's shared library) in its files:
    a meta path finder is anything with `find_spec`."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install() -> bool:
    """Make the next imports of the core load the build for the current sources.

    Returns whether they will; otherwise (forced, no build for these sources, or a core
    already imported, whose objects a compiled core could not take) the core stays pure
    Python.  Either way one log line says which core the process runs, and why; a
    second call changes nothing.
    """
    if any(isinstance(f, CompiledCoreFinder) for f in sys.meta_path):
        return True
    reason = _unusable()
    files = None if reason else artefacts(build_dir())
    if files is None:
        log.info("stubdom core: pure Python (%s)", reason or _no_build())
        return False
    finder = CompiledCoreFinder(files)
    sys.meta_path.insert(0, finder)
    group = next(name for name in files if name not in MODULES)
    try:
        importlib.import_module(group)  # the one that can fail; it runs no module's code
    except ImportError as e:
        sys.meta_path.remove(finder)
        sys.modules.pop(group, None)
        log.warning("stubdom core: pure Python (%s does not load: %s)", files[group], e)
        return False
    log.info("stubdom core: compiled by mypyc, from %s", files[group].parent)
    return True


def _unusable() -> str:
    if os.environ.get(ENV_PURE, "") not in ("", "0"):
        return f"{ENV_PURE} is set"
    early = [m for m in MODULES if m in sys.modules]
    if early:
        return f"{early[0]} was imported before the compiled core could be installed"
    return ""


def _no_build() -> str:
    return f"no build for these sources in {cache_dir()}: python -m stubdom.compiled build"


def main(argv: Sequence[str] | None = None) -> int:
    """``build``: build (or find) the core and print its directory; ``status``: say which
    core ``stubdom xenstored`` would run.  A missing tool is one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["status"]:
        files = artefacts(build_dir())
        print(f"compiled: {build_dir()}" if files else f"pure Python: {_no_build()}")
        return 0
    if args != ["build"]:
        print("usage: python -m stubdom.compiled build|status", file=sys.stderr)
        return 2
    try:
        print(build())
    except (CompiledCoreUnavailable, OSError) as e:
        print(f"stubdom.compiled: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
