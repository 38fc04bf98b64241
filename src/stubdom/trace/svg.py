"""A hand-written SVG sequence diagram of a trace: one lane per domain and xenstored."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from stubdom.trace.model import Event, load_trace
from stubdom.trace.protocol_steps import Analysis, Step, analyse, is_protocol_path

log = logging.getLogger(__name__)

XS = -1  # the xenstored lane's key
ROW = 22
HEAD = 110
LEFT = 340
LANE_GAP = 380
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
CHAR_W = 6.7  # at font-size 11

COLOURS = {
    "write": "#1f5fbf",
    "read": "#9a9a9a",
    "event": "#2e8b57",
    "error": "#c62828",
    "other": "#7b5ea7",
}
STEP_COLOURS = {
    "setup": "#e3ecfa",
    "running": "#d7f2dc",
    "command": "#ffe6c7",
    "parameter": "#f1f1f1",
    "result": "#d7f2dc",
    "failure": "#fbd4d4",
}


@dataclass
class Row:
    t: float
    src: int
    dst: int
    style: str  # write | read | event | error | other
    label: str
    step: Step | None = None
    #: A summary of collapsed rows: cut its label at the end, not the start.
    summary: bool = False


def _short_path(path: str, dom: int) -> str:
    home = f"/local/domain/{dom}/"
    return path[len(home) :] if dom != 0 and path.startswith(home) else path


def _fit(text: str, width: float, keep_end: bool = True) -> str:
    n = max(8, int(width / CHAR_W))
    if len(text) <= n:
        return text
    return "…" + text[-(n - 1) :] if keep_end else text[: n - 1] + "…"


def _label(ev: Event) -> str:
    path = _short_path(ev.path or "", ev.dom) if ev.path else " ".join(ev.args)
    if ev.kind == "event":
        return f"⚡ {path}"
    if ev.op == "WRITE":
        value = (ev.value or "").replace("\0", " ")
        return f"{path} = {value!r}" if value else f"{path}"
    if ev.kind == "read":
        reply = f" → {ev.reply!r}" if ev.reply is not None and ev.error is None else ""
        return f"{ev.op} {path}{reply}"
    return f"{ev.op} {path}"


def _style(ev: Event) -> str:
    if ev.error is not None:
        return "error"
    return ev.kind if ev.kind in ("write", "read", "event") else "other"


def _row(ev: Event, step: Step | None) -> Row:
    style = _style(ev)
    label = _label(ev)
    if ev.error is not None:
        label += f"  ✗ {ev.error}"
    if ev.kind == "event":
        return Row(ev.t, XS, ev.dom, "event", label, step)
    return Row(ev.t, ev.dom, XS, style, label, step)


def select_rows(events: Sequence[Event], a: Analysis, all_events: bool = False) -> list[Row]:
    """The rows to draw: protocol writes and events (and steps), or everything with
    runs of uninteresting traffic of one domain collapsed into one row."""
    steps = {s.event.index: s for s in a.steps}
    rows: list[Row] = []
    run: list[Event] = []
    fresh: set[tuple[int, str]] = set()  # watches whose first (registration) event is due

    def flush() -> None:
        if not run:
            return
        if len(run) < 3:
            rows.extend(_row(e, None) for e in run)
        else:
            ops: dict[str, int] = {}
            for e in run:
                ops[e.op] = ops.get(e.op, 0) + 1
            first = run[0]
            if first.kind == "event":
                rows.append(
                    Row(first.t, XS, first.dom, "event", f"{len(run)} watch events", None, True)
                )
            else:
                summary = ", ".join(
                    f"{n} {op}" for op, n in sorted(ops.items(), key=lambda x: -x[1])
                )
                label = f"{len(run)} requests: {summary}"
                rows.append(Row(first.t, first.dom, XS, "other", label, None, True))
        run.clear()

    for ev in events:
        step = steps.get(ev.index)
        initial = False
        if ev.op == "WATCH" and ev.token is not None:
            fresh.add((ev.conn, ev.token))
        elif ev.kind == "event" and ev.token is not None and (ev.conn, ev.token) in fresh:
            fresh.discard((ev.conn, ev.token))
            initial = True  # xenstored fires every new watch once: not news
        interesting = step is not None or (
            ev.kind in ("write", "event")
            and is_protocol_path(ev.path)
            and ev.op != "SET_PERMS"
            and not initial
        )
        if interesting:
            if all_events:
                flush()
            rows.append(_row(ev, step))
        elif all_events:
            if run and (run[-1].dom, run[-1].kind == "event") != (ev.dom, ev.kind == "event"):
                flush()
            run.append(ev)
    flush()
    return rows


def _lanes(events: Sequence[Event], a: Analysis) -> list[tuple[int, str]]:
    doms = sorted({e.dom for e in events} | set(a.stubdoms))
    lanes: list[tuple[int, str]] = [(0, "dom0 · toolstack")] if 0 in doms else []
    lanes.append((XS, "xenstored"))
    for d in doms:
        if d == 0:
            continue
        if d in a.stubdoms:
            lanes.append((d, f"dom{d} · stubdomain of dom{a.stubdoms[d]}"))
        else:
            lanes.append((d, f"dom{d}"))
    return lanes


@dataclass(frozen=True)
class _Canvas:
    """The diagram's geometry: each lane's x, the size, and the time rows count from."""

    x_of: dict[int, int]
    width: int
    height: int
    start: float


def render(events: Sequence[Event], title: str = "xenstore trace", all_events: bool = False) -> str:
    """The SVG text of the sequence diagram of ``events``."""
    a = analyse(events)
    rows = select_rows(events, a, all_events)
    lanes = _lanes(events, a)
    c = _Canvas(
        x_of={key: LEFT + 90 + i * LANE_GAP for i, (key, _) in enumerate(lanes)},
        width=LEFT + 90 + (len(lanes) - 1) * LANE_GAP + 300,
        height=HEAD + (len(rows) + 1) * ROW + 40,
        start=min((e.t for e in events), default=0.0),
    )
    out = _open_svg(c)
    out += _titles(events, a, len(rows), title, all_events, c.start)
    out += _legend()
    out += _lane_heads(lanes, c)
    for i, r in enumerate(rows):
        out += _row_svg(r, HEAD + (i + 1) * ROW, c)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _open_svg(c: _Canvas) -> list[str]:
    """The ``<svg>`` element, an arrowhead marker per colour and the white background."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{c.width}" height="{c.height}" '
        f'viewBox="0 0 {c.width} {c.height}" font-family="{FONT}" font-size="11">',
        "<defs>",
    ]
    for name, colour in COLOURS.items():
        out.append(
            f'<marker id="arrow-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{colour}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<rect width="{c.width}" height="{c.height}" fill="#ffffff"/>')
    return out


def _titles(
    events: Sequence[Event], a: Analysis, shown: int, title: str, all_events: bool, start: float
) -> list[str]:
    n_cmd = sum(1 for s in a.steps if s.kind == "command")
    dur = (max(e.t for e in events) - start) if events else 0.0
    subtitle = (
        f"{len(events)} requests/events over {dur:.3f} s · {shown} shown"
        f"{'' if all_events else ' (protocol writes and watch events; --all for everything)'}"
        f" · {len(a.stubdoms)} stubdomain(s) · {n_cmd} command(s)"
    )
    return [
        f'<text x="20" y="30" font-size="18" font-weight="bold" fill="#222">{escape(title)}</text>',
        f'<text x="20" y="50" fill="#555">{escape(subtitle)}</text>',
    ]


def _legend() -> list[str]:
    out: list[str] = []
    lx = 20
    for style, text, dash in (
        ("write", "write", ""),
        ("read", "read", ""),
        ("event", "watch event", ' stroke-dasharray="6,4"'),
        ("error", "error reply", ""),
    ):
        colour = COLOURS[style]
        sw = 1.0 if style == "read" else 2.0
        out.append(
            f'<line x1="{lx}" y1="70" x2="{lx + 40}" y2="70" stroke="{colour}" stroke-width="{sw}"'
            f'{dash} marker-end="url(#arrow-{style})"/>'
        )
        out.append(f'<text x="{lx + 48}" y="74" fill="#333">{text}</text>')
        lx += 150
    return out


def _lane_heads(lanes: list[tuple[int, str]], c: _Canvas) -> list[str]:
    """Each lane's line and name box, and the headings of the two left columns."""
    out: list[str] = []
    top, bottom = HEAD - 14, c.height - 30
    for key, name in lanes:
        x = c.x_of[key]
        fill = "#444" if key == XS else ("#1f5fbf" if key == 0 else "#2e8b57")
        out.append(
            f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#ccc" stroke-width="2"/>'
        )
        bw = max(110, len(name) * 7.5 + 20)
        out.append(
            f'<rect x="{x - bw / 2}" y="{top - 20}" width="{bw}" height="24" rx="5" fill="{fill}"/>'
        )
        out.append(
            f'<text x="{x}" y="{top - 4}" fill="#fff" text-anchor="middle" font-weight="bold">'
            f"{escape(name)}</text>"
        )
    out.append(f'<text x="20" y="{top - 4}" fill="#777">time (s)</text>')
    out.append(f'<text x="90" y="{top - 4}" fill="#777">protocol step</text>')
    return out


def _row_svg(r: Row, y: int, c: _Canvas) -> list[str]:
    """A row whose baseline is ``y``: its step's label, its time, and its arrow."""
    out = _step_cell(r.step, y, c.width) if r.step is not None else []
    out.append(f'<text x="20" y="{y - 4}" fill="#888">{r.t - c.start:7.3f}</text>')
    if r.src in c.x_of and r.dst in c.x_of:
        out += _arrow(r, c.x_of[r.src], c.x_of[r.dst], y - 8)
    return out


def _step_cell(s: Step, y: int, width: int) -> list[str]:
    """The step's label box; a command, its answer and ``running`` shade the whole row."""
    out: list[str] = []
    bg = STEP_COLOURS.get(s.kind, "#eee")
    if s.kind in ("command", "running", "result", "failure"):
        out.append(
            f'<rect x="84" y="{y - ROW + 5}" width="{width - 100}" height="{ROW - 2}" '
            f'fill="{bg}" opacity="0.45"/>'
        )
    out.append(
        f'<rect x="84" y="{y - ROW + 5}" width="{LEFT - 100}" height="{ROW - 2}" rx="4" '
        f'fill="{bg}"/>'
    )
    weight = ' font-weight="bold"' if s.kind in ("command", "running") else ""
    out.append(
        f'<text x="92" y="{y - 4}" fill="#222"{weight}>'
        f"{escape(_fit(s.label, LEFT - 116, keep_end=False))}</text>"
    )
    return out


def _arrow(r: Row, x1: int, x2: int, ly: int) -> list[str]:
    """The request's (or event's) arrow between two lanes at height ``ly``, labelled."""
    colour = COLOURS[r.style]
    sw = 1.0 if r.style == "read" else 2.0 if r.style != "other" else 1.5
    dash = ' stroke-dasharray="6,4"' if r.style == "event" else ""
    span = abs(x2 - x1) - 30
    lx = min(x1, x2) + (20 if x2 < x1 else 8)
    text_colour = "#c62828" if r.style == "error" else "#222"
    return [
        f'<line x1="{x1}" y1="{ly}" x2="{x2 - 4 if x2 > x1 else x2 + 4}" y2="{ly}" '
        f'stroke="{colour}" stroke-width="{sw}"{dash} marker-end="url(#arrow-{r.style})"/>',
        f'<text x="{lx}" y="{ly - 3}" fill="{text_colour}" font-size="11">'
        f"{escape(_fit(r.label, span, keep_end=not r.summary))}</text>",
    ]


def render_svg(
    trace_path: Path, out: Path, all_events: bool = False, events: list[Event] | None = None
) -> None:
    """Draw the trace in ``trace_path`` (read already: ``events``) as an SVG into ``out``."""
    if events is None:
        events = load_trace(trace_path)
    svg = render(events, title=f"stubdom trace · {Path(trace_path).name}", all_events=all_events)
    Path(out).write_text(svg, encoding="utf-8")
    log.info("wrote %s (%d events)", out, len(events))
