"""The xl.cfg file grammar (libxlu's lexer and parser), sans-IO.

`parse_xlcfg` turns the text of a config file into `Settings`: an ordered mapping from
each key to its last `Setting`, every value carrying the file, line and column it came
from so later stages can point at it. Nothing is interpreted here: numbers stay text
(libxlu stores them as strings too, and converts on use), lists may nest and mix.

The grammar is libxlu's (``libxlu_cfg_l.l`` / ``libxlu_cfg_y.y``)::

    file       := stmt* assignment?
    stmt       := assignment (NEWLINE | ';') | NEWLINE | ';'
    assignment := IDENT '=' value | IDENT '+=' value
    value      := STRING | NUMBER | '[' NL* (value NL* (',' NL* value NL*)* ','? NL*)? ']'
    IDENT      := [a-z][._0-9a-z]*        NUMBER := [0-9][0-9a-fx]*
    STRING     := '...' | "..."   (no raw newline)
                  escapes \\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH \\ooo
    comment    := '#' to the end of the line (a NEWLINE)

``+=`` appends to the earlier value of the same key as libxlu does: a string to a string
(numbers are strings there), a list to a list, anything else is an error; a number that
was built with ``+=`` cannot be read back as a number (libxlu: "can't use += with
numbers"). Any of ``+ - . ( ) :`` outside a string is a lexical error flagged as likely
Python, the old xm syntax xl no longer runs.

Where this parser is stricter or kinder than libxlu (it never changes a valid file's
meaning): it stops at the first error; a comment may end the file without a newline;
``\\xHH`` and octal escapes produce the character they name (libxlu 4.17 mis-scans them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

COMMAND_LINE = "<command line>"
#: Lists may nest this deep (libxlu's bison stack stops near 10000; nobody nests 100).
MAX_LIST_DEPTH = 100

PYTHON_HINT = (
    "this looks like Python (old xm syntax), which xl config files no longer support; "
    "see https://wiki.xen.org/wiki/PythonInXlConfig"
)


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is one line ``FILE:LINE:COL: what``."""

    def __init__(self, file: str, line: int, column: int, message: str) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{file}:{line}:{column}: {message}")

    @classmethod
    def at(cls, pos: Position, message: str) -> ConfigError:
        return cls(pos.file, pos.line, pos.column, message)


@dataclass(frozen=True)
class Position:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


ValueKind = Literal["string", "number", "list"]


@dataclass(frozen=True)
class Value:
    """A string, a number (its text, as written) or a list of values."""

    kind: ValueKind
    pos: Position
    text: str = ""
    items: tuple[Value, ...] = ()

    @property
    def is_list(self) -> bool:
        return self.kind == "list"

    def plain(self) -> str | list[object]:
        """The value without positions: a `str` for atoms, a `list` for lists."""
        if self.kind == "list":
            return [v.plain() for v in self.items]
        return self.text


@dataclass(frozen=True)
class Setting:
    name: str
    value: Value
    #: "=" or "+=" (of the last assignment that produced ``value``).
    op: Literal["=", "+="]
    #: Where the key of that last assignment is.
    pos: Position


@dataclass
class Settings(Mapping[str, Setting]):
    """Key → its current `Setting`, in order of first appearance."""

    _items: dict[str, Setting] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Setting:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def plain(self) -> dict[str, str | list[object]]:
        return {k: s.value.plain() for k, s in self._items.items()}

    def copy(self) -> Settings:
        return Settings(dict(self._items))

    def store(self, name: str, op: Literal["=", "+="], value: Value, pos: Position) -> None:
        prev = self._items.get(name)
        if op == "+=" and prev is not None:
            value = _concat(prev.value, value)
        self._items[name] = Setting(name, value, op, pos)


def _concat(prev: Value, add: Value) -> Value:
    if prev.is_list != add.is_list:
        raise ConfigError.at(add.pos, 'can\'t add [list] to "string" or vice versa')
    if add.is_list:
        return Value("list", add.pos, items=prev.items + add.items)
    return Value("string", add.pos, text=prev.text + add.text)


# -- lexer -------------------------------------------------------------------------------

TokKind = Literal["IDENT", "NUMBER", "STRING", "=", "+=", ",", "[", "]", ";", "NL", "EOF"]


@dataclass(frozen=True)
class Token:
    kind: TokKind
    text: str  # the source text (a STRING's is dequoted)
    pos: Position


_IDENT = re.compile(r"[a-z][._0-9a-z]*")
_NUMBER = re.compile(r"[0-9][0-9a-fx]*")
_STRING = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_SIMPLE: dict[str, TokKind] = {",": ",", "[": "[", "]": "]", "=": "=", ";": ";"}
_PYTHONISH = set("+-.():")
_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}


def clip(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut short so that a message quoting it stays one readable line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _describe(ch: str) -> str:
    if ch == "\r":
        return "carriage return (DOS line ending)"
    if ch.isprintable():
        return f"`{ch}'"
    return f"character {ch!r}"


class _Lexer:
    def __init__(self, text: str, filename: str, line: int = 1) -> None:
        self.text = text
        self.file = filename
        self.i = 0
        self.line = line
        self.line_start = 0

    def pos_at(self, i: int) -> Position:
        return Position(self.file, self.line, i - self.line_start + 1)

    def error(self, i: int, message: str) -> ConfigError:
        return ConfigError.at(self.pos_at(i), message)

    def tokens(self) -> Iterator[Token]:
        text = self.text
        n = len(text)
        while True:
            i = self.i
            if i >= n:
                yield Token("EOF", "", self.pos_at(i))
                return
            ch = text[i]
            if ch in " \t":
                self.i += 1
                continue
            if ch == "\n" or ch == "#":
                end = text.find("\n", i)
                pos = self.pos_at(i)
                if end < 0:  # a comment ending the file without a newline
                    self.i = n
                else:
                    self.i = end + 1
                    self.line += 1
                    self.line_start = self.i
                yield Token("NL", "\n", pos)
                continue
            if ch in _SIMPLE:
                self.i += 1
                yield Token(_SIMPLE[ch], ch, self.pos_at(i))
                continue
            if text.startswith("+=", i):
                self.i += 2
                yield Token("+=", "+=", self.pos_at(i))
                continue
            m = _IDENT.match(text, i)
            if m:
                self.i = m.end()
                yield Token("IDENT", m.group(), self.pos_at(i))
                continue
            m = _NUMBER.match(text, i)
            if m:
                self.i = m.end()
                yield Token("NUMBER", m.group(), self.pos_at(i))
                continue
            if ch in "'\"":
                m = _STRING.match(text, i)
                if not m:
                    raise self.error(i, "unterminated string (a string cannot span lines)")
                self.i = m.end()
                yield Token("STRING", self._dequote(m.group(), i), self.pos_at(i))
                continue
            # libxlu: anything else starts a lexical error that runs to the next blank.
            j = i
            while j < n and text[j] not in " \t\n":
                j += 1
            near = text[i:j]
            if len(near) > 40:
                near = near[:40] + "..."
            msg = f"lexical error near `{near}'" if near.isprintable() else "lexical error"
            msg += f": unexpected {_describe(ch)}"
            if ch in _PYTHONISH:
                msg += f"; {PYTHON_HINT}"
            raise self.error(i, msg)

    def _dequote(self, src: str, start: int) -> str:
        out: list[str] = []
        k = 1
        end = len(src) - 1
        while k < end:
            c = src[k]
            if c != "\\":
                out.append(c)
                k += 1
                continue
            nc = src[k + 1]
            if nc in _ESCAPES:
                out.append(_ESCAPES[nc])
                k += 2
            elif nc == "x":
                digits = re.match(r"[0-9a-fA-F]{1,2}", src[k + 2 : end])
                if not digits:
                    raise self.error(
                        start + k,
                        "invalid digit after backslash hex numerical character escape "
                        "in quoted string",
                    )
                out.append(chr(int(digits.group(), 16)))
                k += 2 + len(digits.group())
            elif nc in "01234567":
                digits = re.match(r"[0-7]{1,3}", src[k + 1 : end])
                assert digits is not None
                out.append(chr(int(digits.group(), 8)))
                k += 1 + len(digits.group())
            else:
                raise self.error(
                    start + k,
                    f"invalid character `{nc}' after backslash in quoted string",
                )
        return "".join(out)


# -- parser ------------------------------------------------------------------------------

_WHAT = {
    "IDENT": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "NL": "end of line",
    "EOF": "end of input",
}


def _near(tok: Token) -> str:
    if tok.kind in ("NL", "EOF"):
        return f"near {_WHAT[tok.kind]}"
    if tok.kind == "STRING":
        return f"near {_WHAT['STRING']}"
    text = tok.text if len(tok.text) <= 40 else tok.text[:40] + "..."
    return f"near `{text}'"


class _Parser:
    def __init__(self, tokens: Iterator[Token], settings: Settings) -> None:
        self.toks = tokens
        self.tok = next(tokens)
        self.settings = settings
        self.depth = 0

    def peek(self) -> TokKind:
        return self.tok.kind

    def advance(self) -> Token:
        tok = self.tok
        self.tok = next(self.toks)
        return tok

    def fail(self, expected: str) -> ConfigError:
        msg = f"syntax error {_near(self.tok)}: expected {expected}"
        return ConfigError.at(self.tok.pos, msg)

    def skip_nl(self) -> None:
        while self.peek() == "NL":
            self.advance()

    def parse_file(self) -> None:
        while self.peek() != "EOF":
            if self.peek() in ("NL", ";"):
                self.advance()
                continue
            if self.peek() != "IDENT":
                raise self.fail("a setting `name = value'")
            self.assignment()
            if self.peek() in ("NL", ";"):
                self.advance()
            elif self.peek() != "EOF":
                raise self.fail("end of line or `;' after the value")

    def assignment(self) -> None:
        key = self.advance()
        if self.peek() not in ("=", "+="):
            raise self.fail("`=' or `+=' after the name")
        op: Literal["=", "+="] = "=" if self.advance().kind == "=" else "+="
        value = self.value()
        self.settings.store(key.text, op, value, key.pos)

    def value(self) -> Value:
        tok = self.tok
        if tok.kind == "STRING":
            self.advance()
            return Value("string", tok.pos, text=tok.text)
        if tok.kind == "NUMBER":
            self.advance()
            return Value("number", tok.pos, text=tok.text)
        if tok.kind == "[":
            if self.depth >= MAX_LIST_DEPTH:
                raise ConfigError.at(
                    tok.pos, f"lists nested more than {MAX_LIST_DEPTH} deep; flatten the value"
                )
            self.advance()
            self.skip_nl()
            items: list[Value] = []
            self.depth += 1
            while self.peek() != "]":
                items.append(self.value())
                self.skip_nl()
                if self.peek() == ",":
                    self.advance()
                    self.skip_nl()
                elif self.peek() != "]":
                    raise self.fail("`,' or `]' in the list")
            self.depth -= 1
            self.advance()
            return Value("list", tok.pos, items=tuple(items))
        raise self.fail('a value (a "string", a number or a [list])')


_SKIP = re.compile(
    r"""[a-z][._0-9a-z]*|[0-9][0-9a-fx]*|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|\+=|#[^\n]*"""
)


def _likely_python(text: str) -> bool:
    """Whether any of ``+ - . ( ) :`` appears outside strings, names and comments (what
    sets libxlu's ``likely_python``, which it reports with any error in the file)."""
    i, n = 0, len(text)
    while i < n:
        m = _SKIP.match(text, i)
        if m:
            i = m.end()
            continue
        if text[i] in _PYTHONISH:
            return True
        i += 1
    return False


def _parse(text: str, filename: str, settings: Settings, line: int = 1) -> None:
    try:
        _Parser(_Lexer(text, filename, line).tokens(), settings).parse_file()
    except ConfigError as e:
        if PYTHON_HINT not in e.message and _likely_python(text):
            raise ConfigError(e.file, e.line, e.column, f"{e.message}; {PYTHON_HINT}") from None
        raise


def parse_xlcfg(text: str, filename: str = "<string>", base: Settings | None = None) -> Settings:
    """Parse an xl.cfg text. With ``base``, its settings come first and ``+=`` appends to
    them (``base`` itself is not changed)."""
    settings = base.copy() if base is not None else Settings()
    _parse(text, filename, settings)
    return settings


def apply_overrides(settings: Settings, overrides: Sequence[str]) -> Settings:
    """``xl create``'s trailing ``key=value`` arguments, applied after the file: each is
    parsed with the same grammar (so ``'a=1; b="x"'`` sets two keys and ``+=`` appends)
    and reported as ``<command line>``, line N for the N-th argument."""
    result = settings.copy()
    for n, arg in enumerate(overrides, start=1):
        try:
            _parse(arg, COMMAND_LINE, result, line=n)
        except ConfigError as e:
            if e.line == n:
                raise
            # A newline inside an argument must not move the error to another argument.
            raise ConfigError(e.file, n, e.column, e.message) from None
    return result


# -- writing -----------------------------------------------------------------------------

_UNESCAPE = {
    "\\": "\\\\",
    '"': '\\"',
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def quote(s: str) -> str:
    """A double-quoted xl.cfg string that reads back as ``s`` (characters up to U+00FF
    other than the printable ones as ``\\xHH``)."""
    out = ['"']
    for c in s:
        if c in _UNESCAPE:
            out.append(_UNESCAPE[c])
        elif c.isprintable() or ord(c) > 0xFF:
            out.append(c)
        else:
            out.append(f"\\x{ord(c):02x}")
    out.append('"')
    return "".join(out)


def format_value(value: str | int | Iterable[object]) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        if value < 0:
            raise ValueError("xl.cfg numbers have no sign")
        return str(value)
    if isinstance(value, str):
        return quote(value)
    return "[ " + ", ".join(format_value(v) for v in value) + " ]"  # type: ignore[arg-type]


def format_xlcfg(settings: Mapping[str, str | int | Iterable[object]]) -> str:
    """A config file text for plain values (str, non-negative int, nested lists)."""
    return "".join(f"{k} = {format_value(v)}\n" for k, v in settings.items())
