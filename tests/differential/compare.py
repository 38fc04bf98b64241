"""Compare a candidate transcript with the reference (cx) one, applying documented overrides."""

from __future__ import annotations

from tests.differential.corpus import Case
from tests.differential.runner import Record, Transcript


def expected(case: Case, ref: Record, cand_kind: str) -> str:
    """The reply the candidate must give: cx's, unless the step documents a deliberate
    difference for our server."""
    step = case.all_steps()[ref.index]
    if cand_kind == "ours" and step.ours is not None:
        return step.ours
    return ref.reply


def differences(case: Case, ref: Transcript, cand: Transcript) -> list[str]:
    """Human-readable differences, one entry per differing step (empty if equal)."""
    out: list[str] = []
    for r, c in zip(ref.records, cand.records, strict=False):
        want = expected(case, r, cand.kind)
        if c.reply != want or c.events != r.events:
            lines = [f"step {r.index}: {r.step}"]
            if c.reply != want:
                lines += [f"    {ref.kind:>4}: {want}", f"    {cand.kind:>4}: {c.reply}"]
            if c.events != r.events:
                lines += [f"    {ref.kind:>4} events: {r.events}",
                          f"    {cand.kind:>4} events: {c.events}"]
            out.append("\n".join(lines))
    if len(ref.records) != len(cand.records):
        out.append(f"record count {len(ref.records)} != {len(cand.records)}")
    return out
