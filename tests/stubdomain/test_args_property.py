"""Hostile input at the stubdomain's edge (issue #8): the Mini-OS argv and qemu-trad options.

The agent reads its kernel command line (argv: any bytes, decoded with surrogateescape) and
the dmargs node (any bytes, decoded with replacement).  Whatever they hold, `args` either
parses them or raises its own `DmArgsError` with a one-line message; notes for the log are
one line each.  And what the toolstack writes comes back unchanged: every config the
toolstack accepts without a warning gives dmargs from which the agent reads the same
options.

Regressions found by these properties are pinned with ``@example``.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stubdom.protocol import DMARGS_DROPPED, encode_dmargs, split_dmargs
from stubdom.stubdomain.args import (
    AgentOptions,
    DmArgsError,
    DmOptions,
    build_argv,
    parse_dm_args,
    split_agent_options,
)
from stubdom.toolstack.config import GuestConfig, NicType
from stubdom.toolstack.configure import parse_config
from stubdom.toolstack.dmargs import DmArgsError as ToolstackDmArgsError
from stubdom.toolstack.dmargs import build_dm_argv
from stubdom.toolstack.xlcfg import ConfigError, format_xlcfg
from tests.support.logs import warnings_logged

MAX_MESSAGE = 600
FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def one_line(text: str) -> str:
    assert text and "\n" not in text and "\r" not in text, repr(text[:200])
    assert len(text) <= MAX_MESSAGE, f"{len(text)} characters: {text[:200]!r}..."
    text.encode("utf-8")  # it goes to console 0: no lone surrogates
    return text


# -- strategies --------------------------------------------------------------------------------

SPECIALS = "-=,:. '\"\\\t\n\x00\x1b\x7f\u00e9\u20ac\ufeff"
#: Options libxl writes and the agent reads, with and without their argument.
OPTIONS = [
    "-d", "-domain-name", "-vnc", "-vncunused", "-serial", "-videoram", "-vga", "-std-vga",
    "-boot", "-usb", "-usbdevice", "-soundhw", "-acpi", "-vcpus", "-vcpu_avail", "-net",
    "-loadvm", "-k", "-M", "-nographic", "-gfx_passthru", "-sdl", "--vcpus", "-monitor", "-S",
]  # fmt: skip
VALUES = [
    "5", "0", "-1", "128", "129", "0x03", "0x", "0xzz", "99999999999999999999999", "cda",
    "std", "none", "nic,vlan=0,macaddr=00:16:3e:12:34:56,model=rtl8139", "tap,vlan=1",
    "nic,vlan", "nic,vlan=x", "nic,macaddr=00:16", "user", "pty", "", "9" * 5000,
]  # fmt: skip
NON_UTF8 = st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))
WORDS = st.one_of(
    st.sampled_from(OPTIONS),
    st.sampled_from(VALUES),
    st.text(st.sampled_from(SPECIALS + string.ascii_letters + string.digits), max_size=12),
    st.text(max_size=12),
    NON_UTF8,
)


def check_options(opts: DmOptions) -> None:
    for note in opts.notes:
        one_line(note)


def parse_or_error(argv: list[str]) -> DmOptions | None:
    try:
        opts = parse_dm_args(argv)
    except DmArgsError as e:
        one_line(str(e))
        return None
    check_options(opts)
    return opts


@FAST
@given(st.lists(WORDS, max_size=12))
@example(["-d", "9" * 5000])  # over int's 4300-digit limit: was a 5000-character message
@example(["-d", "70000"])  # not a domain id
@example(["-frob\nnicate"])  # a note with a line break would forge a log line
@example(["-vcpu_avail", "0x" + "f" * 100_000])  # more vcpus than any guest has
@example(["\udcff"])  # a lone surrogate from a non-UTF-8 command line
def test_qemu_options_parse_or_raise_dm_args_error(argv: list[str]) -> None:
    parse_or_error(argv)


@FAST
@given(st.lists(WORDS, max_size=8), st.lists(st.sampled_from(OPTIONS) | WORDS, max_size=8))
def test_unknown_options_are_notes_and_known_ones_still_count(
    junk: list[str], more: list[str]
) -> None:
    """Junk before a well-formed tail never hides the tail's ``-d``."""
    opts = parse_or_error([*junk, *more, "-d", "7"])
    if opts is not None and not (junk + more and (junk + more)[-1] in OPTIONS):
        assert opts.domid == 7


@FAST
@given(st.lists(WORDS, max_size=8))
@example(["--dm=\udcff"])
@example(["--eject-delay=nan"])
@example(["--eject-delay=inf"])
@example(["--eject-delay=1e999"])
def test_agent_options_parse_or_raise_dm_args_error(words: list[str]) -> None:
    try:
        options, rest = split_agent_options(words)
    except DmArgsError as e:
        one_line(str(e))
        return
    assert isinstance(options, AgentOptions)
    assert all(not w.startswith(("--dm=", "--compat=", "--eject-delay=")) for w in rest)
    if options.eject_delay is not None:
        assert 0 <= options.eject_delay < float("inf")


DMARGS_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(st.sampled_from(SPECIALS + "ab"), max_size=80),
    st.lists(WORDS, max_size=10).map(" ".join),
)


@FAST
@given(st.lists(WORDS, max_size=4), DMARGS_TEXT)
@example([], " -domain-name 'unbalanced -vcpus 2")
@example([], '""')
def test_any_dmargs_text_splits_and_parses_or_raises(cmdline: list[str], dmargs: str) -> None:
    argv = build_argv(cmdline, dmargs)
    assert argv[: len(cmdline)] == cmdline
    words = argv[len(cmdline) :]
    if "'" not in dmargs and '"' not in dmargs:
        assert words == [w for w in dmargs.split(" ") if w]
    parse_or_error(argv)


@FAST
@given(
    st.lists(
        st.text(st.characters(blacklist_characters="'\x00", codec="utf-8")),
        max_size=8,
    )
)
@example(["a b", "", "c"])
def test_quotes_group_a_word(words: list[str]) -> None:
    """Mini-OS: a quoted word keeps its blanks and may be empty; the quotes go."""
    assert split_dmargs(" ".join(f"'{w}'" for w in words)) == words


def test_huge_dmargs() -> None:
    mb = 1 << 20
    for text in (" -d 5" * (mb // 5), "'" + "a" * mb, " " * mb, "-serial " + "x" * mb):
        parse_or_error(build_argv([], text))


SAFE_WORDS = st.text(st.characters(blacklist_characters=" '\"\x00", codec="utf-8"), min_size=1)


@FAST
@given(st.lists(SAFE_WORDS | st.sampled_from(sorted(DMARGS_DROPPED)), max_size=12))
def test_encode_then_split_gives_the_words_back(words: list[str]) -> None:
    argv = ["stubdom-dm", *words]
    assert split_dmargs(encode_dmargs(argv)) == [w for w in words if w not in DMARGS_DROPPED]


# -- round trip: xl.cfg → toolstack dmargs → the agent's options --------------------------------

TEXTS = st.text(st.sampled_from(SPECIALS + "abc019/:"), min_size=1, max_size=8)


@st.composite
def vif_specs(draw: st.DrawFn, n: int) -> str:
    parts = [f"mac=00:16:3e:00:00:{n:02x}"]
    for key in ("bridge", "model", "vifname"):
        if draw(st.booleans()):
            parts.append(f"{key}={draw(TEXTS.filter(lambda t: ',' not in t))}")
    if draw(st.booleans()):
        parts.append(f"type={draw(st.sampled_from(['ioemu', 'vif']))}")
    return ",".join(parts)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, object]:
    c: dict[str, object] = {"type": "hvm", "name": draw(TEXTS | st.just("win7"))}
    optional: dict[str, st.SearchStrategy[object]] = {
        "vcpus": st.integers(1, 130),
        "maxvcpus": st.integers(1, 130),
        "vnc": st.integers(0, 1),
        "vnclisten": st.sampled_from(["127.0.0.1", "0.0.0.0:2"]) | TEXTS,
        "vncdisplay": st.integers(0, 3),
        "vncunused": st.integers(0, 1),
        "vncpasswd": TEXTS,
        "sdl": st.integers(0, 1),
        "opengl": st.integers(0, 1),
        "nographic": st.integers(0, 1),
        "keymap": st.just("en-us") | TEXTS,
        "serial": st.lists(st.sampled_from(["pty", "vc", "null", "file:/x y", "file:/a'b"])
                           | TEXTS, min_size=1, max_size=3),
        "vga": st.sampled_from(["stdvga", "cirrus", "none"]),
        "videoram": st.integers(0, 64),
        "usb": st.integers(0, 1),
        "usbdevice": st.lists(st.just("tablet") | TEXTS, max_size=2),
        "soundhw": st.just("es1370") | TEXTS,
        "boot": st.text(st.sampled_from("acdnxz"), min_size=1, max_size=4),
        "acpi": st.integers(0, 1),
        "gfx_passthru": st.integers(0, 1),
    }  # fmt: skip
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        c[key] = draw(optional[key])
    nics = draw(st.integers(0, 3))
    if nics:
        c["vif"] = [draw(vif_specs(n)) for n in range(nics)]
    return c


def expected_options(cfg: GuestConfig, domid: int, loadvm: str | None) -> dict[str, object]:
    ioemu = [n for n in cfg.nics if n.type is NicType.IOEMU]
    return {
        "domid": domid,
        "name": cfg.name,
        "vcpus": cfg.max_vcpus,
        "vcpu_avail": (1 << cfg.vcpus) - 1,
        "videoram_mb": cfg.video_memkb // 1024 if cfg.video_memkb else DmOptions.videoram_mb,
        "vga": cfg.vga,
        "boot": cfg.boot,
        "acpi": cfg.acpi,
        "usb": cfg.usb or bool(cfg.usbdevice),
        "usbdevices": cfg.usbdevice,
        "soundhw": cfg.soundhw,
        "serial": cfg.serial,
        "graphics": cfg.graphics,
        "gfx_passthru": cfg.gfx_passthru,
        "keymap": cfg.keymap,
        "nics": [(n.devid, n.mac, n.model) for n in ioemu],
        "taps": [n.devid for n in ioemu],
        "net_none": not ioemu,
        "loadvm": loadvm,
    }


def actual_options(opts: DmOptions) -> dict[str, object]:
    got = {k: getattr(opts, k) for k in expected_options(GuestConfig("x"), 0, None)}
    got["nics"] = [(n.vlan, n.mac, n.model) for n in opts.nics]
    return got


@FAST
@given(configs(), st.integers(1, 0x7FEF), st.none() | st.just("/var/lib/xen/qemu-resume.5"))
@example({"type": "hvm", "name": "g", "vcpus": 129}, 5, None)  # the agent refuses > 128
@example({"type": "hvm", "name": "g", "boot": "x"}, 5, None)  # and boot devices but a,c,d,n
@example({"type": "hvm", "name": "it's"}, 5, None)  # the quote swallowed every later word
@example({"type": "hvm", "name": "g", "keymap": "a b"}, 5, None)
@example({"type": "hvm", "name": "g", "vif": ["mac=00:16:3e:00:00:01,bridge=a b"]}, 5, None)
@example({"type": "hvm", "name": "g", "serial": ["file:/a'b"]}, 5, None)
@example({"type": "hvm", "name": "g", "vnc": 0, "sdl": 1}, 5, None)  # a display without -vnc
def test_what_the_toolstack_writes_the_agent_reads(
    config: dict[str, object], domid: int, loadvm: str | None
) -> None:
    with warnings_logged() as warned:
        try:
            cfg = parse_config(format_xlcfg(config), "rt.cfg")  # type: ignore[arg-type]
            argv = build_dm_argv(cfg, domid, saved_state=loadvm)
        except (ConfigError, ToolstackDmArgsError):
            return
    if warned:  # the toolstack said the stubdomain would not get it intact
        return
    opts = parse_dm_args(build_argv([], encode_dmargs(argv)))
    assert actual_options(opts) == expected_options(cfg, domid, loadvm)
    strays = [n for n in opts.notes if "disk image" in n or "unknown option" in n]
    assert not strays
