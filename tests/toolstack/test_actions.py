"""Pure pieces of the lifecycle verbs: the action on a shutdown, xl's memory sizes,
xl info's lines, xl list's columns."""

from __future__ import annotations

import pytest

from stubdom.cli.common import xl_list_row
from stubdom.host.hypervisor import DomainInfo, DomainState, ShutdownReason
from stubdom.toolstack.actions import Outcome, decide, preserved_suffix
from stubdom.toolstack.config import GuestConfig
from stubdom.toolstack.domain import parse_mem_size_kb
from stubdom.toolstack.hostinfo import HostFacts, info_lines, render

R = ShutdownReason


@pytest.mark.parametrize(
    ("reason", "settings", "outcome", "note"),
    [
        (R.POWEROFF, {}, Outcome.DESTROY, None),
        (R.REBOOT, {}, Outcome.RESTART, None),
        (R.CRASH, {}, Outcome.DESTROY, None),
        (R.CRASH, {"on_crash": "preserve"}, Outcome.PRESERVE, None),
        (R.REBOOT, {"on_reboot": "rename-restart"}, Outcome.RENAME_RESTART, None),
        (R.CRASH, {"on_crash": "coredump-destroy"}, Outcome.DESTROY, "no core dump"),
        (R.CRASH, {"on_crash": "coredump-restart"}, Outcome.RESTART, "no core dump"),
        (R.SOFT_RESET, {}, Outcome.RESTART, "soft-reset is done as a restart"),
        (R.WATCHDOG, {"on_watchdog": "restart"}, Outcome.RESTART, None),
        (R.SUSPEND, {"on_poweroff": "restart"}, Outcome.WAIT, None),
        (None, {"on_poweroff": "restart"}, Outcome.DESTROY, None),
    ],
)
def test_decide(
    reason: ShutdownReason | None, settings: dict[str, str], outcome: Outcome, note: str | None
) -> None:
    d = decide(reason, GuestConfig(name="g", **settings))  # type: ignore[arg-type]
    assert d.outcome is outcome
    assert (d.note is None) if note is None else (note in (d.note or ""))


def test_preserved_suffix_is_xls() -> None:
    assert preserved_suffix(0) == "-19700101T0000Z"


@pytest.mark.parametrize(
    ("text", "kb"),
    [("256", 262144), ("256m", 262144), ("1G", 1048576), ("1t", 1 << 30), ("2048k", 2048),
     ("1048576b", 1024), ("12x", None), ("", None), ("-5", None), ("1.5g", None)],
)
def test_parse_mem_size_kb(text: str, kb: int | None) -> None:
    assert parse_mem_size_kb(text) == kb


def test_info_lines_and_selection() -> None:
    facts = HostFacts(nr_cpus=4, total_memkb=8 << 20, domains_memkb=1 << 20,
                      host_cmdline=["stubdom", "host", "daemon"])
    lines = info_lines(facts)
    text = render(lines)
    assert text[0].startswith("host                   : ")
    assert "nr_cpus                : 4" in text
    assert "total_memory           : 8192" in text and "free_memory            : 7168" in text
    assert "xen_commandline        : stubdom host daemon" in text
    assert text[-1] == "xend_config_format     : 4"
    assert render(lines, "nr_cpus") == ["4"]
    assert render(lines, "xen_m") == ["4", "17"]  # xen_major, xen_minor: xl's prefix match


def test_list_row_shows_current_memory_and_online_vcpus() -> None:
    d = DomainInfo(1, "g", "u", True, DomainState.RUNNING, False, None, 524288, 4, 1.25,
                   current_memkb=262144, online_vcpus=2)
    assert xl_list_row(d) == f"{'g':<40}     1   256     2     r-----       1.2"
