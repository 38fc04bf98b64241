"""The toolstack's control channel against a fake qemu-trad (tests/toolstack/fake_dm.py);
its sans-IO decisions are tested alone in test_exchange.py.

Guest G=5, stubdomain S=6 as libxl sets them up (docs/protocol.md#setup-order): S's home
``n0,r6`` with ``target``, SET_TARGET(S, G), ``device-model/G`` ``n6,r5``; the fake runs
over S's own, unprivileged connection.  Timing is asserted only as an upper bound far from the
timeout ("failed fast"), never as a tight bound.  Every test that reaches a daemon runs on
ours, cx and ox (the ``env`` fixture's parameter; README, "On the real daemons").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stubdom.host.xslink import RealLink
from stubdom.protocol import (
    DM_VERSION_TRADITIONAL,
    PCI_INS_BAD_BDF,
    PCI_INS_NO_FREE_DEVFN,
    Command,
    State,
    command_path,
    dm_path,
    logdirty_path,
    parameter_path,
    parse_bdf,
    pci_ins_parameter,
    pci_rem_parameter,
    state_path,
    target_path,
)
from stubdom.toolstack.channel import ChannelRegistry, DeviceModelChannel
from stubdom.toolstack.exchange import (
    DeviceModelDied,
    DeviceModelError,
    DeviceModelTimeout,
    PciInsertError,
    Restore,
)
from stubdom.wire.paths import domain_path
from stubdom.xenstore import Client
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import XENSTOREDS, need_xenstored, short_tmpdir, start_cx, start_ox
from tests.toolstack.fake_dm import EJECT_NODE, SCI_NODE, FakeDeviceModel, Misbehaviour

G, S = 5, 6
SLOW = 30.0  # a timeout that fast paths must never come near
SHORT = 0.5  # a timeout tests expect to expire
ROOT = Path(__file__).resolve().parents[2]

DEV_A = parse_bdf("0000:03:00.0")
DEV_B = parse_bdf("0000:04:00.0")
DEV_C = parse_bdf("0000:05:00.0")

assert DM_VERSION_TRADITIONAL  # the protocol these tests speak


@dataclass
class Env:
    #: ours, cx or ox.
    xenstored: str
    #: dom0's socket.
    socket: str
    #: S's own socket: our daemon's, or on cx/ox the relay onto S's ring.
    stub_socket: str
    dom0: Client
    run_dir: Path
    lock_dir: Path
    #: Our daemon, in this event loop (None on cx and ox).
    server: XenStoreServer | None = None
    #: cx and ox: what the host does when a domain dies (None on ours).
    link: RealLink | None = None
    clients: list[Client] = field(default_factory=list)
    fakes: list[FakeDeviceModel] = field(default_factory=list)
    #: What a toolstack session would keep: the channels' watches and locks.
    channels: ChannelRegistry = field(default_factory=ChannelRegistry)

    def channel(self, timeout: float = SLOW, client: Client | None = None) -> DeviceModelChannel:
        return DeviceModelChannel(
            client or self.dom0, S, G, self.lock_dir, timeout=timeout, channels=self.channels
        )

    async def client(self, path: str | None = None) -> Client:
        c = await Client.connect(path or self.socket)
        self.clients.append(c)
        return c

    async def fake(self, **kw: Any) -> FakeDeviceModel:
        """A started fake DM over the stub's own connection; dying releases the stub."""
        stub = await self.client(self.stub_socket)
        kw.setdefault("on_die", self.release_stub)
        fake = FakeDeviceModel(stub, G, **kw)
        await fake.start()
        self.fakes.append(fake)
        return fake

    async def release_stub(self) -> None:
        """The stubdomain is gone: RELEASE, as after a domain's death.  On cx and ox the
        daemon then simply stops serving S's ring, which the dead domain would never read
        again; the host drops the domain's relay (`RealLink`), closing the connections of
        S's programs as our daemon does its domain socket's."""
        await self.dom0.release(S)
        if self.link is not None:
            await self.link.domain_state(S, "gone")

    async def state(self) -> str | None:
        v = await self.dom0.read_optional(state_path(S, G))
        return None if v is None else v.decode()

    async def parameter(self) -> str | None:
        v = await self.dom0.read_optional(parameter_path(S, G))
        return None if v is None else v.decode()


async def _setup_domains(dom0: Client) -> None:
    """G and S introduced and laid out as libxl does (the module docstring)."""
    await dom0.introduce(G, 0, 15)
    await dom0.introduce(S, 0, 16)
    await dom0.mkdir(domain_path(G))
    await dom0.set_perms(domain_path(G), ["n0", f"r{G}"])
    await dom0.mkdir(domain_path(S))
    await dom0.set_perms(domain_path(S), ["n0", f"r{S}"])
    await dom0.write(target_path(S), str(G))
    await dom0.set_target(S, G)
    await dom0.mkdir(dm_path(S, G))
    await dom0.set_perms(dm_path(S, G), [f"n{S}", f"r{G}"])
    # The fake's eject mailbox (a test device, not part of the protocol).
    await dom0.mkdir(f"{domain_path(S)}/fake-dm")
    await dom0.set_perms(f"{domain_path(S)}/fake-dm", [f"n{S}"])


@contextlib.asynccontextmanager
async def _daemon(xenstored: str, run_dir: Path) -> AsyncIterator[tuple[str, Any]]:
    """dom0's socket and the daemon: ours in this loop, or the real cx/ox as a child."""
    if xenstored == "ours":
        server = XenStoreServer(run_dir / "xs")
        await server.start()
        try:
            yield str(server.socket_path), server
        finally:
            await server.close()
        return
    real = start_cx(run_dir) if xenstored == "cx" else start_ox(run_dir)
    try:
        yield real.socket, real
    finally:
        real.stop()


@pytest.fixture(params=XENSTOREDS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """G and S on a fresh daemon: ours, cx or ox (the fixture's parameter).  On cx and ox
    S reaches the daemon over its ring, through the host's relay (`RealLink`)."""
    xenstored: str = request.param
    need_xenstored(xenstored)
    run_dir = short_tmpdir("dm-")
    async with contextlib.AsyncExitStack() as stack:
        socket, daemon = await stack.enter_async_context(_daemon(xenstored, run_dir))
        dom0 = await Client.connect(socket)
        stack.push_async_callback(dom0.close)
        await _setup_domains(dom0)
        if isinstance(daemon, XenStoreServer):
            e = Env(xenstored, socket, str(daemon.domain_socket(S)), dom0, run_dir,
                    run_dir / "locks", server=daemon)
        else:
            link = RealLink(daemon.fake_dir, socket)
            stack.push_async_callback(link.close)
            e = Env(xenstored, socket, await link.domain_socket(S), dom0, run_dir,
                    run_dir / "locks", link=link)
        try:
            yield e
        finally:
            for fake in e.fakes:
                await fake.stop()
            for c in e.clients:
                await c.close()
    shutil.rmtree(run_dir, ignore_errors=True)


# -- pci-ins ------------------------------------------------------------------------------


async def test_pci_insert_auto_and_requested_devfn(env: Env) -> None:
    fake = await env.fake()
    ch = env.channel()
    assert await ch.pci_insert(DEV_A, msitranslate=True) == 0x20  # first free slot, 4
    assert await env.state() == "running"  # restored
    assert await env.parameter() == "0x20"
    assert await ch.pci_insert(DEV_B, vdevfn=0x38, power_mgmt=True) == 0x38
    assert await env.state() == "running"
    assert fake.present[0x20].opts == "msitranslate=1,power_mgmt=0"
    assert fake.present[0x38].opts == "msitranslate=0,power_mgmt=1"
    assert fake.commands == ["pci-ins", "pci-ins"]
    assert await env.dom0.read_optional(command_path(S, G)) is None  # qemu deleted it


async def test_a_running_device_model_needs_one_watch_set_per_command(env: Env) -> None:
    """state already running: no separate wait for it (its 3 watches, events, unwatches)."""
    await env.fake()
    ch = env.channel()
    watched: list[str] = []
    real_watch = env.dom0.watch

    def counting_watch(path: str, *args: Any, **kw: Any) -> Any:
        watched.append(path)
        return real_watch(path, *args, **kw)

    env.dom0.watch = counting_watch  # type: ignore[method-assign]
    await ch.pci_insert(DEV_A)
    assert watched == [state_path(S, G), parameter_path(S, G), "@releaseDomain"]


async def test_a_channel_keeps_its_watches_and_asks_liveness_once(env: Env) -> None:
    """Later commands register no watch and ask nothing about the stub until
    @releaseDomain fires; a release between commands is still seen at once."""
    await env.fake()
    ch = env.channel()
    watched: list[str] = []
    asked: list[int] = []
    real_watch, real_introduced = env.dom0.watch, env.dom0.is_domain_introduced

    def counting_watch(path: str, *args: Any, **kw: Any) -> Any:
        watched.append(path)
        return real_watch(path, *args, **kw)

    async def counting_introduced(domid: int, **kw: Any) -> bool:
        asked.append(domid)
        return await real_introduced(domid, **kw)

    env.dom0.watch = counting_watch  # type: ignore[method-assign]
    env.dom0.is_domain_introduced = counting_introduced  # type: ignore[method-assign]
    await ch.pci_insert(DEV_A)
    first = len(asked)
    assert await env.channel().pci_insert(DEV_B) == 0x28  # another channel, same client
    await ch.pci_remove(DEV_B, force=True)
    assert watched == [state_path(S, G), parameter_path(S, G), "@releaseDomain"]
    assert len(asked) == first
    assert len(env.channels.kept) == 1  # the session keeps them, not the channel
    await env.release_stub()
    with pytest.raises(DeviceModelDied):
        await ch.pci_insert(DEV_C)


def _server_watches(env: Env) -> int:
    """The watches the daemon holds.  Only our daemon shows them; on cx and ox (no query
    for another connection's watches) the count is dom0's registry, whose entries go only
    when the daemon acknowledged the UNWATCH."""
    if env.server is None:
        return len(env.dom0._watches)
    return sum(len(conn.watches) for conn in env.server.clients)


async def test_forgetting_a_guest_removes_the_watches_kept_for_it(env: Env) -> None:
    await env.fake()
    await env.channel().pci_insert(DEV_A)
    kept = _server_watches(env)
    await env.channels.forget(G + 1)  # another guest: nothing of ours
    assert len(env.channels.kept) == 1 and _server_watches(env) == kept
    await env.channels.forget(G)
    assert len(env.channels.kept) == 0 and _server_watches(env) == kept - 3
    assert await env.channel().pci_insert(DEV_B) == 0x28  # registered again when needed
    assert len(env.channels.kept) == 1


async def test_a_dead_stubdomain_takes_its_kept_watches_with_it(env: Env) -> None:
    await env.fake()
    await env.channel().pci_insert(DEV_A)
    await env.release_stub()
    with pytest.raises(DeviceModelDied):
        await env.channel().pci_insert(DEV_B)
    assert len(env.channels.kept) == 0


async def test_pci_insert_refusals_fail_fast_and_restore_state(env: Env) -> None:
    await env.fake(slots=(4,))
    ch = env.channel(timeout=SLOW)
    assert await ch.pci_insert(DEV_A) == 0x20
    t0 = time.monotonic()
    with pytest.raises(PciInsertError) as exc:
        await ch.pci_insert(DEV_B)  # the only slot is taken
    assert exc.value.reason == PCI_INS_NO_FREE_DEVFN
    assert "guest 5" in str(exc.value) and "pci-ins" in str(exc.value)
    with pytest.raises(PciInsertError) as exc:
        await ch.pci_insert(DEV_C, vdevfn=0x20)  # a devfn in use
    assert exc.value.reason == PCI_INS_BAD_BDF
    assert time.monotonic() - t0 < SLOW / 2
    assert await env.state() == "running"


async def test_pci_insert_timeout_still_restores_state(env: Env) -> None:
    await env.fake(misbehave=Misbehaviour(never_answer=True))
    with pytest.raises(DeviceModelTimeout, match=r"no pci-inserted within 0\.5 s"):
        await env.channel(timeout=SHORT).pci_insert(DEV_A)
    assert await env.state() == "running"


# -- pci-rem ------------------------------------------------------------------------------


async def test_pci_remove_waits_for_the_guest_eject(env: Env) -> None:
    fake = await env.fake()
    ch = env.channel()
    devfn = await ch.pci_insert(DEV_A)
    task = asyncio.create_task(ch.pci_remove(DEV_A))
    await asyncio.wait_for(fake.eject_requested.wait(), SLOW)
    assert not task.done()  # no pci-removed before the eject
    await fake.eject(devfn)
    assert await asyncio.wait_for(task, SLOW) is True
    assert await env.state() == "running"
    assert await env.parameter() == pci_rem_parameter(DEV_A)
    assert fake.present == {}


async def test_pci_remove_timeout_then_late_eject_is_recovered(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await env.fake()
    devfn = await env.channel().pci_insert(DEV_A)
    with pytest.raises(DeviceModelTimeout, match="did not eject"):
        await env.channel(timeout=SHORT).pci_remove(DEV_A)
    assert await env.state() == "running"  # untouched (libxl: no restore on failure)
    await fake.eject(devfn)  # the guest ejects after we gave up
    assert await env.state() == "pci-removed"
    caplog.set_level(logging.WARNING, logger="stubdom.toolstack.channel")
    t0 = time.monotonic()
    assert await env.channel().pci_insert(DEV_B) == 0x20  # libxl would wait 60 s and fail
    assert time.monotonic() - t0 < SLOW / 2
    assert "stale 'pci-removed'" in caplog.text
    assert await env.state() == "running"


async def test_stale_pci_inserted_does_not_fake_a_success(env: Env) -> None:
    fake = await env.fake(slots=(4,))
    await env.channel().pci_insert(DEV_A)
    await env.dom0.write(state_path(S, G), "pci-inserted")  # a toolstack died before restoring
    with pytest.raises(PciInsertError):
        await env.channel().pci_insert(DEV_B)  # really sent, really refused
    assert fake.commands == ["pci-ins", "pci-ins"]


@pytest.mark.parametrize(
    ("bdf", "force", "vdevfn"),
    [("0000:03:00.1", False, None), ("0000:03:00.0", True, None), ("0000:03:00.0", False, 0x21)],
)
async def test_pci_remove_sends_no_command_for_other_functions_or_force(
    env: Env, bdf: str, force: bool, vdevfn: int | None
) -> None:
    fake = await env.fake()
    dev = parse_bdf(bdf)
    assert await env.channel().pci_remove(dev, force=force, vdevfn=vdevfn) is False
    assert fake.commands == []
    assert await env.parameter() == pci_rem_parameter(dev)
    assert await env.state() == "running"


async def test_fake_ignores_pci_rem_of_unknown_or_non_zero_function(env: Env) -> None:
    fake = await env.fake()
    # Guest function 1 (an AUTO slot would put it at function 0 of the slot).
    await env.channel().pci_insert(parse_bdf("0000:03:00.1"), vdevfn=0x21)
    ch = env.channel(timeout=SHORT)
    # Sent through the generic exchange (pci_remove would not send it for function 1).
    for dev in (parse_bdf("0000:03:00.1"), DEV_B):
        with pytest.raises(DeviceModelTimeout):
            await ch.exchange(
                Command.PCI_REM, pci_rem_parameter(dev), State.PCI_REMOVED, Restore.ON_SUCCESS
            )
    assert fake.pending_eject == set()
    assert fake.commands[1:] == ["pci-rem", "pci-rem"]


# -- save / continue ----------------------------------------------------------------------


async def test_save_then_resume(env: Env) -> None:
    saved: list[bytes] = []
    fake = await env.fake(save_sink=saved.append)
    ch = env.channel()
    await ch.save()
    assert await env.state() == "paused"  # no restore after save
    assert fake.paused and saved == [b"QEVM fake qemu-trad device state of guest 5\n"]
    await ch.save()  # already saved: returns at once, nothing sent
    assert fake.commands == ["save"]
    t0 = time.monotonic()
    with pytest.raises(DeviceModelError, match="paused by a save; resume it first"):
        await ch.pci_insert(DEV_A)
    assert time.monotonic() - t0 < SLOW / 2
    assert await ch.resume() is True
    assert await env.state() == "running" and not fake.paused
    assert fake.commands == ["save", "continue"]
    assert not ch.save_marker.exists()


async def test_continue_not_sent_when_not_paused(env: Env) -> None:
    fake = await env.fake()
    assert await env.channel().resume() is False
    assert fake.commands == []
    assert await env.state() == "running"


async def test_left_over_paused_is_continued_before_the_next_operation(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await env.fake()
    ch = env.channel()
    await ch.save()
    ch.save_marker.unlink()  # the toolstack that saved died without resuming
    caplog.set_level(logging.WARNING, logger="stubdom.toolstack.channel")
    assert await ch.pci_insert(DEV_A) == 0x20
    assert fake.commands == ["save", "continue", "pci-ins"]
    assert "left paused with no save in progress" in caplog.text
    assert await env.state() == "running"


async def test_save_marker_of_another_stubdomain_is_not_a_save_in_progress(env: Env) -> None:
    fake = await env.fake()
    ch = env.channel()
    await ch.save()
    ch.save_marker.write_text("99\n")
    await ch.save()  # not "already saved": continue, then a fresh save
    assert fake.commands == ["save", "continue", "save"]


# -- logdirty -----------------------------------------------------------------------------


async def test_logdirty_enable_disable_even_while_paused(env: Env) -> None:
    fake = await env.fake()
    ch = env.channel()
    await ch.logdirty(True)
    assert fake.logdirty is True
    for node in ("cmd", "ret"):
        assert await env.dom0.read_optional(logdirty_path(S, G, node)) is None
    await ch.save()
    await ch.logdirty(False)
    assert fake.logdirty is False


async def test_logdirty_refuses_while_a_command_is_unanswered(env: Env) -> None:
    await env.dom0.write(logdirty_path(S, G, "cmd"), "enable")  # nobody answered
    with pytest.raises(DeviceModelError, match="qemu was already sent command 'enable'"):
        await env.channel().logdirty(False)


async def test_logdirty_timeout(env: Env) -> None:
    ch = env.channel()
    ch.logdirty_timeout = SHORT
    with pytest.raises(DeviceModelTimeout, match="logdirty enable: no answer"):
        await ch.logdirty(True)


async def test_unknown_logdirty_command_kills_the_device_model(env: Env) -> None:
    fake = await env.fake()
    ch = env.channel()
    t0 = time.monotonic()
    # Bypass the channel's vocabulary: qemu exits on anything but enable/disable.
    await env.dom0.write(logdirty_path(S, G, "cmd"), "bogus")
    await asyncio.wait_for(fake.wait(), SLOW)
    with pytest.raises(DeviceModelDied):
        await ch.wait_running()
    assert time.monotonic() - t0 < SLOW / 2


# -- death and silence --------------------------------------------------------------------


async def test_stub_dying_mid_wait_fails_at_once(env: Env) -> None:
    await env.fake(misbehave=Misbehaviour(die_on=Command.PCI_INS))
    t0 = time.monotonic()
    with pytest.raises(DeviceModelDied, match="guest 5: device model pci-ins: the stubdomain died"):
        await env.channel().pci_insert(DEV_A)
    assert time.monotonic() - t0 < SLOW / 2


async def test_stub_released_while_waiting_for_eject(env: Env) -> None:
    fake = await env.fake()
    ch = env.channel()
    await ch.pci_insert(DEV_A)
    task = asyncio.create_task(ch.pci_remove(DEV_A))
    await asyncio.wait_for(fake.eject_requested.wait(), SLOW)
    t0 = time.monotonic()
    await env.release_stub()
    with pytest.raises(DeviceModelDied):
        await asyncio.wait_for(task, SLOW)
    assert time.monotonic() - t0 < SLOW / 2


async def test_dead_stub_before_the_command(env: Env) -> None:
    await env.fake()
    await env.release_stub()
    with pytest.raises(DeviceModelDied):
        await env.channel().save()


async def test_device_model_that_never_reads_the_command(env: Env) -> None:
    await env.dom0.write(state_path(S, G), "running")  # a DM that set no watch
    with pytest.raises(DeviceModelTimeout, match="never read the command"):
        await env.channel(timeout=SHORT).save()


async def test_device_model_that_never_answers(env: Env) -> None:
    fake = await env.fake(misbehave=Misbehaviour(never_answer=True))
    with pytest.raises(DeviceModelTimeout, match="guest 5: device model save: no paused"):
        await env.channel(timeout=SHORT).save()
    assert fake.commands == ["save"]


async def test_slow_device_model_within_the_timeout(env: Env) -> None:
    await env.fake(misbehave=Misbehaviour(delay=0.3))
    assert await env.channel().pci_insert(DEV_A) == 0x20


async def test_wait_running_waits_for_a_starting_device_model(env: Env) -> None:
    ch = env.channel()
    task = asyncio.create_task(ch.wait_running())
    await asyncio.sleep(0)  # the channel sees no state yet
    assert not task.done()
    await env.fake()
    await asyncio.wait_for(task, SLOW)


# -- qemu's prefix match ------------------------------------------------------------------


async def test_prefix_quirk_of_the_fake(env: Env) -> None:
    """qemu matches any name the written value prefixes: ``pci-`` is pci-rem, ``""`` save."""
    fake = await env.fake()
    devfn = await env.channel().pci_insert(DEV_A)
    await env.dom0.write(parameter_path(S, G), pci_rem_parameter(DEV_A))
    await env.dom0.write(command_path(S, G), "pci-")
    await asyncio.wait_for(fake.eject_requested.wait(), SLOW)
    assert fake.pending_eject == {devfn}
    async with env.dom0.watch(state_path(S, G)) as w:
        await env.dom0.write(command_path(S, G), "")
        while await env.state() != "paused":
            await w.get(timeout=SLOW)
    assert fake.paused and fake.commands[1:] == ["pci-", ""]


# -- serialisation ------------------------------------------------------------------------


async def test_concurrent_exchanges_from_two_clients_lose_nothing(env: Env) -> None:
    fake = await env.fake(misbehave=Misbehaviour(delay=0.1))
    a = env.channel(client=await env.client())
    b = env.channel(client=await env.client())
    devfns = await asyncio.gather(
        a.pci_insert(DEV_A), b.pci_insert(DEV_B), a.pci_insert(DEV_C), b.logdirty(True)
    )
    assert sorted(devfns[:3]) == [0x20, 0x28, 0x30]
    assert fake.commands == ["pci-ins"] * 3 and fake.logdirty
    assert await env.state() == "running"


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from stubdom.protocol import parse_bdf
    from stubdom.toolstack.channel import ChannelRegistry, DeviceModelChannel
    from stubdom.xenstore import Client

    async def main():
        sock, lock_dir, bdf = sys.argv[1:4]
        async with await Client.connect(sock) as xs:
            channels = ChannelRegistry()
            ch = DeviceModelChannel(xs, 6, 5, Path(lock_dir), timeout=30, channels=channels)
            print(hex(await ch.pci_insert(parse_bdf(bdf))), flush=True)

    asyncio.run(main())
    """
)


async def test_concurrent_exchanges_from_two_processes_lose_nothing(env: Env) -> None:
    fake = await env.fake(misbehave=Misbehaviour(delay=0.2))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            env.socket,
            str(env.lock_dir),
            str(dev),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for dev in (DEV_A, DEV_B)
    ]
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    assert sorted(out.decode().strip() for out, _ in outs) == ["0x20", "0x28"]
    assert fake.commands == ["pci-ins", "pci-ins"]
    assert await env.state() == "running"


async def test_lock_is_held_across_the_whole_exchange(env: Env) -> None:
    """A process holding the guest's flock keeps our command off the wire."""
    import fcntl

    fake = await env.fake()
    env.lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(env.lock_dir / f"dm-{G}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        task = asyncio.create_task(env.channel().pci_insert(DEV_A))
        await asyncio.sleep(0.2)  # give it every chance to (wrongly) proceed
        assert fake.commands == [] and not task.done()
    finally:
        os.close(fd)
    assert await asyncio.wait_for(task, SLOW) == 0x20


SAVER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from stubdom.toolstack.channel import ChannelRegistry, DeviceModelChannel
    from stubdom.xenstore import Client

    async def main():
        sock, lock_dir = sys.argv[1:3]
        async with await Client.connect(sock) as xs:
            ch = DeviceModelChannel(xs, 6, 5, Path(lock_dir), timeout=30,
                                    channels=ChannelRegistry())
            await ch.save()
            print("saved", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)


async def test_a_command_after_another_toolstack_held_the_lock_reads_the_state(
    env: Env,
) -> None:
    """What a channel knows of ``state`` between its commands is only as fresh as the
    events it has read.  Another toolstack's command can leave events still on their
    way (held back here: our connection reads nothing meanwhile); the next command
    then must not trust what it knew, but find the other's save."""
    fake = await env.fake()
    ch = env.channel()
    await ch.pci_insert(DEV_A)  # state known: running
    reading = env.dom0._transport._transport  # type: ignore[attr-defined]
    reading.pause_reading()
    saver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SAVER, env.socket, str(env.lock_dir), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert saver.stdout is not None
        assert await asyncio.wait_for(saver.stdout.readline(), 60) == b"saved\n"
        reading.resume_reading()  # the events come in with the next turn of the loop
        with pytest.raises(DeviceModelError, match="paused by a save; resume it first"):
            await ch.pci_insert(DEV_B)
        assert fake.commands == ["pci-ins", "save"]
    finally:
        reading.resume_reading()
        saver.kill()
        await saver.wait()


# -- the fake as a separate program (Mini-OS style) ---------------------------------------


async def _spawn_fake(env: Env, *args: str) -> asyncio.subprocess.Process:
    proc_env = {**os.environ, "XENSTORED_PATH": env.stub_socket}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.toolstack.fake_dm",
        *args,
        cwd=ROOT,
        env=proc_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_fake_program_full_cycle(env: Env) -> None:
    save_file = env.run_dir / "qemu-save.5"
    proc = await _spawn_fake(env, "--slots", "9", "--save-file", str(save_file))
    try:
        ch = env.channel()
        await ch.wait_running()
        assert await ch.pci_insert(DEV_A) == 0x48
        with pytest.raises(PciInsertError, match=PCI_INS_NO_FREE_DEVFN):
            await ch.pci_insert(DEV_B)
        task = asyncio.create_task(ch.pci_remove(DEV_A))
        # Eject as the guest would, once the fake raised the SCI, through its mailbox.
        sci = f"{domain_path(S)}/{SCI_NODE}"
        async with env.dom0.watch(sci) as w:
            while await env.dom0.read_optional(sci) != b"0x48":
                await w.get(timeout=SLOW)
        assert not task.done()
        await env.dom0.write(f"{domain_path(S)}/{EJECT_NODE}", "0x48")
        assert await asyncio.wait_for(task, SLOW) is True
        await ch.save()
        assert save_file.read_bytes().startswith(b"QEVM")
        assert await ch.resume() is True
        assert await env.state() == "running"
    finally:
        proc.terminate()
        await proc.communicate()


async def test_fake_program_dying_on_a_command(env: Env) -> None:
    proc = await _spawn_fake(env, "--die-on", "save")
    ch = env.channel()
    await ch.wait_running()

    async def host() -> None:
        await proc.wait()  # the hypervisor notices the domain is gone
        await env.release_stub()

    watcher = asyncio.create_task(host())
    t0 = time.monotonic()
    with pytest.raises(DeviceModelDied):
        await ch.save()
    assert time.monotonic() - t0 < SLOW / 2
    await watcher
    assert proc.returncode == 1


def test_parameter_formats_are_the_protocol_modules() -> None:
    assert pci_ins_parameter(DEV_A, 0x28, False, False) == (
        "0000:03:00.0@28,msitranslate=0,power_mgmt=0"
    )
