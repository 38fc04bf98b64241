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
    channels = _Channels(a)
    for ev in events:
        if ev.op not in ("WRITE", "MKDIR") or ev.path is None or ev.error is not None:
            continue
        path, value = ev.path, ev.value or ""
        if _setup(a, ev, path, value):
            continue
        dm = parse_dm_path(path)
        if dm is not None:
            channels.write(ev, *dm, value)
    return a


def _setup(a: Analysis, ev: Event, path: str, value: str) -> bool:
    """Record a write of the toolstack's setup (dmargs, target, device-model-domid);
    False if ``path`` is none of them."""
    if _DMARGS.search(path) and value:
        a.steps.append(Step(ev.t, "setup", f"setup: dmargs ({len(value.split())} args)", ev))
        return True
    m = _TARGET.match(path)
    if m and value.isdigit():
        s, g = int(m[1]), int(value)
        a.stubdoms[s] = g
        a.steps.append(Step(ev.t, "setup", f"setup: dom{s} is stubdom of dom{g}", ev, s, g))
        return True
    m = _DM_DOMID.match(path)
    if m and value.isdigit():
        g, s = int(m[1]), int(value)
        a.stubdoms.setdefault(s, g)
        a.steps.append(Step(ev.t, "setup", f"setup: device-model-domid {s}", ev, s, g))
        return True
    return False


class _Channels:
    """Writes in the control directories, pairing each command with the state that
    answers it."""

    def __init__(self, a: Analysis) -> None:
        self.a = a
        self.waiting: dict[tuple[int, int], Step] = {}  # command without result
        self.running_seen: set[tuple[int, int]] = set()

    def write(self, ev: Event, s: int, g: int, node: str, value: str) -> None:
        if node.startswith("logdirty/"):
            self.a.steps.append(Step(ev.t, "command", f"{node}: {value}", ev, s, g))
        elif ev.dom == s:
            self._from_stubdom(ev, s, g, node, value)
        else:
            self._from_toolstack(ev, s, g, node, value)

    def _from_toolstack(self, ev: Event, s: int, g: int, node: str, value: str) -> None:
        if node == "":
            self.a.steps.append(Step(ev.t, "setup", f"setup: device-model/{g} dir", ev, s, g))
        elif node == "command" and value:
            step = Step(ev.t, "command", f"command: {value}", ev, s, g)
            if proto.qemu_trad_dispatch(value) is None:
                step.label += " (unknown)"
            self.a.steps.append(step)
            self.waiting[(s, g)] = step
        elif node == "parameter":
            self.a.steps.append(Step(ev.t, "parameter", f"parameter: {_short(value)}", ev, s, g))

    def _from_stubdom(self, ev: Event, s: int, g: int, node: str, value: str) -> None:
        if node == "parameter":
            self.a.steps.append(Step(ev.t, "parameter", f"→ parameter {_short(value)}", ev, s, g))
        elif node == "state":
            self.a.steps.append(self._state(ev, s, g, value))

    def _state(self, ev: Event, s: int, g: int, value: str) -> Step:
        """A command's result, the first ``running``, or a state nobody asked for."""
        key = (s, g)
        cmd_step = self.waiting.pop(key, None)
        failed = value in {st.value for st in proto.FAILURE_STATES}
        if cmd_step is None and value == proto.State.RUNNING and key not in self.running_seen:
            self.running_seen.add(key)
            return Step(ev.t, "running", f"dom{s} running", ev, s, g)
        if cmd_step is not None:
            label = f"→ {value} ({cmd_step.label.removeprefix('command: ')})"
            return Step(ev.t, "failure" if failed else "result", label, ev, s, g)
        return Step(ev.t, "failure" if failed else "result", f"state {value}", ev, s, g)
