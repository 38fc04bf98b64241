"""``--state-dir`` under SIGKILL: every acknowledged change survives, no half transaction.

A writer pipelines WRITEs and transactions (three writes each) into a real daemon
process while another thread SIGKILLs the daemon once a randomly chosen number of
replies has arrived, so the kill lands in the middle of traffic: between a journal
write and its fsync, between the fsync and the reply, or inside a compaction (the
threshold is set low so that compactions happen all the time).  The daemon is
restarted on the same directory, everything acknowledged so far is checked, and the
next round begins.  Nothing here waits on a timing: the checks hold wherever the kill
lands.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.daemons import Daemon, short_tmpdir, start_ours, wait_for_socket
from tests.xenstored.test_cli import (
    ERROR,
    HEADER,
    READ,
    TRANSACTION_END,
    TRANSACTION_START,
    WRITE,
    Raw,
)

ROUNDS = 16
SEED = int(os.environ.get("STUBDOM_CRASH_SEED", "20261128"))
TX_KEYS = ("a", "b", "c")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    d = short_tmpdir("sdcrash-")
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@dataclass
class Ledger:
    """What the writer was told: acknowledged writes, and transactions it committed."""

    acked: dict[str, bytes] = field(default_factory=dict)
    #: Transactions whose END was sent: name -> (value, acknowledged?).
    tx_sent: dict[str, tuple[bytes, bool]] = field(default_factory=dict)
    replies: int = 0


class Writer:
    """Pipelines requests until the daemon dies under it."""

    def __init__(self, sock_path: str, rnd: random.Random, round_no: int, ledger: Ledger) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20.0)
        self.sock.connect(sock_path)
        self.rnd = rnd
        self.round = round_no
        self.ledger = ledger
        self.buf = b""
        self.progress = threading.Condition()
        #: An assertion that failed in the writer thread, re-raised by the test.
        self.error: BaseException | None = None

    def _send(self, typ: int, payload: bytes, req_id: int, tx_id: int = 0) -> None:
        self.sock.sendall(HEADER.pack(typ, req_id, tx_id, len(payload)) + payload)

    def _reply(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= HEADER.size:
                typ, req, _tx, length = HEADER.unpack_from(self.buf)
                if len(self.buf) >= HEADER.size + length:
                    body = self.buf[HEADER.size : HEADER.size + length]
                    self.buf = self.buf[HEADER.size + length :]
                    with self.progress:
                        self.ledger.replies += 1
                        self.progress.notify_all()
                    return typ, req, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("daemon gone")
            self.buf += chunk

    def run(self) -> None:
        try:
            n = 0
            while True:
                n += 1
                if self.rnd.random() < 0.3:
                    self._transaction(n)
                else:
                    self._writes(n)
        except OSError:
            return  # the daemon was killed: ConnectionError, reset, broken pipe
        except BaseException as e:
            self.error = e
            with self.progress:
                self.progress.notify_all()
        finally:
            self.sock.close()

    def _writes(self, n: int) -> None:
        batch = {}
        for i in range(self.rnd.randint(1, 16)):
            path = f"/w/{self.round}/{n}/{i}"
            value = os.urandom(self.rnd.randint(0, 40))
            batch[i + 1] = (path, value)
            self._send(WRITE, path.encode() + b"\0" + value, i + 1)
        for _ in batch:
            typ, req, body = self._reply()
            assert typ == WRITE, body
            path, value = batch[req]
            self.ledger.acked[path] = value

    def _transaction(self, n: int) -> None:
        self._send(TRANSACTION_START, b"\0", 1)
        typ, _, body = self._reply()
        assert typ == TRANSACTION_START, body
        tx_id = int(body.rstrip(b"\0"))
        name = f"{self.round}-{n}"
        value = f"tx {name}".encode()
        for i, key in enumerate(TX_KEYS):
            self._send(WRITE, f"/tx/{name}/{key}".encode() + b"\0" + value, 2 + i, tx_id)
        self._send(TRANSACTION_END, b"T\0", 9, tx_id)
        self.ledger.tx_sent[name] = (value, False)
        for _ in range(len(TX_KEYS) + 1):
            typ, _, body = self._reply()
            assert typ != ERROR, body
        self.ledger.tx_sent[name] = (value, True)


def check(d: Daemon, ledger: Ledger) -> None:
    c = Raw(d.socket)
    try:
        for path, value in ledger.acked.items():
            typ, body = c.rpc(READ, path.encode() + b"\0")
            assert (typ, body) == (READ, value), f"acknowledged write {path} lost"
        for name, (value, acked) in ledger.tx_sent.items():
            seen = [c.rpc(READ, f"/tx/{name}/{k}".encode() + b"\0") for k in TX_KEYS]
            present = [typ == READ for typ, _ in seen]
            assert all(present) or not any(present), f"transaction {name} half visible: {seen}"
            if acked:
                assert all(present), f"acknowledged transaction {name} lost"
            if all(present):
                assert all(body == value for _, body in seen)
    finally:
        c.close()


def test_sigkill_at_random_points_loses_no_acknowledged_change(run_dir: Path) -> None:
    rnd = random.Random(SEED)
    state = run_dir / "state"
    ledger = Ledger()
    args = ("--state-dir", str(state), "--journal-compact-at", "8192")
    for round_no in range(ROUNDS):
        d = start_ours(run_dir, *args)
        assert d.proc is not None
        check(d, ledger)
        writer = Writer(d.socket, rnd, round_no, ledger)
        thread = threading.Thread(target=writer.run)
        kill_after = ledger.replies + rnd.randint(1, 400)
        thread.start()
        with writer.progress:
            assert writer.progress.wait_for(
                lambda w=writer, n=kill_after: ledger.replies >= n or w.error is not None,
                timeout=60,
            ), "the writer made no progress"
        d.proc.send_signal(signal.SIGKILL)  # while the writer is still pipelining
        d.proc.wait(10)
        thread.join(20)
        assert not thread.is_alive()
        if writer.error is not None:
            raise writer.error
    d = start_ours(run_dir, *args)
    try:
        check(d, ledger)
        assert len(ledger.acked) > ROUNDS and any(a for _, a in ledger.tx_sent.values())
    finally:
        d.stop()
    log = (run_dir / "xenstored.log").read_text()
    assert "Traceback" not in log


def _serve_and_stop(run_dir: Path, state: Path) -> tuple[Raw, subprocess.Popen[str]]:
    sock = str(run_dir / "socket")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stubdom", "xenstored", "--socket", sock, "--state-dir", str(state)],
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_socket(sock, proc)
    return Raw(sock), proc


def test_a_damaged_journal_is_one_line_and_the_prefix_is_served(run_dir: Path) -> None:
    state = run_dir / "state"
    d = start_ours(run_dir, "--state-dir", str(state))
    c = Raw(d.socket)
    c.ok(WRITE, b"/kept\0", b"yes")
    c.ok(WRITE, b"/lost\0", b"no")
    c.close()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    journal = state / "journal"
    data = bytearray(journal.read_bytes())
    data[-3] ^= 0xFF  # inside the second record's payload
    journal.write_bytes(bytes(data))

    for restart in range(2):
        c, proc = _serve_and_stop(run_dir, state)
        try:
            assert c.ok(READ, b"/kept\0") == b"yes"
            assert c.err(READ, b"/lost\0") == "ENOENT"
        finally:
            c.close()
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        lines = stderr.splitlines()
        if restart == 0:
            assert len(lines) == 1, stderr
            assert "record 2 at byte" in lines[0] and "fails its checksum" in lines[0]
            assert "journal.damaged-" in lines[0]
        else:
            assert lines == [], "the damage is reported once, then the directory is clean"
    assert [p.name.split("-")[0] for p in state.glob("journal.damaged-*")] == ["journal.damaged"]
