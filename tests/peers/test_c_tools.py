"""Xen's own C tools (libxenstore 4.17) against our server, and differentially against cx.

- ``test-xenstore`` (xen-utils-4.17) must pass all 12 tests against ours; it also runs
  against cx here, as a check of the harness.
- ``xenstore-*`` (xenstore-utils) scenarios check exact stdout, stderr and exit codes
  against ours, and then run unchanged against cx: our output must equal cx's.

Every tool finds the daemon through ``XENSTORED_PATH`` (``Daemon.env``).  Timeouts are
failure guards only; nothing here waits for time to pass.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.support.daemons import (
    TEST_XENSTORE,
    XEN_BIN,
    Daemon,
    need_peer,
    short_tmpdir,
    start_ours,
)

pytestmark = pytest.mark.peer

GUARD = 30.0  # seconds: a hung tool fails the test instead of hanging it
XENSTORE_CONTROL = XEN_BIN / "xenstore-control"

TEST_XENSTORE_NAMES = (
    "read 1", "read 2000", "write 1", "write 2000", "dir", "rm node", "rm dir",
    "ta empty", "ta empty x", "ta rmw", "ta rmw x", "ta err",
)


def need_tools(*names: str) -> None:
    for name in names:
        need_peer(shutil.which(name) is not None, f"{name} (Debian xenstore-utils)")


@dataclass(frozen=True)
class Run:
    """One tool invocation and everything it printed."""

    argv: tuple[str, ...]
    rc: int
    out: str
    err: str


def xs(d: Daemon, *argv: str) -> Run:
    r = subprocess.run(argv, env=d.env, capture_output=True, text=True, timeout=GUARD,
                       check=False)
    return Run(tuple(argv), r.returncode, r.stdout, r.stderr)


# ---------------------------------------------------------------------------------------
# test-xenstore


def run_test_xenstore(d: Daemon) -> dict[str, str]:
    """Run all 12 tests; return {test name: result text}, asserting exit status 0."""
    need_peer(TEST_XENSTORE.exists(), f"{TEST_XENSTORE} (Debian xen-utils-4.17)")
    r = xs(d, str(TEST_XENSTORE))
    results: dict[str, str] = {}
    for line in r.out.splitlines():
        # printf("%-10s: %s", name, ...): " 12345 ns" or "failed (ret = .., stage ..)"
        m = re.fullmatch(r"(.{1,10}?)\s*: ?(.*)", line)
        if m:
            results[m.group(1)] = m.group(2)
    failed = {k: v for k, v in results.items() if "failed" in v}
    assert not failed, f"test-xenstore failures against {d.kind}: {failed}\n{r.out}{r.err}"
    assert r.rc == 0, f"test-xenstore exit {r.rc} against {d.kind}:\n{r.out}{r.err}"
    assert tuple(results) == TEST_XENSTORE_NAMES, r.out
    for name, text in results.items():
        assert re.fullmatch(r"\d+ ns", text), f"{name}: {text!r}"
    return results


def test_test_xenstore_passes_against_ours(ours: Daemon) -> None:
    need_tools("xenstore-ls")
    run_test_xenstore(ours)
    # It cleans up after itself: nothing of xenstore-test/<pid> is left behind.
    assert xs(ours, "xenstore-ls", "/local/domain/0").out == ""
    assert ours.alive()


def test_test_xenstore_passes_against_cx(cx: Daemon) -> None:
    """Harness sanity: the same parser and expectations hold for the real daemon."""
    run_test_xenstore(cx)


def test_test_xenstore_many_iterations_against_ours(ours: Daemon) -> None:
    need_peer(TEST_XENSTORE.exists(), f"{TEST_XENSTORE} (Debian xen-utils-4.17)")
    r = xs(ours, str(TEST_XENSTORE), "-i", "50")
    assert r.rc == 0, r.out + r.err
    assert "failed" not in r.out
    assert r.out.count("avg:") == len(TEST_XENSTORE_NAMES), r.out


# ---------------------------------------------------------------------------------------
# xenstore-utils scenarios: each returns every Run, checks its own explicit expectations
# when `check` is true, and is replayed against cx for the differential test.

Scenario = Callable[[Daemon, bool], list[Run]]

def sc_write_read(d: Daemon, check: bool) -> list[Run]:
    runs = [
        # more than one pair: TRANSACTION_START, WRITE x2, TRANSACTION_END T
        w := xs(d, "xenstore-write", "/t/a", "1", "/t/b", "hello world"),
        # one pair: a plain WRITE
        w1 := xs(d, "xenstore-write", "/t/c", ""),
        # more than one key: a transaction
        r2 := xs(d, "xenstore-read", "/t/a", "/t/b", "/t/c"),
        r1 := xs(d, "xenstore-read", "/t/b"),
        rp := xs(d, "xenstore-read", "-p", "/t/a"),
        rt := xs(d, "xenstore-read", "/t"),
        missing := xs(d, "xenstore-read", "/t/zz"),
        # one key missing among several aborts the whole read (and its transaction)
        mixed := xs(d, "xenstore-read", "/t/a", "/t/zz"),
        rel := xs(d, "xenstore-write", "rel", "relative"),
        relr := xs(d, "xenstore-read", "/local/domain/0/rel"),
        usage := xs(d, "xenstore-write", "/t/odd"),
        again := xs(d, "xenstore-write", "/t/a", "2"),
        ra := xs(d, "xenstore-read", "/t/a"),
    ]
    if check:
        assert (w.rc, w.out, w.err) == (0, "", "")
        assert (w1.rc, w1.out) == (0, "")
        assert (r2.rc, r2.out) == (0, "1\nhello world\n\n")
        assert (r1.rc, r1.out) == (0, "hello world\n")
        assert (rp.rc, rp.out) == (0, "/t/a: 1\n")
        assert (rt.rc, rt.out) == (0, "\n")  # an implicit parent has an empty value
        assert missing.rc != 0 and missing.out == ""
        assert missing.err == "xenstore-read: couldn't read path /t/zz\n"
        assert mixed.rc != 0 and "couldn't read path /t/zz" in mixed.err
        assert rel.rc == 0 and (relr.rc, relr.out) == (0, "relative\n")
        assert usage.rc != 0 and "Usage" in usage.err
        assert (again.rc, ra.out) == (0, "2\n")
    return runs


def sc_ls(d: Daemon, check: bool) -> list[Run]:
    runs = [
        xs(d, "xenstore-write", "/t/a", "1", "/t/b/c", "hi", "/t/b/d", ""),
        xs(d, "xenstore-chmod", "/t/a", "n0", "r5"),
        lsp := xs(d, "xenstore-ls", "-p", "/t"),
        lsf := xs(d, "xenstore-ls", "-f", "/t"),
        lsfp := xs(d, "xenstore-ls", "-f", "-p", "/t/b"),
        lsroot := xs(d, "xenstore-ls", "-p", "/"),
        lsmissing := xs(d, "xenstore-ls", "/nope"),
    ]
    if check:
        assert lsp.rc == 0
        assert lsp.out.splitlines() == [
            'a = "1"  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0,r5)',
            'b = "" . . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)',
            ' c = "hi"  . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)',
            ' d = ""  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)',
        ], lsp.out
        assert lsf.out == '/t/a = "1"\n/t/b = ""\n/t/b/c = "hi"\n/t/b/d = ""\n'
        assert lsfp.out.splitlines()[0].startswith('/t/b/c = "hi"')
        assert lsfp.out.splitlines()[0].endswith("  (n0)")
        # cx's initial tree is /tool/xenstored only; /local is not created (xenstored_core.c
        # ``setup_structure``)
        assert [line.split(" =")[0] for line in lsroot.out.splitlines()] == [
            "tool", " xenstored", "t", " a", " b", "  c", "  d"]
        assert lsmissing.rc != 0
        assert lsmissing.err == "xenstore-ls: xs_directory (/nope): No such file or directory\n"
    return runs


def sc_list_exists_rm(d: Daemon, check: bool) -> list[Run]:
    runs = [
        xs(d, "xenstore-write", "/t/a", "1", "/t/b", "2", "/t/c/d", "3"),
        ls := xs(d, "xenstore-list", "/t"),
        lsp := xs(d, "xenstore-list", "-p", "/t"),
        lsempty := xs(d, "xenstore-list", "/t/a"),
        lsmissing := xs(d, "xenstore-list", "/nope"),
        ex := xs(d, "xenstore-exists", "/t/a"),
        exmissing := xs(d, "xenstore-exists", "/t/zz"),
        exroot := xs(d, "xenstore-exists", "/"),
        rm := xs(d, "xenstore-rm", "/t/a"),
        exgone := xs(d, "xenstore-exists", "/t/a"),
        rmabsent := xs(d, "xenstore-rm", "/t/zz"),  # parent exists: not an error
        rmorphan := xs(d, "xenstore-rm", "/nope/x"),  # parent missing: ENOENT
        rmtree := xs(d, "xenstore-rm", "/t/c"),  # recursive
        rmt := xs(d, "xenstore-rm", "-t", "/t/b"),  # and the parents it leaves empty
        after := xs(d, "xenstore-ls", "-f", "/"),
    ]
    if check:
        assert (ls.rc, ls.out) == (0, "a\nb\nc\n")
        assert (lsp.rc, lsp.out) == (0, "/t/a\n/t/b\n/t/c\n")
        assert (lsempty.rc, lsempty.out) == (0, "")
        assert lsmissing.rc == 1 and lsmissing.err == "xenstore-list: could not list path /nope\n"
        assert (ex.rc, ex.out, ex.err) == (0, "", "")
        assert (exmissing.rc, exmissing.out) == (1, "")
        assert exroot.rc == 0
        assert rm.rc == 0 and exgone.rc == 1
        assert rmabsent.rc == 0
        assert rmorphan.rc == 1
        assert rmorphan.err == "xenstore-rm: could not remove path /nope/x\n"
        assert rmtree.rc == 0 and rmt.rc == 0
        assert after.out == '/tool = ""\n/tool/xenstored = ""\n', after.out
    return runs


def sc_chmod(d: Daemon, check: bool) -> list[Run]:
    runs = [
        xs(d, "xenstore-write", "/t/a", "1", "/t/b/c", "2"),
        one := xs(d, "xenstore-chmod", "/t/a", "n0", "r5", "w6", "b7"),
        perms_a := xs(d, "xenstore-ls", "-f", "-p", "/t"),
        rec := xs(d, "xenstore-chmod", "-r", "/t/b", "b3"),
        perms_b := xs(d, "xenstore-ls", "-f", "-p", "/t"),
        bad := xs(d, "xenstore-chmod", "/t/a", "x5"),
        missing := xs(d, "xenstore-chmod", "/nope", "r1"),
        child := xs(d, "xenstore-write", "/t/b/new", "n"),
        perms_new := xs(d, "xenstore-ls", "-f", "-p", "/t/b"),
    ]
    if check:
        assert one.rc == 0
        first = perms_a.out.splitlines()[0]
        assert first.startswith('/t/a = "1"') and first.endswith("  (n0,r5,w6,b7)"), first
        assert rec.rc == 0
        # -r applies to the node and everything under it, nothing else
        tails = [line.rsplit("  ", 1)[1] for line in perms_b.out.splitlines()]
        assert tails == ["(n0,r5,w6,b7)", "(b3)", "(b3)"], perms_b.out
        assert bad.rc != 0 and bad.err == "xenstore-chmod: Invalid permission specification: 'x'\n"
        assert missing.rc != 0
        assert missing.err == ("xenstore-chmod: Error occurred setting permissions on "
                               "'/nope': No such file or directory\n")
        # a new node inherits its parent's permissions
        assert child.rc == 0
        assert [line.rsplit("  ", 1)[1] for line in perms_new.out.splitlines()] == [
            "(b3)", "(b3)"]
    return runs


SCENARIOS: dict[str, Scenario] = {
    "write_read": sc_write_read,
    "ls": sc_ls,
    "list_exists_rm": sc_list_exists_rm,
    "chmod": sc_chmod,
}
TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-list",
         "xenstore-exists", "xenstore-rm", "xenstore-chmod")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tools_against_ours(ours: Daemon, name: str) -> None:
    need_tools(*TOOLS)
    SCENARIOS[name](ours, True)
    assert ours.alive()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tools_against_cx(cx: Daemon, name: str) -> None:
    """Harness sanity: the explicit expectations hold for the real daemon too."""
    need_tools(*TOOLS)
    SCENARIOS[name](cx, True)


def assert_same_runs(mine: list[Run], theirs: list[Run]) -> None:
    diffs = []
    for a, b in zip(mine, theirs, strict=True):
        if (a.rc, a.out, a.err) != (b.rc, b.out, b.err):
            diffs.append(f"$ {' '.join(a.argv)}\n  ours: rc={a.rc} out={a.out!r} "
                         f"err={a.err!r}\n  cx:   rc={b.rc} out={b.out!r} err={b.err!r}")
    assert not diffs, "output differs from cx:\n" + "\n".join(diffs)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tools_ours_equals_cx(ours: Daemon, cx: Daemon, name: str) -> None:
    need_tools(*TOOLS)
    assert_same_runs(SCENARIOS[name](ours, False), SCENARIOS[name](cx, False))


# ---------------------------------------------------------------------------------------
# What the tools put on the wire (libxenstore xs.c, xenstore_client.c), seen through our
# --trace


def wire_ops(trace: list[dict[str, object]]) -> list[str]:
    """The requests one tool sent: "TYPE" or "TYPE@tx" when inside a transaction."""
    return [f"{r['type']}@tx" if r["tx_id"] else str(r["type"])
            for r in trace if r["dir"] == "in"]


TX_CASES: list[tuple[tuple[str, ...], int, list[str]]] = [
    (("xenstore-write", "/t/a", "1", "/t/b", "2"), 0,
     ["TRANSACTION_START", "WRITE@tx", "WRITE@tx", "TRANSACTION_END@tx"]),
    (("xenstore-write", "/t/a", "3"), 0, ["WRITE"]),
    (("xenstore-read", "/t/a"), 0, ["READ"]),
    (("xenstore-read", "/t/a", "/t/b"), 0,
     ["TRANSACTION_START", "READ@tx", "READ@tx", "TRANSACTION_END@tx"]),
    (("xenstore-exists", "/t/a"), 0, ["TRANSACTION_START", "READ@tx", "TRANSACTION_END@tx"]),
    (("xenstore-exists", "/t/zz"), 1, ["TRANSACTION_START", "READ@tx", "TRANSACTION_END@tx"]),
    (("xenstore-list", "/t"), 0, ["TRANSACTION_START", "DIRECTORY@tx", "TRANSACTION_END@tx"]),
    (("xenstore-chmod", "/t/a", "n0", "r1"), 0,
     ["TRANSACTION_START", "SET_PERMS@tx", "TRANSACTION_END@tx"]),
    (("xenstore-rm", "/t/b"), 0, ["TRANSACTION_START", "RM@tx", "TRANSACTION_END@tx"]),
]


def test_tools_open_the_transactions_they_should() -> None:
    need_tools(*TOOLS)
    run_dir = short_tmpdir("sdtx-")
    trace_file = run_dir / "trace.jsonl"
    d = start_ours(run_dir, "--trace", str(trace_file))
    try:
        seen = 0
        for argv, rc, expected in TX_CASES:
            r = xs(d, *argv)
            assert r.rc == rc, (argv, r)
            # The reply to the last request was traced before the tool could exit.
            records = [json.loads(line) for line in trace_file.read_text().splitlines()]
            assert wire_ops(records[seen:]) == expected, argv
            ends = [r["payload"] for r in records[seen:]
                    if r["dir"] == "in" and r["type"] == "TRANSACTION_END"]
            # exists commits on success and aborts ("F") when the read failed
            assert ends in ([], ["T\0"] if rc == 0 else ["F\0"]), (argv, ends)
            seen = len(records)
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------
# xenstore-watch: a long-running tool, synchronised on its output lines


class LineReader:
    """Read whole lines from a pipe, failing (not hanging) after GUARD seconds."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def line(self) -> str:
        deadline = time.monotonic() + GUARD
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                pytest.fail(f"no line from xenstore-watch within {GUARD}s (got {self.buf!r})")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return self.buf.decode() if self.buf else "<EOF>"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def run_watch(d: Daemon) -> tuple[list[str], int, list[Run]]:
    """``xenstore-watch -n 3 /t``: the initial event, then the changes that match /t."""
    runs = [xs(d, "xenstore-write", "/t/x", "0")]
    proc = subprocess.Popen(["xenstore-watch", "-n", "3", "/t"], env=d.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = LineReader(proc)
        lines = [reader.line()]  # the initial event: the watch is now registered
        runs.append(xs(d, "xenstore-write", "/other", "o"))  # not under /t: no event
        runs.append(xs(d, "xenstore-write", "/t/w/deep", "1"))
        lines.append(reader.line())
        runs.append(xs(d, "xenstore-rm", "/t/x"))
        lines.append(reader.line())
        rc = proc.wait(GUARD)
        assert proc.stdout is not None
        rest = proc.stdout.read().decode()
        if rest:
            lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return lines, rc, runs


def test_watch_against_ours(ours: Daemon) -> None:
    need_tools("xenstore-watch", "xenstore-write", "xenstore-rm")
    lines, rc, runs = run_watch(ours)
    assert all(r.rc == 0 for r in runs), runs
    assert lines == ["/t", "/t/w/deep", "/t/x"]
    assert rc == 0


def test_watch_ours_equals_cx(ours: Daemon, cx: Daemon) -> None:
    need_tools("xenstore-watch", "xenstore-write", "xenstore-rm")
    mine, theirs = run_watch(ours), run_watch(cx)
    assert mine[:2] == theirs[:2]
    assert_same_runs(mine[2], theirs[2])


# ---------------------------------------------------------------------------------------
# xenstore-control (xen-utils-4.17 ships it outside PATH): CONTROL over libxenstore


@pytest.mark.parametrize("args", [("quota",), ("help",), ("quota-soft",), ("bogus",)])
def test_xenstore_control_ours_equals_cx(ours: Daemon, cx: Daemon, args: tuple[str, ...]) -> None:
    need_peer(XENSTORE_CONTROL.exists(), f"{XENSTORE_CONTROL} (Debian xen-utils-4.17)")
    assert_same_runs([xs(ours, str(XENSTORE_CONTROL), *args)],
                     [xs(cx, str(XENSTORE_CONTROL), *args)])


def test_xenstore_control_quota_against_ours(ours: Daemon) -> None:
    need_peer(XENSTORE_CONTROL.exists(), f"{XENSTORE_CONTROL} (Debian xen-utils-4.17)")
    set_ = xs(ours, str(XENSTORE_CONTROL), "quota", "set", "nodes", "77")
    r = xs(ours, str(XENSTORE_CONTROL), "quota")
    assert set_.rc == 0 and r.rc == 0
    assert "nodes            :       77 Nodes per domain\n" in r.out, r.out
