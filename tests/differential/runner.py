"""Execute a corpus case against one target and record a normalised transcript.

After every step each connection that ever sent a WATCH is flushed with a round trip, so
the events a step caused are attributed to that step without any sleeping. Between cases
the target is put back to its start state (connections closed, guests released, the tree
restored to the snapshot taken at start-up); if that is impossible the daemon restarts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.differential.corpus import Case, Step
from tests.differential.normalize import Normaliser, fmt
from tests.differential.targets import (
    Channel,
    ChannelClosed,
    ChannelTimeout,
    Target,
)
from tests.support import xsraw

UNBOUND_TX = 999_999  # sent for a symbolic transaction whose START failed


@dataclass(frozen=True)
class Record:
    """What one step produced: the reply text and the events each actor received."""

    index: int
    step: str
    reply: str
    events: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def show(self) -> str:
        ev = "".join(f"\n        {a} <- {', '.join(e)}" for a, e in self.events)
        return f"{self.index:3d} {self.step:<60} => {self.reply}{ev}"


@dataclass
class Transcript:
    case: str
    kind: str
    records: list[Record] = field(default_factory=list)

    def show(self) -> str:
        return "\n".join([f"== {self.case} on {self.kind}"] + [r.show() for r in self.records])


def describe(step: Step) -> str:
    parts = [step.actor, str(step.op)]
    if step.raw is not None:
        parts.append(f"raw={fmt(step.raw)[:40]}")
    parts += [fmt(a.encode() if isinstance(a, str) else a)[:30] for a in step.args]
    if step.tx is not None:
        parts.append(f"tx={step.tx}")
    if step.hdr_len is not None:
        parts.append(f"len={step.hdr_len}")
    return " ".join(parts)


def encode(op: str | int, args: Iterable[str | bytes]) -> bytes:
    """NUL-terminate each argument (WRITE: the value stays raw). No arguments means one
    empty string, ``"\\0"``, as real clients send it: ox stalls on zero-length payloads.
    A step that wants a truly empty payload says ``raw=b""``."""
    bs = [a.encode() if isinstance(a, str) else a for a in args] or [b""]
    if op == "WRITE" and bs:
        return b"".join(a + b"\0" for a in bs[:-1]) + bs[-1]
    return b"".join(a + b"\0" for a in bs)


def type_num(op: str | int) -> int:
    return op if isinstance(op, int) else xsraw.T[op]


class DaemonGone(Exception):
    """The daemon under test died or stopped answering; the case cannot continue."""


class Session:
    """The connections, transactions and watchers of one case run."""

    def __init__(self, target: Target, admin: Channel) -> None:
        self.target = target
        self.admin = admin
        self.conns: dict[str, Channel] = {}
        self.watching: list[str] = []
        self.txs: dict[str, int] = {}
        self.norm = Normaliser()

    # -- connections -----------------------------------------------------------------------
    def conn(self, actor: str) -> Channel:
        if actor not in self.conns:
            if actor.startswith("dom0"):
                self.conns[actor] = self.target.connect_dom0(actor)
            elif actor.startswith("g") and actor[1:].isdigit():
                self.conns[actor] = self.target.connect_guest(int(actor[1:]), actor)
            else:
                raise ValueError(f"unknown actor {actor!r}")
        return self.conns[actor]

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()

    def _mark_guest_gone(self, domid: int) -> None:
        c = self.conns.pop(f"g{domid}", None)
        if c is not None:
            c.close()
        if f"g{domid}" in self.watching:
            self.watching.remove(f"g{domid}")

    # -- steps -----------------------------------------------------------------------------
    def tx_id(self, tx: str | int | None) -> int:
        if tx is None:
            return 0
        if isinstance(tx, int):
            return tx
        return self.txs.get(tx, UNBOUND_TX)

    def one(self, actor: str, op: str | int, payload: bytes, tx_id: int, req_id: int,
            hdr_len: int | None = None, bind: str | None = None) -> str:
        """Send one request; return its normalised reply text (or what went wrong)."""
        typ = type_num(op)
        args = payload.split(b"\0")
        if typ == xsraw.T["INTRODUCE"] and len(args) > 1 and args[0].isdigit():
            self.target.before_introduce(int(args[0]))
        try:
            chan = self.conn(actor)
        except OSError as e:
            return f"CONNECT FAILED ({type(e).__name__})"
        try:
            r = chan.request(typ, payload, req_id=req_id, tx_id=tx_id, hdr_len=hdr_len)
        except ChannelClosed:
            self.conns.pop(actor).close()
            if not self.target.alive():
                raise DaemonGone("the daemon died") from None
            return "CLOSED (the daemon closed the connection)"
        except ChannelTimeout as e:
            self.conns.pop(actor).close()
            if not self.target.alive():
                raise DaemonGone("the daemon died") from None
            # Every step of the corpus is answered by cx; waiting on would only multiply
            # the timeout by the number of remaining steps.  The channel's words (a ring's
            # indexes and status) go into the transcript: they say which side stalled.
            raise DaemonGone(f"no reply within the timeout: {e}") from None
        text = self.norm.reply(r, req_id=req_id, tx_id=tx_id, bind=bind, control_arg=payload)
        ok = r.type == typ
        if ok and typ == xsraw.T["INTRODUCE"] and args[0].isdigit():
            self.target.introduced.add(int(args[0]))
            self.target.introductions += 1
        if ok and typ == xsraw.T["TRANSACTION_START"] and bind:
            self.txs[bind] = int(r.payload.rstrip(b"\0"))
        if ok and typ == xsraw.T["RELEASE"] and args[0].isdigit():
            d = int(args[0])
            still = self.admin.request(xsraw.T["IS_DOMAIN_INTRODUCED"], args[0] + b"\0")
            if still.payload == b"F\0":
                self.target.introduced.discard(d)
                self._mark_guest_gone(d)
        if typ == xsraw.T["WATCH"] and actor not in self.watching:
            self.watching.append(actor)
        return text

    def run(self, index: int, step: Step) -> str:
        if self.target.kind in step.skip_on:
            return f"SKIPPED on {self.target.kind}: {step.why}"
        if step.op == "CLOSE":
            c = self.conns.pop(step.actor, None)
            if c is not None:
                c.close()
            if step.actor in self.watching:
                self.watching.remove(step.actor)
            return "CLOSED"
        if step.op == "KILL":
            d, how = int(step.args[0]), str(step.args[1])
            try:
                self.target.kill_domain(d, how, self.admin)
            except NotImplementedError as e:
                raise DaemonGone(f"{self.target.kind}: not yet: {e}") from None
            if how != "shutdown":
                self._mark_guest_gone(d)
            return f"KILLED {how}"
        if step.op == "MANY":
            return self.run_many(index, step)
        payload = step.raw if step.raw is not None else encode(step.op, step.args)
        return self.one(step.actor, step.op, payload, self.tx_id(step.tx), index + 1,
                        step.hdr_len, step.bind)

    def run_many(self, index: int, step: Step) -> str:
        op, count, start, *templates = (str(a) for a in step.args)
        runs: list[list[object]] = []
        for i in range(int(start), int(start) + int(count)):
            payload = encode(op, [t.format(i=i) for t in templates])
            text = self.one(step.actor, op, payload, self.tx_id(step.tx), index + 1)
            if runs and runs[-1][1] == text:
                runs[-1][0] = int(str(runs[-1][0])) + 1
            else:
                runs.append([1, text])
        return "; ".join(f"{n}x {t}" for n, t in runs)

    def events(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Flush every watcher and collect the events of the step just run."""
        out = []
        for actor in list(self.watching):
            c = self.conns.get(actor)
            if c is None:
                continue
            try:
                c.flush()
            except (ChannelClosed, ChannelTimeout):
                self.conns.pop(actor).close()
                if not self.target.alive():
                    raise DaemonGone("the daemon died") from None
            ev = c.take_events()
            if ev:
                out.append((actor, tuple(self.norm.event(p, t) for p, t in ev)))
        return tuple(out)


def _introductions(case: Case) -> int:
    return sum(1 for s in case.all_steps() if s.op in ("INTRODUCE", "MANY")) + 1


def prepare(target: Target, case: Case) -> None:
    """Make sure the target is alive and may take this case's INTRODUCEs."""
    if case.fresh or not target.alive() or target.needs_restart(_introductions(case)):
        target.restart()


def run_case(target: Target, case: Case) -> Transcript:
    prepare(target, case)
    admin = target.connect_dom0("admin")
    if target.baseline is None:
        target.baseline = snapshot(admin)
    session = Session(target, admin)
    tr = Transcript(case.name, target.kind)
    steps = case.all_steps()
    try:
        for i, step in enumerate(steps):
            try:
                reply = session.run(i, step)
                events = session.events()
            except DaemonGone as e:
                tr.records.append(Record(i, describe(step), f"ABORTED: {e}"))
                for j in range(i + 1, len(steps)):
                    tr.records.append(Record(j, describe(steps[j]), "NOT RUN"))
                break
            tr.records.append(Record(i, describe(step), reply, events))
    finally:
        session.close()
        if case.taints:
            admin.close()
            target.restart()
        else:
            restore(target, admin)
            admin.close()
    return tr


# -- restoring the start state --------------------------------------------------------------

Tree = dict[str, tuple[bytes, bytes, list[bytes]]]  # path -> (value, perms, children)


def _rpc(c: Channel, op: str, *args: str | bytes) -> tuple[bool, bytes]:
    r = c.request(xsraw.T[op], encode(op, args))
    return r.type == xsraw.T[op], r.payload


def _join(path: str, child: bytes) -> str:
    return ("" if path == "/" else path) + "/" + child.decode()


def snapshot(admin: Channel) -> Tree:
    tree: Tree = {}
    todo = ["/"]
    while todo:
        p = todo.pop()
        _, value = _rpc(admin, "READ", p)
        _, perms = _rpc(admin, "GET_PERMS", p)
        _, d = _rpc(admin, "DIRECTORY", p)
        kids = [k for k in d.split(b"\0") if k]
        tree[p] = (value, perms, kids)
        todo += [_join(p, k) for k in kids if not k.startswith(b"@")]
    return tree


def _reset_tree(admin: Channel, base: Tree) -> bool:
    for path in sorted(base, key=lambda p: p.count("/")):
        value, perms, kids = base[path]
        ok, d = _rpc(admin, "DIRECTORY", path)
        if not ok:
            return False
        for k in [k for k in d.split(b"\0") if k]:
            if k not in kids:
                _rpc(admin, "RM", _join(path, k))
        ok, d = _rpc(admin, "DIRECTORY", path)
        if [k for k in d.split(b"\0") if k] != kids:
            return False
        if _rpc(admin, "READ", path)[1] != value and not _rpc(admin, "WRITE", path, value)[0]:
            return False
        if _rpc(admin, "GET_PERMS", path)[1] != perms:
            ok, _ = _rpc(admin, "SET_PERMS", path,
                         *[p for p in perms.split(b"\0") if p])
            if not ok:
                return False
    return True


def restore(target: Target, admin: Channel) -> None:
    """Release the case's guests and restore the tree; restart the daemon if impossible."""
    try:
        for _ in range(3):  # a SET_TARGET'ed domain needs a second RELEASE (cx quirk)
            for d in sorted(target.introduced, reverse=True):
                _rpc(admin, "RELEASE", str(d))
                if _rpc(admin, "IS_DOMAIN_INTRODUCED", str(d))[1] == b"F\0":
                    target.introduced.discard(d)
        target.clear_markers(admin)
        for special in ("@releaseDomain", "@introduceDomain"):
            _rpc(admin, "SET_PERMS", special, "n0")
        base = target.baseline
        clean = not target.introduced and base is not None and _reset_tree(admin, base)
    except (ChannelClosed, ChannelTimeout):
        clean = False
    if not clean:
        target.restart()
