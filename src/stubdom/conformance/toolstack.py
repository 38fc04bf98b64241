"""Toolstack mode: run a toolstack's scenario against a traced background host and check,
from the xenstored trace, what it wrote for every guest with a stubdomain (the ``ts.*``
clauses).  The stubdomain kernel is our agent in ``--compat=qemu-trad`` mode, handed to
the scenario through the environment.

Transaction writes count at their successful commit; aborted ones are dropped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stubdom import eventloop
from stubdom import protocol as proto
from stubdom.conformance.clauses import TOOLSTACK_CLAUSES
from stubdom.conformance.report import Result, Verdict
from stubdom.host import supervisor
from stubdom.host.rundir import RunDir
from stubdom.trace.model import Event, load_trace

P, F, N = Verdict.PASS, Verdict.FAIL, Verdict.NOT_EXERCISED

PCI_INS_RE = re.compile(
    r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7](@[0-9a-f]{2})?,msitranslate=[01],power_mgmt=[01]"
)
PCI_REM_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
#: Result states after which the toolstack owes the state restore.
RESTORED_AFTER = {"pci-ins": ("pci-inserted",), "pci-rem": ("pci-removed",)}


@dataclass(frozen=True)
class Change:
    """One effective store change: a WRITE, MKDIR, RM or SET_PERMS that took effect."""

    index: int
    dom: int
    conn: int
    op: str
    path: str
    args: list[str]

    @property
    def value(self) -> str:
        return self.args[1] if len(self.args) > 1 else ""


def changes(events: list[Event]) -> list[Change]:
    """Effective changes in order; transactional ones at their committing END."""
    out: list[Change] = []
    pending: dict[tuple[int, int], list[Change]] = defaultdict(list)
    for e in events:
        if e.op == "TRANSACTION_END" and e.tx_id:
            batch = pending.pop((e.conn, e.tx_id), [])
            if e.ok and e.args[:1] == ["T"]:
                out.extend(Change(e.index, c.dom, c.conn, c.op, c.path, c.args) for c in batch)
            continue
        if e.kind != "write" or e.path is None or not e.ok:
            continue
        c = Change(e.index, e.dom, e.conn, e.op, e.path, [e.path, *e.args[1:]])
        if e.tx_id:
            pending[(e.conn, e.tx_id)].append(c)
        else:
            out.append(c)
    return out


@dataclass
class GuestCheck:
    """The ts.* verdicts of one guest G with stubdomain S."""

    guest: int
    stub: int
    ch: list[Change]
    live_perms: dict[str, list[str]]
    results: dict[str, tuple[Verdict, str]] = field(default_factory=dict)

    def put(self, clause: str, verdict: Verdict, seen: str) -> None:
        old = self.results.get(clause)
        if old is None or old[0] is P or (old[0] is N and verdict is F):
            self.results[clause] = (verdict, seen)

    def writes(self, path: str, dom: int | None = 0) -> list[Change]:
        return [
            c
            for c in self.ch
            if c.path == path and c.op == "WRITE" and (dom is None or c.dom == dom)
        ]

    def perms(self, path: str) -> list[str] | None:
        """The perms last set on ``path`` (trace), else read live before the host stopped."""
        sets = [c for c in self.ch if c.path == path and c.op == "SET_PERMS"]
        return sets[-1].args[1:] if sets else self.live_perms.get(path)

    def running_at(self) -> int | None:
        """Index of the stubdomain's first ``running``."""
        st = proto.state_path(self.stub, self.guest)
        ws = [c for c in self.writes(st, self.stub) if c.value == proto.State.RUNNING]
        return ws[0].index if ws else None

    def before_running(self, c: Change) -> str:
        r = self.running_at()
        return "" if r is None or c.index < r else f" (but only after the stub's running, #{r})"

    def check(self) -> dict[str, tuple[Verdict, str]]:
        self.setup()
        self.exchanges()
        return self.results

    def simple(self, clause: str, path: str, want: str) -> None:
        ws = self.writes(path)
        if not ws:
            self.put(clause, F, f"{path} never written")
        elif ws[-1].value != want:
            self.put(clause, F, f"{path} = {ws[-1].value!r}, want {want!r}")
        else:
            late = self.before_running(ws[0])
            self.put(clause, F if late else P, f"{path} = {want!r}{late}")

    def setup(self) -> None:
        g, s = self.guest, self.stub
        self.simple("ts.dm-version", proto.dm_version_path(g), proto.DM_VERSION_TRADITIONAL)
        self.simple("ts.target", proto.target_path(s), str(g))
        self.simple("ts.device-model-domid", proto.device_model_domid_path(g), str(s))
        vm = self.writes(proto.vm_path_node(g))
        dmargs = [
            c
            for c in self.ch
            if c.op == "WRITE"
            and c.dom == 0
            and c.value
            and (
                c.path == proto.dmargs_path(vm[-1].value)
                if vm
                else c.path.endswith("/image/dmargs")
            )
        ]
        if not dmargs:
            self.put("ts.dmargs", F, "no non-empty dmargs written")
            self.put("ts.dmargs-perms", F, "no dmargs written")
        else:
            d = dmargs[-1]
            bad = sorted(set(d.value.split(" ")) & proto.DMARGS_DROPPED)
            if not d.value.startswith(" "):
                self.put("ts.dmargs", F, f"no leading space: {d.value[:40]!r}...")
            elif bad:
                self.put("ts.dmargs", F, f"contains {', '.join(bad)}")
            else:
                self.put("ts.dmargs", P, f"{d.value[:40]!r}...")
            perms = self.perms(d.path)
            want = ["n0", f"r{s}"]
            if perms is None:
                self.put("ts.dmargs-perms", F, f"no perms set on {d.path}")
            else:
                self.put("ts.dmargs-perms", P if perms == want else F, ",".join(perms))
        dm = proto.dm_path(s, g)
        made = [c for c in self.ch if c.path == dm and c.dom == 0 and c.op in ("MKDIR", "WRITE")]
        perms = self.perms(dm)
        want = [f"n{s}", f"r{g}"]
        if not made:
            self.put("ts.dm-dir", F, f"{dm} never created by dom0")
        elif perms != want:
            self.put("ts.dm-dir", F, f"perms {','.join(perms or ['unknown'])}, want n{s},r{g}")
        else:
            sp = [c for c in self.ch if c.path == dm and c.op == "SET_PERMS"]
            late = self.before_running(sp[-1] if sp else made[0])
            self.put("ts.dm-dir", F if late else P, f"n{s},r{g}{late}")
        self.consoles(dmargs[-1].value if dmargs else "")

    def consoles(self, dmargs: str) -> None:
        s, g = self.stub, self.guest
        base = f"/local/domain/{s}"
        c0 = self.writes(f"{base}/console/output")
        out = {0: c0[-1].value if c0 else None}
        for n in range(1, 8):
            w = self.writes(f"{base}/device/console/{n}/output")
            out[n] = w[-1].value if w else None
        problems = []
        if not (out[0] or "").startswith("file:") or not (out[0] or "").endswith(".log"):
            problems.append(f"console 0 output {out[0]!r}, want file:...log")
        c1 = out[1] or ""
        if not (c1.startswith("file:") and c1.endswith(f"/{proto.save_file_name(g)}")):
            problems.append(f"console 1 output {out[1]!r}, want file:.../{proto.save_file_name(g)}")
        restoring = "-loadvm" in dmargs.split(" ")
        if out[2] is not None and not restoring:
            problems.append(f"console 2 output {out[2]!r} while not restoring")
        seen = ", ".join(f"{n}={v}" for n, v in out.items() if v is not None)
        self.put("ts.consoles", F if problems else P, "; ".join(problems) or seen)

    def exchanges(self) -> None:
        s, g = self.stub, self.guest
        st, par, cmd = (
            proto.state_path(s, g),
            proto.parameter_path(s, g),
            proto.command_path(s, g),
        )
        state: str | None = None
        param: Change | None = None  # toolstack parameter since the last command
        open_: dict[str, object] | None = None  # the exchange in progress
        for c in self.ch:
            if c.op != "WRITE" or c.path not in (st, par, cmd):
                continue
            if c.path == st and c.dom == s:
                state = c.value
                if open_ is not None:
                    open_["result"] = c.value
                continue
            if c.path == st and c.dom != s:
                if open_ is not None and open_.get("result") and c.conn == open_["conn"]:
                    open_["restored"] = c.value
                state = c.value
                continue
            if c.path == par and c.dom != s:
                param = c
                continue
            if c.path != cmd or c.dom == s:
                continue
            self.close(open_)
            if open_ is not None and self.outstanding(open_):
                self.put(
                    "ts.serialised",
                    F,
                    f"{c.value} at #{c.index} while {open_['cmd']} "
                    f"(#{open_['at']}) {self.outstanding(open_)}",
                )
            elif open_ is not None:
                self.put("ts.serialised", P, "each command after the previous exchange ended")
            open_ = {"cmd": c.value, "at": c.index, "conn": c.conn, "orig": state}
            if c.value in ("pci-ins", "pci-rem"):
                clause = f"ts.{c.value}.format"
                rx = PCI_INS_RE if c.value == "pci-ins" else PCI_REM_RE
                if param is None or param.conn != c.conn:
                    self.put(clause, F, f"{c.value} (#{c.index}): no parameter written before it")
                elif not rx.fullmatch(param.value):
                    self.put(clause, F, f"parameter {param.value!r}")
                else:
                    self.put(clause, P, repr(param.value))
            if c.value == "continue":
                self.put("ts.continue-paused", P if state == "paused" else F, f"state {state!r}")
            param = None
        self.close(open_)

    def outstanding(self, ex: dict[str, object]) -> str:
        if ex.get("result") is None and ex["cmd"] != "pci-rem":
            return "had no result"
        if ex.get("result") in RESTORED_AFTER.get(str(ex["cmd"]), ()) and "restored" not in ex:
            return "had its state not restored"
        return ""

    def close(self, ex: dict[str, object] | None) -> None:
        """The state-restore verdict of a finished exchange."""
        if ex is None or ex["cmd"] not in RESTORED_AFTER:
            return
        cmd, res = str(ex["cmd"]), ex.get("result")
        if cmd == "pci-rem" and res != "pci-removed":
            return  # restored only after a successful pci-rem
        if cmd == "pci-ins" and res is None:
            return  # no result seen: nothing to judge
        if "restored" not in ex:
            self.put("ts.state-restored", F, f"{cmd} (#{ex['at']}): {res!r} never written back")
        elif ex["restored"] != ex["orig"]:
            self.put(
                "ts.state-restored", F, f"{cmd}: restored {ex['restored']!r}, was {ex['orig']!r}"
            )
        else:
            self.put("ts.state-restored", P, f"{cmd}: {ex['orig']!r} written back")


def pairs(ch: list[Change]) -> list[tuple[int, int]]:
    """(guest, stub) from dom0's ``/local/domain/S/target`` writes."""
    rx = re.compile(r"/local/domain/(\d+)/target")
    found: dict[int, int] = {}
    for c in ch:
        m = rx.fullmatch(c.path)
        if m and c.op == "WRITE" and c.dom == 0 and c.value.isdigit():
            found[int(m.group(1))] = int(c.value)
    return sorted((g, s) for s, g in found.items())


def evaluate(events: list[Event], live_perms: dict[str, list[str]] | None = None) -> list[Result]:
    """The ts.* results over every guest with a stubdomain in ``events``."""
    ch = changes(events)
    found = pairs(ch)
    merged: dict[str, list[tuple[int, Verdict, str]]] = defaultdict(list)
    for g, s in found:
        for clause, (v, seen) in GuestCheck(g, s, ch, live_perms or {}).check().items():
            merged[clause].append((g, v, seen))
    out: list[Result] = []
    for c in TOOLSTACK_CLAUSES:
        rows = merged.get(c.id, [])
        fails = [f"guest {g}: {seen}" for g, v, seen in rows if v is F]
        if fails:
            out.append(Result(c.id, F, "; ".join(fails)))
        elif rows:
            out.append(Result(c.id, P, "; ".join(f"guest {g}: {seen}" for g, _, seen in rows)))
        else:
            why = "no guest with a stubdomain" if not found else "the scenario never did it"
            out.append(Result(c.id, N, why))
    return out


async def read_live_perms(socket: str, events: list[Event]) -> dict[str, list[str]]:
    """Perms of the surviving dmargs and device-model nodes, read from the store."""
    from stubdom.xenstore import Client

    ch = changes(events)
    paths = {c.path for c in ch if c.path.endswith("/image/dmargs")}
    paths |= {proto.dm_path(s, g) for g, s in pairs(ch)}
    out: dict[str, list[str]] = {}
    xs = await Client.connect(socket)
    try:
        for p in sorted(paths):
            # gone with its guest: the trace's SET_PERMS decide
            with contextlib.suppress(Exception):
                out[p] = [str(x) for x in await xs.get_perms(p)]
    finally:
        await xs.close()
    return out


class ScenarioError(Exception):
    """The scenario could not be run at all (the traced host did not start)."""


@dataclass
class Run:
    results: list[Result]
    status: int  # the scenario's exit status
    output: str


def write_env(root: Path, agent_args: list[str]) -> dict[str, str]:
    """The kernel wrapper, a disk image and a guest xl.cfg; their environment variables."""
    agent = Path(sys.executable).with_name("stubdom-dm")
    kernel = root / "conformance-dm"
    words = " ".join(shlex.quote(a) for a in ["--compat=qemu-trad", *agent_args])
    kernel.write_text(f'#!/bin/sh\nexec {shlex.quote(str(agent))} {words} "$@"\n')
    kernel.chmod(0o755)
    disk = root / "conf-disk.img"
    disk.write_bytes(b"\0" * 65536)
    cfg = root / "conf.cfg"
    cfg.write_text(
        'type = "hvm"\nname = "conf"\nmemory = 128\nvcpus = 1\n'
        f"disk = [ '{disk},raw,hda,rw' ]\nvif = [ 'mac=00:16:3e:c0:4f:01' ]\n"
        "serial = 'pty'\n"
        f'stubdomain_kernel = "{kernel}"\n'
        'device_model_version = "qemu-xen-traditional"\n'
        "device_model_stubdomain_override = 1\n"
    )
    return {"STUBDOM_CONFORMANCE_KERNEL": str(kernel), "STUBDOM_CONFORMANCE_CONFIG": str(cfg)}


def check_toolstack(
    command: list[str],
    agent_args: list[str] | None = None,
    timeout: float = 120.0,
    keep: Path | None = None,
    xenstored: str = "ours",
) -> Run:
    """Start a traced host on ``xenstored`` (ours, cx or ox), run ``command`` (argv; one
    word is a shell line), stop the host, and judge the trace."""
    root = Path(tempfile.mkdtemp(prefix="tsconf-", dir="/tmp"))  # short: unix sockets
    hostdir, trace = root / "h", root / "trace.jsonl"
    env = dict(os.environ)
    # our tools (stubdom, stubdom-dm) on PATH for the scenario
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(write_env(root, agent_args if agent_args is not None else ["--eject-delay=0.2"]))
    rd = RunDir(hostdir)
    try:
        supervisor.start(rd, trace=str(trace), xenstored=xenstored)
    except supervisor.SupervisorError as e:
        shutil.rmtree(root, ignore_errors=True)
        raise ScenarioError(f"the traced host did not start: {e}") from None
    env["STUBDOM_HOST_DIR"] = str(hostdir)
    env["XENSTORED_PATH"] = str(rd.xenstored_socket)
    try:
        shell = len(command) == 1
        try:
            p = subprocess.run(
                command[0] if shell else command,
                shell=shell,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            status, output = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            status, output = 124, f"scenario timed out after {timeout:g}s: {e}"
        except OSError as e:  # argv[0] missing or not executable: what a shell says
            status = 127 if isinstance(e, FileNotFoundError) else 126
            output = f"{command[0]}: {e.strerror or e}\n"
        live = eventloop.run(read_live_perms(env["XENSTORED_PATH"], load_trace(trace)))
    finally:
        with contextlib.suppress(supervisor.SupervisorError):
            supervisor.stop(rd)
    results = evaluate(load_trace(trace), live)
    if keep is not None:
        shutil.copy(trace, keep)
    shutil.rmtree(root, ignore_errors=True)
    return Run(results, status, output)
