"""Quotas (cx 4.17 defaults, xenstored_core.c and xenstored_domain.c): node size
incl. the child list, node count (`-E`), and the cx quota flags our server must accept
(`-E -W -t -A -S -M -Q`)."""

from tests.differential.corpus import S, case, many

SMALL = ("-E", "50", "-W", "3", "-t", "2", "-A", "2", "-S", "300", "-M", "100",
         "-Q", "transaction-nodes=20")

case("quota_node_size_value",
     "Unprivileged node records (24 + 8·nperms + value + child list) must stay < 2048: "
     "2015 value bytes ok with one perm, 2016 ENOSPC; dom0 is exempt.",
     S("g5", "WRITE", "v", "x" * 2000), S("g5", "WRITE", "v", "x" * 2015),
     S("g5", "WRITE", "v", "x" * 2016), S("g5", "WRITE", "v", "x" * 2100),
     S("g5", "READ", "v"), S("g5", "SET_PERMS", "v", "n5", "r6"),
     S("g5", "WRITE", "v", "x" * 2008), S("g5", "WRITE", "v", "x" * 2007),
     S("dom0", "WRITE", "/local/domain/5/v", "x" * 3000),
     S("g5", "READ", "v"), S("g5", "WRITE", "v", "short"), S("g5", "WRITE", "v2", "x" * 2016),
     guests=(5,))

case("quota_node_size_children",
     "The child list counts: the 426th child (`n425`) of /local/domain/5 gets ENOSPC.",
     many("g5", "WRITE", 425, "n{i}", ""), S("g5", "WRITE", "n425", ""),
     S("g5", "MKDIR", "n425"), S("g5", "WRITE", "n1/deeper", "ok"),
     S("g5", "RM", "n424"), S("g5", "WRITE", "n425", ""), S("g5", "WRITE", "n426", ""),
     S("dom0", "WRITE", "/local/domain/5/n427", ""), S("g5", "WRITE", "n0", "x"),
     guests=(5,))

case("quota_node_count",
     "`-E 50`: a guest may own 50 nodes (its home counts); then ENOSPC, also inside a "
     "transaction (failing it); RM frees quota; dom0 is exempt.",
     many("g5", "WRITE", 55, "n{i}", ""), S("g5", "RM", "n0"), S("g5", "WRITE", "x", ""),
     S("g5", "WRITE", "y", ""), S("g5", "TRANSACTION_START", bind="t"),
     S("g5", "RM", "n1", tx="t"), S("g5", "WRITE", "z1", "", tx="t"),
     S("g5", "WRITE", "z2", "", tx="t"), S("g5", "TRANSACTION_END", "T", tx="t"),
     S("dom0", "CONTROL", "quota", "5"),
     many("dom0", "WRITE", 60, "/local/domain/0/d{i}", ""),
     S("dom0", "CONTROL", "quota"), guests=(5,), daemon_args=SMALL, cx_only=True)

case("quota_flags_small",
     "Small `-W 3 -t 2 -A 2 -S 300 -M 100 -Q transaction-nodes=20`: each limit applies "
     "(guests only, except path-max).",
     many("g5", "WATCH", 5, "w{i}", "t"), many("g5", "TRANSACTION_START", 4),
     S("g5", "RESET_WATCHES"), S("g5", "WRITE", "p", ""),
     S("g5", "SET_PERMS", "p", "n5", "r1"), S("g5", "SET_PERMS", "p", "n5", "r1", "r2"),
     S("g5", "WRITE", "p", "x" * 260), S("g5", "WRITE", "p", "x" * 270),
     S("dom0", "WRITE", "/" + "m" * 99, "v"), S("dom0", "WRITE", "/" + "m" * 100, "v"),
     S("g5", "WRITE", "a" * 100, "v"), S("g5", "WRITE", "a" * 101, "v"),
     S("g5", "TRANSACTION_START", bind="t"), many("g5", "READ", 25, "q{i}", tx="t"),
     S("g5", "TRANSACTION_END", "T", tx="t"), S("dom0", "CONTROL", "quota"),
     guests=(5,), daemon_args=SMALL, cx_only=True)
