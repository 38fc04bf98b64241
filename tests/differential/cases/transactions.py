"""Transactions (cx xenstored_transaction.c, its conflict rules in the comment at the top):
the conflict cases A-J, test-xenstore's "ta err", isolation, id errors, END arguments
and the per-connection transaction quota."""

from tests.differential.corpus import S, Step, case

SETUP = (S("dom0", "WRITE", "/tx/X", "a"), S("dom0", "WRITE", "/tx/Y", "y"),
         S("dom0", "WRITE", "/tx/A", "a"), S("dom0", "WRITE", "/tx/D/c1", "c"),
         S("dom0", "WRITE", "/other/C", "c"), S("dom0", "TRANSACTION_START", bind="t"))
END = (S("dom0", "TRANSACTION_END", "T", tx="t"), S("dom0", "READ", "/tx/X"),
       S("dom0", "READ", "/tx/Y"), S("dom0", "DIRECTORY", "/tx"),
       S("dom0", "DIRECTORY", "/tx/D"))


def conflict(letter: str, doc: str, *body: Step) -> None:
    """One conflict case: tx on dom0, the outside writer on dom0b."""
    case(f"tx_conflict_{letter}", f"conflict case {letter}: {doc}", *SETUP, *body, *END)


conflict("A", "tx reads X; outside writes X; tx writes Y → EAGAIN.",
         S("dom0", "READ", "/tx/X", tx="t"), S("dom0b", "WRITE", "/tx/X", "out"),
         S("dom0", "WRITE", "/tx/Y", "in", tx="t"))
conflict("B", "tx blind-writes X; outside writes X → EAGAIN (outside value kept).",
         S("dom0", "WRITE", "/tx/X", "in", tx="t"), S("dom0b", "WRITE", "/tx/X", "out"))
conflict("C", "tx lists D; outside creates D/new; tx writes Y → EAGAIN.",
         S("dom0", "DIRECTORY", "/tx/D", tx="t"), S("dom0b", "WRITE", "/tx/D/new", "out"),
         S("dom0", "WRITE", "/tx/Y", "in", tx="t"))
conflict("D", "tx reads missing N; outside creates N; tx writes Y → EAGAIN.",
         S("dom0", "READ", "/tx/N", tx="t"), S("dom0b", "WRITE", "/tx/N", "out"),
         S("dom0", "WRITE", "/tx/Y", "in", tx="t"))
conflict("E", "tx reads A, writes B; outside writes unrelated C → OK.",
         S("dom0", "READ", "/tx/A", tx="t"), S("dom0", "WRITE", "/tx/Y", "in", tx="t"),
         S("dom0b", "WRITE", "/other/C", "out"))
conflict("F", "read-only tx; outside writes X → EAGAIN in cx.",
         S("dom0", "READ", "/tx/X", tx="t"), S("dom0b", "WRITE", "/tx/X", "out"))
conflict("G", "tx creates /tx/new1; outside creates sibling /tx/new2 → EAGAIN.",
         S("dom0", "WRITE", "/tx/new1", "in", tx="t"), S("dom0b", "WRITE", "/tx/new2", "out"))
conflict("H", "tx writes X; outside writes a different subtree → OK.",
         S("dom0", "WRITE", "/tx/X", "in", tx="t"), S("dom0b", "WRITE", "/other/C", "out"))
conflict("I", "tx rm /tx/D; outside creates /tx/D/c2 → EAGAIN.",
         S("dom0", "RM", "/tx/D", tx="t"), S("dom0b", "WRITE", "/tx/D/c2", "out"))
conflict("J", "tx writes X; outside SET_PERMS on the parent → OK.",
         S("dom0", "WRITE", "/tx/X", "in", tx="t"), S("dom0b", "SET_PERMS", "/tx", "n0", "r5"))

case("tx_ta_err",
     "test-xenstore \"ta err\": the tx keeps seeing its snapshot, commit gets EAGAIN, the "
     "outside value wins.",
     S("dom0", "WRITE", "xenstore-test/1/a", "a"), S("dom0", "TRANSACTION_START", bind="t"),
     S("dom0", "READ", "xenstore-test/1/a", tx="t"), S("dom0b", "WRITE", "xenstore-test/1/a", "b"),
     S("dom0", "READ", "xenstore-test/1/a", tx="t"),
     S("dom0", "WRITE", "xenstore-test/1/a", "c", tx="t"),
     S("dom0", "READ", "xenstore-test/1/a", tx="t"),
     S("dom0", "TRANSACTION_END", "T", tx="t"), S("dom0", "READ", "xenstore-test/1/a"))

case("tx_absent_stays_absent",
     "A node a tx read as missing stays missing to it (cx keeps the read in the tx's own "
     "space): created outside, a second read in the tx is still ENOENT, a DIRECTORY of its "
     "parent in the tx does not list it, and the commit gets EAGAIN.",
     S("dom0", "WRITE", "/ta/p", ""), S("dom0", "TRANSACTION_START", bind="t"),
     S("dom0", "READ", "/ta/p/n", tx="t"), S("dom0", "DIRECTORY", "/ta/p", tx="t"),
     S("dom0b", "WRITE", "/ta/p/n", "out"),
     S("dom0", "READ", "/ta/p/n", tx="t"), S("dom0", "DIRECTORY", "/ta/p", tx="t"),
     S("dom0", "GET_PERMS", "/ta/p/n", tx="t"), S("dom0", "READ", "/ta/p/n"),
     S("dom0", "TRANSACTION_END", "T", tx="t"), S("dom0", "READ", "/ta/p/n"))

case("tx_absent_then_written_in_tx",
     "A node a tx read as missing, then created outside, then written by the tx: the tx "
     "reads its own value; the commit gets EAGAIN and the outside value stays.",
     S("dom0", "WRITE", "/ta/q", ""), S("dom0", "TRANSACTION_START", bind="t"),
     S("dom0", "READ", "/ta/q/n", tx="t"), S("dom0b", "WRITE", "/ta/q/n", "out"),
     S("dom0", "WRITE", "/ta/q/n", "in", tx="t"), S("dom0", "READ", "/ta/q/n", tx="t"),
     S("dom0", "TRANSACTION_END", "T", tx="t"), S("dom0", "READ", "/ta/q/n"))

case("tx_absent_guest",
     "The same for a guest in its own tx (the generated case that found it): absent when "
     "first read, absent on the second read after dom0 created it.",
     S("dom0", "WRITE", "/ta/g", ""), S("dom0", "SET_PERMS", "/ta/g", "n0", "b5"),
     S("g5", "TRANSACTION_START", bind="t"), S("g5", "READ", "/ta/g/b", tx="t"),
     S("dom0", "WRITE", "/ta/g/b", ""), S("g5", "READ", "/ta/g/b", tx="t"),
     S("g5", "TRANSACTION_END", "F", tx="t"), S("g5", "READ", "/ta/g/b"),
     guests=(5,))

case("tx_rm_of_a_node_gone_outside",
     "A tx writes a node, dom0 removes it outside, the tx removes it: cx finds no such "
     "child in the parent and answers EIO (the tx's copy of the node is gone all the same); "
     "the commit gets EAGAIN.",
     S("dom0", "WRITE", "/tr/n/c", "v"), S("dom0", "TRANSACTION_START", bind="t"),
     S("dom0", "WRITE", "/tr/n", "in", tx="t"), S("dom0b", "RM", "/tr/n"),
     S("dom0", "RM", "/tr/n", tx="t"), S("dom0", "READ", "/tr/n", tx="t"),
     S("dom0", "READ", "/tr/n/c", tx="t"), S("dom0", "DIRECTORY", "/tr", tx="t"),
     S("dom0", "RM", "/tr/n", tx="t"),
     S("dom0", "TRANSACTION_END", "T", tx="t"), S("dom0", "DIRECTORY", "/tr"))

case("tx_rm_of_a_node_whose_parent_went_outside",
     "A tx writes a node, dom0 removes its parent outside, the tx removes the node.",
     S("dom0", "WRITE", "/tq/p/n", "v"), S("dom0", "TRANSACTION_START", bind="t"),
     S("dom0", "WRITE", "/tq/p/n", "in", tx="t"), S("dom0b", "RM", "/tq/p"),
     S("dom0", "RM", "/tq/p/n", tx="t"), S("dom0", "READ", "/tq/p/n", tx="t"),
     S("dom0", "TRANSACTION_END", "F", tx="t"), S("dom0", "DIRECTORY", "/tq"))

case("tx_isolation",
     "Inside a tx reads see its own writes; outside sees the old state until commit.",
     S("dom0", "WRITE", "/ti/a", "a"), S("dom0", "TRANSACTION_START", bind="t"),
     S("dom0", "WRITE", "/ti/a", "b", tx="t"), S("dom0", "WRITE", "/ti/n/m", "new", tx="t"),
     S("dom0", "READ", "/ti/a", tx="t"), S("dom0", "READ", "/ti/a"),
     S("dom0", "READ", "/ti/n/m"), S("dom0", "DIRECTORY", "/ti", tx="t"),
     S("dom0", "DIRECTORY", "/ti"), S("dom0", "GET_PERMS", "/ti/n", tx="t"),
     S("dom0", "RM", "/ti/a", tx="t"), S("dom0", "READ", "/ti/a", tx="t"),
     S("dom0", "DIRECTORY_PART", "/ti", "0", tx="t"), S("dom0", "SET_PERMS", "/ti/n", "r5", tx="t"),
     S("dom0", "GET_PERMS", "/ti/n", tx="t"), S("dom0", "TRANSACTION_END", "T", tx="t"),
     S("dom0", "READ", "/ti/a"), S("dom0", "READ", "/ti/n/m"), S("dom0", "GET_PERMS", "/ti/n"),
     S("dom0", "DIRECTORY", "/ti"))

case("tx_id_errors",
     "Nested start → EBUSY; unknown tx_id → ENOENT; END on tx 0 → ENOENT; bad END args → "
     "EINVAL; a second END → ENOENT; another connection's tx_id → ENOENT.",
     S("dom0", "TRANSACTION_START", bind="t"), S("dom0", "TRANSACTION_START", tx="t"),
     S("dom0", "TRANSACTION_START", tx=4242), S("dom0", "READ", "/tool", tx=4242),
     S("dom0", "WRITE", "/x", "v", tx=4242), S("dom0", "TRANSACTION_END", "T"),
     S("dom0", "TRANSACTION_END", "F"), S("dom0", "TRANSACTION_END", "X", tx="t"),
     S("dom0", "TRANSACTION_END", "TF", tx="t"), S("dom0", "TRANSACTION_END", "", tx="t"),
     S("dom0", "TRANSACTION_END", "t", tx="t"), S("dom0", "TRANSACTION_END", raw=b"T", tx="t"),
     S("dom0", "TRANSACTION_END", "T", "x", tx="t"), S("dom0", "TRANSACTION_END", tx="t"),
     S("dom0b", "READ", "/tool", tx="t"), S("dom0b", "TRANSACTION_END", "T", tx="t"),
     S("dom0", "GET_DOMAIN_PATH", "0", tx="t"), S("dom0", "WATCH", "/q", "w", tx="t"),
     S("dom0", "UNWATCH", "/q", "w", tx="t"), S("dom0", "TRANSACTION_END", "F", tx="t"),
     S("dom0", "TRANSACTION_END", "F", tx="t"), S("dom0", "READ", "/tool", tx="t"),
     S("dom0", "TRANSACTION_START", "junk"), S("dom0", "TRANSACTION_START", raw=b"", bind="u"),
     S("dom0", "TRANSACTION_END", "T", tx="u"), S("dom0", "TRANSACTION_START", bind="v"),
     S("dom0", "INTRODUCE", "5", "0", "0", tx="v"), S("dom0", "CONTROL", "print", "x", tx="v"),
     S("dom0", "TRANSACTION_END", "T", tx="v"))

case("tx_quota_guest",
     "A guest may have 10 transactions (the check is `>`, so 11 are accepted, the 12th "
     "ENOSPC); dom0 is exempt.",
     *[S("g5", "TRANSACTION_START", bind=f"g{i}") for i in range(12)],
     S("g5", "TRANSACTION_END", "F", tx="g0"), S("g5", "TRANSACTION_START", bind="g12"),
     S("g5", "TRANSACTION_START", bind="g13"),
     *[S("dom0", "TRANSACTION_START", bind=f"d{i}") for i in range(13)],
     S("g5", "RESET_WATCHES"), S("g5", "TRANSACTION_END", "F", tx="g1"),
     S("g5", "TRANSACTION_START", bind="g14"), guests=(5,))

case("tx_enospc_then_enomem",
     "XSA-415: a quota failure inside a transaction fails it: END T → ENOMEM; END F → OK.",
     S("g5", "TRANSACTION_START", bind="t"), S("g5", "WRITE", "v", "x" * 2100, tx="t"),
     S("g5", "WRITE", "w", "ok", tx="t"), S("g5", "READ", "w", tx="t"),
     S("g5", "TRANSACTION_END", "T", tx="t"), S("g5", "READ", "w"),
     S("g5", "TRANSACTION_START", bind="u"), S("g5", "WRITE", "v", "x" * 2100, tx="u"),
     S("g5", "TRANSACTION_END", "F", tx="u"), S("g5", "TRANSACTION_START", bind="w"),
     S("g5", "WRITE", "w", "ok", tx="w"), S("g5", "TRANSACTION_END", "T", tx="w"),
     S("g5", "READ", "w"), guests=(5,))

case("tx_guest_perms",
     "A guest's transaction sees the same permissions and existence hiding.",
     S("g5", "TRANSACTION_START", bind="t"), S("g5", "READ", "/tool/xenstored", tx="t"),
     S("g5", "READ", "/nope", tx="t"), S("g5", "WRITE", "data/x", "1", tx="t"),
     S("g5", "GET_PERMS", "data/x", tx="t"), S("g5", "WRITE", "/tool/x", "1", tx="t"),
     S("dom0", "READ", "/local/domain/5/data/x"), S("g5", "TRANSACTION_END", "T", tx="t"),
     S("dom0", "READ", "/local/domain/5/data/x"), S("dom0", "GET_PERMS", "/local/domain/5/data"),
     guests=(5,))
