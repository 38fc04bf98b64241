"""xl.cfg settings → `GuestConfig`, with xl's and libxl's checks for an HVM guest whose
qemu-xen-traditional device model runs in a stubdomain.

Values are read the way xl reads them (``xlu_cfg_get_long`` and friends): a number may be
written bare or quoted, in decimal, 0-octal or 0x-hex; a boolean is a number, zero being
false; a key given twice keeps its last value. Every error is a `ConfigError` pointing at
the offending value. Keys this toolstack does not use are logged (at info, since xl
ignores unknown keys silently) and otherwise ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from stubdom.protocol import DMARGS_DROPPED
from stubdom.toolstack.config import DiskSpec, GuestConfig, RdmPolicy, VncConfig
from stubdom.toolstack.specs import (
    SpecError,
    dmargs_word_problem,
    parse_disk,
    parse_pci,
    parse_serial,
    parse_vif,
)
from stubdom.toolstack.xlcfg import (
    ConfigError,
    Position,
    Setting,
    Settings,
    Value,
    apply_overrides,
    clip,
    parse_xlcfg,
)

log = logging.getLogger(__name__)

TRADITIONAL = "qemu-xen-traditional"
SHUTDOWN_ACTIONS = (
    "destroy",
    "restart",
    "rename-restart",
    "preserve",
    "coredump-destroy",
    "coredump-restart",
    "soft-reset",
)
BIOSES = ("rombios", "seabios", "ovmf")
VGAS = ("stdvga", "cirrus", "none", "qxl")
GFX_PASSTHRU_KINDS = ("default", "igd")

# Keys xl knows that mean nothing for this toolstack, or only for other guest types.
_IGNORED_WITH_NOTE = {
    "device_model_args_pv": "it applies to PV guests only",
    "stubdomain_ramdisk": "it is for Linux (qemu-xen) stubdomains only",
    "vfb": "it is the PV framebuffer; an HVM guest's display is set by vnc=/sdl=",
    "device_model_override": "the stubdomain's device model is stubdomain_kernel",
}

#: C's LONG_MIN and LONG_MAX: xl reads numbers with strtol, which fails (ERANGE) outside.
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
#: ``HVM_MAX_VCPUS``: qemu-xen-traditional's ``-vcpus`` and ``-vcpu_avail`` stop there.
HVM_MAX_VCPUS = 128

_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")


def strtol(text: str) -> int | None:
    """C's ``strtol(text, &end, 0)`` requiring the whole text to be used; None if not."""
    m = _STRTOL.match(text)
    if m is None:
        return None
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        n = int(digits[2:], 16)
    elif digits.startswith("0"):
        n = int(digits, 8) if len(digits) > 1 else 0
    else:
        n = int(digits)
    return -n if sign == "-" else n


class _Reader:
    """Typed access to settings, remembering which keys were used."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.used: set[str] = set()

    def setting(self, key: str) -> Setting | None:
        s = self.settings.get(key)
        if s is not None:
            self.used.add(key)
        return s

    def has(self, key: str) -> bool:
        return key in self.settings

    def pos(self, key: str) -> Position:
        return self.settings[key].value.pos

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError.at(self.pos(key), message)

    def string(self, key: str) -> str | None:
        s = self.setting(key)
        if s is None:
            return None
        if s.value.is_list:
            raise ConfigError.at(s.value.pos, f"`{key}' must be a single value, not a list")
        return s.value.text

    def integer(
        self, key: str, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        s = self.setting(key)
        if s is None:
            return None
        if s.value.is_list:
            raise ConfigError.at(s.value.pos, f"`{key}' must be a number, not a list")
        if s.op == "+=":
            raise ConfigError.at(s.pos, f"can't use += with numbers for `{key}'")
        n = strtol(s.value.text)
        if n is None:
            raise ConfigError.at(
                s.value.pos, f"`{key}' is not a valid number: {clip(s.value.text)}"
            )
        if not LONG_MIN <= n <= LONG_MAX:
            raise ConfigError.at(
                s.value.pos, f"`{key}' is out of range: {clip(s.value.text)} (at most {LONG_MAX})"
            )
        if minimum is not None and n < minimum:
            raise ConfigError.at(s.value.pos, f"`{key}' is {n}, below its minimum of {minimum}")
        if maximum is not None and n > maximum:
            raise ConfigError.at(s.value.pos, f"`{key}' is {n}, above its maximum of {maximum}")
        return n

    def boolean(self, key: str) -> bool | None:
        n = self.integer(key)
        return None if n is None else n != 0

    def items(self, key: str) -> list[Value] | None:
        s = self.setting(key)
        if s is None:
            return None
        if not s.value.is_list:
            raise ConfigError.at(s.value.pos, f"`{key}' must be a list [ ... ]")
        for item in s.value.items:
            if item.is_list:
                raise ConfigError.at(item.pos, f"`{key}' items must be strings, not lists")
        return list(s.value.items)

    def string_list(self, key: str) -> list[str] | None:
        items = self.items(key)
        return None if items is None else [v.text for v in items]

    def string_or_list(self, key: str) -> list[Value] | None:
        """A list of strings, or one string (xl's fallback for serial and usbdevice)."""
        s = self.settings.get(key)
        if s is not None and not s.value.is_list:
            self.used.add(key)
            return [s.value]
        return self.items(key)

    def choice(self, key: str, choices: Sequence[str], what: str | None = None) -> str | None:
        v = self.string(key)
        if v is not None and v not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            raise self.error(key, f"invalid value {clip(v)} for `{what or key}' (one of {options})")
        return v


def _c(text: str, limit: int = 40) -> str:
    """Text to quote in a one-line message: escaped if unprintable, cut short if long."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _spec(value: Value, exc: SpecError) -> ConfigError:
    return ConfigError.at(value.pos, str(exc))


@dataclasses.dataclass
class _Build:
    """What every section of `configure` reads from and adds to: one section per concern
    keeps each check next to the keys it judges."""

    r: _Reader
    cfg: GuestConfig
    source: str
    rng: random.Random | None


def configure(
    settings: Settings, source: str = "<config>", rng: random.Random | None = None
) -> GuestConfig:
    """Build the guest's configuration from parsed settings (see the module doc); ``rng``
    draws the MACs of vifs without ``mac=`` (reproducible in tests)."""
    r = _Reader(settings)
    _check_domain_type(r, source)
    b = _Build(r, _identity(r, source), source, rng)
    # In xl's order: which of two bad keys is reported depends on it.
    for section in _SECTIONS:
        section(b)
    _note_unused(r)
    return b.cfg


# -- domain type and identity ----------------------------------------------------------------


def _check_domain_type(r: _Reader, source: str) -> None:
    """Only an HVM guest has a qemu-xen-traditional stubdomain; say so in xl's terms."""
    dtype = r.string("type")
    if dtype is not None and dtype != "hvm":
        raise r.error(
            "type",
            f'type = "{_c(dtype)}": only "hvm" guests have a qemu-xen-traditional stubdomain',
        )
    builder = r.string("builder")
    if builder is not None:
        _check_builder(r, builder, dtype)
    if dtype is None and builder is None:
        raise ConfigError(
            source, 1, 1, 'type = "hvm" is required (xl would build a PV guest without it)'
        )


def _check_builder(r: _Reader, builder: str, dtype: str | None) -> None:
    """``builder=`` is xl's older spelling of ``type=``."""
    if builder not in ("hvm", "generic"):
        raise r.error("builder", f"invalid domain type {clip(builder)} for `builder'")
    if builder != "hvm":
        if dtype is not None:
            raise r.error("builder", 'contradicting "builder" and "type" options')
        raise r.error(
            "builder",
            'builder = "generic" is a PV guest: only "hvm" guests have a '
            "qemu-xen-traditional stubdomain",
        )


def _identity(r: _Reader, source: str) -> GuestConfig:
    """The configuration started from its name and uuid, the two things naming the guest."""
    cfg = GuestConfig(name=_name(r, source), source=source)
    u = r.string("uuid")
    if u is not None:
        try:
            cfg.uuid = str(uuidlib.UUID(u))
        except ValueError:
            raise r.error("uuid", f"failed to parse UUID {clip(u)}") from None
    return cfg


def _name(r: _Reader, source: str) -> str:
    name = r.string("name")
    if not name:
        if r.has("name"):
            raise r.error("name", "the domain name must not be empty")
        raise ConfigError(source, 1, 1, 'domain name must be specified (name = "...")')
    _check_name(r, name)
    if any(c.isspace() for c in name):
        log.warning(
            "%s: name %r has a blank; the stubdomain's argument splitting will cut it apart",
            source,
            name,
        )
    if name in DMARGS_DROPPED:
        log.warning(
            "%s: name %r is a word libxl leaves out of dmargs (%s): the stubdomain gets "
            "no domain name; choose another name",
            source,
            name,
            ", ".join(sorted(DMARGS_DROPPED)),
        )
    return name


# -- memory and vcpus --------------------------------------------------------------------------


def _memory(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    memory = r.integer("memory", minimum=1)
    if memory is not None:
        cfg.memory_mb = memory
    maxmem = r.integer("maxmem", minimum=1)
    if maxmem is not None:
        if maxmem < cfg.memory_mb:
            raise r.error("maxmem", f"maxmem ({maxmem}) is below memory ({cfg.memory_mb})")
        cfg.maxmem_mb = maxmem


def _vcpus(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    vcpus = r.integer("vcpus", minimum=1, maximum=HVM_MAX_VCPUS)
    if vcpus is not None:
        cfg.vcpus = vcpus
    maxvcpus = r.integer("maxvcpus", minimum=1, maximum=HVM_MAX_VCPUS)
    if maxvcpus is not None:
        if maxvcpus < cfg.vcpus:
            raise r.error("maxvcpus", f"maxvcpus ({maxvcpus}) < vcpus ({cfg.vcpus})")
        cfg.maxvcpus = maxvcpus


# -- device model ------------------------------------------------------------------------------


def _device_model_version(b: _Build) -> None:
    """Only qemu-xen-traditional runs in this toolstack's (Mini-OS) stubdomain."""
    r = b.r
    dmv = r.string("device_model_version")
    if dmv is None:
        return
    if dmv == "qemu-xen":
        raise r.error(
            "device_model_version",
            'device_model_version "qemu-xen" is not supported: this toolstack runs '
            "only qemu-xen-traditional stubdomains (device_model_version = "
            '"qemu-xen-traditional")',
        )
    if dmv != TRADITIONAL:
        raise r.error("device_model_version", f"unknown device_model_version {clip(dmv)}")
    b.cfg.device_model_version = dmv


def _stubdomain(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    stub = r.boolean("device_model_stubdomain_override")
    if stub is False:
        raise r.error(
            "device_model_stubdomain_override",
            "device_model_stubdomain_override = 0 asks for a device model in dom0; this "
            "toolstack runs the device model only in a stubdomain",
        )
    stub_mem = r.integer("stubdomain_memory", minimum=1)
    if stub_mem is not None:
        cfg.stubdomain_memory_mb = stub_mem
    cfg.stubdomain_kernel = r.string("stubdomain_kernel")
    cmdline = r.string("stubdomain_cmdline")
    if cmdline is not None:
        cfg.stubdomain_cmdline = cmdline


def _device_model_args(b: _Build) -> None:
    """Extra dmargs are kept as given, with a warning for an item the stubdomain's
    blank-splitting will not pass on whole."""
    for key in ("device_model_args", "device_model_args_hvm"):
        args = b.r.string_list(key)
        if args is None:
            continue
        for a in args:
            if not a or any(c.isspace() for c in a):
                log.warning(
                    "%s: %s item %r will not reach the stubdomain as one argument "
                    "(dmargs are split on blanks)",
                    b.source,
                    key,
                    a,
                )
        setattr(b.cfg, key, args)


def _firmware(b: _Build) -> None:
    """What qemu-xen-traditional cannot do: a restricted device model, a direct kernel
    boot, a BIOS other than ROMBIOS."""
    r = b.r
    if r.boolean("dm_restrict"):
        raise r.error("dm_restrict", "dm_restrict is not supported with qemu-xen-traditional")
    kernel = r.string("kernel")
    if kernel is not None and Path(kernel).name != "hvmloader":
        raise r.error(
            "kernel",
            "HVM direct kernel boot (kernel=) is not supported with qemu-xen-traditional",
        )
    bios = r.choice("bios", BIOSES)
    if bios is not None:
        if bios != "rombios":
            raise r.error("bios", f'qemu-xen-traditional requires bios=rombios (bios = "{bios}")')
        b.cfg.bios = bios


# -- display -----------------------------------------------------------------------------------


def _vnc(b: _Build) -> None:
    r = b.r
    vnc = VncConfig()
    enabled = r.boolean("vnc")
    if enabled is not None:
        vnc.enabled = enabled
    listen = r.string("vnclisten")
    if listen is not None:
        _dm_word(r, "vnclisten", listen)
        vnc.listen = listen
    display = r.integer("vncdisplay", minimum=0)
    if display is not None:
        vnc.display = display
    unused = r.boolean("vncunused")
    if unused is not None:
        vnc.findunused = unused
    passwd = r.string("vncpasswd")
    vnc.password = passwd or None
    if listen is not None and ":" in listen and vnc.display:
        raise r.error("vncdisplay", "display specified both in vnclisten and vncdisplay")
    b.cfg.vnc = vnc


def _other_displays(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    cfg.sdl = bool(r.boolean("sdl"))
    cfg.opengl = bool(r.boolean("opengl"))
    cfg.nographic = bool(r.boolean("nographic"))
    keymap = r.string("keymap")
    cfg.keymap = _dm_word(r, "keymap", keymap) if keymap is not None else None
    if r.boolean("spice"):
        raise r.error("spice", "spice is not supported with qemu-xen-traditional")


def _vga(b: _Build) -> None:
    """``vga=``, else the older ``stdvga=`` boolean."""
    r, cfg = b.r, b.cfg
    vga = r.choice("vga", VGAS)
    if vga is not None:
        if vga == "qxl":
            raise r.error("vga", 'vga = "qxl" needs qemu-xen (upstream QEMU)')
        cfg.vga = vga
    else:
        stdvga = r.boolean("stdvga")
        if stdvga is not None:
            cfg.vga = "stdvga" if stdvga else "cirrus"


def _videoram(b: _Build) -> None:
    """Judged against the card chosen by `_vga`, as libxl does."""
    r, cfg = b.r, b.cfg
    videoram = r.integer("videoram", minimum=0)
    if videoram is None:
        return
    if cfg.vga == "stdvga" and videoram < 8:
        raise r.error(
            "videoram",
            f"videoram must be at least 8 MB for stdvga on qemu-xen-traditional "
            f"(videoram = {videoram})",
        )
    if cfg.vga == "cirrus" and videoram != 4:
        log.warning(
            "%s: ignoring videoram other than 4 MB for cirrus on qemu-xen-traditional",
            b.source,
        )
    cfg.videoram_mb = videoram


# -- other emulated devices --------------------------------------------------------------------


def _usb(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    cfg.usb = bool(r.boolean("usb"))
    usbdevice = r.string_or_list("usbdevice")
    if usbdevice is not None:
        for v in usbdevice:
            problem = dmargs_word_problem(v.text)
            if problem is not None:
                raise ConfigError.at(v.pos, f"`usbdevice' value {clip(v.text)} {problem}")
        cfg.usbdevice = [v.text for v in usbdevice]


def _sound_and_passthrough(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    soundhw = r.string("soundhw")
    cfg.soundhw = _dm_word(r, "soundhw", soundhw) if soundhw is not None else None
    if r.has("gfx_passthru"):
        s = r.settings["gfx_passthru"]
        # xl takes a kind name as well as a boolean.
        if not s.value.is_list and strtol(s.value.text) is None:
            cfg.gfx_passthru = r.choice("gfx_passthru", GFX_PASSTHRU_KINDS) is not None
        else:
            cfg.gfx_passthru = bool(r.boolean("gfx_passthru"))


def _platform(b: _Build) -> None:
    r, cfg = b.r, b.cfg
    acpi = r.boolean("acpi")
    if acpi is not None:
        cfg.acpi = acpi
    boot = r.string("boot")
    if boot is not None:
        if not re.fullmatch(r"[acdn]+", boot):
            raise r.error(
                "boot",
                f'invalid boot order {clip(boot)} (letters a, c, d and n, such as "cda")',
            )
        cfg.boot = boot
    timeoffset = r.string("timeoffset")
    if timeoffset is not None:
        cfg.timeoffset = timeoffset


def _serial(b: _Build) -> None:
    r = b.r
    serial = r.string_or_list("serial")
    serial_list = r.items("serial_list")
    if serial is not None and serial_list is not None:
        raise r.error(
            "serial_list",
            "serial and serial_list are both set; libxl accepts only one of them",
        )
    for v in serial or serial_list or []:
        with _spec_errors_at(v):
            b.cfg.serial.append(parse_serial(v.text))


# -- devices -----------------------------------------------------------------------------------


def _disks(b: _Build) -> None:
    for v in b.r.items("disk") or []:
        with _spec_errors_at(v):
            b.cfg.disks.append(parse_disk(v.text))


def _vifs(b: _Build) -> None:
    for devid, v in enumerate(b.r.items("vif") or []):
        with _spec_errors_at(v):
            b.cfg.nics.append(parse_vif(v.text, devid, b.rng))


def _pcis(b: _Build) -> None:
    """``pci_<option>=`` are defaults for every ``pci=`` item; passthrough rules out PoD."""
    r, cfg = b.r, b.cfg
    pci_defaults = {
        key: bool(r.boolean(f"pci_{key}"))
        for key in ("msitranslate", "power_mgmt", "permissive", "seize")
    }
    for v in r.items("pci") or []:
        with _spec_errors_at(v):
            cfg.pcis.append(parse_pci(v.text, rdm_policy=RdmPolicy.RELAXED, **pci_defaults))
    if cfg.pcis and cfg.maxmem_mb is not None and cfg.maxmem_mb > cfg.memory_mb:
        raise r.error(
            "maxmem",
            "PCI device assignment for an HVM guest fails with PoD enabled "
            f"(maxmem {cfg.maxmem_mb} > memory {cfg.memory_mb})",
        )


def _unique_devices(b: _Build) -> None:
    _check_unique_vdevs(b.cfg, b.r)
    _check_unique_devids(b.cfg, b.r)


# -- lifecycle ---------------------------------------------------------------------------------


def _lifecycle(b: _Build) -> None:
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset"):
        action = b.r.string(key)
        if action is None:
            continue
        if action not in SHUTDOWN_ACTIONS:
            raise b.r.error(key, f"unknown {key} action {clip(action)}")
        if hasattr(b.cfg, key):
            setattr(b.cfg, key, action)


_SECTIONS: tuple[Callable[[_Build], None], ...] = (
    _memory,
    _vcpus,
    _device_model_version,
    _stubdomain,
    _device_model_args,
    _firmware,
    _vnc,
    _other_displays,
    _vga,
    _videoram,
    _usb,
    _sound_and_passthrough,
    _platform,
    _serial,
    _disks,
    _vifs,
    _pcis,
    _unique_devices,
    _lifecycle,
)


# -- the rest ----------------------------------------------------------------------------------


def _note_unused(r: _Reader) -> None:
    """xl ignores unknown keys silently; say which ones, louder for those a user may expect
    to matter."""
    for key, setting in r.settings.items():
        if key in r.used:
            continue
        note = _IGNORED_WITH_NOTE.get(key)
        if note is not None:
            log.warning("%s: `%s' ignored: %s", setting.pos, key, note)
        else:
            log.info("%s: `%s' is not used by this toolstack; ignored", setting.pos, key)


@contextlib.contextmanager
def _spec_errors_at(value: Value) -> Iterator[None]:
    """A specs parser's `SpecError` as a `ConfigError` pointing at the item it judged."""
    try:
        yield
    except SpecError as e:
        raise _spec(value, e) from None


#: The stubdomain's pvqemu logs to ``qemu-dm-<name>-dm.log``, which must be a file name.
MAX_NAME_BYTES = 255 - len("qemu-dm--dm.log")


def _check_name(r: _Reader, name: str) -> None:
    """A domain name becomes file names (the device-model logs), an ``xl list`` row and
    a dmargs word: no ``/``, no control character, no quote, and short enough."""
    bad = next((c for c in name if not c.isprintable() and c != " "), None)
    if bad is not None:
        raise r.error("name", f"the domain name {clip(name)} contains the control character "
                              f"{bad!r}; use printable characters")  # fmt: skip
    if "/" in name:
        raise r.error("name", f"the domain name {clip(name)} contains `/', which cannot be in "
                              "the file names made from it (qemu-dm-<name>.log)")  # fmt: skip
    problem = dmargs_word_problem(name, blanks=False)
    if problem is not None:
        raise r.error("name", f"the domain name {clip(name)} {problem}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise r.error("name", f"the domain name is longer than {MAX_NAME_BYTES} bytes "
                              "(it is part of the device model's log file name)")  # fmt: skip


def _dm_word(r: _Reader, key: str, value: str) -> str:
    """A value that goes into dmargs as one word: refused if the stubdomain would not
    receive it intact."""
    problem = dmargs_word_problem(value)
    if problem is not None:
        raise r.error(key, f"`{key}' value {clip(value)} {problem}")
    return value


def _check_unique_vdevs(cfg: GuestConfig, r: _Reader) -> None:
    seen: set[str] = set()
    for d in cfg.disks:
        if d.vdev in seen:
            raise r.error("disk", f"vdev {clip(d.vdev)} is used by more than one disk")
        seen.add(d.vdev)


def _check_unique_devids(cfg: GuestConfig, r: _Reader) -> None:
    seen: set[int] = set()
    for n in cfg.nics:
        if n.devid in seen:
            raise r.error("vif", f"devid {n.devid} is used by more than one vif")
        seen.add(n.devid)


def parse_config(
    text: str,
    filename: str = "<string>",
    overrides: Sequence[str] = (),
    *,
    rng: random.Random | None = None,
) -> GuestConfig:
    """Parse an xl.cfg text, apply ``key=value`` overrides as ``xl create`` does, and
    build the `GuestConfig`."""
    settings = apply_overrides(parse_xlcfg(text, filename), overrides)
    return configure(settings, source=filename, rng=rng)


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, rng: random.Random | None = None
) -> GuestConfig:
    """`parse_config` on a file; an unreadable file is a `ConfigError` too."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), 0, 0, f"unable to open configuration file: {e.strerror}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(str(p), line, col, "the file is not valid UTF-8") from None
    cfg = parse_config(text, str(p), overrides, rng=rng)
    cfg.disks = [_beside(d, p.parent) for d in cfg.disks]
    return cfg


def _beside(disk: DiskSpec, base: Path) -> DiskSpec:
    """A relative disk image names a file next to the config (xl would look in its own
    working directory, which makes a config depend on where it is run from)."""
    if not disk.target or os.path.isabs(disk.target):
        return disk
    return dataclasses.replace(disk, target=os.path.abspath(base / disk.target))
