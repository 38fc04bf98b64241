"""Building the shim: a cache keyed by the source, and one line when gcc is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stubdom.realxs import RealXenstoredUnavailable, build, build_shim, shim_library
from tests.support.daemons import need_peer


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(build.ENV_LIBRARY, raising=False)
    return tmp_path / "cache" / "stubdom"


def _need_gcc() -> None:
    need_peer(shutil.which("gcc") is not None, "gcc (Debian gcc), which builds the shim")


def test_build_shim_makes_a_shared_library(tmp_path: Path) -> None:
    _need_gcc()
    lib = build_shim(tmp_path / "out")
    assert lib == tmp_path / "out" / build.LIBRARY_NAME
    assert lib.read_bytes()[:4] == b"\x7fELF"
    assert [p.name for p in lib.parent.iterdir()] == [lib.name]  # no temporary left


def test_shim_library_is_built_once_per_source(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_gcc()
    first = shim_library()
    assert first.is_relative_to(cache)
    stamp = first.stat().st_mtime_ns
    assert shim_library() == first and first.stat().st_mtime_ns == stamp

    changed = tmp_path / "shim.c"
    changed.write_text(build.SOURCE.read_text() + "\n/* another version */\n")
    monkeypatch.setattr(build, "SOURCE", changed)
    second = shim_library()
    assert second != first and second.is_file()


def test_a_given_library_is_used_as_is(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.ENV_LIBRARY, "/nonexistent/libshim.so")
    with pytest.raises(RealXenstoredUnavailable, match="does not exist"):
        shim_library()


def test_missing_gcc_is_one_line_naming_the_package(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(RealXenstoredUnavailable) as e:
        shim_library()
    assert "\n" not in str(e.value) and "install the Debian package gcc" in str(e.value)


def test_the_module_prints_the_path(cache: Path) -> None:
    _need_gcc()
    out = subprocess.run(
        [sys.executable, "-m", "stubdom.realxs.build"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(out.stdout.strip()).is_file() and out.stderr == ""
