"""Path rules (cx xenstored_core.c ``is_valid_nodename``, xs_wire.h's size limits)."""

from __future__ import annotations

import pytest

from stubdom.wire.paths import (
    InvalidPath,
    ancestors,
    canonicalize,
    check_client_path,
    is_child,
    is_valid_path,
    parent_of,
    relative_length,
)


@pytest.mark.parametrize("path", ["/", "/a", "/@x", "/-/_/@", "/local/domain/0/x-y_z"])
def test_valid(path: str) -> None:
    assert is_valid_path(path)


@pytest.mark.parametrize("path", ["/a.b", "/a b", "/a/", "//a", "", "a", "/a//b", "/é"])
def test_invalid(path: str) -> None:
    assert not is_valid_path(path)


def test_special_paths_only_where_allowed() -> None:
    assert not is_valid_path("@releaseDomain")
    assert is_valid_path("@releaseDomain", allow_special=True)


def test_relative_resolution() -> None:
    assert canonicalize("x/y", 0) == "/local/domain/0/x/y"
    assert canonicalize("data", 5) == "/local/domain/5/data"
    assert canonicalize("/abs", 5) == "/abs"
    assert canonicalize("@releaseDomain", 5) == "@releaseDomain"
    # The empty relative path becomes a trailing slash, which is invalid.
    assert not is_valid_path(canonicalize("", 5))


def test_length_limits_follow_cx() -> None:
    assert is_valid_path("/" + "a" * 2047)
    assert not is_valid_path("/" + "a" * 2048)
    assert is_valid_path("/local/domain/0/" + "a" * 2048)
    assert not is_valid_path("/local/domain/0/" + "a" * 2049)
    # Only the domain-relative part counts, with cx's five-character domid field.
    assert relative_length("/local/domain/12345/ab") == 2
    assert relative_length("/local/domain/123456/ab") == len("/local/domain/123456/ab")


def test_tree_helpers() -> None:
    assert is_child("/a/b", "/a") and is_child("/a", "/a") and is_child("/x", "/")
    assert not is_child("/ab", "/a")
    assert parent_of("/a/b") == "/a" and parent_of("/a") == "/"
    assert ancestors("/a/b/c") == ["/a/b", "/a", "/"]


def test_client_side_checks_name_the_problem() -> None:
    with pytest.raises(InvalidPath, match="invalid characters"):
        check_client_path("/a b")
    with pytest.raises(InvalidPath, match="ends in"):
        check_client_path("/a/")
    with pytest.raises(InvalidPath, match="3073"):
        check_client_path("/" + "a" * 3072)
    assert check_client_path("rel/x") == "rel/x"
