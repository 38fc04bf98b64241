"""``stubdom xenstored``: the command line, its life cycle, and its options taking effect.

The daemon runs as a real subprocess.  Requests go over a raw socket written here (no
project client code), so these tests only trust the wire format.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import Daemon, have_cx, need_peer, short_tmpdir, start_cx, start_ours

GUARD = 20.0  # seconds; failure guard only, never a synchronisation delay
STUBDOM = [sys.executable, "-m", "stubdom"]

# xs_wire.h message types used here
CONTROL, DIRECTORY, READ, GET_PERMS, WATCH = 0, 1, 2, 3, 4
TRANSACTION_START, TRANSACTION_END, INTRODUCE, RELEASE = 6, 7, 8, 9
WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR = 11, 12, 13, 14, 15, 16
HEADER = struct.Struct("<4I")  # type, req_id, tx_id, len


class Raw:
    """A raw xenstore socket client: one request, one reply; watch events are set aside."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(GUARD)
        self.sock.connect(path)
        self.events: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            data += chunk
        return data

    def rpc(self, typ: int, payload: bytes, tx_id: int = 0, req_id: int = 42) -> tuple[int, bytes]:
        self.sock.sendall(HEADER.pack(typ, req_id, tx_id, len(payload)) + payload)
        while True:
            rtyp, rreq, rtx, length = HEADER.unpack(self._recv(HEADER.size))
            body = self._recv(length)
            if rtyp == WATCH_EVENT:
                self.events.append(body)
                continue
            assert (rreq, rtx) == (req_id, tx_id), "reply must echo req_id and tx_id"
            return rtyp, body

    def ok(self, typ: int, *args: bytes, tx_id: int = 0) -> bytes:
        rtyp, body = self.rpc(typ, b"".join(args), tx_id)
        assert rtyp == typ, f"request {typ} failed: {body!r}"
        return body

    def err(self, typ: int, *args: bytes, tx_id: int = 0) -> str:
        """The errno name of a request that must fail."""
        rtyp, body = self.rpc(typ, b"".join(args), tx_id)
        assert rtyp == ERROR, f"request {typ} unexpectedly succeeded: {body!r}"
        return body.rstrip(b"\0").decode()

    def write(self, path: str, value: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        return self.rpc(WRITE, path.encode() + b"\0" + value, tx_id)

    def control(self, *words: str) -> str:
        payload = b"".join(w.encode() + b"\0" for w in words)
        rtyp, body = self.rpc(CONTROL, payload)
        assert rtyp == CONTROL, body
        return body.rstrip(b"\0").decode()


def raw(d: Daemon | str) -> Raw:
    return Raw(d.socket if isinstance(d, Daemon) else d)


def cli(*args: str, timeout: float = GUARD) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STUBDOM, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    d = short_tmpdir("sdcli-")
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def stop(d: Daemon) -> int:
    """SIGTERM a foreground daemon and return its exit status."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    return d.proc.wait(GUARD)


# ---------------------------------------------------------------------------------------
# help, life cycle


def test_help() -> None:
    r = cli("xenstored", "--help")
    assert r.returncode == 0
    for opt in ("--socket", "--state-dir", "--trace", "--daemon", "--poll-us", "-E", "-S",
                "-W", "-t", "-A", "-M", "-Q", "-q", "XENSTORED_PATH"):
        assert opt in r.stdout, opt
    top = cli("--help")
    assert top.returncode == 0 and "xenstored" in top.stdout


def test_socket_is_required() -> None:
    r = cli("xenstored")
    assert r.returncode == 2
    assert "--socket" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_stops_cleanly_on_signal(run_dir: Path, sig: signal.Signals) -> None:
    d = start_ours(run_dir)
    sock = Path(d.socket)
    assert sock.is_socket()
    c = raw(d)
    assert c.ok(WRITE, b"/x\0", b"1") == b"OK\0"
    assert c.ok(READ, b"/x\0") == b"1"
    # a guest socket too, to see that it is removed as well
    assert c.ok(INTRODUCE, b"3\0", b"0\0", b"4\0") == b"OK\0"
    guest_sock = Path(d.socket + ".d/3")
    assert guest_sock.is_socket()
    c.close()
    assert d.proc is not None
    d.proc.send_signal(sig)
    assert d.proc.wait(GUARD) == 0
    assert not sock.exists(), "the socket must be removed on exit"
    assert not guest_sock.exists(), "domain sockets must be removed on exit"
    log = (run_dir / "xenstored.log").read_text()
    assert "Traceback" not in log, log


@pytest.mark.parametrize("poll_us", ["0", "200"])
def test_serves_a_burst_with_or_without_polling(run_dir: Path, poll_us: str) -> None:
    """``--poll-us 0`` sleeps at once; otherwise the daemon polls before it sleeps.
    Either way every request of a burst is answered, and so is one after a pause."""
    d = start_ours(run_dir, "--poll-us", poll_us)
    c = raw(d)
    for i in range(50):
        c.write("/burst", str(i).encode())
        assert c.ok(READ, b"/burst\0") == str(i).encode()
    time.sleep(0.05)  # a spell past any window: the daemon sleeps (not a synchronisation)
    assert c.ok(READ, b"/burst\0") == b"49"
    c.close()
    assert stop(d) == 0


def test_stale_socket_file_is_replaced(run_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run_dir / "socket"))
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves
    d = start_ours(run_dir)
    try:
        assert raw(d).ok(READ, b"/tool/xenstored\0") == b""
    finally:
        assert stop(d) == 0


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited; only waiting for whoever adopted it to reap it


def test_daemon_prints_pid_and_keeps_serving(run_dir: Path) -> None:
    sock = str(run_dir / "socket")
    r = cli("xenstored", "--socket", sock, "--daemon")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.isdigit(), r.stdout
    pid = int(out)
    try:
        assert pid != os.getpid() and not _process_gone(pid)
        # The parent returned only once the daemon listens: no waiting needed here.
        c = raw(sock)
        assert c.ok(WRITE, b"/d\0", b"alive") == b"OK\0"
        assert c.ok(READ, b"/d\0") == b"alive"
        c.close()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GUARD
    while not (_process_gone(pid) and not os.path.exists(sock)):
        assert time.monotonic() < deadline, "the daemon did not stop on SIGTERM"
        time.sleep(0.02)


def test_daemon_that_cannot_start_reports_failure(run_dir: Path) -> None:
    (run_dir / "file").write_text("")
    r = cli("xenstored", "--socket", str(run_dir / "file" / "socket"), "--daemon")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "failed to start" in r.stderr


def test_unbindable_socket_gives_clear_error(run_dir: Path) -> None:
    """A socket path whose directory cannot exist: a one-line error, not a traceback."""
    (run_dir / "file").write_text("")
    r = cli("xenstored", "--socket", str(run_dir / "file" / "socket"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert str(run_dir / "file") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_file_that_is_not_a_socket_is_not_deleted(run_dir: Path) -> None:
    """Only a stale socket is replaced: ``--socket notes.txt`` must not eat the notes."""
    notes = run_dir / "notes.txt"
    notes.write_text("keep me\n")
    for extra in ((), ("--daemon",)):
        r = subprocess.run([*STUBDOM, "xenstored", "--socket", str(notes), *extra],
                           capture_output=True, text=True, timeout=GUARD)
        assert r.returncode == 1
        assert r.stderr.endswith(
            f"{notes} exists and is not a socket; remove it or choose another socket path\n")
        assert r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1, r.stderr
        assert notes.read_text() == "keep me\n"


def test_a_trace_file_that_cannot_be_opened(run_dir: Path) -> None:
    (run_dir / "file").write_text("")
    r = cli("xenstored", "--socket", str(run_dir / "sock"), "--trace",
            str(run_dir / "file" / "t.jsonl"))
    assert r.returncode == 1
    assert r.stderr == (f"Error: cannot open the trace file {run_dir / 'file' / 't.jsonl'}: "
                        "Not a directory; choose another --trace\n")
    assert not (run_dir / "sock").exists()


# ---------------------------------------------------------------------------------------
# --trace, --state-dir


def test_trace_writes_json_lines_in_and_out(run_dir: Path) -> None:
    trace = run_dir / "trace.jsonl"
    d = start_ours(run_dir, "--trace", str(trace))
    try:
        c = raw(d)
        c.rpc(WRITE, b"/tr\0val", req_id=7001)
        c.rpc(READ, b"/missing\0", req_id=7002)
        c.close()
    finally:
        assert stop(d) == 0
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    mine = [(r["dir"], r["type"], r["req_id"], r["tx_id"], r["dom"], r["payload"])
            for r in records if r["req_id"] in (7001, 7002)]
    assert mine == [
        ("in", "WRITE", 7001, 0, 0, "/tr\0val"),
        ("out", "WRITE", 7001, 0, 0, "OK\0"),
        ("in", "READ", 7002, 0, 0, "/missing\0"),
        ("out", "ERROR", 7002, 0, 0, "ENOENT\0"),
    ]
    assert all(isinstance(r["t"], float) and isinstance(r["conn"], int) for r in records)


def test_trace_appends(run_dir: Path) -> None:
    trace = run_dir / "trace.jsonl"
    trace.write_text('{"earlier": true}\n')
    d = start_ours(run_dir, "--trace", str(trace))
    try:
        raw(d).rpc(READ, b"/tool\0", req_id=9)
    finally:
        assert stop(d) == 0
    lines = trace.read_text().splitlines()
    assert lines[0] == '{"earlier": true}'
    assert len(lines) == 3


def test_state_dir_keeps_tree_across_restart(run_dir: Path) -> None:
    state = run_dir / "state"
    d = start_ours(run_dir, "--state-dir", str(state))
    c = raw(d)
    c.ok(WRITE, b"/keep/a\0", b"value a")
    c.ok(WRITE, b"/keep/b\0", b"")
    c.ok(SET_PERMS, b"/keep/a\0", b"n0\0", b"r5\0")
    c.ok(WRITE, b"/gone\0", b"x")
    c.ok(RM, b"/gone\0")
    c.close()
    assert stop(d) == 0

    d2 = start_ours(run_dir, "--state-dir", str(state))
    try:
        c = raw(d2)
        assert c.ok(READ, b"/keep/a\0") == b"value a"
        assert c.ok(READ, b"/keep/b\0") == b""
        assert c.ok(GET_PERMS, b"/keep/a\0") == b"n0\0r5\0"
        assert c.ok(DIRECTORY, b"/keep\0") == b"a\0b\0"
        assert c.err(READ, b"/gone\0") == "ENOENT"
        c.close()
    finally:
        assert stop(d2) == 0

    # Without --state-dir the tree starts empty again.
    d3 = start_ours(run_dir)
    try:
        assert raw(d3).err(READ, b"/keep/a\0") == "ENOENT"
    finally:
        assert stop(d3) == 0


def test_state_dir_with_garbage_is_a_clear_error(run_dir: Path) -> None:
    state = run_dir / "state"
    state.mkdir()
    (state / "store.json").write_text("garbage")
    r = cli("xenstored", "--socket", str(run_dir / "socket"), "--state-dir", str(state))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "store.json" in r.stderr
    assert not (run_dir / "socket").exists()
    assert (state / "store.json").read_text() == "garbage", "must not overwrite it"


# ---------------------------------------------------------------------------------------
# bad arguments


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-Q", "bogus=1"], "bogus"),
        (["-Q", "nodes"], "nodes"),
        (["-Q", "nodes=abc"], "nodes=abc"),
        (["-Q", "=5"], "unknown quota ''"),
        (["-Q", "nodes=-1"], "nodes"),
        (["-q", "nodes=5"], "nodes"),
        (["-E", "many"], "many"),
        (["-M", "5000"], "path-max"),  # the protocol ceiling is 2048
        (["--poll-us", "-1"], "--poll-us"),
    ],
)
def test_bad_quota_flags(run_dir: Path, args: list[str], named: str) -> None:
    sock = run_dir / "socket"
    r = cli("xenstored", "--socket", str(sock), *args)
    assert r.returncode == 2, r.stderr
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    assert named in errors[0], errors[0]
    assert "Traceback" not in r.stderr
    assert not sock.exists()


def test_socket_path_too_long(run_dir: Path) -> None:
    base = str(run_dir) + "/"
    too_long = base + "s" * (108 - len(base))
    assert len(too_long) == 108
    r = cli("xenstored", "--socket", too_long)
    assert r.returncode == 2
    errors = error_lines(r.stderr)
    assert len(errors) == 1 and "108" in errors[0], r.stderr
    assert not os.path.exists(too_long)


def test_socket_path_of_107_bytes_works(run_dir: Path) -> None:
    base = str(run_dir) + "/"
    sub = run_dir / "d"
    sub.mkdir()
    longest = str(sub) + "/" + "s" * (107 - len(str(sub)) - 1)
    assert len(longest) == 107 and longest.startswith(base)
    proc = subprocess.Popen([*STUBDOM, "xenstored", "--socket", longest],
                            stderr=subprocess.PIPE)
    d = Daemon("ours", longest, proc.pid, run_dir, proc=proc)
    try:
        deadline = time.monotonic() + GUARD
        while not os.path.exists(longest):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # The file can appear an instant before listen(): retry connecting until then.
        while True:
            try:
                c = raw(d)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert c.ok(READ, b"/tool\0") == b""
        c.close()
    finally:
        assert stop(d) == 0


# ---------------------------------------------------------------------------------------
# quota flags: accepted as cx spells them, visible through CONTROL quota, and enforced

QUOTA_FLAGS = ["-E", "77", "-W", "11", "-t", "3", "-A", "4", "-M", "1000", "-S", "999",
               "-Q", "outstanding=9", "-Q", "transaction-nodes=50", "-Q", "memory=123456",
               "-q", "memory=1000"]

QUOTA_REPORT = """Quota settings:
nodes            :       77 Nodes per domain
watches          :       11 Watches per domain
transactions     :        3 Transactions per domain
outstanding      :        9 Outstanding requests per domain
transaction-nodes:       50 Max. number of accessed nodes per transaction
memory           :   123456 Total Xenstore memory per domain (error level)
node-size        :      999 Max. size of a node
path-max         :     1000 Max. length of a node path
permissions      :        4 Max. number of permissions per node
"""
QUOTA_SOFT_REPORT = """Quota settings:
memory           :     1000 Total Xenstore memory per domain (warning level)
"""


def test_quota_flags_show_in_control_quota(run_dir: Path) -> None:
    d = start_ours(run_dir, *QUOTA_FLAGS)
    try:
        c = raw(d)
        assert c.control("quota") == QUOTA_REPORT
        assert c.control("quota-soft") == QUOTA_SOFT_REPORT
    finally:
        assert stop(d) == 0


def test_quota_long_options_and_q_names(run_dir: Path) -> None:
    d = start_ours(run_dir, "--entry-nb", "5", "--watch-nb", "6", "--transaction", "7",
                   "--perm-nb", "8", "--path-max", "900", "--entry-size", "1000",
                   "-Q", "nodes=55")  # -Q after -E: the later setting wins
    try:
        report = raw(d).control("quota")
    finally:
        assert stop(d) == 0
    values = {line.split(":")[0].strip(): int(line.split(":")[1].split()[0])
              for line in report.splitlines()[1:]}
    assert values == {"nodes": 55, "watches": 6, "transactions": 7, "outstanding": 20,
                      "transaction-nodes": 1024, "memory": 2621440, "node-size": 1000,
                      "path-max": 900, "permissions": 8}


@pytest.mark.peer
def test_quota_flags_control_report_equals_cx(run_dir: Path) -> None:
    need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    d = start_ours(run_dir / "ours", *QUOTA_FLAGS)
    x = start_cx(run_dir / "cx", *QUOTA_FLAGS)
    try:
        for words in (("quota",), ("quota-soft",)):
            assert raw(d).control(*words) == raw(x).control(*words), words
    finally:
        x.stop()
        assert stop(d) == 0


def guest(d: Daemon, dom0: Raw, domid: int) -> Raw:
    """Introduce `domid`, give it /local/domain/<domid>, and connect as it."""
    assert dom0.ok(INTRODUCE, f"{domid}\0".encode(), b"0\0", b"9\0") == b"OK\0"
    home = f"/local/domain/{domid}\0".encode()
    dom0.ok(MKDIR, home)
    dom0.ok(SET_PERMS, home, f"n{domid}\0".encode())
    return raw(f"{d.socket}.d/{domid}")


def test_quotas_are_enforced_for_guests_not_dom0(run_dir: Path) -> None:
    d = start_ours(run_dir, "-E", "4", "-W", "2", "-t", "1", "-A", "2", "-S", "100",
                   "-M", "40")
    try:
        dom0 = raw(d)
        g = guest(d, dom0, 5)

        # -S: the whole node record (24-byte header + 8 per perm + value + children)
        assert g.write("small", b"v" * 10)[0] == WRITE
        assert g.err(WRITE, b"big\0" + b"v" * 100) == "ENOSPC"
        assert dom0.write("/big", b"v" * 100)[0] == WRITE  # dom0 is exempt

        # -A 2: three permissions are too many for a guest
        assert g.err(SET_PERMS, b"small\0", b"n5\0", b"r1\0", b"r2\0") == "ENOSPC"
        assert g.ok(SET_PERMS, b"small\0", b"n5\0", b"r1\0") == b"OK\0"

        # -E 4: the domain owns its home and small; two more nodes, then ENOSPC
        assert g.write("n1", b"")[0] == WRITE
        assert g.write("n2", b"")[0] == WRITE
        assert g.err(WRITE, b"n3\0") == "ENOSPC"
        assert g.ok(READ, b"n2\0") == b""
        for i in range(6):  # dom0 is not bound by the node quota
            assert dom0.write(f"/dom0/n{i}", b"")[0] == WRITE

        # -W 2: the check is "more than the quota", so 3 watches, then E2BIG
        for i in range(3):
            assert g.ok(WATCH, f"w{i}\0t\0".encode()) == b"OK\0"
        assert g.err(WATCH, b"w3\0t\0") == "E2BIG"

        # -t 1: likewise 2 transactions, then ENOSPC
        assert g.ok(TRANSACTION_START, b"\0").rstrip(b"\0").isdigit()
        assert g.ok(TRANSACTION_START, b"\0").rstrip(b"\0").isdigit()
        assert g.err(TRANSACTION_START, b"\0") == "ENOSPC"

        # -M 40 binds everyone, dom0 too; for a guest it counts below its home
        assert dom0.write("/" + "p" * 39, b"")[0] == WRITE  # 40 bytes
        assert dom0.err(WRITE, ("/" + "p" * 40 + "\0").encode()) == "EINVAL"
        assert g.err(READ, ("q" * 40 + "\0").encode()) == "ENOENT"  # valid, absent
        assert g.err(READ, ("q" * 41 + "\0").encode()) == "EINVAL"
        g.close()
        dom0.close()
    finally:
        assert stop(d) == 0


@pytest.mark.peer
def test_path_max_flag_matches_cx_for_dom0(run_dir: Path) -> None:
    need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    d = start_ours(run_dir / "ours", "-M", "40")
    x = start_cx(run_dir / "cx", "-M", "40")
    try:
        for length in (39, 40, 41, 60):
            for path in ("/" + "p" * length, "/local/domain/0/" + "r" * length):
                req = (path + "\0").encode() + b"v"
                ours_reply = raw(d).rpc(WRITE, req)
                cx_reply = raw(x).rpc(WRITE, req)
                assert ours_reply == cx_reply, (path, ours_reply, cx_reply)
        # and the limit is really in force on both
        assert raw(d).rpc(WRITE, b"/" + b"p" * 60 + b"\0v")[0] == ERROR
    finally:
        x.stop()
        assert stop(d) == 0
