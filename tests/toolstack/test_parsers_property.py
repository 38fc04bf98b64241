"""Hostile input at the toolstack's edges (issue #8): property tests on every parser.

Every input to xl.cfg (`xlcfg`, `configure`), to the disk/vif/PCI/serial spec strings
(`specs`), to domain names and to the PCI address type (`protocol.Bdf`) either parses or
raises the module's own error type (`ConfigError`, `SpecError`, `BdfError`, the
toolstack's `DmArgsError`) whose message is one readable line: never a bare
IndexError/ValueError/KeyError/UnicodeError/RecursionError, never a traceback, never a
hang.  Inputs are random text, mutations of the valid examples, very long strings and
deep nesting.  Where a formatter exists, parsing what it wrote gives the value back.

Regressions found by these properties are pinned with ``@example``.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stubdom.protocol import Bdf, BdfError, parse_bdf
from stubdom.toolstack.config import GuestConfig, RdmPolicy
from stubdom.toolstack.configure import load_config, parse_config
from stubdom.toolstack.dmargs import DmArgsError, build_dm_argv
from stubdom.toolstack.specs import SpecError, parse_disk, parse_pci, parse_serial, parse_vif
from stubdom.toolstack.xlcfg import (
    COMMAND_LINE,
    MAX_LIST_DEPTH,
    ConfigError,
    apply_overrides,
    format_xlcfg,
    parse_xlcfg,
)
from tests.support.logs import warnings_logged

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_TEXTS = [p.read_text() for p in sorted(EXAMPLES.glob("*.cfg"))]
#: A user-facing error is one line a person can read: a quoted 1 MB value is not.
MAX_MESSAGE = 600
#: Enough examples to find the classes of bug, few enough to keep the file under ~10 s.
FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def check_message(e: BaseException) -> str:
    text = str(e)
    assert text, f"{type(e).__name__} without a message"
    assert "\n" not in text and "\r" not in text, text
    assert len(text) <= MAX_MESSAGE, f"{len(text)}-character message: {text[:200]}..."
    assert "Traceback" not in text
    text.encode("utf-8")  # printable on any terminal that takes UTF-8
    return text


# -- strategies --------------------------------------------------------------------------------

#: The characters parsers care about, plus the ones they should not choke on.
SPECIALS = ",=:@.*[]'\"\\ \t\n#;+-()/\x00\x1b\x7f\u00e9\u20ac\U0001f600\ufeff"
HOSTILE_CHARS = st.sampled_from(SPECIALS + string.hexdigits + "xX")
#: str as it can arrive from argv or a file decoded with surrogateescape: lone surrogates.
NON_UTF8 = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str]) -> str:
    """A valid example with a few insertions, deletions, duplications and replacements."""
    s = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(s)))
        j = draw(st.integers(i, min(len(s), i + 12)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "replace"]))
        if op == "insert":
            s = s[:i] + draw(st.text(HOSTILE_CHARS, min_size=1, max_size=4)) + s[i:]
        elif op == "delete":
            s = s[:i] + s[j:]
        elif op == "duplicate":
            s = s[:j] + s[i:j] * draw(st.integers(1, 3)) + s[j:]
        else:
            s = s[:i] + draw(HOSTILE_CHARS) + s[i + 1 :]
    return s


def hostile(seeds: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=60),
        st.text(HOSTILE_CHARS, max_size=60),
        NON_UTF8,
        mutated(seeds),
    )


def huge_inputs(seeds: list[str]) -> list[str]:
    """1 MB inputs: one character repeated, and each seed padded or repeated."""
    mb = 1 << 20
    out = [c * mb for c in "a0,=:[\"'\\ @"]
    for s in seeds[:3]:
        out.append(s + "x" * mb)
        out.append((s * (mb // max(len(s), 1) + 1))[:mb])
    return out


# -- xl.cfg -------------------------------------------------------------------------------------


def parse_or_config_error(text: str, filename: str = "fuzz.cfg") -> None:
    try:
        parse_xlcfg(text, filename).plain()
    except ConfigError as e:
        check_message(e)
        assert e.file == filename and e.line >= 1 and e.column >= 1
        assert e.line <= text.count("\n") + 1


@FAST
@given(hostile(EXAMPLE_TEXTS))
@example('x = "a\\')  # a backslash at the very end of an unterminated string
@example('x = "\\xg"')  # a hex escape without its digits
@example("x = [" * 400 + "]" * 400)  # RecursionError before lists had a depth limit
def test_xlcfg_hostile_text_parses_or_raises_config_error(text: str) -> None:
    parse_or_config_error(text)


@SLOW
@given(st.integers(1, 20_000), st.sampled_from(["[", "[ 1, ", "[\n'a',"]))
def test_xlcfg_deep_nesting_is_a_config_error_not_a_recursion_error(
    depth: int, opener: str
) -> None:
    text = "x = " + opener * depth + "]" * depth + "\n"
    if depth <= MAX_LIST_DEPTH:
        value = parse_xlcfg(text, "deep.cfg")["x"].value
        for _ in range(depth - 1):  # the value is as deep as written
            value = value.items[-1]
        assert value.is_list
        return
    with pytest.raises(ConfigError, match="nested more than") as ei:
        parse_xlcfg(text, "deep.cfg")
    check_message(ei.value)


def test_xlcfg_huge_inputs() -> None:
    for text in huge_inputs(EXAMPLE_TEXTS):
        parse_or_config_error(text)
    name = "a" * (1 << 20)
    assert parse_xlcfg(f'name = "{name}"')["name"].value.text == name


@FAST
@given(st.lists(hostile(["memory=1", 'name="x"; vcpus=2', 'disk+=["a"]']), max_size=4))
@example(["\n0"])
@example(["memory=1", "\n:"])
def test_overrides_parse_or_raise_config_error_on_the_command_line(args: list[str]) -> None:
    base = parse_xlcfg(EXAMPLE_TEXTS[0], "base.cfg")
    try:
        apply_overrides(base, args)
    except ConfigError as e:
        check_message(e)
        assert e.file == COMMAND_LINE and 1 <= e.line <= len(args)


@FAST
@given(st.binary(max_size=80), st.sampled_from(EXAMPLE_TEXTS))
@example(b"\xff", EXAMPLE_TEXTS[0])
def test_load_config_takes_any_bytes(junk: bytes, seed: str) -> None:
    for data in (junk, seed.encode() + junk, junk + seed.encode()):
        path = _tmp_file(data)
        try:
            load_config(path)
        except ConfigError as e:
            check_message(e)
            assert e.file == str(path)


_TMP: list[Path] = []


def _tmp_file(data: bytes) -> Path:
    import tempfile

    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="cfgprop-")))
    path = _TMP[0] / "fuzz.cfg"
    path.write_bytes(data)
    return path


# -- configure: the guest's settings ------------------------------------------------------------

#: Every key configure reads, with a few it ignores.
KEYS = [
    "type", "builder", "name", "uuid", "memory", "maxmem", "vcpus", "maxvcpus",
    "device_model_version", "device_model_stubdomain_override", "stubdomain_memory",
    "stubdomain_kernel", "stubdomain_cmdline", "device_model_args", "device_model_args_hvm",
    "dm_restrict", "kernel", "bios", "vnc", "vnclisten", "vncdisplay", "vncunused",
    "vncpasswd", "sdl", "opengl", "nographic", "keymap", "spice", "vga", "stdvga", "videoram",
    "usb", "usbdevice", "soundhw", "gfx_passthru", "acpi", "boot", "timeoffset", "serial",
    "serial_list", "disk", "vif", "pci", "pci_msitranslate", "pci_power_mgmt",
    "pci_permissive", "pci_seize", "on_poweroff", "on_reboot", "on_crash", "on_watchdog",
    "vfb", "frobnicate",
]  # fmt: skip
ATOMS: st.SearchStrategy[object] = st.one_of(
    st.integers(0, 2**70),
    st.sampled_from(["0", "1", "-1", "0x10", "010", "08", "", "hvm", "rombios", "pty",
                     "qemu-xen-traditional", "stdvga", "cda", "99999999999999999999999"]),
    st.text(HOSTILE_CHARS, max_size=12),
    st.text(max_size=12),
)  # fmt: skip
VALUES = st.recursive(ATOMS, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def configure_or_error(text: str) -> GuestConfig | None:
    """parse_config then build_dm_argv; only their own errors, each one line."""
    try:
        cfg = parse_config(text, "fuzz.cfg")
    except ConfigError as e:
        check_message(e)
        return None
    try:
        build_dm_argv(cfg, 5)
    except DmArgsError as e:
        check_message(e)
        return None
    return cfg


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=10))
@example({"type": "hvm", "name": "g", "vcpus": 2**70})  # huge numbers are out of range
@example({"type": "hvm", "name": "g", "vcpus": 200})  # qemu-trad stops at 128 vcpus
@example({"type": "hvm", "name": "g", "boot": "xyz"})  # the stubdomain only takes a,c,d,n
@example({"type": "hvm", "name": "g", "disk": [[]]})
def test_configure_any_settings(config: dict[str, object]) -> None:
    config = {"type": "hvm", "name": "g", **config}
    configure_or_error(format_xlcfg(config))  # type: ignore[arg-type]


@FAST
@given(mutated(EXAMPLE_TEXTS))
def test_configure_mutated_examples(text: str) -> None:
    configure_or_error(text)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("vcpus = 129", "above its maximum of 128"),
        ("maxvcpus = 1000", "above its maximum of 128"),
        ("memory = 9223372036854775808", "out of range"),
        ('boot = "cdx"', "letters a, c, d and n"),
        ('keymap = "en us"', "contains a blank"),
        ("usbdevice = [ 'tab\"let' ]", "contains a quote"),
        ('soundhw = "a\x00b"', "contains a NUL"),
    ],
)
def test_values_the_stubdomain_would_refuse_are_refused_here(extra: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as ei:
        parse_config(f'type = "hvm"\nname = "g"\n{extra}\n', "t.cfg")
    assert (ei.value.file, ei.value.line) == ("t.cfg", 3)
    check_message(ei.value)


NAMES = st.one_of(
    st.text(max_size=20),
    st.text(HOSTILE_CHARS, min_size=1, max_size=20),
    st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=300),
)


@FAST
@given(NAMES)
@example("../../etc/evil")  # the stubdomain's log file would leave the log directory
@example("it's")  # a quote swallows every later dmargs word in Mini-OS's split
@example("a\x00b")  # Mini-OS reads dmargs as a C string: the rest would vanish
@example("line\nbreak")
@example("x" * 300)  # longer than a file name may be
@example("xenfv")  # a word libxl drops from dmargs, as it drops -M xenfv
def test_domain_names(name: str) -> None:
    from stubdom.protocol import encode_dmargs, split_dmargs, stubdom_name
    from stubdom.toolstack.spawn import HostPaths
    from stubdom.toolstack.xlcfg import quote

    with warnings_logged() as warned:
        cfg = configure_or_error(f'type = "hvm"\nname = {quote(name)}\n')
    if cfg is None:
        return
    assert cfg.name == name
    logs = Path("/var/log/xen")
    for n in (name, stubdom_name(name)):  # the stubdomain's pvqemu logs as <name>-dm
        path = HostPaths(Path("/s"), logs, Path("/l")).dm_log(n)
        assert path.parent == logs and len(path.name.encode()) <= 255, path
    assert not any(c in name for c in "\n\r\x00/'\"")
    if not warned:  # a name libxl would split has been warned about
        words = split_dmargs(encode_dmargs(build_dm_argv(cfg, 5)))
        assert words[words.index("-domain-name") + 1] == name


# -- spec strings -----------------------------------------------------------------------------

DISK_SEEDS = [
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "file:/root/image.iso,hdc:cdrom,r",
    ",hdc:cdrom,r",
    "tap:aio:/x.img,xvda,w,backendtype=qdisk,discard,script=block-x",
]
VIF_SEEDS = [
    "",
    "mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0",
    "mac=00:16:3e:5f:48:e4,bridge=xenbr1,type=vif,vifname=x,devid=3,mtu=1500,ip=1.2.3.4",
]
PCI_SEEDS = [
    "0000:03:00.0@5,msitranslate=1,power_mgmt=0,permissive=0",
    "04:00.*",
    "36:00.0,vslot=20,seize=1",
    "bdf=36:00.0,vslot=20,seize=1,rdm_policy=strict",
    "name=gpu,permissive=1",
]
SERIAL_SEEDS = ["pty", "file:/var/log/dm-serial.log", "/dev/ttyS0", "tcp:127.0.0.1:4555", "vc"]

KEYS_OF = {
    "disk": ["format", "vdev", "access", "devtype", "backend", "backendtype", "script",
             "specification", "target", "grant_usage", "frob"],
    "vif": ["mac", "bridge", "model", "type", "vifname", "script", "ip", "backend", "mtu",
            "devid", "rate", "frob"],
    "PCI": ["bdf", "vslot", "permissive", "msitranslate", "seize", "power_mgmt",
            "rdm_policy", "name", "frob"],
    "serial": ["file", "pipe", "tcp"],
}  # fmt: skip


def keyvals(kind: str) -> st.SearchStrategy[str]:
    """``key=value,...`` with the kind's keys and hostile values."""
    pair = st.tuples(st.sampled_from(KEYS_OF[kind]), st.text(HOSTILE_CHARS, max_size=6))
    return st.lists(pair.map("=".join), min_size=1, max_size=4).map(",".join)


PARSERS: dict[str, tuple[Callable[[str], object], list[str]]] = {
    "disk": (parse_disk, DISK_SEEDS),
    "vif": (lambda s: parse_vif(s, 0), VIF_SEEDS),
    "PCI": (parse_pci, PCI_SEEDS),
    "serial": (parse_serial, SERIAL_SEEDS),
}


def parse_or_spec_error(kind: str, spec: str) -> object | None:
    parser, _ = PARSERS[kind]
    try:
        return parser(spec)
    except SpecError as e:
        assert check_message(e).startswith(f"{kind} specification ")
        return None


@FAST
@given(st.data())
def test_spec_strings_parse_or_raise_spec_error(data: st.DataObject) -> None:
    for kind, (_, seeds) in PARSERS.items():
        parse_or_spec_error(kind, data.draw(hostile(seeds) | keyvals(kind), label=kind))


@pytest.mark.parametrize("kind", PARSERS)
def test_spec_strings_huge_inputs(kind: str) -> None:
    for spec in huge_inputs(PARSERS[kind][1]):
        parse_or_spec_error(kind, spec)


@FAST
@given(st.sampled_from(["bridge", "model", "vifname"]), st.text(HOSTILE_CHARS, max_size=8))
@example("bridge", "a b")  # the stubdomain would split -net tap,...,bridge=a b
@example("model", "e1000'")  # and a quote would swallow every later argument
def test_vif_values_reach_the_stubdomain_intact(key: str, value: str) -> None:
    from stubdom.protocol import encode_dmargs, split_dmargs

    nic = parse_or_spec_error("vif", f"mac=00:16:3e:00:00:01,{key}={value}")
    if nic is None:
        return
    cfg = GuestConfig(name="g", nics=[nic])  # type: ignore[list-item]
    argv = build_dm_argv(cfg, 5)
    assert split_dmargs(encode_dmargs(argv)) == [a for a in argv[1:] if a not in ("-M", "xenfv")]


@FAST
@given(st.text(HOSTILE_CHARS, max_size=10).map(lambda s: "file:/x" + s))
@example("file:/x'")
def test_serial_specs_reach_the_stubdomain_intact(spec: str) -> None:
    from stubdom.protocol import encode_dmargs, split_dmargs

    if parse_or_spec_error("serial", spec) is not None:
        assert split_dmargs(encode_dmargs(["x", "-serial", spec])) == ["-serial", spec]


# -- PCI: BDFs and the spec forms round-trip ----------------------------------------------------

BDFS = st.builds(
    Bdf, st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7)
)


@given(BDFS)
def test_bdf_format_parse_round_trip(bdf: Bdf) -> None:
    assert parse_bdf(str(bdf)) == bdf
    assert Bdf.parse(str(bdf).upper()) == bdf
    if bdf.domain == 0:
        assert parse_bdf(f"{bdf.bus:x}:{bdf.dev:x}.{bdf.func}") == bdf


@FAST
@given(hostile(["0000:03:00.0", "03:00.1", "ffff:ff:1f.7"]))
@example("0000:03:00.0\x00")
def test_bdf_parse_takes_any_text(text: str) -> None:
    try:
        bdf = parse_bdf(text)
    except BdfError as e:
        check_message(e)
    else:
        assert parse_bdf(str(bdf)) == bdf


@st.composite
def pci_specs(draw: st.DrawFn) -> tuple[str, Bdf, bool, int | None, dict[str, bool], RdmPolicy]:
    bdf = draw(BDFS)
    all_functions = draw(st.booleans())
    if all_functions:
        bdf = Bdf(bdf.domain, bdf.bus, bdf.dev, 0)
    vslot = draw(st.none() | st.integers(0, 0x1F))
    flags = draw(
        st.fixed_dictionaries(
            {}, optional={k: st.booleans() for k in ("msitranslate", "power_mgmt",
                                                     "permissive", "seize")}
        )
    )  # fmt: skip
    policy = draw(st.sampled_from(list(RdmPolicy)))
    func = "*" if all_functions else str(bdf.func)

    def hx(n: int, width: int) -> str:
        text = f"{n:0{width}x}" if draw(st.booleans()) else f"{n:x}"
        return text.upper() if draw(st.booleans()) else text

    dom = f"{hx(bdf.domain, 4)}:" if bdf.domain or draw(st.booleans()) else ""
    addr = f"{dom}{hx(bdf.bus, 2)}:{hx(bdf.dev, 2)}.{func}"
    opts = [f"{k}={int(v)}" for k, v in flags.items()] + [f"rdm_policy={policy}"]
    form = draw(st.sampled_from(["positional", "vslot=", "bdf="]))
    if form == "positional":
        head = addr + (f"@{hx(vslot, 2)}" if vslot is not None else "")
    else:
        head = addr if form == "vslot=" else f"bdf={addr}"
        if vslot is not None:
            opts.insert(draw(st.integers(0, len(opts))), f"vslot={hx(vslot, 2)}")
    spec = ",".join([head, *draw(st.permutations(opts))])
    return spec, bdf, all_functions, vslot, flags, policy


@FAST
@given(pci_specs())
def test_pci_spec_forms_give_back_what_they_say(
    case: tuple[str, Bdf, bool, int | None, dict[str, bool], RdmPolicy],
) -> None:
    spec, bdf, all_functions, vslot, flags, policy = case
    got = parse_pci(spec)
    assert (got.bdf, got.all_functions, got.vslot, got.rdm_policy) == (
        bdf, all_functions, vslot, policy)  # fmt: skip
    for key in ("msitranslate", "power_mgmt", "permissive", "seize"):
        assert getattr(got, key) == flags.get(key, False), key
