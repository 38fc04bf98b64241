"""One daemon under test, reached through raw packet channels.

A :class:`Target` hides how a connection of a given domain is obtained:

* dom0 is always a unix-socket connection (privileged), for every kind of daemon;
* an unprivileged guest D is, for the real cx/ox, the guest side of the shared ring page the
  realxs shim maps (``fake/ring-D``), kicked through the ``fake/evtchn`` FIFO; for our
  server it is the unix socket ``<socket>.d/<D>`` that appears once dom0 has INTRODUCEd D.

Both are wrapped in :class:`Channel`, which sends raw packets (no client-side validation,
so malformed requests can be sent) and parks watch events that arrive before a reply.
"""

from __future__ import annotations

import contextlib
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stubdom.realxs import DomainState, FakeXen
from tests.support import xsraw
from tests.support.daemons import Daemon, start_cx, start_ours, start_ox

WATCH_EVENT = xsraw.T["WATCH_EVENT"]
REPLY_TIMEOUT = float(os.environ.get("STUBDOM_DIFF_TIMEOUT", "5.0"))
# cx/ox bind one event-channel port per INTRODUCE and the kick is one byte: ~245 per run.
INTRODUCE_BUDGET = 220


class ChannelClosed(Exception):
    """The daemon closed the connection (e.g. after an over-long request)."""


class ChannelTimeout(Exception):
    """No reply within the timeout (daemon hung, crashed, or the request is unanswered)."""


@dataclass(frozen=True)
class Reply:
    type: int
    req_id: int
    tx_id: int
    payload: bytes


class Channel:
    """A raw xenstore connection of one actor: send packets, read replies, collect events."""

    def __init__(self, name: str, conn: Any, timeout: float = REPLY_TIMEOUT) -> None:
        self.name = name
        self.conn = conn  # xsraw.SockConn or xsraw.RingConn: send(bytes) / recv_exact(n, t)
        self.timeout = timeout
        self.events: list[tuple[bytes, bytes]] = []
        self.broken = False  # closed by the peer, or desynchronised by a timeout

    def send_packet(self, typ: int, payload: bytes, *, req_id: int = 0, tx_id: int = 0,
                    hdr_len: int | None = None) -> None:
        length = len(payload) if hdr_len is None else hdr_len
        try:
            self.conn.send(xsraw.HEADER.pack(typ & 0xFFFFFFFF, req_id, tx_id, length) + payload)
        except TimeoutError as e:  # an OSError too, but a ring left full is no close
            self.broken = True
            raise ChannelTimeout(f"{self.name}: {e}") from None
        except OSError as e:
            self.broken = True
            raise ChannelClosed(str(e)) from None

    def read_packet(self) -> Reply:
        try:
            t, r, x, n = xsraw.HEADER.unpack(self.conn.recv_exact(xsraw.HEADER.size,
                                                                   self.timeout))
            body = self.conn.recv_exact(n, self.timeout) if n else b""
        except (EOFError, ConnectionResetError, BrokenPipeError) as e:
            self.broken = True
            raise ChannelClosed(str(e)) from None
        except (TimeoutError, OSError) as e:
            self.broken = True
            raise ChannelTimeout(f"{self.name}: {e}") from None
        return Reply(t, r, x, body)

    def request(self, typ: int, payload: bytes, *, req_id: int = 0, tx_id: int = 0,
                hdr_len: int | None = None) -> Reply:
        """Send one request and return its reply; events seen first go to ``self.events``."""
        self.send_packet(typ, payload, req_id=req_id, tx_id=tx_id, hdr_len=hdr_len)
        while True:
            r = self.read_packet()
            if r.type != WATCH_EVENT:
                return r
            path, _, rest = r.payload.partition(b"\0")
            self.events.append((path, rest[:-1] if rest.endswith(b"\0") else rest))

    def flush(self) -> None:
        """Round-trip a harmless request so every event queued before it has arrived.

        A daemon sends events queued on a connection before the reply to a later request on
        the same connection, so no sleeping is needed.
        """
        self.request(xsraw.T["GET_DOMAIN_PATH"], b"0\0", req_id=0xF1F1)

    def take_events(self) -> list[tuple[bytes, bytes]]:
        ev, self.events = self.events, []
        return ev

    def close(self) -> None:
        with contextlib.suppress(OSError, BufferError):
            self.conn.close()


class Target(ABC):
    """A daemon of one kind plus the knowledge of how to reach its domains."""

    kind: str

    def __init__(self, args: tuple[str, ...] = ()) -> None:
        self.args = args
        self.daemon: Daemon | None = None
        self.introduced: set[int] = set()  # domids we introduced and did not yet release
        self.introductions = 0  # INTRODUCE requests since the daemon started
        self.marked: set[int] = set()  # domains whose state kill_domain changed
        self.start()

    # -- life cycle ------------------------------------------------------------------------
    @abstractmethod
    def _start(self) -> Daemon: ...

    def start(self) -> None:
        self.daemon = self._start()
        self.baseline: Any = None  # the tree right after start-up (runner.snapshot)
        self.introduced.clear()
        self.introductions = 0
        self.marked.clear()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        """Running and accepting connections (a crashed daemon may linger as a zombie)."""
        if self.daemon is None or not self.daemon.alive():
            return False
        try:
            st = Path(f"/proc/{self.daemon.pid}/stat").read_text()
            if st.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
        except (OSError, IndexError):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket)
        except OSError:
            return False
        finally:
            s.close()
        return True

    @property
    def socket(self) -> str:
        assert self.daemon is not None
        return self.daemon.socket

    # -- connections -----------------------------------------------------------------------
    def connect_dom0(self, name: str = "dom0") -> Channel:
        return Channel(name, xsraw.SockConn(self.socket, REPLY_TIMEOUT))

    def before_introduce(self, domid: int) -> None:  # noqa: B027  (optional hook)
        """Called before dom0 sends INTRODUCE for ``domid``."""

    @abstractmethod
    def connect_guest(self, domid: int, name: str) -> Channel:
        """The unprivileged connection of an introduced domain."""

    @abstractmethod
    def kill_domain(self, domid: int, how: str, admin: Channel) -> None:
        """Make the domain shut down (``shutdown``), die (``dead``) or vanish (``gone``)."""

    def clear_markers(self, admin: Channel) -> None:  # noqa: B027
        """Forget any domain-state markers set by :meth:`kill_domain`."""

    def needs_restart(self, introductions: int) -> bool:
        return False


class KitTarget(Target):
    """The real cx or ox, under the realxs LD_PRELOAD shim."""

    def __init__(self, kind: str, args: tuple[str, ...] = ()) -> None:
        self.kind = kind
        super().__init__(args)

    def _start(self) -> Daemon:
        return (start_cx if self.kind == "cx" else start_ox)(None, *self.args)

    @property
    def fake_dir(self) -> Path:
        assert self.daemon is not None and self.daemon.fake_dir is not None
        return self.daemon.fake_dir

    @property
    def fake(self) -> FakeXen:
        return FakeXen(self.fake_dir)

    def before_introduce(self, domid: int) -> None:
        # A fresh introduction must start from zeroed ring indexes (ox maps the file as is).
        ring = self.fake.ring_page(domid)
        if domid not in self.introduced and ring.exists():
            ring.unlink()

    def connect_guest(self, domid: int, name: str) -> Channel:
        port = self.fake.port(domid)
        assert port is not None, f"dom{domid} was not introduced"
        kick = xsraw.Kicker(str(self.fake_dir), port)  # ox dispatches on the port
        ring = xsraw.RingConn(str(self.fake.ring_page(domid)), kick, REPLY_TIMEOUT)
        return Channel(name, ring)

    def kill_domain(self, domid: int, how: str, admin: Channel) -> None:
        self.fake.mark(domid, DomainState(how))
        self.fake.kick_virq()  # VIRQ_DOM_EXC: re-check every domain
        # cx handles the event channel before the sockets of the same poll round, so one
        # round trip is enough; for a dying domain wait until it is really gone.
        for _ in range(200):
            r = admin.request(xsraw.T["IS_DOMAIN_INTRODUCED"], f"{domid}\0".encode())
            if how == "shutdown" or r.payload == b"F\0":
                break
        if how != "shutdown":
            self.introduced.discard(domid)

    def clear_markers(self, admin: Channel) -> None:
        for p in self.fake_dir.glob("*-*"):
            state, _, domid = p.name.partition("-")
            if state in tuple(DomainState):
                self.fake.unmark(int(domid))

    def needs_restart(self, introductions: int) -> bool:
        return self.introductions + introductions > INTRODUCE_BUDGET


class OursTarget(Target):
    """``python -m stubdom xenstored --socket PATH``; guest D listens on ``PATH.d/D``."""

    kind = "ours"

    def _start(self) -> Daemon:
        return start_ours(None, *self.args)

    def connect_guest(self, domid: int, name: str) -> Channel:
        return Channel(name, xsraw.SockConn(f"{self.socket}.d/{domid}", REPLY_TIMEOUT))

    # cx/ox learn a domain's state from the hypervisor (VIRQ_DOM_EXC + getdomaininfo). Our
    # server has no hypervisor: the host reports the state with our CONTROL extension
    # ``domain-state <domid> shutdown|dying|gone|running`` (dom0 only).
    STATES: ClassVar[dict[str, str]] = {"shutdown": "shutdown", "dead": "dying", "gone": "gone"}

    def kill_domain(self, domid: int, how: str, admin: Channel) -> None:
        r = admin.request(xsraw.T["CONTROL"],
                          f"domain-state\0{domid}\0{self.STATES[how]}\0".encode())
        if r.payload != b"OK\0":
            raise NotImplementedError(f"CONTROL domain-state answered {r.payload!r}")
        if how != "shutdown":
            self.introduced.discard(domid)
        self.marked.add(domid)

    def clear_markers(self, admin: Channel) -> None:
        for d in self.marked:
            admin.request(xsraw.T["CONTROL"], f"domain-state\0{d}\0running\0".encode())
        self.marked.clear()


def make_target(kind: str, args: tuple[str, ...] = ()) -> Target:
    if kind == "ours":
        return OursTarget(args)
    if kind in ("cx", "ox"):
        return KitTarget(kind, args)
    raise ValueError(f"unknown target kind {kind!r}")
