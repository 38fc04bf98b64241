"""Hostile inputs from the xenstore XSAs that cx survives (XSA-418/421/440/484, malformed
requests), plus the one-string-without-NUL requests where we deliberately differ."""

from tests.differential.corpus import S, case, many

DEEP = "/deep" + "/a" * 1000  # 2005 characters: within path-max

case("xsa418_deep_path",
     "A path 1000 levels deep (within path-max) is created in one WRITE and removed by RM "
     "of its root; watches on the top and the deepest node fire post-order.",
     S("dom0", "WATCH", "/deep", "top"), S("dom0", "WATCH", DEEP, "bottom"),
     S("dom0", "WRITE", DEEP, "v"), S("dom0", "READ", DEEP), S("dom0", "RM", "/deep"),
     S("dom0", "READ", DEEP), S("dom0", "CONTROL", "check"))

case("xsa421_create_rm_in_tx",
     "A node created and removed in one transaction: the commit succeeds and the guest's "
     "node accounting stays right.",
     S("dom0", "CONTROL", "quota", "5"), S("g5", "TRANSACTION_START", bind="t"),
     S("g5", "WRITE", "tmp/a/b", "1", tx="t"), S("g5", "RM", "tmp", tx="t"),
     S("g5", "WRITE", "keep", "1", tx="t"), S("g5", "TRANSACTION_END", "T", tx="t"),
     S("dom0", "CONTROL", "quota", "5"), S("g5", "DIRECTORY", ""),
     S("g5", "TRANSACTION_START", bind="u"), S("g5", "WRITE", "tmp2", "1", tx="u"),
     S("g5", "RM", "tmp2", tx="u"), S("g5", "TRANSACTION_END", "T", tx="u"),
     S("dom0", "CONTROL", "quota", "5"), guests=(5,))

case("xsa440_two_tx_remove_same",
     "Two transactions each remove the same 50 nodes; the first commit wins, the second "
     "gets EAGAIN; the accounting does not go negative.",
     many("g5", "WRITE", 50, "n/{i}", ""), S("dom0", "CONTROL", "quota", "5"),
     S("g5", "TRANSACTION_START", bind="a"), S("g5", "TRANSACTION_START", bind="b"),
     many("g5", "RM", 50, "n/{i}", tx="a"), many("g5", "RM", 50, "n/{i}", tx="b"),
     S("g5", "TRANSACTION_END", "T", tx="a"), S("g5", "TRANSACTION_END", "T", tx="b"),
     S("dom0", "CONTROL", "quota", "5"), S("g5", "DIRECTORY", "n"),
     S("dom0", "CONTROL", "check"), guests=(5,))

case("xsa484_reset_watches_in_tx",
     "RESET_WATCHES sent with a live tx_id (and without) from dom0 and a guest.",
     S("dom0", "TRANSACTION_START", bind="t"), S("dom0", "WRITE", "/r/x", "1", tx="t"),
     S("dom0", "RESET_WATCHES", tx="t"), S("dom0", "TRANSACTION_END", "T", tx="t"),
     S("dom0", "READ", "/r/x"), S("g5", "TRANSACTION_START", bind="g"),
     S("g5", "WATCH", "data", "w"), S("g5", "RESET_WATCHES", tx="g"),
     S("g5", "TRANSACTION_END", "T", tx="g"), S("g5", "WRITE", "data/x", "1"),
     guests=(5,))

case("oversized_and_lying_headers",
     "A header announcing more than 4096 bytes closes a socket connection; others live on.",
     S("dom0b", "READ", "/tool", hdr_len=5000), S("dom0", "READ", "/tool"),
     S("dom0b", "READ", "/tool"), S("dom0b", "READ", "/tool", hdr_len=0xFFFFFFFF),
     S("dom0b", "READ", "/tool"), S("dom0b", "READ", "/tool", hdr_len=0x80000000),
     S("dom0", "WRITE", "/still", "alive"), S("dom0", "READ", "/still"))

WHY_NUL = ("cx's onearg() failure returns a stale errno (whatever the last failed call left: "
           "ENOENT after a failed READ, ENOMEM for MKDIR/RM) instead of EINVAL; we answer "
           "EINVAL like ox")
WHY_ABORT = ("right after a WATCH the stale errno is 0 and cx 4.17 aborts "
             "(Assertion `conn->in == NULL'); we answer EINVAL")

case("onearg_without_nul",
     "READ/DIRECTORY/GET_PERMS/MKDIR/RM whose payload lacks its final NUL, or has two "
     "strings: cx answers a stale errno, we answer EINVAL (deliberate difference).",
     S("dom0", "WRITE", "/a", "v"),
     *[s for op in ("READ", "DIRECTORY", "GET_PERMS", "MKDIR", "RM")
       for s in (S("dom0", "READ", "/nope"),
                 S("dom0", op, raw=b"/a", ours="ERROR EINVAL", why=WHY_NUL),
                 S("dom0", "READ", "/nope"),
                 S("dom0", op, raw=b"/a\0/b\0", ours="ERROR EINVAL", why=WHY_NUL))],
     S("dom0", "READ", "/a"))

case("onearg_without_nul_after_watch",
     "The abort-triggering variant: a WATCH, then a READ etc. without its NUL. Not sent to "
     "cx (it would die); our server must answer EINVAL and keep the watch working.",
     S("dom0", "WATCH", "/an", "t"),
     *[S("dom0", op, raw=b"/an", skip_on=("cx",), ours="ERROR EINVAL", why=WHY_ABORT)
       for op in ("READ", "DIRECTORY", "GET_PERMS", "MKDIR", "RM")],
     S("dom0", "WRITE", "/an/x", "1"),
     S("g5", "WATCH", "data", "g"),
     S("g5", "READ", raw=b"data", skip_on=("cx",), ours="ERROR EINVAL", why=WHY_ABORT),
     S("g5", "WRITE", "data/x", "1"), guests=(5,))
