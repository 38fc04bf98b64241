"""The control channel's requests, in the order they leave: libxl's order kept
([TS-EXCHANGE]) with the fewest round trips, and the state the channel knows from its
watches standing in for a read only while no event says it changed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from stubdom.protocol import (
    State,
    command_path,
    dm_last_sent_path,
    dm_path,
    parameter_path,
    parse_bdf,
    pci_ins_parameter,
    state_path,
    target_path,
)
from stubdom.toolstack.channel import ChannelRegistry, DeviceModelChannel
from stubdom.toolstack.exchange import InsertOutcome, PciInsertError
from stubdom.toolstack.locks import GuestLock
from stubdom.wire.constants import Op
from stubdom.wire.paths import domain_path
from stubdom.xenstore import Client, XenStoreError
from stubdom.xenstored.server import XenStoreServer
from tests.support.daemons import short_tmpdir
from tests.toolstack.fake_dm import FakeDeviceModel

G, S = 5, 6
DEV_A = parse_bdf("0000:03:00.0")
DEV_B = parse_bdf("0000:04:00.0")
STATE, PARAM, CMD = state_path(S, G), parameter_path(S, G), command_path(S, G)
LAST = dm_last_sent_path(G)


@dataclass
class Setup:
    dom0: Client
    chan: DeviceModelChannel
    fake: FakeDeviceModel
    #: Each batch the toolstack sent: [(op, path)] in wire order.
    sent: list[list[tuple[str, str | None]]]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    run_dir = short_tmpdir("dmo-")
    server = XenStoreServer(run_dir / "xs")
    await server.start()
    dom0 = await Client.connect(str(server.socket_path))
    for dom in (G, S):
        await dom0.introduce(dom, 0, 15 + dom)
    stub = await Client.connect(str(server.domain_socket(S)))
    try:
        for dom in (G, S):
            await dom0.mkdir(domain_path(dom))
            await dom0.set_perms(domain_path(dom), ["n0", f"r{dom}"])
        await dom0.write(target_path(S), str(G))
        await dom0.set_target(S, G)
        await dom0.mkdir(dm_path(S, G))
        await dom0.set_perms(dm_path(S, G), [f"n{S}", f"r{G}"])
        fake = FakeDeviceModel(stub, G)
        await fake.start()
        sent: list[list[tuple[str, str | None]]] = []
        real = dom0.roundtrips

        async def spy(requests: list[tuple[int, bytes, str | None]], **kw: object) -> object:
            sent.append([(Op(op).name, what) for op, _, what in requests])
            return await real(requests, **kw)  # type: ignore[arg-type]

        dom0.roundtrips = spy  # type: ignore[method-assign]
        chan = DeviceModelChannel(dom0, S, G, run_dir / "locks", channels=ChannelRegistry())
        yield Setup(dom0, chan, fake, sent)
        await fake.stop()
    finally:
        await stub.close()
        await dom0.close()
        await server.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_a_pci_ins_is_four_round_trips_in_libxl_order(setup: Setup) -> None:
    """Once the channel's watches are set: the parameter written, then the command, a
    look for each event after them, the state written back.  No read of ``state``
    (the restore of the previous command wrote ``running`` and no event on ``state``
    came since: that is the state to wait for and to restore), none with the command
    (the first look is what the first batch showed), and no look for the event of our
    own parameter write."""
    await setup.chan.pci_insert(DEV_A)
    setup.sent.clear()
    devfn = await setup.chan.pci_insert(DEV_B)
    assert setup.sent[0] == [("WRITE", LAST), ("WRITE", PARAM)]
    assert setup.sent[1] == [("WRITE", CMD)]
    assert setup.sent[-1] == [("WRITE", STATE)]
    looks = setup.sent[2:-1]
    assert looks and all(b == [("READ", STATE), ("READ", PARAM)] for b in looks)
    assert await setup.dom0.read(PARAM) == f"0x{devfn:02x}".encode()
    assert await setup.dom0.read(STATE) == b"running"


async def test_a_state_changed_by_someone_else_is_read_again(setup: Setup) -> None:
    """An event on ``state`` since the channel last saw it: the state is read, and a
    stale result found there is written over before the command ([TIME-STALE])."""
    await setup.chan.pci_insert(DEV_A)
    await setup.dom0.write(STATE, State.PCI_REMOVED.value)  # a late guest eject
    setup.sent.clear()
    await setup.chan.pci_insert(DEV_B)
    assert setup.sent[0] == [("READ", STATE)]
    assert await setup.dom0.read(STATE) == b"running"


async def test_a_hold_of_the_lock_by_another_holder_makes_the_state_read_again(
    setup: Setup,
) -> None:
    """Another holder of the guest's lock in between (another toolstack process: its
    own stamp, and no write of ours to compare events against): the state is read
    before the command, even with no event seen.  The next command, after our own
    hold, knows it again."""
    await setup.chan.pci_insert(DEV_A)
    async with GuestLock(setup.chan.lock_path, asyncio.Lock()):  # a stamp of its own
        pass
    setup.sent.clear()
    await setup.chan.pci_insert(DEV_B)
    assert setup.sent[0] == [("READ", STATE)]
    setup.sent.clear()
    await setup.chan.pci_insert(parse_bdf("0000:05:00.0"))
    assert setup.sent[0] == [("WRITE", LAST), ("WRITE", PARAM)]


async def test_save_and_continue_know_the_state_from_the_last_look(setup: Setup) -> None:
    """``paused`` seen by the look that ended the save is what ``resume`` needs: it
    sends ``continue`` first thing (no read, and no note: only a command with a
    parameter is noted); a second resume knows ``running`` from the look that ended
    the first one and sends nothing."""
    await setup.chan.pci_insert(DEV_A)  # the watches are set
    await setup.chan.save()
    setup.sent.clear()
    assert await setup.chan.resume() is True
    assert setup.sent[0] == [("WRITE", CMD)]  # libxl: no state to restore
    setup.sent.clear()
    assert await setup.chan.resume() is False
    assert setup.sent == []
    assert setup.fake.commands == ["pci-ins", "save", "continue"]


async def test_a_command_without_parameter_reads_a_state_it_does_not_know(
    setup: Setup,
) -> None:
    await setup.chan.pci_insert(DEV_A)
    await setup.chan.save()
    await setup.dom0.write(STATE, State.PAUSED.value)  # an event: no longer known
    setup.sent.clear()
    assert await setup.chan.resume() is True
    assert setup.sent[0] == [("READ", STATE)]  # resume's own look before deciding
    assert setup.sent[1] == [("WRITE", CMD)]


async def test_the_first_command_of_a_channel_reads_the_state(setup: Setup) -> None:
    await setup.chan.pci_insert(DEV_A)
    first_read = next(b for b in setup.sent if ("READ", STATE) in b)
    assert first_read == [("READ", STATE)]  # before anything is written
    assert setup.sent.index(first_read) < next(
        i for i, b in enumerate(setup.sent) if ("WRITE", PARAM) in b
    )
    sent = pci_ins_parameter(DEV_A, 0, False, False)
    assert await setup.dom0.read(LAST) == f"pci-ins {sent}".encode()


async def test_a_note_that_cannot_be_written_leaves_no_command_sent(setup: Setup) -> None:
    """The note of the last command goes before the command, in its own round trip: when
    it fails, the device model never sees the command (no half-done exchange)."""
    await setup.chan.pci_insert(DEV_A)
    await setup.fake.stop()  # nobody consumes a command: the node would stay
    setup.dom0.check_paths = False  # let the daemon refuse it
    setup.chan.last_sent = "/libxl/" + "x" * 3000  # over cx's path limit: EINVAL
    with pytest.raises(XenStoreError):
        await setup.chan.pci_insert(DEV_B)
    assert await setup.dom0.read_text(CMD) is None
    assert setup.fake.commands == ["pci-ins"]


async def test_save_and_continue_leave_the_note_of_a_refused_insert(setup: Setup) -> None:
    """``save`` and ``continue`` leave ``parameter`` alone, so they leave the note too:
    after them, an interrupted attach's refused ``pci-ins`` is still known refused
    (qemu-trad would never answer the ``pci-rem`` its undoing would send)."""
    await setup.chan.pci_insert(DEV_A, vdevfn=0x28)
    with pytest.raises(PciInsertError):
        await setup.chan.pci_insert(DEV_B, vdevfn=0x28)  # slot 5 is taken
    await setup.chan.save()
    assert await setup.chan.resume() is True
    assert await setup.dom0.read_text(LAST) == (
        f"pci-ins {pci_ins_parameter(DEV_B, 0x28, False, False)}"
    )
    assert await setup.chan.unanswered_insert(DEV_B) is InsertOutcome.REFUSED
