"""The spec strings inside ``disk=``, ``vif=``, ``pci=`` and ``serial=`` list items.

Each parser follows its man page (xl-disk-configuration(5), xl-network-configuration(5),
xl-pci-configuration(5)) and the libxlu/xl code behind it, and raises `SpecError` whose
message names the whole spec and the part that is wrong.
"""

from __future__ import annotations

import logging
import random
import re

from stubdom.protocol import Bdf
from stubdom.toolstack.config import (
    DiskFormat,
    DiskSpec,
    NicSpec,
    NicType,
    PciSpec,
    RdmPolicy,
)
from stubdom.toolstack.xlcfg import clip

log = logging.getLogger(__name__)


class SpecError(ValueError):
    """A malformed spec; the message names the spec and the bad part."""

    def __init__(self, kind: str, spec: str, message: str) -> None:
        self.kind = kind
        self.spec = spec
        self.message = message
        super().__init__(f"{kind} specification {clip(spec, 60)}: {message}")


def _c(text: str, limit: int = 40) -> str:
    """Text to quote in a one-line message: escaped if unprintable, cut short if long."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def dmargs_word_problem(text: str, *, blanks: bool = True) -> str | None:
    """Why ``text`` cannot reach the stubdomain as one dmargs word, or None.

    libxl joins dmargs with spaces and quotes nothing; Mini-OS splits on blanks, takes
    ``'`` and ``"`` as the start of a quoted word (which swallows every later argument
    when unbalanced) and reads the node as a C string (a NUL ends it).
    """
    if "\0" in text:
        return "contains a NUL character, where the stubdomain's argument string would end"
    if "'" in text or '"' in text:
        return (
            "contains a quote, which the stubdomain's argument splitting would take as the "
            "start of a quoted word"
        )
    if blanks and " " in text:
        return "contains a blank, which the stubdomain's argument splitting would cut apart"
    return None


# -- disk --------------------------------------------------------------------------------

_FORMATS = {
    "": DiskFormat.RAW,
    "raw": DiskFormat.RAW,
    "qcow": DiskFormat.QCOW,
    "qcow2": DiskFormat.QCOW2,
    "vhd": DiskFormat.VHD,
    "qed": DiskFormat.QED,
    "empty": DiskFormat.EMPTY,
}
_BACKENDTYPES = ("phy", "tap", "qdisk", "standalone")
_SPECIFICATIONS = ("xen", "virtio")
# Deprecated prefixes, tried at the start of each parameter (libxlu_disk_l.l).
_FORMAT_PREFIX = re.compile(r"(raw|qcow2?|vhd):")
_SCRIPT_PREFIX = re.compile(r"(iscsi|e?nbd|drbd):")
_IGNORED_PREFIX = re.compile(r"(tapdisk|tap2?|aio|ioemu|file|phy):")
_UNKNOWN_PREFIX = re.compile(r"[a-z][a-z0-9]*:(?![a-z0-9])")
_UNKNOWN_KEY = re.compile(r"[a-z][-a-z0-9]*\Z")
#: Keys whose value is a string that may be given once (libxlu's savestring).
_SAVED_KEYS = ("backend", "vdev", "script")
#: Keys with a fixed set of values, and how an unknown value's message lists them.
_CHOSEN_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "backendtype": (_BACKENDTYPES, ""),
    "specification": (_SPECIFICATIONS, " (xen or virtio)"),
}
#: Words without ``=``, and the attribute each sets.
_FLAG_WORDS: dict[str, tuple[str, bool]] = {
    "cdrom": ("cdrom", True),
    "direct-io-safe": ("direct_io_safe", True),
    "discard": ("discard", True),
    "no-discard": ("discard", False),
    "trusted": ("trusted", True),
    "untrusted": ("trusted", False),
}


class _Disk:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.target: str | None = None
        self.format: DiskFormat | None = None
        self.vdev: str | None = None
        self.readwrite = True
        self.access_set = False
        self.cdrom = False
        self.had_depr_prefix = False
        self.backend: str | None = None
        self.backendtype: str | None = None
        self.specification: str | None = None
        self.script: str | None = None
        self.direct_io_safe = False
        self.discard: bool | None = None
        self.trusted: bool | None = None

    def err(self, message: str, near: str | None = None) -> SpecError:
        if near is not None:
            message = f"{message} near `{_c(near)}'"
        return SpecError("disk", self.spec, message)

    def save(self, what: str, current: str | None, value: str) -> str:
        # libxlu's savestring: respecifying is an error unless the old value was empty.
        if current:
            raise self.err(f"{what} respecified", value)
        return value

    def set_format(self, value: str) -> None:
        fmt = _FORMATS.get(value)
        if fmt is None:
            raise self.err("unknown value for format (raw, qcow, qcow2, vhd, qed or empty)", value)
        if self.format is not None and self.format != fmt:
            raise self.err("format respecified", value)
        self.format = fmt

    def set_access(self, value: str) -> None:
        if value in ("r", "ro"):
            self.readwrite = False
        elif value in ("rw", "w", ""):
            self.readwrite = True
        else:
            raise self.err("unknown value for access (r, ro, w or rw)", value)

    def vdev_and_devtype(self, value: str) -> bool:
        """``<vdev>:<devtype>`` (deprecated); False if there is no colon."""
        vdev, colon, devtype = value.rpartition(":")
        if not colon:
            return False
        self.vdev = self.save("vdev", self.vdev, vdev)
        if devtype == "cdrom":
            self.cdrom = True
        elif devtype == "disk":
            self.cdrom = False
        else:
            raise self.err("unknown deprecated type (cdrom or disk)", devtype)
        return True

    def set_devtype(self, value: str, token: str) -> None:
        if value not in ("cdrom", "disk"):
            raise self.err("unknown value for type (cdrom or disk)", token)
        self.cdrom = value == "cdrom"

    def choose(self, key: str, value: str) -> str:
        """A value from a fixed set: saying it again is fine, changing it is not."""
        allowed, hint = _CHOSEN_KEYS[key]
        if value not in allowed:
            raise self.err(f"unknown value for {key}{hint}", value)
        current = getattr(self, key)
        if current is not None and current != value:
            raise self.err(f"{key} respecified", value)
        return value

    def keyword(self, key: str, value: str, token: str) -> None:
        if key == "format":
            self.set_format(value)
        elif key == "devtype":
            self.set_devtype(value, token)
        elif key == "access":
            self.set_access(value)
        elif key in _SAVED_KEYS:
            setattr(self, key, self.save(key, getattr(self, key), value))
        elif key in _CHOSEN_KEYS:
            setattr(self, key, self.choose(key, value))
        elif key == "grant_usage" and value in ("0", "1"):
            pass  # a Xen-on-virtio knob; nothing here uses it
        elif _UNKNOWN_KEY.match(key):
            raise self.err("unknown parameter", token)
        else:
            raise self.err("bad disk syntax", token)

    def positional(self, value: str) -> None:
        if self.target is None:
            self.target = value
        elif not self.had_depr_prefix and self.format is None:
            if self.target == "" and self.vdev_and_devtype(value):
                self.format = DiskFormat.EMPTY
            else:
                self.set_format(value)
        elif self.vdev is None:
            if not self.vdev_and_devtype(value):
                self.vdev = value
        elif not self.access_set:
            self.access_set = True
            self.set_access(value)
        else:
            raise self.err("too many positional parameters", value)

    def parse(self) -> DiskSpec:
        s, i = self.spec, 0
        while (i := _skip_blanks(s, i)) < len(s):
            after_prefix = self.deprecated_prefix(i)
            if after_prefix is not None:
                i = after_prefix
                continue
            if s.startswith("target=", i):
                # The magic parameter: the rest of the string, commas and all.
                rest = s[i + len("target=") :]
                if rest.endswith(","):
                    rest = rest[:-1]
                self.target = self.save("target", self.target, rest)
                break
            m = _UNKNOWN_PREFIX.match(s, i)
            if m:
                raise self.err("unknown deprecated disk prefix", m.group())
            token, i = _next_token(s, i)
            self.word(token)
        return self.result()

    def deprecated_prefix(self, i: int) -> int | None:
        """Where the spec goes on after a deprecated ``<prefix>:`` at ``i``; None if
        there is none."""
        s = self.spec
        if m := _FORMAT_PREFIX.match(s, i):
            self.set_format(m.group(1))
        elif m := _SCRIPT_PREFIX.match(s, i):
            self.script = self.save("script", self.script, f"block-{m.group(1)}")
        elif not (m := _IGNORED_PREFIX.match(s, i)):
            return None
        self.had_depr_prefix = True
        return m.end()

    def word(self, token: str) -> None:
        """A ``key=value``, a flag word or a positional parameter."""
        key, eq, value = token.partition("=")
        if eq:
            self.keyword(key, value, token)
        elif token in _FLAG_WORDS:
            attr, on = _FLAG_WORDS[token]
            setattr(self, attr, on)
        else:
            self.positional(token)

    def result(self) -> DiskSpec:
        """libxl's defaults for what the spec left out: a cdrom is read-only, and empty
        without a target."""
        fmt = self.format or DiskFormat.RAW
        readwrite = self.readwrite
        if self.cdrom:
            readwrite = False
            if not self.target:
                fmt = DiskFormat.EMPTY
        if not self.vdev:
            raise self.err("no vdev specified")
        if self.target is None and not self.cdrom:
            raise self.err("no target specified (and device not removable)")
        return DiskSpec(
            vdev=self.vdev,
            target=self.target or "",
            format=fmt,
            readwrite=readwrite,
            cdrom=self.cdrom,
            backend=self.backend or "0",
            script=self.script,
            direct_io_safe=self.direct_io_safe,
            discard=self.discard,
            backendtype=self.backendtype,
            trusted=self.trusted,
            specification=self.specification or "xen",
        )


def _skip_blanks(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\n":
        i += 1
    return i


def _next_token(s: str, i: int) -> tuple[str, int]:
    """The token at ``i`` up to the next comma, and where the one after it starts."""
    comma = s.find(",", i)
    if comma < 0:
        return s[i:], len(s)
    return s[i:comma], comma + 1


def parse_disk(spec: str) -> DiskSpec:
    """One ``disk=`` item: keyword, positional (target, format, vdev, access) and the
    deprecated ``[<format>:][<target>],<vdev>[:<devtype>],<access>`` forms; ``target=``
    takes the rest of the string."""
    return _Disk(spec).parse()


# -- vif ---------------------------------------------------------------------------------

XEN_OUI = (0x00, 0x16, 0x3E)
_MAC = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5}\Z")


def random_mac(rng: random.Random | None = None) -> str:
    """libxl's default: 00:16:3e, then three random bytes with the top bit of the first
    clear (the upper half of Xen's OUI is reserved)."""
    r = rng or random.SystemRandom()
    tail = (r.randrange(256) & 0x7F, r.randrange(256), r.randrange(256))
    return ":".join(f"{b:02x}" for b in XEN_OUI + tail)


def parse_mac(text: str) -> str:
    """``xx:xx:xx:xx:xx:xx`` (1 or 2 hex digits each) → lowercase, two digits each."""
    if not _MAC.match(text):
        raise ValueError(text)
    return ":".join(f"{int(p, 16):02x}" for p in text.split(":"))


def _uint(kind: str, spec: str, key: str, value: str) -> int:
    try:
        n = int(value, 0) if value.lower().startswith("0x") else int(value, 10)
    except ValueError:
        raise SpecError(kind, spec, f"{key}={clip(value)} is not a number") from None
    if n < 0:
        raise SpecError(kind, spec, f"{key}={clip(value)} must not be negative")
    return n


_VIF_IGNORED = {"rate", "accel", "gatewaydev", "forwarddev", "netdev", "vid", "vlan"}
#: Keys whose value becomes a dmargs word, and the `NicSpec` field each sets.
_VIF_WORDS = {"bridge": "bridge", "model": "model", "vifname": "ifname"}
#: Keys set as given.
_VIF_STRINGS = ("script", "ip", "backend")
#: Keys with a number.
_VIF_NUMBERS = ("mtu", "devid")


def parse_vif(spec: str, devid: int, rng: random.Random | None = None) -> NicSpec:
    """One ``vif=`` item (comma-separated ``key=value``, every key optional; ``''`` is
    a NIC with all defaults). ``devid`` is its position unless ``devid=`` says otherwise;
    without ``mac=`` the MAC is random in 00:16:3e (``rng`` makes it reproducible)."""
    nic = NicSpec(devid=devid, mac="")
    for raw in spec.split(","):
        token = raw.lstrip(" ")
        if not token:
            continue  # strtok skips empty fields
        if token in ("trusted", "untrusted"):
            continue
        key, eq, value = token.partition("=")
        if not eq:
            raise SpecError("vif", spec, f"`{_c(token)}' is not key=value")
        _vif_setting(nic, spec, key, value)
    if not nic.mac:  # no mac=
        nic.mac = random_mac(rng)
    return nic


def _vif_setting(nic: NicSpec, spec: str, key: str, value: str) -> None:
    """One ``key=value``; an unknown key is only logged, as xl warns and goes on."""
    if key == "mac":
        nic.mac = _vif_mac(spec, value)
    elif key in _VIF_WORDS:
        if problem := dmargs_word_problem(value):
            raise SpecError("vif", spec, f"{key}={clip(value)} {problem}")
        setattr(nic, _VIF_WORDS[key], value)
    elif key == "type":
        if value not in ("ioemu", "vif"):
            raise SpecError("vif", spec, f"invalid type {clip(value)}: must be 'vif' or 'ioemu'")
        nic.type = NicType(value)
    elif key in _VIF_STRINGS:
        setattr(nic, key, value)
    elif key in _VIF_NUMBERS:
        setattr(nic, key, _uint("vif", spec, key, value))
    elif key in _VIF_IGNORED:
        log.info("vif %r: %s= is accepted and not used here", spec, key)
    else:
        log.warning("vif %r: unknown parameter %r ignored", spec, key)


def _vif_mac(spec: str, value: str) -> str:
    try:
        return parse_mac(value)
    except ValueError:
        raise SpecError(
            "vif", spec, f"invalid mac {clip(value)} (expected xx:xx:xx:xx:xx:xx, hex)"
        ) from None


# -- pci ---------------------------------------------------------------------------------

_SPEC_BDF = re.compile(
    r"(?:(?P<dom>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})"
    r"\.(?P<func>[0-7]|\*)"
)


def _pci_bdf(spec: str, text: str, *, whole: bool) -> tuple[Bdf, bool, int] | None:
    m = _SPEC_BDF.match(text)
    if m is None or (whole and m.end() != len(text)):
        return None
    dev = int(m["dev"], 16)
    if dev > 0x1F:
        raise SpecError(
            "PCI", spec, f"device number {clip(m['dev'])} in `{_c(m.group())}' exceeds 0x1f"
        )
    all_functions = m["func"] == "*"
    bdf = Bdf(
        int(m["dom"] or "0", 16), int(m["bus"], 16), dev, 0 if all_functions else int(m["func"])
    )
    return bdf, all_functions, m.end()


def _vslot(spec: str, text: str) -> int:
    # Always hex, as libxlu reads it.
    if not re.fullmatch(r"(?:0[xX])?[0-9a-fA-F]{1,2}", text):
        raise SpecError("PCI", spec, f"vslot {clip(text)} is not a hex slot number")
    n = int(text, 16)
    if n > 0x1F:
        raise SpecError("PCI", spec, f"vslot {clip(text)} exceeds 0x1f")
    return n


def _flag(spec: str, key: str, value: str) -> bool:
    if not re.fullmatch(r"-?[0-9]+", value.strip()):
        raise SpecError("PCI", spec, f"{key}={clip(value)} is not a number (0 or 1)")
    return int(value) != 0


def parse_pci(
    spec: str,
    *,
    msitranslate: bool = False,
    power_mgmt: bool = False,
    permissive: bool = False,
    seize: bool = False,
    rdm_policy: RdmPolicy = RdmPolicy.RELAXED,
) -> PciSpec:
    """One PCI_SPEC_STRING: ``[<bdf>[@<vslot>],][<key>=<value>,]*`` with keys bdf, vslot
    (hex), msitranslate, power_mgmt, permissive, seize, rdm_policy and name; a function
    of ``*`` means all functions. The keyword defaults are the domain-wide ``pci_*``
    settings."""
    flags = {
        "msitranslate": msitranslate,
        "power_mgmt": power_mgmt,
        "permissive": permissive,
        "seize": seize,
    }
    p = _Pci(spec, flags, rdm_policy)
    rest = p.leading_bdf()
    for n, item in enumerate(rest.split(",") if rest else []):
        # Only a first item that is not after a BDF may be the BDF itself.
        p.option(item, may_be_bdf=n == 0 and p.bdf is None)
    return p.result()


class _Pci:
    """What a PCI_SPEC_STRING has said so far."""

    def __init__(self, spec: str, flags: dict[str, bool], policy: RdmPolicy) -> None:
        self.spec = spec
        self.flags = flags
        self.policy = policy
        self.bdf: Bdf | None = None
        self.all_functions = False
        self.vslot: int | None = None
        self.name: str | None = None

    def err(self, message: str) -> SpecError:
        return SpecError("PCI", self.spec, message)

    def leading_bdf(self) -> str:
        """Take a ``<bdf>[@<vslot>]`` the spec starts with; the options after it."""
        spec = self.spec
        got = _pci_bdf(spec, spec, whole=False)
        if got is None:
            return spec
        self.bdf, self.all_functions, end = got
        rest = spec[end:]
        if rest.startswith("@"):
            at, _, rest = rest[1:].partition(",")
            self.vslot = _vslot(spec, at)
        elif rest.startswith(","):
            rest = rest[1:]
        elif rest:
            raise self.err(f"unexpected `{_c(rest)}' after the BDF")
        return rest

    def option(self, item: str, *, may_be_bdf: bool) -> None:
        key, eq, value = item.partition("=")
        if not eq and may_be_bdf:
            raise self.err(f"`{_c(item)}' is not a PCI address ([DDDD:]BB:DD.F, hex; F 0-7 or *)")
        if not eq:
            raise self.err(f"`{_c(item)}' is not key=value")
        if key == "bdf":
            self.set_bdf(value)
        elif key == "vslot":
            self.vslot = _vslot(self.spec, value)
        elif key in self.flags:
            self.flags[key] = _flag(self.spec, key, value)
        elif key == "rdm_policy":
            if value not in ("strict", "relaxed"):
                raise self.err(f"rdm_policy={clip(value)}: must be 'strict' or 'relaxed'")
            self.policy = RdmPolicy(value)
        elif key == "name":
            self.name = value
        else:
            raise self.err(f"unknown PCI_SPEC_STRING option {clip(key)}")

    def set_bdf(self, value: str) -> None:
        if self.bdf is not None:
            raise self.err("bdf given twice")
        got = _pci_bdf(self.spec, value, whole=True)
        if got is None:
            raise self.err(f"bdf={clip(value)} is not a PCI address ([DDDD:]BB:DD.F, hex)")
        self.bdf, self.all_functions, _ = got

    def result(self) -> PciSpec:
        """A device is named by its BDF or by ``name=``, never both."""
        if self.bdf is not None and self.name is not None:
            raise self.err("bdf and name= exclude each other")
        if self.bdf is None and self.name is None:
            raise self.err("no device: give a BDF ([DDDD:]BB:DD.F) or name=")
        return PciSpec(
            # A named device is looked up among the assignable ones when it is added.
            bdf=self.bdf if self.bdf is not None else Bdf(0, 0, 0, 0),
            vslot=self.vslot,
            all_functions=self.all_functions,
            msitranslate=self.flags["msitranslate"],
            power_mgmt=self.flags["power_mgmt"],
            permissive=self.flags["permissive"],
            seize=self.flags["seize"],
            rdm_policy=self.policy,
            name=self.name,
        )


# -- serial ------------------------------------------------------------------------------

_SERIAL_WORDS = {"vc", "pty", "none", "null", "stdio", "msmouse", "braille"}
_SERIAL_PREFIXES = ("file:", "pipe:", "udp:", "tcp:", "telnet:", "unix:", "mon:", "vc:")


def parse_serial(spec: str) -> str:
    """One qemu ``-serial`` device (``pty``, ``vc``, ``null``, ``file:PATH``, ``/dev/…``
    …). qemu-trad's stubdomain splits its arguments on blanks with no quoting, so a spec
    with a blank in it cannot reach it intact and is refused."""
    if not spec:
        raise SpecError("serial", spec, "empty device")
    if any(c.isspace() for c in spec):
        raise SpecError(
            "serial",
            spec,
            "contains a blank, which the stubdomain's argument splitting would cut apart",
        )
    problem = dmargs_word_problem(spec)
    if problem is not None:
        raise SpecError("serial", spec, problem)
    if (
        spec in _SERIAL_WORDS
        or spec.startswith(_SERIAL_PREFIXES)
        or spec.startswith("/dev/")
        or re.fullmatch(r"COM[0-9]+", spec)
    ):
        if spec.endswith(":"):
            raise SpecError("serial", spec, f"`{_c(spec)}' lacks its argument")
        return spec
    raise SpecError(
        "serial",
        spec,
        "unknown device (expected pty, vc, null, none, stdio, file:PATH, pipe:PATH, "
        "/dev/…, tcp:…, udp:…, telnet:…, unix:… or mon:…)",
    )
