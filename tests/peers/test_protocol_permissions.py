"""A stubdomain may touch its target and nothing else (issue #8): the permission matrix.

The tree is built by our own toolstack on the in-process simulated host: two HVM guests,
each with its stubdomain (disk, nic, serial, VNC), plus the control nodes the toolstack
and the device model write.  Then every role probes every node the protocol uses, over
its own domain connection:

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

The matrix is checked on our xenstored (the host's own daemon, the tree as the toolstack
left it) and on the real cxenstored 4.17 (`stubdom.realxs`) after replaying the same nodes,
values, permissions, INTRODUCEs and SET_TARGETs; both must give the expected answers and
agree with each other cell by cell.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

import pytest

from stubdom import protocol as proto
from stubdom.toolstack.config import DiskSpec, GuestConfig, NicSpec
from stubdom.toolstack.spawn import HostPaths, StubdomSpawner
from stubdom.xenstore import Client
from tests.differential.targets import Channel, KitTarget
from tests.support import xsraw
from tests.support.daemons import have_cx, need_peer
from tests.support.inprocess_host import inprocess_host

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
    ours: dict[tuple[str, str, str], str] = field(default_factory=dict)

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


# -- building the tree with our toolstack ------------------------------------------------------


async def _wait_running(xs: Client, stub: int, guest: int, timeout: float) -> None:
    path = proto.state_path(stub, guest)
    async with xs.watch(path) as w, asyncio.timeout(timeout):
        while await xs.read_optional(path) != b"running":
            await w.get()


async def _dump(xs: Client, path: str, out: dict[str, tuple[bytes, list[str]]]) -> None:
    out[path] = (await xs.read(path), [str(p) for p in await xs.get_perms(path)])
    for child in await xs.directory(path):
        await _dump(xs, f"{path.rstrip('/')}/{child}", out)


async def _build_and_probe_ours() -> World:
    async with inprocess_host("perm-") as host:
        root = host.root
        kernel = root / "fake-dm"
        kernel.write_text(FAKE_DM.format(python=sys.executable))
        kernel.chmod(0o755)
        spawner = StubdomSpawner(
            host.hv, host.xs, HostPaths.under(root),
            lambda s, g, t: _wait_running(host.xs, s, g, t), 20.0,
        )  # fmt: skip
        created = []
        for n, name in enumerate(("guest", "other")):
            disk = root / f"{name}.img"
            disk.write_bytes(b"\0" * 4096)
            cfg = GuestConfig(
                name=name,
                serial=["pty"],
                stubdomain_kernel=str(kernel),
                disks=[DiskSpec(vdev="hda", target=str(disk))],
                nics=[NicSpec(devid=0, mac=f"00:16:3e:00:00:0{n + 1}")],
            )
            created.append(await spawner.create(cfg))
        g, o = created
        # What the toolstack writes during a command and a logdirty request (control.py:
        # parameter first, then command), as dom0.
        for c, param in ((g, "0000:03:00.0,msitranslate=0,power_mgmt=0"), (o, "0000:04:00.0")):
            await host.xs.write(proto.parameter_path(c.stubdom, c.guest), param)
            await host.xs.write(proto.command_path(c.stubdom, c.guest), "pci-ins")
            await host.xs.write(proto.logdirty_path(c.stubdom, c.guest, "cmd"), "enable")
        for c in created:  # nobody else writes while we probe
            await host.hv.pause(c.stubdom)
        tree: dict[str, tuple[bytes, list[str]]] = {}
        for top in await host.xs.directory("/"):
            if top != "tool":
                await _dump(host.xs, f"/{top}", tree)
        world = World(
            ids={"dom0": 0, "G": g.guest, "S": g.stubdom, "O": o.guest, "OS": o.stubdom},
            names={
                "G": str(g.guest),
                "S": str(g.stubdom),
                "O": str(o.guest),
                "OS": str(o.stubdom),
                "GU": g.guest_uuid,
                "SU": g.stub_uuid,
                "OU": o.guest_uuid,
                "OSU": o.stub_uuid,
            },
            targets={g.stubdom: g.guest, o.stubdom: o.guest},
            tree=tree,
        )
        socket = str(host.server.socket_path)

        def probe_ours() -> dict[tuple[str, str, str], str]:
            dom0 = sock(socket)
            channels = {"dom0": dom0}
            for role in ROLES[1:]:
                channels[role] = sock(f"{socket}.d/{world.ids[role]}")
            try:
                return probe_matrix(world, dom0, channels)
            finally:
                for ch in channels.values():
                    ch.close()

        # Our server runs in this event loop: the blocking probes go to a thread.
        world.ours = await asyncio.to_thread(probe_ours)
        return world


@pytest.fixture(scope="module")
def world() -> World:
    return asyncio.run(_build_and_probe_ours())


# -- replaying it on cxenstored -------------------------------------------------------------------


def probe_cx(world: World) -> dict[tuple[str, str, str], str]:
    target = KitTarget("cx")
    channels: dict[str, Channel] = {}
    try:
        dom0 = target.connect_dom0()
        channels["dom0"] = dom0
        for path, (value, perms) in world.tree.items():  # parents first
            r = dom0.request(T["WRITE"], path.encode() + b"\0" + value)
            assert r.type == T["WRITE"], (path, r)
            payload = path.encode() + b"\0" + b"".join(p.encode() + b"\0" for p in perms)
            r = dom0.request(T["SET_PERMS"], payload)
            assert r.type == T["SET_PERMS"], (path, perms, r)
        for role in ROLES[1:]:
            domid = world.ids[role]
            target.before_introduce(domid)
            r = dom0.request(T["INTRODUCE"], f"{domid}\0{0}\0{domid + 1}\0".encode())
            assert r.type == T["INTRODUCE"], r
            target.introduced.add(domid)
        for stub, guest in world.targets.items():
            r = dom0.request(T["SET_TARGET"], f"{stub}\0{guest}\0".encode())
            assert r.type == T["SET_TARGET"], r
        for role in ROLES[1:]:
            channels[role] = target.connect_guest(world.ids[role], role)
        return probe_matrix(world, dom0, channels)
    finally:
        for ch in channels.values():
            ch.close()
        target.stop()


@pytest.fixture(scope="module")
def cx_matrix(world: World) -> dict[tuple[str, str, str], str]:
    need_peer(have_cx(), "cxenstored (Debian xen-utils-4.17) and gcc")
    return probe_cx(world)


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


def test_ours_gives_the_expected_matrix(world: World) -> None:
    wrong = differences(world.ours, expected_matrix(world))
    assert not wrong, "\n".join(wrong)


def test_cx_gives_the_expected_matrix(
    world: World, cx_matrix: dict[tuple[str, str, str], str]
) -> None:
    wrong = differences(cx_matrix, expected_matrix(world))
    assert not wrong, "\n".join(wrong)


def test_ours_and_cx_agree_cell_by_cell(
    world: World, cx_matrix: dict[tuple[str, str, str], str]
) -> None:
    wrong = differences(world.ours, cx_matrix)
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
    w = asyncio.run(_build_and_probe_ours())
    results = {"ours": w.ours}
    if have_cx():
        results["cx"] = probe_cx(w)
    print(matrix_table(w, results))
