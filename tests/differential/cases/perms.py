"""Permissions (cx xenstored_core.c ``perm_for_conn``, xs_lib.c ``xs_strings_to_perms``):
string format, effective permissions, existence hiding, owner changes, SET_TARGET, the
permission quota."""

from tests.differential.corpus import S, case

case("perm_strings",
     "Permission strings: `w`/`x0`/`r1x` EINVAL, strtol base 0 (`b0x10 r010` → `b16 r8`), "
     "`n-1`/`n99999` ENOENT (owner does not exist), duplicates allowed.",
     S("dom0", "WRITE", "/ps", ""),
     *[S("dom0", "SET_PERMS", "/ps", *p) for p in (
         ("w",), ("x0",), ("r1x",), ("",), ("n",), ("n0", "w"), ("n0", "q1"), ("N0",),
         ("n 1",), ("n+1",), ("n1 ",))],
     S("dom0", "SET_PERMS", "/ps", "b0x10", "r010"), S("dom0", "GET_PERMS", "/ps"),
     S("dom0", "SET_PERMS", "/ps", "n-1"), S("dom0", "SET_PERMS", "/ps", "n99999"),
     S("dom0", "SET_PERMS", "/ps", "n0", "r-1"), S("dom0", "GET_PERMS", "/ps"),
     S("dom0", "SET_PERMS", "/ps", "n0", "r99999"), S("dom0", "GET_PERMS", "/ps"),
     S("dom0", "SET_PERMS", "/ps", "n0", "r1", "w1"), S("dom0", "GET_PERMS", "/ps"),
     S("dom0", "SET_PERMS", "/ps", "r32752"), S("dom0", "GET_PERMS", "/ps"),
     S("dom0", "SET_PERMS", "/ps", "n0", "b4294967296"), S("dom0", "GET_PERMS", "/ps"),
     S("dom0", "SET_PERMS", "/ps"), S("dom0", "SET_PERMS", raw=b"/ps"),
     S("dom0", "SET_PERMS", "/nope", "n0"), S("dom0", "SET_PERMS", "/ps", "n0", ""),
     S("dom0", "GET_PERMS", "/ps"))

case("perm_effective_acl",
     "Effective permission: owner entry is the default, the FIRST matching ACL entry wins.",
     S("dom0", "WRITE", "/e/a", "va"), S("dom0", "WRITE", "/e/b", "vb"),
     S("dom0", "WRITE", "/e/c", "vc"), S("dom0", "WRITE", "/e/d", "vd"),
     S("dom0", "SET_PERMS", "/e", "r0"),
     S("dom0", "SET_PERMS", "/e/a", "n0", "r5"), S("dom0", "SET_PERMS", "/e/b", "n0", "w5"),
     S("dom0", "SET_PERMS", "/e/c", "n0", "r5", "w5"),
     S("dom0", "SET_PERMS", "/e/d", "b0", "n5"),
     *[S("g5", op, f"/e/{n}", *extra) for n in "abcd"
       for op, extra in (("READ", ()), ("WRITE", ("new",)), ("GET_PERMS", ()),
                         ("DIRECTORY", ()))],
     *[S("g6", "READ", f"/e/{n}") for n in "abcd"],
     S("g6", "WRITE", "/e/d", "x6"), S("dom0", "READ", "/e/d"),
     guests=(5, 6))

case("perm_owner",
     "The owner has full access whatever the letters; others fall back to entry 0.",
     S("dom0", "WRITE", "/ow/x", "1"), S("dom0", "SET_PERMS", "/ow", "r0"),
     S("dom0", "SET_PERMS", "/ow/x", "n5"), S("g5", "READ", "/ow/x"),
     S("g5", "WRITE", "/ow/x", "2"), S("g5", "SET_PERMS", "/ow/x", "n5", "r6"),
     S("g6", "READ", "/ow/x"), S("g6", "WRITE", "/ow/x", "3"),
     S("g5", "SET_PERMS", "/ow/x", "r5"), S("g6", "READ", "/ow/x"),
     S("g5", "GET_PERMS", "/ow/x"), S("g5", "WRITE", "/ow/x/child", "c"),
     S("dom0", "GET_PERMS", "/ow/x/child"), guests=(5, 6))

case("perm_exists_hiding",
     "cx hides existence: a missing node under an unreadable ancestor is EACCES, under a "
     "readable one ENOENT.",
     S("g5", "READ", "/tool/nope"), S("g5", "READ", "/nope"), S("g5", "READ", "/nope/deeper"),
     S("g5", "GET_PERMS", "/nope"), S("g5", "DIRECTORY", "/nope"),
     S("dom0", "WRITE", "/hid/x", "1"), S("dom0", "SET_PERMS", "/hid", "n0", "r5"),
     S("g5", "READ", "/hid/nope"), S("g5", "READ", "/hid/nope/deeper"),
     S("g5", "READ", "/hid/x"), S("g5", "READ", "/hid/x/nope"), S("g5", "READ", "/"),
     S("g5", "DIRECTORY", "/"), S("g5", "READ", "nope"), S("g5", "READ", "/local/domain/6/x"),
     S("g5", "WRITE", "/hid/x/y", "v"), S("g5", "MKDIR", "/hid/nope"), guests=(5,))

case("perm_owner_change",
     "XSA-352: only a privileged caller may change the owner: guest → EPERM; the guest may "
     "change ACL entries of its own node; SET_PERMS needs OWNER, not just WRITE.",
     S("g5", "WRITE", "mine", "1"), S("g5", "SET_PERMS", "mine", "n0"),
     S("g5", "SET_PERMS", "mine", "n6"), S("g5", "SET_PERMS", "mine", "n5", "r6", "w0"),
     S("g5", "GET_PERMS", "mine"), S("g5", "SET_PERMS", "mine", "b5"),
     S("dom0", "WRITE", "/wo", ""), S("dom0", "SET_PERMS", "/wo", "n0", "b5"),
     S("g5", "SET_PERMS", "/wo", "n0", "b5"), S("g5", "SET_PERMS", "/wo", "n0", "b5", "r6"),
     S("g5", "SET_PERMS", "/wo", "n5"), S("dom0", "SET_PERMS", "mine", "n0"),
     S("dom0", "SET_PERMS", "/local/domain/5/mine", "b0", "r5"), S("g5", "READ", "mine"),
     S("g5", "WRITE", "mine", "2"), S("g5", "SET_PERMS", "mine", "b5"),
     S("dom0", "SET_PERMS", "/local/domain/5/mine", "b5"),
     S("dom0", "GET_PERMS", "/local/domain/5/mine"), S("g5", "READ", "mine"),
     S("g5", "SET_PERMS", "mine", "n5"), guests=(5,))

case("perm_quota",
     "An unprivileged caller may set at most 5 permission entries (6 → ENOSPC); dom0 more.",
     S("g5", "WRITE", "q", ""), S("g5", "SET_PERMS", "q", "n5", "r1", "r2", "r3", "r4"),
     S("g5", "SET_PERMS", "q", "n5", "r1", "r2", "r3", "r4", "r6"),
     S("g5", "GET_PERMS", "q"),
     S("dom0", "SET_PERMS", "/local/domain/5/q", "n5", "r1", "r2", "r3", "r4", "r6", "r7",
       "r8"),
     S("g5", "GET_PERMS", "q"), S("g5", "WRITE", "q", "still ok"),
     S("g5", "SET_PERMS", "q", "n5", "r1", "r2", "r3", "r4"), guests=(5,))

case("perm_set_target",
     "SET_TARGET 6→5: stubdom 6 acts as 5 (owner rights on n5 nodes, inherits r5 ACLs) "
     "while its relative paths stay its own.",
     S("dom0", "WRITE", "/st/r5", "x"), S("dom0", "SET_PERMS", "/st", "r0"),
     S("dom0", "SET_PERMS", "/st/r5", "n0", "r5"),
     S("g5", "WRITE", "own", "5"), S("g6", "READ", "/local/domain/5/own"),
     S("g6", "READ", "/local/domain/5/nope"), S("g6", "READ", "/st/r5"),
     S("dom0", "SET_TARGET", "6", "5"),
     S("g6", "READ", "/local/domain/5/own"), S("g6", "READ", "/local/domain/5/nope"),
     S("g6", "READ", "/st/r5"), S("g6", "WRITE", "/local/domain/5/own", "6"),
     S("g6", "WRITE", "/local/domain/5/by6", "6"),
     S("dom0", "GET_PERMS", "/local/domain/5/by6"),
     S("g6", "SET_PERMS", "/local/domain/5/own", "n5", "r7"),
     S("g6", "SET_PERMS", "/local/domain/5/own", "n6"),
     S("g6", "WRITE", "rel", "r"), S("dom0", "READ", "/local/domain/6/rel"),
     S("g5", "READ", "/local/domain/6"), S("g6", "GET_DOMAIN_PATH", "6"),
     guests=(5, 6))

case("perm_guest_on_root",
     "XSA-353: a guest may not WRITE, MKDIR, SET_PERMS or RM `/`.",
     S("g5", "WRITE", "/", "x"), S("g5", "MKDIR", "/"), S("g5", "SET_PERMS", "/", "n5"),
     S("g5", "SET_PERMS", "/", "n0", "b5"), S("g5", "RM", "/"), S("g5", "READ", "/"),
     S("g5", "GET_PERMS", "/"), S("dom0", "GET_PERMS", "/"), S("dom0", "READ", "/"),
     S("dom0", "SET_PERMS", "/", "n0", "r5"), S("g5", "READ", "/"), S("g5", "DIRECTORY", "/"),
     S("g5", "WRITE", "/", "x"), S("dom0", "SET_PERMS", "/", "n0"), guests=(5,))
