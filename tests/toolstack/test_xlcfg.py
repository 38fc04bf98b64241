"""The xl.cfg grammar: values, +=, statements, errors with positions, overrides."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubdom.toolstack.xlcfg import (
    COMMAND_LINE,
    ConfigError,
    apply_overrides,
    format_xlcfg,
    parse_xlcfg,
    quote,
)


def plain(text: str) -> dict[str, object]:
    return parse_xlcfg(text, "t.cfg").plain()


def error(text: str, filename: str = "t.cfg") -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_xlcfg(text, filename)
    return ei.value


# -- values --------------------------------------------------------------------------------


def test_atoms_lists_and_nesting() -> None:
    text = """name = "g"
memory = 512
mac = 0x1f
single = 'it is'
empty = []
nested = [ "a", [ 1, [ ] ], 'b', ]
"""
    assert plain(text) == {
        "name": "g",
        "memory": "512",
        "mac": "0x1f",
        "single": "it is",
        "empty": [],
        "nested": ["a", ["1", []], "b"],
    }


def test_adjacent_strings_are_an_error() -> None:
    e = error("single = 'it''s'\n")
    assert (e.line, e.column) == (1, 14)
    assert "syntax error" in e.message


def test_values_keep_kind_text_and_position() -> None:
    s = parse_xlcfg('a = 12\nb = [ "x",\n  7 ]\n', "f.cfg")
    a = s["a"]
    assert (a.value.kind, a.value.text, a.op) == ("number", "12", "=")
    assert (a.pos.line, a.pos.column, a.value.pos.column) == (1, 1, 5)
    b = s["b"].value
    assert b.kind == "list"
    assert [(v.kind, v.text, v.pos.line, v.pos.column) for v in b.items] == [
        ("string", "x", 2, 7),
        ("number", "7", 3, 3),
    ]
    assert str(b.items[1].pos) == "f.cfg:3:3"


def test_escapes() -> None:
    text = r'''s = "q\" a\' b\\ \a\b\f\n\r\t\v \x41\x7e \101\0"'''
    assert plain(text)["s"] == "q\" a' b\\ \a\b\f\n\r\t\v A~ A\0"


def test_bad_escape_is_located() -> None:
    e = error('x = 1\ns = "ab\\qc"\n')
    assert (e.line, e.column) == (2, 8)
    assert "after backslash" in e.message
    e = error('s = "\\xZZ"')
    assert "hex" in e.message


def test_identifiers_may_have_dots_and_underscores() -> None:
    assert plain("a.b_c9 = 1") == {"a.b_c9": "1"}


def test_numbers_are_text_as_written() -> None:
    assert plain("a = 0x10; b = 010; c = 7") == {"a": "0x10", "b": "010", "c": "7"}


# -- statements ------------------------------------------------------------------------------


def test_semicolons_comments_and_blank_lines() -> None:
    text = (
        "# header\n\na = 1; b = 2 ;; c = 'x' # trailing\n;\n   \t\n"
        "d = [ # comment in a list\n 1,\n\n 2 ]"
    )
    assert plain(text) == {"a": "1", "b": "2", "c": "x", "d": ["1", "2"]}


def test_last_line_without_newline_and_comment_at_eof() -> None:
    assert plain("a = 1") == {"a": "1"}
    assert plain("a = 1 # no newline") == {"a": "1"}
    assert plain("") == {}


def test_later_assignment_wins_and_order_is_first_appearance() -> None:
    s = parse_xlcfg("a = 1\nb = 2\na = 3\n", "t")
    assert list(s) == ["a", "b"]
    assert s["a"].value.text == "3"
    assert s["a"].pos.line == 3


def test_plus_equals_appends_lists_and_strings() -> None:
    s = parse_xlcfg('l = [ "a" ]\nl += [ "b", "c" ]\ns = "x"\ns += "y"\nn += [ 1 ]\n', "t")
    assert s.plain() == {"l": ["a", "b", "c"], "s": "xy", "n": ["1"]}
    assert s["l"].op == "+="


def test_plus_equals_type_mismatch() -> None:
    e = error('l = [ "a" ]\nl += "b"\n')
    assert (e.line, e.column) == (2, 6)
    assert 'can\'t add [list] to "string"' in e.message


def test_plus_equals_on_a_number_concatenates_text() -> None:
    # libxlu stores numbers as strings: the text concatenates; reading it as a number
    # is refused later (see test_configure).
    assert plain("m = 5\nm += 12\n") == {"m": "512"}


# -- errors ------------------------------------------------------------------------------------


def test_error_format_and_attributes() -> None:
    e = error("a = 1\nb = \n", "g.cfg")
    assert str(e) == f"g.cfg:2:5: {e.message}"
    assert (e.file, e.line, e.column) == ("g.cfg", 2, 5)
    assert "\n" not in str(e)


@pytest.mark.parametrize(
    ("text", "line", "col", "needle"),
    [
        ("a = [1, 2\n", 2, 1, "expected `,' or `]'"),
        ("a = 1 b = 2", 1, 7, "expected end of line"),
        ("= 1", 1, 1, "expected a setting"),
        ("a 1", 1, 3, "expected `=' or `+='"),
        ("a = ", 1, 5, "expected a value"),
        ("a = ]", 1, 5, "expected a value"),
        ('a = "open\n', 1, 5, "unterminated string"),
        ("Name = 1", 1, 1, "lexical error near `Name'"),
        ("a = 1\r\n", 1, 6, "carriage return"),
        ("a = $x", 1, 5, "lexical error near `$x'"),
        ("a = [1,,2]", 1, 8, "expected a value"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, needle: str) -> None:
    e = error(text)
    assert (e.line, e.column) == (line, col), str(e)
    assert needle in e.message, str(e)


@pytest.mark.parametrize(
    "text",
    [
        "memory = 1.5",
        "a = -1",
        "a = +1",
        "kernel = os.path.join('a')",
        "disk = ['x'] + ['y']",
        "a = (1, 2)",
        "vif = [ 'a' ]:",
    ],
)
def test_python_syntax_gets_the_hint(text: str) -> None:
    e = error(text)
    assert "Python" in e.message and "PythonInXlConfig" in e.message


def test_other_lexical_errors_get_no_python_hint() -> None:
    assert "Python" not in error("a = @").message
    assert "Python" not in error("a = [1 2]  # (a comment) 'and (a string)'").message


def test_python_anywhere_in_the_file_gets_the_hint_like_libxlu() -> None:
    # libxlu remembers a Python-looking character anywhere and adds its warning to any
    # error; here the syntax error comes first.
    e = error("a = 1 2\nb = f(x)\n")
    assert (e.line, e.column) == (1, 7)
    assert "PythonInXlConfig" in e.message


# -- overrides -----------------------------------------------------------------------------------


def test_overrides_apply_after_the_file() -> None:
    base = parse_xlcfg('name = "g"\nvcpus = 1\npci = [ "01:00.0" ]\n', "g.cfg")
    s = apply_overrides(base, ["vcpus=4", 'name="h"; memory = 0x200', 'pci += [ "02:00.0" ]'])
    assert s.plain() == {
        "name": "h",
        "vcpus": "4",
        "pci": ["01:00.0", "02:00.0"],
        "memory": "0x200",
    }
    assert base.plain()["vcpus"] == "1"  # the base is not changed
    assert s["memory"].pos.file == COMMAND_LINE
    assert s["name"].pos.file == COMMAND_LINE
    assert s["pci"].value.items[0].pos.file == "g.cfg"


def test_the_man_page_override_example() -> None:
    s = apply_overrides(parse_xlcfg("", "x"), ['cpus="0-3"; pci=["01:05.1","01:05.2"]'])
    assert s.plain() == {"cpus": "0-3", "pci": ["01:05.1", "01:05.2"]}


def test_override_errors_name_the_command_line_and_the_argument() -> None:
    with pytest.raises(ConfigError) as ei:
        apply_overrides(parse_xlcfg("", "x"), ["a=1", "b=2", "c = 3 4"])
    e = ei.value
    assert (e.file, e.line, e.column) == (COMMAND_LINE, 3, 7)
    assert str(e).startswith("<command line>:3:7: ")


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    try:
        parse_xlcfg(text, "fuzz")
    except ConfigError as e:
        assert e.line >= 1 and e.column >= 1
        assert "\n" not in str(e)


_alphabet = "abcdefghijklmnopqrstuvwxyz=,[];#'\"\\+-.():0123456789x \t\n"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_alphabet))
def test_config_like_text_raises_only_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_xlcfg(text, "fuzz")


names = st.from_regex(r"[a-z][._0-9a-z]{0,8}", fullmatch=True)
atoms = st.one_of(st.text(max_size=12), st.integers(min_value=0, max_value=2**40))
values = st.recursive(atoms, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def expected(v: object) -> object:
    if isinstance(v, list):
        return [expected(x) for x in v]
    return str(v)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, max_size=8))
def test_generated_files_round_trip(config: dict[str, object]) -> None:
    text = format_xlcfg(config)  # type: ignore[arg-type]
    assert parse_xlcfg(text, "gen").plain() == {k: expected(v) for k, v in config.items()}


@given(st.text())
def test_quote_round_trips(s: str) -> None:
    assert parse_xlcfg(f"a = {quote(s)}", "q").plain() == {"a": s}
