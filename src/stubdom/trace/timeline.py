"""Filtering events and printing them as a readable timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stubdom.trace.model import Event
from stubdom.trace.protocol_steps import analyse


@dataclass(frozen=True)
class Filter:
    """Which events to keep; ``since``/``until`` are seconds from the trace's start."""

    domain: int | None = None
    path: str | None = None
    since: float | None = None
    until: float | None = None

    def keep(self, ev: Event, start: float) -> bool:
        if self.domain is not None and ev.dom != self.domain:
            return False
        if self.path is not None and not (ev.path or "").startswith(self.path):
            return False
        rel = ev.t - start
        if self.since is not None and rel < self.since:
            return False
        return not (self.until is not None and rel > self.until)


def start_time(events: Sequence[Event]) -> float:
    return min((e.t for e in events), default=0.0)


def filter_events(events: Sequence[Event], flt: Filter) -> list[Event]:
    start = start_time(events)
    return [e for e in events if flt.keep(e, start)]


def _show(v: str, n: int = 60) -> str:
    v = v.replace("\0", "\\0")
    return repr(v if len(v) <= n else v[: n - 1] + "…")


def format_event(ev: Event, start: float) -> str:
    """One line: time, domain#connection, request, arguments and reply."""
    who = f"dom{ev.dom}#{ev.conn}"
    tx = f" tx{ev.tx_id}" if ev.tx_id else ""
    if ev.kind == "event":
        body = f"<- EVENT {ev.path} [{ev.token}]"
    else:
        if ev.op == "WRITE":
            args = f"{ev.path} = {_show(ev.value or '')}"
        elif ev.path is not None:
            args = " ".join([ev.path, *ev.args[1:]])
        else:
            args = " ".join(ev.args)
        reply = ""
        if ev.error is not None:
            reply = f"  -> ERROR {ev.error}"
        elif ev.reply is not None and ev.op not in (
            "WRITE",
            "MKDIR",
            "RM",
            "SET_PERMS",
            "WATCH",
            "UNWATCH",
        ):
            reply = f"  -> {_show(ev.reply)}"
        elif ev.reply_type is None:
            reply = "  (no reply)"
        body = f"{ev.op}{tx} {args}{reply}"
    return f"{ev.t - start:+11.6f}  {who:<9} {body}"


def render_text(events: Sequence[Event], flt: Filter | None = None, steps: bool = True) -> str:
    """The timeline of ``events`` (filtered), with protocol steps marked ``==``."""
    start = start_time(events)
    marks = {}
    if steps:
        marks = {s.event.index: s.label for s in analyse(events).steps}
    lines = []
    for ev in events:
        if flt is not None and not flt.keep(ev, start):
            continue
        if ev.index in marks:
            lines.append(f"{'':13}== {marks[ev.index]}")
        lines.append(format_event(ev, start))
    return "\n".join(lines) + ("\n" if lines else "")
