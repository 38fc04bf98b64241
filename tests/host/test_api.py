"""The host's local API: the JSON-lines codec, and ApiServer with RemoteHypervisor.

The server runs here against `FakeHypervisor`, so these tests pin the API itself; the
real daemon behind it is exercised in test_cli_host.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from stubdom.host import api
from stubdom.host.api import (
    ApiProtocolError,
    ApiServer,
    BadRequestLine,
    ErrorInfo,
    HostNotRunning,
    RemoteError,
    RemoteHypervisor,
)
from stubdom.host.hypervisor import (
    DomainConfig,
    DomainExists,
    DomainInfo,
    DomainState,
    Hypervisor,
    HypervisorError,
    NoSuchDomain,
    ShutdownReason,
)
from stubdom.host.rundir import RunDir, RunDirError, default_dir, process_is_ours
from tests.support.daemons import short_tmpdir


class KernelMissing(HypervisorError):
    """A HypervisorError subclass the client does not know."""

    errno_name = "ENOENT"


class FakeHypervisor(Hypervisor):
    """Records calls; domains are dict entries."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.domains: dict[int, DomainInfo] = {}

    def _get(self, domid: int) -> DomainInfo:
        if domid not in self.domains:
            raise NoSuchDomain(domid)
        return self.domains[domid]

    async def create_domain(self, config: DomainConfig) -> int:
        self.calls.append(("create_domain", config))
        if config.name == "boom":
            raise RuntimeError("the fake broke")
        if any(d.name == config.name for d in self.domains.values()):
            raise DomainExists(f"a domain called {config.name!r} already exists")
        domid = len(self.domains) + 1
        self.domains[domid] = DomainInfo(
            domid,
            config.name,
            config.uuid,
            config.hvm,
            DomainState.PAUSED,
            True,
            None,
            config.max_memkb,
            config.max_vcpus,
            0.0,
        )
        return domid

    async def set_max_mem(self, domid: int, memkb: int) -> None:
        self.calls.append(("set_max_mem", domid, memkb))
        self._get(domid)

    async def set_max_vcpus(self, domid: int, vcpus: int) -> None:
        self.calls.append(("set_max_vcpus", domid, vcpus))

    async def build_pv(
        self, domid: int, kernel: str, cmdline: str = "", env: dict[str, str] | None = None
    ) -> None:
        self.calls.append(("build_pv", domid, kernel, cmdline, env))
        if not kernel.startswith("/"):
            raise KernelMissing(f"domain {domid}: kernel {kernel!r} not found; give a path")

    async def build_hvm(self, domid: int, target_memkb: int, vcpus: int) -> None:
        self.calls.append(("build_hvm", domid, target_memkb, vcpus))

    async def set_memory_target(self, domid: int, memkb: int) -> None:
        self.calls.append(("set_memory_target", domid, memkb))

    async def rename(self, domid: int, name: str) -> None:
        self.calls.append(("rename", domid, name))

    async def set_target(self, domid: int, target: int) -> None:
        self.calls.append(("set_target", domid, target))

    async def pause(self, domid: int) -> None:
        self.calls.append(("pause", domid))
        self._get(domid)

    async def unpause(self, domid: int) -> None:
        self.calls.append(("unpause", domid))

    async def shutdown(self, domid: int, reason: ShutdownReason) -> None:
        self.calls.append(("shutdown", domid, reason))

    async def destroy(self, domid: int) -> None:
        self.calls.append(("destroy", domid))
        self._get(domid)
        del self.domains[domid]

    async def list_domains(self) -> Sequence[DomainInfo]:
        return list(self.domains.values())

    async def domain_info(self, domid: int) -> DomainInfo:
        return self._get(domid)


INFO = DomainInfo(
    domid=3,
    name="guest-dm",
    uuid="6c3f1f4e-4a55-4d1c-9d9a-6b3f0f1e2a11",
    hvm=False,
    state=DomainState.SHUTDOWN,
    paused=False,
    shutdown_reason=ShutdownReason.REBOOT,
    max_memkb=32768,
    max_vcpus=1,
    cpu_time=1.5,
    target=2,
    kernel="/bin/true",
    pid=None,
)

REQUESTS: list[api.Request[Any]] = [
    api.Ping(),
    api.Status(),
    api.Shutdown(),
    api.CreateDomain(DomainConfig("g", hvm=True, uuid="u-1", max_vcpus=2, max_memkb=1024)),
    api.SetMaxMem(1, 2048),
    api.SetMaxVcpus(1, 4),
    api.BuildPv(1, "/bin/k", "a b", {"X": "1"}),
    api.BuildPv(1, "/bin/k"),
    api.BuildHvm(1, 131072, 2),
    api.SetMemoryTarget(1, 204800),
    api.Rename(1, "xp"),
    api.SetTarget(2, 1),
    api.Pause(1),
    api.Unpause(1),
    api.ShutdownDomain(1, ShutdownReason.CRASH),
    api.Destroy(1),
    api.ListDomains(),
    api.GetDomainInfo(1),
    api.Find("g"),
]


# -- the codec ---------------------------------------------------------------------


def test_every_op_has_a_sample() -> None:
    assert {r.op for r in REQUESTS} == set(api.REQUESTS)


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.op)
def test_request_round_trip(req: api.Request[Any]) -> None:
    line = api.encode_request(7, req)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj["id"] == 7 and obj["op"] == req.op and isinstance(obj["args"], dict)
    assert api.decode_request(line) == (7, req)


@pytest.mark.parametrize(
    ("req", "value"),
    [
        (api.Ping(), None),
        (api.CreateDomain(DomainConfig("g")), 5),
        (api.GetDomainInfo(3), INFO),
        (api.ListDomains(), [INFO, INFO]),
        (api.Status(), api.HostStatus(1, 2.5, "/r", "/r/xenstored/socket", 1, INFO)),
    ],
    ids=lambda v: getattr(v, "op", ""),
)
def test_result_round_trip(req: api.Request[Any], value: Any) -> None:
    reply = api.decode_reply(api.encode_ok(9, req, value))
    assert reply.id == 9 and reply.error is None
    assert req.decode_result(reply.result) == value


def test_domain_info_json_between_versions() -> None:
    """A reply without the current memory and online vCPUs (an older host) decodes with
    the maximums shown; keys a newer host adds are ignored."""
    old = INFO.to_dict()
    del old["current_memkb"], old["online_vcpus"]
    info = DomainInfo.from_dict(old)
    assert (info.memkb, info.vcpus) == (32768, 1)
    newer = {**INFO.to_dict(), "current_memkb": 16384, "online_vcpus": 1, "numa_node": 0}
    assert (DomainInfo.from_dict(newer).memkb, DomainInfo.from_dict(newer).vcpus) == (16384, 1)


def test_request_wire_format() -> None:
    assert api.encode_request(1, api.Pause(3)) == b'{"id":1,"op":"pause","args":{"domid":3}}\n'
    assert api.encode_request(2, api.ShutdownDomain(3, ShutdownReason.REBOOT)) == (
        b'{"id":2,"op":"shutdown_domain","args":{"domid":3,"reason":1}}\n'
    )


@pytest.mark.parametrize(
    ("line", "req_id", "fragment"),
    [
        (b"not json\n", None, "not JSON"),
        (b"[1]\n", None, "JSON object"),
        (b'{"op":"ping"}\n', None, "integer 'id'"),
        (b'{"id":true,"op":"ping"}\n', None, "integer 'id'"),
        (b'{"id":1,"op":"fly"}\n', 1, "unknown op 'fly'"),
        (b'{"id":2,"op":"pause","args":[]}\n', 2, "'args' must be an object"),
        (b'{"id":3,"op":"pause","args":{}}\n', 3, "missing argument 'domid'"),
        (b'{"id":4,"op":"pause","args":{"domid":"3"}}\n', 4, "expected int"),
        (b'{"id":5,"op":"pause","args":{"domid":true}}\n', 5, "expected int"),
        (b'{"id":6,"op":"pause","args":{"domid":1,"x":2}}\n', 6, "unknown argument(s) x"),
        (b'{"id":7,"op":"shutdown_domain","args":{"domid":1,"reason":9}}\n', 7, "reason"),
        (b'{"id":8,"op":"create_domain","args":{"config":{}}}\n', 8, "no 'name'"),
        (b'{"id":9,"op":"create_domain","args":{"config":{"name":"a","x":1}}}\n', 9, "key(s) x"),
        (b'{"id":10,"op":"build_pv","args":{"domid":1,"kernel":"k","env":{"A":1}}}\n', 10, "str"),
    ],
)
def test_bad_requests(line: bytes, req_id: int | None, fragment: str) -> None:
    with pytest.raises(BadRequestLine) as e:
        api.decode_request(line)
    assert e.value.req_id == req_id
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b'{"id":1}',
        b'{"id":1,"ok":1,"error":{}}',
        b'{"id":1,"error":"x"}',
        b'{"id":"a","ok":1}',
    ],
)
def test_bad_replies(line: bytes) -> None:
    with pytest.raises(ApiProtocolError):
        api.decode_reply(line)


def test_errors_keep_type_message_and_domid() -> None:
    for exc, cls in [
        (NoSuchDomain(4), NoSuchDomain),
        (DomainExists("a domain called 'x' already exists"), DomainExists),
        (HypervisorError("domain 1 is not paused"), HypervisorError),
        (KernelMissing("kernel 'k' not found"), HypervisorError),
        (ApiProtocolError("pause: missing argument 'domid'"), ApiProtocolError),
        (ValueError("oops"), RemoteError),
    ]:
        reply = api.decode_reply(api.encode_error(1, ErrorInfo.from_exception(exc)))
        assert reply.error is not None
        back = reply.error.to_exception()
        assert type(back) is cls
        if cls is not RemoteError:
            assert str(back) == str(exc)
    no = api.decode_reply(api.encode_error(1, ErrorInfo.from_exception(NoSuchDomain(4))))
    assert no.error is not None and no.error.domid == 4 and no.error.errno == "ESRCH"
    back = no.error.to_exception()
    assert isinstance(back, NoSuchDomain) and back.domid == 4
    kernel = ErrorInfo.from_exception(KernelMissing("k")).to_exception()
    assert kernel.errno_name == "ENOENT"


# -- server and client ----------------------------------------------------------------


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    d = short_tmpdir("api-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Served:
    def __init__(self, fake: FakeHypervisor, server: ApiServer, hv: RemoteHypervisor) -> None:
        self.fake = fake
        self.server = server
        self.hv = hv
        self.stopped = asyncio.Event()


@pytest.fixture
async def served(tmp_short: Path) -> AsyncIterator[Served]:
    fake = FakeHypervisor()
    stopped = asyncio.Event()
    server = ApiServer(
        fake,
        tmp_short / "host.sock",
        xenstored_socket=str(tmp_short / "xenstored" / "socket"),
        run_dir=str(tmp_short),
        on_shutdown=stopped.set,
    )
    await server.start()
    hv = await RemoteHypervisor.connect(tmp_short)
    s = Served(fake, server, hv)
    s.stopped = stopped
    yield s
    await hv.close()
    await server.close()
    assert not (tmp_short / "host.sock").exists()


async def test_every_hypervisor_method_goes_through(served: Served) -> None:
    hv, fake = served.hv, served.fake
    config = DomainConfig("g1", max_memkb=65536)
    domid = await hv.create_domain(config)
    assert domid == 1
    await hv.set_max_mem(domid, 1024)
    await hv.set_max_vcpus(domid, 2)
    await hv.build_pv(domid, "/bin/k", "x y", {"A": "b"})
    await hv.set_target(domid, 7)
    await hv.build_hvm(domid, 512, 1)
    await hv.set_memory_target(domid, 256)
    await hv.rename(domid, "g2")
    await hv.pause(domid)
    await hv.unpause(domid)
    await hv.shutdown(domid, ShutdownReason.POWEROFF)
    info = await hv.domain_info(domid)
    assert info == fake.domains[1]
    assert await hv.list_domains() == [info]
    assert await hv.find("g1") == info
    await hv.destroy(domid)
    assert fake.calls == [
        ("create_domain", config),
        ("set_max_mem", 1, 1024),
        ("set_max_vcpus", 1, 2),
        ("build_pv", 1, "/bin/k", "x y", {"A": "b"}),
        ("set_target", 1, 7),
        ("build_hvm", 1, 512, 1),
        ("set_memory_target", 1, 256),
        ("rename", 1, "g2"),
        ("pause", 1),
        ("unpause", 1),
        ("shutdown", 1, ShutdownReason.POWEROFF),
        ("destroy", 1),
    ]
    assert isinstance(fake.calls[-2][2], ShutdownReason)


async def test_errors_are_reraised_with_the_servers_message(served: Served) -> None:
    hv = served.hv
    with pytest.raises(NoSuchDomain, match=r"^domain 9 does not exist") as e:
        await hv.pause(9)
    assert e.value.domid == 9
    await hv.create_domain(DomainConfig("dup"))
    with pytest.raises(DomainExists, match="a domain called 'dup' already exists"):
        await hv.create_domain(DomainConfig("dup"))
    with pytest.raises(HypervisorError, match=r"kernel 'k' not found; give a path"):
        await hv.build_pv(1, "k")
    with pytest.raises(HypervisorError, match="no domain is called 'nope'"):
        await hv.find("nope")
    with pytest.raises(RemoteError, match="RuntimeError: the fake broke"):
        await hv.create_domain(DomainConfig("boom"))
    # the connection is still good after every error
    assert [d.name for d in await hv.list_domains()] == ["dup"]


async def test_concurrent_calls_on_one_connection(served: Served) -> None:
    names = [f"d{i}" for i in range(20)]
    domids = await asyncio.gather(*(served.hv.create_domain(DomainConfig(n)) for n in names))
    assert sorted(domids) == list(range(1, 21))
    infos = await asyncio.gather(*(served.hv.domain_info(d) for d in domids))
    assert [i.name for i in infos] == names


async def test_status_ping_and_shutdown(served: Served, tmp_short: Path) -> None:
    await served.hv.ping()
    await served.hv.create_domain(DomainConfig("a"))
    st = await served.hv.status()
    assert st.pid == os.getpid()
    assert st.domains == 1
    assert st.run_dir == str(tmp_short)
    assert st.xenstored_socket == str(tmp_short / "xenstored" / "socket")
    assert st.uptime >= 0
    assert st.dom0.domid == 0 and st.dom0.name == "Domain-0"
    assert not served.stopped.is_set()
    await served.hv.shutdown_host()
    assert served.stopped.is_set()


async def test_raw_bad_lines_get_error_replies(served: Served, tmp_short: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(tmp_short / "host.sock"))
    for line, req_id, err_type in [
        (b"garbage\n", None, "BadRequest"),
        (b'{"id":4,"op":"fly"}\n', 4, "BadRequest"),
        (b'{"id":5,"op":"pause","args":{"domid":8}}\n', 5, "NoSuchDomain"),
    ]:
        writer.write(line)
        reply = json.loads(await reader.readline())
        assert reply["id"] == req_id
        assert reply["error"]["type"] == err_type
    writer.write(b'{"id":6,"op":"ping"}\n')
    assert json.loads(await reader.readline()) == {"id": 6, "ok": None}
    writer.close()
    await writer.wait_closed()


async def test_host_not_running(tmp_short: Path) -> None:
    with pytest.raises(HostNotRunning) as e:
        await RemoteHypervisor.connect(tmp_short)
    assert str(e.value) == (
        f"no stubdom host is running in {tmp_short}; start one with 'stubdom host up'"
    )
    # A socket file nobody listens on (a crashed daemon's) is "not running" too.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_short / "host.sock"))
    s.close()
    with pytest.raises(HostNotRunning):
        await RemoteHypervisor.connect(tmp_short)
    assert issubclass(HostNotRunning, HypervisorError)


async def test_daemon_gone_mid_session(served: Served) -> None:
    await served.server.close()
    with pytest.raises(api.HostError, match="closed the connection during ping"):
        await served.hv.ping()


# -- the run directory ------------------------------------------------------------------


def test_default_dir_precedence() -> None:
    env = {"STUBDOM_HOST_DIR": "/a", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert default_dir(env) == Path("/a")
    del env["STUBDOM_HOST_DIR"]
    assert default_dir(env) == Path("/run/user/5/stubdom")
    fallback = default_dir({})
    assert fallback in (Path("/run/stubdom"), Path(f"/tmp/stubdom-{os.getuid()}"))


def test_socket_paths_must_fit() -> None:
    RunDir.at("/tmp/" + "x" * 70).check_socket_paths()
    with pytest.raises(RunDirError, match=r"too long for unix sockets.*use a --dir of at most"):
        RunDir.at("/tmp/" + "x" * 90).check_socket_paths()


def test_process_is_ours_needs_the_dir_on_the_command_line(tmp_short: Path) -> None:
    rd = RunDir.at(tmp_short)
    assert not process_is_ours(os.getpid(), rd)  # alive, but does not name the dir
    sibling = RunDir.at(str(tmp_short) + "x")
    assert not process_is_ours(os.getpid(), sibling)
