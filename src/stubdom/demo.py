"""The whole protocol on the simulated host, as a story told step by step (``stubdom demo``).

`run_demo` starts a host of its own in ``OUT/host``, creates the example guest
(``examples/demo.cfg``) with its device-model stubdomain, waits for ``running``,
hot-plugs a second PCI function and unplugs it, unplugs the configured one (a saved
guest cannot keep passed-through functions), saves the guest to ``OUT/demo.save``,
restores it, destroys it and brings the host down, always, even after a failure.

Each step is echoed as it happens: what it did, the protocol nodes it made (who wrote
them, their value and permissions read back from xenstore; for the control channel,
the writes seen by a watch while the exchange ran), its result and how long it took.
The writer of a node is the one the protocol assigns it to (docs/protocol.md#nodes): dom0
writes dmargs, ``command`` and a request's ``parameter``; the stubdomain writes
``state`` and the ``parameter`` of its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stubdom import protocol as proto
from stubdom.host.rundir import RunDir, processes_using
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.session import Session, open_session
from stubdom.xenstore import Client, NoEntry, XenStoreTimeout

#: The example guest (its disk images are in examples/images/).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo.cfg"
#: The second function hot-plugged during the story.
SECOND_PCI = "0000:04:00.0"
BACKENDS = ("sim", "qemu")
#: Failure guard for the host's own commands (never a timing assertion).
HOST_COMMAND_TIMEOUT = 120.0

Echo = Callable[[str], None]
ABSENT = "(absent)"


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


# -- the host, as a user starts and stops it ------------------------------------------------


def _stubdom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stubdom", *args],
        capture_output=True, text=True, timeout=HOST_COMMAND_TIMEOUT, check=False,
        stdin=subprocess.DEVNULL,
    )


def _host_up_takes_trace() -> bool:
    return "--trace" in _stubdom("host", "up", "--help").stdout


def _renderer() -> Callable[[Path, Path], object] | None:
    try:
        from stubdom.trace import render_svg  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return render_svg  # type: ignore[no-any-return,unused-ignore]


def _host_lines(proc: subprocess.CompletedProcess[str]) -> str:
    return " ".join(
        ln.removeprefix("stubdom host: ").strip()
        for ln in (proc.stderr + proc.stdout).splitlines()
        if ln.strip() and not ln.startswith("export ")
    )


# -- reading the protocol back ----------------------------------------------------------------


async def _node(s: Session | Client, writer: str, path: str) -> NodeWrite:
    xs = s.xs if isinstance(s, Session) else s
    raw = await xs.read_optional(path)
    try:
        perms = ",".join(str(p) for p in await xs.get_perms(path))
    except NoEntry:
        raw = None
    if raw is None:
        return NodeWrite(writer, path, ABSENT)
    return NodeWrite(writer, path, raw.decode("utf-8", "replace"), perms)


@contextlib.asynccontextmanager
async def _watching(s: Session, stub: int, guest: int) -> AsyncIterator[list[NodeWrite]]:
    """Record the control channel's writes (command, parameter, state) while in the block.

    A second dom0 connection watches ``device-model/<G>``; xenstored orders its events
    as the writes happened.  The session's writes are recorded as dom0 makes them, and
    before each one the events so far are taken in: an event on a node dom0 has a
    pending write for is dom0's, any other is the stubdomain's, whose value is read
    back then (it cannot change before dom0 acts again).  A ``command`` that is gone
    was taken by the stubdomain.
    """
    seen: list[NodeWrite] = []
    base = proto.dm_path(stub, guest)
    stub_name = f"stub d{stub}"
    written: dict[str, list[str]] = {}
    original = s.xs.write
    xs = await Client.connect(str(s.run_dir.xenstored_socket))
    try:
        async with xs.watch(base) as w:
            await w.next_event(None)  # the watch being set

            async def drain() -> None:
                await xs.read_optional(base)  # events sent before this answer are queued
                while True:
                    try:
                        ev = await w.next_event(0)
                    except XenStoreTimeout:
                        return
                    if ev is None:
                        return
                    leaf = ev.path.removeprefix(base + "/")
                    if leaf not in ("command", "parameter", "state"):
                        continue
                    if written.get(ev.path):
                        seen.append(NodeWrite("dom0", ev.path, written[ev.path].pop(0)))
                        continue
                    node = await _node(xs, stub_name, ev.path)
                    if leaf == "command" and node.value == ABSENT:
                        node = NodeWrite(stub_name, ev.path, "(taken: removed)")
                    seen.append(node)

            async def write(path: str, value: str | bytes, **kw: Any) -> None:
                await drain()
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                written.setdefault(path, []).append(text)
                await original(path, value, **kw)

            def drained_first(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
                async def call(*args: Any, **kw: Any) -> Any:
                    await drain()  # e.g. destroying the stubdomain removes its nodes
                    return await fn(*args, **kw)

                return call

            patched = [(s.xs, "write", write), (s.xs, "rm", drained_first(s.xs.rm)),
                       (s.hv, "pause", drained_first(s.hv.pause))]
            for obj, name, fn in patched:
                setattr(obj, name, fn)
            try:
                yield seen
            finally:
                for obj, name, _ in patched:
                    with contextlib.suppress(AttributeError):
                        delattr(obj, name)
            await drain()
    finally:
        await xs.close()


# -- the story --------------------------------------------------------------------------------


def prepare_config(config: Path, backend: str) -> GuestConfig:
    """``config`` as `stubdom create` loads it (disk images relative to the file), with
    the device model the demo was asked for."""
    from stubdom.toolstack.configure import load_config

    cfg = load_config(config)
    if backend == "qemu":
        cfg.stubdomain_cmdline = f"{cfg.stubdomain_cmdline} --dm=qemu".strip()
    return cfg


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


async def run_demo(
    out_dir: Path,
    backend: str = "sim",
    config: Path | None = None,
    echo: Echo = print,
) -> DemoResult:
    """Run the story; raise `DemoError` (with the steps so far) if any step fails.

    Everything it makes lives in ``out_dir``: the host's run directory ``host/``, the
    disk images, the save file, the trace and its picture.  The host is brought down
    in every case.
    """
    if backend not in BACKENDS:
        raise DemoError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    out_dir = Path(os.path.abspath(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = RunDir.at(out_dir / "host")
    try:
        run_dir.check_socket_paths()
    except Exception as e:
        raise DemoError(f"output directory too deep for the host's sockets: {e}") from None
    result = DemoResult(out_dir, run_dir.root, backend)
    story = _Story(result, echo)
    cfg = prepare_config(config or DEFAULT_CONFIG, backend)
    echo(f"stubdom demo: guest {cfg.name!r} from {config or DEFAULT_CONFIG}, "
         f"device model {backend}, output in {out_dir}")

    trace = out_dir / "trace.jsonl"
    host_args = ["host", "up", "--dir", str(run_dir.root)]
    if _host_up_takes_trace():
        with contextlib.suppress(FileNotFoundError):
            trace.unlink()
        host_args += ["--trace", str(trace)]
        result.trace = trace
    else:
        result.notes.append("'stubdom host up' has no --trace here: no trace, no picture")

    async def host_up(step: Step) -> str:
        r = _stubdom(*host_args)
        if r.returncode != 0:
            raise DemoError(_host_lines(r) or f"'stubdom host up' exited {r.returncode}")
        return _host_lines(r)

    failure: BaseException | None = None
    try:
        await story.step("host up", host_up)
        async with open_session(str(run_dir.root)) as s:
            await _guest_story(story, s, cfg, run_dir, out_dir)
    except Exception as e:
        failure = e
    finally:
        await _host_down(story, run_dir)
    if result.trace is not None and result.trace.exists():
        render = _renderer()
        if render is None:
            result.notes.append("no trace renderer (stubdom.trace.render_svg): no picture")
        else:
            picture = out_dir / "trace.svg"
            try:
                render(result.trace, picture)
                result.picture = picture
            except Exception as e:
                result.notes.append(f"the picture could not be drawn: {e}")
    for n in result.notes:
        echo(f"note: {n}")
    echo("")
    echo(result.table())
    if result.trace is not None:
        echo(f"trace: {result.trace}")
    if result.picture is not None:
        echo(f"picture: {result.picture}")
    if not result.ok:
        failed = next((st for st in result.steps if not st.ok), None)
        what = f"step {failed.number} ({failed.name}) failed: {failed.result}" if failed else (
            f"the demo failed: {failure}")
        raise DemoError(what, result)
    return result


async def _guest_story(
    story: _Story, s: Session, cfg: GuestConfig, run_dir: RunDir, out_dir: Path
) -> None:
    from stubdom.toolstack.operations import create_guest
    from stubdom.toolstack.pci import pci_attach, pci_detach, pci_list
    from stubdom.toolstack.saverestore import restore_guest, save_guest
    from stubdom.toolstack.spawn import destroy_guest
    from stubdom.toolstack.specs import parse_pci

    ids = {"guest": -1, "stub": -1}
    save_file = out_dir / "demo.save"

    async def created_nodes(step: Step, guest: int, stub: int) -> None:
        vm = (await s.xs.read(proto.vm_path_node(guest))).decode()
        step.nodes += [
            await _node(s, "dom0", proto.dmargs_path(vm)),
            await _node(s, "dom0", proto.device_model_domid_path(guest)),
            await _node(s, "dom0", proto.target_path(stub)),
            await _node(s, f"stub d{stub}", proto.state_path(stub, guest)),
        ]

    async def create(step: Step) -> str:
        created = await create_guest(s, cfg)
        ids["guest"], ids["stub"] = created.guest, created.stubdom
        await created_nodes(step, created.guest, created.stubdom)
        return (f"guest {cfg.name} = domain {created.guest}, stubdomain "
                f"{proto.stubdom_name(cfg.name)} = domain {created.stubdom}")

    async def running(step: Step) -> str:
        guest, stub = ids["guest"], ids["stub"]
        deadline = time.monotonic() + proto.STUBDOM_START_TIMEOUT
        while True:
            state = await s.xs.read_optional(proto.state_path(stub, guest))
            info = await s.hv.domain_info(guest)
            if state == proto.State.RUNNING.value.encode() and "p" not in info.state_letters:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"device model state {state!r}, guest {info.state_letters}")
            await asyncio.sleep(0.05)
        step.nodes.append(await _node(s, f"stub d{stub}", proto.state_path(stub, guest)))
        rows = await pci_list(s, guest)
        return (f"device model running, guest unpaused ({info.state_letters.strip('-')}); "
                f"PCI: {', '.join(r.row() for r in rows) or 'none'}")

    async def attach(step: Step) -> str:
        guest, stub = ids["guest"], ids["stub"]
        async with _watching(s, stub, guest) as seen:
            done = await pci_attach(s, guest, parse_pci(SECOND_PCI))
        step.nodes += seen
        return "inserted " + ", ".join(f"{a.bdf} at slot {a.row().split()[0]}" for a in done)

    async def listing(step: Step) -> str:
        rows = await pci_list(s, ids["guest"])
        return "Vdev Device: " + "; ".join(r.row() for r in rows)

    def detach(bdf: str) -> Callable[[Step], Awaitable[str]]:
        async def body(step: Step) -> str:
            guest, stub = ids["guest"], ids["stub"]
            async with _watching(s, stub, guest) as seen:
                await pci_detach(s, guest, proto.parse_bdf(bdf), force=False)
            step.nodes += seen
            left = await pci_list(s, guest)
            return (f"removed {bdf}; left: "
                    f"{', '.join(str(a.bdf) for a in left) or 'none'}")
        return body

    async def save(step: Step) -> str:
        guest, stub = ids["guest"], ids["stub"]
        async with _watching(s, stub, guest) as seen:
            size = await save_guest(s, guest, save_file)
        step.nodes += seen
        story.result.save_file = save_file
        names = [d.name for d in await s.domains()]
        return f"{size} bytes to {save_file.name}; domains left: {', '.join(names)}"

    async def restore(step: Step) -> str:
        created = await restore_guest(s, save_file)
        ids["guest"], ids["stub"] = created.guest, created.stubdom
        await created_nodes(step, created.guest, created.stubdom)
        return (f"guest = domain {created.guest}, stubdomain = domain {created.stubdom}, "
                f"from the saved device-model state")

    async def destroy(step: Step) -> str:
        await destroy_guest(s.hv, s.xs, ids["guest"], s.paths)
        names = [d.name for d in await s.domains()]
        if any(n.startswith(cfg.name) for n in names):
            raise DemoError(f"domains left after destroy: {', '.join(names)}")
        step.nodes.append(await _node(s, "dom0", proto.device_model_domid_path(ids["guest"])))
        return f"domains left: {', '.join(names) or 'Domain-0'}"

    configured = [str(p.bdf) for p in cfg.pcis]
    await story.step("create (stubdomain)", create)
    await story.step("wait for running", running)
    await story.step(f"pci-attach {SECOND_PCI[5:]}", attach)
    await story.step("pci-list", listing)
    await story.step(f"pci-detach {SECOND_PCI[5:]}", detach(SECOND_PCI))
    for bdf in configured:
        await story.step(
            f"pci-detach {bdf[5:]}", detach(bdf),
            note="detach the passed-through functions: a saved guest cannot keep them",
        )
    await story.step("save", save)
    await story.step("restore", restore)
    await story.step("destroy", destroy)


async def _host_down(story: _Story, run_dir: RunDir) -> None:
    """``stubdom host down``, then a check that no process uses the run directory."""

    async def down(step: Step) -> str:
        r = await asyncio.to_thread(_stubdom, "host", "down", "--dir", str(run_dir.root))
        if r.returncode != 0:
            raise DemoError(_host_lines(r) or f"'stubdom host down' exited {r.returncode}")
        stray = processes_using(run_dir)
        if stray:
            raise DemoError(f"processes left using {run_dir.root}: {stray}")
        left = [p.name for p in (*run_dir.pid_files(), *run_dir.sockets()) if p.exists()]
        if left:
            raise DemoError(f"runtime files left: {', '.join(left)}")
        return _host_lines(r) + "; no process left"

    with contextlib.suppress(Exception):  # recorded as a failed step
        await story.step("host down", down)
