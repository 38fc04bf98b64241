"""The command channel decisions and the exact writes, without sockets."""

from __future__ import annotations

import pytest

from stubdom.protocol import AUTO_PHP_SLOT, Bdf, Command
from stubdom.stubdomain import commands as c
from stubdom.stubdomain.commands import Action, Write


def test_absent_command_does_nothing() -> None:
    assert c.dispatch(None, None, compat=False, paused=False).action is Action.NOTHING


def test_exact_names_ours_prefix_in_compat() -> None:
    assert c.dispatch("sav", None, compat=False, paused=False).action is Action.UNKNOWN
    assert c.dispatch("sav", None, compat=True, paused=False).action is Action.SAVE
    assert c.dispatch("", None, compat=True, paused=False).action is Action.SAVE
    d = c.dispatch("pci-", "0000:03:00.0", compat=True, paused=False)
    assert d.action is Action.PCI_REM
    unknown = c.dispatch("flr", "x", compat=False, paused=False)
    assert unknown.action is Action.UNKNOWN and unknown.log == ['dm-command: unknown command"flr"']


@pytest.mark.parametrize("cmd", ["pci-ins", "pci-rem", "usb-add", "usb-del"])
def test_a_command_without_its_parameter_is_ignored(cmd: str) -> None:
    d = c.dispatch(cmd, None, compat=False, paused=False)
    assert d.action is Action.NOTHING and not d.writes


def test_save_and_continue_follow_the_pause() -> None:
    assert c.dispatch("save", None, compat=False, paused=True).action is Action.NOTHING
    assert c.dispatch("continue", None, compat=False, paused=False).action is Action.NOTHING
    assert c.dispatch("continue", None, compat=False, paused=True).action is Action.CONTINUE
    assert c.saved() == [Write("state", "paused")] and c.running() == [Write("state", "running")]


def test_pci_ins_parsing() -> None:
    d = c.dispatch("pci-ins", "0000:03:00.0@28,msitranslate=1,power_mgmt=1", compat=False,
                   paused=False)  # fmt: skip
    assert d.action is Action.PCI_INS and d.pci is not None
    assert d.pci.bdf == Bdf(0, 3, 0, 0) and d.pci.devfn == 0x28
    assert d.pci.msitranslate and d.pci.power_mgmt and not d.pci.permissive
    req, notes = c.parse_pci_ins("0001:04:1f.7,msitranslate=yes,permissive=1,frob=2")
    assert req.devfn == AUTO_PHP_SLOT and req.bdf == Bdf(1, 4, 0x1F, 7)
    assert req.msitranslate and req.permissive and notes and "frob" in notes[0]


def test_pci_ins_unparsable_answers_at_once() -> None:
    d = c.dispatch("pci-ins", "garbage", compat=False, paused=False)
    assert d.action is Action.NOTHING
    assert d.writes == (Write("parameter", "no free hotplug devfn"),
                        Write("state", "pci-insert-failed"))  # fmt: skip
    d = c.dispatch("pci-ins", "garbage", compat=True, paused=False)
    assert d.writes == (Write("parameter", "no free hotplug devfn"),)


def test_results_parameter_first_then_state() -> None:
    assert c.pci_inserted(0x28) == [Write("parameter", "0x28"), Write("state", "pci-inserted")]
    assert c.pci_insert_failed("wrong bdf or vdevfn", False) == [
        Write("parameter", "wrong bdf or vdevfn"),
        Write("state", "pci-insert-failed"),
    ]
    assert c.pci_insert_failed("wrong bdf or vdevfn", True) == [
        Write("parameter", "wrong bdf or vdevfn")
    ]
    assert c.pci_remove_failed("no such device", False) == [
        Write("parameter", "no such device"),
        Write("state", "pci-remove-failed"),
    ]
    assert c.pci_remove_failed("no such device", True) == []
    assert c.pci_removed() == [Write("state", "pci-removed")]
    assert c.usb_done(Action.USB_ADD) == [Write("state", "usb-added")]
    assert c.usb_done(Action.USB_DEL) == [Write("state", "usb-deleted")]


def test_pci_rem_parsing() -> None:
    d = c.dispatch("pci-rem", "0000:03:00.1", compat=False, paused=False)
    assert d.action is Action.PCI_REM and d.bdf == Bdf(0, 3, 0, 1)
    assert d.command is Command.PCI_REM
    bad = c.dispatch("pci-rem", "03-00", compat=False, paused=False)
    assert bad.writes[1] == Write("state", "pci-remove-failed")
    assert c.dispatch("pci-rem", "03-00", compat=True, paused=False).writes == ()


def test_logdirty() -> None:
    assert c.logdirty(None, False) == c.LogdirtyDecision()
    assert c.logdirty("enable", False) == c.LogdirtyDecision(enable=True, ret="enable")
    assert c.logdirty("disable", True) == c.LogdirtyDecision(enable=False, ret="disable")
    bad = c.logdirty("frob", False)
    assert bad.ret is None and bad.error and not bad.fatal
    assert c.logdirty("frob", True).fatal
    # A second event for a command already answered: nothing (qemu-trad answers again).
    assert c.logdirty("enable", False, answered="enable") == c.LogdirtyDecision()
    assert c.logdirty("enable", False, answered="disable").ret == "enable"
    assert c.logdirty("enable", True, answered="enable").ret == "enable"


def test_online_vcpus() -> None:
    assert c.online_vcpus({0: "online", 1: "offline", 2: "online", 3: None}, {0, 1, 3}) == {
        0, 2, 3}  # fmt: skip
