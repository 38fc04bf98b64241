"""The host daemon's local API as data: its messages and their sans-IO codec.

One request per line, ``{"id": 1, "op": "pause", "args": {"domid": 3}}``, answered by
one line, ``{"id": 1, "ok": null}`` or ``{"id": 1, "error": {...}}`` (see
`stubdom.host.api`, whose asyncio shells serve and call it).  Nothing here does I/O or
imports asyncio, so a short-lived command can speak the API over a plain socket
(`stubdom.host.apiblocking`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from stubdom import typedjson
from stubdom.host.hypervisor import (
    DomainConfig,
    DomainExists,
    DomainInfo,
    Hypervisor,
    HypervisorError,
    NoSuchDomain,
    ShutdownReason,
)

R = TypeVar("R")

#: The longest line either side accepts (a domain list of a few thousand rows fits).
MAX_LINE = 4 * 1024 * 1024


# -- errors --------------------------------------------------------------------


class HostError(HypervisorError):
    """The host daemon could not be reached or did not answer properly."""


class HostNotRunning(HostError):
    """No daemon listens on the run directory's API socket."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        super().__init__(
            f"no stubdom host is running in {run_dir}; start one with 'stubdom host up'"
        )
        self.run_dir = Path(run_dir)


def unreachable(socket_path: str | os.PathLike[str], e: OSError) -> HostError:
    """A daemon socket that exists but cannot be connected to (not `HostNotRunning`)."""
    return HostError(f"cannot reach the stubdom host at {socket_path}: {e.strerror or e}")


def lost_during(where: str, op: str) -> HostError:
    """The daemon of run directory ``where`` dropped the connection before answering."""
    return HostError(
        f"the stubdom host in {where} closed the connection during {op} (see {where}/host.log)"
    )


class ApiProtocolError(HostError):
    """A malformed request or reply: a bug on one side, or mismatched versions."""


class RemoteError(HostError):
    """The daemon failed unexpectedly while handling a request (see its host.log)."""


# -- messages ------------------------------------------------------------------


@dataclass(frozen=True)
class HostStatus:
    """What ``stubdom host status`` shows about the daemon."""

    pid: int
    uptime: float
    run_dir: str
    xenstored_socket: str
    domains: int
    dom0: DomainInfo
    #: ``ours``, ``cx`` or ``ox``: which xenstored the host runs.
    xenstored: str = "ours"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dom0": self.dom0.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HostStatus:
        return cls(**{**d, "dom0": DomainInfo.from_dict(d["dom0"])})


class Request(Generic[R]):
    """One API operation; subclasses are frozen dataclasses whose fields are the args."""

    op: ClassVar[str]

    def to_args(self) -> dict[str, Any]:
        args = typedjson.to_json(self, self.op)
        assert isinstance(args, dict)
        return args

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Request[R]:
        """Build the request from decoded JSON, checking every argument's type."""
        request: Request[R] = _decoded(cls, args, cls.op)
        return request

    def encode_result(self, value: R) -> Any:
        return None

    @abstractmethod
    def decode_result(self, raw: Any) -> R: ...


class _NoResult(Request[None]):
    def decode_result(self, raw: Any) -> None:
        return None


class _DomainInfoResult(Request[DomainInfo]):
    def encode_result(self, value: DomainInfo) -> Any:
        return value.to_dict()

    def decode_result(self, raw: Any) -> DomainInfo:
        return _decode(lambda: DomainInfo.from_dict(raw), self.op)


class _HypervisorCall(Request[R]):
    """An operation the server forwards to its `Hypervisor`."""

    @abstractmethod
    async def call(self, hv: Hypervisor) -> R: ...


@dataclass(frozen=True)
class Ping(_NoResult):
    """Is the daemon there and answering?"""

    op: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Status(Request[HostStatus]):
    op: ClassVar[str] = "status"

    def encode_result(self, value: HostStatus) -> Any:
        return value.to_dict()

    def decode_result(self, raw: Any) -> HostStatus:
        return _decode(lambda: HostStatus.from_dict(raw), self.op)


@dataclass(frozen=True)
class Shutdown(_NoResult):
    """Stop the host daemon cleanly (every domain is destroyed); answered first."""

    op: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class CreateDomain(_HypervisorCall[int]):
    config: DomainConfig
    op: ClassVar[str] = "create_domain"

    async def call(self, hv: Hypervisor) -> int:
        return await hv.create_domain(self.config)

    def encode_result(self, value: int) -> Any:
        return value

    def decode_result(self, raw: Any) -> int:
        return int(_decoded(int, raw, self.op))


@dataclass(frozen=True)
class SetMaxMem(_HypervisorCall[None], _NoResult):
    domid: int
    memkb: int
    op: ClassVar[str] = "set_max_mem"

    async def call(self, hv: Hypervisor) -> None:
        await hv.set_max_mem(self.domid, self.memkb)


@dataclass(frozen=True)
class SetMaxVcpus(_HypervisorCall[None], _NoResult):
    domid: int
    vcpus: int
    op: ClassVar[str] = "set_max_vcpus"

    async def call(self, hv: Hypervisor) -> None:
        await hv.set_max_vcpus(self.domid, self.vcpus)


@dataclass(frozen=True)
class BuildPv(_HypervisorCall[None], _NoResult):
    domid: int
    kernel: str
    cmdline: str = ""
    env: dict[str, str] | None = None
    op: ClassVar[str] = "build_pv"

    async def call(self, hv: Hypervisor) -> None:
        await hv.build_pv(self.domid, self.kernel, self.cmdline, self.env)


@dataclass(frozen=True)
class BuildHvm(_HypervisorCall[None], _NoResult):
    domid: int
    target_memkb: int
    vcpus: int
    op: ClassVar[str] = "build_hvm"

    async def call(self, hv: Hypervisor) -> None:
        await hv.build_hvm(self.domid, self.target_memkb, self.vcpus)


@dataclass(frozen=True)
class SetMemoryTarget(_HypervisorCall[None], _NoResult):
    domid: int
    memkb: int
    op: ClassVar[str] = "set_memory_target"

    async def call(self, hv: Hypervisor) -> None:
        await hv.set_memory_target(self.domid, self.memkb)


@dataclass(frozen=True)
class Rename(_HypervisorCall[None], _NoResult):
    domid: int
    name: str
    op: ClassVar[str] = "rename"

    async def call(self, hv: Hypervisor) -> None:
        await hv.rename(self.domid, self.name)


@dataclass(frozen=True)
class SetTarget(_HypervisorCall[None], _NoResult):
    domid: int
    target: int
    op: ClassVar[str] = "set_target"

    async def call(self, hv: Hypervisor) -> None:
        await hv.set_target(self.domid, self.target)


@dataclass(frozen=True)
class Pause(_HypervisorCall[None], _NoResult):
    domid: int
    op: ClassVar[str] = "pause"

    async def call(self, hv: Hypervisor) -> None:
        await hv.pause(self.domid)


@dataclass(frozen=True)
class Unpause(_HypervisorCall[None], _NoResult):
    domid: int
    op: ClassVar[str] = "unpause"

    async def call(self, hv: Hypervisor) -> None:
        await hv.unpause(self.domid)


@dataclass(frozen=True)
class ShutdownDomain(_HypervisorCall[None], _NoResult):
    """`Hypervisor.shutdown` (``shutdown`` alone stops the host)."""

    domid: int
    reason: ShutdownReason
    op: ClassVar[str] = "shutdown_domain"

    async def call(self, hv: Hypervisor) -> None:
        await hv.shutdown(self.domid, self.reason)


@dataclass(frozen=True)
class Destroy(_HypervisorCall[None], _NoResult):
    domid: int
    op: ClassVar[str] = "destroy"

    async def call(self, hv: Hypervisor) -> None:
        await hv.destroy(self.domid)


@dataclass(frozen=True)
class ListDomains(_HypervisorCall[list[DomainInfo]]):
    op: ClassVar[str] = "list_domains"

    async def call(self, hv: Hypervisor) -> list[DomainInfo]:
        return list(await hv.list_domains())

    def encode_result(self, value: list[DomainInfo]) -> Any:
        return [d.to_dict() for d in value]

    def decode_result(self, raw: Any) -> list[DomainInfo]:
        if not isinstance(raw, list):
            raise ApiProtocolError(f"{self.op}: expected a list in the reply, got {raw!r:.80}")
        return [_decode(functools.partial(DomainInfo.from_dict, d), self.op) for d in raw]


@dataclass(frozen=True)
class GetDomainInfo(_HypervisorCall[DomainInfo], _DomainInfoResult):
    domid: int
    op: ClassVar[str] = "domain_info"

    async def call(self, hv: Hypervisor) -> DomainInfo:
        return await hv.domain_info(self.domid)


@dataclass(frozen=True)
class Find(_HypervisorCall[DomainInfo], _DomainInfoResult):
    name: str
    op: ClassVar[str] = "find"

    async def call(self, hv: Hypervisor) -> DomainInfo:
        return await hv.find(self.name)


#: Every request type by its ``op``.
REQUESTS: dict[str, type[Request[Any]]] = {
    cls.op: cls
    for cls in (
        Ping,
        Status,
        Shutdown,
        CreateDomain,
        SetMaxMem,
        SetMaxVcpus,
        BuildPv,
        BuildHvm,
        SetMemoryTarget,
        Rename,
        SetTarget,
        Pause,
        Unpause,
        ShutdownDomain,
        Destroy,
        ListDomains,
        GetDomainInfo,
        Find,
    )
}


def _decoded(tp: Any, value: Any, op: str) -> Any:
    """`typedjson.from_json`, its errors worded for the API (arguments, keys)."""
    try:
        return typedjson.from_json(tp, value)
    except typedjson.JsonTypeError as e:
        raise _protocol_error(op, e) from None


def _protocol_error(op: str, e: typedjson.JsonTypeError) -> ApiProtocolError:
    where = f"{op}: {e.where}" if e.where else op
    if isinstance(e, typedjson.WrongType):
        expected = e.tp.__name__ if isinstance(e.tp, type) else str(e.tp)
        return ApiProtocolError(f"{where}: expected {expected}, got {e.value!r:.80}")
    if isinstance(e, typedjson.UnknownFields):
        what = f"{e.cls.__name__} key(s)" if e.where else "argument(s)"
        return ApiProtocolError(f"{where}: unknown {what} {', '.join(e.names)}")
    if isinstance(e, typedjson.MissingField):
        if e.where:
            return ApiProtocolError(f"{where}: the {e.cls.__name__} has no {e.name!r}")
        return ApiProtocolError(f"{op}: missing argument {e.name!r}")
    return ApiProtocolError(f"{where}: {e.detail}")


def _decode(build: Callable[[], R], what: str) -> R:
    try:
        return build()
    except (KeyError, TypeError, ValueError) as e:
        raise ApiProtocolError(f"{what}: malformed reply: {e}") from None


# -- the sans-IO codec -----------------------------------------------------------


@dataclass(frozen=True)
class ErrorInfo:
    """The ``error`` member of a reply."""

    type: str
    message: str
    errno: str | None = None
    domid: int | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, ApiProtocolError):
            return cls("BadRequest", str(exc), "EINVAL")
        if isinstance(exc, HypervisorError):
            return cls(
                type(exc).__name__,
                str(exc),
                exc.errno_name,
                exc.domid if isinstance(exc, NoSuchDomain) else None,
            )
        return cls(
            "InternalError",
            f"the host daemon failed: {type(exc).__name__}: {exc} (see host.log)",
            "EIO",
        )

    def to_exception(self) -> HypervisorError:
        """The exception a client raises: the server's type where known, its message."""
        exc: HypervisorError
        if self.type == "NoSuchDomain" and self.domid is not None:
            exc = NoSuchDomain(self.domid)
            exc.args = (self.message,)
        elif self.type == "DomainExists":
            exc = DomainExists(self.message)
        elif self.type == "BadRequest":
            exc = ApiProtocolError(self.message)
        elif self.type == "InternalError":
            exc = RemoteError(self.message)
        else:
            exc = HypervisorError(self.message)
        if self.errno is not None and self.errno != exc.errno_name:
            exc.errno_name = self.errno
        return exc


@dataclass(frozen=True)
class Reply:
    """A decoded reply line: ``result`` (raw JSON) or ``error``."""

    id: int | None
    result: Any = None
    error: ErrorInfo | None = None


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def encode_request(req_id: int, req: Request[Any]) -> bytes:
    return _line({"id": req_id, "op": req.op, "args": req.to_args()})


class BadRequestLine(ApiProtocolError):
    """A request line that cannot be decoded; ``req_id`` if it could be read."""

    def __init__(self, message: str, req_id: int | None = None) -> None:
        super().__init__(message)
        self.req_id = req_id


def decode_request(line: bytes) -> tuple[int, Request[Any]]:
    """Parse one request line; `BadRequestLine` says what is wrong with it."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequestLine(f"a request is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequestLine("a request must be a JSON object")
    req_id = obj.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool):
        raise BadRequestLine(f"a request needs an integer 'id', got {req_id!r:.40}")
    op = obj.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise BadRequestLine(f"unknown op {op!r:.40}; known: {', '.join(REQUESTS)}", req_id)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise BadRequestLine(f"{op}: 'args' must be an object", req_id)
    try:
        return req_id, cls.from_args(args)
    except ApiProtocolError as e:
        raise BadRequestLine(str(e), req_id) from None
    except (TypeError, ValueError) as e:
        raise BadRequestLine(f"{op}: {e}", req_id) from None


def encode_ok(req_id: int, req: Request[R], value: R) -> bytes:
    return _line({"id": req_id, "ok": req.encode_result(value)})


def encode_error(req_id: int | None, error: ErrorInfo) -> bytes:
    info = {k: v for k, v in dataclasses.asdict(error).items() if v is not None}
    return _line({"id": req_id, "error": info})


def decode_reply(line: bytes) -> Reply:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiProtocolError(f"a reply from the host is not JSON: {e}") from None
    if not isinstance(obj, dict) or ("ok" in obj) == ("error" in obj):
        raise ApiProtocolError(f"a reply needs exactly one of 'ok' and 'error': {line!r:.80}")
    req_id = obj.get("id")
    if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
        raise ApiProtocolError(f"a reply has a bad 'id': {req_id!r:.40}")
    if "ok" in obj:
        return Reply(req_id, result=obj["ok"])
    err = obj["error"]
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        raise ApiProtocolError(f"a reply has a malformed 'error': {err!r:.80}")
    return Reply(
        req_id,
        error=ErrorInfo(
            str(err.get("type", "HypervisorError")),
            err["message"],
            err.get("errno") if isinstance(err.get("errno"), str) else None,
            err.get("domid") if isinstance(err.get("domid"), int) else None,
        ),
    )
