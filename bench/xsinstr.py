"""Instructions our xenstored executes per request, counted by callgrind (issue 16, part 2).

Wall-time benches on a shared machine are noisy; an instruction count is not.  This
starts ``stubdom xenstored`` (the mypyc-compiled core, as the command loads it, and with
``STUBDOM_PURE_PYTHON=1`` the pure Python one) under ``valgrind --tool=callgrind`` with
instrumentation off, sets it up from a client that is NOT under valgrind, switches
instrumentation on (``callgrind_control -i on``), and then for each kind of request:
runs a warm-up, zeroes the counters (``-z``), drives ``--n`` units, dumps (``-d``).
A unit's figure is the dump's total minus the baseline (a zero then a dump with no
request between them: what the control itself costs), divided by the units.  The
daemon is pinned to CPU 1 and the client to CPU 0 (the counts do not depend on it; the
other users of the machine do).  ``PYTHONHASHSEED=0`` makes the counts repeatable.

Two dom0 connections, as the ``floor | dm dom0`` row of bench/pci_ins.py: the
"toolstack" A (watches ``state`` and ``parameter`` of the device-model directory) and
the "device model" B (watches ``command``).  ``--dm guest`` makes B domain 2 on its own
socket, as the stubdomain is (unprivileged: the permission checks run).  Kinds:

- ``read``: A READs a one-byte node;
- ``write``: A WRITEs the same value to the same node (no watch on it);
- ``tx``: A's TRANSACTION_START, READ, WRITE (same value), TRANSACTION_END T (4 requests);
- ``ev-write``: A WRITEs ``command`` (it exists) and B gets the event;
- ``ev-rm``: A WRITE creating ``command`` (event to B), B's RM of it (B's own event);
- ``floor``: the whole pci-ins floor exchange of bench/pci_ins.py, 6 writes and 6 events.

    .venv/bin/python bench/xsinstr.py [--n 1000] [--core compiled,pure] [--kinds ...]
                                      [--dm dom0|guest] [--base DIR] [--keep DIR]

``--base DIR`` also counts another checkout's code (``DIR/src`` first on the path; its
compiled core is built first if missing): the before/after table of a change, with the
ratio after/before.  ``--keep DIR`` keeps the callgrind dumps (one per core and kind,
``cg.<pid>.<n>``, described by the kind) for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hostkit import CLIENT_CPU, SERVER_CPU  # noqa: E402
from bench.rawxs import HDR, RawConnection  # noqa: E402

READ, WATCH, TX_START, TX_END, INTRODUCE, WRITE, RM, SET_PERMS, EVENT, ERROR = (
    2, 4, 6, 7, 8, 11, 13, 14, 15, 16)
GUEST, STUB = 1, 2
DM = f"/local/domain/{STUB}/device-model/{GUEST}"
PARAM = b"0000:03:00.0,msitranslate=0,power_mgmt=0"
START_TIMEOUT = 120.0
CORES = ("compiled", "pure")


def packet(op: int, payload: bytes, tx: int = 0) -> bytes:
    return HDR.pack(op, 0, tx, len(payload)) + payload


def args(*parts: str | bytes) -> bytes:
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


def write_req(path: str, value: bytes, tx: int = 0) -> bytes:
    return packet(WRITE, path.encode() + b"\0" + value, tx)


class Conn(RawConnection):
    """A blocking connection that reads whole packets; events are counted, not kept."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.events = 0

    def call(self, req: bytes) -> bytes:
        """Send ``req``; its reply's payload (events before it are counted)."""
        self.s.sendall(req)
        while True:
            op, body = self.packet()
            if op == EVENT:
                self.events += 1
                continue
            if op == ERROR:
                raise RuntimeError(f"request {req[:4]!r} {req[16:80]!r}: {body!r}")
            return body

    def event(self) -> None:
        """Wait for one event (or take one already counted by `call`)."""
        if self.events:
            self.events -= 1
            return
        op, body = self.packet()
        if op != EVENT:
            raise RuntimeError(f"expected an event, got type {op}: {body!r}")


@dataclass
class Clients:
    a: Conn
    b: Conn
    #: B's name for the device-model directory (relative as a guest sees it).
    b_dir: str
    reqs: dict[str, bytes] = field(default_factory=dict)


def prepare(sock: str, dm: str) -> Clients:
    """The tree and the watches of the floor; returns A and B past their initial events."""
    a = Conn(sock)
    for path, value in (("/bench/read", b"x"), ("/bench/write", b"value"),
                        ("/bench/tx", b"v"), (f"{DM}/state", b"running")):
        a.call(write_req(path, value))
    if dm == "guest":
        a.call(packet(INTRODUCE, args(str(STUB), "0", str(STUB + 1))))
        a.call(packet(SET_PERMS, args(DM, f"n{STUB}", f"r{GUEST}")))
        a.call(packet(SET_PERMS, args(f"{DM}/state", f"n{STUB}", f"r{GUEST}")))
        b_sock, b_dir = f"{sock}.d/{STUB}", f"device-model/{GUEST}"
    else:
        b_sock, b_dir = sock, DM
    a.call(packet(WATCH, args(f"{DM}/state", "ts")))
    a.call(packet(WATCH, args(f"{DM}/parameter", "tp")))
    a.event()
    a.event()
    b = Conn(b_sock)
    b.call(packet(WATCH, args(f"{b_dir}/command", "dc")))
    b.event()
    c = Clients(a, b, b_dir)
    c.reqs = {
        "read": packet(READ, args("/bench/read")),
        "write": write_req("/bench/write", b"value"),
        "tx_start": packet(TX_START, b"\0"),
        "a_param": write_req(f"{DM}/parameter", PARAM),
        "a_command": write_req(f"{DM}/command", b"pci-ins"),
        "a_state": write_req(f"{DM}/state", b"running"),
        "b_rm": packet(RM, args(f"{b_dir}/command")),
        "b_param": write_req(f"{b_dir}/parameter", b"0x28"),
        "b_state": write_req(f"{b_dir}/state", b"pci-inserted"),
    }
    return c


def unit_read(c: Clients) -> None:
    c.a.call(c.reqs["read"])


def unit_write(c: Clients) -> None:
    c.a.call(c.reqs["write"])


def unit_tx(c: Clients) -> None:
    tx = int(c.a.call(c.reqs["tx_start"]).rstrip(b"\0"))
    c.a.call(packet(READ, args("/bench/tx"), tx))
    c.a.call(write_req("/bench/tx", b"v", tx))
    c.a.call(packet(TX_END, b"T\0", tx))


def unit_ev_write(c: Clients) -> None:
    c.a.call(c.reqs["a_command"])
    c.b.event()


def unit_ev_rm(c: Clients) -> None:
    c.a.call(c.reqs["a_command"])
    c.b.event()
    c.b.call(c.reqs["b_rm"])
    c.b.event()


def unit_floor(c: Clients) -> None:
    """bench/pci_ins.py ``floor``: A's parameter and command, B's answer, A's state."""
    a, b, r = c.a, c.b, c.reqs
    a.call(r["a_param"])
    a.call(r["a_command"])
    b.event()
    b.call(r["b_rm"])
    b.event()
    b.call(r["b_param"])
    b.call(r["b_state"])
    for _ in range(3):  # own parameter, B's parameter, B's state
        a.event()
    a.call(r["a_state"])
    a.event()


#: kind -> (one unit, its requests).
KINDS: dict[str, tuple[Callable[[Clients], None], int]] = {
    "read": (unit_read, 1),
    "write": (unit_write, 1),
    "tx": (unit_tx, 4),
    "ev-write": (unit_ev_write, 1),
    "ev-rm": (unit_ev_rm, 2),
    "floor": (unit_floor, 6),
}


class Callgrind:
    """``stubdom xenstored`` under callgrind, and its control."""

    def __init__(self, tree: Path, core: str, out: Path) -> None:
        self.out = out
        self.sock = str(out / "socket")
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(tree / "src"))
        env.pop(ENV_PURE, None)
        if core == "pure":
            env[ENV_PURE] = "1"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}/cg.%p", sys.executable, "-m", "stubdom",
                "xenstored", "--socket", self.sock]
        self.log = open(out / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {SERVER_CPU}))
        self.pid = self.proc.pid
        self.dumps = 0
        self._wait()
        # The compiled core is mypyc's shared library, mapped into the process.
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        if ("xenstored-mypyc-" in maps) != (core == "compiled"):
            self.stop()
            sys.exit(f"xsinstr: the daemon does not run the {core} core "
                     f"(python -m stubdom.compiled status)")

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"xsinstr: the daemon did not start; see {self.out}/daemon.log")
            time.sleep(0.2)

    def control(self, *opts: str) -> None:
        r = subprocess.run(["callgrind_control", *opts, str(self.pid)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"callgrind_control {' '.join(opts)}: {r.stderr.strip()}")

    def count(self, what: str, run: Callable[[], None]) -> int:
        """Instructions executed while ``run`` runs (plus the control's own)."""
        self.control("-z")
        run()
        self.control(f"--dump={what}")
        self.dumps += 1
        dump = self.out / f"cg.{self.pid}.{self.dumps}"
        text = dump.read_text(errors="replace")
        m = re.search(r"^totals: (\d+)", text, re.M) or re.search(r"^summary: (\d+)", text, re.M)
        if m is None:
            raise RuntimeError(f"no totals in {dump}")
        return int(m.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


ENV_PURE = "STUBDOM_PURE_PYTHON"


def measure(tree: Path, core: str, kinds: list[str], n: int, dm: str,
            keep: Path | None) -> dict[str, float]:
    """Instructions per unit of each kind, on one fresh daemon."""
    out = Path(tempfile.mkdtemp(prefix="xsi-", dir="/tmp"))
    d = Callgrind(tree, core, out)
    try:
        c = prepare(d.sock, dm)
        d.control("-i", "on")
        base = min(d.count("baseline", lambda: None) for _ in range(3))
        got = {}
        for kind in kinds:
            unit, _ = KINDS[kind]

            def run(unit: Callable[[Clients], None] = unit, times: int = n) -> None:
                for _ in range(times):
                    unit(c)

            run(times=max(50, n // 5))  # warm-up: caches, first-time paths
            got[kind] = (d.count(kind, run) - base) / n
        c.a.close()
        c.b.close()
    finally:
        d.stop()
        if keep is not None:
            dest = keep / f"{tree.name}-{core}-{dm}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(out, dest, ignore=shutil.ignore_patterns("socket*"))
            print(f"# dumps of {tree} ({core}) in {dest}", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    return got


def ensure_build(tree: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    r = subprocess.run([sys.executable, "-m", "stubdom.compiled", "build"], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"xsinstr: cannot build the compiled core of {tree}: {r.stderr.strip()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="units of each kind (default 1000)")
    ap.add_argument("--core", default="compiled,pure", help="compiled, pure or both")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    ap.add_argument("--dm", choices=("dom0", "guest"), default="dom0")
    ap.add_argument("--base", type=Path, help="another checkout to count first (before)")
    ap.add_argument("--keep", type=Path, help="keep the callgrind dumps under this directory")
    a = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("xsinstr: needs valgrind (the Debian package valgrind)")
    kinds = a.kinds.split(",")
    cores = a.core.split(",")
    bad = [k for k in kinds if k not in KINDS] + [c for c in cores if c not in CORES]
    if bad:
        sys.exit(f"xsinstr: unknown kind or core {bad[0]!r}; kinds: {', '.join(KINDS)}; "
                 f"cores: {', '.join(CORES)}")
    os.sched_setaffinity(0, {CLIENT_CPU})
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=True)
    trees = ([a.base.resolve()] if a.base is not None else []) + [ROOT]
    if "compiled" in cores:
        for tree in trees:
            ensure_build(tree)
    results = {(t, c): measure(t, c, kinds, a.n, a.dm, a.keep) for c in cores for t in trees}
    report(results, trees, cores, kinds, a)


def report(results: dict[tuple[Path, str], dict[str, float]], trees: list[Path],
           cores: list[str], kinds: list[str], a: argparse.Namespace) -> None:
    print(f"# instructions per unit (callgrind), {a.n} units per kind, dm {a.dm}; "
          f"per request in brackets")
    head = f"{'kind':<9} {'reqs':>4}"
    for c in cores:
        for t in trees:
            head += f" {(c + (' before' if t != ROOT else '')):>20}"
        if len(trees) > 1:
            head += f" {'after/before':>12}"
    print(head)
    for k in kinds:
        reqs = KINDS[k][1]
        line = f"{k:<9} {reqs:>4}"
        for c in cores:
            for t in trees:
                v = results[(t, c)][k]
                line += f" {v:>11.0f} [{v / reqs:>6.0f}]"
            if len(trees) > 1:
                line += f" {results[(ROOT, c)][k] / results[(trees[0], c)][k]:>12.3f}"
        print(line)


if __name__ == "__main__":
    main()
