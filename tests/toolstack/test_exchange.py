"""The sans-IO decision of the control channel (`CommandExchange`), with plain values."""

from __future__ import annotations

import pytest

from stubdom.protocol import (
    PCI_INS_BAD_BDF,
    PCI_INS_ERRORS,
    PCI_INS_NO_FREE_DEVFN,
    RESULT_STATE,
    Command,
    State,
    parse_bdf,
)
from stubdom.toolstack.exchange import (
    CommandExchange,
    DeviceModelDied,
    InsertOutcome,
    PciInsertError,
    PciRemoveError,
    Snapshot,
    Verdict,
    insert_answer,
    names_function,
    printable,
)

G = 5


def _ins() -> CommandExchange:
    return CommandExchange(G, State.PCI_INSERTED, Command.PCI_INS, "0000:03:00.0,x=0")


def test_exchange_waits_on_unchanged_state_and_own_parameter() -> None:
    ex = _ins()
    assert ex.observe(Snapshot("running", "0000:03:00.0,x=0")).verdict is Verdict.WAIT
    assert ex.observe(Snapshot("running", None)).verdict is Verdict.WAIT
    # parameter first, state second: the devfn alone is not yet an answer
    assert ex.observe(Snapshot("running", "0x28")).verdict is Verdict.WAIT
    assert ex.observe(Snapshot("pci-inserted", "0x28")).verdict is Verdict.DONE


@pytest.mark.parametrize("text", [PCI_INS_NO_FREE_DEVFN, PCI_INS_BAD_BDF, "something else"])
def test_exchange_pci_ins_error_text_fails_at_once(text: str) -> None:
    out = _ins().observe(Snapshot("running", text))
    assert out.verdict is Verdict.FAILED
    assert isinstance(out.error, PciInsertError)
    assert out.error.reason == text
    assert str(out.error) == f"guest 5: device model pci-ins: qemu refused to add device: {text}"


def test_exchange_failure_states_and_bad_devfn() -> None:
    out = _ins().observe(Snapshot("pci-insert-failed", "busy"))
    assert isinstance(out.error, PciInsertError) and out.error.reason == "busy"
    rem = CommandExchange(G, State.PCI_REMOVED, Command.PCI_REM, "0000:03:00.0")
    out = rem.observe(Snapshot("pci-remove-failed", "0000:03:00.0"))
    assert isinstance(out.error, PciRemoveError)
    ex = _ins()
    ex.parameter = None
    out = ex.observe(Snapshot("pci-inserted", None))
    assert out.verdict is Verdict.FAILED and "wrong format for the vdevfn" in str(out.error)


@pytest.mark.parametrize("command", [Command.PCI_REM, Command.SAVE, Command.CONTINUE])
def test_exchange_waits_past_another_commands_late_failure(command: Command) -> None:
    """A ``pci-insert-failed`` that lands after the toolstack wrote the state back (a
    stub writing the refusal text and the state apart) is not the next command's answer."""
    expect = RESULT_STATE[command]
    ex = CommandExchange(G, expect, command, "0000:03:00.0" if command.value[:3] == "pci" else None)
    assert ex.observe(Snapshot("pci-insert-failed", "no free hotplug devfn")).verdict is (
        Verdict.WAIT
    )
    assert ex.observe(Snapshot(expect.value, "0000:03:00.0")).verdict is Verdict.DONE
    ins = _ins()
    assert ins.observe(Snapshot("pci-remove-failed", "0000:03:00.0,x=0")).verdict is Verdict.WAIT


def test_exchange_stub_death_and_timeout_messages() -> None:
    ex = CommandExchange(G, State.PAUSED, Command.SAVE)
    out = ex.observe(Snapshot("running", None, stub_alive=False))
    assert isinstance(out.error, DeviceModelDied)
    assert str(out.error) == "guest 5: device model save: the stubdomain died before paused"
    err = ex.timed_out(60, command_pending=True)
    assert str(err) == (
        "guest 5: device model save: no paused within 60 s (state 'running'); "
        "the device model never read the command"
    )
    rem = CommandExchange(G, State.PCI_REMOVED, Command.PCI_REM, "x")
    rem.observe(Snapshot("running", "x"))
    assert "the guest did not eject the device" in str(rem.timed_out(1))
    assert "\n" not in str(err)


def test_an_answer_seen_with_the_death_is_taken() -> None:
    """A stub that writes ``paused`` and dies at once (its save image is complete) has
    answered, even when the look finds the death as well; without the answer the death
    is the error, and a plain wait takes no old state for an answer."""
    save = CommandExchange(G, State.PAUSED, Command.SAVE)
    assert save.observe(Snapshot("paused", None, stub_alive=False)).verdict is Verdict.DONE
    ins = CommandExchange(G, State.PCI_INSERTED, Command.PCI_INS, "0000:03:00.0")
    out = ins.observe(Snapshot("pci-inserted", "0x18", stub_alive=False))
    assert out.verdict is Verdict.DONE
    out = ins.observe(Snapshot("pci-inserted", "garbage", stub_alive=False))
    assert out.error is not None and not isinstance(out.error, DeviceModelDied)
    wait = CommandExchange(G, State.RUNNING).observe(Snapshot("running", None, stub_alive=False))
    assert isinstance(wait.error, DeviceModelDied)


def test_a_timeout_without_a_state_node_says_so_in_words() -> None:
    ex = CommandExchange(G, State.PCI_INSERTED, Command.PCI_INS, "x")
    ex.observe(Snapshot(None, "x"))
    assert str(ex.timed_out(1)) == (
        "guest 5: device model pci-ins: no pci-inserted within 1 s (no state node)"
    )
    assert "None" not in str(CommandExchange(G, State.RUNNING).timed_out(60))


def test_a_stub_dead_before_a_command_is_not_said_to_die_before_running() -> None:
    """Issue 12: the wait for running before a command meets a stub that had run."""
    ex = CommandExchange(G, State.RUNNING, purpose="pci-ins")
    out = ex.observe(Snapshot("running", None, stub_alive=False))
    assert isinstance(out.error, DeviceModelDied)
    assert str(out.error) == (
        "guest 5: device model pci-ins: the stubdomain died after its device model "
        "reported running"
    )
    starting = CommandExchange(G, State.RUNNING).observe(Snapshot(None, None, stub_alive=False))
    assert str(starting.error) == (
        "guest 5: device model wait for running: the stubdomain died before running"
    )


def test_plain_wait_for_running() -> None:
    ex = CommandExchange(G, State.RUNNING)
    assert ex.observe(Snapshot(None, None)).verdict is Verdict.WAIT
    assert ex.observe(Snapshot("running", None)).verdict is Verdict.DONE
    assert ex.what == "wait for running"


def test_an_unanswered_insert_is_judged_by_its_answer_once_the_command_was_taken() -> None:
    refusal = next(iter(PCI_INS_ERRORS))
    assert insert_answer(None, refusal) is InsertOutcome.REFUSED
    assert insert_answer(None, "0x28") is InsertOutcome.INSERTED
    assert insert_answer("pci-ins", "0x28") is InsertOutcome.UNKNOWN  # not taken yet
    assert insert_answer(None, None) is InsertOutcome.UNKNOWN
    assert insert_answer(None, "0000:03:00.0,msitranslate=0") is InsertOutcome.UNKNOWN


def test_a_pci_ins_parameter_names_its_function_whatever_its_options() -> None:
    bdf = parse_bdf("0000:03:00.0")
    assert names_function("0000:03:00.0@28,msitranslate=0,power_mgmt=0", bdf)
    assert names_function("0000:03:00.0,msitranslate=1", bdf)
    assert not names_function("0000:03:00.1,msitranslate=0", bdf)


def test_what_a_device_model_wrote_is_quoted_on_one_line() -> None:
    assert printable("busy") == "busy"
    assert printable("a\nb") == "'a\\nb'"
    assert printable("x" * 200) == "x" * 120 + "..."
