"""Domain requests (cx xenstored_domain.c, xenstored_control.c): INTRODUCE, RELEASE,
GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, RESUME, SET_TARGET, RESET_WATCHES, CONTROL, unknown
types, death."""

from tests.differential.corpus import S, case, kill

case("introduce_errors_and_event",
     "INTRODUCE: port 0 / too few args → EINVAL; a guest → EACCES; success fires "
     "@introduceDomain; re-INTRODUCE is OK and fires again.",
     S("dom0", "WATCH", "@introduceDomain", "i"),
     S("dom0", "INTRODUCE", "5", "0", "0"), S("dom0", "INTRODUCE", "5", "0"),
     S("dom0", "INTRODUCE", "5"), S("dom0", "INTRODUCE", "5", "0", "-3"),
     S("dom0", "INTRODUCE", "5", "0", "6"), S("dom0", "IS_DOMAIN_INTRODUCED", "5"),
     S("dom0", "INTRODUCE", "5", "0", "6", "extra"),
     S("g5", "INTRODUCE", "6", "0", "7"), S("g5", "READ", "/tool/xenstored"),
     S("dom0", "INTRODUCE", "0", "0", "1"), S("dom0", "IS_DOMAIN_INTRODUCED", "0"))

case("release_and_owned_nodes",
     "RELEASE: domid 0 → EINVAL; not introduced → ENOENT; success removes the nodes the "
     "domain owns (with watch events, post-order) and fires @releaseDomain.",
     S("dom0", "RELEASE", "0"), S("dom0", "RELEASE", "77"), S("dom0", "RELEASE", "abc"),
     S("dom0", "RELEASE"), S("g5", "RELEASE", "5"),
     S("g5", "WRITE", "data/x", "1"), S("dom0", "WRITE", "/local/domain/5/byzero", "z"),
     S("dom0", "WRITE", "/elsewhere", ""), S("dom0", "SET_PERMS", "/elsewhere", "n5"),
     S("dom0", "WRITE", "/elsewhere/kid", "k"),
     S("dom0", "WATCH", "@releaseDomain", "r"), S("dom0", "WATCH", "/local/domain/5", "home"),
     S("dom0", "WATCH", "/local/domain/5/data/x", "x"), S("dom0b", "WATCH", "/elsewhere", "e"),
     S("dom0", "RELEASE", "5"), S("dom0", "IS_DOMAIN_INTRODUCED", "5"),
     S("dom0", "READ", "/local/domain/5"), S("dom0", "READ", "/elsewhere"),
     S("dom0", "DIRECTORY", "/local/domain"), S("dom0", "RELEASE", "5"), guests=(5,))

case("release_set_target_quirk",
     "cx quirk: the first RELEASE of a SET_TARGET'ed domain only drops the stubdom's "
     "reference: OK, still introduced, no event; the second really releases it.",
     S("dom0", "WATCH", "@releaseDomain", "r"), S("dom0", "RELEASE", "5"),
     S("dom0", "IS_DOMAIN_INTRODUCED", "5"), S("dom0", "READ", "/local/domain/5"),
     S("dom0", "RELEASE", "5"), S("dom0", "IS_DOMAIN_INTRODUCED", "5"),
     S("dom0", "READ", "/local/domain/5"), S("dom0", "UNWATCH", "@releaseDomain", "r"),
     S("dom0", "RELEASE", "6", skip_on=("cx",), ours="RELEASE OK",
       why="cx 4.17.7 crashes (connection reset, daemon gone) when the stubdom is released "
           "after its target was released twice; a compatible server must not"),
     S("dom0", "IS_DOMAIN_INTRODUCED", "6", skip_on=("cx",), ours="IS_DOMAIN_INTRODUCED F\\x00",
       why="follows the RELEASE that crashes cx"),
     guests=(5, 6), targets=((6, 5),), taints=True)

case("get_domain_path",
     "GET_DOMAIN_PATH: atoi with no validation (`\"\"`→0, `abc`→0, `-1`→4294967295, "
     "`70000`); no argument → EINVAL; anyone may ask.",
     *[S("dom0", "GET_DOMAIN_PATH", a) for a in ("0", "5", "", "abc", "-1", "70000", "12abc",
                                                  " 7", "0x10", "010", "4294967296")],
     S("dom0", "GET_DOMAIN_PATH", raw=b""), S("dom0", "GET_DOMAIN_PATH", raw=b"5"),
     S("dom0", "GET_DOMAIN_PATH", "5", "6"), S("g5", "GET_DOMAIN_PATH", "7"),
     S("g5", "GET_DOMAIN_PATH", "-1"), guests=(5,))

case("is_domain_introduced",
     "IS_DOMAIN_INTRODUCED: T/F; DOMID_SELF (32752) is T; a guest gets EACCES.",
     *[S("dom0", "IS_DOMAIN_INTRODUCED", a) for a in ("0", "5", "9", "32752", "32753", "abc",
                                                       "", "-1")],
     S("dom0", "IS_DOMAIN_INTRODUCED", raw=b"5"), S("dom0", "IS_DOMAIN_INTRODUCED", "5", "6"),
     S("g5", "IS_DOMAIN_INTRODUCED", "5"), S("g5", "IS_DOMAIN_INTRODUCED", "32752"),
     guests=(5,))

case("resume",
     "RESUME: domid 0 → EINVAL; not introduced → ENOENT; introduced → OK; guest → EACCES.",
     S("dom0", "RESUME", "0"), S("dom0", "RESUME", "9"), S("dom0", "RESUME", "5"),
     S("dom0", "RESUME", "abc"), S("dom0", "RESUME", raw=b"5"), S("dom0", "RESUME", raw=b""),
     S("g5", "RESUME", "5"), guests=(5,))

case("set_target_errors",
     "SET_TARGET: both domains must be introduced (ENOENT); bad arguments → EINVAL; "
     "guest → EACCES.",
     S("dom0", "SET_TARGET", "6", "9"), S("dom0", "SET_TARGET", "9", "5"),
     S("dom0", "SET_TARGET", "6"), S("dom0", "SET_TARGET", "6", "5", "4"),
     S("dom0", "SET_TARGET", raw=b""), S("dom0", "SET_TARGET", "abc", "5"),
     S("dom0", "SET_TARGET", "6", "0"), S("dom0", "SET_TARGET", "0", "5"),
     S("g6", "SET_TARGET", "6", "5"), S("dom0", "SET_TARGET", "6", "5"),
     S("dom0", "SET_TARGET", "6", "5"), S("dom0", "SET_TARGET", "5", "5"),
     guests=(5, 6), taints=True)

case("reset_watches",
     "RESET_WATCHES: anyone; drops watches and transactions of the caller only.",
     S("g5", "WATCH", "data", "g"), S("g5", "TRANSACTION_START", bind="t"),
     S("dom0", "WATCH", "/local/domain/5", "d"), S("g5", "RESET_WATCHES"),
     S("g5", "WRITE", "data/x", "1"), S("g5", "READ", "data/x", tx="t"),
     S("g5", "RESET_WATCHES", "junk", "more"), S("dom0", "RESET_WATCHES", "x"),
     S("g5", "WRITE", "data/y", "1"), guests=(5,))

case("control_commands",
     "CONTROL (dom0 only): `print` OK, unknown → EINVAL, `quota` text, `quota <domid>` "
     "accounting (memory normalised), guest → EACCES.",
     S("dom0", "CONTROL", "print", "x"), S("dom0", "CONTROL", "nosuch"),
     S("dom0", "CONTROL", "quota"), S("dom0", "CONTROL", "quota-soft"),
     S("g5", "WRITE", "a/b/c", "1"), S("dom0", "CONTROL", "quota", "5"),
     S("dom0", "CONTROL", "quota", "99"), S("dom0", "CONTROL", "check"),
     S("dom0", "CONTROL", "help"), S("dom0", "CONTROL", raw=b""), S("dom0", "CONTROL", ""),
     S("dom0", "CONTROL", "print"), S("g5", "CONTROL", "print", "x"),
     S("g5", "CONTROL", "nosuch"), guests=(5,))

case("unknown_types",
     "Types 15, 16, 20, 23, 24, 0xffff and a huge number → ENOSYS (from dom0 and a guest).",
     *[S("dom0", t, "x") for t in (15, 16, 20, 23, 24, 26, 27, 128, 0xFFFF, 0x7FFFFFFF)],
     *[S("g5", t, "x") for t in (15, 16, 20, 23, 0xFFFF)], guests=(5,))

case("domain_death",
     "A dying domain (shim marker + VIRQ) is destroyed: owned nodes removed with events, "
     "@releaseDomain fired, IS_DOMAIN_INTRODUCED F. Our server learns death via RELEASE.",
     S("g5", "WRITE", "data/x", "1"), S("dom0", "WRITE", "/local/domain/5/byzero", "z"),
     S("dom0", "WATCH", "@releaseDomain", "r"), S("dom0", "WATCH", "/local/domain/5", "home"),
     kill(5, "dead"), S("dom0", "IS_DOMAIN_INTRODUCED", "5"),
     S("dom0", "READ", "/local/domain/5"), S("dom0", "RELEASE", "5"), guests=(5,))

case("domain_shutdown_once_until_resume",
     "cx fires @releaseDomain once per shutdown until RESUME. (ours: not yet.)",
     S("dom0", "WATCH", "@releaseDomain", "r"), kill(5, "shutdown"),
     S("dom0", "IS_DOMAIN_INTRODUCED", "5"), kill(5, "shutdown"),
     S("dom0", "RESUME", "5"), kill(5, "shutdown"), S("dom0", "READ", "/local/domain/5"),
     guests=(5,))

case("domain_gone",
     "A vanished domain is destroyed like a dying one; while it is gone, SET_PERMS naming it "
     "as owner gets ENOENT (its ACL entries are kept but ignored).",
     S("g5", "WRITE", "data/x", "1"), S("dom0", "WRITE", "/keep", ""),
     S("dom0", "SET_PERMS", "/keep", "n0", "r5"), S("dom0", "WATCH", "@releaseDomain", "r"),
     kill(5, "gone"), S("dom0", "IS_DOMAIN_INTRODUCED", "5"),
     S("dom0", "READ", "/local/domain/5/data/x"), S("dom0", "SET_PERMS", "/keep", "n5"),
     S("dom0", "SET_PERMS", "/keep", "n0", "r5"), S("dom0", "GET_PERMS", "/keep"),
     guests=(5,))
