"""The whole protocol on the simulated host, as a story told step by step (``stubdom demo``).

`run_demo` starts a host of its own in ``OUT/host``, creates the example guest
(``examples/demo.cfg``) with its device-model stubdomain, waits for ``running``,
hot-plugs a second PCI function and unplugs it, unplugs the configured one (a saved
guest cannot keep passed-through functions), saves the guest to ``OUT/demo.save``,
restores it, destroys it and brings the host down, always, even after a failure.

Each step is echoed as it happens: what it did, the protocol nodes it made, its result
and how long it took.  The nodes of setting up a stubdomain are read back from xenstore
with their permissions; the writer of each is the one the protocol assigns it to
(docs/protocol.md#nodes).  The control channel's exchanges (``command``, ``parameter``,
``state``) are read from the host's xenstored packet trace (``host up --trace``), which
names the connection that wrote each node: dom0's or the stubdomain's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from stubdom import protocol as proto
from stubdom.host import supervisor
from stubdom.host.hypervisor import DomainInfo
from stubdom.host.rundir import RunDir, RunDirError
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.configure import load_config
from stubdom.toolstack.operations import create_guest
from stubdom.toolstack.pci import pci_attach, pci_detach, pci_list
from stubdom.toolstack.saverestore import restore_guest, save_guest
from stubdom.toolstack.session import Session, open_session
from stubdom.toolstack.spawn import destroy_guest
from stubdom.toolstack.specs import parse_pci
from stubdom.trace import Event, render_svg
from stubdom.trace.model import parse_lines
from stubdom.xenstore import NoEntry

#: The example guest (its disk images are in examples/images/).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo.cfg"
#: The second function hot-plugged during the story.
SECOND_PCI = "0000:04:00.0"
BACKENDS = ("sim", "qemu")
#: The control channel's nodes in ``device-model/<guest>``.
CONTROL_NODES = ("command", "parameter", "state")

Echo = Callable[[str], None]
ABSENT = "(absent)"
_T = TypeVar("_T")


class DemoError(Exception):
    """The demo could not run or a step failed; ``result`` holds the steps so far."""

    def __init__(self, message: str, result: DemoResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class NodeWrite:
    """A protocol node: who wrote it, its value and its permissions as read back."""

    writer: str
    path: str
    value: str
    perms: str = ""

    def line(self) -> str:
        if self.value == ABSENT:
            return f"{self.writer:<10} removed {self.path}"
        perms = f"  ({self.perms})" if self.perms else ""
        return f"{self.writer:<10} wrote {self.path} = {self.value!r}{perms}"


@dataclass
class Step:
    """One step of the story."""

    number: int
    name: str
    ok: bool = False
    result: str = ""
    seconds: float = 0.0
    nodes: list[NodeWrite] = field(default_factory=list)
    note: str = ""

    @property
    def node(self) -> str:
        """The step's main node (the stubdomain's last answer), for the summary table."""
        if not self.nodes:
            return "-"
        answers = [n for n in self.nodes if n.writer.startswith("stub")]
        last = (answers or self.nodes)[-1]
        leaf = last.path.rsplit("/", 1)[-1]
        return f"{last.writer}: {leaf} removed" if last.value == ABSENT else (
            f"{last.writer}: {leaf}={last.value}")


@dataclass
class DemoResult:
    """Every step and the files the demo produced."""

    out_dir: Path
    run_dir: Path
    backend: str
    steps: list[Step] = field(default_factory=list)
    save_file: Path | None = None
    trace: Path | None = None
    picture: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def table(self, width: int | None = None) -> str:
        """The summary, fitted to ``width`` columns (the terminal's by default): long
        cells wrap inside their column, nothing is cut."""
        from rich import box
        from rich.console import Console
        from rich.table import Table

        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        t.add_column("#", justify="right", no_wrap=True)
        t.add_column("step", no_wrap=True)
        t.add_column("last protocol node", overflow="fold", ratio=2)
        t.add_column("result", overflow="fold", ratio=3)
        t.add_column("time", justify="right", no_wrap=True)
        for st in self.steps:
            verdict = "ok: " if st.ok else "FAILED: "
            t.add_row(str(st.number), st.name, st.node, verdict + st.result, f"{st.seconds:.2f}s")
        out = io.StringIO()
        columns = width or shutil.get_terminal_size().columns
        Console(file=out, width=max(columns, 60), color_system=None, highlight=False).print(t)
        total = sum(st.seconds for st in self.steps)
        verdict = "all steps passed" if self.ok else "FAILED"
        lines = [line.rstrip() for line in out.getvalue().splitlines()]
        return "\n".join([*lines, f"{len(self.steps)} steps, {total:.2f}s, {verdict}"])


# -- the host, started and stopped as 'stubdom host up/down' do it -----------------------------


async def _supervise(action: Callable[[supervisor.Say], _T]) -> tuple[_T, list[str]]:
    """Run a supervisor action off the event loop (it waits for processes); its notes
    come back for the step's result, a failure as a `DemoError` with them."""
    notes: list[str] = []
    try:
        return await asyncio.to_thread(action, notes.append), notes
    except supervisor.SupervisorError as e:
        raise DemoError(" ".join([*notes, str(e)])) from None


def _host_up(run_dir: RunDir, trace: Path, xenstored: str) -> Callable[[Step], Awaitable[str]]:
    async def up(step: Step) -> str:
        started, notes = await _supervise(
            lambda say: supervisor.start(run_dir, str(trace), say=say, xenstored=xenstored))
        return " ".join([*notes, started.summary])

    return up


async def _host_down(story: _Story, run_dir: RunDir) -> None:
    """Stop the host, then check that no process and no runtime file is left."""

    async def down(step: Step) -> str:
        stopped, notes = await _supervise(lambda say: supervisor.stop(run_dir, say=say))
        if stopped.stray:
            raise DemoError(f"processes left using {run_dir.root}: {list(stopped.stray)}")
        left = [p.name for p in (*run_dir.pid_files(), *run_dir.sockets()) if p.exists()]
        if left:
            raise DemoError(f"runtime files left: {', '.join(left)}")
        return " ".join([*notes, stopped.summary]) + "; no process left"

    with contextlib.suppress(Exception):  # recorded as a failed step
        await story.step("host down", down)


# -- reading the protocol back ----------------------------------------------------------------


async def _node(s: Session, writer: str, path: str) -> NodeWrite:
    raw = await s.xs.read_optional(path)
    try:
        perms = ",".join(str(p) for p in await s.xs.get_perms(path))
    except NoEntry:
        raw = None
    if raw is None:
        return NodeWrite(writer, path, ABSENT)
    return NodeWrite(writer, path, raw.decode("utf-8", "replace"), perms)


async def _control_perms(s: Session, base: str) -> dict[str, str]:
    """The permissions of those control nodes that exist now."""
    nodes = [await _node(s, "", f"{base}/{leaf}") for leaf in CONTROL_NODES]
    return {n.path: n.perms for n in nodes if n.value != ABSENT}


def _traced_since(trace: Path, offset: int) -> list[Event]:
    """The lines xenstored traced after byte ``offset``: whole lines only, as it may be
    writing one at either end (one begun before ``offset`` is not ours)."""
    with open(trace, "rb") as f:
        f.seek(max(offset - 1, 0))
        data = f.read()
    if offset > 0:
        data = data[data.find(b"\n") + 1 :]
    whole = data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")
    return parse_lines(whole.splitlines(), str(trace))


def _control_write(ev: Event, perms: dict[str, str]) -> NodeWrite:
    """What one traced request did to a control node: a ``command`` the stubdomain
    removes is one it took."""
    assert ev.path is not None
    writer = "dom0" if ev.dom == 0 else f"stub d{ev.dom}"
    if ev.op == "RM":
        taken = ev.dom != 0 and ev.path.endswith("/command")
        return NodeWrite(writer, ev.path, "(taken: removed)" if taken else ABSENT)
    value = (ev.value or "").encode("latin-1").decode("utf-8", "replace")  # as traced
    return NodeWrite(writer, ev.path, value, perms.get(ev.path, "") if ev.dom != 0 else "")


@contextlib.asynccontextmanager
async def _control_channel(
    s: Session, trace: Path, stub: int, guest: int
) -> AsyncIterator[list[NodeWrite]]:
    """The control channel's writes made while in the block, in xenstored's order.

    They are read from the trace afterwards: its lines name the domain of the
    connection that wrote, dom0 or the stubdomain.  A stubdomain's write is shown with
    the node's permissions (a write keeps them), read back after the block, or before
    it for a node that went with the stubdomain (saving destroys it).
    """
    base = proto.dm_path(stub, guest)
    nodes = {f"{base}/{leaf}" for leaf in CONTROL_NODES}
    offset = trace.stat().st_size
    perms = await _control_perms(s, base)
    seen: list[NodeWrite] = []
    yield seen
    perms.update(await _control_perms(s, base))
    seen += [
        _control_write(ev, perms) for ev in _traced_since(trace, offset)
        if ev.op in ("WRITE", "RM") and ev.path in nodes and ev.error is None
    ]


# -- the story --------------------------------------------------------------------------------


def prepare_config(config: Path, backend: str) -> GuestConfig:
    """``config`` as `stubdom create` loads it (disk images relative to the file), with
    the device model the demo was asked for."""
    cfg = load_config(config)
    if backend == "qemu":
        cfg.stubdomain_cmdline = f"{cfg.stubdomain_cmdline} --dm=qemu".strip()
    return cfg


class _Named(NamedTuple):
    """A step of the story: its name, what it does, a note echoed before it."""

    name: str
    body: Callable[[Step], Awaitable[str]]
    note: str = ""


class _Story:
    def __init__(self, result: DemoResult, echo: Echo) -> None:
        self.result = result
        self.echo = echo

    async def step(
        self, name: str, body: Callable[[Step], Awaitable[str]], *, note: str = ""
    ) -> None:
        """Run one step; echo it; a failure is recorded, echoed and raised."""
        step = Step(len(self.result.steps) + 1, name, note=note)
        self.result.steps.append(step)
        if note:
            self.echo(f"      ({note})")
        start = time.monotonic()
        try:
            step.result = await body(step)
            step.ok = True
        except Exception as e:
            step.result = f"{type(e).__name__}: {e}" if not str(e) else str(e)
            raise
        finally:
            step.seconds = time.monotonic() - start
            mark = "ok" if step.ok else "FAILED"
            self.echo(f"[{step.number:2d}] {name:<22} {mark:<6} {step.seconds:6.2f}s  "
                      f"{step.result}")
            for n in step.nodes:
                self.echo(f"       {n.line()}")


class _Guest:
    """The guest of the story and its stubdomain, as the steps create, change and end them."""

    def __init__(self, s: Session, cfg: GuestConfig, result: DemoResult, trace: Path) -> None:
        self.s = s
        self.cfg = cfg
        self.result = result
        self.trace = trace
        self.save_file = result.out_dir / "demo.save"
        self.guest = -1
        self.stub = -1

    def steps(self) -> list[_Named]:
        """The story, in order."""
        second = SECOND_PCI[5:]
        why = "detach the passed-through functions: a saved guest cannot keep them"
        configured = [str(p.bdf) for p in self.cfg.pcis]
        return [
            _Named("create (stubdomain)", self.create),
            _Named("wait for running", self.running),
            _Named(f"pci-attach {second}", self.attach),
            _Named("pci-list", self.listing),
            _Named(f"pci-detach {second}", self.detach(SECOND_PCI)),
            *(_Named(f"pci-detach {bdf[5:]}", self.detach(bdf), why) for bdf in configured),
            _Named("save", self.save),
            _Named("restore", self.restore),
            _Named("destroy", self.destroy),
        ]

    def _channel(self) -> contextlib.AbstractAsyncContextManager[list[NodeWrite]]:
        return _control_channel(self.s, self.trace, self.stub, self.guest)

    async def _setup_nodes(self) -> list[NodeWrite]:
        """What dom0 wrote to set up the stubdomain, and its first ``state``."""
        s, guest, stub = self.s, self.guest, self.stub
        vm = (await s.xs.read(proto.vm_path_node(guest))).decode()
        return [
            await _node(s, "dom0", proto.dmargs_path(vm)),
            await _node(s, "dom0", proto.device_model_domid_path(guest)),
            await _node(s, "dom0", proto.target_path(stub)),
            await _node(s, f"stub d{stub}", proto.state_path(stub, guest)),
        ]

    async def create(self, step: Step) -> str:
        created = await create_guest(self.s, self.cfg)
        self.guest, self.stub = created.guest, created.stubdom
        step.nodes += await self._setup_nodes()
        return (f"guest {self.cfg.name} = domain {created.guest}, stubdomain "
                f"{proto.stubdom_name(self.cfg.name)} = domain {created.stubdom}")

    async def _wait_running(self) -> DomainInfo:
        """Until the device model says ``running`` and the guest is unpaused."""
        deadline = time.monotonic() + proto.STUBDOM_START_TIMEOUT
        while True:
            state = await self.s.xs.read_optional(proto.state_path(self.stub, self.guest))
            info = await self.s.hv.domain_info(self.guest)
            if state == proto.State.RUNNING.value.encode() and "p" not in info.state_letters:
                return info
            if time.monotonic() > deadline:
                raise DemoError(f"device model state {state!r}, guest {info.state_letters}")
            await asyncio.sleep(0.05)

    async def running(self, step: Step) -> str:
        info = await self._wait_running()
        stub, guest = self.stub, self.guest
        step.nodes.append(await _node(self.s, f"stub d{stub}", proto.state_path(stub, guest)))
        rows = await pci_list(self.s, guest)
        return (f"device model running, guest unpaused ({info.state_letters.strip('-')}); "
                f"PCI: {', '.join(r.row() for r in rows) or 'none'}")

    async def attach(self, step: Step) -> str:
        async with self._channel() as seen:
            done = await pci_attach(self.s, self.guest, parse_pci(SECOND_PCI))
        step.nodes += seen
        return "inserted " + ", ".join(f"{a.bdf} at slot {a.row().split()[0]}" for a in done)

    async def listing(self, step: Step) -> str:
        rows = await pci_list(self.s, self.guest)
        return "Vdev Device: " + "; ".join(r.row() for r in rows)

    def detach(self, bdf: str) -> Callable[[Step], Awaitable[str]]:
        async def body(step: Step) -> str:
            async with self._channel() as seen:
                await pci_detach(self.s, self.guest, proto.parse_bdf(bdf), force=False)
            step.nodes += seen
            left = await pci_list(self.s, self.guest)
            return f"removed {bdf}; left: {', '.join(str(a.bdf) for a in left) or 'none'}"

        return body

    async def save(self, step: Step) -> str:
        async with self._channel() as seen:
            size = await save_guest(self.s, self.guest, self.save_file)
        step.nodes += seen
        self.result.save_file = self.save_file
        names = [d.name for d in await self.s.domains()]
        return f"{size} bytes to {self.save_file.name}; domains left: {', '.join(names)}"

    async def restore(self, step: Step) -> str:
        created = await restore_guest(self.s, self.save_file)
        self.guest, self.stub = created.guest, created.stubdom
        step.nodes += await self._setup_nodes()
        return (f"guest = domain {created.guest}, stubdomain = domain {created.stubdom}, "
                "from the saved device-model state")

    async def destroy(self, step: Step) -> str:
        s = self.s
        await destroy_guest(s.hv, s.xs, self.guest, s.paths, channels=s.channels)
        names = [d.name for d in await s.domains()]
        if any(n.startswith(self.cfg.name) for n in names):
            raise DemoError(f"domains left after destroy: {', '.join(names)}")
        step.nodes.append(await _node(s, "dom0", proto.device_model_domid_path(self.guest)))
        return f"domains left: {', '.join(names) or 'Domain-0'}"


# -- the demo ---------------------------------------------------------------------------------


async def run_demo(
    out_dir: Path,
    backend: str = "sim",
    config: Path | None = None,
    echo: Echo = print,
    xenstored: str = "ours",
) -> DemoResult:
    """Run the story; raise `DemoError` (with the steps so far) if any step fails.

    Everything it makes lives in ``out_dir``: the host's run directory ``host/``, the
    disk images, the save file, the trace and its picture.  The host is brought down
    in every case.  ``xenstored`` is the host's: ours, cx or ox (traced alike).
    """
    result, run_dir, trace = _prepare(out_dir, backend)
    cfg = prepare_config(config or DEFAULT_CONFIG, backend)
    echo(f"stubdom demo: guest {cfg.name!r} from {config or DEFAULT_CONFIG}, "
         f"device model {backend}, xenstored {xenstored}, output in {result.out_dir}")
    story = _Story(result, echo)
    failure: Exception | None = None
    try:
        await story.step("host up", _host_up(run_dir, trace, xenstored))
        async with open_session(str(run_dir.root)) as s:
            for named in _Guest(s, cfg, result, trace).steps():
                await story.step(named.name, named.body, note=named.note)
    except Exception as e:
        failure = e
    finally:
        await _host_down(story, run_dir)
    _draw(result, trace)
    _report(result, echo)
    if not result.ok:
        raise DemoError(_what_failed(result, failure), result)
    return result


def _prepare(out_dir: Path, backend: str) -> tuple[DemoResult, RunDir, Path]:
    """The output directory, the host's run directory in it and a fresh trace's path."""
    if backend not in BACKENDS:
        raise DemoError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    out_dir = Path(os.path.abspath(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = RunDir.at(out_dir / "host")
    try:
        run_dir.check_socket_paths()
    except RunDirError as e:
        raise DemoError(f"output directory too deep for the host's sockets: {e}") from None
    trace = out_dir / "trace.jsonl"
    with contextlib.suppress(FileNotFoundError):
        trace.unlink()
    return DemoResult(out_dir, run_dir.root, backend, trace=trace), run_dir, trace


def _draw(result: DemoResult, trace: Path) -> None:
    """The trace as a picture; one that cannot be drawn is a note, not a failed demo."""
    if not trace.exists():
        return
    picture = result.out_dir / "trace.svg"
    try:
        render_svg(trace, picture)
    except Exception as e:
        result.notes.append(f"the picture could not be drawn: {e}")
    else:
        result.picture = picture


def _report(result: DemoResult, echo: Echo) -> None:
    for n in result.notes:
        echo(f"note: {n}")
    echo("")
    echo(result.table())
    if result.trace is not None:
        echo(f"trace: {result.trace}")
    if result.picture is not None:
        echo(f"picture: {result.picture}")


def _what_failed(result: DemoResult, failure: Exception | None) -> str:
    failed = next((st for st in result.steps if not st.ok), None)
    if failed is None:
        return f"the demo failed: {failure}"
    return f"step {failed.number} ({failed.name}) failed: {failed.result}"
