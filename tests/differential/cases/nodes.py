"""Nodes (cx xenstored_core.c ``do_write``, ``do_mkdir``, ``do_rm``, directory
replies): WRITE/MKDIR implicit parents, new-node permissions, RM, DIRECTORY order,
DIRECTORY_PART, values with NULs, payload sizes."""

from tests.differential.corpus import S, case, many

case("initial_tree", "cx starts with `/`, `/tool`, `/tool/xenstored`, all `n0` and empty.",
     S("dom0", "DIRECTORY", "/"), S("dom0", "DIRECTORY", "/tool"),
     S("dom0", "READ", "/"), S("dom0", "READ", "/tool/xenstored"),
     S("dom0", "GET_PERMS", "/"), S("dom0", "GET_PERMS", "/tool/xenstored"),
     S("dom0", "DIRECTORY", "/tool/xenstored"), S("dom0", "READ", "/local"),
     fresh=True)

case("write_implicit_parents",
     "WRITE creates missing parents with empty values and the parent's perms; one event.",
     S("dom0", "WATCH", "/w", "tw"), S("dom0", "WRITE", "/w/a/b/c", "v"),
     S("dom0", "READ", "/w"), S("dom0", "READ", "/w/a"), S("dom0", "READ", "/w/a/b/c"),
     S("dom0", "DIRECTORY", "/w/a"), S("dom0", "GET_PERMS", "/w/a/b"),
     S("dom0", "WRITE", "/w/a", "pv"), S("dom0", "MKDIR", "/w/a"), S("dom0", "READ", "/w/a"),
     S("dom0", "MKDIR", "/w/m/n"), S("dom0", "READ", "/w/m/n"), S("dom0", "WRITE", "/w/a", "pv"),
     S("dom0", "WRITE", "/w/e", ""), S("dom0", "READ", "/w/e"), S("dom0", "DIRECTORY", "/w"))

case("new_node_perms_privileged",
     "A privileged creator leaves the inherited owner: dom0 under `n7` makes owner 7.",
     S("dom0", "WRITE", "/p", ""), S("dom0", "SET_PERMS", "/p", "n7", "r5"),
     S("dom0", "WRITE", "/p/byzero", "x"), S("dom0", "GET_PERMS", "/p/byzero"),
     S("dom0", "MKDIR", "/p/d/e"), S("dom0", "GET_PERMS", "/p/d/e"),
     S("dom0", "SET_PERMS", "/p", "b0", "w7"), S("dom0", "WRITE", "/p/z", "x"),
     S("dom0", "GET_PERMS", "/p/z"), S("dom0", "GET_PERMS", "/p/byzero"))

case("new_node_perms_guest",
     "cx: an unprivileged creator becomes the owner of every node it creates (`n0 b5` → "
     "`n5 b5`), including implicit parents; it needs WRITE on the nearest existing ancestor.",
     S("dom0", "WRITE", "/shared", ""), S("dom0", "SET_PERMS", "/shared", "n0", "b5"),
     S("g5", "WRITE", "/shared/c/d", "v"), S("dom0", "GET_PERMS", "/shared/c"),
     S("dom0", "GET_PERMS", "/shared/c/d"), S("g5", "MKDIR", "/shared/m"),
     S("dom0", "GET_PERMS", "/shared/m"), S("g5", "WRITE", "/x/y", "v"),
     S("g5", "WRITE", "/tool/z", "v"), S("g5", "MKDIR", "/tool/z"),
     S("g5", "WRITE", "deep/a/b/c", "v"), S("dom0", "GET_PERMS", "/local/domain/5/deep/a"),
     S("dom0", "SET_PERMS", "/shared", "n0", "r5"), S("g5", "WRITE", "/shared/q", "v"),
     S("g5", "WRITE", "/shared/c/d", "w"), S("g5", "WRITE", "/shared/c/new", "w"),
     guests=(5,))

case("values_binary",
     "Values are raw bytes: embedded NULs, trailing NULs, empty; WRITE without a NUL → "
     "EINVAL.",
     S("dom0", "WRITE", "/bin", b"a\0b\0"), S("dom0", "READ", "/bin"),
     S("dom0", "WRITE", "/bin", b"\0"), S("dom0", "READ", "/bin"),
     S("dom0", "WRITE", "/bin", b""), S("dom0", "READ", "/bin"),
     S("dom0", "WRITE", raw=b"/bin"), S("dom0", "WRITE", raw=b""),
     S("dom0", "WRITE", "/bin", bytes(range(256))), S("dom0", "READ", "/bin"),
     S("dom0", "WRITE", raw=b"/bin\0\0\0"), S("dom0", "READ", "/bin"))

case("payload_4096",
     "A 4096-byte payload is accepted; a 4097-byte header closes a socket connection.",
     S("dom0", "WRITE", "/big", "v" * (4096 - 5)), S("dom0", "READ", "/big"),
     S("dom0", "WRITE", "/big2", "v" * 3000), S("dom0", "READ", "/big2"),
     S("dom0b", "WRITE", raw=b"/big\0" + b"w" * 4092),
     S("dom0", "READ", "/big"), S("dom0", "WRITE", "/after", "ok"))

case("rm_semantics",
     "RM removes a subtree; a missing node with an existing parent is OK; a missing parent "
     "is ENOENT; `RM /` is EINVAL in cx.",
     S("dom0", "WRITE", "/r/a/b", "1"), S("dom0", "WRITE", "/r/c", "2"),
     S("dom0", "RM", "/r/nope"), S("dom0", "RM", "/r/nope/deeper"), S("dom0", "RM", "/nope/x"),
     S("dom0", "RM", "/r/a"), S("dom0", "READ", "/r/a/b"), S("dom0", "DIRECTORY", "/r"),
     S("dom0", "RM", "/"), S("dom0", "DIRECTORY", "/"), S("dom0", "RM", "/r"),
     S("dom0", "RM", "/r"), S("dom0", "READ", "/r"))

case("rm_permissions",
     "RM needs WRITE on the node itself, not on its parent.",
     S("dom0", "WRITE", "/rp/ro", "1"), S("dom0", "WRITE", "/rp/rw", "2"),
     S("dom0", "SET_PERMS", "/rp", "r5"), S("dom0", "SET_PERMS", "/rp/ro", "r5"),
     S("dom0", "SET_PERMS", "/rp/rw", "n0", "b5"),
     S("g5", "RM", "/rp/ro"), S("g5", "RM", "/rp/rw"), S("g5", "RM", "/rp/missing"),
     S("g5", "RM", "/rp"), S("dom0", "DIRECTORY", "/rp"), S("g5", "RM", "/nowhere/x"),
     S("g5", "RM", "/tool/nothing"), guests=(5,))

case("directory_order",
     "cx lists children in insertion order; deletion keeps the order of the rest.",
     S("dom0", "WRITE", "/o/foo", ""), S("dom0", "WRITE", "/o/local", ""),
     S("dom0", "WRITE", "/o/a", ""), S("dom0", "WRITE", "/o/bin", ""),
     S("dom0", "WRITE", "/o/@x", ""), S("dom0", "WRITE", "/o/m", ""),
     S("dom0", "DIRECTORY", "/o"), S("dom0", "RM", "/o/a"), S("dom0", "DIRECTORY", "/o"),
     S("dom0", "WRITE", "/o/a", ""), S("dom0", "WRITE", "/o/foo", "again"),
     S("dom0", "DIRECTORY", "/o"), S("dom0", "DIRECTORY", "/o/foo"),
     S("dom0", "DIRECTORY", "/o/nope"))

case("directory_part_small",
     "DIRECTORY_PART: gen then the list from a byte offset; an extra NUL at the end; offsets "
     "not on a boundary; offset ≥ length; argument errors.",
     S("dom0", "WRITE", "/dp/tool", ""), S("dom0", "WRITE", "/dp/foo", ""),
     S("dom0", "WRITE", "/dp/bar", ""),
     *[S("dom0", "DIRECTORY_PART", "/dp", str(o)) for o in (0, 1, 4, 5, 8, 11, 12, 13, 100)],
     S("dom0", "DIRECTORY_PART", "/dp", "-1"), S("dom0", "DIRECTORY_PART", "/dp", "abc"),
     S("dom0", "DIRECTORY_PART", "/dp", "4x"), S("dom0", "DIRECTORY_PART", "/dp"),
     S("dom0", "DIRECTORY_PART", "/dp", "0", "0"), S("dom0", "DIRECTORY_PART", raw=b"/dp\0000"),
     S("dom0", "DIRECTORY_PART", "/dp/tool", "0"), S("dom0", "DIRECTORY_PART", "/dp/no", "0"),
     S("dom0", "WRITE", "/dp/new", ""), S("dom0", "DIRECTORY_PART", "/dp", "0"),
     S("dom0", "WRITE", "/dp/new", "v"), S("dom0", "DIRECTORY_PART", "/dp", "0"),
     S("dom0", "DIRECTORY_PART", "/", "0"), S("dom0", "DIRECTORY_PART", "rel", "0"))

case("directory_part_600",
     "600 children of 11 bytes: DIRECTORY gets E2BIG, DIRECTORY_PART returns 2 chunks with "
     "the same generation.",
     many("dom0", "WRITE", 600, "/dp6/c{i:09d}", ""),
     S("dom0", "DIRECTORY", "/dp6"), S("dom0", "DIRECTORY_PART", "/dp6", "0"),
     S("dom0", "DIRECTORY_PART", "/dp6", "4081"), S("dom0", "DIRECTORY_PART", "/dp6", "4070"),
     S("dom0", "DIRECTORY_PART", "/dp6", "6599"), S("dom0", "DIRECTORY_PART", "/dp6", "6600"),
     S("g5", "DIRECTORY_PART", "/dp6", "0"), S("dom0", "SET_PERMS", "/dp6", "r5"),
     S("g5", "DIRECTORY_PART", "/dp6", "4081"), S("g5", "DIRECTORY", "/dp6"),
     guests=(5,))
