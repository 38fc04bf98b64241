"""Building the shim (``shim.c``) into a shared library, once per source version.

The library is compiled on the machine that runs the daemons, with its own gcc, so it
matches the local libc; a per-user cache keyed by a hash of the source and the flags
keeps that to once, and a changed source builds anew.  ``python -m stubdom.realxs.build``
builds (or finds) it and prints its path; ``make venv`` runs that when gcc is there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stubdom.realxs.errors import RealXenstoredUnavailable
from stubdom.usercache import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("shim.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall")
LIBS = ("-ldl",)
LIBRARY_NAME = "libstubdom-realxs.so"
#: A prebuilt library to use instead of building one (a packager's or a CI cache's).
ENV_LIBRARY = "STUBDOM_REALXS_SHIM"


def source_key() -> str:
    """What the built library depends on: the source and the flags."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS + LIBS).encode())
    return digest.hexdigest()[:16]


def _compiler() -> str:
    cc = shutil.which(os.environ.get("CC") or "gcc")
    if cc is None:
        raise RealXenstoredUnavailable(
            "gcc not found: install the Debian package gcc (it builds the realxs shim)"
        )
    return cc


def build_shim(out_dir: Path, name: str = LIBRARY_NAME) -> Path:
    """Compile ``shim.c`` into ``out_dir/name`` and return its path.

    The library appears atomically (written aside, then renamed), so builds racing for
    the same cache entry each leave a whole file.
    """
    cc = _compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / name
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"
    argv = [cc, *CFLAGS, "-o", str(tmp), str(SOURCE), *LIBS]
    log.debug("building the shim: %s", " ".join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        hint = " (install the Debian package libc6-dev)" if ".h:" in done.stderr else ""
        raise RealXenstoredUnavailable(f"building {SOURCE.name} failed: {first}{hint}")
    os.replace(tmp, out)
    return out


def cached_library() -> Path | None:
    """The library if one is installed or already built for this source, else None."""
    given = os.environ.get(ENV_LIBRARY)
    if given:
        return Path(given)
    path = cache_dir() / f"realxs-{source_key()}" / LIBRARY_NAME
    return path if path.is_file() else None


def shim_library() -> Path:
    """The shim for this source: the installed or cached one, else built into the cache."""
    found = cached_library()
    if found is not None:
        if not found.is_file():
            raise RealXenstoredUnavailable(f"{ENV_LIBRARY}={found} does not exist: unset it")
        return found
    return build_shim(cache_dir() / f"realxs-{source_key()}")


def main() -> int:
    """Print the shim's path, building it if needed; a missing gcc is one line on stderr."""
    try:
        print(shim_library())
    except RealXenstoredUnavailable as e:
        print(f"stubdom.realxs.build: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
