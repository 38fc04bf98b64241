"""The bare-client orders `bench/pci_ins.py` measures against are what they say.

Each replay runs in a child process (importing the bench loads the compiled core).

On ours alone: what is checked is the bench's own bare client, not a daemon (the
bench runs it on cx and ox itself; the daemons' answers to such requests are compared
by tests/differential)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stubdom.trace.model import load_trace
from tests.support.daemons import Daemon, short_tmpdir, start_ours

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = start_ours()
    try:
        yield d
    finally:
        d.stop()


def run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("absolute", [True, False], ids=["dm dom0", "dm guest"])
def test_consfront_save_opens_and_closes_console_1_as_mini_os(
    daemon: Daemon, absolute: bool
) -> None:
    """Twice in a row (the bench repeats it): the frontend's nodes written, and its
    state back at Closed each time (a failed request would end the child)."""
    sock = daemon.socket if absolute else f"{daemon.socket}.d/2"
    out = run(f"""
        import sys
        sys.path.insert(0, "bench")
        import pci_ins as b
        b.prepare_daemon({daemon.socket!r})
        dm = b.Raw({sock!r})
        for _ in range(2):
            b.consfront_save(dm, {absolute!r})
        ts = b.Raw({daemon.socket!r})
        fe = "/local/domain/2/" + b.CONSOLE_FE
        print([ts.rpc("READ", f"{{fe}}/{{n}}").decode() for n in
               ("state", "ring-ref", "port", "protocol")])
    """)
    assert out.splitlines() == ["['6', '8', '3', 'x86_64-abi']"]


#: Our order (`bench/bare_order.py`), per exchange, as our channel and agent send it
#: (tests/toolstack/test_channel_order.py; `Agent._take_command`): the toolstack's
#: requests, then the device model's (absolute paths, as the trace model gives them).
DM = "/local/domain/2/device-model/1"
OUR_ORDER = {
    "pci-ins": (
        [("WRITE", "/libxl/1/dm-last-sent"), ("WRITE", f"{DM}/parameter"),
         ("WRITE", f"{DM}/command"), ("READ", f"{DM}/state"), ("READ", f"{DM}/parameter"),
         ("WRITE", f"{DM}/state")],
        [("READ", f"{DM}/command"), ("RM", f"{DM}/command"), ("READ", f"{DM}/parameter"),
         ("WRITE", f"{DM}/parameter"), ("WRITE", f"{DM}/state")],
    ),
    "continue": (
        [("WRITE", f"{DM}/command"), ("READ", f"{DM}/state"), ("READ", f"{DM}/parameter")],
        [("READ", f"{DM}/command"), ("RM", f"{DM}/command"), ("READ", f"{DM}/parameter"),
         ("WRITE", f"{DM}/state")],
    ),
}


def traced_replay(setup: str) -> Path:
    """The trace of two exchanges of ``bench/pci_ins.py``'s ``setup`` (a call that makes
    the setup's runner) on ours, the device model as the stubdomain."""
    run_dir = short_tmpdir("ord-")
    trace = run_dir / "trace.jsonl"
    d = start_ours(run_dir, "--trace", str(trace))
    try:
        out = run(f"""
            import sys
            sys.path.insert(0, "bench")
            import pci_ins as b
            b.prepare_daemon({d.socket!r})
            print(len(b.{setup}({d.socket!r}, {d.socket + '.d/2'!r}, False, 2)))
        """)
    finally:
        d.stop()
    assert out.split() == ["2"]
    return trace


def requests_by_connection(
    trace: Path, kinds: tuple[str, ...] = ("read", "write")
) -> dict[tuple[int, int], list[tuple[str, str | None]]]:
    """(domain, connection) -> the (type, path) of each request of ``kinds`` it sent
    (the trace model's kinds; a request of kind ``other`` has no path)."""
    out: dict[tuple[int, int], list[tuple[str, str | None]]] = {}
    for ev in load_trace(trace):
        if ev.kind in kinds:
            out.setdefault((ev.dom, ev.conn), []).append((ev.op, ev.path))
    return out


@pytest.mark.parametrize("aio", [False, True], ids=["blocking", "asyncio"])
@pytest.mark.parametrize("kind", ["pci-ins", "continue"])
def test_our_order_replays_the_requests_of_our_channel_and_agent(kind: str, aio: bool) -> None:
    """Two exchanges, each answered (a lost answer would hang the child until the
    timeout), in exactly the order of our toolstack's and agent's requests."""
    conns = requests_by_connection(traced_replay(f"floor_ours({kind!r}, aio={aio!r})"))
    toolstack, dm = OUR_ORDER[kind]
    assert conns[max(k for k in conns if k[0] == 0)] == toolstack * 2
    assert [reqs for k, reqs in conns.items() if k[0] == 2] == [dm * 2]


#: libxl's order (bench/pci_ins.py `libxl_pci_ins`, `libxl_save`, `libxl_continue`):
#: the toolstack's main connection, then the connection of each synchronous wait
#: (consecutive reads of `state` count as one: how many a wait makes depends on when the
#: answer comes).  Before save and continue the bench puts the state back untimed.
STUBDOM_ID = [("GET_DOMAIN_PATH", None), ("READ", "/local/domain/1/image/device-model-domid")]
DM_VERSION = [("READ", "/libxl/1/dm-version")]
WAIT = [("WATCH", f"{DM}/state"), ("READ", f"{DM}/state"), ("UNWATCH", f"{DM}/state")]
RESET = [("WRITE", f"{DM}/state")]
LIBXL_ORDER = {
    "pci-ins": (
        [*DM_VERSION, *STUBDOM_ID, *WAIT, *STUBDOM_ID, ("READ", f"{DM}/state"),
         ("WRITE", f"{DM}/parameter"), *STUBDOM_ID, ("WRITE", f"{DM}/command"), *STUBDOM_ID,
         ("READ", f"{DM}/parameter"), ("WRITE", f"{DM}/state")],
        [WAIT],
    ),
    "continue": (
        [*RESET, *DM_VERSION, *STUBDOM_ID, ("READ", f"{DM}/state"), *STUBDOM_ID,
         ("WRITE", f"{DM}/command"), *WAIT],
        [],
    ),
    "save": (
        [*RESET, *DM_VERSION, *STUBDOM_ID, ("WRITE", f"{DM}/command"), *STUBDOM_ID],
        [WAIT],
    ),
}


def collapsed(reqs: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    return [r for i, r in enumerate(reqs) if r[0] != "READ" or i == 0 or r != reqs[i - 1]]


@pytest.mark.parametrize("kind", ["pci-ins", "continue", "save"])
def test_libxl_order_replays_the_requests_of_libxl(kind: str) -> None:
    """Two exchanges in libxl's order: its main connection's requests, and a new
    connection for each synchronous wait, as `libxl__xenstore_child_wait_deprecated`
    opens one."""
    trace = traced_replay(f"floor_libxl({kind!r})")
    main, waits = LIBXL_ORDER[kind]
    every = requests_by_connection(trace, ("read", "write", "watch", "other"))
    dom0 = {k: reqs for k, reqs in every.items() if k[0] == 0}
    ts = next(k for k, reqs in dom0.items() if ("WRITE", f"{DM}/command") in reqs)
    assert collapsed(dom0[ts]) == main * 2
    assert [collapsed(r) for k, r in sorted(dom0.items()) if k > ts] == waits * 2
