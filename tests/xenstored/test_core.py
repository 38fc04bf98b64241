"""cx 4.17 semantics of the sans-IO core, request by request (cx xenstored_core.c,
xenstored_transaction.c, xenstored_domain.c, xenstored_control.c)."""

from __future__ import annotations

import pytest

from stubdom.wire import Op
from stubdom.xenstored.core import XenStored
from stubdom.xenstored.quota import Quotas
from tests.xenstored.harness import Harness


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_initial_tree_is_cx_s(h: Harness) -> None:
    assert h.ok(h.dom0, Op.DIRECTORY, "/") == b"tool\0"
    assert h.ok(h.dom0, Op.DIRECTORY, "/tool") == b"xenstored\0"
    assert h.ok(h.dom0, Op.GET_PERMS, "/") == b"n0\0"
    assert h.err(h.dom0, Op.READ, "/local") == "ENOENT"


def test_write_creates_parents_and_values_keep_nuls(h: Harness) -> None:
    h.write(h.dom0, "/a/b/c", b"v\0w\0")
    assert h.ok(h.dom0, Op.READ, "/a/b/c") == b"v\0w\0"
    assert h.ok(h.dom0, Op.READ, "/a") == b""
    h.ok(h.dom0, Op.MKDIR, "/a/b/c")
    assert h.ok(h.dom0, Op.READ, "/a/b/c") == b"v\0w\0"


def test_relative_paths_from_dom0(h: Harness) -> None:
    h.write(h.dom0, "x/y", "1")
    assert h.ok(h.dom0, Op.READ, "/local/domain/0/x/y") == b"1"


@pytest.mark.parametrize("path", ["/a.b", "//a", "/a/", "", "@foo"])
def test_invalid_paths(h: Harness, path: str) -> None:
    assert h.err(h.dom0, Op.READ, path) == "EINVAL"
    assert h.write(h.dom0, path, "x") == ("ERROR", b"EINVAL\0")


def test_unterminated_argument_is_einval(h: Harness) -> None:
    h.ok(h.dom0, Op.WATCH, "/w", "t")
    for op in (Op.READ, Op.DIRECTORY, Op.GET_PERMS, Op.MKDIR, Op.RM):
        assert h.rq(h.dom0, op, raw=b"/a") == ("ERROR", b"EINVAL\0")


def test_new_node_permissions(h: Harness) -> None:
    g5 = h.guest(5)
    h.write(h.dom0, "/local/domain/5/shared", "")
    h.ok(h.dom0, Op.SET_PERMS, "/local/domain/5/shared", "n0", "b5")
    h.write(g5, "/local/domain/5/shared/mine", "x")
    # Unprivileged creators own what they create; the rest of the vector is inherited.
    assert h.ok(h.dom0, Op.GET_PERMS, "/local/domain/5/shared/mine") == b"n5\0b5\0"
    h.ok(h.dom0, Op.MKDIR, "/owned7")
    h.ok(h.dom0, Op.SET_PERMS, "/owned7", "n7")
    h.write(h.dom0, "/owned7/byzero", "")
    assert h.ok(h.dom0, Op.GET_PERMS, "/owned7/byzero") == b"n7\0"


def test_existence_is_hidden_from_guests(h: Harness) -> None:
    g5 = h.guest(5)
    assert h.err(g5, Op.READ, "/tool/nope") == "EACCES"
    assert h.err(g5, Op.READ, "/nope") == "EACCES"
    assert h.err(g5, Op.READ, "/tool/xenstored") == "EACCES"
    assert h.err(g5, Op.READ, "data/nope") == "ENOENT"
    h.write(g5, "data/x", "1")
    assert h.ok(g5, Op.GET_PERMS, "data/x") == b"n5\0"


def test_owner_change_needs_privilege(h: Harness) -> None:
    g5 = h.guest(5)
    h.write(g5, "data", "")
    assert h.err(g5, Op.SET_PERMS, "data", "n0") == "EPERM"
    h.ok(g5, Op.SET_PERMS, "data", "n5", "r6")
    for op, args in (
        (Op.WRITE, ("/", "x")),
        (Op.SET_PERMS, ("/", "n5")),
        (Op.RM, ("/",)),
        (Op.MKDIR, ("/",)),
    ):
        assert h.err(g5, op, *args) == "EACCES"


def test_permission_vector_rules(h: Harness) -> None:
    g5, g6 = h.guest(5), h.guest(6)
    h.write(h.dom0, "/p", "v")
    h.ok(h.dom0, Op.SET_PERMS, "/p", "r0", "n5", "w6")
    assert h.err(g5, Op.READ, "/p") == "EACCES"  # ACL entry beats the default
    assert h.err(g6, Op.READ, "/p") == "EACCES"  # write-only
    h.write(g6, "/p", "w")
    g7 = h.guest(7)
    assert h.ok(g7, Op.READ, "/p") == b"w"  # default r
    assert h.err(g5, Op.SET_PERMS, "/p", "n5") == "EACCES"
    assert h.err(h.dom0, Op.SET_PERMS, "/p", "w") == "EINVAL"
    assert h.err(h.dom0, Op.SET_PERMS, "/p") == "EINVAL"
    h.ok(h.dom0, Op.SET_PERMS, "/p", "b0x10", "r010")
    assert h.ok(h.dom0, Op.GET_PERMS, "/p") == b"b16\0r8\0"


def test_set_target_gives_the_stubdomain_its_guest_s_rights(h: Harness) -> None:
    _g5, g6 = h.guest(5), h.guest(6)
    h.write(h.dom0, "/local/domain/5/only5", "secret")
    h.ok(h.dom0, Op.SET_PERMS, "/local/domain/5/only5", "n0", "r5")
    assert h.err(g6, Op.READ, "/local/domain/5/only5") == "EACCES"
    assert h.err(g6, Op.READ, "/local/domain/5/gone") == "EACCES"
    h.ok(h.dom0, Op.SET_TARGET, "6", "5")
    assert h.ok(g6, Op.READ, "/local/domain/5/only5") == b"secret"
    assert h.err(g6, Op.READ, "/local/domain/5/gone") == "ENOENT"
    h.write(g6, "rel", "1")  # relative paths stay the stubdomain's own
    assert h.ok(h.dom0, Op.READ, "/local/domain/6/rel") == b"1"
    # The stubdomain's reference absorbs the first RELEASE of its target.
    h.ok(h.dom0, Op.RELEASE, "5")
    assert h.ok(h.dom0, Op.IS_DOMAIN_INTRODUCED, "5") == b"T\0"
    h.ok(h.dom0, Op.RELEASE, "5")
    assert h.ok(h.dom0, Op.IS_DOMAIN_INTRODUCED, "5") == b"F\0"


def test_rm(h: Harness) -> None:
    assert h.err(h.dom0, Op.RM, "/") == "EINVAL"
    h.ok(h.dom0, Op.RM, "/tool/nothing")
    assert h.err(h.dom0, Op.RM, "/no/thing") == "ENOENT"
    h.write(h.dom0, "/d/a/b", "")
    h.write(h.dom0, "/d/c", "")
    h.ok(h.dom0, Op.RM, "/d/a")
    assert h.ok(h.dom0, Op.DIRECTORY, "/d") == b"c\0"


def test_directory_keeps_insertion_order(h: Harness) -> None:
    for name in ("tool2", "foo", "local", "a", "bin", "@x", "m"):
        h.write(h.dom0, f"/o/{name}", "")
    h.ok(h.dom0, Op.RM, "/o/local")
    assert h.ok(h.dom0, Op.DIRECTORY, "/o") == b"tool2\0foo\0a\0bin\0@x\0m\0"


def test_directory_part_pages_like_cx(h: Harness) -> None:
    for i in range(600):
        h.write(h.dom0, f"/big/n{i:09d}", "")  # 11 bytes with the NUL
    assert h.err(h.dom0, Op.DIRECTORY, "/big") == "E2BIG"
    first = h.ok(h.dom0, Op.DIRECTORY_PART, "/big", "0")
    gen, _, body = first.partition(b"\0")
    assert len(body) == 371 * 11 and not body.endswith(b"\0\0")
    second = h.ok(h.dom0, Op.DIRECTORY_PART, "/big", str(len(body)))
    gen2, _, body2 = second.partition(b"\0")
    assert gen2 == gen and body2.endswith(b"\0\0") and len(body2) == 229 * 11 + 1
    assert (body + body2[:-1]).count(b"\0") == 600
    assert h.ok(h.dom0, Op.DIRECTORY_PART, "/big", "99999") == gen + b"\0\0"
    assert h.err(h.dom0, Op.DIRECTORY_PART, "/big") == "EINVAL"


def test_watch_basics(h: Harness) -> None:
    d = h.dom0
    h.ok(d, Op.WATCH, "/w", "t")
    assert h.events(d) == [("/w", "t")]
    assert h.err(d, Op.WATCH, "/w", "t") == "EEXIST"
    assert h.err(d, Op.WATCH, "/w", "t", "1") == "EINVAL"
    h.write(d, "/w/x", "1")
    h.write(d, "/other", "1")
    assert h.events(d) == [("/w/x", "t")]
    h.ok(d, Op.UNWATCH, "/w", "t")
    assert h.err(d, Op.UNWATCH, "/w", "t") == "ENOENT"
    h.write(d, "/w/y", "1")
    assert h.events(d) == []


def test_rm_events_are_post_order_and_exact_below_the_top(h: Harness) -> None:
    d = h.dom0
    h.write(d, "/w/a/b/c", "")
    for path, tok in (("/w/a/b/c", "deep"), ("/w", "tok"), ("/", "tRoot"), ("/w/nothere", "n")):
        h.ok(d, Op.WATCH, path, tok)
    h.events(d)
    h.ok(d, Op.RM, "/w")
    assert h.events(d) == [("/w/a/b/c", "deep"), ("/w", "tok"), ("/w", "tRoot")]


def test_relative_watch_strips_the_prefix_and_guests_see_only_readable_nodes(h: Harness) -> None:
    g5 = h.guest(5)
    h.ok(g5, Op.WATCH, "data", "rel")
    h.ok(g5, Op.WATCH, "/", "root")
    h.ok(g5, Op.WATCH, "/local/domain/0", "d0")
    assert h.events(g5) == [("data", "rel"), ("/", "root"), ("/local/domain/0", "d0")]
    h.write(h.dom0, "/local/domain/0/secret", "x")
    h.write(h.dom0, "/local/domain/5/data/q/x", "y")
    assert h.events(g5) == [("data/q/x", "rel"), ("/local/domain/5/data/q/x", "root")]


def test_special_watches_and_their_permissions(h: Harness) -> None:
    g8 = h.guest(8)
    g7 = h.guest(7)
    h.ok(g8, Op.WATCH, "@releaseDomain", "r")
    h.ok(g7, Op.WATCH, "@releaseDomain", "r")
    h.ok(h.dom0, Op.WATCH, "@releaseDomain", "r0")
    h.ok(h.dom0, Op.WATCH, "@introduceDomain", "i0")
    for c in (g8, g7, h.dom0):
        h.events(c)
    assert h.err(g8, Op.SET_PERMS, "@releaseDomain", "n8") == "EACCES"
    h.ok(h.dom0, Op.SET_PERMS, "@releaseDomain", "n0", "r8")
    assert h.err(h.dom0, Op.SET_PERMS, "@other", "n0") == "EINVAL"
    assert h.err(h.dom0, Op.GET_PERMS, "@releaseDomain") == "EINVAL"
    h.guest(9, home=False)
    assert h.events(h.dom0) == [("@introduceDomain", "i0")]
    h.ok(h.dom0, Op.RELEASE, "9")
    assert h.events(g8) == [("@releaseDomain", "r")]
    assert h.events(g7) == []
    assert h.events(h.dom0) == [("@releaseDomain", "r0")]


def test_domain_death_removes_owned_nodes_with_events(h: Harness) -> None:
    h.guest(7)
    h.write(h.dom0, "/local/domain/7/byzero", "")
    h.ok(h.dom0, Op.WATCH, "/local/domain/7", "w")
    h.events(h.dom0)
    h.xs.domain_died(7)
    assert h.err(h.dom0, Op.READ, "/local/domain/7") == "ENOENT"
    assert h.ok(h.dom0, Op.IS_DOMAIN_INTRODUCED, "7") == b"F\0"
    assert h.ok(h.dom0, Op.DIRECTORY, "/local/domain") == b""
    assert ("/local/domain/7", "w") in h.events(h.dom0)


# -- transactions: cx's conflict rules (xenstored_transaction.c, top comment) --------------


def _tx_case(h: Harness, inside: list[tuple[str, str]], outside: list[tuple[str, str]]) -> str:
    d, o = h.dom0, h.xs.connect(0)
    h.write(d, "/tx/X", "x")
    for name in ("A", "B", "C", "Y"):
        h.write(d, f"/tx/{name}", name)
    h.write(d, "/tx/D/c", "")
    t = h.start(d)
    for what, arg in inside:
        if what == "read":
            h.rq(d, Op.READ, arg, tx=t)
        elif what == "dir":
            h.ok(d, Op.DIRECTORY, arg, tx=t)
        elif what == "write":
            h.write(d, arg, "in", tx=t)
        elif what == "rm":
            h.ok(d, Op.RM, arg, tx=t)
    for what, arg in outside:
        if what == "write":
            h.write(o, arg, "out")
        elif what == "perms":
            h.ok(o, Op.SET_PERMS, arg, "n0", "r3")
    return h.end(d, t)


@pytest.mark.parametrize(
    ("case", "inside", "outside", "result"),
    [
        ("A", [("read", "/tx/X"), ("write", "/tx/Y")], [("write", "/tx/X")], "EAGAIN"),
        ("B", [("write", "/tx/X")], [("write", "/tx/X")], "EAGAIN"),
        ("C", [("dir", "/tx/D"), ("write", "/tx/Y")], [("write", "/tx/D/new")], "EAGAIN"),
        ("D", [("read", "/tx/N"), ("write", "/tx/Y")], [("write", "/tx/N")], "EAGAIN"),
        ("E", [("read", "/tx/A"), ("write", "/tx/B")], [("write", "/tx/C")], "OK"),
        ("F", [("read", "/tx/X")], [("write", "/tx/X")], "EAGAIN"),
        ("G", [("write", "/tx/new1")], [("write", "/tx/new2")], "EAGAIN"),
        ("H", [("write", "/tx/X")], [("write", "/elsewhere")], "OK"),
        ("I", [("rm", "/tx/D")], [("write", "/tx/D/c2")], "EAGAIN"),
        ("J", [("write", "/tx/X")], [("perms", "/tx")], "OK"),
    ],
)
def test_conflict_table(
    h: Harness,
    case: str,
    inside: list[tuple[str, str]],
    outside: list[tuple[str, str]],
    result: str,
) -> None:
    assert _tx_case(h, inside, outside) == result, case


def test_transaction_isolation_and_events_at_commit(h: Harness) -> None:
    d = h.dom0
    h.ok(d, Op.WATCH, "/w", "t")
    h.events(d)
    t = h.start(d)
    h.write(d, "/w/t1", "1", tx=t)
    h.write(d, "/w/t1", "2", tx=t)
    assert h.err(d, Op.READ, "/w/t1") == "ENOENT"
    assert h.ok(d, Op.READ, "/w/t1", tx=t) == b"2"
    assert h.events(d) == []
    assert h.end(d, t) == "OK"
    assert h.events(d) == [("/w/t1", "t")]
    t = h.start(d)
    h.write(d, "/w/t2", "1", tx=t)
    assert h.end(d, t, commit=False) == "OK"
    assert h.events(d) == []
    assert h.err(d, Op.READ, "/w/t2") == "ENOENT"


def test_a_node_a_transaction_found_missing_stays_missing_to_it(h: Harness) -> None:
    """cx keeps a read in the transaction's own space, a missing node's too: created
    outside afterwards, it is still missing inside (READ, GET_PERMS), until the
    transaction writes it itself; the commit then conflicts."""
    d = h.dom0
    h.write(d, "/m", "")
    t = h.start(d)
    assert h.err(d, Op.READ, "/m/n", tx=t) == "ENOENT"
    h.write(d, "/m/n", "out")
    assert h.err(d, Op.READ, "/m/n", tx=t) == "ENOENT"
    assert h.err(d, Op.GET_PERMS, "/m/n", tx=t) == "ENOENT"
    h.write(d, "/m/n", "in", tx=t)
    assert h.ok(d, Op.READ, "/m/n", tx=t) == b"in"
    assert h.end(d, t) == "EAGAIN"
    assert h.ok(d, Op.READ, "/m/n") == b"out"


@pytest.mark.parametrize(
    ("removed_outside", "error"), [("/r/n", "EIO"), ("/r", "EINVAL")], ids=["node", "parent"]
)
def test_rm_in_a_transaction_of_a_node_removed_outside(
    h: Harness, removed_outside: str, error: str
) -> None:
    """cx takes the node out of its parent first: a parent (as the transaction sees it)
    that no longer lists it is EIO, a parent gone is EINVAL, and nothing is removed."""
    d = h.dom0
    h.write(d, "/r/n/c", "v")
    t = h.start(d)
    h.write(d, "/r/n", "in", tx=t)
    h.ok(d, Op.RM, removed_outside)
    assert h.err(d, Op.RM, "/r/n", tx=t) == error
    assert h.ok(d, Op.READ, "/r/n", tx=t) == b"in"
    assert h.end(d, t) == "EAGAIN"


def test_transaction_ids_and_errors(h: Harness) -> None:
    d = h.dom0
    t = h.start(d)
    assert t == 1 and h.start(d) == 2
    assert h.err(d, Op.TRANSACTION_START, "", tx=t) == "EBUSY"
    assert h.err(d, Op.READ, "/", tx=99) == "ENOENT"
    assert h.err(d, Op.TRANSACTION_END, "T") == "ENOENT"
    assert h.err(d, Op.TRANSACTION_END, "X", tx=t) == "EINVAL"
    assert h.end(d, t) == "OK"
    assert h.end(d, t) == "ENOENT"
    # WATCH ignores tx_id, even an unknown one.
    h.ok(d, Op.WATCH, "/x", "t", tx=99)
    # RESET_WATCHES drops watches and transactions.
    h.ok(d, Op.RESET_WATCHES, "")
    assert h.err(d, Op.UNWATCH, "/x", "t") == "ENOENT"
    assert h.end(d, 2) == "ENOENT"


def test_failed_transaction_commits_enomem(h: Harness) -> None:
    g5 = h.guest(5)
    t = h.start(g5)
    assert h.write(g5, "big", b"x" * 2100, tx=t) == ("ERROR", b"ENOSPC\0")
    assert h.end(g5, t) == "ENOMEM"


def test_xsa421_create_and_remove_in_one_transaction(h: Harness) -> None:
    g5 = h.guest(5)
    before = h.xs.store.count_owned(5)
    t = h.start(g5)
    h.write(g5, "tmp/x", "1", tx=t)
    h.ok(g5, Op.RM, "tmp", tx=t)
    assert h.end(g5, t) == "OK"
    assert h.xs.store.count_owned(5) == before


def test_xsa440_two_transactions_remove_the_same_nodes(h: Harness) -> None:
    g5 = h.guest(5)
    for i in range(50):
        h.write(g5, f"many/n{i}", "")
    before = h.xs.store.count_owned(5)
    o = h.xs.connect(5)
    t1, t2 = h.start(g5), h.start(o)
    h.ok(g5, Op.RM, "many", tx=t1)
    h.ok(o, Op.RM, "many", tx=t2)
    assert h.end(g5, t1) == "OK"
    assert h.end(o, t2) == "EAGAIN"
    assert h.xs.store.count_owned(5) == before - 51


# -- quotas (cx 4.17 defaults) -----------------------------------------------------------


def test_guest_quotas() -> None:
    h = Harness()
    g5 = h.guest(5)
    for i in range(129):
        h.ok(g5, Op.WATCH, f"w{i}", "t")
    assert h.err(g5, Op.WATCH, "w129", "t") == "E2BIG"
    for _ in range(11):
        h.start(g5)
    assert h.err(g5, Op.TRANSACTION_START, "") == "ENOSPC"
    h.write(g5, "p", "")
    assert h.err(g5, Op.SET_PERMS, "p", "n5", "r1", "r2", "r3", "r4", "r6") == "ENOSPC"
    h.ok(g5, Op.SET_PERMS, "p", "n5", "r1", "r2", "r3", "r4")
    # Node size: header 24 + 8 per permission + value + child list must stay below 2048.
    assert h.write(g5, "v", b"x" * 2015) == ("WRITE", b"OK\0")
    assert h.write(g5, "v", b"x" * 2016) == ("ERROR", b"ENOSPC\0")
    # dom0 is not bound by it.
    assert h.write(h.dom0, "/local/domain/5/v", b"x" * 4000)[0] == "WRITE"


def test_node_quota_counts_what_a_guest_owns() -> None:
    h = Harness(XenStored(Quotas(nodes=10)))
    g5 = h.guest(5)
    created = 0
    while h.write(g5, f"n{created}", "")[0] == "WRITE":
        created += 1
    assert created == 9  # its home counts too
    assert h.write(g5, "n99", "") == ("ERROR", b"ENOSPC\0")


def test_path_quota_binds_dom0_too() -> None:
    h = Harness()
    assert h.write(h.dom0, "/" + "a" * 2047, "")[0] == "WRITE"
    assert h.write(h.dom0, "/" + "a" * 2048, "") == ("ERROR", b"EINVAL\0")


# -- domain requests and CONTROL (xenstored_domain.c, xenstored_control.c) ---------------


def test_domain_requests(h: Harness) -> None:
    d = h.dom0
    assert h.err(d, Op.INTRODUCE, "5", "0", "0") == "EINVAL"
    assert h.err(d, Op.INTRODUCE, "5", "0") == "EINVAL"
    assert h.ok(d, Op.GET_DOMAIN_PATH, "") == b"/local/domain/0\0"
    assert h.ok(d, Op.GET_DOMAIN_PATH, "abc") == b"/local/domain/0\0"
    assert h.ok(d, Op.GET_DOMAIN_PATH, "-1") == b"/local/domain/4294967295\0"
    assert h.ok(d, Op.GET_DOMAIN_PATH, "70000") == b"/local/domain/70000\0"
    assert h.ok(d, Op.IS_DOMAIN_INTRODUCED, "32752") == b"T\0"
    assert h.ok(d, Op.IS_DOMAIN_INTRODUCED, "5") == b"F\0"
    assert h.err(d, Op.RELEASE, "5") == "ENOENT"
    assert h.err(d, Op.RELEASE, "0") == "EINVAL"
    assert h.err(d, Op.RESUME, "0") == "EINVAL"
    assert h.err(d, Op.RESUME, "5") == "ENOENT"
    assert h.err(d, Op.SET_TARGET, "5", "6") == "ENOENT"
    g5 = h.guest(5)
    for op, args in (
        (Op.IS_DOMAIN_INTRODUCED, ("5",)),
        (Op.CONTROL, ("print", "x")),
        (Op.INTRODUCE, ("6", "0", "1")),
        (Op.RELEASE, ("5",)),
    ):
        assert h.err(g5, op, *args) == "EACCES"
    assert h.ok(g5, Op.GET_DOMAIN_PATH, "5") == b"/local/domain/5\0"


def test_unknown_types_are_enosys(h: Harness) -> None:
    for op in (15, 16, 20, 23, 0xFFFF):
        assert h.rq(h.dom0, op, raw=b"x\0") == ("ERROR", b"ENOSYS\0")


def test_control(h: Harness) -> None:
    d = h.dom0
    assert h.ok(d, Op.CONTROL, "print", "hello") == b"OK\0"
    assert h.err(d, Op.CONTROL, "bogus") == "EINVAL"
    assert h.rq(d, Op.CONTROL, raw=b"") == ("ERROR", b"EINVAL\0")
    assert h.ok(d, Op.CONTROL, "quota").startswith(b"Quota settings:\nnodes            :     1000")
    assert h.ok(d, Op.CONTROL, "quota", "0").startswith(b"Domain 0:\nnodes           :        3\n")
    h.ok(d, Op.CONTROL, "quota", "set", "nodes", "7")
    assert h.xs.quotas.nodes == 7
    assert h.err(d, Op.CONTROL, "quota", "set", "bogus", "7") == "EINVAL"
    assert h.ok(d, Op.CONTROL, "help").startswith(b"check\t\nlog\ton|off\n")


def test_memory_quota_is_enomem() -> None:
    h = Harness(XenStored(Quotas(memory=4000)))
    g5 = h.guest(5)
    assert h.write(g5, "a", b"x" * 1500)[0] == "WRITE"
    assert h.write(g5, "b", b"x" * 1500)[0] == "WRITE"
    assert h.write(g5, "c", b"x" * 1500) == ("ERROR", b"ENOMEM\0")
    assert h.err(g5, Op.WATCH, "w" * 1000, "t" * 1000) == "ENOMEM"
    h.ok(g5, Op.RM, "a")
    assert h.write(g5, "c", b"x" * 1500)[0] == "WRITE"


def test_domain_state_control_plays_the_hypervisor(h: Harness) -> None:
    h.guest(5)
    h.ok(h.dom0, Op.WATCH, "@releaseDomain", "r")
    h.events(h.dom0)
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "shutdown")
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "shutdown")
    assert h.events(h.dom0) == [("@releaseDomain", "r")]  # once until RESUME
    h.ok(h.dom0, Op.RESUME, "5")
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "crashed")
    assert h.events(h.dom0) == [("@releaseDomain", "r")]
    h.ok(h.dom0, Op.CONTROL, "domain-state", "5", "gone")
    assert h.events(h.dom0) == [("@releaseDomain", "r")]
    assert h.ok(h.dom0, Op.IS_DOMAIN_INTRODUCED, "5") == b"F\0"
    h.write(h.dom0, "/n", "")
    assert h.err(h.dom0, Op.SET_PERMS, "/n", "n5") == "ENOENT"
    assert h.err(h.dom0, Op.CONTROL, "domain-state", "5", "bogus") == "EINVAL"


def test_remembered_paths_stay_bounded_and_obey_the_path_quota() -> None:
    """Known path arguments skip validation (`core._plain_args`); a guest naming ever
    new paths must not grow that memory, and a smaller path quota still applies."""
    from stubdom.xenstored import core

    h = Harness()
    for i in range(core._PLAIN_CACHED + 10):
        h.rq(h.dom0, Op.READ, f"/n{i}")
        h.write(h.dom0, f"/w{i}", "v")
    assert 0 < len(core._plain_args) <= core._PLAIN_CACHED
    assert 0 < len(core._plain_paths) <= core._PLAIN_CACHED
    g5 = h.guest(5)
    h.write(h.dom0, "/local/domain/5/a-long-name", "v")
    assert h.ok(g5, Op.READ, "/local/domain/5/a-long-name") == b"v"
    h.xs.quotas.path_max = 10
    assert h.err(g5, Op.READ, "/local/domain/5/a-long-name") == "EINVAL"
    assert h.err(g5, Op.WRITE, "/local/domain/5/a-long-name", "w") == "EINVAL"


def test_remembered_relative_paths_are_per_connection_bounded_and_obey_the_quota() -> None:
    """A relative path is remembered by the connection that sent it (another domain's
    same words name another node), within a bound, and a smaller quota still applies."""
    from stubdom.xenstored import core

    h = Harness()
    g5, g6 = h.guest(5), h.guest(6)
    h.write(h.dom0, "/local/domain/5/a-long-name", "five")
    h.write(h.dom0, "/local/domain/6/a-long-name", "six")
    for _ in range(2):  # the second time from what the connections remember
        assert h.ok(g5, Op.READ, "a-long-name") == b"five"
        assert h.ok(g6, Op.READ, "a-long-name") == b"six"
        assert h.write(g5, "a-long-name", "five") == ("WRITE", b"OK\0")
    assert g5.arg_paths == {b"a-long-name\0": "/local/domain/5/a-long-name"}
    assert g5.paths == {b"a-long-name": "/local/domain/5/a-long-name"}
    for i in range(core._RELATIVE_CACHED + 10):
        h.rq(g5, Op.READ, f"n{i}")
    assert 0 < len(g5.arg_paths) <= core._RELATIVE_CACHED
    assert h.ok(g5, Op.READ, "a-long-name") == b"five"
    assert h.write(g5, "a-long-name", "five") == ("WRITE", b"OK\0")
    h.xs.quotas.path_max = 10
    assert h.err(g5, Op.READ, "a-long-name") == "EINVAL"
    assert h.err(g5, Op.WRITE, "a-long-name", "w") == "EINVAL"
