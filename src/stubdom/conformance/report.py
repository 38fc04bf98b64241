"""Verdicts, one text line per clause, and the JSON report."""

from __future__ import annotations

import enum
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stubdom.conformance.clauses import BY_ID, Clause

#: Longest reason kept for a clause: a report line must stay one line.
REASON_MAX = 240


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNSUPPORTED = "not supported"
    NOT_EXERCISED = "not exercised"  # the scenario never did it (toolstack mode)


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """``text`` as one printable line: a peer's garbage, a multi-line log tail or a long
    error must not break the report's one-line-per-clause shape."""
    flat = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass
class Result:
    clause: str
    verdict: Verdict
    seen: str
    style: str = ""  # e.g. "qemu-trad style"

    def __post_init__(self) -> None:
        self.seen = one_line(self.seen)

    def line(self) -> str:
        c = BY_ID[self.clause]
        v = f"{self.verdict.value} ({self.style})" if self.style else self.verdict.value
        return f"{v:<24} {c.id:<22} {c.section:<36} {c.text} -- {self.seen}"


class Ledger:
    """The verdicts of one run, by clause: the first verdict of a clause stands.

    A run hands it to every step, and whoever ends the run (the last step, a time
    bound, Ctrl-C, a failure of the kit itself) gives the undecided clauses a verdict
    with `close`, so the report always covers every clause."""

    def __init__(self, clauses: Iterable[Clause]) -> None:
        self.clauses = tuple(clauses)
        self._by_id: dict[str, Result] = {}
        #: How the run ended: "complete", or why it stopped early.
        self.ended = "complete"

    def add(self, clause: str, verdict: Verdict, seen: str, style: str = "") -> None:
        if clause not in BY_ID:
            raise KeyError(f"no clause {clause!r}")
        self._by_id.setdefault(clause, Result(clause, verdict, seen, style))

    def undecided(self, clauses: Iterable[str]) -> list[str]:
        return [c for c in clauses if c not in self._by_id]

    def fail(self, clauses: Iterable[str], reason: str) -> None:
        """Every undecided clause of ``clauses`` fails with ``reason``."""
        for c in self.undecided(clauses):
            self.add(c, Verdict.FAIL, reason)

    def close(self, reason: str) -> None:
        """Every clause still undecided fails with ``reason``."""
        self.fail((c.id for c in self.clauses), reason)

    def results(self) -> list[Result]:
        """The decided clauses, in catalogue order."""
        return [self._by_id[c.id] for c in self.clauses if c.id in self._by_id]


def failed(results: list[Result]) -> bool:
    return any(r.verdict is Verdict.FAIL for r in results)


def text(results: list[Result]) -> str:
    return "\n".join(r.line() for r in results)


def write_json(results: list[Result], path: Path, ended: str = "complete") -> None:
    """The report as JSON, replaced whole (a run interrupted while it writes leaves the
    previous report or the new one, never half of one)."""
    rows = [
        {
            "id": r.clause,
            "clause": r.clause,
            "section": BY_ID[r.clause].section,
            "description": BY_ID[r.clause].text,
            "verdict": r.verdict.value,
            "style": r.style,
            "seen": r.seen,
        }
        for r in results
    ]
    doc = {"failed": failed(results), "ended": ended, "results": rows}
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
