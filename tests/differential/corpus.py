"""The corpus format: named, documented cases made of raw request steps.

A step is ``S(actor, op, *args, tx=...)``:

* ``actor`` is ``"dom0"``, ``"dom0b"`` (a second dom0 socket) or a guest ``"g<domid>"``;
* ``op`` is a message type name (``"READ"``) or number (``0xFFFF``), or a pseudo-op:
  ``MANY`` (repeat one request N times, recorded as a run-length summary), ``KILL``
  (domain death through the target's hook) or ``CLOSE`` (close the actor's connection);
* ``args`` are sent NUL-terminated, except for WRITE whose last argument is the raw value;
  ``raw=`` gives the exact payload instead (for malformed requests);
* ``tx`` names a transaction symbolically (``"t1"``), bound by a TRANSACTION_START step
  with ``bind="t1"``; an ``int`` is sent as is (unknown-id tests).

A case may declare guests; the setup phrase then introduces each (INTRODUCE D 0 port,
MKDIR /local/domain/D, SET_PERMS /local/domain/D nD) and applies SET_TARGET pairs.

Where our server deliberately differs from cx a step carries ``ours="<normalised reply>"``
and ``why=``; a step that would kill a real daemon carries ``skip_on=("cx",)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Arg = str | bytes


@dataclass(frozen=True)
class Step:
    actor: str
    op: str | int
    args: tuple[Arg, ...] = ()
    tx: str | int | None = None
    raw: bytes | None = None  # exact payload, instead of encoding ``args``
    hdr_len: int | None = None  # header length field, if it must lie about the payload
    bind: str | None = None  # TRANSACTION_START: the symbolic name of the new transaction
    ours: str | None = None  # deliberate difference: the reply our server must give
    why: str = ""  # reason for ``ours`` / ``skip_on``
    skip_on: tuple[str, ...] = ()  # daemon kinds this step must not be sent to


def S(actor: str, op: str | int, *args: Arg, tx: str | int | None = None,
      raw: bytes | None = None, hdr_len: int | None = None, bind: str | None = None,
      ours: str | None = None, why: str = "", skip_on: tuple[str, ...] = ()) -> Step:
    """Build one step (the short name keeps case tables readable)."""
    if (ours is not None or skip_on) and not why:
        raise ValueError("a deliberate difference or skip needs a written reason (why=)")
    return Step(actor, op, tuple(args), tx, raw, hdr_len, bind, ours, why, skip_on)


def many(actor: str, op: str, count: int, *templates: str, start: int = 0,
         tx: str | int | None = None) -> Step:
    """Repeat ``op`` ``count`` times; ``{i}`` in the templates is the 0-based index + start.

    For WRITE the last template is the value. Replies and events are recorded as a
    run-length summary, so a 600-child setup is one readable transcript line.
    """
    return Step(actor, "MANY", (op, str(count), str(start), *templates), tx)


def kill(domid: int, how: str) -> Step:
    """Domain ``domid`` shuts down / dies / vanishes (cx/ox: shim marker + VIRQ kick)."""
    return Step("dom0", "KILL", (str(domid), how))


def close(actor: str) -> Step:
    return Step(actor, "CLOSE")


@dataclass(frozen=True)
class Case:
    name: str
    doc: str
    steps: tuple[Step, ...]
    guests: tuple[int, ...] = ()
    targets: tuple[tuple[int, int], ...] = ()  # (stubdom, guest) SET_TARGET pairs
    daemon_args: tuple[str, ...] = ()  # cx command-line flags (ours gets the same)
    fresh: bool = False  # needs a daemon nobody used before
    taints: bool = False  # leaves state the reset cannot undo: restart the daemon after it
    cx_only: bool = False  # not meaningful for ox (e.g. cx quota flags); skipped there
    instance_specific: str = ""  # reason two cx instances may legitimately differ
    tags: tuple[str, ...] = field(default=())

    def setup_steps(self) -> list[Step]:
        out: list[Step] = []
        for d in self.guests:
            out += [S("dom0", "INTRODUCE", str(d), "0", str(d + 1)),
                    S("dom0", "MKDIR", f"/local/domain/{d}"),
                    S("dom0", "SET_PERMS", f"/local/domain/{d}", f"n{d}")]
        for stub, guest in self.targets:
            out.append(S("dom0", "SET_TARGET", str(stub), str(guest)))
        return out

    def all_steps(self) -> list[Step]:
        return self.setup_steps() + list(self.steps)

    def step_count(self) -> int:
        return len(self.all_steps())


CASES: list[Case] = []


def case(name: str, doc: str, *steps: Step, **kw: object) -> Case:
    """Register a case (names must be unique: they are the pytest ids)."""
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate case name {name}")
    c = Case(name, doc, tuple(steps), **kw)  # type: ignore[arg-type]
    CASES.append(c)
    return c


def load() -> list[Case]:
    """Import every case module once and return the whole corpus."""
    from tests.differential import cases  # noqa: F401  (registers the cases)

    return CASES
