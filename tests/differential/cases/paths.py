"""Path syntax (cx xenstored_core.c ``is_valid_nodename``, xs_wire.h's size limits): valid
and invalid characters, `@` paths, relative paths, lengths."""

from tests.differential.corpus import S, case

LONG = "a" * 2049

case("path_invalid_syntax",
     "Invalid characters, `//`, trailing `/` and the empty path are EINVAL for every op.",
     *[S("dom0", op, p) for op in ("READ", "GET_PERMS", "DIRECTORY", "MKDIR", "RM")
       for p in ("/a.b", "/a b", "/a/", "//a", "")],
     S("dom0", "WRITE", "/a.b", "v"), S("dom0", "WRITE", "//a", "v"),
     S("dom0", "WRITE", "/a/", "v"), S("dom0", "WRITE", "", "v"),
     S("dom0", "SET_PERMS", "/a.b", "n0"), S("dom0", "WATCH", "/a.b", "t"),
     S("dom0", "WATCH", "", "t"), S("dom0", "DIRECTORY", "/"))

case("path_valid_odd_chars", "`/@x` and `/-/_/@` are ordinary valid nodes.",
     S("dom0", "WRITE", "/@x", "1"), S("dom0", "WRITE", "/-/_/@", "2"),
     S("dom0", "READ", "/@x"), S("dom0", "READ", "/-/_/@"), S("dom0", "DIRECTORY", "/"),
     S("dom0", "DIRECTORY", "/-/_"), S("dom0", "RM", "/-"), S("dom0", "RM", "/@x"))

case("path_at_as_node",
     "cx: `@foo` is not a node name: READ/WRITE/GET_PERMS/MKDIR/RM/DIRECTORY get EINVAL.",
     S("dom0", "READ", "@foo"), S("dom0", "WRITE", "@foo", "x"), S("dom0", "GET_PERMS", "@foo"),
     S("dom0", "MKDIR", "@foo"), S("dom0", "RM", "@foo"), S("dom0", "DIRECTORY", "@foo"),
     S("dom0", "DIRECTORY_PART", "@foo", "0"), S("dom0", "READ", "@releaseDomain"),
     S("dom0", "GET_PERMS", "@releaseDomain"), S("dom0", "DIRECTORY", "/"))

case("path_length_limits",
     "path-max 2048: `/`+2047 ok, `/`+2048 EINVAL; `/local/domain/0/`+2048 ok, +2049 EINVAL; "
     "a relative path counts only its relative part.",
     S("dom0", "WRITE", "/" + "a" * 2047, "v"), S("dom0", "WRITE", "/" + "b" * 2048, "v"),
     S("dom0", "WRITE", "/" + "c" * 2049, "v"), S("dom0", "READ", "/" + "a" * 2047),
     S("dom0", "READ", "/" + "b" * 2048),
     S("dom0", "WRITE", "/local/domain/0/" + "d" * 2048, "v"),
     S("dom0", "WRITE", "/local/domain/0/" + "e" * 2049, "v"),
     S("dom0", "WRITE", "f" * 2048, "v"), S("dom0", "WRITE", "g" * 2049, "v"),
     S("dom0", "READ", "/local/domain/0/" + "f" * 2048),
     S("dom0", "WRITE", "/local/domain/7/" + "h" * 2048, "v"),
     S("dom0", "WRITE", "/local/domain/7/" + "i" * 2049, "v"),
     S("dom0", "WATCH", "/" + "j" * 2048, "t"), S("dom0", "WATCH", "/" + "k" * 2047, "t"),
     S("dom0", "DIRECTORY", "/local/domain/0"))

case("path_length_guest",
     "XSA-323: the limit applies to the relative part of a guest's path too.",
     S("g5", "WRITE", "x" * 2048, "v"), S("g5", "WRITE", "y" * 2049, "v"),
     S("g5", "WRITE", "/local/domain/5/" + "z" * 2048, "v"),
     S("g5", "WRITE", "/local/domain/5/" + "w" * 2049, "v"),
     S("g5", "DIRECTORY", ""), S("g5", "DIRECTORY", "/local/domain/5"),
     guests=(5,))

case("path_relative_socket",
     "A socket may use relative paths: they resolve under /local/domain/0.",
     S("dom0", "WRITE", "x/y", "v"), S("dom0", "READ", "/local/domain/0/x/y"),
     S("dom0", "READ", "x/y"), S("dom0", "DIRECTORY", "x"), S("dom0", "GET_PERMS", "x"),
     S("dom0", "DIRECTORY", "/local/domain"), S("dom0", "RM", "x"), S("dom0", "READ", "x/y"),
     S("dom0", "READ", "x.y"), S("dom0", "READ", "x/"))

case("path_relative_guest",
     "A guest's relative paths resolve under its own /local/domain/<id>.",
     S("g5", "WRITE", "data/x", "1"), S("g5", "READ", "/local/domain/5/data/x"),
     S("dom0", "READ", "/local/domain/5/data/x"), S("g5", "GET_PERMS", "data/x"),
     S("g5", "DIRECTORY", "data"), S("g5", "GET_DOMAIN_PATH", "5"),
     S("g5", "READ", "nope"), S("g5", "RM", "data"), S("g5", "READ", "data/x"),
     guests=(5,))

case("path_xsa481_local_domain",
     "XSA-481 paths: `/local/domain/` (trailing slash), `/local/domain/0`, "
     "`/local/domain/abc/x`.",
     S("dom0", "READ", "/local/domain/"), S("dom0", "WRITE", "/local/domain/", "v"),
     S("dom0", "READ", "/local/domain/0"), S("dom0", "WRITE", "/local/domain/abc/x", "v"),
     S("dom0", "READ", "/local/domain/abc/x"), S("g5", "READ", "/local/domain/"),
     S("g5", "WRITE", "/local/domain/abc/x", "v"), S("g5", "READ", "/local/domain/abc/x"),
     guests=(5,))
