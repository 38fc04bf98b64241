"""The agent booted by the simulated host as the stubdomain kernel, driven by the
toolstack's libxl-faithful `DeviceModelChannel` (and its create/save/restore)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stubdom import protocol as proto
from stubdom.devicemodel.sim import SimDeviceModel
from stubdom.devicemodel.stream import StreamReader, is_complete
from stubdom.host.hypervisor import DomainState
from stubdom.host.rundir import RunDir
from stubdom.host.xenbus import XenbusState
from stubdom.stubdomain import commands as cmds
from stubdom.stubdomain.agent import Agent
from stubdom.stubdomain.args import AgentOptions
from stubdom.toolstack import devices, saverestore
from stubdom.toolstack import operations as ops
from stubdom.toolstack.channel import DeviceModelChannel
from stubdom.toolstack.config import DiskSpec, GuestConfig, NicSpec
from stubdom.toolstack.exchange import DeviceModelTimeout, PciInsertError, PciRemoveError
from stubdom.toolstack.session import Session
from stubdom.toolstack.spawn import Created, CreateError, HostPaths, destroy_guest
from stubdom.wire.constants import Op
from stubdom.xenstore import Client
from tests.support.daemons import (
    XENSTOREDS,
    Daemon,
    need_peer,
    need_xenstored,
    start_cx,
    start_ours,
    start_ox,
)
from tests.support.inprocess_host import inprocess_host

AGENT = str(Path(sys.executable).with_name("stubdom-dm"))
B1 = proto.Bdf(0, 3, 0, 0)
B2 = proto.Bdf(0, 4, 0, 0)


@dataclass
class Host:
    s: Session
    root: Path

    @property
    def xs(self) -> Client:
        return self.s.xs

    def config(self, cmdline: str = "", **kw: object) -> GuestConfig:
        disk = self.root / "g.img"
        disk.write_bytes(b"\0" * 4096)
        cfg = GuestConfig(
            name="g",
            vcpus=2,
            maxvcpus=4,
            stubdomain_kernel=AGENT,
            stubdomain_cmdline=cmdline,
            disks=[DiskSpec(vdev="hda", target=str(disk))],
            nics=[NicSpec(devid=0, mac="00:16:3e:12:34:56")],
        )
        for k, v in kw.items():
            setattr(cfg, k, v)
        return cfg

    async def create(self, cmdline: str = "", timeout: float = 20, **kw: object) -> Created:
        return await ops.create_guest(self.s, self.config(cmdline, **kw), timeout=timeout)

    def chan(self, c: Created, timeout: float = 10) -> DeviceModelChannel:
        return ops.channel(self.s, c.stubdom, c.guest, timeout)

    def log(self) -> str:
        path = self.s.paths.dm_log("g")
        return path.read_text() if path.exists() else ""

    async def wait_log(self, text: str, timeout: float = 10) -> str:
        async with asyncio.timeout(timeout):
            while text not in self.log():
                await asyncio.sleep(0.05)
        return self.log()

    async def add_pciback(self, c: Created, bdf: proto.Bdf) -> None:
        await devices.add_pci(self.xs, c.stubdom, devices.PciFunction(bdf), domain_name="g-dm")

    async def stub_state(self, c: Created) -> DomainState:
        return (await self.s.hv.domain_info(c.stubdom)).state


@pytest.fixture
async def host(request: pytest.FixtureRequest) -> AsyncIterator[Host]:
    """The agent on a host over our xenstored, or over the one a test names indirectly
    (`ON_EVERY_DAEMON`)."""
    xenstored = getattr(request, "param", "ours")
    async with inprocess_host("agent-", xenstored) as h:
        paths = HostPaths.under(h.root)
        paths.ensure()
        yield Host(Session(h.hv, h.xs, paths, RunDir(h.root)), h.root)


#: Every test of the agent on a host runs on ours, cx and ox; not on cx and ox: the
#: restore that fails on the image's name before any xenstore request, the stream
#: parser without a host, and the qemu backend (a peer whose cost is qemu's start-up).
ON_EVERY_DAEMON = pytest.mark.parametrize("host", XENSTOREDS, indirect=True)


@pytest.fixture(params=["sim", pytest.param("qemu", marks=pytest.mark.peer)])
def dm(request: pytest.FixtureRequest) -> str:
    """Both device-model backends behind the same protocol."""
    name: str = request.param
    if name == "qemu":
        need_peer(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    return name


def snapshots(log: str, tag: str) -> list[dict[str, object]]:
    out = []
    for line in log.splitlines():
        _, sep, rest = line.partition(f"snapshot {tag} ")
        if sep:
            out.append(json.loads(rest))
    return out


@ON_EVERY_DAEMON
async def test_start_reports_running_and_logs_argv(host: Host) -> None:
    c = await host.create()
    assert await host.xs.read(proto.state_path(c.stubdom, c.guest)) == b"running"
    log = await host.wait_log("running")
    assert "argv -d 1 -domain-name g" in log and "cannot honour: -vnc" in log
    assert "1 disk(s), 1 nic(s), 4 vcpu(s), device model sim" in log


@ON_EVERY_DAEMON
async def test_pci_insert_auto_and_requested_and_refusals(host: Host) -> None:
    c = await host.create()
    await host.add_pciback(c, B1)
    ch = host.chan(c)
    devfn = await ch.pci_insert(B1)
    assert devfn & 7 == 0 and devfn >> 3 > 0
    assert await host.xs.read(proto.state_path(c.stubdom, c.guest)) == b"running"
    await host.add_pciback(c, B2)
    assert await ch.pci_insert(B2, vdevfn=0x38) == 0x38
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(PciInsertError, match="wrong bdf or vdevfn"):
        await ch.pci_insert(proto.Bdf(0, 5, 0, 0), vdevfn=0x38)
    assert loop.time() - t0 < 5
    # fill every free slot, then the next automatic insert has none
    n = 6
    with pytest.raises(PciInsertError, match="no free hotplug devfn"):
        while True:
            await ch.pci_insert(proto.Bdf(0, n, 0, 0))
            n += 1
    assert loop.time() - t0 < 8


@ON_EVERY_DAEMON
async def test_a_pci_device_replaced_before_pcifront_looks_is_connected(host: Host) -> None:
    """Detach every function and attach another at once: the stubdomain may first see
    the new device where the old one was, and must connect it, not wait for it to go."""
    c = await host.create()
    await host.add_pciback(c, B1)
    be = f"/local/domain/0/backend/pci/{c.stubdom}/0"
    connected = str(int(XenbusState.CONNECTED))
    await host.wait_log("pcifront connected")
    await host.s.hv.pause(c.stubdom)  # the agent sees none of the steps between
    await devices.destroy_device(host.xs, devices.pci_ref(c.stubdom))  # the last function
    await host.add_pciback(c, B2)
    await host.s.hv.unpause(c.stubdom)
    await host.xs.wait_until(f"{be}/state", lambda v: v == connected or None, timeout=10)


@ON_EVERY_DAEMON
async def test_pci_remove_waits_for_the_eject_and_refusals(host: Host) -> None:
    c = await host.create("--eject-delay=0.3")
    await host.add_pciback(c, B1)
    ch = host.chan(c)
    devfn = await ch.pci_insert(B1)
    assert await ch.pci_remove(B1, vdevfn=devfn)
    assert await host.xs.read(proto.state_path(c.stubdom, c.guest)) == b"running"
    log = await host.wait_log("guest ejected slot")  # the backend's lines, not the agent's
    assert "eject requested" in log
    with pytest.raises(PciRemoveError):
        await ch.exchange(proto.Command.PCI_REM, "0000:09:00.0", proto.State.PCI_REMOVED)
    assert await host.xs.read(proto.parameter_path(c.stubdom, c.guest)) != b"0000:09:00.0"
    await host.xs.write(proto.state_path(c.stubdom, c.guest), "running")
    assert await ch.pci_insert(B2, vdevfn=0x31) == 0x31
    with pytest.raises(PciRemoveError, match="pci-remove-failed"):
        await ch.exchange(proto.Command.PCI_REM, str(B2), proto.State.PCI_REMOVED)
    reason = await host.xs.read(proto.parameter_path(c.stubdom, c.guest))
    assert b"non-zero function" in reason


@ON_EVERY_DAEMON
async def test_save_pauses_continue_resumes(host: Host, dm: str) -> None:
    c = await host.create(f"--dm={dm}")
    ch = host.chan(c)
    await ch.save()
    assert await host.xs.read(proto.state_path(c.stubdom, c.guest)) == b"paused"
    blob = host.s.paths.save_file(c.guest).read_bytes()
    assert is_complete(blob)
    assert await ch.resume()
    assert await host.xs.read(proto.state_path(c.stubdom, c.guest)) == b"running"
    assert not await ch.resume()  # not paused: nothing sent


async def stub_watches(host: Host, stubdom: int) -> int:
    """The stubdomain's watches, from our xenstored's ``quota <domid>`` report."""
    report = await host.xs.request(Op.CONTROL, f"quota\0{stubdom}\0".encode())
    rows = (line.split(":") for line in report.decode().strip("\0").splitlines()[1:])
    return {k.strip(): int(v) for k, v in rows}["watches"]


async def test_saves_leave_no_watch_behind(host: Host) -> None:
    """Each save opens and closes console 1, whose monitor is cancelled mid-WATCH: a
    watch left each time ran the stubdomain into its watch quota (E2BIG) after ~128."""
    c = await host.create()
    ch = host.chan(c)
    await ch.save()
    await ch.resume()
    before = await stub_watches(host, c.stubdom)
    for _ in range(6):
        await ch.save()
        await ch.resume()
    assert await stub_watches(host, c.stubdom) == before


@ON_EVERY_DAEMON
async def test_save_and_restore_give_the_machine_back(host: Host) -> None:
    c = await host.create()
    await host.add_pciback(c, B1)
    await host.chan(c).pci_insert(B1, vdevfn=0x30)
    image = host.root / "g.save"
    await saverestore.save_guest(host.s, c.guest, image)
    # Console 0 reaches its log file through the backend, maybe after ``paused``.
    saved = snapshots(await host.wait_log("snapshot saved"), "saved")
    assert len(saved) == 1
    r = await saverestore.restore_guest(host.s, image, timeout=20)
    assert await host.xs.read(proto.state_path(r.stubdom, r.guest)) == b"running"
    restored = snapshots(await host.wait_log("snapshot restored"), "restored")
    before, after = dict(saved[0]), dict(restored[0])
    assert (before.pop("run_state"), after.pop("run_state")) == ("paused", "running")
    assert before == after


@ON_EVERY_DAEMON
async def test_logdirty(host: Host, dm: str) -> None:
    c = await host.create(f"--dm={dm}")
    ch = host.chan(c)
    await ch.logdirty(True)
    await ch.logdirty(False)
    await host.xs.write(proto.logdirty_path(c.stubdom, c.guest, "cmd"), "garbage")
    await host.wait_log("logdirty: unknown command 'garbage'")
    assert await host.xs.read_optional(proto.logdirty_path(c.stubdom, c.guest, "ret")) is None
    assert await host.stub_state(c) in (DomainState.RUNNING, DomainState.BLOCKED)
    await host.xs.rm(proto.logdirty_path(c.stubdom, c.guest, "cmd"))
    await ch.logdirty(True)  # still answering


@ON_EVERY_DAEMON
async def test_vcpu_set_usb_and_unknown_command(host: Host, dm: str) -> None:
    c = await host.create(f"--dm={dm}")
    for n, v in enumerate(["online", "online", "online", "offline"]):
        await host.xs.write(proto.vcpu_availability_path(c.guest, n), v)
    await host.wait_log("vcpus online: 0,1,2")
    ch = host.chan(c)
    snap = await ch.exchange(proto.Command.USB_ADD, "tablet", proto.State.USB_ADDED)
    assert snap.state == "usb-added"
    snap = await ch.exchange(proto.Command.USB_DEL, "tablet", proto.State.USB_DELETED)
    assert snap.state == "usb-deleted"
    await host.xs.write(proto.command_path(c.stubdom, c.guest), "flr")
    await host.wait_log('unknown command"flr"')
    await host.xs.write(proto.command_path(c.stubdom, c.guest), "sav")  # no prefix match
    await host.wait_log('unknown command"sav"')
    assert await host.xs.read(proto.state_path(c.stubdom, c.guest)) == b"running"


@ON_EVERY_DAEMON
async def test_compat_mode_is_qemu_trad(host: Host, dm: str) -> None:
    c = await host.create(f"--dm={dm} --compat=qemu-trad")
    await host.add_pciback(c, B1)
    ch = host.chan(c, timeout=1.5)
    await ch.pci_insert(B1, vdevfn=0x30)
    states: list[bytes | None] = []
    state = proto.state_path(c.stubdom, c.guest)
    async with host.xs.watch(state) as w:

        async def record() -> None:
            while True:
                await w.get()
                states.append(await host.xs.read_optional(state))

        rec = asyncio.create_task(record())
        # our toolstack fails fast on qemu's text in parameter; libxl would time out
        with pytest.raises(PciInsertError, match="wrong bdf or vdevfn"):
            await ch.pci_insert(B2, vdevfn=0x30)
        await asyncio.sleep(0.2)
        rec.cancel()
    assert b"pci-insert-failed" not in states
    with pytest.raises(DeviceModelTimeout):  # nothing written on a refused pci-rem
        await ch.exchange(proto.Command.PCI_REM, "0000:09:00.0", proto.State.PCI_REMOVED)
    await host.xs.write(proto.state_path(c.stubdom, c.guest), "running")
    await host.xs.write(proto.command_path(c.stubdom, c.guest), "sav")  # prefix: save
    await host.wait_log("snapshot saved")
    await host.chan(c).resume()


@ON_EVERY_DAEMON
async def test_malformed_dmargs_stop_the_agent(host: Host) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(CreateError, match="report running"):
        await host.create(device_model_args=["-vcpus", "many"], timeout=20)
    assert loop.time() - t0 < 10
    log = host.log()
    assert "fatal: bad device-model arguments: -vcpus 'many': not a number" in log


@ON_EVERY_DAEMON
async def test_bad_kernel_cmdline_is_fatal(host: Host) -> None:
    with pytest.raises(CreateError):
        await host.create("--dm=bochs", timeout=20)
    assert "fatal: bad kernel command line: --dm=bochs" in host.log()


def test_a_stream_cut_short_is_detected(tmp_path: Path) -> None:
    from stubdom.devicemodel.stream import encode_state

    blob = encode_state("sim", b'{"x": 1}')
    assert is_complete(blob)
    for cut in (1, 10, len(blob) // 2, len(blob) - 1):
        assert not is_complete(blob[:cut])
        r = StreamReader()
        r.feed(blob[:cut])
        assert not r.done


@ON_EVERY_DAEMON
async def test_a_save_file_cut_short_fails_the_save(host: Host) -> None:
    c = await host.create()
    await host.chan(c).save()
    path = host.s.paths.save_file(c.guest)
    blob = path.read_bytes()
    assert is_complete(blob)
    path.write_bytes(blob[:-5])
    assert not is_complete(path.read_bytes())
    image = host.root / "g.save"
    await host.chan(c).resume()
    # the toolstack's own check refuses a truncated state too
    from stubdom.toolstack.savefile import SaveFileError, check_dm_state_complete

    with pytest.raises(SaveFileError):
        check_dm_state_complete(blob[: len(blob) // 2])
    assert not image.exists()


@pytest.mark.peer
async def test_qemu_backend(host: Host) -> None:
    need_peer(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    c = await host.create("--dm=qemu", timeout=60)
    await host.add_pciback(c, B1)
    ch = host.chan(c, timeout=30)
    assert await ch.pci_insert(B1) >= 0
    await ch.save()
    assert is_complete(host.s.paths.save_file(c.guest).read_bytes())
    assert await ch.resume()


@pytest.mark.peer
async def test_qemu_backend_through_every_command(host: Host) -> None:
    """The same protocol answers with QEMU behind it: hot-plug (native PCIe, so a removal
    completes without a guest), refusals, save and a restore that gives the machine back."""
    need_peer(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64")
    c = await host.create("--dm=qemu", timeout=60)
    ch = host.chan(c, timeout=30)
    await host.add_pciback(c, B1)
    auto = await ch.pci_insert(B1)
    await host.add_pciback(c, B2)
    requested = await ch.pci_insert(B2, vdevfn=auto + 8)
    assert requested == auto + 8
    with pytest.raises(PciInsertError, match="wrong bdf or vdevfn"):
        await ch.pci_insert(proto.Bdf(0, 5, 0, 0), vdevfn=requested)
    assert await ch.pci_remove(B2, vdevfn=requested)  # DEVICE_DELETED -> pci-removed
    with pytest.raises(PciRemoveError, match="pci-remove-failed"):
        await ch.exchange(proto.Command.PCI_REM, "0000:09:00.0", proto.State.PCI_REMOVED)
    await host.xs.write(proto.state_path(c.stubdom, c.guest), "running")
    image = host.root / "q.save"
    await saverestore.save_guest(host.s, c.guest, image)
    saved = snapshots(host.log(), "saved")
    r = await saverestore.restore_guest(host.s, image, timeout=60)
    assert await host.xs.read(proto.state_path(r.stubdom, r.guest)) == b"running"
    restored = snapshots(await host.wait_log("snapshot restored", timeout=30), "restored")
    assert saved and restored
    assert saved[0]["hotplug"] == restored[0]["hotplug"]  # B1 is back in its slot


@ON_EVERY_DAEMON
async def test_sigterm_is_a_clean_stop(host: Host) -> None:
    import os
    import signal

    c = await host.create()
    proc = host.s.hv._domains[c.stubdom].process  # type: ignore[attr-defined]  # test peek
    os.kill(proc.pid, signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert "stopping (signal)" in host.log()
    assert await host.stub_state(c) is DomainState.SHUTDOWN


@ON_EVERY_DAEMON
async def test_a_restore_stream_cut_short_stops_the_agent(host: Host) -> None:
    """The agent reads console 2 to the end the stream announces: a short stream is a
    clear fatal error (not a hang), so the create fails fast and nothing is left."""
    from stubdom.devicemodel.stream import encode_state

    blob = encode_state("sim", b'{"x": 1}')
    with pytest.raises(CreateError, match="report running"):
        await ops.create_guest(host.s, host.config(), timeout=20,
                               restore_state=blob[: len(blob) // 2])
    assert "fatal: -loadvm" in host.log() and "truncated" in host.log()
    assert [d.name for d in await host.s.hv.list_domains()] == ["Domain-0"]


@pytest.fixture(params=XENSTOREDS)
def any_daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A fresh daemon, once per kind: ours, cx, ox."""
    kind: str = request.param
    need_xenstored(kind)
    d = {"ours": start_ours, "cx": start_cx, "ox": start_ox}[kind]()
    yield d
    d.stop()


def bare_agent(c: Client) -> tuple[Agent, list[str]]:
    """An agent for guest 7 on dom0's connection ``c``, not started (its handlers are
    called directly), and the paths it writes outside a transaction from now on."""
    agent = Agent(c, AgentOptions(), [], lambda o: SimDeviceModel())
    agent.guest = 7
    plain: list[str] = []
    real = c.roundtrips

    async def spy(requests: Any, *, tx_id: int = 0, **kw: Any) -> Any:
        if not tx_id:
            plain.extend(what for op, _, what in requests if op == Op.WRITE)
        return await real(requests, tx_id=tx_id, **kw)

    c.roundtrips = spy  # type: ignore[method-assign]
    return agent, plain


@pytest.mark.parametrize(
    ("writes", "atomic"),
    [
        (cmds.pci_insert_failed("no free devfn", compat=False), True),
        (cmds.pci_remove_failed("not inserted", compat=False), True),
        (cmds.pci_inserted(0x28), False),
        (cmds.pci_insert_failed("no free devfn", compat=True), False),
    ],
)
async def test_a_refusal_is_written_in_one_transaction(
    any_daemon: Daemon, writes: list[cmds.Write], atomic: bool
) -> None:
    """A refusal's text in ``parameter`` is an answer the toolstack acts on at once (and
    writes ``running`` back); a failure state written after it would land on that
    ``running`` and fail the next command (CI run of stop 10).  So the pair is one
    transaction; the other results keep their two plain writes."""
    async with await Client.connect(any_daemon.socket) as c:
        agent, plain = bare_agent(c)
        await agent._write(writes)
        assert (plain == []) is atomic
        for w in writes:
            assert await c.read(proto.dm_relative_path(7, w.node)) == str(w.value).encode()


async def test_a_logdirty_command_is_answered_once(any_daemon: Daemon) -> None:
    """One ``cmd`` change can reach the agent as two events (the toolstack's cleanup of
    the previous command, then the new one); the second must not write ``ret`` again,
    or a ``ret`` written after the toolstack removed the pair is left behind."""
    # The agent names its nodes relative to its home: dom0's, on this connection.
    cmd, ret = proto.logdirty_path(0, 7, "cmd"), proto.logdirty_path(0, 7, "ret")
    async with await Client.connect(any_daemon.socket) as c:
        agent, writes = bare_agent(c)
        await c.write(cmd, "disable")
        await agent.logdirty_event()
        assert await c.read(ret) == b"disable" and agent.logdirty is False
        writes.clear()
        await agent.logdirty_event()  # the duplicate event
        assert writes == []
        await c.rm(ret)
        await c.rm(cmd)
        await agent.logdirty_event()  # the cleanup's own event: nothing to answer
        assert writes == [] and await c.read_optional(ret) is None


@ON_EVERY_DAEMON
async def test_destroy_removes_the_watches_a_channel_keeps(host: Host) -> None:
    """A channel keeps its three watches on the session's client across commands; a
    destroy in the same session must take them away (a long-lived toolstack would
    otherwise keep three watches per guest it ever commanded)."""
    c = await host.create()
    await host.add_pciback(c, B1)
    await host.chan(c).pci_insert(B1)
    assert len(host.s.channels.kept) == 1
    await destroy_guest(host.s.hv, host.xs, c.guest, host.s.paths, host.s.channels)
    assert len(host.s.channels.kept) == 0


async def test_a_restore_removes_stages_of_dead_restores(host: Host) -> None:
    """A toolstack killed while it copied a state out of an image leaves its staged copy
    (up to 256 MB); the next restore removes those of dead processes, not live ones."""
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()  # its pid is free now (reuse before the check is not a concern here)
    host.s.paths.ensure()
    state_dir = host.s.paths.state_dir
    left = state_dir / f"{saverestore.RESTORE_STAGED}.{dead.pid}.7f00"
    live = state_dir / f"{saverestore.RESTORE_STAGED}.{os.getpid()}.7f01"
    left.write_bytes(b"x" * 4096)
    live.write_bytes(b"y")
    bad = host.root / "bad.save"
    bad.write_bytes(b"not an image")
    with pytest.raises(saverestore.ToolstackError, match=r"bad\.save"):
        await saverestore.restore_guest(host.s, bad)
    assert not left.exists() and live.exists()
