"""A stubdomain may touch its target and nothing else (issue #8): the permission matrix.

The tree is built by our own toolstack (``stubdom create``) on a host over each daemon
(``stubdom host up --xenstored ours|cx|ox``): two HVM guests, each with its stubdomain
(disk, nic, serial, VNC), plus the control nodes the toolstack and the device model write.
Then every role probes every node the protocol uses, over its own domain connection:

* roles: dom0, the guest G, its stubdomain S, an unrelated guest O and O's stubdomain OS;
* operations: read, write (the same value), create a child, rm, set-perms (the same
  permissions) -- each of the last four inside a transaction that is then abandoned, so
  nothing changes -- and watch (does an event arrive when dom0 rewrites the node?).

The expected answer of each cell comes from the permissions libxl gives each node
(docs/protocol.md#nodes, [GEN-3], [GEN-4]; libxl's device and domain records) and
xenstored's rules (cxenstored's ``perm_for_conn``): dom0 may do anything; the owner, or a
domain whose SET_TARGET target is the owner, has every right; otherwise the first ACL
entry naming the domain or its target decides, else the owner entry's own letter.  A watch
event is sent to a domain that may read the node or its parent (``watch_permitted``).

The matrix is checked on each host's own daemon, the tree as our toolstack left it there:
ours, and the real cxenstored and oxenstored 4.17 (`stubdom.realxs`).  Each must give the
expected answers, and cx and ox must agree with ours cell by cell.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stubdom import protocol as proto
from stubdom.host.api import RemoteHypervisor
from stubdom.realxs import FakeXen
from stubdom.xenstore.sync import SyncClient
from tests.differential.targets import Channel
from tests.support import xsraw
from tests.support.daemons import XENSTOREDS, have_cx, have_ox, need_peer, short_tmpdir
from tests.toolstack.clihost import Host

pytestmark = pytest.mark.peer

T = xsraw.T
OPS = ("read", "write", "create", "rm", "set-perms", "watch")
ROLES = ("dom0", "G", "S", "O", "OS")

#: What Mini-OS and qemu-trad do at start-up, then idle: read target, vm and dmargs,
#: write ``running`` (as the stubdomain, so it owns ``state``).
FAKE_DM = """\
#!{python}
import time
from stubdom.xenstore.sync import SyncClient
from stubdom import protocol as p
with SyncClient() as xs:
    guest = int(xs.read(p.TARGET_RELATIVE))
    vm = xs.read(f"/local/domain/{{guest}}/vm").decode()
    xs.read(p.dmargs_path(vm))
    xs.write(p.dm_relative_path(guest, "state"), b"running")
    xs.write(p.dm_relative_path(guest, "logdirty/ret"), b"enable")
while True:
    time.sleep(3600)
"""

# -- the nodes and the permissions libxl gives them ----------------------------------------------

#: (label, path, libxl's permissions).  Names in braces are filled in per run: G, S, O, OS
#: (domids), GU, SU, OU (uuids).  ``dev`` nodes are written by libxl__device_generic_add:
#: backend ``n0,r<D>``, frontend ``n<D>,r0`` (console 0's directory and the read-only
#: frontend keys ``n0,r<D>``); domain records by libxl__domain_make: ``n0,r<D>`` (roperm)
#: and ``n<D>`` (rwperm).
NODES: list[tuple[str, str, str]] = [
    # the stubdomain's own records and the control channel
    ("S home", "/local/domain/{S}", "n0,r{S}"),
    ("S target", "/local/domain/{S}/target", "n0,r{S}"),
    ("S domid", "/local/domain/{S}/domid", "n0,r{S}"),
    ("S data (rwperm)", "/local/domain/{S}/data", "n{S}"),
    ("dm dir", "/local/domain/{S}/device-model/{G}", "n{S},r{G}"),
    ("dm state", "/local/domain/{S}/device-model/{G}/state", "n{S},r{G}"),
    ("dm command", "/local/domain/{S}/device-model/{G}/command", "n{S},r{G}"),
    ("dm parameter", "/local/domain/{S}/device-model/{G}/parameter", "n{S},r{G}"),
    ("dm logdirty/cmd", "/local/domain/{S}/device-model/{G}/logdirty/cmd", "n{S},r{G}"),
    ("dm logdirty/ret", "/local/domain/{S}/device-model/{G}/logdirty/ret", "n{S},r{G}"),
    ("/vm/G/image/dmargs", "/vm/{GU}/image/dmargs", "n0,r{S}"),
    ("/vm/G/rtc/timeoffset", "/vm/{GU}/rtc/timeoffset", "n0,r{S}"),
    ("/vm/S", "/vm/{SU}", "n0,r{S}"),
    # the guest's records
    ("G home", "/local/domain/{G}", "n0,r{G}"),
    ("G vm", "/local/domain/{G}/vm", "n0,r{G}"),
    ("G name", "/local/domain/{G}/name", "n0,r{G}"),
    ("G device-model-domid", "/local/domain/{G}/image/device-model-domid", "n0,r{G}"),
    ("G allow-memory-relocate", "/local/domain/{G}/hvmloader/allow-memory-relocate",
     "n0,r{G}"),
    ("G platform/device-model", "/local/domain/{G}/platform/device-model", "n0,r{G}"),
    ("G cpu/0/availability", "/local/domain/{G}/cpu/0/availability", "n0,r{G}"),
    ("G memory/target", "/local/domain/{G}/memory/target", "n0,r{G}"),
    ("G control/shutdown", "/local/domain/{G}/control/shutdown", "n{G}"),
    ("G data (rwperm)", "/local/domain/{G}/data", "n{G}"),
    ("G device", "/local/domain/{G}/device", "n0,r{G}"),
    ("/vm/G", "/vm/{GU}", "n0,r{G}"),
    ("/vm/G/name", "/vm/{GU}/name", "n0,r{G}"),
    # devices: the guest's own disk, and what the stubdomain was given
    ("G vbd frontend", "/local/domain/{G}/device/vbd/768", "n{G},r0"),
    ("G vbd frontend state", "/local/domain/{G}/device/vbd/768/state", "n{G},r0"),
    ("G vbd backend", "/local/domain/0/backend/vbd/{G}/768", "n0,r{G}"),
    ("G vbd backend params", "/local/domain/0/backend/vbd/{G}/768/params", "n0,r{G}"),
    ("S vbd frontend", "/local/domain/{S}/device/vbd/768", "n{S},r0"),
    ("S vbd backend", "/local/domain/0/backend/vbd/{S}/768", "n0,r{S}"),
    ("S vif frontend", "/local/domain/{S}/device/vif/0", "n{S},r0"),
    ("S vif backend", "/local/domain/0/backend/vif/{S}/0", "n0,r{S}"),
    ("S vfb frontend", "/local/domain/{S}/device/vfb/0", "n{S},r0"),
    ("S vkbd backend", "/local/domain/0/backend/vkbd/{S}/0", "n0,r{S}"),
    ("S console 0 (ro dir)", "/local/domain/{S}/console", "n0,r{S}"),
    ("S console 0 output", "/local/domain/{S}/console/output", "n0,r{S}"),
    ("S console 1 frontend", "/local/domain/{S}/device/console/1", "n{S},r0"),
    ("S console 1 output", "/local/domain/{S}/device/console/1/output", "n0,r{S}"),
    ("S console 3 (serial)", "/local/domain/{S}/device/console/3", "n{S},r0"),
    ("S console 1 backend", "/local/domain/0/backend/console/{S}/1", "n0,r{S}"),
    # dom0's and the toolstack's own
    ("/libxl/G/dm-version", "/libxl/{G}/dm-version", "n0"),
    ("/libxl/S device", "/libxl/{S}/device/vbd/768/backend", "n0"),
    ("dom0 backend dir", "/local/domain/0/backend", "n0"),
    # the unrelated guest and its stubdomain
    ("O home", "/local/domain/{O}", "n0,r{O}"),
    ("O vm", "/local/domain/{O}/vm", "n0,r{O}"),
    ("O data (rwperm)", "/local/domain/{O}/data", "n{O}"),
    ("O vbd frontend", "/local/domain/{O}/device/vbd/768", "n{O},r0"),
    ("O vbd backend", "/local/domain/0/backend/vbd/{O}/768", "n0,r{O}"),
    ("/vm/O/image/dmargs", "/vm/{OU}/image/dmargs", "n0,r{OS}"),
    ("OS target", "/local/domain/{OS}/target", "n0,r{OS}"),
    ("OS dm state", "/local/domain/{OS}/device-model/{O}/state", "n{OS},r{O}"),
    ("OS dm command", "/local/domain/{OS}/device-model/{O}/command", "n{OS},r{O}"),
]  # fmt: skip


@dataclass
class World:
    ids: dict[str, int]  # role -> domid
    names: dict[str, str]  # G, S, O, OS, GU, SU, OU, OSU
    targets: dict[int, int]  # stubdomain -> its guest (SET_TARGET)
    #: Every node of the tree (parents first): path -> (value, permissions).
    tree: dict[str, tuple[bytes, list[str]]]
    #: What the daemon answered, cell by cell.
    matrix: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def path(self, template: str) -> str:
        return template.format(**self.names)

    def perms(self, template: str) -> list[str]:
        return self.path(template).split(",")


# -- the expected answers ------------------------------------------------------------------------


def rights(domid: int, target: int | None, perms: list[str]) -> set[str]:
    """cxenstored's ``perm_for_conn`` for an unprivileged domain: {"r", "w", "o"}."""
    owner = int(perms[0][1:])
    if owner in (domid, target):
        return {"r", "w", "o"}
    letter = perms[0][0]
    for p in perms[1:]:
        if int(p[1:]) in (domid, target):
            letter = p[0]
            break
    return {"n": set(), "r": {"r"}, "w": {"w"}, "b": {"r", "w"}}[letter]


def expected(domid: int, target: int | None, op: str, perms: list[str], parent: list[str]) -> str:
    if domid == 0:
        return "event" if op == "watch" else "ok"
    have = rights(domid, target, perms)
    if op == "read":
        return "ok" if "r" in have else "EACCES"
    if op in ("write", "create", "rm"):
        return "ok" if "w" in have else "EACCES"
    if op == "set-perms":
        return "ok" if "o" in have else "EACCES"
    assert op == "watch"
    return "event" if "r" in have or "r" in rights(domid, target, parent) else "none"


def expected_matrix(world: World) -> dict[tuple[str, str, str], str]:
    """Each cell from libxl's permissions of the node (not from what the tree holds, so a
    toolstack that writes other permissions shows up here too)."""
    libxl = {world.path(template): world.perms(perms) for _, template, perms in NODES}
    out = {}
    for label, template, perms_template in NODES:
        path = world.path(template)
        perms = world.perms(perms_template)
        parent_path = path.rsplit("/", 1)[0] or "/"
        parent = libxl.get(parent_path) or world.tree[parent_path][1]
        for role in ROLES:
            domid = world.ids[role]
            for op in OPS:
                out[role, label, op] = expected(domid, world.targets.get(domid), op, perms, parent)
    return out


# -- probing ------------------------------------------------------------------------------------


def answer(reply_type: int, payload: bytes) -> str:
    if reply_type == T["ERROR"]:
        return payload.rstrip(b"\0").decode()
    return "ok"


def in_transaction(ch: Channel, typ: int, payload: bytes) -> str:
    """One request inside a transaction that is then abandoned: nothing changes."""
    r = ch.request(T["TRANSACTION_START"], b"\0")
    assert r.type == T["TRANSACTION_START"], r
    tx = int(r.payload.rstrip(b"\0"))
    r = ch.request(typ, payload, tx_id=tx)
    end = ch.request(T["TRANSACTION_END"], b"F\0", tx_id=tx)
    assert end.type == T["TRANSACTION_END"], end
    return answer(r.type, r.payload)


def probe(ch: Channel, dom0: Channel, op: str, path: str, value: bytes, perms: list[str]) -> str:
    p = path.encode()
    if op == "read":
        r = ch.request(T["READ"], p + b"\0")
        return answer(r.type, r.payload)
    if op == "write":
        return in_transaction(ch, T["WRITE"], p + b"\0" + value)
    if op == "create":
        return in_transaction(ch, T["WRITE"], p + b"/perm-probe\0x")
    if op == "rm":
        return in_transaction(ch, T["RM"], p + b"\0")
    if op == "set-perms":
        return in_transaction(ch, T["SET_PERMS"], p + b"\0" + b"".join(
            s.encode() + b"\0" for s in perms))  # fmt: skip
    assert op == "watch"
    r = ch.request(T["WATCH"], p + b"\0perm-probe\0")
    assert r.type == T["WATCH"], r
    ch.flush()  # the initial event
    ch.take_events()
    r = dom0.request(T["WRITE"], p + b"\0" + value)  # the same value: only the event
    assert r.type == T["WRITE"], r
    ch.flush()
    got = [e for e in ch.take_events() if e == (p, b"perm-probe")]
    r = ch.request(T["UNWATCH"], p + b"\0perm-probe\0")
    assert r.type == T["UNWATCH"], r
    return "event" if got else "none"


def probe_matrix(
    world: World, dom0: Channel, channels: dict[str, Channel]
) -> dict[tuple[str, str, str], str]:
    out = {}
    for label, template, _ in NODES:
        path = world.path(template)
        value, perms = world.tree[path]
        for role in ROLES:
            for op in OPS:
                out[role, label, op] = probe(channels[role], dom0, op, path, value, perms)
    return out


def sock(path: str) -> Channel:
    return Channel(path, xsraw.SockConn(path, 5.0))


# -- building the tree with our toolstack, on a host over each daemon ----------------------------


def _dump(xs: SyncClient, path: str, out: dict[str, tuple[bytes, list[str]]]) -> None:
    out[path] = (xs.read(path), [str(p) for p in xs.get_perms(path)])
    for child in xs.directory(path):
        _dump(xs, f"{path.rstrip('/')}/{child}", out)


def _pause(host: Host, domids: list[int]) -> None:
    async def pause() -> None:
        async with await RemoteHypervisor.connect(host.dir) as hv:
            for domid in domids:
                await hv.pause(domid)

    asyncio.run(pause())


def _build(host: Host, xs: SyncClient) -> World:
    """Two guests made by ``stubdom create`` (the fake device model above in each
    stubdomain), the control nodes a command and a logdirty request add, the tree."""
    kernel = host.dir / "fake-dm"
    kernel.write_text(FAKE_DM.format(python=sys.executable))
    kernel.chmod(0o755)
    for n, name in enumerate(("guest", "other")):
        disk = host.dir / f"{name}.img"
        disk.write_bytes(b"\0" * 4096)
        cfg = host.dir / f"{name}.cfg"
        cfg.write_text(
            f'type = "hvm"\nname = "{name}"\nmemory = 128\n'
            'device_model_version = "qemu-xen-traditional"\n'
            "device_model_stubdomain_override = 1\n"
            f"disk = [ '{disk},raw,hda,rw' ]\n"
            f"vif = [ 'mac=00:16:3e:00:00:0{n + 1}' ]\n"
            f"serial = 'pty'\nstubdomain_kernel = \"{kernel}\"\n"
        )
        host.run("create", "-e", str(cfg))
    doms = host.domains()
    ids = {"dom0": 0, "G": doms["guest"].domid, "S": doms["guest-dm"].domid,
           "O": doms["other"].domid, "OS": doms["other-dm"].domid}  # fmt: skip
    # What the toolstack writes during a command and a logdirty request (control.py:
    # parameter first, then command), as dom0.
    for g, st, param in (("G", "S", "0000:03:00.0,msitranslate=0,power_mgmt=0"),
                         ("O", "OS", "0000:04:00.0")):  # fmt: skip
        xs.write(proto.parameter_path(ids[st], ids[g]), param)
        xs.write(proto.command_path(ids[st], ids[g]), "pci-ins")
        xs.write(proto.logdirty_path(ids[st], ids[g], "cmd"), "enable")
    _pause(host, [ids["S"], ids["OS"]])  # nobody else writes while we probe
    tree: dict[str, tuple[bytes, list[str]]] = {}
    for top in xs.directory("/"):
        if top != "tool":
            _dump(xs, f"/{top}", tree)
    names = {role: str(domid) for role, domid in ids.items() if role != "dom0"}
    for role in ROLES[1:]:  # "/vm/<uuid>"
        names[role + "U"] = xs.read(f"/local/domain/{ids[role]}/vm").decode().split("/")[-1]
    return World(ids=ids, names=names, targets={ids["S"]: ids["G"], ids["OS"]: ids["O"]},
                 tree=tree)  # fmt: skip


def domain_channel(host: Host, socket: str, domid: int, role: str) -> Channel:
    """The domain's own connection: the socket its programs use, ``<socket>.d/<domid>``.
    On cx and ox that socket is a relay the host starts with a domain's process (a
    stubdomain's); an HVM guest has none (its drivers are played through dom0's
    connection), so the probe speaks on the guest's ring itself, as its kernel would."""
    path = f"{socket}.d/{domid}"
    if host.xenstored == "ours" or Path(path).exists():
        return sock(path)
    fake = FakeXen(host.dir / "xenstored" / "real" / "fake")
    port = fake.port(domid)
    assert port is not None, f"domain {domid} was not introduced"
    kick = xsraw.Kicker(str(fake.dir), port)  # ox dispatches on the port
    return Channel(role, xsraw.RingConn(str(fake.ring_page(domid)), kick, 5.0))


def build_and_probe(xenstored: str) -> World:
    """A host over ``xenstored`` (ours, cx or ox), the tree built, every cell probed on
    the host's own connections: dom0's socket and each domain's (relayed to its ring on
    cx and ox), then the host down."""
    host = Host(short_tmpdir("perm-"), xenstored)
    host.run("host", "up", "--xenstored", xenstored)
    try:
        socket = str(host.dir / "xenstored" / "socket")
        with SyncClient(socket) as xs:
            world = _build(host, xs)
        channels = {"dom0": sock(socket)}
        try:
            for role in ROLES[1:]:
                channels[role] = domain_channel(host, socket, world.ids[role], role)
            world.matrix = probe_matrix(world, channels["dom0"], channels)
        finally:
            for ch in channels.values():
                ch.close()
        return world
    finally:
        host.run("host", "down", check=False)


_WORLDS: dict[str, World] = {}


def world_on(xenstored: str) -> World:
    """The world on ``xenstored``, built once per test session."""
    if xenstored not in _WORLDS:
        _WORLDS[xenstored] = build_and_probe(xenstored)
    return _WORLDS[xenstored]


@pytest.fixture(scope="module", params=XENSTOREDS)
def world(request: pytest.FixtureRequest) -> World:
    kind: str = request.param
    need_daemon(kind)
    return world_on(kind)


def need_daemon(kind: str) -> None:
    if kind == "cx":
        need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    elif kind == "ox":
        need_peer(have_ox(), "oxenstored (Debian xen-utils-4.17) and gcc")


# -- the tests ------------------------------------------------------------------------------------


def differences(
    got: dict[tuple[str, str, str], str], want: dict[tuple[str, str, str], str]
) -> list[str]:
    return [
        f"{role} {op} {label}: got {got[role, label, op]}, expected {want[role, label, op]}"
        for (role, label, op) in want
        if got[role, label, op] != want[role, label, op]
    ]


def test_our_toolstack_writes_libxls_permissions(world: World) -> None:
    wrong = [
        f"{label} {world.path(template)}: {','.join(world.tree[world.path(template)][1])}, "
        f"libxl writes {world.path(perms)}"
        for label, template, perms in NODES
        if world.path(template) not in world.tree
        or world.tree[world.path(template)][1] != world.perms(perms)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_daemon_gives_the_expected_matrix(world: World) -> None:
    wrong = differences(world.matrix, expected_matrix(world))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("kind", ["cx", "ox"])
def test_the_real_daemon_and_ours_agree_cell_by_cell(kind: str) -> None:
    need_daemon(kind)
    wrong = differences(world_on(kind).matrix, world_on("ours").matrix)
    assert not wrong, "\n".join(wrong)


def belongs_to(world: World, path: str) -> int:
    """Whose node it is by its place: a domain's home, its backends, its ``/vm/<uuid>``
    and ``/libxl/<domid>``; anything else is dom0's."""
    uuids = {world.names[k]: world.ids[k[:-1]] for k in ("GU", "SU", "OU", "OSU")}
    parts = path.split("/")[1:]
    if parts[:2] == ["local", "domain"] and len(parts) > 2:
        if parts[2] == "0" and len(parts) > 5 and parts[3] == "backend":
            return int(parts[5])
        return int(parts[2])
    if parts[0] == "vm" and len(parts) > 1:
        return uuids[parts[1]]
    if parts[0] == "libxl" and len(parts) > 1:
        return int(parts[1])
    return 0


def test_no_node_of_the_whole_tree_lets_a_stubdomain_past_its_target(world: World) -> None:
    """The point of the matrix, over every node the toolstack and host wrote (not only
    the probed ones): a stubdomain has rights only on its own and its target's nodes,
    and no node grants anything to every domain."""
    wrong = []
    for path, (_, perms) in world.tree.items():
        if perms[0][0] != "n":
            wrong.append(f"{path}: {','.join(perms)} gives every domain {perms[0][0]!r}")
        for stub, guest in world.targets.items():
            owner = belongs_to(world, path)
            if rights(stub, guest, perms) and owner not in (stub, guest):
                wrong.append(f"{path} (domain {owner}'s): {','.join(perms)} reaches {stub}")
    assert not wrong, "\n".join(wrong)


def matrix_table(world: World, results: dict[str, dict[tuple[str, str, str], str]]) -> str:
    """The matrix as Markdown, one row per node and role (for the report)."""
    short = {"ok": "✓", "EACCES": "✗", "event": "✓", "none": "✗"}
    lines = ["| node | perms | role | " + " | ".join(OPS) + " |",
             "|---|---|---|" + "---|" * len(OPS)]  # fmt: skip
    for label, template, _ in NODES:
        perms = ",".join(world.tree[world.path(template)][1])
        for role in ROLES:
            cells = []
            for op in OPS:
                got = {k: short.get(m[role, label, op], m[role, label, op])
                       for k, m in results.items()}  # fmt: skip
                cells.append("/".join(dict.fromkeys(got.values())))
            lines.append(f"| {label} | {perms} | {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # print the matrix: python -m tests.peers.test_protocol_permissions
    w = world_on("ours")
    results = {"ours": w.matrix}
    for kind, have in (("cx", have_cx), ("ox", have_ox)):
        if have():
            results[kind] = world_on(kind).matrix
    print(matrix_table(w, results))
