"""Verdicts, one text line per clause, and the JSON report."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

from stubdom.conformance.clauses import BY_ID


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNSUPPORTED = "not supported"
    NOT_EXERCISED = "not exercised"  # the scenario never did it (toolstack mode)


@dataclass
class Result:
    clause: str
    verdict: Verdict
    seen: str
    style: str = ""  # e.g. "qemu-trad style"

    def line(self) -> str:
        c = BY_ID[self.clause]
        v = f"{self.verdict.value} ({self.style})" if self.style else self.verdict.value
        return f"{v:<24} {c.id:<22} {c.section:<36} {c.text} -- {self.seen}"


def failed(results: list[Result]) -> bool:
    return any(r.verdict is Verdict.FAIL for r in results)


def text(results: list[Result]) -> str:
    return "\n".join(r.line() for r in results)


def write_json(results: list[Result], path: Path) -> None:
    rows = [
        {
            "clause": r.clause,
            "section": BY_ID[r.clause].section,
            "description": BY_ID[r.clause].text,
            "verdict": r.verdict.value,
            "style": r.style,
            "seen": r.seen,
        }
        for r in results
    ]
    path.write_text(json.dumps({"failed": failed(results), "results": rows}, indent=2) + "\n")
