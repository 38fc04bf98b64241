"""The control channel's round trips (issue #8, items 1 and 6; issue #16, part 3): our
toolstack and agent against the floor, for ``pci-ins``, ``save`` and ``continue``.

The floor is what the control-channel exchange costs with nothing but bare clients: a
raw "toolstack" (this process) and a raw "device model" (a child process) doing the
xenstore writes and watch events of one ``pci-ins`` and nothing else::

    toolstack  WRITE parameter, WRITE command            (watches: state, parameter)
    dm         event command -> RM command (+ its event) -> WRITE parameter, WRITE state
    toolstack  event parameter, event state -> WRITE state running (+ its event)

that is 6 writes and 6 watch events.  The floors of ``save`` -> ``paused`` and
``continue`` -> ``running`` are defined the same way, from what libxl's exchange needs
(no parameter, no state written back)::

    toolstack  WRITE command                               (watch: state)
    dm         event command -> RM command (+ its event) -> WRITE state
    toolstack  event state

that is 3 writes and 3 watch events.  Beside each floor, ``libxl order``: the same
exchange with bare blocking clients that send every request libxl 4.17 and qemu-trad
send, one per round trip as libxenstore sends them.  libxl: the read of
``/libxl/<G>/dm-version``; for every path into the device model's directory the
stubdomain's id anew (``libxl_get_stubdom_id``: GET_DOMAIN_PATH, then a read); for
pci-ins the pre-wait for ``running`` (an xswait: a watch of its own, a read after its
first event, the unwatch), the read of the state to restore, ``parameter``; the command;
the wait for the answer (save and pci-ins: a new connection with its own watch, a read
at once and after each event, the unwatch and the close; continue: an xswait on the
main connection); for pci-ins the read of ``parameter`` and the state written back.
qemu-trad: the read of ``command`` before its rm and, for pci-ins, of ``parameter``.
That is what C programs in libxl's order pay on the same daemon, less libxenstore's
reader thread, which a watch starts and every reply then passes through.
``libxl + consfront order save`` adds what the protocol's save makes a Mini-OS device
model do between the rm and ``paused``: open console 1 for the state and close it again,
Mini-OS's consfront requests one per round trip, with a backend that costs nothing
(`consfront_save`): a lower bound of the save's order, which the floor leaves out.
``our order``: the requests our own toolstack and agent make for pci-ins and continue,
batched as they batch them, with bare clients (`bare_order`): blocking ones, and bare
asyncio ones on the event loop our processes run (``asyncio``), the floor of any asyncio
program in our order.  Against them:

- ``channel``: `DeviceModelChannel.pci_insert` (toolstack/channel.py) with the real
  ``stubdom-dm`` agent (sim backend) on a real ``stubdom host``: the whole exchange, the
  recovery and the pre-wait for ``running`` included;
- ``pci-attach``: `pci.pci_attach`, which also makes the stubdomain's pciback
  device (xenbus handshake) before the channel exchange; ``CLI`` is ``stubdom
  pci-attach`` as a process (Python start-up included);
- the same channel with a raw device model (``channel, raw dm``), which takes the agent
  out and leaves the toolstack client and the server;
- ``save`` and ``continue``: `DeviceModelChannel.save` then `resume` with the real agent,
  each timed on its own; the agent's save also opens console 1, writes the device
  state to it and closes it (the backend's fsync included) before ``paused``, which no
  floor counts.

Each runs on our xenstored, cx and ox (`stubdom.realxs`) in the same run, the daemons
interleaved: within a round each setup is measured on the three in turn (each setup
starting with another daemon), so a drift of the machine hits all alike.  The paths:

- the toolstack (this process, or the CLI) is always dom0 on the daemon's socket;
- ``dm dom0``: the raw device model is a second dom0 connection on that socket;
- ``dm guest``: the raw device model is domain 2 (the stubdomain) itself.  On ours it
  uses the daemon's own per-domain socket (``<socket>.d/2``); on cx and ox it goes over
  domain 2's ring through a relay (`stubdom.host.xslink.RealLink`, the host's own code:
  a ``<socket>.d/2`` socket multiplexed onto `RingTransport`) in a child process, as the
  host daemon does for its domains.  The ring is woken through the shim's FIFOs, not
  event channels: a real Xen host costs differently there;
- ``agent``: a real ``stubdom host up --xenstored ours|cx|ox``: the agent is the
  stubdomain and takes the same path as ``dm guest`` (the relay inside the host daemon
  on cx and ox).

Before a host could run on cx and ox, the device model could be measured on cx only as
a dom0 connection; ``dm dom0`` keeps that figure, ``dm guest`` is the path a stubdomain
takes.

Pinning: each bare daemon is started on CPU 1, and the toolstack, the device model and
the relay child stay on CPU 0; on a host, xenstored is on CPU 1 and the host daemon
(with the relays and the agent) on CPU 0.  A traced run on our xenstored first counts
the requests and events of one exchange of each kind (the second one: a channel's first
operation also registers its watches).

    .venv/bin/python bench/pci_ins.py [--rounds 5] [--ops 200] [--xenstored ours,cx,ox]
                                      [--quick]

Prints: the round trip per setup and path on each daemon, the median and the spread of
every exchange of every round (p25..p75; min..max under 8 samples, as the CLI's in
``--quick``), and the ratios cx/ours and ox/ours of the medians; then each daemon's
channel and pci-attach (agent) as a multiple of the floor on the same daemon (``dm
guest``), with the spread of that ratio round by round (each round's median over the
same round's floor) and the target for ours, with how many rounds were under it; then
each order (libxl's, ours) over the floor and each exchange over the order, and the room
the target leaves above each order (2x the floor minus it) beside the CPU our toolstack
and agent spend; then the CPU of each exchange in every process it runs through: the
toolstack (this process, ``time.process_time``), the agent and the host daemon (their
scheduler run time), the three sharing CPU 0, and xenstored on CPU 1, with their sum
beside the wall time (the exchange is a chain of round trips: the sum comes to about the
wall time); then the counts.
``--quick``: 1 round of 20 exchanges, 1 CLI run (about 30 s).

Target (ours): each exchange with the agent <= 2x its floor (ours, dm guest).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stubdom import compiled  # noqa: E402

#: The toolstack here loads what ``stubdom pci-attach`` loads: the mypyc build of the
#: channel's synchronous modules, when ``make venv`` built it (the agent loads it too).
COMPILED = compiled.install()

from bench import bare_order  # noqa: E402
from bench.cpustat import sched_ns  # noqa: E402
from bench.hostkit import (  # noqa: E402
    CLIENT_CPU,
    SERVER_CPU,
    BenchHost,
    Figure,
    compare,
    machine_busy,
    med,
    need_two_cpus,
    ratio,
    rotated,
    run_loop,
    spread,
    table,
    verdict,
    xenstoreds,
)
from bench.rawxs import RawConnection  # noqa: E402
from stubdom.protocol import Bdf  # noqa: E402
from stubdom.toolstack.channel import ChannelRegistry, DeviceModelChannel  # noqa: E402
from stubdom.toolstack.session import Session  # noqa: E402
from stubdom.xenstore import Client  # noqa: E402
from tests.support.daemons import (  # noqa: E402
    Daemon,
    short_tmpdir,
    start_cx,
    start_ours,
    start_ox,
)

OPS = bare_order.OPS
GUEST, STUB = 1, 2
PARAM = "0000:03:00.0,msitranslate=0,power_mgmt=0"
TARGET = 2.0
#: The exchanges held to TARGET x their floor, each with the protocol's own order of it
#: done by bare clients (issue #16: "if libxl's order alone makes 2x impossible ...").
TARGETS = {"channel | agent": "libxl order | dm guest",
           "save | agent": "libxl + consfront order save | dm guest",
           "continue | agent": "libxl order continue | dm guest"}


def dm_dir(absolute: bool) -> str:
    rel = f"device-model/{GUEST}"
    return f"/local/domain/{STUB}/{rel}" if absolute else rel


class Raw(RawConnection):
    """A blocking raw client that keeps watch events (paths) in arrival order."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path
        self.events: collections.deque[str] = collections.deque()

    def rpc(self, op: str, *args: str, tx: int = 0) -> bytes:
        payload = b"".join(a.encode() + b"\0" for a in args)
        if op == "WRITE":  # the value has no NUL
            payload = payload[:-1]
        self.send(OPS[op], payload, tx)
        while True:
            rop, body = self._packet()
            if rop != OPS["EVENT"]:
                if rop == OPS["ERROR"]:
                    raise RuntimeError(f"{op} {args}: {body!r}")
                return body

    def sendall(self, data: bytes) -> None:
        """Requests packed already (a batch), sent at once."""
        self.s.sendall(data)

    def replies(self, n: int) -> list[tuple[int, bytes]]:
        """The next ``n`` replies (the events among them are kept)."""
        out = []
        while len(out) < n:
            rop, body = self._packet()
            if rop != OPS["EVENT"]:
                out.append((rop, body))
        return out

    def start(self) -> int:
        """TRANSACTION_START: the new transaction's id."""
        return int(self.rpc("TRANSACTION_START", "").rstrip(b"\0"))

    def event(self) -> str:
        while not self.events:
            rop, _ = self._packet()
            if rop != OPS["EVENT"]:
                raise RuntimeError(f"unexpected reply {rop} while waiting for an event")
        return self.events.popleft()

    def _packet(self) -> tuple[int, bytes]:
        rop, body = self.packet()
        if rop == OPS["EVENT"]:
            self.events.append(body.split(b"\0")[0].decode())
        return rop, body


# -- the raw device model (a child process) ------------------------------------------------


#: The floors: command -> the writes of the device model's answer.
ANSWERS = {
    "pci-ins": [("parameter", "0x28"), ("state", "pci-inserted")],
    "save": [("state", "paused")],
    "continue": [("state", "running")],
}


def dm_helper(sock: str, mode: str, absolute: bool, kind: str = "pci-ins") -> None:
    """Answer every ``kind`` command for ever: ``floor`` uses the events alone, ``answer``
    reads the command first as a real device model must (the channel's own reads and
    restores fire events we cannot count on); ``libxl`` and ``consfront`` in qemu-trad's
    order, ``ours`` and ``ours-aio`` in our agent's (`bare_order`)."""
    d = dm_dir(absolute)
    if mode == "ours-aio":
        run_loop(bare_order.dm_asyncio(sock, d, ANSWERS[kind],
                                       lambda: print("ready", flush=True)))
        return
    dm = Raw(sock)
    dm.rpc("WATCH", f"{d}/command", "dc")
    dm.event()  # the initial event
    print("ready", flush=True)
    if mode == "ours":
        bare_order.dm_blocking(dm, d, ANSWERS[kind])  # for ever
        return
    while True:
        dm.event()
        if mode in ("answer", "libxl", "consfront"):
            try:
                dm.rpc("READ", f"{d}/command")
            except RuntimeError:  # ENOENT: the event of our own rm
                continue
        dm.rpc("RM", f"{d}/command")
        if mode == "floor":
            dm.event()  # our rm's event
        if mode == "libxl" and kind == "pci-ins":  # qemu-trad reads the argument
            dm.rpc("READ", f"{d}/parameter")
        if mode == "consfront" and kind == "save":
            consfront_save(dm, absolute)
        for node, value in ANSWERS[kind]:
            dm.rpc("WRITE", f"{d}/{node}", value)


#: Console 1 of the stubdomain (its frontend, relative to its home) and its backend.
CONSOLE_FE = "device/console/1"
CONSOLE_BE = f"/local/domain/0/backend/console/{STUB}/1"


def consfront_save(dm: Raw, absolute: bool) -> None:
    """What Mini-OS's consfront asks of xenstore to open console 1 for the saved state
    and close it again (``init_consfront``, ``free_consfront``), one request per round
    trip, with a backend that costs nothing: it is Connected beforehand, and the wait for
    its Closing is left out.  A lower bound of what the protocol's save makes the
    device model do that the floor leaves out."""
    fe = f"/local/domain/{STUB}/{CONSOLE_FE}" if absolute else CONSOLE_FE
    dm.rpc("READ", f"{fe}/backend-id")
    tx = dm.start()
    for node, value in (("ring-ref", "8"), ("port", "3"), ("protocol", "x86_64-abi")):
        dm.rpc("WRITE", f"{fe}/{node}", value, tx=tx)
    switch_state(dm, f"{fe}/state", "4", tx)
    dm.rpc("TRANSACTION_END", "T", tx=tx)
    backend = dm.rpc("READ", f"{fe}/backend").decode()
    dm.rpc("WATCH", f"{backend}/state", "be")
    dm.event()  # its initial event
    dm.rpc("READ", f"{backend}/state")  # Connected: no wait
    for state in ("5", "6"):  # Closing, (the backend's Closing, not waited for) Closed
        tx = dm.start()
        switch_state(dm, f"{fe}/state", state, tx)
        dm.rpc("TRANSACTION_END", "T", tx=tx)
        if state == "5":
            dm.rpc("READ", f"{backend}/state")
    dm.rpc("UNWATCH", f"{backend}/state", "be")


def switch_state(dm: Raw, path: str, state: str, tx: int) -> None:
    """Mini-OS's ``xenbus_switch_state`` inside ``tx``: read, then write if it differs."""
    if dm.rpc("READ", path, tx=tx).rstrip(b"\0").decode() != state:
        dm.rpc("WRITE", path, state, tx=tx)


def prepare_daemon(sock: str) -> None:
    """dom0 introduces the stubdomain and makes its device-model directory, ``running``,
    and its console 1 (`consfront_save`), the backend already Connected."""
    r = Raw(sock)
    r.rpc("INTRODUCE", str(STUB), "0", str(STUB + 1))
    d = dm_dir(True)
    r.rpc("WRITE", f"{d}/state", "running")
    r.rpc("SET_PERMS", d, f"n{STUB}", f"r{GUEST}")
    r.rpc("SET_PERMS", f"{d}/state", f"n{STUB}", f"r{GUEST}")
    fe = f"/local/domain/{STUB}/{CONSOLE_FE}"
    for path, value, owner in ((f"{CONSOLE_BE}/state", "4", 0), (f"{fe}/backend-id", "0", STUB),
                               (f"{fe}/backend", CONSOLE_BE, STUB), (f"{fe}/state", "1", STUB)):
        r.rpc("WRITE", path, value)
        r.rpc("SET_PERMS", path, f"n{owner}", f"r{STUB}" if owner == 0 else "r0")
    r.rpc("SET_PERMS", fe, f"n{STUB}")
    for path, value in LIBXL_NODES:  # what libxl looks up on every command
        r.rpc("WRITE", path, value)
    r.close()


def relay_helper(fake_dir: str, sock: str) -> None:
    """Relay ``<sock>.d/STUB`` onto domain STUB's ring (cx, ox), as the host daemon does."""
    from stubdom.host.xslink import RealLink

    async def go() -> None:
        link = RealLink(Path(fake_dir), sock)
        await link.domain_socket(STUB)
        print("ready", flush=True)
        await asyncio.Event().wait()

    run_loop(go())


def start_helper(sock: str, mode: str, absolute: bool, kind: str = "pci-ins"
                 ) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, __file__, "--dm-helper", sock, mode, "abs" if absolute else "rel",
         kind],
        stdout=subprocess.PIPE, text=True,
    )
    return ready(p, "the raw device model")


def ready(p: subprocess.Popen[str], what: str) -> subprocess.Popen[str]:
    """``p`` once it printed ``ready`` (killed and an error if it did not)."""
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        p.kill()
        p.wait()
        raise RuntimeError(f"{what} did not start")
    return p


STARTS: dict[str, Callable[..., Daemon]] = {"ours": start_ours, "cx": start_cx, "ox": start_ox}


def measure(name: str, fn: Callable[[str, str, bool, int], list[float]], absolute: bool,
            ops: int) -> list[float]:
    """A fresh daemon on CPU 1, prepared; the device model as dom0 (``absolute``) or as
    the stubdomain (ours: its socket; cx/ox: its ring through a relay child); ``fn``."""
    d = pinned(STARTS[name])
    relay: subprocess.Popen[str] | None = None
    try:
        prepare_daemon(d.socket)
        dm_sock = d.socket if absolute else f"{d.socket}.d/{STUB}"
        if not absolute and d.fake_dir is not None:
            relay = ready(subprocess.Popen(
                [sys.executable, __file__, "--relay", str(d.fake_dir), d.socket],
                stdout=subprocess.PIPE, text=True), "the relay")
        return fn(d.socket, dm_sock, absolute, ops)
    finally:
        if relay is not None:
            relay.kill()
            relay.wait()
        d.stop()


def timed_floor(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int, kind: str,
                watched: list[str], exchange: Callable[[Raw, str], None],
                mode: str = "floor", state_before: str | None = None) -> list[float]:
    """µs per bare exchange (one sample per op, a tenth more untimed first): the raw
    device model (`dm_helper` in ``mode``) answers ``kind``; the toolstack watches
    ``watched`` (nodes of the device-model directory) and runs ``exchange`` on that
    directory, after writing ``state_before`` to ``state`` untimed if given (for an
    exchange that reads ``state`` until the answer is there)."""
    helper = start_helper(dm_sock, mode, dm_absolute, kind)
    d = dm_dir(True)
    ts = Raw(ts_sock)
    for node in watched:
        ts.rpc("WATCH", f"{d}/{node}", node)
    for _ in watched:
        ts.event()  # the initial events
    out = []
    try:
        for i in range(ops + ops // 10):
            if state_before is not None:
                ts.rpc("WRITE", f"{d}/state", state_before)
                ts.events.clear()
            t0 = time.perf_counter()
            exchange(ts, d)
            if i >= ops // 10:
                out.append((time.perf_counter() - t0) * 1e6)
    finally:
        helper.kill()
        helper.wait()
        ts.close()
    return out


def pci_ins_exchange(ts: Raw, d: str) -> None:
    """6 writes and 6 events (module docstring)."""
    ts.rpc("WRITE", f"{d}/parameter", PARAM)
    ts.rpc("WRITE", f"{d}/command", "pci-ins")
    seen = 0
    while True:  # own parameter, dm's parameter, dm's state
        seen += 1
        if ts.event() == f"{d}/state":
            break
    ts.rpc("WRITE", f"{d}/state", "running")
    while seen < 4:  # our own state write
        ts.event()
        seen += 1


def floor(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int) -> list[float]:
    """The floor of pci-ins; the daemon is prepared (`setup`)."""
    return timed_floor(ts_sock, dm_sock, dm_absolute, ops, "pci-ins",
                       ["state", "parameter"], pci_ins_exchange)


def floor_plain(kind: str) -> Callable[[str, str, bool, int], list[float]]:
    """The floor of ``kind`` (save, continue): 3 writes and 3 events (`ANSWERS`)."""

    def exchange(ts: Raw, d: str) -> None:
        ts.rpc("WRITE", f"{d}/command", kind)
        while ts.event() != f"{d}/state":
            pass

    def run(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int) -> list[float]:
        return timed_floor(ts_sock, dm_sock, dm_absolute, ops, kind, ["state"], exchange)

    return run


# -- libxl's order with bare clients: what a C toolstack and device model would pay ------


#: What libxl reads on each command besides the device model's directory: which device
#: model the guest runs, and its stubdomain (`libxl_get_stubdom_id`).
LIBXL_NODES = ((f"/libxl/{GUEST}/dm-version", "qemu-xen-traditional"),
               (f"/local/domain/{GUEST}/image/device-model-domid", str(STUB)))


def libxl_stubdom_id(ts: Raw) -> None:
    """``libxl_get_stubdom_id``: the guest's home (GET_DOMAIN_PATH), then its
    ``image/device-model-domid``; libxl calls it anew for every path it builds."""
    home = ts.rpc("GET_DOMAIN_PATH", str(GUEST)).rstrip(b"\0").decode()
    ts.rpc("READ", f"{home}/image/device-model-domid")


def libxl_xswait(ts: Raw, path: str, done: Callable[[str], bool]) -> None:
    """libxl's asynchronous xswait, on its main connection: a watch of its own, a read
    after each event (the first comes with the watch), the unwatch once ``done``."""
    ts.rpc("WATCH", path, "xswait")
    while True:
        while ts.event() != path:
            pass
        if done(ts.rpc("READ", path).decode()):
            break
    ts.rpc("UNWATCH", path, "xswait")


def libxl_sync_wait(ts: Raw, path: str, done: Callable[[str], bool]) -> None:
    """``libxl__wait_for_device_model_deprecated``: the stubdomain's id, then the child
    wait (`libxl_child_wait`)."""
    libxl_stubdom_id(ts)
    libxl_child_wait(ts.path, path, done)


def libxl_child_wait(sock: str, path: str, done: Callable[[str], bool]) -> None:
    """``libxl__xenstore_child_wait_deprecated``, on a new connection: watch, read, and
    after each event (the watch's own first) read again until ``done``; unwatch, close.
    (libxenstore also starts a reader thread on the first watch and joins it on close,
    which bare clients do not: a lower bound, bench/libxs_cost.py.)"""
    w = Raw(sock)
    try:
        w.rpc("WATCH", path, path)
        while not done(w.rpc("READ", path).decode()):
            while w.event() != path:
                pass
        w.rpc("UNWATCH", path, path)
    finally:
        w.close()


def libxl_cmd(ts: Raw, d: str, cmd: str) -> None:
    """``libxl__qemu_traditional_cmd``: the stubdomain's id, then ``command``."""
    libxl_stubdom_id(ts)
    ts.rpc("WRITE", f"{d}/command", cmd)


def libxl_pci_ins(ts: Raw, d: str) -> None:
    """libxl_pci.c's pci-ins of a guest with a stubdomain, from ``do_pci_add``'s
    qemu-trad branch on, one request per round trip as libxenstore sends them."""
    ts.rpc("READ", LIBXL_NODES[0][0])  # libxl__device_model_version_running
    libxl_stubdom_id(ts)  # the xswait's path
    libxl_xswait(ts, f"{d}/state", lambda v: v == "running")  # check_qemu_running
    libxl_stubdom_id(ts)  # qemu_pci_add_xenstore
    orig = ts.rpc("READ", f"{d}/state").decode()
    ts.rpc("WRITE", f"{d}/parameter", PARAM)
    libxl_cmd(ts, d, "pci-ins")
    libxl_sync_wait(ts, f"{d}/state", lambda v: v == "pci-inserted")  # pci_ins_check
    ts.rpc("READ", f"{d}/parameter")
    ts.rpc("WRITE", f"{d}/state", orig)
    ts.events.clear()


def libxl_save(ts: Raw, d: str) -> None:
    """``libxl__domain_suspend_device_model``, qemu-trad: the command, then the
    synchronous wait for ``paused``."""
    ts.rpc("READ", LIBXL_NODES[0][0])
    libxl_cmd(ts, d, "save")
    libxl_sync_wait(ts, f"{d}/state", lambda v: v == "paused")
    ts.events.clear()


def libxl_continue(ts: Raw, d: str) -> None:
    """``libxl__dm_resume``, qemu-trad: the state read (``continue`` goes only if it is
    ``paused``), the command, then an xswatch read after each event until ``running``,
    unwatched when done."""
    ts.rpc("READ", LIBXL_NODES[0][0])
    libxl_stubdom_id(ts)
    ts.rpc("READ", f"{d}/state")
    libxl_cmd(ts, d, "continue")
    libxl_xswait(ts, f"{d}/state", lambda v: v == "running")
    ts.events.clear()


def floor_libxl(kind: str, mode: str = "libxl") -> Callable[[str, str, bool, int], list[float]]:
    """``kind`` in libxl's and qemu-trad's order with bare blocking clients: every
    request they make, one per round trip (`libxl_pci_ins`, `libxl_save`,
    `libxl_continue`); with ``mode`` consfront, the device model's save also opens and
    closes console 1 as Mini-OS does (`consfront_save`)."""
    exchange = {"pci-ins": libxl_pci_ins, "save": libxl_save, "continue": libxl_continue}[kind]
    # The floor's device model answers with the same state every time: put the one
    # before the answer back first (pci-ins restores its own).
    before = {"save": "running", "continue": "paused"}.get(kind)

    def run(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int) -> list[float]:
        return timed_floor(ts_sock, dm_sock, dm_absolute, ops, kind, [], exchange, mode=mode,
                           state_before=before)

    return run


def floor_ours(kind: str, aio: bool) -> Callable[[str, str, bool, int], list[float]]:
    """``kind`` in our toolstack's and agent's order with bare clients (`bare_order`):
    blocking, or asyncio (``aio``) on both sides."""
    result = dict(ANSWERS[kind])["state"]

    def blocking(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int) -> list[float]:
        exchange = bare_order.exchange_blocking(kind, PARAM, result)
        return timed_floor(ts_sock, dm_sock, dm_absolute, ops, kind, ["state", "parameter"],
                           exchange, mode="ours")

    def asyncio_(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int) -> list[float]:
        helper = start_helper(dm_sock, "ours-aio", dm_absolute, kind)
        try:
            return run_loop(bare_order.timed_asyncio(ts_sock, dm_dir(True), kind, PARAM,
                                                     result, ops, ops // 10))
        finally:
            helper.kill()
            helper.wait()

    return asyncio_ if aio else blocking


async def channel_loop(client: Client, lock_dir: Path, ops: int) -> list[float]:
    """µs per `DeviceModelChannel.pci_insert` (the raw device model takes any function)."""
    chan = DeviceModelChannel(client, STUB, GUEST, lock_dir, channels=ChannelRegistry())
    out: list[float] = []
    for i in range(ops + max(ops // 10, 2)):
        t0 = time.perf_counter()
        await chan.pci_insert(Bdf(0, 3, 0, 0))
        if i >= max(ops // 10, 2):
            out.append((time.perf_counter() - t0) * 1e6)
    return out


def channel_raw(ts_sock: str, dm_sock: str, dm_absolute: bool, ops: int) -> list[float]:
    helper = start_helper(dm_sock, "answer", dm_absolute)
    lock_dir = short_tmpdir("lk-")

    async def go() -> list[float]:
        client = await Client.connect(ts_sock)
        try:
            return await channel_loop(client, lock_dir, ops)
        finally:
            await client.close()

    try:
        return run_loop(go())
    finally:
        helper.kill()
        helper.wait()


# -- the real host -------------------------------------------------------------------------


@dataclass
class Timed:
    """The samples of a host run: µs per exchange by kind, and the CPU each exchange
    cost the toolstack (this process), the agent, the host daemon and xenstored
    (``<kind> cpu ts|agent|hostd|xs``)."""

    #: The other processes' pids, by `CPU_OF` key: the agent, the host daemon (on cx
    #: and ox it relays the agent's ring) and the host's xenstored.
    pids: dict[str, int]
    warm: int
    count: int
    res: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    seen: collections.Counter[str] = field(default_factory=collections.Counter)

    def full(self, kind: str, count: int | None = None) -> bool:
        return len(self.res[kind]) >= (self.count if count is None else count)

    async def run(self, kind: str, step: Callable[[], Awaitable[object]]) -> None:
        """``step`` timed as one ``kind`` exchange (the first ``warm`` untimed)."""
        before = {who: sched_ns(pid) for who, pid in self.pids.items()}
        c0, w0 = time.process_time_ns(), time.time()
        t0 = time.perf_counter()
        await step()
        dt = (time.perf_counter() - t0) * 1e6
        c1 = time.process_time_ns()
        after = {who: sched_ns(pid) for who, pid in self.pids.items()}
        self.seen[kind] += 1
        if self.seen[kind] > self.warm:
            self.windows.setdefault(kind, (w0, time.time()))
            self.res[kind].append(dt)
            self.res[f"{kind} cpu ts"].append((c1 - c0) / 1e3)
            for who, ns in after.items():
                self.res[f"{kind} cpu {who}"].append((ns - before[who]) / 1e3)


def host_runs(ops: int, cli_runs: int, trace: Path | None = None, xenstored: str = "ours"
              ) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]]]:
    """channel / save / continue / pci-attach (API) / CLI on a real host (on
    ``xenstored``) with the sim agent; with ``trace`` also the time window of one of
    each, for counting."""
    from stubdom.toolstack import operations as ops_mod
    from stubdom.toolstack.session import open_session

    with BenchHost(f"pci{xenstored}", trace=trace, xenstored=xenstored) as h:
        h.run("create", str(h.config("g", cmdline="--eject-delay=0", devices=False)))
        agent = max(h.domain_pids().items())[1]  # the stubdomain is the newest domain
        # traced: the second of each (steady state: a first one registers watches)
        pids = {"agent": agent, "hostd": h.daemon_pid, "xs": h.xenstored_pid}
        t = Timed(pids, 3, ops) if trace is None else Timed(pids, 1, 1)

        async def go() -> None:
            async with open_session(str(h.dir)) as s:
                guest = (await s.resolve_guest("g")).domid
                stub = await s.stubdom_of(guest)
                assert stub is not None
                chan = ops_mod.channel(s, stub, guest)
                await channel_inserts(chan, t)
                await save_continue(chan, t)
                await pci_attaches(s, guest, t)

        run_loop(go())
        for k in range(cli_runs if trace is None else 0):
            t0 = time.perf_counter()
            h.run("pci-attach", "g", f"{0x50 + k:02x}:00.0")
            t.res["CLI"].append((time.perf_counter() - t0) * 1e6)
            h.run("pci-detach", "g", f"{0x50 + k:02x}:00.0")
    return dict(t.res), t.windows


async def channel_inserts(chan: DeviceModelChannel, t: Timed) -> None:
    """The channel alone: batches of 20 functions, removed (pci-rem) untimed."""
    while not t.full("channel"):
        inserted = []
        for k in range(20):
            bdf = Bdf(0, 0x10 + k, 0, 0)
            await t.run("channel", functools.partial(chan.pci_insert, bdf))
            inserted.append(bdf)
            if t.full("channel"):
                break
        for bdf in inserted:
            await chan.pci_remove(bdf)


async def save_continue(chan: DeviceModelChannel, t: Timed) -> None:
    """``save`` -> ``paused`` and ``continue`` -> ``running``, each timed on its own
    (saves are slow: at most a quarter of the pci-ins count)."""
    while not t.full("continue", max(t.count // 4, 1)):
        await t.run("save", chan.save)
        await t.run("continue", chan.resume)


async def pci_attaches(s: Session, guest: int, t: Timed) -> None:
    """`pci.pci_attach` (pciback handshake + channel), detached in batches of 20."""
    from stubdom.toolstack import pci as pci_mod
    from stubdom.toolstack.specs import parse_pci

    while not t.full("pci-attach"):
        for k in range(20):
            spec = parse_pci(f"{0x30 + k:02x}:00.0")
            await t.run("pci-attach", functools.partial(pci_mod.pci_attach, s, guest, spec))
            if t.full("pci-attach"):
                break
        for a in await pci_mod.pci_list(s, guest):
            await pci_mod.pci_detach(s, guest, a.bdf)


def count_trace(trace: Path, window: tuple[float, float]) -> dict[str, int]:
    """Requests by type (dom0 / stub) and watch events delivered, inside ``window``."""
    c: collections.Counter[str] = collections.Counter()
    with open(trace) as f:
        for line in f:
            r = json.loads(line)
            if not window[0] <= r["t"] <= window[1]:
                continue
            who = "dom0" if r["dom"] == 0 else "stub"
            if r["dir"] == "in":
                c[f"{who} {r['type']}"] += 1
                c["requests"] += 1
                if r["type"] in ("WRITE", "RM", "MKDIR", "SET_PERMS"):
                    c["writes"] += 1
            elif r["type"] == "WATCH_EVENT":
                c[f"{who} events"] += 1
                c["events"] += 1
    return dict(c)


def pinned(start: Callable[..., Daemon]) -> Daemon:
    os.sched_setaffinity(0, {SERVER_CPU})
    try:
        return start()
    finally:
        os.sched_setaffinity(0, {CLIENT_CPU})


SETUPS: list[tuple[str, Callable[[str, str, bool, int], list[float]], bool]] = [
    ("floor | dm dom0", floor, True),
    ("floor | dm guest", floor, False),
    ("floor save | dm guest", floor_plain("save"), False),
    ("floor continue | dm guest", floor_plain("continue"), False),
    ("libxl order | dm guest", floor_libxl("pci-ins"), False),
    ("libxl order save | dm guest", floor_libxl("save"), False),
    ("libxl + consfront order save | dm guest", floor_libxl("save", "consfront"), False),
    ("libxl order continue | dm guest", floor_libxl("continue"), False),
    ("our order | dm guest", floor_ours("pci-ins", aio=False), False),
    ("our order, asyncio | dm guest", floor_ours("pci-ins", aio=True), False),
    ("our order continue | dm guest", floor_ours("continue", aio=False), False),
    ("our order continue, asyncio | dm guest", floor_ours("continue", aio=True), False),
    ("channel, raw dm | dm dom0", channel_raw, True),
    ("channel, raw dm | dm guest", channel_raw, False),
]
HOST_KINDS = ["channel", "save", "continue", "pci-attach", "CLI"]
#: Host runs that failed (their samples are missing from the tables).
FAILURES: list[str] = []
Samples = dict[str, dict[str, list[float]]]  # setup -> daemon -> µs of every exchange
#: setup -> daemon -> round -> the median of that round: a ratio's spread over rounds.
RoundMedians = dict[str, dict[str, dict[int, float]]]


def collect(rounds: int, ops: int, cli_runs: int, daemons: list[str]
            ) -> tuple[Samples, RoundMedians]:
    """Every round: each setup on each daemon in turn (`rotated`), then a host on each."""
    got: Samples = collections.defaultdict(lambda: collections.defaultdict(list))
    by_round: RoundMedians = collections.defaultdict(lambda: collections.defaultdict(dict))
    t_start = time.monotonic()
    turn = 0
    for rnd in range(rounds):
        for label, fn, absolute in SETUPS:
            for name in rotated(daemons, turn):
                samples = measure(name, fn, absolute, ops)
                got[label][name] += samples
                by_round[label][name][rnd] = med(samples)
            turn += 1
        for name in rotated(daemons, turn):
            try:
                res, _ = host_runs(ops, cli_runs, xenstored=name)
            except Exception as e:  # reported; the other daemons go on
                print(f"# host on {name} failed: {e}", file=sys.stderr, flush=True)
                FAILURES.append(f"round {rnd + 1}, host on {name}: {e}")
                continue
            for k, v in res.items():
                got[f"{k} | agent"][name] += v
                by_round[f"{k} | agent"][name][rnd] = med(v)
        turn += 1
        print(f"# round {rnd + 1}/{rounds} ({time.monotonic() - t_start:.0f}s)",
              file=sys.stderr, flush=True)
    return got, by_round


def round_ratios(by_round: RoundMedians, k: str, base: str, d: str) -> list[float]:
    """``k`` over ``base`` on daemon ``d``, round by round (rounds that have both)."""
    a, b = by_round[k][d], by_round[base][d]
    return [a[r] / b[r] for r in sorted(a.keys() & b.keys()) if b[r]]


def report(got: Samples, by_round: RoundMedians, daemons: list[str], args: argparse.Namespace,
           cli_runs: int, counts: dict[str, dict[str, int]]) -> None:
    print(f"pci-ins round trip (µs), {args.rounds} round(s) of {args.ops} exchanges per setup "
          f"and daemon (CLI: {cli_runs} runs), the daemons interleaved; xenstored on CPU "
          f"{SERVER_CPU}, clients, relays and agents on CPU {CLIENT_CPU}")
    print("toolstack: dom0 socket. dm dom0: dom0 socket. dm guest and agent: ours: its "
          "domain socket; cx/ox: its ring through a relay")
    labels = [k for k, _, _ in SETUPS] + [f"{k} | agent" for k in HOST_KINDS]
    compare("setup | device model", daemons,
            [Figure(k, dict(got[k])) for k in labels if k in got])
    print("x floor: each daemon's figure over its own floor (dm guest): the medians of all "
          "exchanges [min..max of the rounds' own ratios]")
    rows = []
    for k, base in (("channel, raw dm | dm guest", "floor | dm guest"),
                    ("channel | agent", "floor | dm guest"),
                    ("save | agent", "floor save | dm guest"),
                    ("continue | agent", "floor continue | dm guest"),
                    ("pci-attach | agent", "floor | dm guest")):
        row: list[object] = [k]
        per_round = {d: round_ratios(by_round, k, base, d) for d in daemons}
        for d, rs in per_round.items():
            each = f" [{min(rs):.2f}..{max(rs):.2f}]" if len(rs) > 1 else ""
            row.append(ratio(med(got[k][d]), med(got[base][d])) + each)
        tgt = ""
        if k in TARGETS and "ours" in daemons:
            x = med(got[k]["ours"]) / med(got[base]["ours"])
            under = sum(r <= TARGET for r in per_round["ours"])
            tgt = (f"ours <= {TARGET:g}x floor: {verdict(x <= TARGET)} "
                   f"(rounds under: {under}/{len(per_round['ours'])})"
                   + order_alone(got, by_round, TARGETS[k], base))
        rows.append([*row, tgt])
    table(["exchange", *daemons, "target"], rows)
    libxl_order(got, daemons)
    cpu_table(got, daemons)
    floor_verdicts(got, daemons)
    if FAILURES:
        print(f"{len(FAILURES)} host run(s) FAILED, their samples are missing:")
        for f in FAILURES:
            print(f"  {f}")
        print()
    if counts:
        print("requests and events of one exchange (from a trace of a host on ours)")
        keys = sorted({k for c in counts.values() for k in c})
        table(["count", *counts], [[k, *(counts[c].get(k, 0) for c in counts)] for k in keys])
        print("floor: 6 writes (dom0 WRITE x3, stub RM + WRITE x2), 6 watch events; "
              "save and continue: 3 writes (dom0 WRITE, stub RM + WRITE), 3 watch events")


def order_alone(got: Samples, by_round: RoundMedians, order: str, base: str) -> str:
    """What the protocol's order costs bare clients on ours, over the floor, with its
    spread over the rounds: past TARGET, no program in that order can meet it."""
    if order not in got:
        return ""
    x = med(got[order]["ours"]) / med(got[base]["ours"])
    rs = round_ratios(by_round, order, base, "ours")
    each = f" [{min(rs):.2f}..{max(rs):.2f}]" if len(rs) > 1 else ""
    room = TARGET * med(got[base]["ours"]) - med(got[order]["ours"])
    end = "out of reach" if room <= 0 else f"room {room:.0f} µs"
    return f"; {order.split(' | ')[0]} alone {x:.2f}x{each}: {end}"


#: (exchange, its floor, libxl's order of it with bare clients)
ORDERS = (("channel | agent", "floor | dm guest", "libxl order | dm guest"),
          ("save | agent", "floor save | dm guest", "libxl order save | dm guest"),
          ("save | agent", "floor save | dm guest", "libxl + consfront order save | dm guest"),
          ("continue | agent", "floor continue | dm guest",
           "libxl order continue | dm guest"),
          ("channel | agent", "floor | dm guest", "our order | dm guest"),
          ("channel | agent", "floor | dm guest", "our order, asyncio | dm guest"),
          ("continue | agent", "floor continue | dm guest", "our order continue | dm guest"),
          ("continue | agent", "floor continue | dm guest",
           "our order continue, asyncio | dm guest"))


#: The processes whose CPU each exchange records (`Timed`), and their column names.
CPU_OF = {"ts": "toolstack", "agent": "agent", "hostd": "host daemon", "xs": "xenstored"}


def libxl_order(got: Samples, daemons: list[str]) -> None:
    """The arithmetic of issue #16 part 3: what libxl's and qemu-trad's order, and our
    own (`bare_order`), cost bare clients, over the floor, and our exchange over that."""
    print("each order with bare clients over the floor, and each exchange over it; medians. "
          "libxl order: every request libxl and qemu-trad send, one per round trip; "
          "our order: our toolstack's and agent's requests, batched as they batch them, "
          "with blocking clients or (asyncio) the bare asyncio clients of our event loop")
    rows = []
    for k, base, order in ORDERS:
        row: list[object] = [f"{k.split(' | ')[0]} / {order.split(' | ')[0]}"]
        for d in daemons:
            row += [ratio(med(got[order][d]), med(got[base][d])),
                    ratio(med(got[k][d]), med(got[order][d]))]
        rows.append(row)
    table(["exchange", *(f"{d} {c}" for d in daemons for c in ("order/floor", "x order"))],
          rows)
    if "ours" in daemons:
        print(f"the room {TARGET:g}x the floor leaves above each order with bare clients, "
              "against the CPU our toolstack and agent spend on the exchange (ours, µs):")
        for k, base, order in ORDERS:
            kind = k.split(" | ")[0]
            room = TARGET * med(got[base]["ours"]) - med(got[order]["ours"])
            cpu = sum(med(got[f"{kind} cpu {who} | agent"]["ours"]) for who in ("ts", "agent"))
            left = f"room {room:.0f}" if room > 0 else "no room: the order alone is past it"
            print(f"  {kind} / {order.split(' | ')[0]}: {left}, toolstack + agent CPU {cpu:.0f}")
        print()


def cpu_table(got: Samples, daemons: list[str]) -> None:
    """CPU per exchange of every process in it: the toolstack, the agent and the host
    daemon share CPU 0, xenstored has CPU 1.  The exchange is a chain of round trips,
    so their sum is about the wall time: what any of them saves, the exchange saves."""
    print(f"CPU per exchange (µs, medians): on CPU {CLIENT_CPU} the toolstack (this "
          "process), the agent and the host daemon (their scheduler run time), on CPU "
          f"{SERVER_CPU} xenstored; their sum against the wall time")
    rows = []
    for k in ("channel", "save", "continue", "pci-attach"):
        for d in daemons:
            cpu = [med(got[f"{k} cpu {who} | agent"][d]) for who in CPU_OF]
            wall = med(got[f"{k} | agent"][d])
            rows.append([k, d, *(f"{c:.0f}" for c in cpu), f"{sum(cpu):.0f}", f"{wall:.0f}",
                         ratio(sum(cpu), wall)])
    table(["exchange", "daemon", *CPU_OF.values(), "sum", "wall", "sum/wall"], rows)


def floor_verdicts(got: Samples, daemons: list[str]) -> None:
    """Issue #16's target for the daemon: each floor on ours no slower than on cx."""
    if "ours" not in daemons or "cx" not in daemons:
        return
    for k in (k for k, _, _ in SETUPS if k.startswith("floor")):
        x = med(got[k]["ours"]) / med(got[k]["cx"])
        o, c = got[k]["ours"], got[k]["cx"]
        print(f"{k}: ours / cx = {x:.2f} (µs: ours {med(o):.0f} [{spread(o)}], cx "
              f"{med(c):.0f} [{spread(c)}]); target ours <= cx: {verdict(x <= 1.0)}")
    print()


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--dm-helper":
        dm_helper(sys.argv[2], sys.argv[3], sys.argv[4] == "abs", sys.argv[5])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--relay":
        relay_helper(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ops", type=int, default=200, help="exchanges per round and setup")
    ap.add_argument("--xenstored", default="ours,cx,ox", help="comma list of daemons")
    ap.add_argument("--quick", action="store_true", help="1 round of 20, 1 CLI run")
    args = ap.parse_args()
    cli_runs = 5
    if args.quick:
        args.rounds, args.ops, cli_runs = 1, 20, 1
    daemons = xenstoreds(args.xenstored)
    need_two_cpus()
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(machine_busy())
    print(f"# toolstack and agent: {'compiled' if COMPILED else 'pure Python'} core "
          "(stubdom.compiled)")
    t_start = time.monotonic()
    counts: dict[str, dict[str, int]] = {}
    if "ours" in daemons:  # counts, from a traced host (tracing is ours alone)
        tdir = short_tmpdir("tr-")
        _, windows = host_runs(1, 0, trace=tdir / "trace.jsonl")
        counts = {k: count_trace(tdir / "trace.jsonl", w) for k, w in windows.items()}
    got, by_round = collect(args.rounds, args.ops, cli_runs, daemons)
    report(got, by_round, daemons, args, cli_runs, counts)
    print(f"# total {time.monotonic() - t_start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
