"""Node-name rules (docs/misc/xenstore.txt, cxenstored ``is_valid_nodename``).

Paths are ``str`` here: the alphabet is ASCII, so decoding the wire bytes as ASCII
(rejecting anything else) is lossless for every valid path.
"""

from __future__ import annotations

import re

from stubdom.wire.constants import ABS_PATH_MAX, REL_PATH_MAX

_VALID_CHARS = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
# cx: sscanf(node, "/local/domain/%5u/%n"): an optional sign and digits, five wide.
_LOCAL_PREFIX = re.compile(r"/local/domain/(?:[-+]\d{1,4}|\d{1,5})/")


class InvalidPath(ValueError):
    """A path that no xenstore server accepts."""


def domain_path(domid: int) -> str:
    """``/local/domain/<domid>``, the home of a domain."""
    return f"/local/domain/{domid}"


def control_shutdown_path(domid: int) -> str:
    """``control/shutdown``: where a toolstack asks the guest to power off or reboot."""
    return f"{domain_path(domid)}/control/shutdown"


def name_path(domid: int) -> str:
    return f"{domain_path(domid)}/name"


def memory_path(domid: int, node: str) -> str:
    """``memory/target``, ``memory/static-max`` or ``memory/videoram`` (KiB)."""
    return f"{domain_path(domid)}/memory/{node}"


def is_special(path: str) -> bool:
    """``@introduceDomain``, ``@releaseDomain`` and other watch-only names."""
    return path.startswith("@")


def canonicalize(path: str, domid: int) -> str:
    """Resolve a relative path against ``/local/domain/<domid>``.

    Absolute and ``@`` paths are returned unchanged; validity is checked separately.
    """
    if path.startswith("/") or path.startswith("@"):
        return path
    return f"/local/domain/{domid}/{path}"


def relative_length(path: str) -> int:
    """The length cx compares with its path quota: the part after ``/local/domain/<id>/``."""
    m = _LOCAL_PREFIX.match(path)
    if m:
        return len(path) - m.end()
    return len(path)


def is_valid_path(path: str, path_max: int = REL_PATH_MAX, allow_special: bool = False) -> bool:
    """Whether ``path`` (already canonical) is a valid node name."""
    if path.startswith("@"):
        if not allow_special:
            return False
    elif not path.startswith("/"):
        return False
    if path.endswith("/") and path != "/":
        return False
    if "//" in path:
        return False
    if relative_length(path) > path_max:
        return False
    return _VALID_CHARS.match(path) is not None


def is_child(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or lies below it (a watch on ``/`` sees everything)."""
    if path == parent:
        return True
    if parent == "/":
        return path.startswith("/")
    return path.startswith(parent) and path[len(parent) : len(parent) + 1] == "/"


def parent_of(path: str) -> str:
    """The parent of an absolute path other than ``/``."""
    idx = path.rfind("/")
    return "/" if idx <= 0 else path[:idx]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


def check_client_path(path: str) -> str:
    """What a careful client checks before sending (the libxenstore/pyxs rules).

    Returns the path, or raises `InvalidPath` naming what is wrong.
    """
    if not path:
        raise InvalidPath("empty xenstore path")
    if not _VALID_CHARS.match(path):
        bad = sorted({c for c in path if not _VALID_CHARS.match(c)})
        raise InvalidPath(f"xenstore path {path!r} contains invalid characters {bad!r}")
    if path.endswith("/") and path != "/":
        raise InvalidPath(f"xenstore path {path!r} ends in '/'")
    if "//" in path:
        raise InvalidPath(f"xenstore path {path!r} contains '//'")
    limit = ABS_PATH_MAX if path.startswith("/") else REL_PATH_MAX
    if len(path) > limit:
        raise InvalidPath(f"xenstore path of {len(path)} characters exceeds the limit of {limit}")
    return path


def ancestors(path: str) -> list[str]:
    """The strict ancestors of an absolute path, nearest first, ending with ``/``."""
    out: list[str] = []
    while path != "/":
        path = parent_of(path)
        out.append(path)
    return out


__all__ = [
    "InvalidPath",
    "ancestors",
    "basename",
    "canonicalize",
    "check_client_path",
    "domain_path",
    "is_child",
    "is_special",
    "is_valid_path",
    "join",
    "parent_of",
    "relative_length",
]
