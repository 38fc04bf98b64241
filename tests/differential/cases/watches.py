"""Watches (cx xenstored_watch.c, docs/misc/xenstore.txt): initial events,
subtree matching, RM post-order, relative paths, permission filtering, transactions, special
paths, errors and the watch quota."""

from tests.differential.corpus import S, case, close, many

case("watch_initial_and_errors",
     "WATCH answers OK then one initial event (even for a missing or unreadable path); "
     "duplicate → EEXIST; UNWATCH unknown → ENOENT; 3 strings or a trailing empty → EINVAL.",
     S("dom0", "WATCH", "/wi", "t1"), S("dom0", "WATCH", "/wi", "t1"),
     S("dom0", "WATCH", "/wi", "t2"), S("dom0", "WATCH", "/wi/sub", "t1"),
     S("dom0", "WATCH", "/wi", "t1", "0"), S("dom0", "WATCH", "/wi", "t1", ""),
     S("dom0", "WATCH", "/wi"), S("dom0", "WATCH", raw=b"/wi\0t1"),
     S("dom0", "WATCH", "/wi", ""), S("dom0", "WATCH", "@anything", "ta"),
     S("dom0", "UNWATCH", "/wi", "nope"), S("dom0", "UNWATCH", "/nope", "t1"),
     S("dom0", "UNWATCH", "/wi", "t1", "x"), S("dom0", "UNWATCH", "/wi"),
     S("dom0", "UNWATCH", "/wi", "t2"), S("dom0", "UNWATCH", "/wi", "t2"),
     S("dom0", "WRITE", "/wi/sub", "v"), S("dom0", "WATCH", "/wi/x", "t1", tx=12345),
     S("dom0", "WATCH", "rel/w", "t3"), S("dom0", "WATCH", "/a.b", "t4"),
     S("g5", "WATCH", "/local/domain/0", "g"), S("g5", "WATCH", "/tool/xenstored", "g"),
     S("g5", "WATCH", "@releaseDomain", "g"), S("g5", "WATCH", "/", "groot"),
     guests=(5,))

case("watch_subtree_match",
     "A watch fires for its path and everything below, not for a sibling sharing a prefix; "
     "MKDIR of an existing node fires nothing; a same-value WRITE fires.",
     S("dom0", "WATCH", "/sm", "t"), S("dom0b", "WATCH", "/", "root"),
     S("dom0", "WRITE", "/sm", "v"), S("dom0", "WRITE", "/sm/a/b", "v"),
     S("dom0", "WRITE", "/smx", "v"), S("dom0", "WRITE", "/s", "v"),
     S("dom0", "MKDIR", "/sm/a"), S("dom0", "MKDIR", "/sm/c"), S("dom0", "WRITE", "/sm/a/b", "v"),
     S("dom0", "SET_PERMS", "/sm/a", "n0"), S("dom0", "RM", "/sm/nope"),
     S("dom0", "RM", "/sm/a"), S("dom0", "UNWATCH", "/sm", "t"), S("dom0", "WRITE", "/sm", "w"),
     S("dom0", "SET_PERMS", "/", "n0"))

case("watch_rm_postorder",
     "RM fires post-order: removed descendants match only exactly (and only if they "
     "existed), the top node and its ancestors by subtree.",
     S("dom0", "WRITE", "/w/a/b/c", "1"), S("dom0", "WRITE", "/w/a/x", "2"),
     S("dom0", "WATCH", "/w/a/b/c", "deep"), S("dom0", "WATCH", "/w", "tok"),
     S("dom0", "WATCH", "/", "tRoot"), S("dom0", "WATCH", "/w/a/missing", "miss"),
     S("dom0", "WATCH", "/w/a/b", "mid"), S("dom0b", "WATCH", "/w/a/x", "x"),
     S("dom0b", "WATCH", "/w/a/b/c/d", "below"), S("dom0", "RM", "/w"),
     S("dom0", "RM", "/w"), S("dom0", "WRITE", "/w/a/b/c", "again"), S("dom0", "RM", "/w/a/b"))

case("watch_relative_paths",
     "A relative watch gets relative event paths (the /local/domain/<id>/ prefix stripped).",
     S("dom0", "WATCH", "rel", "r"), S("dom0", "WRITE", "/local/domain/0/rel/x", "1"),
     S("dom0", "WRITE", "rel/y", "1"), S("dom0", "WATCH", "/local/domain/0/rel", "abs"),
     S("dom0", "WRITE", "rel/z", "1"), S("g5", "WATCH", "data", "g"),
     S("g5", "WATCH", "/local/domain/5/data", "gabs"),
     S("dom0", "WRITE", "/local/domain/5/data/q/x", "1"), S("g5", "WRITE", "data/y", "2"),
     S("dom0", "RM", "/local/domain/0/rel"), S("dom0", "RM", "/local/domain/5/data"),
     guests=(5,))

case("watch_permission_filter",
     "XSA-115: events go to a guest only if it can read the node or its parent; for "
     "SET_PERMS the old perms count too.",
     S("dom0", "WRITE", "/pf/open/x", "1"), S("dom0", "WRITE", "/pf/closed/x", "1"),
     S("dom0", "SET_PERMS", "/pf/open", "n0", "r5"),
     S("g5", "WATCH", "/", "root"), S("g5", "WATCH", "/local/domain/0", "d0"),
     S("g5", "WATCH", "/pf", "pf"),
     S("dom0", "WRITE", "/local/domain/0/secret", "s"), S("dom0", "WRITE", "/pf/closed/y", "1"),
     S("dom0", "WRITE", "/pf/open/y", "1"), S("dom0", "WRITE", "/pf/open/y/z", "1"),
     S("dom0", "WRITE", "/pf/open", "v"), S("dom0", "SET_PERMS", "/pf/open", "n0"),
     S("dom0", "WRITE", "/pf/open", "w"), S("dom0", "SET_PERMS", "/pf/open", "n0", "r5"),
     S("dom0", "WRITE", "/local/domain/5/data/x", "1"), S("dom0", "RM", "/pf/open"),
     S("dom0", "RM", "/pf/closed"), S("g5", "WRITE", "mine", "1"),
     S("dom0", "SET_PERMS", "/", "n0"), guests=(5,))

case("watch_transaction_events",
     "Events of a transaction fire at commit, merged per node; an aborted one fires nothing.",
     S("dom0", "WATCH", "/wt", "t"), S("dom0b", "TRANSACTION_START", bind="a"),
     S("dom0b", "WRITE", "/wt/t1", "1", tx="a"), S("dom0b", "WRITE", "/wt/t1", "2", tx="a"),
     S("dom0b", "WRITE", "/wt/t2", "3", tx="a"), S("dom0b", "RM", "/wt/t2", tx="a"),
     S("dom0b", "MKDIR", "/wt/m", tx="a"), S("dom0b", "SET_PERMS", "/wt/m", "n0", tx="a"),
     S("dom0b", "TRANSACTION_END", "T", tx="a"),
     S("dom0b", "TRANSACTION_START", bind="b"), S("dom0b", "WRITE", "/wt/t3", "1", tx="b"),
     S("dom0b", "TRANSACTION_END", "F", tx="b"),
     S("dom0b", "TRANSACTION_START", bind="c"), S("dom0b", "WRITE", "/wt/t1", "4", tx="c"),
     S("dom0b", "RM", "/wt/t1", tx="c"), S("dom0b", "WRITE", "/wt/t1", "5", tx="c"),
     S("dom0b", "RM", "/wt", tx="c"), S("dom0b", "TRANSACTION_END", "T", tx="c"))

case("watch_order_and_reset",
     "Within a connection events follow watch registration order; RESET_WATCHES drops "
     "them all (and the connection can watch again).",
     S("dom0", "WATCH", "/ord/a", "second"), S("dom0", "WATCH", "/ord", "first"),
     S("dom0", "WATCH", "/", "third"), S("dom0b", "WATCH", "/ord", "other"),
     S("dom0", "WRITE", "/ord/a/b", "1"), S("dom0", "RESET_WATCHES"),
     S("dom0", "WRITE", "/ord/a/b", "2"), S("dom0", "WATCH", "/ord", "first"),
     S("dom0", "RESET_WATCHES", raw=b""), S("dom0", "UNWATCH", "/ord", "first"),
     S("dom0", "WRITE", "/ord/a", "3"), close("dom0b"), S("dom0", "WRITE", "/ord/a", "4"))

WHY_STALE = ("cx's do_set_perms returns the stale errno instead of set_perms_special's "
             "result (EINVAL for an unknown @path, EACCES without permission); the cx "
             "answer depends on the previous request, we answer what cx meant")

case("watch_special_paths",
     "@introduceDomain/@releaseDomain fire only to connections with READ on their perms "
     "(dom0 by default; `SET_PERMS @releaseDomain n0 r8` adds domain 8).",
     S("dom0", "WATCH", "@introduceDomain", "intro"), S("dom0", "WATCH", "@releaseDomain", "rel"),
     S("dom0b", "WATCH", "@releaseDomain", "rel-b"),
     S("dom0", "SET_PERMS", "@releaseDomain", "n0", "r8"),
     S("dom0", "INTRODUCE", "9", "0", "10"),
     S("g7", "WATCH", "@releaseDomain", "g7"), S("g8", "WATCH", "@releaseDomain", "g8"),
     S("g8", "WATCH", "@introduceDomain", "g8i"),
     S("dom0", "RELEASE", "9"), S("dom0", "INTRODUCE", "9", "0", "10"),
     S("dom0", "SET_PERMS", "@releaseDomain", "n0"), S("dom0", "RELEASE", "9"),
     S("dom0", "SET_PERMS", "@introduceDomain", "n0", "r7"),
     S("dom0", "INTRODUCE", "9", "0", "10"), S("g7", "WATCH", "@introduceDomain", "g7i"),
     S("dom0", "INTRODUCE", "10", "0", "11"), S("dom0", "GET_PERMS", "@releaseDomain"),
     S("dom0", "READ", "/nope"),
     S("dom0", "SET_PERMS", "@other", "n0", ours="ERROR EINVAL", why=WHY_STALE),
     S("dom0", "SET_PERMS", "@releaseDomain", "n1"), S("dom0", "READ", "/nope"),
     S("g7", "SET_PERMS", "@releaseDomain", "n7", ours="ERROR EACCES", why=WHY_STALE),
     S("dom0", "SET_PERMS", "@releaseDomain"),
     S("dom0", "SET_PERMS", "@releaseDomain", "w"),
     guests=(7, 8))

case("watch_long_token_dropped",
     "XSA-324: an event longer than 4096 bytes is dropped silently; the daemon survives.",
     S("dom0", "WATCH", "/lt", "T" * 4000), S("dom0", "WRITE", "/lt/" + "p" * 80, "1"),
     S("dom0", "WRITE", "/lt/" + "q" * 100, "1"), S("dom0", "WATCH", "/lt", "short"),
     S("dom0", "WRITE", "/lt/" + "r" * 100, "1"), S("dom0", "WATCH", "/" + "l" * 2030, "U" * 2000),
     S("dom0", "WATCH", "/" + "l" * 2030, "V" * 2060),
     S("dom0", "WRITE", "/" + "l" * 2030 + "/abcdefgh", "1"), S("dom0", "RM", "/lt"))

case("watch_quota_guest",
     "A guest may hold 128 watches; the check is `>`, so the 129th is accepted, the 130th "
     "gets E2BIG. dom0 is exempt.",
     many("g5", "WATCH", 129, "/wq/{i}", "t"), S("g5", "WATCH", "/wq/x", "t"),
     S("g5", "UNWATCH", "/wq/0", "t"), S("g5", "WATCH", "/wq/y", "t"),
     S("g5", "WATCH", "/wq/z", "t"), S("g5", "RESET_WATCHES"),
     many("g5", "WATCH", 3, "/wq/again{i}", "t"), many("dom0", "WATCH", 140, "/dq/{i}", "t"),
     guests=(5,))
