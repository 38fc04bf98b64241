"""The repository cites only what it contains: ``docs/protocol.md`` clause IDs, or the Xen
source (file, function) or XSA a fact comes from -- never a document outside it.  And
every conformance clause is specified where `Clause.section` says: its ID appears as
``**[id]**`` in that section of ``docs/protocol.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stubdom.conformance.clauses import BY_ID, DOC

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["src", "tests", "bench", "examples", "docs", ".ci", "README.md", "Makefile",
           "pyproject.toml"]  # fmt: skip
SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}

#: What a citation of an outside document looks like: its section sign, its name, or
#: the directory it lived in.  (Spelt in pieces so that this file does not match.)
FORBIDDEN = re.compile(
    "|".join(
        [
            "\u00a7",  # a section number of some document
            r"stubdom-protocol\.md",
            r"ecosystem\.md",
            r"xenstore\.md",
            "ref" + r"erence/",
            "/work" + "/shared",
        ]
    )
)


def _files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            out.append(top)
            continue
        for path in sorted(top.rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if (
                not path.is_file()
                or parts & SKIPPED_DIRS
                or any(p.endswith(".egg-info") for p in parts)
                or path == Path(__file__).resolve()
            ):
                continue
            out.append(path)
    return out


def test_nothing_cites_a_document_the_repository_does_not_contain() -> None:
    hits = []
    for path in _files():
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images, saved states
        for n, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "cite docs/protocol.md clause IDs or Xen's source instead:\n" + "\n".join(
        hits
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` dropped, spaces
    to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _sections(doc: str) -> dict[str, str]:
    """Anchor -> the text from its heading to the next heading."""
    out: dict[str, str] = {}
    anchor = ""
    for line in doc.splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            anchor = _slug(m.group(1))
            assert anchor not in out, f"two headings make the anchor #{anchor}"
            out[anchor] = ""
        elif anchor:
            out[anchor] += line + "\n"
    return out


DOC_TEXT = (ROOT / DOC).read_text("utf-8")
SECTIONS = _sections(DOC_TEXT)


@pytest.mark.parametrize("clause_id", sorted(BY_ID))
def test_every_clause_is_specified_where_its_section_points(clause_id: str) -> None:
    doc, _, anchor = BY_ID[clause_id].section.partition("#")
    assert doc == DOC
    assert anchor in SECTIONS, f"{clause_id}: no heading #{anchor} in {DOC}"
    assert f"**[{clause_id}]**" in SECTIONS[anchor], f"{clause_id} is not tagged in #{anchor}"


def test_clause_ids_are_defined_once_and_every_reference_resolves() -> None:
    defined = re.findall(r"\*\*\[([^\]]+)\]\*\*", DOC_TEXT)
    twice = sorted({d for d in defined if defined.count(d) > 1})
    assert not twice, f"clause IDs defined more than once: {twice}"
    # A reference is an ID in plain brackets, outside a definition and outside code.
    prose = re.sub(r"`[^`]*`", "", DOC_TEXT)
    refs = set(re.findall(r"(?<!\*)\[([A-Za-z][\w.\-]*)\](?!\*|\()", prose))
    assert refs - set(defined) == set(), f"references to no clause: {sorted(refs - set(defined))}"


def test_doc_links_point_at_headings() -> None:
    for anchor in re.findall(r"\]\(#([^)]+)\)", DOC_TEXT):
        assert anchor in SECTIONS, f"link to a missing heading #{anchor}"


#: A clause cited in code or prose: an upper-case ID (``[TS-EXCHANGE]``) or one of the
#: conformance kit's (``[pci-ins.refusal]``, ``[vcpu-set]``).
_CITED = re.compile(
    r"\[([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+"
    r"|(?:setup|startup|command|pci-ins|pci-rem|save|paused|continue|logdirty|loadvm|ts)"
    r"\.[a-z][a-z.-]*|vcpu-set)\]"
)


def test_every_clause_cited_in_the_repository_is_defined() -> None:
    defined = set(re.findall(r"\*\*\[([^\]]+)\]\*\*", DOC_TEXT))
    unknown = []
    for path in _files():
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for cited in _CITED.findall(line):
                if cited not in defined:
                    unknown.append(f"{path.relative_to(ROOT)}:{n}: [{cited}]")
    assert not unknown, f"clauses {DOC} does not define:\n" + "\n".join(unknown)
