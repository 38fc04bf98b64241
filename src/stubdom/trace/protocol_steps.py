"""Protocol steps recognised in a trace: setup, ``running``, commands and their results."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from stubdom import protocol as proto
from stubdom.trace.model import Event

_DM = re.compile(r"/local/domain/(\d+)/device-model/(\d+)(?:/(.+))?\Z")
_TARGET = re.compile(r"/local/domain/(\d+)/target\Z")
_DM_DOMID = re.compile(r"/local/domain/(\d+)/image/device-model-domid\Z")
_DMARGS = re.compile(r"/vm/[^/]+/image/dmargs\Z")


@dataclass
class Step:
    """One labelled protocol step; ``event`` is the event that made it."""

    t: float
    kind: str  # setup | running | command | result | parameter | failure
    label: str
    event: Event
    stubdom: int | None = None
    guest: int | None = None


@dataclass
class Analysis:
    steps: list[Step] = field(default_factory=list)
    #: stubdomain domid -> guest domid, from ``target`` (and device-model-domid).
    stubdoms: dict[int, int] = field(default_factory=dict)


def parse_dm_path(path: str) -> tuple[int, int, str] | None:
    """(stubdom, guest, node) of a path in a device-model control directory."""
    m = _DM.match(path)
    if not m:
        return None
    s, g, node = int(m[1]), int(m[2]), m[3] or ""
    return (s, g, node) if proto.dm_path(s, g, node) == path else None


def is_protocol_path(path: str | None) -> bool:
    """Paths the toolstack <-> stubdomain protocol uses."""
    if not path:
        return False
    return bool(
        parse_dm_path(path)
        or _TARGET.match(path)
        or _DM_DOMID.match(path)
        or _DMARGS.search(path)
        or path == proto.RELEASE_DOMAIN
    )


def _short(v: str, n: int = 40) -> str:
    return v if len(v) <= n else v[: n - 1] + "…"


def analyse(events: Sequence[Event]) -> Analysis:
    """The protocol steps of ``events`` (requests that failed are ignored)."""
    a = Analysis()
    waiting: dict[tuple[int, int], Step] = {}  # (stubdom, guest) -> command without result
    running_seen: set[tuple[int, int]] = set()
    for ev in events:
        if ev.op not in ("WRITE", "MKDIR") or ev.path is None or ev.error is not None:
            continue
        path, value = ev.path, ev.value or ""
        if _DMARGS.search(path) and value:
            a.steps.append(Step(ev.t, "setup", f"setup: dmargs ({len(value.split())} args)", ev))
            continue
        m = _TARGET.match(path)
        if m and value.isdigit():
            s, g = int(m[1]), int(value)
            a.stubdoms[s] = g
            a.steps.append(Step(ev.t, "setup", f"setup: dom{s} is stubdom of dom{g}", ev, s, g))
            continue
        m = _DM_DOMID.match(path)
        if m and value.isdigit():
            g, s = int(m[1]), int(value)
            a.stubdoms.setdefault(s, g)
            a.steps.append(Step(ev.t, "setup", f"setup: device-model-domid {s}", ev, s, g))
            continue
        dm = parse_dm_path(path)
        if dm is None:
            continue
        s, g, node = dm
        key = (s, g)
        if node == "" and ev.dom != s:
            a.steps.append(Step(ev.t, "setup", f"setup: device-model/{g} dir", ev, s, g))
        elif node == "command" and ev.dom != s and value:
            cmd = proto.qemu_trad_dispatch(value)
            step = Step(ev.t, "command", f"command: {value}", ev, s, g)
            if cmd is None:
                step.label += " (unknown)"
            a.steps.append(step)
            waiting[key] = step
        elif node == "parameter" and ev.dom != s:
            a.steps.append(Step(ev.t, "parameter", f"parameter: {_short(value)}", ev, s, g))
        elif node == "parameter" and ev.dom == s:
            a.steps.append(Step(ev.t, "parameter", f"→ parameter {_short(value)}", ev, s, g))
        elif node == "state" and ev.dom == s:
            cmd_step = waiting.pop(key, None)
            failed = value in {st.value for st in proto.FAILURE_STATES}
            if cmd_step is None and value == proto.State.RUNNING and key not in running_seen:
                running_seen.add(key)
                a.steps.append(Step(ev.t, "running", f"dom{s} running", ev, s, g))
            elif cmd_step is not None:
                kind = "failure" if failed else "result"
                label = f"→ {value} ({cmd_step.label.removeprefix('command: ')})"
                a.steps.append(Step(ev.t, kind, label, ev, s, g))
            else:
                a.steps.append(
                    Step(ev.t, "failure" if failed else "result", f"state {value}", ev, s, g)
                )
        elif node.startswith("logdirty/"):
            a.steps.append(Step(ev.t, "command", f"{node}: {value}", ev, s, g))
    return a
