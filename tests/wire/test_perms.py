"""Permission strings as cx parses them (xs_lib.c ``xs_strings_to_perms``,
xenstored_core.c ``perm_for_conn``)."""

from __future__ import annotations

import pytest

from stubdom.wire.perms import Access, InvalidPermission, Perm, c_strtol, parse_perm


@pytest.mark.parametrize(
    ("text", "access", "domid"),
    [
        ("n0", Access.NONE, 0),
        ("r5", Access.READ, 5),
        ("w3", Access.WRITE, 3),
        ("b7", Access.BOTH, 7),
        ("b0x10", Access.BOTH, 16),
        ("r010", Access.READ, 8),  # strtol base 0: octal
        ("n-1", Access.NONE, 4294967295),  # stored as C unsigned int
    ],
)
def test_parse(text: str, access: Access, domid: int) -> None:
    assert parse_perm(text) == Perm(access, domid)


@pytest.mark.parametrize("text", ["w", "x0", "r1x", "", "R1"])
def test_reject(text: str) -> None:
    with pytest.raises(InvalidPermission):
        parse_perm(text)


def test_render() -> None:
    assert [str(parse_perm(t)) for t in ("b0x10", "r010", "n0")] == ["b16", "r8", "n0"]


def test_strtol_edge_cases() -> None:
    assert c_strtol("0x") == (0, "x")
    assert c_strtol(" +12z") == (12, "z")
    assert c_strtol("abc") == (0, "abc")
    assert c_strtol("9" * 30)[0] == 2**63 - 1
